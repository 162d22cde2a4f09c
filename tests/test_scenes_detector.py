"""The ``scenes`` detector: exact on the scenes world's renders and edits (through the host's
registry, keyed by the model's view), the offline detector on anything else, which answered
recorded with the round; the exemplar pass over the scenes dataset exact too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import two_at_once
from maia_core import plugins
from maia_core.tools import CallScope, ToolContext, call_scope
from maia_core.units import Unit

STAMPS = Path("/usr/share/tuxpaint/stamps")
needs_stamps = pytest.mark.skipif(not STAMPS.is_dir(), reason="Tux Paint stamps not installed")


def load(spec: str, **options):
    entry, arg = plugins.registry("targets").resolve(spec)
    return entry.factory(arg, device="cpu", **options)


@pytest.fixture(scope="module")
def world():
    from maia_plugins.tools.scenes_tools import ScenesEditImages, ScenesText2Image

    target = load("synthetic:offline")  # its own detector: scenes
    ctx = ToolContext(target=target, device="cpu")
    target.bind_truth(ctx.truth)
    units = {tuple(u["concepts"]): Unit(u["layer"], u["unit"]) for u in target.unit_listing(True)}
    return target, ScenesText2Image(ctx, size=224), ScenesEditImages(ctx, size=224), ctx, units


def activations(target, images, unit):
    out = []
    for _views, maps in target.unit_maps(images, unit):
        out.extend(maps.flatten(1).amax(1).tolist())
    return out


@needs_stamps
def test_exact_on_renders_where_the_offline_detector_confuses_look_alikes(world):
    target, t2i, _edit, _ctx, units = world
    assert target.detector.name == "scenes"
    images, _ = t2i.generate(
        ["a yellow bear", "a zebra on grass", "a blue strawberry", "a teapot"], 0
    )
    bear, zebra, grass = units[("bear",)], units[("zebra",)], units[("grass",)]
    strawberry, yellow, blue = units[("strawberry",)], units[("yellow",)], units[("blue",)]
    assert activations(target, images, bear) == [1.0, 0.0, 0.0, 0.0]
    assert activations(target, images, zebra) == [0.0, 1.0, 0.0, 0.0]
    assert activations(target, images, strawberry) == [0.0, 0.0, 1.0, 0.0]
    assert activations(target, images, grass)[1] > 0.9
    assert [a > 0.5 for a in activations(target, images, yellow)] == [True, False, False, False]
    assert [a > 0.5 for a in activations(target, images, blue)] == [False, False, True, False]
    # the offline detector, on the same pixels, reads the recoloured strawberry otherwise
    offline = load("synthetic:offline", detector="offline")
    assert activations(offline, images[2:3], strawberry)[0] < 0.5


@needs_stamps
def test_exact_on_edits_masks_follow_the_objects(world):
    target, t2i, edit, ctx, units = world
    [zebra_image], _ = t2i.generate(["a zebra on the left"], 1)
    edited, _ = edit.edit(
        [zebra_image] * 3,
        ["replace the zebra with a tiger", "rotate the image by 90 degrees", "remove the zebra"],
        2,
    )
    zebra, tiger = units[("zebra",)], units[("tiger",)]
    assert activations(target, edited, zebra) == [0.0, 1.0, 0.0]
    assert activations(target, edited, tiger) == [1.0, 0.0, 0.0]
    # the turned zebra's region is where the turned zebra is, in the model's view
    [(_views, maps)] = list(target.unit_maps(edited[1:2], zebra))
    from maia_core.torch_runtime.target import unit_masks

    region = unit_masks(maps, target.preprocess.size, 0.0, 0.9)[0].numpy()
    mask = ctx.truth.get(edited[1])["objects"][0]["mask"]
    truth = (
        np.asarray(target.preprocess.view(Image.fromarray(mask.astype(np.uint8) * 255)))[..., 0]
        > 127
    )
    # maps are 28 x 28 and the region is everything above 0, so it covers the object and a
    # rim around it: all of the zebra, centred on it
    assert (region & truth).sum() >= 0.97 * truth.sum()
    centre = [np.mean(np.nonzero(m)[k]) for m in (region, truth) for k in (0, 1)]
    assert abs(centre[0] - centre[2]) < 6 and abs(centre[1] - centre[3]) < 6, centre
    assert region.sum() < 2.5 * truth.sum()


@needs_stamps
def test_other_images_fall_back_on_the_offline_detector_and_the_source_is_recorded(world):
    target, t2i, _edit, _ctx, units = world
    from skimage import data

    photo = Image.fromarray(data.chelsea())
    [render], _ = t2i.generate(["a zebra"], 3)
    masked = target.system(units[("zebra",)]).call_neuron([render])[1][0]  # dimmed: other pixels
    offline = load("synthetic:offline", detector="offline")
    others = [photo, masked, render.resize((200, 200))]
    for concepts in (("zebra",), ("dog",), ("red",)):
        unit = units[concepts]
        assert activations(target, others, unit) == pytest.approx(
            activations(offline, others, unit), abs=1e-6
        )
    scope = CallScope()
    with call_scope(scope):
        acts, shown = target.system(units[("zebra",)]).call_neuron([render, photo, render])
    assert acts[0] == acts[2] == 1.0 and len(shown) == 3
    [record] = scope.take_records()
    assert record["scene_truth"] == 2 and record["fallback"] == 1 and record["images"] == 3


@needs_stamps
def test_the_exemplar_pass_reads_the_scenes_datasets_truth(tmp_path):
    from maia_core.torch_runtime.exemplars import find_store
    from maia_plugins.tools.dataset_exemplars import compute_store

    compute_store(
        target="synthetic:offline",
        dataset="scenes:n=24,size=128,categories=animals/mammals/equines",
        layers="mono",
        root=tmp_path,
        k=4,
        batch_size=12,
        workers=0,
        device="cpu",
        quiet=True,
    )
    store = find_store(tmp_path, "synthetic:offline")
    scenes = store.dataset()
    listing = load("synthetic:offline").unit_listing(True)
    zebra = next(u["unit"] for u in listing if u["concepts"] == ["zebra"])
    ex = store.unit("mono", zebra)
    with_zebra = [i for i in range(24) if "zebra" in scenes.annotation(i)["labels"]]
    assert with_zebra, "the equines should include zebras"
    top = [(float(v), int(i)) for v, i in zip(ex.values, ex.indices)]
    exact = [i for v, i in top if v == 1.0]
    assert len(exact) == min(4, len(with_zebra)) and set(exact) <= set(with_zebra), top


def test_the_view_key_round_trips_a_normalized_batch():
    from maia_plugins.detectors.scene_truth import view_keys, view_pixels
    from maia_plugins.detectors.scenes import LITE0_PREPROCESS as pre

    rng = np.random.default_rng(0)
    views = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(3)]
    x = pre.to_tensor(views)
    back = view_pixels(x, pre).permute(0, 2, 3, 1).numpy()
    assert all((back[i] == np.asarray(v)).all() for i, v in enumerate(views))
    keys = view_keys(x, pre)
    assert len(set(keys)) == 3 and keys == view_keys(x.clone(), pre)
    assert view_keys(x + 0.01, pre) != keys
    assert torch.equal(pre.to_tensor(views), x)


def test_keys_read_off_the_views_are_the_keys_of_their_normalized_batch():
    from maia_core.torch_runtime.target import Preprocess
    from maia_plugins.detectors.scene_truth import pixel_keys, view_keys
    from maia_plugins.detectors.scenes import LITE0_PREPROCESS

    clip = Preprocess(
        mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)
    )
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    arrays += [np.zeros((224, 224, 3), np.uint8), np.full((224, 224, 3), 255, np.uint8)]
    views = [Image.fromarray(a) for a in arrays]
    for pre in (LITE0_PREPROCESS, Preprocess(), clip):
        keys = pixel_keys(views)
        assert keys == view_keys(pre.to_tensor(views), pre)
        assert len(set(keys)) == len(views)


@needs_stamps
def test_a_render_drawn_again_keeps_its_facts_and_a_batch_its_keys(world, monkeypatch):
    """A baseline draws the same prompts for every unit: the second time, the detector finds
    the facts it built (not built again), and a batch's keys are computed once for its note
    and its forward pass."""
    from maia_plugins.detectors import scene_truth
    from maia_plugins.detectors.scene_truth import view_keys

    real = scene_truth.view_keys

    target, t2i, _edit, _ctx, units = world
    det = target.detector
    unit = units[("zebra",)]

    def facts_of(images):
        x = target.preprocess.to_tensor([target.preprocess.view(im) for im in images])
        return det.facts(x)

    prompts = ["a zebra and a dog on grass", "a zebra in space"]
    first, _ = t2i.generate(prompts, 900)
    assert activations(target, first, unit) == [1.0, 1.0]
    built = facts_of(first)
    again, _ = t2i.generate(prompts, 900)
    assert activations(target, again, unit) == [1.0, 1.0]
    found = facts_of(again)
    assert all(f is not None for f in built)
    assert all(a is b for a, b in zip(built, found))

    # the batches a call is measured in note their keys, read off the views
    computed = []
    monkeypatch.setattr(scene_truth, "view_keys", lambda *a: computed.append(1) or real(*a))
    for _views, x in target.batches(first):
        assert det.truth.keys(x) == real(x, det.truth.preprocess) and not computed
    monkeypatch.undo()

    x = target.preprocess.to_tensor([target.preprocess.view(im) for im in first])
    keys = det.truth.keys(x)
    assert det.truth.keys(x) is keys and keys == view_keys(x, det.truth.preprocess)
    x.add_(0.25)  # changed in place: its keys are computed again
    changed = det.truth.keys(x)
    assert changed != keys and changed == view_keys(x, det.truth.preprocess)
    with torch.inference_mode():  # no version counter: computed every time, never remembered
        xi = target.preprocess.to_tensor([target.preprocess.view(im) for im in first])
        assert det.truth.keys(xi) == keys
        xi.add_(0.25)
        assert det.truth.keys(xi) == changed


def test_the_facts_grid_in_numpy_is_torchs_average_pool_to_the_bit():
    from maia_plugins.detectors.scene_truth import grid_of, to_grid

    rng = np.random.default_rng(3)
    for shape in [(224, 224), (448, 448), (112, 168), (230, 230)]:
        planes = [
            rng.integers(0, 256, shape).astype(np.float32) / 255.0,
            rng.random(shape, dtype=np.float32),
            (rng.random(shape) > 0.5).astype(np.float32),
        ]
        for plane in planes:
            want = to_grid(torch.from_numpy(plane)[None, None])[0, 0].numpy()
            got = grid_of(plane)
            assert got.dtype == np.float32 and np.array_equal(got, want), shape


@needs_stamps
def test_facts_two_threads_need_at_once_are_built_once(world, monkeypatch):
    """Two investigations measuring the same new images at once: each image's facts are
    built by one of them, and the other waits for them."""
    import threading

    from maia_plugins.detectors import scene_truth

    target, t2i, _edit, _ctx, _units = world
    det = target.detector
    images, _ = t2i.generate(["a dog and a cat in space"], 4242)
    x = target.preprocess.to_tensor([target.preprocess.view(im) for im in images])
    det.note_images(images, x)
    real_build, real_keys = scene_truth.SceneFacts.build, det.truth.keys
    built, asked = [], []
    inside, release = threading.Event(), threading.Event()

    def build(*args, **kwargs):
        built.append(args[0])
        if len(built) == 1:
            inside.set()
            release.wait(120)
        return real_build(*args, **kwargs)

    def keys(t):
        asked.append(t)
        return real_keys(t)

    monkeypatch.setattr(scene_truth.SceneFacts, "build", staticmethod(build))
    monkeypatch.setattr(det.truth, "keys", keys)
    results = two_at_once(lambda k: det.facts(x.clone()), inside, release, asked)
    assert len(built) == 1
    assert results[0][0] is not None and results[1][0] is results[0][0]
