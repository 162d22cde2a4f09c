"""`maia exemplars compute` over the offline scenes world (its own file: the longest test of
the exemplar commands, run beside the others' file by another worker)."""

from __future__ import annotations

from conftest import maia
from maia_core.torch_runtime.exemplars import find_store


def test_zebra_exemplars_on_scenes_contain_the_zebra(tmp_path):
    """The issue's check: `maia exemplars compute` over the offline scenes world, two layers;
    the ImageNet zebra class's top exemplars mostly contain the zebra cut-out."""
    spec = "scenes:n=800,categories=animals/mammals,seed=2"
    out = maia(
        "exemplars",
        "compute",
        "--target",
        "efficientnet_lite0",
        "--dataset",
        spec,
        "--layers",
        "blocks.6,output",
        "--exemplars",
        str(tmp_path),
        "--batch-size",
        "32",
    )
    assert out.returncode == 0, out.stderr
    store = find_store(tmp_path, "efficientnet_lite0")
    assert set(store.layers) == {"blocks.6", "output"}
    scenes = store.dataset()
    ex = store.unit("output", 340)  # zebra
    with_zebra = ["zebra" in scenes.annotation(i)["labels"] for i in ex.indices]
    assert len(with_zebra) == 15 and sum(with_zebra) >= 10, with_zebra
    assert all(with_zebra[:5])
    # the exemplars render from the scenes the store names, at the model's input size
    rendered = store.masked("blocks.6", 0)
    assert len(rendered) == 15 and all(img.size == (224, 224) for _, img in rendered)
