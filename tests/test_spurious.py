"""``reliance:learned`` (a head that learned a background shortcut, its reliance measured, cached
and never trusted when the cache does not check out) and ``maia spurious`` (MAIA §5.1 offline)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import maia
from maia_core.units import Unit

STAMPS = Path("/usr/share/tuxpaint/stamps")
pytestmark = pytest.mark.skipif(not STAMPS.is_dir(), reason="Tux Paint stamps not installed")
# Small enough for the suite (about 20 s of training on two cores), large enough that the
# shortcut is learned and that the selection beats all units.
OPTIONS = {"n_train": "96", "n_test": "96", "pairs": "2"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder of its own for this module, which the model host inherits."""
    folder = tmp_path_factory.mktemp("xdg")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="module")
def learned(cache):
    from maia_plugins.targets.reliance_learned import LearnedConfig, load_or_train

    return load_or_train(LearnedConfig.from_options(OPTIONS))


def test_the_learned_head_relies_on_its_background_as_measured(cache, learned):
    from maia_core import plugins

    assert learned.folder.parent.parent == cache / "maia"
    assert learned.accuracy["biased_train"] > 0.95
    # the shortcut: on balanced test renders it does much worse than on what it learned from
    assert learned.accuracy["balanced_test"] < learned.accuracy["biased_train"] - 0.2
    for truth in learned.ground_truth:
        assert truth["kind"] == "learned" and truth["category"] == "background"
        own, neutral = truth["reliance"], truth["neutral_reliance"]
        assert abs(neutral) < 0.1, truth
        assert own > 0.15 and own > 3 * abs(neutral), truth
        # swapping its background for another class's lowers the class's score
        others = [
            v for k, v in truth["by_background"].items() if k not in (truth["value"], "plain beige")
        ]
        assert truth["by_background"][truth["value"]] > max(others), truth
    assert sum(t["reliance"] for t in learned.ground_truth) / 4 > 0.3
    entry, arg = plugins.registry("targets").resolve("reliance:learned")
    target = entry.factory(arg, device="cpu", **OPTIONS)  # from the cache: no training
    assert [(i.name, i.units) for i in target.layers()] == [("features", 1280), ("output", 4)]
    assert target.ground_truth(Unit("output", 1)) == {**learned.ground_truth[1], "set": "learned"}
    assert target.ground_truth(Unit("features", 3)) is None
    # the target's head is the cached one: its scores on the test features' source agree
    weight = target.model.head.weight
    assert torch.equal(weight, learned.arrays["head_weight"])


def test_a_damaged_or_stale_cache_is_rebuilt_not_trusted(cache, tmp_path):
    from maia_plugins.targets import reliance_learned as rl

    tiny = rl.LearnedConfig(n_train=8, n_test=4, pairs=1)
    first = rl.load_or_train(tiny, root=tmp_path)
    key = rl._key(tiny)
    assert rl._read(first.folder, key, tiny) is not None
    good = tmp_path / "good"
    shutil.copytree(first.folder, good)

    def damaged(change) -> Path:
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        shutil.copytree(good, folder)
        change(folder)
        return folder

    cases = [
        lambda f: (f / "data.safetensors").write_bytes(b"not a safetensors file"),
        lambda f: (f / "meta.json").write_text("{"),
        lambda f: (f / "meta.json").write_text(
            json.dumps({**json.loads((f / "meta.json").read_text()), "key": "0" * 64})
        ),
        lambda f: (f / "data.safetensors").unlink(),
    ]
    for change in cases:
        assert rl._read(damaged(change), key, tiny) is None
    from safetensors.torch import load_file, save_file

    def nan(f: Path) -> None:
        arrays = load_file(str(f / "data.safetensors"))
        arrays["head_weight"][0, 0] = float("nan")
        save_file(arrays, str(f / "data.safetensors"))

    assert rl._read(damaged(nan), key, tiny) is None
    # a damaged cache in place is trained again, to the very same head (deterministic)
    (first.folder / "data.safetensors").write_bytes(b"\0" * 100)
    again = rl.load_or_train(tiny, root=tmp_path)
    assert torch.equal(again.arrays["head_weight"], first.arrays["head_weight"])
    assert again.ground_truth == first.ground_truth
    assert rl._read(first.folder, key, tiny) is not None


def test_maia_spurious_beats_all_units_on_balanced_renders(cache, learned, tmp_path):
    from maia_plugins.targets.reliance_learned import LearnedConfig
    from maia_plugins.targets.spurious import render_table, run_spurious

    table = run_spurious(
        backbone="baseline",
        k=16,
        draws=5,
        out=tmp_path / "spurious",
        config=LearnedConfig.from_options(OPTIONS),
        concurrency=2,
        quiet=True,
    )
    rows = {r["method"].split(" (")[0]: r for r in table["rows"]}
    kept = rows["baseline"]
    assert 0 < kept["units"] < 16 and kept["units"] == len(table["kept"])
    assert kept["accuracy"] > rows["All units"]["accuracy"], render_table(table)
    assert rows["All units, balanced data"]["accuracy"] > kept["accuracy"]
    for unit in table["units"]:  # every decision has its reason, from the unit's label
        assert unit["why"] and (unit["kept"] == (unit["unit"] in table["kept"]))
    written = json.loads((tmp_path / "spurious" / "spurious.json").read_text())
    assert written["rows"] == table["rows"]
    csv = (tmp_path / "spurious" / "spurious.csv").read_text().splitlines()
    assert csv[0].startswith("method,units") and len(csv) == len(table["rows"]) + 1
    text = render_table(table)
    assert "published" in text and "[U]" in text


def test_maia_spurious_bad_input_is_one_line(tmp_path):
    out = maia("spurious", "--k", "0", "--out", str(tmp_path / "s"))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "--k" in out.stderr
    out = maia("spurious", "--n-train", "2", "--out", str(tmp_path / "s"))
    assert out.returncode == 2 and "n_train" in out.stderr, out.stderr
