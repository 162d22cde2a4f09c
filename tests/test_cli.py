"""`maia` as users run it: the first offline run, resume, and one-line errors."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES, maia, make_photo_folder, write_replay

FIXTURE = FIXTURES / "replay_efficientnet.json"


def run_args(results, *extra, units="blocks.6=0-2", backbone=f"replay:{FIXTURE}"):
    return [
        "run",
        "--target",
        "efficientnet_lite0",
        "--units",
        units,
        "--backbone",
        backbone,
        "--results",
        str(results),
        *extra,
    ]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, photos):
    """The README's first run, after computing exemplars over a folder of photos."""
    tmp = tmp_path_factory.mktemp("first")
    folder = make_photo_folder(tmp / "photos", photos)
    computed = maia(
        "exemplars",
        "compute",
        "--target",
        "efficientnet_lite0",
        "--dataset",
        f"imagefolder:{folder}",
        "--layers",
        "blocks.6",
        "--exemplars",
        str(tmp / "exemplars"),
        "--workers",
        "0",
    )
    assert computed.returncode == 0, computed.stderr
    results = tmp / "results"
    out = maia(*run_args(results, "--exemplars", str(tmp / "exemplars")))
    return results, out


def test_first_offline_run_writes_every_report(first_run):
    results, out = first_run
    assert out.returncode == 0, out.stderr
    for unit in (0, 1, 2):
        d = results / "replay-replay_efficientnet" / "efficientnet_lite0" / "blocks.6" / str(unit)
        for name in (
            "report.html",
            "history.json",
            "result.json",
            "description.txt",
            "label.txt",
            "thumb.jpg",
        ):
            assert (d / name).is_file(), f"{d / name} missing"
        result = json.loads((d / "result.json").read_text())
        assert result["status"] == "completed" and result["unit"] == unit and result["rounds"] == 4
        assert result["threshold"].startswith("dataset threshold")
        assert (d / "label.txt").read_text().strip() == result["label"]
        history = json.loads((d / "history.json").read_text())
        texts = "\n".join(p.get("text", "") for m in history["messages"] for p in m["parts"])
        outputs = "\n".join(
            p.get("text", "")
            for m in history["messages"]
            if m["role"] == "user"
            for p in m["parts"]
        )
        assert outputs.count("exemplar: activation") == 15
        assert "a zebra on grass: activation" in texts and "control activations:" in texts
        assert sum(p["type"] == "image" for m in history["messages"] for p in m["parts"]) == 15 + 5
        report = (d / "report.html").read_text()
        assert report.count("<img") == 20 and report.count("<figcaption>exemplar: activation") == 15
    index = (results / "index.html").read_text()
    assert index.count('href="replay-replay_efficientnet/efficientnet_lite0/blocks.6/') == 3
    assert "maia run summary" in out.stdout and "completed" in out.stdout
    assert not list(results.rglob("*.tmp")), "temporary files left behind"


def test_rerun_skips_completed_units_and_force_redoes_them(first_run):
    results, _ = first_run
    before = (
        results / "replay-replay_efficientnet/efficientnet_lite0/blocks.6/1/result.json"
    ).read_text()
    out = maia(*run_args(results, units="blocks.6=1"))
    assert out.returncode == 0 and "already completed; skipped" in out.stdout
    assert (
        results / "replay-replay_efficientnet/efficientnet_lite0/blocks.6/1/result.json"
    ).read_text() == before
    out = maia(*run_args(results, "--force", units="blocks.6=1"))
    assert out.returncode == 0 and "skipped" not in out.stdout
    assert json.loads(
        (
            results / "replay-replay_efficientnet/efficientnet_lite0/blocks.6/1/result.json"
        ).read_text()
    )["started_at"]


