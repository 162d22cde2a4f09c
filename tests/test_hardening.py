"""Defects found by trying to break maia, each with the test that failed before its fix.

Numbers refer to the items of the hardening issue.
"""

from __future__ import annotations

import json
import os

import pytest
from fake_providers import FakeProvider, reply

from conftest import write_replay
from maia_core.loop.run import RunConfig, run

FINAL = "[DESCRIPTION]: anything\n[LABEL]: anything"


def toynet(tmp_path, backbone: str, **kw) -> RunConfig:
    kw.setdefault("units", "conv2=0")
    kw.setdefault("reporters", ["json"])
    kw.setdefault("cell_timeout", 20.0)
    return RunConfig(target="toynet", backbone=backbone, results=tmp_path / "results", **kw)


def history_text(inv) -> str:
    return "\n".join(m.text for m in inv.messages)


# -- 1. agent code must not run code in the process that holds the keys ------------------------

ATTACK = """```python
import os, pickle, struct, sys
marker = {marker!r}

class Payload:
    # Unpickling this runs exec() in whatever process unpickles it.
    def __reduce__(self):
        return (exec, ("import os; open(%r, 'w').write(os.environ.get('ANTHROPIC_API_KEY', 'no key'))" % marker,))

blob = pickle.dumps(("backbone", Payload()))
fd = next(int(a) for a in sys.argv[1:] if a.isdigit())
# Both framings: multiprocessing.Connection's (4-byte length) and a 64-bit length prefix.
os.write(fd, struct.pack("!i", len(blob)) + blob)
os.write(fd, struct.pack(">Q", len(blob)) + blob)
print("sent")
```"""


