"""The scenes text2image renders every part of a colour list or choice, and both scenes tools
make whole-image effects (greyscale, blur, noise, rotation, a corner patch, a watermark) and
their absence, with exact ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maia_core.tools import ToolContext

STAMPS = Path("/usr/share/tuxpaint/stamps")
pytestmark = pytest.mark.skipif(not STAMPS.is_dir(), reason="Tux Paint stamps not installed")


@pytest.fixture(scope="module")
def tools():
    from maia_plugins.tools.scenes_tools import ScenesEditImages, ScenesText2Image

    ctx = ToolContext(target=None, device="cpu")
    return ScenesText2Image(ctx, size=128), ScenesEditImages(ctx, size=128), ctx


def colours(ctx, image) -> list[str | None]:
    return [o["color_name"] for o in ctx.truth.get(image)["objects"]]


def test_a_choice_of_colours_varies_across_images_and_a_list_fills_one(tools):
    t2i, _edit, ctx = tools
    images, notes = t2i.generate(["a red or blue ball"] * 8, seed=0)
    drawn = [colours(ctx, im) for im in images]
    assert all(len(d) == 1 for d in drawn) and {d[0] for d in drawn} == {"red", "blue"}, drawn
    assert notes == []
    [squares], notes = t2i.generate(["red, green and blue squares"], seed=0)
    assert sorted(colours(ctx, squares)) == ["blue", "green", "red"] and notes == []
    [two], _ = t2i.generate(["a red and a blue ball"], seed=0)
    assert sorted(colours(ctx, two)) == ["blue", "red"]
    [pair], _ = t2i.generate(["a red and blue ball"], seed=0)
    assert sorted(colours(ctx, pair)) == ["blue", "red"]
    plain = [
        ctx.truth.get(im)["background"]["color_name"]
        for im in t2i.generate(["red or yellow"] * 8, 0)[0]
    ]
    assert set(plain) == {"red", "yellow"}
    grounds = [
        ctx.truth.get(im)["background"]["label"]
        for im in t2i.generate(["a dog on grass or sand"] * 8, 0)[0]
    ]
    assert set(grounds) == {"grass", "sand"}
    # the same seed draws the same choice
    again, _ = t2i.generate(["a red or blue ball"] * 8, seed=0)
    assert [colours(ctx, im) for im in again] == drawn


def test_effects_from_prompts_are_drawn_and_recorded(tools):
    t2i, _edit, ctx = tools
    prompts = [
        "a zebra",
        "a zebra in black and white",
        "a blurry zebra",
        "a noisy photo of a zebra",
        "an upside down zebra",
        "a zebra with a red patch in the top left corner",
        "a zebra with a watermark",
        "a zebra, sharp, in color",
    ]
    images, notes = t2i.generate(prompts, seed=4)
    assert notes == []
    kinds = [[e["kind"] for e in ctx.truth.get(im).get("effects", [])] for im in images]
    assert kinds == [
        [],
        ["grayscale"],
        ["blur"],
        ["noise"],
        ["rotate"],
        ["patch"],
        ["watermark"],
        [],
    ]
    arr = [np.asarray(im).astype(int) for im in images]
    grey = arr[1]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    patch = arr[5][:20, :20]
    assert (patch == [210, 35, 35]).all()
    detail = [np.abs(np.diff(a.mean(2), axis=1)).mean() for a in arr[:4]]
    assert detail[2] < 0.7 * detail[0] < detail[0] < 0.5 * detail[3], detail
    # upside down: the mask turned with the picture
    truth = ctx.truth.get(images[4])
    ys, xs = np.nonzero(truth["objects"][0]["mask"])
    assert np.asarray(images[4])[ys, xs].std() > 20  # the zebra's stripes are where its mask is


def test_edits_add_and_remove_effects_exactly(tools):
    t2i, edit, ctx = tools
    [zebra], _ = t2i.generate(["a zebra on grass on the left"], seed=2)
    instructions = [
        "blur the image",
        "add noise",
        "rotate the image by 90 degrees",
        "add a blue patch in the bottom right corner",
        "add a watermark",
        "make the image black and white",
    ]
    edited, notes = edit.edit([zebra] * len(instructions), instructions, seed=1)
    assert notes == [None] * len(instructions)
    for image, kind in zip(edited, ("blur", "noise", "rotate", "patch", "watermark", "grayscale")):
        truth = ctx.truth.get(image)
        assert [e["kind"] for e in truth["effects"]] == [kind]
        assert truth["spec"]["objects"] == ctx.truth.get(zebra)["spec"]["objects"]
    turned = ctx.truth.get(edited[2])["objects"][0]
    before = ctx.truth.get(zebra)["objects"][0]
    assert np.array_equal(turned["mask"], np.rot90(before["mask"]))
    assert (np.asarray(edited[3])[-20:, -20:] == [40, 85, 215]).all()
    # undoing: back to the very same pixels
    undone, _ = edit.edit(
        edited[:4],
        [
            "make the image sharp again",
            "remove the noise",
            "rotate the image back",
            "remove the patch",
        ],
        seed=1,
    )
    for image in undone:
        assert np.array_equal(np.asarray(image), np.asarray(zebra))
        assert "effects" not in ctx.truth.get(image)
    # several at once, and on an image the tools did not draw
    [both], _ = edit.edit([zebra], ["add a red patch in the top left corner and blur the image"], 3)
    assert sorted(e["kind"] for e in ctx.truth.get(both)["effects"]) == ["blur", "patch"]
    from PIL import Image

    photo = Image.new("RGB", (96, 64), (40, 160, 60))
    [out], [note] = edit.edit([photo], ["make the image black and white"], 0)
    arr = np.asarray(out)
    assert note is None and (arr[..., 0] == arr[..., 2]).all()
    assert ctx.truth.get(out)["effects"][0]["kind"] == "grayscale"