def test_chunk_random_and_unit_file(tmp_path):
    turns = write_replay(tmp_path / "t.json", ["[DESCRIPTION]: d\n[LABEL]: l"])
    unit_file = tmp_path / "units.json"
    unit_file.write_text(json.dumps({"blocks.6": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}))
    out = maia(
        "run",
        "--target",
        "efficientnet_lite0",
        "--unit-file",
        str(unit_file),
        "--random",
        "4",
        "--seed",
        "3",
        "--chunk",
        "1/2",
        "--backbone",
        f"replay:{turns}",
        "--results",
        str(tmp_path / "r"),
        "--reporter",
        "json",
    )
    assert out.returncode == 0, out.stderr
    done = sorted(int(p.parent.name) for p in (tmp_path / "r").rglob("result.json"))
    assert len(done) == 2  # the second half of 4 sampled units
    from maia_core.units import Unit, chunk, sample

    sampled = sample([Unit("blocks.6", i) for i in range(10)], 4, 3)
    assert done == [u.index for u in chunk(sampled, 1, 2)]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--target", "nonet"],
            "Unknown target 'nonet' for --target. Known: clip-RN50, dino_vits8, efficientnet_lite0",
        ),
        (
            ["--backbone", "gtp-4o"],
            "Unknown backbone 'gtp-4o' for --backbone. Known: baseline, claude (claude-*)",
        ),
        (["--tools", "teleport"], "Unknown tool 'teleport' for --tools. Known: "),
        (["--units", "blocks.6=x"], "Malformed unit spec 'blocks.6=x'"),
        (
            ["--units", "blocks.99=0"],
            "Unknown layer 'blocks.99' for target efficientnet_lite0. Valid layers: conv_stem",
        ),
        (
            ["--units", "blocks.6=320"],
            "Unit 320 is out of range for layer 'blocks.6' of efficientnet_lite0, which has 320 units (0-319)",
        ),
        (
            ["--backbone", "replay:/no/such/file.json"],
            "Replay file '/no/such/file.json' does not exist",
        ),
        (["--target-option", "colour"], "Malformed --target-option 'colour'"),
        (["--chunk", "2/2"], "Malformed --chunk '2/2'"),
        (["--memory-limit", "heaps"], "Malformed --memory-limit 'heaps'"),
        (["--sandbox", "docker"], "Unknown --sandbox 'docker'"),
        # hardening 11, 13, 14, 17: numbers that make no sense, huge ranges, bad addresses
        (["--cell-timeout", "0"], "--cell-timeout must be a number of seconds above 0"),
        (["--cell-timeout", "-1"], "--cell-timeout must be a number of seconds above 0"),
        (["--cell-timeout", "nan"], "--cell-timeout must be a number of seconds above 0"),
        (["--memory-limit", "0"], "--memory-limit '0' must be more than zero"),
        (["--memory-limit", "500%"], "is more than all of this machine's memory"),
        (
            ["--units", "blocks.6=0-999999999"],
            "Unit 999999999 is out of range for layer 'blocks.6'",
        ),
        (
            ["--backbone", "local-x", "--base-url", "localhost:11434"],
            "Malformed --base-url 'localhost:11434'",
        ),
        (["--backbone", "local-x", "--base-url", "http://"], "Malformed --base-url 'http://'"),
        (["--describer", "nosuch"], "Unknown backbone 'nosuch' for --describer"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(tmp_path, args, message):
    base = {
        "--target": "efficientnet_lite0",
        "--units": "blocks.6=0",
        "--backbone": f"replay:{FIXTURE}",
        "--results": str(tmp_path),
    }
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    out = maia("run", *[x for kv in base.items() for x in kv])
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert message in lines[0]


def test_unreadable_unit_file_is_a_one_line_error(tmp_path):
    out = maia(
        "run",
        "--target",
        "efficientnet_lite0",
        "--unit-file",
        str(tmp_path / "nope.json"),
        "--backbone",
        f"replay:{FIXTURE}",
    )
    assert (
        out.returncode == 2
        and out.stderr.strip() == f"Error: Unit file '{tmp_path / 'nope.json'}' does not exist."
    )


def test_units_and_unit_file_are_exclusive(tmp_path):
    out = maia("run", "--target", "efficientnet_lite0", "--backbone", f"replay:{FIXTURE}")
    assert out.returncode == 2 and "exactly one of --units" in out.stderr


def test_maia_layers_lists_units_and_sizes():
    out = maia("layers", "efficientnet_lite0")
    assert out.returncode == 0
    row = next(line for line in out.stdout.splitlines() if " blocks.6 " in line)
    assert "320" in row and "7x7" in row


def test_report_escapes_agent_and_tool_text(tmp_path):
    hostile = '<script>alert("x")</script>'
    turns = write_replay(
        tmp_path / "t.json",
        [
            f"Let me try {hostile}\n```python\nprint('{hostile}')\ntools.display('<img src=x onerror=alert(1)>')\n```",
            f"[DESCRIPTION]: {hostile}\n[LABEL]: <b>bold</b>",
        ],
    )
    out = maia(*run_args(tmp_path / "r", units="blocks.6=0", backbone=f"replay:{turns}"))
    assert out.returncode == 0, out.stderr
    html = (tmp_path / "r/replay-t/efficientnet_lite0/blocks.6/0/report.html").read_text()
    assert "<script" not in html and "<img src=x" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    index = (tmp_path / "r/index.html").read_text()
    assert "<b>bold</b>" not in index and "&lt;b&gt;bold&lt;/b&gt;" in index


def test_generate_edit_and_measure_offline_with_the_default_tools(tmp_path):
    """Issue 10's run: text2image and edit_images default to scenes here, and the report shows
    the generated and edited images with what made them."""
    fixture = FIXTURES / "replay_generate_edit.json"
    out = maia(*run_args(tmp_path / "r", units="blocks.6=0-1", backbone=f"replay:{fixture}"))
    assert out.returncode == 0, out.stderr
    assert "text2image=scenes" in out.stdout and "edit_images=scenes" in out.stdout
    for unit in (0, 1):
        d = (
            tmp_path
            / "r"
            / "replay-replay_generate_edit"
            / "efficientnet_lite0"
            / "blocks.6"
            / str(unit)
        )
        result = json.loads((d / "result.json").read_text())
        assert result["status"] == "completed"
        assert (
            result["tools"]["text2image"] == "scenes" and result["tools"]["edit_images"] == "scenes"
        )
        history = json.loads((d / "history.json").read_text())
        first, second = history["messages"][3], history["messages"][5]
        assert sum(p["type"] == "image" for p in first["parts"]) == 4
        assert sum(p["type"] == "image" for p in second["parts"]) == 6  # originals and edits
        assert "Editing Prompt: replace the zebra with a horse" in "".join(
            p.get("text", "") for p in second["parts"]
        )
        [t2i] = first["meta"]["tools"]
        assert (
            t2i["tool"] == "text2image"
            and t2i["implementation"] == "scenes"
            and len(t2i["prompts"]) == 4
        )
        assert isinstance(t2i["seed"], int)
        report = (d / "report.html").read_text()
        assert (
            report.count("<img") == 10 and "Tool calls" in report and "edit_images scenes" in report
        )
    # the system prompt names the implementation in use
    assert "implementation: scenes" in history["messages"][0]["parts"][0]["text"]


def test_replaying_a_history_regenerates_the_same_images(tmp_path):
    fixture = FIXTURES / "replay_generate_edit.json"
    first = maia(
        *run_args(
            tmp_path / "a",
            units="blocks.6=3",
            backbone=f"replay:{fixture}",
        ),
        "--reporter",
        "json",
    )
    assert first.returncode == 0, first.stderr
    recorded = tmp_path / "a" / "replay-replay_generate_edit" / "efficientnet_lite0"
    again = maia(
        *run_args(tmp_path / "b", units="blocks.6=3", backbone=f"replay:{recorded}"),
        "--reporter",
        "json",
    )
    assert again.returncode == 0, again.stderr

    def images(root):
        history = json.loads(next(root.rglob("history.json")).read_text())
        return [p["data"] for m in history["messages"] for p in m["parts"] if p["type"] == "image"]

    a, b = images(tmp_path / "a"), images(tmp_path / "b")
    assert len(a) == 10 and a == b
