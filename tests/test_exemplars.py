"""Exemplar stores: streaming top-k and thresholds against brute force, masks, resume,
the dataset_exemplars tool, datasets, and MAIA's folders imported."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MAIA, maia, make_photo_folder, write_replay
from maia_core import plugins
from maia_core.errors import ToolError, UserError
from maia_core.torch_runtime.exemplars import (
    ComputeConfig,
    ExemplarComputation,
    ExemplarStore,
    find_store,
    quantile_rows,
    threshold_error,
)
from maia_core.torch_runtime.target import mask_image
from maia_core.units import Unit

LAYERS = ["blocks.6", "output"]
K = 5


def make_folder(folder, photos, n=22, seed=0):
    return make_photo_folder(folder, photos, n=n, seed=seed)


def dataset_of(spec):
    entry, arg = plugins.registry("datasets").resolve(spec)
    return entry.factory(arg)


@pytest.fixture(scope="module")
def lite0():
    entry, arg = plugins.registry("targets").resolve("efficientnet_lite0")
    return entry.factory(arg, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    return make_folder(tmp_path_factory.mktemp("images"), photos)


@pytest.fixture(scope="module")
def store(tmp_path_factory, lite0, folder):
    out = tmp_path_factory.mktemp("store")
    config = ComputeConfig(layers=LAYERS, k=K, batch_size=4, workers=0, samples=100_000)
    summary = ExemplarComputation(lite0, dataset_of(f"imagefolder:{folder}"), out, config).run()
    return out, summary


@pytest.fixture(scope="module")
def brute(lite0, folder):
    """Every image's maps, computed in one go."""
    data = dataset_of(f"imagefolder:{folder}")
    good = [i for i in range(len(data)) if not data.item_id(i).endswith("007b.jpg")]
    views = [lite0.preprocess.view(data.image(i)) for i in good]
    out = lite0.forward_layers(lite0.preprocess.to_tensor(views), LAYERS)
    return torch.tensor(good), views, out


def test_unreadable_images_are_skipped_and_counted(store, folder):
    _, summary = store
    data = dataset_of(f"imagefolder:{folder}")
    assert summary["images"] == len(data) == 23
    assert summary["skipped"] == 1
    assert data.item_id(summary["skipped_indices"][0]) == "img007b.jpg"


@pytest.mark.parametrize("layer", LAYERS)
def test_streaming_top_k_equals_brute_force(store, brute, layer):
    out, _ = store
    indices, _, maps = brute
    acts = maps[layer].flatten(2).amax(2) if maps[layer].ndim == 4 else maps[layer]  # [N, U]
    s = ExemplarStore(out)
    from safetensors.torch import load_file

    saved = load_file(str(out / s.layers[layer]["file"]))
    for descending, side in ((True, "top"), (False, "bottom")):
        order = torch.sort(acts.T, dim=1, descending=descending, stable=True).indices[:, :K]
        expect_v = acts.T.gather(1, order)
        expect_i = indices[order]
        assert torch.equal(saved[f"{side}_indices"], expect_i), side
        assert torch.allclose(saved[f"{side}_values"], expect_v, rtol=1e-4, atol=1e-4), side
    if maps[layer].ndim == 4:  # maps stored with their exemplars, in fp16
        order = torch.sort(acts.T, dim=1, descending=True, stable=True).indices[:, :K]
        for u in (0, 17, 319):
            expect = maps[layer][order[u], u]
            assert torch.allclose(saved["top_maps"][u].float(), expect, atol=2e-2, rtol=1e-2)


def test_thresholds_exact_when_every_activation_fits(store, brute):
    out, _ = store
    _, _, maps = brute
    m = maps["blocks.6"]
    exact = np.quantile(m.transpose(0, 1).flatten(1).numpy(), 0.99, axis=1)
    from safetensors.torch import load_file

    saved = load_file(str(out / "blocks.6.safetensors"))["thresholds"].numpy()
    np.testing.assert_allclose(saved, exact, rtol=1e-5, atol=1e-5)


