"""A unit is completed only when all of it is on disk (issue 19, item 1).

A reporter that cannot write fails its unit; a full disk stops the run with one line that
names the unit, the space needed and what to free; a unit marked completed is skipped only
when its result, history, label, description and report are there and agree. Tested on a
real small file system (a tmpfs, where mounting is permitted) and, on any machine, with the
operating system's fsync made to answer ENOSPC or EIO.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from conftest import maia, write_replay
from maia_core.errors import UserError
from maia_core.loop.run import RunConfig, run

pytest_plugins = ["small_disk"]  # the small_disk and failing_writes fixtures

FINAL = "[DESCRIPTION]: bright noise\n[LABEL]: noise"
# One cell of 8 MB of images: its history.json alone is about 9.6 MB.
BIG = (
    "```python\nrng = np.random.default_rng(0)\nfor i in range(8):\n"
    "    tools.display(Image.fromarray(rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)))\n```"
)
SMALL = "```python\nprint('hello')\n```"
UNIT_FILES = ("result.json", "history.json", "label.txt", "description.txt", "report.html")


def toynet(results, turns, **kw) -> RunConfig:
    kw.setdefault("units", "conv2=0-1")
    kw.setdefault("reporters", ["json", "html"])
    kw.setdefault("concurrency", 1)
    return RunConfig(target="toynet", backbone=f"replay:{turns}", results=results, **kw)


def marked_completed(results) -> list:
    return [
        p.parent
        for p in results.rglob("result.json")
        if json.loads(p.read_text()).get("status") == "completed"
    ]


def assert_whole(unit_dir, label="noise") -> None:
    """Every file of a completed unit is there, and each says the same answer."""
    for name in UNIT_FILES:
        assert (unit_dir / name).is_file(), name
    result = json.loads((unit_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["label"] == label
    assert (unit_dir / "label.txt").read_text() == label + "\n"
    history = json.loads((unit_dir / "history.json").read_text())
    assert f"[LABEL]: {label}" in history["messages"][-1]["parts"][0]["text"]
    assert f"<b>Label:</b> {label}" in (unit_dir / "report.html").read_text()


def test_a_full_disk_stops_the_run_in_one_line_and_marks_nothing_completed(
    thirdparty_env, tmp_path, small_disk
):
    disk = small_disk("4m")
    results = disk.path / "results"
    turns = write_replay(tmp_path / "t.json", [BIG, FINAL])
    command = [
        "run",
        "--target",
        "toynet",
        "--units",
        "conv2=0-1",
        "--backbone",
        f"replay:{turns}",
        "--results",
        str(results),
        "--concurrency",
        "1",
    ]
    out = maia(*command, env=thirdparty_env)
    assert out.returncode == 2, out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in out.stderr, out.stderr
    line = error[0]
    assert "The disk is full: writing history.json of unit conv2=0" in line
    assert "it needs 9.6 MB" in line and "Free at least" in line and "MB there" in line
    assert "run the same command again" in line and "conv2=0 is studied again" in line
    assert "✓" not in out.stdout + out.stderr  # no unit was said to be completed
    assert marked_completed(results) == []

    # a re-run on the same full disk marks nothing completed either...
    again = maia(*command, env=thirdparty_env)
    assert again.returncode == 2 and marked_completed(results) == []
    # ...and once there is room, it studies both units to the end, every file in place
    disk.remount("size=64m")
    done = maia(*command, env=thirdparty_env)
    assert done.returncode == 0, done.stderr
    units = sorted(p.parent for p in results.rglob("result.json"))
    assert [u.name for u in units] == ["0", "1"]
    for unit in units:
        assert_whole(unit)


def test_enospc_in_a_reporter_stops_the_run_and_the_re_run_redoes_the_unit(
    with_thirdparty, tmp_path, failing_writes
):
    results = tmp_path / "results"
    turns = write_replay(tmp_path / "t.json", [SMALL, BIG, FINAL])

    def full(path: str, size: int) -> bool:  # a disk with 1 MB free under the results
        return path.startswith(str(results)) and size > 1_000_000

    with failing_writes(full), pytest.raises(UserError) as err:
        run(toynet(results, turns))
    message = err.value.message
    assert message.startswith("The disk is full: writing history.json of unit conv2=0 failed")
    assert "Free at least" in message and "\n" not in message
    assert marked_completed(results) == []
    [unit0] = [p.parent for p in results.rglob("history.json")]  # unit 1 never started
    assert not (unit0 / "label.txt").exists()

    invs = run(toynet(results, turns))
    assert [(i.skip_reason, i.result.status) for i in invs] == [(None, "completed")] * 2
    for inv in invs:
        assert_whole(inv.out_dir)


def test_a_reporter_that_cannot_write_fails_its_unit_and_the_run_goes_on(
    with_thirdparty, tmp_path, failing_writes, capfd
):
    results = tmp_path / "results"
    turns = write_replay(tmp_path / "t.json", [SMALL, FINAL])

    def report_of_unit0(path: str, size: int) -> bool:
        return "/conv2/0/.report.html." in path

    with failing_writes(report_of_unit0, errno.EIO):
        invs = run(toynet(results, turns))
    unit0, unit1 = invs
    assert unit0.result.status == "failed" and unit1.result.status == "completed"
    assert "HtmlReporter" in unit0.result.error and "Input/output error" in unit0.result.error
    saved = json.loads((unit0.out_dir / "result.json").read_text())
    assert saved["status"] == "failed" and "HtmlReporter" in saved["error"]
    assert "conv2=0 is not saved and the next run studies it again" in capfd.readouterr().err
    assert_whole(unit1.out_dir)

    again = run(toynet(results, turns))
    assert [(i.skip_reason, i.result.status) for i in again] == [
        (None, "completed"),
        ("completed", "completed"),
    ]
    assert_whole(unit0.out_dir)


def test_a_unit_is_skipped_only_when_all_of_it_is_there_and_agrees(
    with_thirdparty, tmp_path, capfd
):
    results = tmp_path / "results"
    turns = write_replay(tmp_path / "t.json", [SMALL, FINAL])
    first = run(toynet(results, turns, units="conv2=0-3"))
    cut, unlabelled, reportless, stale = (i.out_dir for i in first)
    # a history cut short after its first reply (as a full disk left it), marked completed
    history = json.loads((cut / "history.json").read_text())
    history["messages"] = history["messages"][:3]
    (cut / "history.json").write_text(json.dumps(history))
    (cut / "label.txt").unlink()
    (cut / "report.html").unlink()
    (unlabelled / "label.txt").unlink()
    (unlabelled / "description.txt").write_text("something else\n")
    (reportless / "report.html").unlink()
    (stale / "report.html").write_text(
        (stale / "report.html").read_text().replace("<b>Label:</b> noise", "<b>Label:</b> old")
    )
    capfd.readouterr()

    again = run(toynet(results, turns, units="conv2=0-3"))
    assert [i.skip_reason for i in again] == [None, "completed", "completed", "completed"]
    err = capfd.readouterr().err
    assert (
        "conv2=0 was marked completed, but its history.json does not end with the answer "
        "result.json gives; studying it again" in err
    )
    for unit in (cut, unlabelled, reportless, stale):
        assert_whole(unit)
    assert (unlabelled / "description.txt").read_text() == "bright noise\n"


def test_a_unit_with_no_history_to_rebuild_from_is_studied_again(with_thirdparty, tmp_path):
    results = tmp_path / "results"
    turns = write_replay(tmp_path / "t.json", [SMALL, FINAL])
    [inv] = run(toynet(results, turns, units="conv2=0"))
    (inv.out_dir / "history.json").unlink()
    (inv.out_dir / "report.html").unlink()
    [again] = run(toynet(results, turns, units="conv2=0"))
    assert again.skip_reason is None and again.result.status == "completed"
    assert_whole(again.out_dir)
    # with only the html reporter, a missing report and no history also mean studying again
    (inv.out_dir / "report.html").unlink()
    os.remove(inv.out_dir / "history.json")
    [html_only] = run(toynet(results, turns, units="conv2=0", reporters=["html"]))
    assert html_only.skip_reason is None and (inv.out_dir / "report.html").is_file()


def test_a_failing_reporter_whose_files_are_not_the_units_costs_no_unit(
    with_thirdparty, tmp_path, capfd
):
    from maia_core.loop.reporter import Reporter
    from maia_core.loop.run import make_reporters

    class Dashboard(Reporter):  # a logger that sends each message somewhere, and cannot
        def message_added(self, inv, message):
            raise ConnectionRefusedError("the dashboard is down")

    results = tmp_path / "results"
    reporters = make_reporters(["json", "html"], results)
    reporters.reporters.append(Dashboard())
    turns = write_replay(tmp_path / "t.json", [SMALL, FINAL])
    invs = run(toynet(results, turns), reporters)
    assert [i.result.status for i in invs] == ["completed", "completed"]
    for inv in invs:
        assert_whole(inv.out_dir)
    err = capfd.readouterr().err
    assert "the Dashboard reporter failed in message_added" in err and "not saved" not in err


def test_history_checkpoints_skip_fsync_and_a_finished_units_files_are_synced(
    with_thirdparty, tmp_path, monkeypatch
):
    """A checkpoint of history.json after each message is written atomically but not synced
    (a unit that stops unfinished is studied again); the unit's last history.json, and every
    file that marks or holds the finished unit, reach the disk before their rename."""
    synced: list[str] = []
    replaced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        replaced.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    results = tmp_path / "results"
    turns = write_replay(tmp_path / "t.json", [SMALL, SMALL, FINAL])
    [inv] = run(toynet(results, turns, units="conv2=0"))
    assert inv.result.status == "completed"
    assert_whole(inv.out_dir)
    writes = replaced.count("history.json")
    assert writes >= 7  # system, task, three replies, two results, and the unit's end
    # the temporary file is synced under its own name, just before it becomes history.json
    history_syncs = [s for s in synced if s.startswith(".history.json.")]
    assert len(history_syncs) == 1
    for name in ("result.json", "label.txt", "description.txt", "report.html"):
        assert any(s.startswith(f".{name}.") for s in synced), (name, synced)