def test_a_crafted_pickle_from_agent_code_is_never_unpickled(
    with_thirdparty, tmp_path, monkeypatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    marker = tmp_path / "pwned.txt"
    turns = [ATTACK.format(marker=str(marker)), "```python\nprint('still here')\n```", FINAL]
    [inv] = run(toynet(tmp_path, f"replay:{write_replay(tmp_path / 't.json', turns)}"))
    assert not marker.exists(), "the payload ran in the main process"
    assert inv.result.status == "completed"
    text = history_text(inv)
    assert "sk-ant-must-not-leak" not in text
    # The worker that sent garbage counts as broken: replaced, the agent told, the run goes on.
    assert "malformed message" in text and "variables from earlier cells are lost" in text
    assert inv.result.sandbox_restarts == 1
    assert "still here" in text


# -- 3. a worker that dies while the backbone thinks must not end the run -------------------------

TIMER = "```python\nimport os, threading\nthreading.Timer(0.5, lambda: os._exit(3)).start()\nx = 1\nprint('armed')\n```"
AFTER = "```python\nprint('after', 'x' in globals())\n```"


def test_a_worker_that_dies_between_rounds_is_replaced_and_the_run_goes_on(
    with_thirdparty, tmp_path, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    turns = [TIMER, AFTER, FINAL]

    def answer(body):
        n = sum(m["role"] == "assistant" for m in body["messages"])
        # Every reply takes longer than the timer, as a real API does.
        return reply(turns[min(n, len(turns) - 1)], delay=1.5)

    with FakeProvider("openai", answer) as fp:
        invs = run(toynet(tmp_path, "gpt-4o", base_url=fp.base_url, units="conv2=0,1"))
    assert [i.result.status for i in invs] == ["completed", "completed"]
    for inv in invs:
        saved = json.loads((inv.out_dir / "result.json").read_text())
        assert saved["status"] == "completed" and saved["sandbox_restarts"] == 1
        result = inv.messages[5]  # the second round's execution result
        assert "exit status 3" in result.text and "between rounds" in result.text
        assert "after False" in result.text  # the cell ran, in a fresh worker


def toynet_cli(tmp_path, turns, *extra, units="conv2=0", env=None):
    from conftest import maia

    replay = write_replay(tmp_path / "turns.json", turns)
    return maia(
        "run",
        "--target",
        "toynet",
        "--units",
        units,
        "--backbone",
        f"replay:{replay}",
        "--results",
        str(tmp_path / "results"),
        "--reporter",
        "json,html",
        *extra,
        env=env,
    )


# -- 2. secrets: an allow-list environment, and no other process in sight ------------------------


def test_the_environment_of_hosts_and_kernels_is_an_allow_list():
    from maia_core.execution.isolation import child_environment

    env = {
        "PATH": "/bin",
        "HOME": "/home/u",
        "HF_HOME": "/cache",
        "CUDA_VISIBLE_DEVICES": "0",
        "PYTHONPATH": "/p",
        "ANTHROPIC_API_KEY": "k",
        "DB_PASS": "p",
        "MYSQL_PWD": "p",
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_REGION": "r",
        "DATABASE_URL": "postgres://u:secret@db/x",
        "HTTPS_PROXY": "http://u:secret@proxy:3128",
        "MAIA_SERVICE_URL": "https://u:secret@host/",
        "HF_TOKEN": "t",
        "RANDOM_VAR": "x",
    }
    assert child_environment(env) == {
        "PATH": "/bin",
        "HOME": "/home/u",
        "HF_HOME": "/cache",
        "CUDA_VISIBLE_DEVICES": "0",
        "PYTHONPATH": "/p",
    }


ENV_PROBE = """```python
import os, glob
found = []
for path in glob.glob('/proc/[0-9]*/environ'):
    try:
        if b'sk-ancestor-secret' in open(path, 'rb').read():
            found.append(path)
    except OSError:
        pass
print('pids visible:', len(glob.glob('/proc/[0-9]*')), 'key found in:', found)
print('env has key:', any('sk-ancestor' in v for v in os.environ.values()))
```"""


def test_agent_code_cannot_read_keys_from_any_process(thirdparty_env, tmp_path):
    import subprocess
    import sys

    from conftest import MAIA

    replay = write_replay(tmp_path / "t.json", [ENV_PROBE, FINAL])
    # An ancestor holds the key in its environment, as `timeout ... maia run` or a shell would.
    script = (
        "import os, subprocess, sys; "
        f"r = subprocess.run([{MAIA!r}, 'run', '--target', 'toynet', '--units', 'conv2=0', "
        f"'--backbone', 'replay:{replay}', '--results', {str(tmp_path / 'r')!r}, '--reporter', 'json']); "
        "sys.exit(r.returncode)"
    )
    env = {
        **os.environ,
        **thirdparty_env,
        "ANTHROPIC_API_KEY": "sk-ancestor-secret",
        "DB_PASSWORD": "sk-ancestor-secret",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    history = next((tmp_path / "r").rglob("history.json")).read_text()
    assert "key found in: []" in history and "env has key: False" in history
    # only the kernel's own namespace is visible
    assert "pids visible: 1 " in history or "pids visible: 2 " in history


# -- 4. one unit's code must not change the model for the next ----------------------------------

# Unit 0 tampers with whatever it can reach; unit 1 only measures.
TAMPER = """```python
if system.neuron_num == 0:
    try:
        model = system._target.model
    except AttributeError as e:
        print('cannot reach the model:', e)
    else:
        for p in model.parameters():
            p.data.mul_(0)
        model.conv1.register_forward_hook(lambda m, i, o: o * 0)
        print('tampered')
acts, _ = system.call_neuron([Image.new('RGB', (64, 64), 'white')])
print('act', round(acts[0], 6))
```"""


@pytest.mark.parametrize("sandbox", ["process", "none"])
def test_every_unit_starts_from_the_pristine_model(with_thirdparty, tmp_path, sandbox):
    probe = "```python\nacts, _ = system.call_neuron([Image.new('RGB', (64, 64), 'white')])\nprint('act', round(acts[0], 6))\n```"
    alone = run(
        toynet(
            tmp_path / "alone",
            f"replay:{write_replay(tmp_path / 'p.json', [probe, FINAL])}",
            units="conv2=1",
            sandbox=sandbox,
        )
    )
    expected = alone[0].messages[3].text
    turns = write_replay(tmp_path / "t.json", [TAMPER, probe, FINAL])
    invs = run(
        toynet(
            tmp_path / "after", f"replay:{turns}", units="conv2=0,1", sandbox=sandbox, concurrency=1
        )
    )
    first = invs[0].messages[3].text
    if sandbox == "process":
        assert "cannot reach the model" in first
    else:
        assert "tampered" in first and "act 0.0" in first  # in-process code can reach it...
    # ...but the next unit measures the model as loaded
    assert invs[1].messages[5].text == expected


# -- 5. orphans and signals ---------------------------------------------------------------------


def _descendants(pid):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(p) -> str:
    """A process's command line, or "" for one that has just ended (gone, or a zombie not yet
    reaped: the sandbox probe's short-lived children, say)."""
    import psutil

    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT", "SIGKILL"])
def test_a_killed_run_leaves_no_children_and_saves_what_finished(thirdparty_env, tmp_path, sig):
    import signal
    import subprocess
    import time

    import psutil

    from conftest import MAIA

    loop = "```python\nwhile True:\n    pass\n```"
    replay = write_replay(tmp_path / "t.json", [loop, FINAL])
    env = {**os.environ, **thirdparty_env, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [
            MAIA,
            "run",
            "--target",
            "toynet",
            "--units",
            "conv2=0-1",
            "--backbone",
            f"replay:{replay}",
            "--results",
            str(tmp_path / "r"),
            "--cell-timeout",
            "300",
            "--concurrency",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = [_cmdline(p) for p in _descendants(proc.pid)]
        kernels = [line for line in lines if "execution.kernel" in line]
        if len(kernels) >= 2 and any("execution.host" in line for line in lines):
            break
        time.sleep(0.2)
    time.sleep(1)  # the investigations are under way
    children = _descendants(proc.pid)
    assert any("execution.host" in _cmdline(p) for p in children)
    proc.send_signal(getattr(signal, sig))
    # Left alone, the cells' endless loops would hold the run for their 300 s limit: ending
    # within 60 s is the signal's doing (an outcome, not a timing on a loaded machine).
    _, stderr = proc.communicate(timeout=60)
    if sig != "SIGKILL":
        assert proc.returncode == 130
        assert "Finished units are saved" in stderr
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [_cmdline(p) for p in alive]
    # nothing in flight was marked finished: a re-run resumes both units
    assert not list((tmp_path / "r").rglob("result.json"))


def test_killed_exemplar_computation_leaves_no_data_loader_workers(tmp_path):
    import signal
    import subprocess
    import time

    import psutil

    from conftest import MAIA

    proc = subprocess.Popen(
        [
            MAIA,
            "exemplars",
            "compute",
            "--target",
            "efficientnet_lite0",
            "--dataset",
            "scenes:n=2000,size=128",
            "--layers",
            "blocks.2",
            "--workers",
            "2",
            "--batch-size",
            "8",
            "--exemplars",
            str(tmp_path / "ex"),
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    workers = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = _descendants(proc.pid)
        time.sleep(0.2)
    assert len(workers) >= 2, "the data loader workers did not start"
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


# -- 6, 7, 19. reports: bad rows, the completion marker, escaping ------------------------------------


def test_a_malformed_result_anywhere_does_not_break_later_runs(with_thirdparty, tmp_path):
    results = tmp_path / "results"
    bad = results / "other" / "toynet" / "conv2" / "9"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text("[1, 2, 3]")
    odd = results / "other" / "toynet" / "conv2" / "x"
    odd.mkdir(parents=True)
    (odd / "result.json").write_text(
        json.dumps(
            {
                "unit": "x",
                "status": "completed",
                "rounds": '<meta http-equiv="refresh" content="0;url=https://example.com">',
                "usage": "n/a",
            }
        )
    )
    turns = write_replay(tmp_path / "t.json", [FINAL])
    invs = run(toynet(tmp_path, f"replay:{turns}", units="conv2=0-2", reporters=["json", "html"]))
    assert [i.result.status for i in invs] == ["completed"] * 3
    index = (results / "index.html").read_text()
    assert "unreadable" in index  # the bad row is shown and marked
    # a planted result.json (no signature) is listed as data, its claims not taken
    assert "not written by maia run here" in index
    assert '<meta http-equiv="refresh"' not in index and "&lt;meta http-equiv=" in index


KILL_AFTER_HTML = """
import os, sys
from maia_core.loop.reporter import Reporter
from maia_core.loop.run import RunConfig, run, make_reporters

class Crash(Reporter):
    def unit_finished(self, inv):
        os._exit(9)  # the machine dies after the reporters' files, before the marker

reporters = make_reporters(["json", "html"], sys.argv[2])
reporters.reporters.append(Crash())
run(RunConfig(target="toynet", units="conv2=0", backbone="replay:" + sys.argv[1], results=sys.argv[2]), reporters)
"""


def test_a_crash_before_the_completion_marker_means_the_unit_runs_again(
    with_thirdparty, thirdparty_env, tmp_path
):
    import subprocess
    import sys

    turns = write_replay(tmp_path / "t.json", [FINAL])
    results = tmp_path / "results"
    env = {**os.environ, **thirdparty_env}
    crashed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_HTML, str(turns), str(results)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == 9, crashed.stderr
    unit = next(results.rglob("history.json")).parent
    assert not (unit / "result.json").exists()  # not marked completed...
    again = run(toynet(tmp_path, f"replay:{turns}", reporters=["json", "html"]))
    assert (
        again[0].result.status == "completed" and again[0].skip_reason is None
    )  # ...so it ran again
    assert (unit / "report.html").is_file() and (unit / "result.json").is_file()


def test_a_completed_unit_without_its_report_gets_one_on_the_next_run(with_thirdparty, tmp_path):
    turns = write_replay(tmp_path / "t.json", ["```python\nprint('hi')\n```", FINAL])
    [inv] = run(toynet(tmp_path, f"replay:{turns}", reporters=["json", "html"]))
    report = inv.out_dir / "report.html"
    original = report.read_text()
    report.unlink()
    [again] = run(toynet(tmp_path, f"replay:{turns}", reporters=["json", "html"]))
    assert again.skip_reason == "completed"
    assert report.read_text() == original


# -- 8. locks, and a results folder per recording --------------------------------------------------


def test_a_unit_another_run_is_studying_is_skipped_and_a_stale_lock_is_not(
    with_thirdparty, tmp_path
):
    from maia_core.loop.results import UnitLock

    turns = write_replay(tmp_path / "t.json", [FINAL])
    config = toynet(tmp_path, f"replay:{turns}", units="conv2=0-2")
    unit0 = tmp_path / "results" / "replay-t" / "toynet" / "conv2" / "0"
    held = UnitLock(unit0)
    assert held.acquire() is None
    # a lock file left behind by a run that died holds no lock
    stale = tmp_path / "results" / "replay-t" / "toynet" / "conv2" / "1" / ".lock"
    stale.parent.mkdir(parents=True)
    stale.write_text("maia run (pid 999999 on elsewhere)")
    try:
        invs = run(config)
    finally:
        held.release()
    assert invs[0].skip_reason.startswith("being studied by another run: maia run (pid")
    assert invs[0].result is None and not (unit0 / "result.json").exists()
    assert [i.result.status for i in invs[1:]] == ["completed", "completed"]
    [again] = run(toynet(tmp_path, f"replay:{turns}", units="conv2=0"))
    assert again.result.status == "completed"


def test_each_replay_gets_its_own_results_folder(with_thirdparty, tmp_path):
    a = write_replay(tmp_path / "first.json", [FINAL])
    b = write_replay(tmp_path / "second.json", ["[DESCRIPTION]: other\n[LABEL]: other"])
    [one] = run(toynet(tmp_path, f"replay:{a}"))
    [two] = run(toynet(tmp_path, f"replay:{b}"))
    assert two.skip_reason is None and two.result.label == "other"
    assert one.out_dir != two.out_dir


# -- 9. the memory cap counts the kernel's children ---------------------------------------------------

CHILD_HOG = """```python
import subprocess, sys
subprocess.run([sys.executable, '-c', 'import numpy as np, time; b = np.ones(2**27); time.sleep(30)'])
print('child finished')
```"""


def test_the_memory_cap_counts_child_processes(with_thirdparty, tmp_path):
    [inv] = run(
        toynet(
            tmp_path,
            f"replay:{write_replay(tmp_path / 't.json', [CHILD_HOG, FINAL])}",
            memory_limit="500M",
        )
    )
    text = inv.messages[3].text
    assert "more memory than the sandbox allows" in text and "child processes included" in text
    assert "child finished" not in text
    assert inv.result.status == "completed"


# -- 20, 21, 22. cell output --------------------------------------------------------------------------

BIG_IMAGES = """```python
rng = np.random.default_rng(0)
for i in range(24):
    tools.display(Image.fromarray(rng.integers(0, 255, (2000, 2000, 3), dtype=np.uint8)))
```"""

FD_OUTPUT = """```python
import os, ctypes
os.system('echo from a subprocess')
libc = ctypes.CDLL(None)
libc.printf(b"from C code\\n")
libc.fflush(None)
print('from python')
```"""


def test_cell_output_is_bounded_and_includes_descriptor_output(with_thirdparty, tmp_path):
    turns = write_replay(tmp_path / "t.json", [BIG_IMAGES, FD_OUTPUT, FINAL])
    [inv] = run(toynet(tmp_path, f"replay:{turns}"))
    images = inv.messages[3].images
    assert all(max(p.to_pil().size) <= 1024 for p in images)
    assert sum(len(p.data) for p in images) <= 8 * 2**20
    assert "were not shown" in inv.messages[3].text and "were shrunk" in inv.messages[3].text
    out = inv.messages[5].text
    assert "from a subprocess" in out and "from C code" in out and "from python" in out


def test_a_final_answer_counts_only_outside_code_at_a_line_start(with_thirdparty, tmp_path):
    quoting = "I will end with [DESCRIPTION] later.\n```python\nprint('[DESCRIPTION]: not yet')\nx = 1\n```"
    turns = write_replay(tmp_path / "t.json", [quoting, "```python\nprint('ran', x)\n```", FINAL])
    [inv] = run(toynet(tmp_path, f"replay:{turns}"))
    assert inv.result.rounds == 3 and "ran 1" in inv.messages[5].text
    assert inv.result.description == "anything"


# -- 10, 12, 15-18. bad input: one line, exit code 2, before any work ---------------------------------


def _one_line(out, *needles):
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unusable_output_paths_are_refused_before_any_work(tmp_path):
    from conftest import maia

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    replay = write_replay(tmp_path / "t.json", [FINAL])
    base = [
        "run",
        "--target",
        "efficientnet_lite0",
        "--units",
        "blocks.6=0",
        "--backbone",
        f"replay:{replay}",
    ]
    _one_line(maia(*base, "--results", str(a_file)), "--results", "is a file")
    _one_line(maia(*base, "--results", str(a_file / "sub")), "lies under", "which is a file")
    _one_line(
        maia(*base, "--results", "/proc/maia-results"),
        "--results '/proc/maia-results' cannot be created",
    )
    compute = [
        "exemplars",
        "compute",
        "--target",
        "efficientnet_lite0",
        "--dataset",
        "scenes:n=2",
        "--layers",
        "blocks.6",
    ]
    _one_line(maia(*compute, "--out", str(a_file)), "--out", "is a file")
    _one_line(
        maia(
            "exemplars",
            "show",
            "--target",
            "efficientnet_lite0",
            "--layer",
            "blocks.6",
            "--unit",
            "0",
            "--out",
            str(tmp_path / "missing" / "x.png"),
        ),
        "--out",
        "does not exist",
    )
    _one_line(
        maia(
            "basis",
            "train-sae",
            "--target",
            "efficientnet_lite0",
            "--layer",
            "blocks.6",
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "missing" / "s.safetensors"),
        ),
        "--out",
        "does not exist",
    )


def test_bad_numbers_and_paths_for_the_other_commands(tmp_path):
    from conftest import maia

    a_file = tmp_path / "f.json"
    a_file.write_text("{}")
    train = [
        "basis",
        "train-sae",
        "--target",
        "efficientnet_lite0",
        "--layer",
        "blocks.6",
        "--images",
        str(tmp_path),
        "--out",
        str(tmp_path / "s.safetensors"),
    ]
    _one_line(maia(*train, "--limit", "-1"), "--limit must be at least 1")
    _one_line(maia(*train, "--lr", "nan"), "--lr must be a finite number above 0")
    _one_line(maia("exemplars", "import-maia", str(a_file), "--target", "resnet152"), "is a file")
    replay = write_replay(tmp_path / "t.json", [FINAL])
    _one_line(
        maia(
            "run",
            "--target",
            "efficientnet_lite0",
            "--units",
            "blocks.6=0",
            "--backbone",
            f"replay:{replay}",
            "--exemplars",
            str(a_file),
            "--results",
            str(tmp_path / "r"),
        ),
        "--exemplars",
        "is a file",
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "is not text"),
        ("\ufeff" + json.dumps([FINAL]), None),  # a byte-order mark is fine
        (json.dumps([FINAL, 3]), "item 1 is a int, not a turn"),
        (
            json.dumps({"messages": [{"role": "assistant", "parts": 5}]}),
            "message 0 is an assistant turn whose content is a int",
        ),
        (json.dumps({"messages": "x"}), "must hold a maia history.json or a JSON list of strings"),
        (json.dumps({}), "must hold a maia history.json"),
    ],
)
def test_replay_files_of_every_shape(thirdparty_env, tmp_path, content, message):
    from conftest import maia

    path = tmp_path / "replay.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    out = maia(
        "run",
        "--target",
        "toynet",
        "--units",
        "conv2=0",
        "--backbone",
        f"replay:{path}",
        "--results",
        str(tmp_path / "r"),
        "--reporter",
        "json",
        env=thirdparty_env,
    )
    if message is None:
        assert out.returncode == 0, out.stderr
    else:
        _one_line(out, message)


def test_unit_selections_that_select_nothing(tmp_path):
    from conftest import maia

    replay = write_replay(tmp_path / "t.json", [FINAL])
    empty = tmp_path / "units.json"
    empty.write_text("{}")
    base = [
        "run",
        "--target",
        "efficientnet_lite0",
        "--backbone",
        f"replay:{replay}",
        "--results",
        str(tmp_path / "r"),
    ]
    _one_line(maia(*base, "--unit-file", str(empty)), "Zero units selected")
    _one_line(
        maia(*base, "--units", "blocks.6=0", "--chunk", "3/4"),
        "Zero units selected",
        "chunk 3/4 of the 1 selected unit",
    )


def test_a_damaged_exemplar_store_is_one_line_naming_it_and_the_fix(tmp_path, photos):
    from conftest import maia, make_photo_folder

    folder = make_photo_folder(tmp_path / "photos", photos, n=6, broken=False)
    store = tmp_path / "store"
    computed = maia(
        "exemplars",
        "compute",
        "--target",
        "efficientnet_lite0",
        "--dataset",
        f"imagefolder:{folder}",
        "--layers",
        "blocks.6",
        "--out",
        str(store),
        "--workers",
        "0",
    )
    assert computed.returncode == 0, computed.stderr
    replay = write_replay(tmp_path / "t.json", [FINAL])
    run_args = [
        "run",
        "--target",
        "efficientnet_lite0",
        "--units",
        "blocks.6=0",
        "--backbone",
        f"replay:{replay}",
        "--exemplars",
        str(store),
        "--results",
        str(tmp_path / "r"),
    ]
    layer = store / "blocks.6.safetensors"
    layer.write_bytes(layer.read_bytes()[:100])  # truncated
    _one_line(maia(*run_args), f"The exemplar store {store} is damaged", "maia exemplars compute")
    (store / "manifest.json").write_text("{not json")
    _one_line(maia(*run_args), "is damaged: its manifest.json is not readable JSON", "--force")