def test_sampled_thresholds_within_the_documented_error(lite0, folder, brute, tmp_path):
    samples = 2000  # of 22 * 14 * 14 = 4312 positions per unit of blocks.3
    config = ComputeConfig(
        layers=["blocks.3"], k=K, batch_size=4, workers=0, samples=samples, seed=3
    )
    ExemplarComputation(lite0, dataset_of(f"imagefolder:{folder}"), tmp_path, config).run()
    from safetensors.torch import load_file

    est = load_file(str(tmp_path / "blocks.3.safetensors"))["thresholds"]
    views = brute[1]
    maps = lite0.forward_layers(lite0.preprocess.to_tensor(views), ["blocks.3"])["blocks.3"]
    values = maps.transpose(0, 1).flatten(1)  # [U, positions]
    rank = (values < est[:, None]).float().mean(1)  # where each estimate falls among all values
    sd = threshold_error(samples)
    within = ((rank - 0.99).abs() <= 3 * sd).float().mean()
    # 3 sd holds 99.7% of a normal; allow 2 of the 80 units out for the approximation
    assert within >= 0.975, f"only {within:.3f} of units within 3 sd ({sd:.4f})"
    assert (rank - 0.99).abs().mean() < sd  # and the typical error is below one sd
    assert threshold_error(20_000) == pytest.approx(0.0007, abs=1e-4)


def test_quantile_rows_matches_numpy():
    x = torch.randn(5, 1001)
    np.testing.assert_allclose(
        quantile_rows(x, 0.99).numpy(), np.quantile(x.numpy(), 0.99, axis=1), rtol=1e-6
    )


def test_rendered_masks_match_direct_masks(store, lite0, brute):
    out, _ = store
    s = ExemplarStore(out)
    _, views, maps = brute
    indices = brute[0].tolist()
    unit = 42
    threshold = s.threshold("blocks.6", unit)
    rendered = s.masked("blocks.6", unit)
    ex = s.unit("blocks.6", unit)
    assert [v for v, _ in rendered] == ex.values and ex.values == sorted(ex.values, reverse=True)
    for (_value, img), index in zip(rendered, ex.indices):
        pos = indices.index(index)
        direct = mask_image(views[pos], maps["blocks.6"][pos, unit], threshold, 0.9)
        diff = np.abs(np.asarray(img, dtype=int) - np.asarray(direct, dtype=int)).max(axis=2)
        assert (diff > 1).mean() < 0.005  # fp16 maps may flip a few boundary pixels


def test_interrupted_run_resumes_to_the_same_store(lite0, folder, store, tmp_path):
    ref, _ = store
    data = dataset_of(f"imagefolder:{folder}")
    config = ComputeConfig(
        layers=LAYERS, k=K, batch_size=4, workers=0, samples=100_000, checkpoint_every=0
    )

    class Crash(Exception):
        pass

    def crash_at_third_batch(done, total):
        if done >= 12:
            raise Crash

    with pytest.raises(Crash):
        ExemplarComputation(lite0, data, tmp_path, config).run(crash_at_third_batch)
    assert (tmp_path / ".checkpoint" / "state.safetensors").is_file()
    assert not (tmp_path / "manifest.json").exists()
    job = ExemplarComputation(lite0, data, tmp_path, config)
    assert job.resume() and job.next_index == 8
    job.run()
    assert not (tmp_path / ".checkpoint").exists()
    from safetensors.torch import load_file

    for layer in LAYERS:
        a, b = (
            load_file(str(ref / f"{layer}.safetensors")),
            load_file(str(tmp_path / f"{layer}.safetensors")),
        )
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (layer, key)


