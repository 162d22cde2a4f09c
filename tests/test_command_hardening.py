"""``maia synthetic create``, ``maia exemplars compute``, the count options, what the agent sees
of a user's set file, and two messages (issue 19, items 5 to 9).

Each test checks one line and exit code 2 where the input is bad, and what is left on disk.
"""

from __future__ import annotations

import json

import pytest

from conftest import maia, make_photo_folder, one_line, write_replay
from maia_core.errors import UserError
from maia_core.loop.run import RunConfig, run

pytest_plugins = ["small_disk"]  # small_disk, read_only, failing_writes

FINAL = "[DESCRIPTION]: anything\n[LABEL]: anything"


# -- 7. synthetic create changes the set file only when it succeeds ---------------------------


def test_synthetic_create_changes_the_set_file_only_when_it_succeeds(tmp_path):
    existing = tmp_path / "mine.json"
    existing.write_text(json.dumps({"detector": "offline", "mono": ["zebra"]}))
    before = existing.read_bytes()
    create = ["synthetic", "create", "--mode", "mono", "--concepts", "lion"]
    for set_file in (existing, tmp_path / "new.json"):
        for extra, needle in [
            (["--dataset", "nosuch"], "Unknown dataset 'nosuch'"),
            (["--dataset", "scenes:n=2", "--workers", "1000000"], "--workers must be at most 64"),
            (["--dataset", "scenes:n=2", "--dataset-option", "oops"], "--dataset-option"),
            (["--dataset", "scenes:n=2", "--exemplars", str(existing)], "is a file"),
        ]:
            one_line(maia(*create, "--set", str(set_file), *extra), needle)
    assert existing.read_bytes() == before
    assert not (tmp_path / "new.json").exists()
    # and when it succeeds, the neuron is there
    out = maia(*create, "--set", str(existing))
    assert out.returncode == 0 and out.stdout.strip() == "mono=1", out.stderr
    assert json.loads(existing.read_text())["mono"] == ["zebra", "lion"]


def test_synthetic_create_into_a_folder_it_cannot_write_is_one_line(tmp_path, read_only):
    frozen = read_only()
    out = maia(
        "synthetic",
        "create",
        "--set",
        str(frozen / "mine.json"),
        "--mode",
        "mono",
        "--concepts",
        "lion",
    )
    one_line(
        out, "--set's folder", "is not writable", "Give a --set file in a folder you can write"
    )
    assert not (frozen / "mine.json").exists()


def test_synthetic_create_on_a_full_disk_is_one_line_and_keeps_the_set(small_disk):
    disk = small_disk("1m")
    set_file = disk.path / "mine.json"
    set_file.write_text(json.dumps({"detector": "offline", "mono": ["zebra"]}))
    before = set_file.read_bytes()
    disk.fill(leave=0)
    out = maia(
        "synthetic", "create", "--set", str(set_file), "--mode", "mono", "--concepts", "lion"
    )
    one_line(out, f"The disk is full: writing {set_file} failed", "run the same command again")
    assert set_file.read_bytes() == before


# -- 5, 6. exemplars compute: full and read-only disks, and bounds -----------------------------


def compute(photos_dir, out, *extra):
    return [
        "exemplars",
        "compute",
        "--target",
        "toynet",
        "--dataset",
        f"imagefolder:{photos_dir}",
        "--layers",
        "conv2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def test_exemplars_compute_on_a_full_or_read_only_disk_is_one_line(
    thirdparty_env, tmp_path, photos, small_disk, read_only
):
    folder = make_photo_folder(tmp_path / "photos", photos, n=6, broken=False)
    disk = small_disk("4m")
    disk.fill(leave=16_000)
    out = maia(*compute(folder, disk.path / "store"), env=thirdparty_env)
    one_line(out, "--out", "is on a full disk", "Free space there")
    frozen = read_only()
    out = maia(*compute(folder, frozen / "store"), env=thirdparty_env)
    one_line(out, "--out", "cannot be created")


