"""Synthetic neurons (``synthetic:<set>``) and their detectors: the combination semantics, the
offline detector on real pictures, Grounded-SAM's real transformers path on tiny random
models, every neuron of ``synthetic:offline`` on the offline text2image's drawings, exemplar
stores, custom sets and ``maia synthetic``, and ground truth kept out of the agent's reach."""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import maia
from maia_core import plugins
from maia_core.errors import UserError
from maia_core.torch_runtime.detector import Detector
from maia_core.torch_runtime.target import Preprocess, unit_masks
from maia_core.units import Unit

STAMPS = Path(os.environ.get("MAIA_STAMPS_DIR") or "/usr/share/tuxpaint/stamps")
needs_stamps = pytest.mark.skipif(not STAMPS.is_dir(), reason="Tux Paint stamps not installed")
COLORS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
)


def load_target(spec: str, **options):
    entry, arg = plugins.registry("targets").resolve(spec)
    return entry.factory(arg, device="cpu", **options)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# -- the combination semantics, on constructed scores ---------------------------------------


class TableDetector(Detector):
    """Scores read off the image: concept k scores the first pixel's channel k; regions are
    fixed (``a`` the left half, ``b`` the right half, ``c`` the top half)."""

    name = "table"
    threshold = 0.1
    preprocess = Preprocess(size=(16, 16), crop_pct=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    CONCEPTS = ("a", "b", "c")

    def vocabulary(self):
        return list(self.CONCEPTS)

    def detect(self, x, concepts):
        B, (H, W) = x.shape[0], x.shape[-2:]
        regions = {"a": (slice(None), slice(0, W // 2)), "b": (slice(None), slice(W // 2, None))}
        regions["c"] = (slice(0, H // 2), slice(None))
        scores = torch.stack([x[:, self.CONCEPTS.index(c), 0, 0] for c in concepts], 1)
        masks = torch.zeros(B, len(concepts), H, W)
        for i, c in enumerate(concepts):
            masks[:, i][(slice(None), *regions[c])] = 1.0
        return scores, masks


def flat(rgb) -> Image.Image:
    return Image.new("RGB", (16, 16), tuple(int(round(v * 255)) for v in rgb))


@pytest.fixture(scope="module")
def table_target():
    from maia_plugins.targets.synthetic import parse_set
    from maia_plugins.targets.synthetic_model import SyntheticTarget

    neurons = {"mono": ["a", "b", "c"], "or": ["a_b", "a_c"], "and": ["a_b", "a_c"]}
    neuron_set = parse_set({"detector": "table", **neurons}, "table")
    return SyntheticTarget(
        "synthetic:table",
        neuron_set,
        TableDetector(),
        public_name="synthetic:custom",
        device="cpu",
        map_size=8,
    )


def test_or_max_and_min_and_zero_without_a_concept(table_target):
    # image 0: a=0.8, b=0.4, c=0.05 (under the detector's 0.1: absent); image 1: a=0.3, b=0, c=0.6
    images = [flat((0.8, 0.4, 0.05)), flat((0.3, 0.0, 0.6))]
    acts = {}
    for mode, n in (("mono", 3), ("or", 2), ("and", 2)):
        for i in range(n):
            values, _ = table_target.system(Unit(mode, i)).call_neuron(images)
            acts[mode, i] = values
    a8, a4, a3, a6 = (pytest.approx(v, abs=2e-3) for v in (0.8, 0.4, 0.3, 0.6))
    assert acts["mono", 0] == [a8, a3]
    assert acts["mono", 1] == [a4, 0.0]
    # c at 0.05 is undetected: exactly 0, not a score inherited from a or b (MAIA's defect)
    assert acts["mono", 2] == [0.0, a6]
    assert acts["or", 0] == [a8, a3]  # max(a, b)
    assert acts["or", 1] == [a8, a6]  # max(a, c)
    assert acts["and", 0] == [a4, 0.0]  # min(a, b); b absent in image 1 -> exactly 0
    assert acts["and", 1] == [0.0, a3]  # c absent in image 0 -> 0; min(0.3, 0.6) in image 1


def test_maps_peak_at_the_activation_and_masks_unite_regions(table_target):
    x = table_target.preprocess.to_tensor([flat((0.8, 0.4, 0.6))])
    maps = table_target.forward_layers(x, ["mono", "or", "and"])
    for mode in ("mono", "or", "and"):
        assert maps[mode].shape[-2:] == (8, 8)
    assert float(maps["mono"][0, 0].amax()) == pytest.approx(0.8, abs=2e-3)
    # OR a_b: its region is both halves (the union), at the OR's score
    or_map = maps["or"][0, 0]
    assert bool((or_map > 0).all()) and float(or_map.amax()) == pytest.approx(0.8, abs=2e-3)
    # AND a_c: min score, union of the left half and the top half
    and_map = maps["and"][0, 1]
    assert float(and_map.amax()) == pytest.approx(0.6, abs=2e-3)
    region = (and_map > 0).numpy()
    assert region[:, :4].all() and region[:4, :].all() and not region[4:, 4:].any()
    # call_neuron's masks use threshold 0: everything the detector marks is kept
    system = table_target.system(Unit("mono", 1))
    assert system.threshold == 0.0
    _, masked = system.call_neuron([flat((0.8, 0.4, 0.6))])
    arr = np.asarray(masked[0]).astype(int)
    assert (arr[:, 9:, 1] == 102).all() and (arr[:, :7, 1] == round(102 * 0.25)).all()


# -- the offline detector on real pictures ---------------------------------------------------


@pytest.fixture(scope="module")
def offline():
    # The set's own detector is `scenes`, exact on generated images; these tests are about the
    # offline detector it falls back to, on every image (tests/test_scenes_detector.py: scenes).
    return load_target("synthetic:offline", detector="offline")


@pytest.fixture(scope="module")
def world():
    from maia_plugins.datasets.scenes import ScenesDataset

    return ScenesDataset(n=1, size=224, categories="all")


@needs_stamps
def test_offline_detector_finds_the_zebra_and_its_outline(offline, world):
    from maia_plugins.datasets.scenes import Background, Placement, SceneSpec

    spec = SceneSpec(
        Background("plain", color=(230, 230, 230)),
        (Placement("animals/mammals/equines/zebra", 0.45, 0.5, 0.7),),
    )
    scene = world.render(spec)
    det = offline.detector
    view = det.preprocess.view(scene.image)
    scores, masks = det.detect(det.preprocess.to_tensor([view]), ["zebra", "apple", "dog"])
    assert scores[0, 0] > 0.8 and scores[0, 1] < 0.05 and scores[0, 2] < 0.05, scores
    # an absent object has no region; the zebra has one
    assert masks[0, 0].any() and not masks[0, 1:].any()
    # the mono zebra neuron's region, as call_neuron draws it, against the stamp's alpha
    unit = Unit("mono", offline.unit_listing(True)[0]["unit"])
    assert offline.ground_truth(unit)["concepts"] == ["zebra"]
    [(views, maps)] = list(offline.unit_maps([scene.image], unit))
    region = unit_masks(maps, offline.preprocess.size, 0.0, 0.9)[0].numpy()
    alpha = Image.fromarray(scene.annotation["objects"][0]["mask"].astype(np.uint8) * 255)
    truth = np.asarray(offline.preprocess.view(alpha))[..., 0] > 127
    assert iou(region, truth) >= 0.5, iou(region, truth)


def test_the_offline_detectors_grids_are_means_of_pixel_blocks():
    import torch.nn.functional as F

    from maia_plugins.detectors.offline import _local_std, block_mean

    torch.manual_seed(0)
    x = torch.rand(3, 3, 224, 224)
    for layout in (torch.contiguous_format, torch.channels_last):
        for f in (2, 4):
            got = block_mean(x.contiguous(memory_format=layout), f)
            assert got.is_contiguous() and got.shape == (3, 3, 224 // f, 224 // f)
            want = F.adaptive_avg_pool2d(x, 224 // f)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the texture's local standard deviation: over each cell's 3x3 neighbours inside the grid
    v = torch.rand(2, 56, 56)[:, None]
    mean = F.avg_pool2d(v, 3, stride=1, padding=1, count_include_pad=False)
    sq = F.avg_pool2d(v * v, 3, stride=1, padding=1, count_include_pad=False)
    want = (sq - mean * mean).clamp_min(0.0).sqrt()[:, 0]
    torch.testing.assert_close(_local_std(v[:, 0]), want, rtol=0, atol=1e-5)


def test_offline_colours_score_their_colour_and_no_other(offline):
    from maia_plugins.detectors.offline import saturation_score

    det = offline.detector
    # the RGBs the scenes text2image paints each colour name with
    rgb = {
        "red": (210, 35, 35),
        "orange": (240, 135, 20),
        "yellow": (240, 210, 30),
        "green": (45, 160, 55),
        "blue": (40, 85, 215),
        "purple": (135, 55, 180),
        "pink": (240, 120, 175),
        "brown": (125, 78, 38),
        "black": (25, 25, 25),
        "white": (245, 245, 245),
        "gray": (128, 128, 128),
    }
    images = [Image.new("RGB", (224, 224), rgb[c]) for c in COLORS]
    x = det.preprocess.to_tensor([det.preprocess.view(i) for i in images])
    scores, _ = det.detect(x, list(COLORS) + ["grass"])
    for i, color in enumerate(COLORS):
        others = [float(scores[i, j]) for j in range(len(COLORS)) if j != i]
        assert scores[i, i] > 0.99 and max(others) == 0.0, (color, scores[i])
    assert (scores[:, -1] == 0).all()  # a flat green is not grass
    # a patch: scored by its share of the view, masked where it is
    patch = Image.new("RGB", (224, 224), rgb["gray"])
    patch.paste(Image.new("RGB", (112, 112), rgb["red"]), (56, 56))
    x = det.preprocess.to_tensor([det.preprocess.view(patch)])
    scores, masks = det.detect(x, ["red", "blue"])
    share = 0.25 / 0.875**2  # the view crops 12.5% off each side: the patch's share grows
    assert float(scores[0, 0]) == pytest.approx(saturation_score(share), abs=0.02)
    assert scores[0, 1] == 0.0
    red = masks[0, 0]  # 56x56 over the view: the patch spans 14-42
    assert red[16:40, 16:40].min() == 1.0 and red[:12].max() == 0.0 and red[:, 44:].max() == 0.0


@needs_stamps
def test_grass_is_green_texture(offline, world):
    from maia_plugins.datasets.scenes import Background, SceneSpec

    lawn = world.render(SceneSpec(Background("grass", color=(140, 255, 100)))).image
    wall = Image.new("RGB", (224, 224), (45, 160, 55))
    det = offline.detector
    x = det.preprocess.to_tensor([det.preprocess.view(i) for i in (lawn, wall)])
    scores, _ = det.detect(x, ["grass", "green"])
    assert scores[0, 0] > 0.9 and scores[1, 0] == 0.0 and scores[1, 1] > 0.99


def test_offline_vocabulary_and_unknown_concepts(offline):
    det = offline.detector
    vocab = det.vocabulary()
    assert {"zebra", "dog", "bird", "car", "red", "grass", "orange fruit"} <= set(vocab)
    assert det.check(" Tennis  Ball ") == "tennis ball"
    from maia_core.torch_runtime.target import imagenet_class_names
    from maia_plugins.detectors.vocabulary import class_names

    assert class_names()[:264] == [n.lower() for n in imagenet_class_names()[:264]]
    with pytest.raises(UserError) as err:
        det.check("cheese wheel")
    assert "maia synthetic vocabulary --detector offline" in str(err.value)
    assert "\n" not in str(err.value)


# -- Grounded-SAM: the real transformers path, on tiny random models --------------------------


@pytest.fixture(scope="module")
def tiny_grounded_sam(tmp_path_factory):
    """Tiny random Grounding DINO (Swin backbone, BERT text encoder) and SAM, saved with their
    processors as a user's cache would hold them; the tokenizer has BERT's special ids."""
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
        SwinConfig,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("grounded-sam")
    swin = SwinConfig(
        window_size=7,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        image_size=98,
        out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4],
    )
    text = {
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 8,
        "max_position_embeddings": 8,
        "model_type": "bert",
    }
    config = GroundingDinoConfig(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=4,
        decoder_ffn_dim=4,
        num_queries=2,
        num_labels=3,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=6,
        backbone_config=swin,
        max_text_len=7,
        text_config=text,
    )
    vocab = {
        "[PAD]": 0,
        "[UNK]": 100,
        "[CLS]": 101,
        "[SEP]": 102,
        "[MASK]": 103,
        ".": 1012,
        "?": 1029,
        "dog": 3899,
        "cat": 4937,
    }
    tokenizer = BertTokenizer(vocab=vocab)
    assert tokenizer("dog.")["input_ids"] == [101, 3899, 1012, 102]
    GroundingDinoForObjectDetection(config).save_pretrained(root / "gd")
    GroundingDinoProcessor(GroundingDinoImageProcessor(), tokenizer).save_pretrained(root / "gd")
    vision = SamVisionConfig(
        image_size=24,
        patch_size=2,
        hidden_size=36,
        projection_dim=62,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=72,
        output_channels=32,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
        num_pos_feats=16,
        rel_pos_zero_init=False,
    )
    prompt = SamPromptEncoderConfig(
        image_size=24, patch_size=2, mask_input_channels=4, hidden_size=32, num_point_embeddings=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=32,
        mlp_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        iou_head_hidden_dim=32,
    )
    SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    ).save_pretrained(root / "sam")
    SamProcessor(
        SamImageProcessor(size={"longest_edge": 24}, pad_size={"height": 24, "width": 24})
    ).save_pretrained(root / "sam")
    return {"grounding_model": str(root / "gd"), "sam_model": str(root / "sam")}


def grounded_sam(paths, **options):
    from maia_plugins.detectors.grounded_sam import make_grounded_sam_detector

    return make_grounded_sam_detector(**paths, **{k: str(v) for k, v in options.items()})


def test_grounded_sam_settings_shapes_and_thresholds(tiny_grounded_sam):
    maia_settings = grounded_sam(tiny_grounded_sam)
    assert (maia_settings.box_threshold, maia_settings.text_threshold) == (0.25, 0.3)
    assert maia_settings.preprocess.size == (224, 224) and maia_settings.score == "mean"
    x = torch.randn(2, 3, 224, 224)
    scores, masks = maia_settings.detect(x, ["dog", "cat"])
    assert scores.shape == (2, 2) and masks.shape == (2, 2, 224, 224)

    small = torch.rand(2, 3, 64, 64) * 4 - 2
    everything = grounded_sam(tiny_grounded_sam, box_threshold=0, size=64)
    scores, masks = everything.detect(small, ["dog", "cat"])
    assert (scores > 0).all() and set(masks.unique().tolist()) <= {0.0, 1.0}
    # MAIA's score: the mean of the kept boxes' scores (both queries kept at threshold 0)
    found = everything.ground(everything._images(small), "dog")
    assert [len(s) for s, _ in found] == [2, 2]
    assert scores[:, 0].tolist() == pytest.approx([float(s.mean()) for s, _ in found])
    nothing = grounded_sam(tiny_grounded_sam, box_threshold=1, size=64)
    scores, masks = nothing.detect(small, ["dog", "cat"])
    assert (scores == 0).all() and (masks == 0).all()


def test_grounded_sam_undetected_concept_scores_zero(tiny_grounded_sam):
    """MAIA's SAMNeuron let a concept with no box inherit the previous concept's summed box
    scores; here it scores 0 and has no region."""
    det = grounded_sam(tiny_grounded_sam, box_threshold=0, size=64)
    torch.manual_seed(1)
    x = torch.rand(4, 3, 64, 64) * 4 - 2
    images = det._images(x)
    best = {c: torch.stack([s.max() for s, _ in det.ground(images, c)]) for c in ("dog", "cat")}
    i = int((best["dog"] - best["cat"]).abs().argmax())
    first, second = sorted(best, key=lambda c: float(best[c][i]), reverse=True)
    det.box_threshold = det.threshold = float(best["dog"][i] + best["cat"][i]) / 2
    scores, masks = det.detect(x, [first, second])
    assert scores[i, 0] > det.box_threshold and scores[i, 1] == 0.0
    assert not masks[i, 1].any()


def test_grounded_sam_masks_are_united_and_dilated_as_maia(tiny_grounded_sam):
    from scipy import ndimage

    from maia_plugins.detectors.grounded_sam import ELLIPSE_5X5, dilate

    one = torch.zeros(1, 1, 11, 11)
    one[0, 0, 5, 5] = 1
    grown = dilate(one, 1)[0, 0, 3:8, 3:8].numpy()
    assert (grown == np.array(ELLIPSE_5X5)).all()
    rng = np.random.default_rng(0)
    sparse = rng.random((40, 40)) > 0.995
    ours = dilate(torch.from_numpy(sparse).float()[None, None], 9)[0, 0].numpy() > 0
    theirs = ndimage.binary_dilation(sparse, structure=np.array(ELLIPSE_5X5, bool), iterations=9)
    assert (ours == theirs).all()
    # detect's regions: SAM's per-box masks, united per concept, then dilated
    det = grounded_sam(tiny_grounded_sam, box_threshold=0, size=64, dilation=2)
    x = torch.rand(2, 3, 64, 64) * 4 - 2
    images = det._images(x)
    boxes = [b for _, b in det.ground(images, "dog")]
    per_box = det.segment(images, boxes)
    _, regions = det.detect(x, ["dog"])
    for b in range(2):
        union = per_box[b].any(0)[None, None].float()
        assert torch.equal(regions[b, 0] > 0, dilate(union, 2)[0, 0] > 0)


def test_grounded_sam_through_a_set_file(tiny_grounded_sam, tmp_path):
    path = tmp_path / "gs.json"
    path.write_text(json.dumps({"detector": "grounded-sam", "mono": ["dog"], "and": ["dog_cat"]}))
    options = {f"detector.{k}": v for k, v in tiny_grounded_sam.items()}
    target = load_target(f"synthetic:{path}", **options, **{"detector.size": "64"})
    images = [Image.new("RGB", (80, 80), "gray"), Image.new("RGB", (80, 80), "white")]
    acts, masked = target.system(Unit("mono", 0)).call_neuron(images)
    assert len(acts) == 2 and all(0.0 <= a <= 1.0 for a in acts) and masked[0].size == (64, 64)
    assert target.ground_truth(Unit("and", 0)) == {
        "mode": "and",
        "concepts": ["dog", "cat"],
        "label": "dog_cat",
        "detector": "grounded-sam",
        "set": str(path),
    }


def test_synthetic_neurons_without_weights_is_one_line(tmp_path):
    out = maia("layers", "synthetic_neurons", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    for part in (
        "IDEA-Research/grounding-dino-tiny",
        "facebook/sam-vit-huge",
        "hf download IDEA-Research/grounding-dino-tiny",
        str(tmp_path),
    ):
        assert part in lines[0]


def test_maia_set_is_maias_labels():
    from maia_plugins.targets.synthetic import load_set

    maia_set = load_set("maia")
    assert maia_set.detector == "grounded-sam" and maia_set.counts() == {
        "mono": 47,
        "or": 18,
        "and": 20,
    }
    by_mode = maia_set.concepts_by_mode()
    assert by_mode["mono"][38] == ["car window"] and by_mode["mono"][46] == ["spiral"]
    assert by_mode["or"][0] == ["people", "building"] and by_mode["or"][17] == ["people", "wood"]
    assert by_mode["and"][3] == ["grass", "dog"] and by_mode["and"][19] == ["wheel", "racecar"]


# -- every synthetic:offline neuron on the offline text2image's drawings ----------------------


def prompt_for(concepts: list[str]) -> str:
    """What to ask the scenes text2image for to draw these concepts together."""
    objects = [c for c in concepts if c not in COLORS and c != "grass"]
    colors = [c for c in concepts if c in COLORS]
    grass = "grass" in concepts
    if not objects:
        if len(colors) == 2:
            return f"a {colors[0]} ball on a plain {colors[1]} background"
        return colors[0] if colors else "grass"
    text = " and ".join(f"a {o}" for o in objects)
    if grass:
        return text + " on grass"
    return text + (f" on a plain {colors[0]} background" if colors else "")


def drawn(truth: dict, concept: str) -> bool:
    if concept == "grass":
        return truth["background"]["label"] == "grass"
    if concept in COLORS:
        return concept in truth["colors"]
    return concept in truth["concepts"] or concept in truth["labels"]


@pytest.fixture(scope="module")
def text2image():
    from maia_core.tools import ToolContext
    from maia_plugins.tools.scenes_tools import ScenesText2Image

    ctx = ToolContext(target=None, device="cpu")
    return ScenesText2Image(ctx, size=224), ctx


@needs_stamps
def test_every_offline_neuron_fires_on_its_concepts_only(offline, text2image):
    t2i, ctx = text2image
    units = offline.unit_listing(show_concepts=True)
    neutral = ["a teapot", "a slug"]
    prompts: dict[str, list[int]] = {}  # prompt -> seeds
    for u in units:
        prompts.setdefault(prompt_for(u["concepts"]), []).extend(
            [0, 1] if u["mode"] != "or" else [0]
        )
        for c in u["concepts"]:
            prompts.setdefault(prompt_for([c]), []).append(0)
    for p in neutral:
        prompts[p] = [0]
    keys = [(p, s) for p, seeds in prompts.items() for s in sorted(set(seeds))]
    images = []
    for p, s in keys:
        [image], _ = t2i.generate([p], seed=s)
        images.append(image)
    truths = {key: ctx.truth.get(img) for key, img in zip(keys, images)}
    acts = {mode: [] for mode in ("mono", "or", "and")}
    for _views, x in offline.batches(images):
        out = offline.forward_layers(x, list(acts))
        for mode in acts:
            acts[mode].append(out[mode].flatten(2).amax(-1))
    acts = {mode: torch.cat(v) for mode, v in acts.items()}
    row = {key: i for i, key in enumerate(keys)}

    def act(u, prompt, seed=0):
        return float(acts[u["mode"]][row[prompt, seed], u["unit"]])

    failures = []
    for u in units:
        concepts, together = u["concepts"], prompt_for(u["concepts"])
        for seed in sorted(set(prompts[together])):
            assert all(drawn(truths[together, seed], c) for c in concepts), (
                together,
                truths[together, seed],
            )
            if act(u, together, seed) < 0.5:
                failures.append((u, together, seed, act(u, together, seed)))
        for p in neutral:
            if act(u, p) > 0.05 or act(u, together) < act(u, p) + 0.45:
                failures.append((u, p, act(u, p)))
        if u["mode"] in ("or", "and"):
            for c in concepts:
                alone = act(u, prompt_for([c]))
                if (u["mode"] == "or" and alone < 0.5) or (u["mode"] == "and" and alone != 0.0):
                    failures.append((u, c, "alone", alone))
    assert not failures, failures
    assert len([u for u in units if u["mode"] == "mono"]) >= 30
    assert len([u for u in units if u["mode"] == "or"]) >= 10
    assert len([u for u in units if u["mode"] == "and"]) >= 10


# -- exemplars ---------------------------------------------------------------------------------


@needs_stamps
def test_exemplars_of_a_mono_neuron_show_its_concept(tmp_path):
    from maia_core.torch_runtime.exemplars import find_store
    from maia_plugins.tools.dataset_exemplars import compute_store

    spec = "scenes:n=32,size=224,categories=animals/mammals/equines"
    summary = compute_store(
        target="synthetic:offline",
        dataset=spec,
        layers="mono",
        root=tmp_path,
        k=5,
        batch_size=16,
        workers=0,
        device="cpu",
        quiet=True,
    )
    assert summary["images"] == 32
    store = find_store(tmp_path, "synthetic:offline")
    assert store.layers["mono"]["fixed_threshold"] == 0.0
    zebra = [
        u["unit"]
        for u in load_target("synthetic:offline").unit_listing(True)
        if u["concepts"] == ["zebra"]
    ][0]
    assert store.threshold("mono", zebra) == 0.0
    ex = store.unit("mono", zebra)
    scenes = store.dataset()
    tops = [i for v, i in zip(ex.values, ex.indices) if v > 0.5]
    assert len(tops) >= 3
    assert all("zebra" in scenes.annotation(i)["labels"] for i in tops), [
        scenes.annotation(i)["labels"] for i in tops
    ]
    rendered = store.masked("mono", zebra, k=2)
    assert len(rendered) == 2 and rendered[0][1].size == (224, 224)


# -- custom sets and the commands ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('["zebra"]', "must be a JSON object"),
        ('{"mono": ["zebra"], "xor": ["a_b"]}', "unknown key 'xor'"),
        ('{"mono": "zebra"}', "'mono' must be a list"),
        ('{"mono": ["zebra_tiger"]}', "a mono neuron has one concept"),
        ('{"or": ["zebra"]}', "needs at least two concepts"),
        ('{"and": ["zebra__grass"]}', "a concept is empty"),
        ('{"mono": []}', "has no neurons"),
        ('{"mono": ["zebra", "cheese wheel"]}', "maia synthetic vocabulary --detector offline"),
        ('{"detector": "nope", "mono": ["zebra"]}', "Unknown detector 'nope'"),
    ],
)
def test_malformed_sets_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "set.json"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_target(f"synthetic:{path}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_set_specs_and_options(offline, tmp_path):
    with pytest.raises(UserError, match="synthetic:PATH.json"):
        load_target("synthetic:nosuchset")
    with pytest.raises(UserError, match="does not exist.*maia synthetic create"):
        load_target(f"synthetic:{tmp_path / 'missing.json'}")
    with pytest.raises(UserError, match="has no option 'colour'"):
        load_target("synthetic:offline", colour="red")
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps({"mono": ["zebra", "red"], "or": ["zebra_tiger"], "and": ["dog_grass"]})
    )
    mine = load_target(f"synthetic:{path}", **{"detector.threshold": "0.3"})
    assert mine.detector.threshold == 0.3
    assert [(i.name, i.units) for i in mine.layers()] == [("mono", 2), ("or", 1), ("and", 1)]
    assert mine.unit_listing() == [
        {"layer": "mono", "unit": 0},
        {"layer": "mono", "unit": 1},
        {"layer": "or", "unit": 0},
        {"layer": "and", "unit": 0},
    ]
    assert mine.unit_listing(show_concepts=True)[3] == {
        "layer": "and",
        "unit": 0,
        "mode": "and",
        "concepts": ["dog", "grass"],
    }
    counts = {i.name: i.units for i in offline.layers()}
    assert counts["mono"] >= 30 and counts["or"] >= 10 and counts["and"] >= 10
    assert load_target("synthetic:offline").name == "synthetic:offline"


def test_create_command_adds_neurons_and_their_exemplars(tmp_path):
    set_file = tmp_path / "cheese.json"
    out = maia(
        "synthetic", "create", "--set", str(set_file), "--mode", "mono", "--concepts", "zebra"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "mono=0" and "--units mono=0" in out.stderr
    out = maia(
        "synthetic",
        "create",
        "--set",
        str(set_file),
        "--mode",
        "or",
        "--concepts",
        "lemon,strawberry",
        "--dataset",
        "scenes:n=8,size=224",
        "--exemplars",
        str(tmp_path / "ex"),
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "or=0"
    assert json.loads(set_file.read_text()) == {
        "detector": "offline",
        "mono": ["zebra"],
        "or": ["lemon_strawberry"],
        "and": [],
    }
    from maia_core.torch_runtime.exemplars import find_store

    store = find_store(tmp_path / "ex", f"synthetic:{set_file}")
    assert set(store.layers) == {"mono", "or"} and store.layers["or"]["units"] == 1
    out = maia("layers", f"synthetic:{set_file}", "--json", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert {row["layer"]: row["units"] for row in json.loads(out.stdout)} == {"mono": 1, "or": 1}


def test_create_refuses_what_it_cannot_add(tmp_path):
    from maia_plugins.targets.synthetic import add_neuron

    set_file = str(tmp_path / "mine.json")
    assert add_neuron(set_file, "and", ["Dog", "grass"])[1:] == (0, True)
    assert add_neuron(set_file, "and", ["dog", "grass"])[1:] == (0, False)  # already there
    for args, message in [
        (
            (set_file, "and", ["cheese wheel", "grass"]),
            "maia synthetic vocabulary --detector offline",
        ),
        (("offline", "mono", ["dog"]), "read-only"),
        ((set_file, "xor", ["dog", "cat"]), "Use mono, or or and"),
        ((set_file, "mono", ["dog", "cat"]), "a mono neuron has one concept"),
        ((set_file, "mono", ["dog_cat"]), "cannot contain an underscore"),
        ((set_file, "mono", ["dog"], "grounded-sam"), "uses the detector 'offline'"),
    ]:
        with pytest.raises(UserError) as err:
            add_neuron(*args)
        assert message in str(err.value) and "\n" not in str(err.value)
    assert json.loads(Path(set_file).read_text())["and"] == ["dog_grass"]


def test_vocabulary_and_list_commands():
    out = maia("synthetic", "vocabulary", "--json")
    assert out.returncode == 0, out.stderr
    assert {"zebra", "dog", "red", "grass"} <= set(json.loads(out.stdout))
    out = maia("synthetic", "list", "--set", "maia", "--show-concepts", "--json")
    rows = json.loads(out.stdout)
    assert len(rows) == 85 and rows[38] == {
        "layer": "mono",
        "unit": 38,
        "mode": "mono",
        "concepts": ["car window"],
    }
    out = maia("synthetic", "list", "--set", "maia", "--json")
    assert "concepts" not in out.stdout


# -- ground truth stays out of the agent's reach --------------------------------------------------


def test_no_concept_reaches_the_agent(offline):
    from maia_core.loop.prompts import api_text

    concepts = {c for u in offline.unit_listing(True) for c in u["concepts"]}
    pattern = re.compile(r"\b(" + "|".join(re.escape(c) for c in sorted(concepts)) + r")\b", re.I)
    for u in offline.unit_listing(True):
        system = offline.system(Unit(u["layer"], u["unit"]))
        texts = [repr(system), str(system), offline.describe(), api_text(system, {})]
        texts += [inspect.getdoc(type(system)) or ""]
        for name in dir(system):
            if name.startswith("_"):
                continue
            value = getattr(system, name)
            if isinstance(value, (str, int, float, bool)):
                texts.append(f"{name}={value}")
            elif callable(value):
                texts.append(inspect.getdoc(value) or "")
            else:
                texts.append(repr(value))
        for text in texts:
            assert not pattern.search(text), (u, pattern.search(text).group(0), text)
        with pytest.raises(Exception) as err:  # any error the agent could provoke
            system.call_neuron(["not an image"])
        assert not pattern.search(str(err.value))
        assert offline.ground_truth(Unit(u["layer"], u["unit"]))["concepts"] == u["concepts"]