def test_ctrl_c_saves_a_checkpoint_and_the_command_resumes(tmp_path, photos, store):
    folder = make_folder(tmp_path / "many", photos, n=60, seed=1)
    args = [
        "exemplars",
        "compute",
        "--target",
        "efficientnet_lite0",
        "--dataset",
        f"imagefolder:{folder}",
        "--layers",
        "blocks.6",
        "--k",
        "5",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--checkpoint-every",
        "0",
        "--out",
        str(tmp_path / "s"),
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        [MAIA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = tmp_path / "s" / ".checkpoint" / "state.safetensors"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint is saved" in err and checkpoint.exists()
    again = maia(*args)
    assert again.returncode == 0, again.stderr
    assert "resuming from image" in again.stderr
    whole = maia(*args[:-4], "--out", str(tmp_path / "whole"), "--device", "cpu")
    assert whole.returncode == 0
    from safetensors.torch import load_file

    a, b = (
        load_file(str(tmp_path / "s/blocks.6.safetensors")),
        load_file(str(tmp_path / "whole/blocks.6.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_different_computation_refuses_the_checkpoint(lite0, folder, tmp_path):
    data = dataset_of(f"imagefolder:{folder}")
    config = ComputeConfig(layers=["blocks.6"], k=K, batch_size=4, workers=0, checkpoint_every=0)
    with pytest.raises(ZeroDivisionError):
        ExemplarComputation(lite0, data, tmp_path, config).run(
            lambda d, t: 1 / 0 if d >= 8 else None
        )
    other = ComputeConfig(layers=["blocks.6"], k=K + 1, batch_size=4, workers=0)
    with pytest.raises(UserError, match="checkpoint of a different computation.*--restart"):
        ExemplarComputation(lite0, data, tmp_path, other).resume()


# -- the tool and the commands -----------------------------------------------------------------


FIXTURE_TURNS = [
    "```python\nexemplars = tools.dataset_exemplars(system)\nfor act, img in exemplars:\n    tools.display(img, f'activation {act:.3f}')\n"
    "print(system.threshold_source)\nlow = tools.dataset_exemplars(system, k=2, bottom=True)\nprint('bottom', [round(a, 4) for a, _ in low])\n```",
    "[DESCRIPTION]: d\n[LABEL]: l",
]


def test_tool_serves_the_store_and_its_thresholds(store, tmp_path):
    out, _ = store
    turns = write_replay(tmp_path / "t.json", FIXTURE_TURNS)
    run = maia(
        "run",
        "--target",
        "efficientnet_lite0",
        "--units",
        "blocks.6=42",
        "--backbone",
        f"replay:{turns}",
        "--results",
        str(tmp_path / "r"),
        "--exemplars",
        str(out),
        "--reporter",
        "json,html",
    )
    assert run.returncode == 0, run.stderr
    unit_dir = tmp_path / "r/replay-t/efficientnet_lite0/blocks.6/42"
    history = json.loads((unit_dir / "history.json").read_text())
    result = history["messages"][3]
    images = [p for p in result["parts"] if p["type"] == "image"]
    texts = "".join(p.get("text", "") for p in result["parts"] if p["type"] == "text")
    s = ExemplarStore(out)
    ex = s.unit("blocks.6", 42)
    assert len(images) == K
    for value in ex.values:
        assert f"activation {value:.3f}" in texts
    assert f"dataset threshold {s.threshold('blocks.6', 42):.4g} from the exemplar store" in texts
    low = s.unit("blocks.6", 42, bottom=True, k=2).values
    assert f"bottom {[round(v, 4) for v in low]}" in texts and low == sorted(low)
    assert json.loads((unit_dir / "result.json").read_text())["threshold"].startswith(
        "dataset threshold"
    )
    assert (unit_dir / "report.html").read_text().count("<img") >= K


def test_no_store_tells_the_agent_the_command(tmp_path):
    turns = write_replay(tmp_path / "t.json", FIXTURE_TURNS)
    run = maia(
        "run",
        "--target",
        "efficientnet_lite0",
        "--units",
        "blocks.5=1",
        "--backbone",
        f"replay:{turns}",
        "--results",
        str(tmp_path / "r"),
        "--exemplars",
        str(tmp_path / "none"),
        "--reporter",
        "json",
    )
    assert run.returncode == 0
    history = json.loads(
        (tmp_path / "r/replay-t/efficientnet_lite0/blocks.5/1/history.json").read_text()
    )
    error = history["messages"][3]["parts"][-1]["text"]
    assert (
        error.startswith("Traceback")
        and "ToolError: There are no dataset exemplars for layer blocks.5 of efficientnet_lite0"
        in error
    )
    assert (
        "maia exemplars compute --target efficientnet_lite0 --dataset scenes --layers blocks.5"
        in error
    )
    assert "maia_plugins" not in error  # the tool's own frames are not shown


def test_find_store_and_show(store, tmp_path):
    out, _ = store
    assert find_store(out, "anything").folder == out
    assert find_store(tmp_path, "efficientnet_lite0") is None
    shown = maia(
        "exemplars",
        "show",
        "--target",
        "efficientnet_lite0",
        "--layer",
        "blocks.6",
        "--unit",
        "3",
        "--exemplars",
        str(out),
        "--out",
        str(tmp_path / "g.png"),
    )
    assert shown.returncode == 0, shown.stderr
    sheet = Image.open(tmp_path / "g.png")
    assert sheet.width > 5 * 224 and sheet.height > 224
    bad = maia(
        "exemplars",
        "show",
        "--target",
        "efficientnet_lite0",
        "--layer",
        "blocks.6",
        "--unit",
        "999",
        "--exemplars",
        str(out),
    )
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_compute_command_errors(tmp_path, folder):
    base = [
        "exemplars",
        "compute",
        "--target",
        "efficientnet_lite0",
        "--dataset",
        f"imagefolder:{folder}",
        "--out",
        str(tmp_path / "x"),
    ]
    out = maia(*base, "--layers", "blocks.9")
    assert out.returncode == 2 and "Unknown layer 'blocks.9'" in out.stderr
    out = maia(
        "exemplars",
        "compute",
        "--target",
        "efficientnet_lite0",
        "--dataset",
        "imagefolder:/no/such",
        "--layers",
        "blocks.6",
    )
    assert out.returncode == 2 and "Image folder '/no/such' does not exist" in out.stderr
    out = maia(
        "exemplars",
        "compute",
        "--target",
        "efficientnet_lite0",
        "--dataset",
        "nowhere:x",
        "--layers",
        "blocks.6",
    )
    assert out.returncode == 2 and "Unknown dataset 'nowhere:x' for --dataset. Known:" in out.stderr


def test_embedded_images_make_the_store_independent_of_the_dataset(lite0, photos, tmp_path):
    folder = make_folder(tmp_path / "imgs", photos, n=8)
    config = ComputeConfig(layers=["blocks.6"], k=3, batch_size=4, workers=0, embed_images=True)
    ExemplarComputation(lite0, dataset_of(f"imagefolder:{folder}"), tmp_path / "s", config).run()
    before = ExemplarStore(tmp_path / "s").masked("blocks.6", 7)
    for f in folder.iterdir():
        f.unlink()
    after = ExemplarStore(tmp_path / "s").masked("blocks.6", 7)
    assert [v for v, _ in before] == [v for v, _ in after]
    assert len(list((tmp_path / "s" / "images").iterdir())) <= 8


def test_changed_dataset_is_refused(lite0, photos, tmp_path):
    folder = make_folder(tmp_path / "imgs", photos, n=6)
    config = ComputeConfig(layers=["blocks.6"], k=2, batch_size=4, workers=0)
    ExemplarComputation(lite0, dataset_of(f"imagefolder:{folder}"), tmp_path / "s", config).run()
    photos["rocket"].save(folder / "new.jpg")
    with pytest.raises(UserError, match="has changed since the store"):
        ExemplarStore(tmp_path / "s").masked("blocks.6", 0)


def test_torchvision_decoding_agrees_with_pil(lite0, folder, store, tmp_path):
    ref, _ = store
    config = ComputeConfig(
        layers=["blocks.6"], k=K, batch_size=4, workers=0, decode="torchvision", samples=100_000
    )
    ExemplarComputation(lite0, dataset_of(f"imagefolder:{folder}"), tmp_path, config).run()
    from safetensors.torch import load_file

    a, b = (
        load_file(str(ref / "blocks.6.safetensors")),
        load_file(str(tmp_path / "blocks.6.safetensors")),
    )
    same_first = (a["top_indices"][:, 0] == b["top_indices"][:, 0]).float().mean()
    assert same_first > 0.8
    np.testing.assert_allclose(b["thresholds"].numpy(), a["thresholds"].numpy(), rtol=0.1, atol=0.1)


def test_hf_dataset_from_a_local_folder(tmp_path, photos, lite0):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"image": [photos[n] for n in sorted(photos)], "label": [0, 1, 2, 3]}
    )
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    data = dataset_of(f"hf:{tmp_path / 'saved'}")
    assert len(data) == 4 and data.image(1).size == photos[sorted(photos)[1]].size
    assert data.item_id(2) == "all/2"
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    pq = dataset_of(f"hf:{tmp_path / 'pq'}")
    assert len(pq) == 4 and pq.split == "train"
    config = ComputeConfig(layers=["output"], k=2, batch_size=2, workers=0)
    ExemplarComputation(lite0, pq, tmp_path / "s", config).run()
    ex = ExemplarStore(tmp_path / "s").unit("output", 967)  # espresso
    assert sorted(photos)[ex.indices[0]] == "coffee"
    with pytest.raises(UserError, match="has no split 'test'"):
        dataset_of(f"hf:{tmp_path / 'pq'}:test")


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        dataset_of(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no jpg, png, webp or bmp"):
        dataset_of(f"imagefolder:{tmp_path / 'empty'}")


# -- MAIA's folders --------------------------------------------------------------------------


def write_maia_layer(folder, units=3, n=4, size=32, seed=0, synthetic=False):
    """A layer folder in exactly MAIA's published format."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    acts = np.sort(rng.uniform(0, 10, (units, n)), axis=1)[:, ::-1]
    np.savetxt(folder / "activations.csv", acts, delimiter=",")
    base = rng.integers(0, 256, (units + 1, size, size, 3), dtype=np.uint8)
    # the same image reused across units, as in MAIA's arrays
    picks = rng.integers(0, units + 1, (units, n))
    images = base[picks]  # [U, n, H, W, 3]
    masks = np.zeros((units, n, size, size), dtype=np.uint8)
    for u in range(units):
        for e in range(n):
            y, x = rng.integers(0, size // 2, 2)
            masks[u, e, y : y + size // 2, x : x + size // 2] = 255 if synthetic else 1
    if synthetic:
        np.save(folder / "images.npy", images)
        np.save(folder / "masks.npy", masks)
    else:
        np.save(folder / "images.npy", images.transpose(0, 1, 4, 2, 3))
        np.save(folder / "masks.npy", masks[:, :, None])
        np.savetxt(folder / "thresholds.csv", rng.uniform(1, 2, units), delimiter=",")
    return acts, images, masks


def maia_rendering(image, mask):
    """MAIA's DatasetExemplars: inside kept, outside times 0.25, cast to uint8."""
    inside = mask > 0
    return (image * inside[..., None] + 0.25 * image * (~inside)[..., None]).astype(np.uint8)


def test_import_maia_imagenet_folders(tmp_path):
    acts, images, masks = write_maia_layer(tmp_path / "maia" / "resnet152" / "imagenet" / "layer4")
    write_maia_layer(tmp_path / "maia" / "resnet152" / "imagenet" / "layer3", units=2, seed=1)
    out = maia(
        "exemplars",
        "import-maia",
        str(tmp_path / "maia"),
        "--target",
        "resnet152",
        "--exemplars",
        str(tmp_path / "ex"),
    )
    assert out.returncode == 0, out.stderr
    assert "imported 2 layer(s), 5 units" in out.stdout
    s = find_store(tmp_path / "ex", "resnet152")
    assert s.folder == tmp_path / "ex" / "resnet152" / "maia-imagenet"
    thresholds = np.loadtxt(
        tmp_path / "maia/resnet152/imagenet/layer4/thresholds.csv", delimiter=","
    )
    for u in range(3):
        assert s.threshold("layer4", u) == pytest.approx(thresholds[u], rel=1e-6)
        rendered = s.masked("layer4", u)
        assert [v for v, _ in rendered] == pytest.approx(acts[u].tolist())
        for e, (_, img) in enumerate(rendered):
            expected = maia_rendering(images[u, e].astype(np.float64), masks[u, e])
            assert np.abs(np.asarray(img, dtype=int) - expected.astype(int)).max() <= 1
    distinct = len({images[u, e].tobytes() for u in range(3) for e in range(4)})
    assert len(list((s.folder / "images").iterdir())) <= distinct + 4  # layer3 adds at most its own


def test_import_maia_synthetic_neurons(tmp_path):
    acts, images, masks = write_maia_layer(
        tmp_path / "maia" / "synthetic_neurons" / "mono", synthetic=True
    )
    out = maia(
        "exemplars",
        "import-maia",
        str(tmp_path / "maia"),
        "--target",
        "synthetic_neurons",
        "--exemplars",
        str(tmp_path / "ex"),
    )
    assert out.returncode == 0, out.stderr
    s = find_store(tmp_path / "ex", "synthetic_neurons")
    assert list(s.layers) == ["mono"] and s.threshold("mono", 0) is None
    _, img = s.masked("mono", 1)[2]
    assert (
        np.abs(
            np.asarray(img, dtype=int)
            - maia_rendering(images[1, 2].astype(np.float64), masks[1, 2]).astype(int)
        ).max()
        <= 1
    )


def test_import_maia_bad_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = maia("exemplars", "import-maia", str(tmp_path / "empty"), "--target", "resnet152")
    assert out.returncode == 2 and "No MAIA exemplar layers" in out.stderr


def test_tool_error_in_process(store, lite0):
    from maia_core.tools import ToolContext
    from maia_plugins.tools.dataset_exemplars import DatasetExemplars

    out, _ = store
    ctx = ToolContext(target=lite0, device="cpu", ask_backbone=lambda m: "", exemplars=str(out))
    tool = DatasetExemplars(ctx)
    system = lite0.system(Unit("blocks.6", 1), threshold=tool.threshold_for(Unit("blocks.6", 1)))
    assert len(tool(system, k=2)) == 2
    with pytest.raises(ToolError, match="no dataset exemplars for layer blocks.5"):
        tool(lite0.system(Unit("blocks.5", 1)))
    with pytest.raises(ToolError, match="call it as tools.dataset_exemplars\\(system\\)"):
        tool("not a system")
    low = [value for value, _ in tool(system, k=3, bottom=True)]
    assert len(low) == 3 and low == sorted(low)
