"""`maia --help` and `maia plugins` import nothing heavy: what is imported, not how long it takes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# numpy, msgpack and PIL come with the sandbox, the wire format and images; torch with
# targets; the SDKs with backbones. None is needed to list commands or plugins. Nor, for the
# help, are rich and pygments (the console and html reporters' own; `maia plugins` prints a
# rich table).
# The API backbones' machinery (requests, retries, rate limits, context fitting) comes only
# with a backbone that is made: their plugins register them without it.
HEAVY = ("numpy", "msgpack", "torch", "anthropic", "openai", "PIL", "maia_core.providers.api")
REPORTERS = ("rich", "pygments")

SCRIPT = """
import json, sys
import cli
sys.argv = ["maia", *sys.argv[1:]]
try:
    cli.main()  # loads the plugins' commands, as the `maia` script does
except SystemExit:
    pass
heavy = {heavy}
print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))))
"""


@pytest.mark.parametrize(
    "args, heavy",
    [
        (["--help"], HEAVY + REPORTERS),
        (["plugins"], HEAVY),
        (["exemplars", "--help"], HEAVY + REPORTERS),
    ],
)
def test_listing_commands_and_plugins_imports_nothing_heavy(args, heavy):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=set(heavy)), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) > 2, out.stdout  # the help or the table was printed
    assert json.loads(lines[-1]) == []


def test_the_check_sees_a_heavy_import():
    # The same script, with a plugin command that imports numpy: the check must catch it.
    script = SCRIPT.replace("import cli\n", "import cli, numpy\n")
    out = subprocess.run(
        [sys.executable, "-c", script.format(heavy=set(HEAVY)), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "numpy" in json.loads(out.stdout.strip().splitlines()[-1])