def test_a_disk_that_fills_while_computing_exemplars_is_one_line(
    with_thirdparty, tmp_path, photos, failing_writes
):
    from maia_plugins.tools.dataset_exemplars import compute_store

    folder = make_photo_folder(tmp_path / "photos", photos, n=6, broken=False)
    store = tmp_path / "store"
    kwargs = dict(
        target="toynet",
        dataset=f"imagefolder:{folder}",
        layers="conv2",
        workers=0,
        device="cpu",
        out=store,
        quiet=True,
    )

    def in_the_store(path: str, size: int) -> bool:  # the disk fills once the work has begun
        return path.startswith(str(store)) and ".maia-probe-" not in path

    with failing_writes(in_the_store), pytest.raises(UserError) as err:
        compute_store(**kwargs)
    message = err.value.message
    assert message.startswith(f"The disk is full: writing {store}") and "\n" not in message
    assert "run the same command again: it resumes from the last checkpoint" in message
    assert compute_store(**kwargs)["images"] == 6  # with room again, it completes


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--k", "1000000000"], "--k must be at most 1,000"),
        (["--k", "0"], "--k must be at least 1"),
        (["--workers", "100000"], "--workers must be at most 64"),
        (["--batch-size", "1000000000"], "--batch-size must be at most 4,096"),
        (["--samples", "1000000000000"], "--samples must be at most 1,000,000"),
        (["--samples", "10"], "--samples must be at least 100"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--checkpoint-every", "nan"], "--checkpoint-every must be a number of seconds"),
    ],
)
def test_exemplar_counts_have_bounds_named_in_the_error(tmp_path, args, needle):
    one_line(maia(*compute(tmp_path, tmp_path / "store", *args)), needle)
    assert not (tmp_path / "store").exists()  # refused before any folder is made


def test_other_count_options_have_bounds_named_in_the_error(tmp_path):
    replay = write_replay(tmp_path / "t.json", [FINAL])
    run_ = ["run", "--target", "efficientnet_lite0", "--units", "blocks.6=0", "--backbone"]
    run_ += [f"replay:{replay}", "--results", str(tmp_path / "r")]
    one_line(maia(*run_, "--max-rounds", "1000000000"), "--max-rounds must be at most 1,000")
    one_line(maia(*run_, "-j", "100000"), "--concurrency must be at most 256")
    one_line(
        maia(*run_, "--executor", "ray", "--ray-actors", "1000000"),
        "--ray-actors must be at most 1,024",
    )
    train = ["basis", "train-sae", "--target", "efficientnet_lite0", "--layer", "blocks.6"]
    train += ["--images", str(tmp_path), "--out", str(tmp_path / "s.safetensors")]
    one_line(maia(*train, "--latents", "1000000000"), "--latents must be at most 65,536")
    one_line(maia(*train, "--steps", "0"), "--steps must be at least 1")
    one_line(maia(*train, "--positions", "10000000"), "--positions must be at most 65,536")
    show = ["exemplars", "show", "--target", "efficientnet_lite0", "--layer", "blocks.6"]
    one_line(maia(*show, "--unit", "0", "--k", "1000000000"), "--k must be at most 1,000")


# -- 8. no path of a user's set file in anything the agent sees ------------------------------


def test_no_path_of_a_users_set_file_reaches_the_agent(tmp_path):
    set_file = tmp_path / "private-set-name.json"
    set_file.write_text(json.dumps({"detector": "offline", "mono": ["zebra"]}))
    cell = "```python\nprint(tools.dataset_exemplars(system))\n```"
    [inv] = run(
        RunConfig(
            target=f"synthetic:{set_file}",
            units="mono=0",
            backbone=f"replay:{write_replay(tmp_path / 't.json', [cell, FINAL])}",
            results=tmp_path / "r",
            reporters=["json"],
            device="cpu",
            exemplars=str(tmp_path / "no-exemplars"),
        )
    )
    seen = "\n".join(m.text for m in inv.messages if m.role != "assistant")
    assert "There are no dataset exemplars for layer mono of synthetic:custom" in seen
    assert "in the model synthetic:custom" in seen  # the task
    assert "private-set-name" not in seen and str(tmp_path) not in seen.replace(
        str(tmp_path / "no-exemplars"), ""
    )


# -- 9. messages: a basis with no latents, --budget-usd nan --------------------------------------


def test_a_basis_with_no_latents_is_one_line_and_no_range_reads_0_to_minus_1(tmp_path):
    import torch
    from safetensors.torch import save_file

    from maia_core.units import LayerInfo, expand

    empty = tmp_path / "k0.safetensors"
    save_file({"W_enc": torch.zeros(320, 0), "b_enc": torch.zeros(0)}, str(empty))
    out = maia("layers", "efficientnet_lite0", "--basis", f"blocks.6={empty}")
    line = one_line(out, "has no latents: W_enc is [320, 0]", "at least one (K >= 1)")
    assert "0--1" not in line
    with pytest.raises(UserError) as err:
        expand({"v": [0]}, {"v": LayerInfo("v", 0, None, "vector")}, "t")
    assert "which has no units" in err.value.message and "0--1" not in err.value.message


def test_budget_usd_nan_gets_a_proper_message(tmp_path):
    replay = write_replay(tmp_path / "t.json", [FINAL])
    out = maia(
        "run",
        "--target",
        "efficientnet_lite0",
        "--units",
        "blocks.6=0",
        "--backbone",
        f"replay:{replay}",
        "--results",
        str(tmp_path / "r"),
        "--budget-usd",
        "nan",
    )
    one_line(out, "--budget-usd must be a number of dollars, 0 or more, not nan.")
