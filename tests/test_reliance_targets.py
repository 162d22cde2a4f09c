"""Planted-reliance classifiers (``reliance:<set>``): every model of ``reliance:offline`` against
renders with and without its condition and without its object, the fallback on images without
ground truth, user sets and their one-line errors, and the ground truth out of the agent's reach."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from test_synthetic_runs import PROBE

from conftest import maia, write_replay
from maia_core import plugins
from maia_core.errors import UserError
from maia_core.loop.run import RunConfig, run
from maia_core.tools import ToolContext
from maia_core.units import Unit

STAMPS = Path("/usr/share/tuxpaint/stamps")
needs_stamps = pytest.mark.skipif(not STAMPS.is_dir(), reason="Tux Paint stamps not installed")
SIZE = 160  # small renders: the scores read the scenes' truth, not the pixels


def load(spec: str, **options):
    entry, arg = plugins.registry("targets").resolve(spec)
    return entry.factory(arg, device="cpu", **options)


def phrases(obj: str, condition: dict) -> tuple[str, str]:
    """Prompts where the condition holds and where it does not; ``FLIP`` for a mirrored
    object, which edit_images makes."""
    from maia_plugins.targets.reliance_conditions import parse_condition
    from maia_plugins.targets.reliance_prompts import condition_prompts

    found = condition_prompts(obj, parse_condition(condition, "test"))
    return found if found is not None else ("FLIP", f"a {obj}")


# Pairs: (prompt where the model's condition holds, prompt where it does not).
PAIRS = {
    ("zebra", "and"): ("a zebra on grass", "three zebras on grass"),
    ("duck", "and"): ("a yellow duck on water", "a blue duck on water"),
    ("tiger", "and"): (
        "a tiger on the left with a red patch in the top left corner",
        "a tiger on the right with a red patch in the top left corner",
    ),
    ("balloon", "and"): (
        "a red balloon on a plain blue background",
        "a red balloon on a plain yellow background",
    ),
    ("camel", "and"): ("a huge camel on sand", "a tiny camel on sand"),
    ("dog", "or"): ("a dog and a ball on gravel", "a dog on gravel"),
    ("elephant", "or"): ("an elephant in black and white", "an elephant on grass"),
    ("strawberry", "or"): (
        "a strawberry on a plain yellow background",
        "a strawberry on the right",
    ),
    ("bear", "or"): ("a bear with a watermark", "a bear"),
    ("guitar", "or"): ("a guitar above a drum", "a huge guitar below a drum"),
}
# The other half of each pair: where only the second condition holds (AND: still low; OR: high).
SECOND = {
    ("zebra", "and"): "a zebra on gravel",
    ("duck", "and"): "a yellow duck on sand",
    ("tiger", "and"): "a tiger on the left",
    ("balloon", "and"): "a green balloon on a plain blue background",
    ("camel", "and"): "a huge camel on grass",
    ("dog", "or"): "a dog on grass",
    ("elephant", "or"): "an elephant on snow",
    ("strawberry", "or"): "a strawberry on the left",
    ("bear", "or"): "a blurry bear",
    ("guitar", "or"): "a tiny guitar",
}


@pytest.fixture(scope="module")
def world():
    from maia_plugins.tools.scenes_tools import ScenesEditImages, ScenesText2Image

    target = load("reliance:offline")
    ctx = ToolContext(target=target, device="cpu")
    target.bind_truth(ctx.truth)
    return target, ScenesText2Image(ctx, size=SIZE), ScenesEditImages(ctx, size=SIZE), ctx


def scores_of(target, images: list[Image.Image]) -> list[list[float]]:
    out = []
    for _views, x in target.batches(images):
        out.extend(target.forward_layers(x, ["output"])["output"].tolist())
    return out


@needs_stamps
def test_every_offline_model_on_renders_with_and_without_its_condition(world):
    target, t2i, edit, ctx = world
    listing = target.unit_listing(show_conditions=True)
    assert len(listing) == 90
    single = [u for u in listing if u["mode"] == "single"]
    assert len(single) == 80 and {u["alpha"] for u in single} == {0.9, 0.5}
    categories = {u["category"] for u in single}
    assert len(categories) >= 12, categories
    assert sum(u["mode"] == "and" for u in listing) == 5
    assert sum(u["mode"] == "or" for u in listing) == 5
    cases = []  # (unit, image, expected) with expected "full", "low", "absent"
    images: list[Image.Image] = []

    def render(prompt: str) -> int:
        [image], _ = t2i.generate([prompt], seed=len(images))
        images.append(image)
        return len(images) - 1

    for u in listing:
        obj = u["object"]
        if u["mode"] == "single":
            yes, no = phrases(obj, u["conditions"][0])
            if yes == "FLIP":  # mirrored: a drawing and the same drawing flipped by edit_images
                base = render(no)
                [flipped], _ = edit.edit([images[base]], [f"flip the {obj}"], seed=1)
                images.append(flipped)
                mirrored = ctx.truth.get(images[base])["objects"][0]["flip"]
                with_, without = (base, base + 1) if mirrored else (base + 1, base)
            else:
                with_, without = render(yes), render(no)
            absent = render(yes.replace(obj, "teapot") if yes != "FLIP" else "a teapot")
        else:
            yes, no = PAIRS[(obj, u["mode"])]
            with_, without = render(yes), render(no)
            second = render(SECOND[(obj, u["mode"])])
            cases.append((u, second, "full" if u["mode"] == "or" else "low"))
            absent = render("a teapot")
        cases += [(u, with_, "full"), (u, without, "low"), (u, absent, "absent")]
    scores = scores_of(target, images)
    failures = []
    for u, i, expected in cases:
        s = scores[i][u["unit"]]
        ok = {
            "full": s == pytest.approx(1.0),
            "low": s <= (1 - u["alpha"]) + 1e-6,
            "absent": 0.0 <= s <= 0.1 + 1e-6,
        }[expected]
        if not ok:
            failures.append(
                (
                    u["unit"],
                    u["label"],
                    expected,
                    round(s, 3),
                    ctx.truth.get(images[i]).get("prompt"),
                )
            )
    assert not failures, failures


@needs_stamps
def test_the_truth_predicate_reads_the_scene(world):
    target, t2i, _edit, _ctx = world
    images, _ = t2i.generate(["a zebra on grass", "a zebra on sand", "a teapot on grass"], seed=3)
    unit = next(
        Unit("output", u["unit"])
        for u in target.unit_listing(True)
        if u["label"] == "zebra, relying on background grass"
    )
    truth = target.truth(unit, images)
    assert [(t["object"], t["condition"], t["exact"]) for t in truth] == [
        (True, True, True),
        (True, False, True),
        (False, True, True),
    ]
    # the same pixels, resized: no ground truth, so the estimate from pixels answers
    resized = [im.resize((SIZE + 8, SIZE + 8)) for im in images[:2]]
    assert [t["exact"] for t in target.truth(unit, resized)] == [False, False]


@needs_stamps
def test_images_without_ground_truth_fall_back_on_efficientnet_and_pixels(world):
    target, t2i, _edit, _ctx = world
    grass_zebra = next(
        u
        for u in target.unit_listing(True)
        if u["label"] == "zebra, relying on background grass" and u["alpha"] == 0.9
    )
    images, _ = t2i.generate(["a huge zebra on grass", "a huge zebra on sand"], seed=5)
    # resized copies are not in the registry: EfficientNet-Lite0 scores the zebra, and the
    # background is read from the pixels
    outside = [im.resize((224, 224), Image.BICUBIC) for im in images]
    on_grass, on_sand = (row[grass_zebra["unit"]] for row in scores_of(target, outside))
    assert on_grass > 0.5, on_grass
    assert on_sand <= 0.1 * on_grass + 1e-6 and on_sand > 0, (on_grass, on_sand)
    teapot = Image.new("RGB", (224, 224), (200, 200, 200))
    assert 0.0 <= scores_of(target, [teapot])[0][grass_zebra["unit"]] <= 0.1


@needs_stamps
def test_renders_are_scored_without_loading_efficientnet():
    """Probing the layers and scoring renders need no network: the scenes detector loads its
    fallback (EfficientNet-Lite0, and with it timm) for the first image without ground truth."""
    from maia_plugins.tools.scenes_tools import ScenesText2Image

    target = load("reliance:offline")
    ctx = ToolContext(target=target, device="cpu")
    target.bind_truth(ctx.truth)
    assert [info.name for info in target.layers()] == ["output"]
    images, _ = ScenesText2Image(ctx, size=SIZE).generate(["a zebra on grass"], seed=0)
    zebra = next(u["unit"] for u in target.unit_listing(True) if u["object"] == "zebra")
    assert scores_of(target, images)[0][zebra] > 0.1
    assert target.detector._fallback is None
    scores_of(target, [Image.new("RGB", (SIZE, SIZE), (200, 200, 200))])
    assert target.detector._fallback is not None


def test_user_sets_and_their_one_line_errors(tmp_path):
    good = tmp_path / "mine.json"
    good.write_text(
        json.dumps(
            {
                "models": [
                    {"object": "zebra", "condition": "background=grass", "alpha": 0.9},
                    {
                        "object": "dog",
                        "or": ["color=red", "relation=left of ball"],
                        "alpha": [0.9, 0.5],
                    },
                ]
            }
        )
    )
    target = load(f"reliance:{good}")
    assert [i.units for i in target.layers()] == [3]
    assert target.class_names == ["zebra", "dog", "dog"]
    truth = target.ground_truth(Unit("output", 2))
    assert truth["mode"] == "or" and truth["alpha"] == 0.5
    assert truth["conditions"] == [
        {"category": "color", "value": "red"},
        {"category": "relation", "value": "left of", "object": "ball"},
    ]
    assert target.system(Unit("output", 0)).model_name == "reliance:custom"
    cases = [
        (
            {"models": [{"object": "cheese wheel", "condition": "color=red"}]},
            "does not know the object 'cheese wheel'",
        ),
        (
            {"models": [{"object": "zebra", "condition": "mood=happy"}]},
            "unknown condition category 'mood'",
        ),
        (
            {"models": [{"object": "zebra", "condition": "color=plaid"}]},
            "unknown color value 'plaid'",
        ),
        (
            {"models": [{"object": "zebra", "condition": "relation=near ball"}]},
            "a relation is one of",
        ),
        (
            {"models": [{"object": "zebra", "condition": "cooccurrence=glorbnax"}]},
            "does not know the object 'glorbnax'",
        ),
        ({"models": [{"object": "zebra", "and": ["color=red"]}]}, "a list of two conditions"),
        (
            {"models": [{"object": "zebra", "condition": "color=red", "alpha": 2}]},
            '"alpha" must be',
        ),
    ]
    for content, message in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(UserError) as err:
            load(f"reliance:{bad}")
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    out = maia("layers", f"reliance:{bad}", "--device", "cpu")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert '"alpha" must be' in out.stderr


def test_no_condition_reaches_the_agent_in_the_system_object():
    from maia_core.loop.prompts import api_text

    target = load("reliance:offline")
    # What a condition is called (category=value, the label) and the words of its kind; the
    # categories' plain names (size, color, position...) are everyday words of any docstring.
    words = {"relying", "alpha", "planted", "cooccurrence", "background_color", "watermark"}
    for u in target.unit_listing(True):
        words.add(u["label"])
        for c in u["conditions"]:
            words.add(f"{c['category']}={c['value']}")
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.I)
    for u in target.unit_listing(True)[::7]:
        system = target.system(Unit("output", u["unit"]))
        texts = [
            repr(system),
            target.describe(),
            api_text(system, {}),
            inspect.getdoc(type(system)) or "",
        ]
        for name in dir(system):
            if name.startswith("_"):
                continue
            value = getattr(system, name)
            texts.append(inspect.getdoc(value) or "" if callable(value) else f"{name}={value}")
        for text in texts:
            assert not pattern.search(text), (u, pattern.search(text).group(0), text)
        assert system.class_name == u["object"]
        with pytest.raises(Exception) as err:
            system.call_neuron(["not an image"])
        assert not pattern.search(str(err.value))


def test_no_condition_is_reachable_from_the_agents_process(tmp_path):
    target = load("reliance:offline")
    chosen = [
        u
        for u in target.unit_listing(True)
        if u["category"] in ("relation", "shortcut", "orientation")
    ][:3]
    needles = set()
    for u in chosen:
        needles.add(u["label"].lower())
        for c in u["conditions"]:
            needles.add(f"{c['category']}={c['value']}")
    needles |= {"relying on", "cooccurrence", "background_color"}

    def code(word: str) -> str:
        return bytes(b ^ 0x5A for b in word.encode()).hex()

    probe = PROBE.format(
        needles=[code(n) for n in sorted(needles)], control=code("call_classifier")
    )
    turns = write_replay(tmp_path / "t.json", [probe, "[DESCRIPTION]: d\n[LABEL]: l"])
    invs = run(
        RunConfig(
            target="reliance:offline",
            units="output=" + ",".join(str(u["unit"]) for u in chosen),
            backbone=f"replay:{turns}",
            results=tmp_path / "r",
            reporters=["json"],
            device="cpu",
        )
    )
    for inv, u in zip(
        sorted(invs, key=lambda i: i.unit.index), sorted(chosen, key=lambda u: u["unit"])
    ):
        out = inv.messages[3].text
        assert "control found: True" in out, out
        assert "concepts found: []" in out, out
        seen = "\n".join(m.text for m in inv.messages).lower()
        assert not any(n in seen for n in needles)
        # maia knows the truth, after the answer, and writes it with the result
        assert inv.ground_truth["conditions"] == u["conditions"]
    results = [json.loads(p.read_text()) for p in (tmp_path / "r").rglob("result.json")]
    assert sorted(r["ground_truth"]["label"] for r in results) == sorted(u["label"] for u in chosen)
