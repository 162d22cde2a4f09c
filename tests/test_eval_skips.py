"""``maia eval`` and ``maia bench`` with what they cannot score, odd folder names, outputs they
cannot write, bad options and interruptions (issue 19, items 2 to 6 and 9).

Units are hand-written ``result.json`` files of the third-party ``toynet``, so each test loads a
tiny model; the scoring itself is tested in test_evaluation.py.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess

import pytest

from conftest import MAIA, maia, one_line, write_replay
from maia_core.errors import UserError
from maia_core.signing import sign

pytest_plugins = ["small_disk"]  # small_disk, read_only, failing_writes


def write_result(folder, raw: str | None = None, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "target": "toynet",
        "backbone": "b",
        "layer": "conv2",
        "unit": 0,
        "status": "completed",
        "label": "red",
        "description": "red things",
        **fields,
    }
    # signed as maia run signs it (the user's key): eval scores only what maia wrote
    (folder / "result.json").write_text(raw if raw is not None else json.dumps(sign(result)))
    return folder


def test_eval_skips_names_and_counts_the_units_it_cannot_score(thirdparty_env, tmp_path):
    results = tmp_path / "r"
    good = write_result(results / "b" / "toynet" / "conv2" / "0")
    bad = {
        write_result(results / "b" / "nosuch" / "conv2" / "0", target="nosuch"): (
            "its target nosuch cannot be loaded: Unknown target 'nosuch'"
        ),
        write_result(results / "b" / "toynet" / "conv9" / "0", layer="conv9"): (
            "Unknown layer 'conv9' for target toynet"
        ),
        write_result(results / "b" / "toynet" / "conv2" / "99", unit=99): (
            "Unit 99 is out of range for layer 'conv2' of toynet, which has 4 units (0-3)"
        ),
        write_result(
            results / "b" / "lite" / "blocks.6" / "0",
            target="efficientnet_lite0",
            layer="blocks.6",
            target_options={"bogus": "1"},
        ): "has no option 'bogus'",
        write_result(results / "b" / "junk", raw="[1, 2]"): (
            "its result.json is not a JSON object maia wrote"
        ),
    }
    out = maia("eval", str(results), "--device", "cpu", env=thirdparty_env)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("maia eval: skipped ")]
    assert len(lines) == len(bad), out.stderr
    for folder, reason in bad.items():
        assert any(f"skipped {folder}: " in line and reason in line for line in lines), (
            folder,
            lines,
        )
        assert not (folder / "eval.json").exists()
    assert f"{len(bad)} unit(s) could not be scored and were skipped" in out.stderr
    assert json.loads((good / "eval.json").read_text())["predictive"]["auc"] is not None
    rows = {r["target"]: r for r in csv.DictReader((results / "eval.csv").open())}
    assert (rows["toynet"]["units"], rows["toynet"]["scored"], rows["toynet"]["skipped"]) == (
        "3",
        "1",
        "2",
    )
    assert rows["nosuch"]["skipped"] == "1" and rows["nosuch"]["scored"] == "0"
    assert "Not scored: " in (results / "eval.html").read_text()


def test_odd_folder_names_under_the_results_are_reported_and_skipped(thirdparty_env, tmp_path):
    results = tmp_path / "r"
    turns = write_replay(tmp_path / "t.json", ["[DESCRIPTION]: red things\n[LABEL]: red"])
    run = [
        "run",
        "--target",
        "toynet",
        "--units",
        "conv2=0",
        "--backbone",
        f"replay:{turns}",
        "--results",
        str(results),
        "--reporter",
        "json,html",
    ]
    assert maia(*run, env=thirdparty_env).returncode == 0
    for name in (b"\xff\xfe", b"new\nline"):
        odd = os.path.join(os.fsencode(results), b"replay-t", name, b"conv2", b"1")
        os.makedirs(odd)
        with open(os.path.join(odd, b"result.json"), "w") as f:
            json.dump({"target": "toynet", "layer": "conv2", "unit": 1, "status": "completed"}, f)
    (results / "index.html").unlink()

    again = maia(*run, env=thirdparty_env)
    assert again.returncode == 0, again.stderr
    assert "failed" not in again.stderr and "Traceback" not in again.stderr
    assert "index.html leaves out " in again.stderr and "\\xff\\xfe" in again.stderr
    assert "new\\nline" in again.stderr
    index = (results / "index.html").read_text()
    assert "1 units" in index and "replay-t/toynet/conv2/0/report.html" in index

    out = maia("eval", str(results), "--device", "cpu", env=thirdparty_env)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    skipped = [line for line in out.stderr.splitlines() if "skipped" in line and "not text" in line]
    assert len(skipped) == 2 and any("\\xff\\xfe/conv2/1" in line for line in skipped)
    assert (results / "eval.html").is_file()
    assert next(results.rglob("conv2/0/eval.json")).is_file()


def test_bench_checks_every_option_before_any_investigation(tmp_path):
    results = tmp_path / "bench"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    no_keys = {"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": ""}
    for args, needle in [
        (["--evaluator", "nosuch"], "Unknown backbone 'nosuch' for --evaluator"),
        (["--evaluator", "claude"], "ANTHROPIC_API_KEY"),
        (["-b", "baseline", "-b", "claude"], "ANTHROPIC_API_KEY"),
        (["-b", "baseline", "-b", "nosuch"], "Unknown backbone 'nosuch' for --backbone"),
        (["--results", str(a_file)], "is a file"),
        (["--n", "1000000000"], "--n must be at most 100 (prompts per side"),
        (["--n", "0"], "--n must be at least 1"),
        (["--max-rounds", "0"], "--max-rounds must be at least 1"),
        (["-j", "0"], "--concurrency must be at least 1"),
        (["--budget-usd", "nan"], "--budget-usd must be a number of dollars, 0 or more, not nan"),
    ]:
        out = maia("bench", "--units", "mono=0", "--results", str(results), *args, env=no_keys)
        one_line(out, needle)
        assert not list(tmp_path.rglob("result.json")), args  # nothing was studied


def test_eval_outputs_it_cannot_write_are_one_line_errors_before_any_work(
    thirdparty_env, tmp_path, read_only, small_disk
):
    frozen = read_only(lambda folder: write_result(folder / "b" / "toynet" / "conv2" / "0"))
    out = maia(
        "eval", str(frozen), "--out", str(tmp_path / "out"), "--device", "cpu", env=thirdparty_env
    )
    one_line(out, "The unit folder", "conv2/0' is not writable", "eval.json is written there")
    assert not (tmp_path / "out" / "eval.csv").exists()

    disk = small_disk("4m")
    write_result(disk.path / "r" / "b" / "toynet" / "conv2" / "0")
    disk.fill(leave=16_000)
    out = maia("eval", str(disk.path / "r"), "--device", "cpu", env=thirdparty_env)
    one_line(out, "--out", "is on a full disk", "Free space there")

    out = maia("eval", str(disk.path / "r"), "--n", "1000000000", env=thirdparty_env)
    one_line(out, "--n must be at most 100")


def test_a_disk_that_fills_while_scoring_is_one_line_and_the_re_run_goes_on(
    with_thirdparty, tmp_path, failing_writes
):
    from maia_plugins.evaluation.commands import run_eval

    results = tmp_path / "r"
    first = write_result(results / "b" / "toynet" / "conv2" / "0")
    second = write_result(results / "b" / "toynet" / "conv2" / "1", unit=1)

    def full(path: str, size: int) -> bool:
        return path.startswith(str(second)) and ".eval.json." in path

    with failing_writes(full), pytest.raises(UserError) as err:
        run_eval([results], device="cpu", quiet=True)
    assert err.value.message.startswith(f"The disk is full: writing {second / 'eval.json'} failed")
    assert "the units scored so far keep their eval.json" in err.value.message
    assert (first / "eval.json").is_file() and not (second / "eval.json").exists()
    records = run_eval([results], device="cpu", quiet=True)
    assert all(r["predictive"] for r in records) and (second / "eval.json").is_file()


def _interrupt_when(command: list[str], env: dict[str, str], ready: str, sig: int, stream: str):
    """Run ``maia command``, send ``sig`` once ``stream`` (stdout or stderr) shows ``ready``,
    and return the exit code and stderr."""
    proc = subprocess.Popen(
        [MAIA, *command],
        env={**os.environ, "COLUMNS": "200", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in getattr(proc, stream):
        seen.append(line)
        if ready in line:
            proc.send_signal(sig)
            break
    _, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + err if stream == "stderr" else err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_eval_says_what_is_saved_and_how_to_resume(thirdparty_env, tmp_path, sig):
    results = tmp_path / "r"
    # enough units that the signal, sent when the first is being scored, finds it still at work
    # on a loaded machine (with 3, all were scored before it arrived)
    for layer, units in (("conv1", 8), ("conv2", 4)):
        for unit in range(units):
            write_result(results / "b" / "toynet" / layer / str(unit), layer=layer, unit=unit)
    code, err = _interrupt_when(
        ["eval", str(results), "--device", "cpu"], thirdparty_env, "evaluating", sig, "stderr"
    )
    assert code == 130, err
    assert (
        "Interrupted. The units scored so far keep their eval.json; run the same command again "
        "to score the others" in err
    )


def test_an_interrupted_bench_says_what_is_saved_and_how_to_resume(tmp_path):
    loop = write_replay(tmp_path / "loop.json", ["```python\nwhile True:\n    pass\n```"])
    code, err = _interrupt_when(
        ["bench", "-b", f"replay:{loop}", "--units", "mono=0", "--results", str(tmp_path / "b")],
        {},
        "of synthetic:offline with",  # the run's header: the investigation is starting
        signal.SIGINT,
        "stdout",
    )
    assert code == 130, err
    assert "Interrupted. Finished investigations and the units scored so far are saved" in err
