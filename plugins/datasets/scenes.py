"""``scenes``: an offline world of photo cut-outs composited onto backgrounds, with ground truth.

The objects are the photo cut-outs of the Debian package ``tuxpaint-stamps-default`` (about
800 RGBA stamps of animals, food, vehicles..., each with an English description). The
backgrounds are textures and photos that ship inside scikit-image, scikit-learn and
matplotlib, and plain colours. Nothing is downloaded.

Spec: ``scenes`` or ``scenes:n=500,size=224,categories=animals/mammals`` (``key=value`` pairs
after the colon; a comma-separated value such as ``categories=animals,food`` continues until
the next ``key=``). The same keys may be given as factory keyword options.

Item ``i`` is sampled from a random generator seeded by ``(seed, i)`` alone, so it does not
depend on ``n``, on access order or on the process: ``scenes:n=500`` is the first 500 items
of ``scenes``. Each item is a :class:`SceneSpec` (background, objects, positions, scales)
rendered by :class:`SceneRenderer`; later tools (text-to-image over this world, synthetic
neurons) build specs of their own and render them the same way.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import os
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maia_core.dataset import Dataset
from maia_core.errors import UserError
from maia_core.options import as_float, as_int, reject_unknown
from maia_plugins.datasets import scene_effects
from maia_plugins.datasets.scene_effects import Effect

DEFAULT_STAMPS_DIR = "/usr/share/tuxpaint/stamps"
STAMPS_ENV = "MAIA_STAMPS_DIR"
APT_INSTALL = "sudo apt-get install tuxpaint-stamps-default"
# Bump whenever sampling or rendering changes what an item looks like: it is part of the
# fingerprint, so exemplar stores computed on the old world are refused.
WORLD_VERSION = 1

OPTIONS = (
    "n",
    "size",
    "seed",
    "categories",
    "exclude",
    "objects",
    "scale",
    "backgrounds",
    "stamps",
)
DEFAULTS: dict[str, Any] = {
    "n": 5000,
    "size": 256,
    "seed": 0,
    "objects": (1, 3),
    "scale": (0.5, 0.95),
    "backgrounds": ("textures", "scenery", "plain"),
}
# Letters, digits, coins, chess pieces and musical notation are symbols, not objects in a
# scene; they are a fifth of the stamps and would crowd out the photos. categories=all or
# categories=symbols brings them back.
DEFAULT_EXCLUDED_CATEGORIES = ("symbols",)

# Sampling constants (see ScenesDataset.spec).
_MIN_VISIBLE = 0.5  # each object's box keeps at least this much uncovered by later objects
_SUBJECT_VISIBLE = 0.75  # and the subject (the largest object) this much
_COMPANION_SCALE = (0.4, 0.7)  # companions' scale, as a fraction of the subject's
_MAX_OUTSIDE = 0.15  # at most this much of an object's width or height lies outside the image
_MAX_UPSCALE = 4.0  # small stamps are never blown up more than this (they turn to mush)
_PLACEMENT_TRIES = 20
_MASK_ALPHA = 128  # a pixel belongs to an object where its alpha is at least this


def make_scenes(arg: str | None, **options: Any) -> ScenesDataset:
    """``scenes[:key=value,...]``; keyword options override keys given in ``arg``."""
    merged = {**parse_spec_options(arg), **options}
    reject_unknown(merged, "Dataset scenes", OPTIONS)
    return ScenesDataset(**merged)


def parse_spec_options(arg: str | None) -> dict[str, str]:
    """``"n=500,categories=animals,food"`` -> ``{"n": "500", "categories": "animals,food"}``.

    A piece without ``=`` continues the previous value, so list values need no quoting.
    """
    out: dict[str, str] = {}
    key = None
    for piece in (arg or "").split(","):
        name, sep, value = piece.partition("=")
        if sep and name.strip():
            key = name.strip()
            out[key] = value.strip()
        elif key is not None:
            out[key] = f"{out[key]},{piece.strip()}"
        elif piece.strip():
            raise UserError(
                f"Malformed scenes option {piece.strip()!r}. Expected KEY=VALUE, "
                "e.g. scenes:n=500,size=224."
            )
    return out


# ---------------------------------------------------------------------------------------
# Stamps: the inventory of cut-outs, with labels parsed from their descriptions


@dataclass(frozen=True)
class Stamp:
    """One cut-out: ``id`` is its path under the stamps folder without ``.png``."""

    id: str
    path: str
    label: str
    description: str
    file_size: int

    @property
    def category(self) -> str:
        """The folder path, e.g. ``animals/mammals/equines``."""
        return self.id.rpartition("/")[0]


_ARTICLES = {"a", "an", "the", "some", "our", "two", "another"}
# "A pair of pants" is pants; "the baby of a gnu" is a gnu.
_QUANTITIES = (
    "pair of",
    "bunch of",
    "cluster of",
    "head of",
    "string of",
    "quarter of",
    "couple of",
    "baby of a",
    "plant of",
)
# Leading words dropped from labels: colour, size and mood describe the stamp, not the kind
# of thing ("A brown hen." is a hen). Only leading, and never the last word.
_ADJECTIVES = {
    "very",
    "happy",
    "colorful",
    "colourful",
    "ripe",
    "sweet",
    "small",
    "large",
    "big",
    "huge",
    "little",
    "old",
    "modern",
    "male",
    "female",
    "sleeping",
    "sitting",
    "singing",
    "red",
    "green",
    "blue",
    "yellow",
    "brown",
    "white",
    "black",
    "pink",
    "silver",
    "golden",
    "purple",
    "stripey",
    "poisonous",
}
# Words after which a description stops naming the thing ("A dumper. It carries...",
# "A spider playing soccer", "A tower with a red flag").
_CLAUSE_BREAK = re.compile(
    r"\s(?:called|that|which|means|resembles|is|are|from|in|for|to|used|with|as|at|of|"
    r"inside|covered|hatched|lets|stands|making|playing|dancing|carries|carry|ahead)\s"
)
# Descriptions that are jokes or sentences rather than noun phrases, in the packaged stamps.
LABEL_OVERRIDES = {
    "animals/birds/cartoon/penguin_with_spider": "penguin",
    "animals/fish/bluegroper": "blue groper",
    "animals/mammals/rodents/rabbit-2": "rabbit",
    "food/vegetables/broccoli": "broccoli",
    "food/vegetables/tomato": "tomato",
    "household/garbagecan": "garbage can",
    "household/toilet": "toilet",
    "military/ammunition/old_naval_shell": "naval shell",
    "military/final-roll-call": "memorial",
    "military/vehicles/bradley": "armored vehicle",
    "military/vehicles/bradley_mirror": "armored vehicle",
    "military/vehicles/infantry-stryker": "armored vehicle",
    "military/vehicles/ww2_german_gun": "field gun",
    "naturalforces/explosion": "explosion",
    "people/toys/grannysmith": "rag doll",
    "plants/flowers/anemone_red": "anemone",
    "plants/mushrooms/cep": "cep",
    "plants/mushrooms/cep-2": "cep",
    "plants/trees/rambutan": "tree",
    "seasonal/easter/bunny": "bunny",
    "seasonal/hanukkah/menorah": "menorah",
    "sports/cartoon/football_helmet_front": "football helmet",
    "sports/cartoon/football_helmet_side": "football helmet",
    "symbols/recycle": "recycling symbol",
    "town/cartoon/docks": "docks",
    "town/flags/blue-and-yellowflag": "flag",
    "town/houses/cartoon/cave_entrance": "cave entrance",
    "town/roadsigns/stoplight_01_red": "traffic light",
    "town/roadsigns/stoplight_02_yellow": "traffic light",
    "town/roadsigns/stoplight_03_green": "traffic light",
    "vehicles/emergency/sedan_police": "police car",
    "vehicles/emergency/sedan_police_mirror": "police car",
    "vehicles/farming/cartoon/tux_tractor": "tractor",
    "vehicles/flight/cartoon/eddieCopter": "helicopter",
    "vehicles/flight/planes/cartoon/plane": "airplane",
    "vehicles/locomotive/cartoon/tender": "tender",
    "vehicles/locomotive/cartoon/tender_mirror": "tender",
    "vehicles/ship/cartoon/bathyscape": "bathyscaphe",
}


def label_from(description: str, stamp_id: str) -> str:
    """A short English noun phrase for a stamp: ``"A zebra."`` -> ``"zebra"``.

    Cuts the description at its first clause, drops articles, quantities and leading
    adjectives; falls back to the file name when the description is empty ("tux-yes1" ->
    "tux") and to :data:`LABEL_OVERRIDES` for the few that are sentences.
    """
    if stamp_id in LABEL_OVERRIDES:
        return LABEL_OVERRIDES[stamp_id]
    dreidel = re.match(r".*/dreydl(-|$)", stamp_id)
    if dreidel:  # each side's description explains the letter's meaning in the game
        return "dreidel"
    text = description.replace("\u2019", "'").replace("\u2018", "'")
    text = re.split(r"[.!?:;,(\u2014\u2013]|\s-\s", text, maxsplit=1)[0]
    text = re.sub(r"[\u201c\u201d\"]|(?<!\w)'|'(?!\w)", "", text)
    words = text.split()
    while len(words) > 1 and words[0].lower() in _ARTICLES:
        words = words[1:]
    lowered = " ".join(words).lower()
    for quantity in _QUANTITIES:
        if lowered.startswith(quantity + " "):
            words = words[len(quantity.split()) :]
            break
    words = _CLAUSE_BREAK.split(" {} ".format(" ".join(words)), maxsplit=1)[0].split()
    while len(words) > 1 and words[0].lower() in _ADJECTIVES:
        words = words[1:]
    # Acronyms (VW, UK, APC) keep their case; everything else is lower case.
    words = [w if len(w) > 1 and w.isupper() else w.lower() for w in words]
    if not words or len(words) > 5:
        stem = stamp_id.rpartition("/")[2]
        stem = re.sub(r"_mirror$|[\d]+", "", stem)
        first = re.split(r"[-_]", stem)[0] or stamp_id.rpartition("/")[2]
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", first).lower().split()
    return " ".join(words)


class StampLibrary:
    """The stamps under a folder, indexed once (file names and descriptions, no pixels)."""

    def __init__(self, root: str | os.PathLike[str], stamps: Sequence[Stamp]):
        self.root = str(root)
        self.stamps: tuple[Stamp, ...] = tuple(stamps)
        self._by_id = {s.id: s for s in self.stamps}

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> StampLibrary:
        """Index ``root`` (default: ``$MAIA_STAMPS_DIR`` or /usr/share/tuxpaint/stamps)."""
        root = Path(root or os.environ.get(STAMPS_ENV) or DEFAULT_STAMPS_DIR)
        hint = f"install them with: {APT_INSTALL} (or set stamps=DIR or {STAMPS_ENV}=DIR to a copy)"
        if not root.is_dir():
            raise UserError(
                f"The scenes dataset needs Tux Paint's photo stamps, not found at {root}: {hint}."
            )
        stamps = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                if not filename.endswith(".png"):
                    continue
                path = Path(dirpath) / filename
                stamp_id = path.relative_to(root).with_suffix("").as_posix()
                description = _read_description(path)
                stamps.append(
                    Stamp(
                        id=stamp_id,
                        path=str(path),
                        label=label_from(description, stamp_id),
                        description=description,
                        file_size=path.stat().st_size,
                    )
                )
        if not stamps:
            raise UserError(f"No .png stamps under {root}: {hint}.")
        stamps.sort(key=lambda s: s.id)
        return cls(root, stamps)

    def __len__(self) -> int:
        return len(self.stamps)

    def __getitem__(self, stamp_id: str) -> Stamp:
        try:
            return self._by_id[stamp_id]
        except KeyError:
            raise UserError(
                f"No stamp {stamp_id!r} under {self.root}. Stamp ids are paths without .png, "
                "e.g. animals/mammals/equines/zebra."
            ) from None

    def __contains__(self, stamp_id: object) -> bool:
        return stamp_id in self._by_id

    def top_categories(self) -> list[str]:
        return sorted({s.id.split("/")[0] for s in self.stamps if "/" in s.id})

    def select(self, categories: Iterable[str] | None, exclude: Iterable[str] = ()) -> list[Stamp]:
        """Stamps under any of ``categories`` (all if None) and under none of ``exclude``.

        A term is a folder path or stamp id (``animals``, ``food/fruit``,
        ``animals/mammals/equines/zebra``) or a glob over stamp ids (``*/cartoon/*``).
        """
        chosen = list(self.stamps)
        if categories is not None:
            terms = list(categories)
            for term in terms:
                if not any(_matches(s.id, term) for s in chosen):
                    raise UserError(
                        f"No scenes stamps match category {term!r}. Categories are folders under "
                        f"{self.root}: {', '.join(self.top_categories())} (or nested, like "
                        "animals/mammals), or stamp ids."
                    )
            chosen = [s for s in chosen if any(_matches(s.id, t) for t in terms)]
        excluded = list(exclude)
        return [s for s in chosen if not any(_matches(s.id, t) for t in excluded)]

    def find(self, text: str) -> list[Stamp]:
        """Stamps whose label is ``text``, else whose label or description contains it."""
        text = text.strip().lower()
        exact = [s for s in self.stamps if s.label.lower() == text]
        if exact:
            return exact
        word = re.compile(rf"\b{re.escape(text)}\b")
        return [
            s for s in self.stamps if word.search(s.label.lower() + " " + s.description.lower())
        ]


def _matches(stamp_id: str, term: str) -> bool:
    term = term.strip().strip("/")
    if any(c in term for c in "*?["):
        return fnmatch.fnmatchcase(stamp_id, term) or fnmatch.fnmatchcase(stamp_id, term + "/*")
    return stamp_id == term or stamp_id.startswith(term + "/")


def _read_description(png: Path) -> str:
    """The English first line of the stamp's .txt; mirrored stamps share their original's."""
    for txt in (png.with_suffix(".txt"), png.with_name(png.stem.removesuffix("_mirror") + ".txt")):
        try:
            with open(txt, encoding="utf-8", errors="replace") as f:
                return f.readline().strip()
        except OSError:
            continue
    return ""


# ---------------------------------------------------------------------------------------
# Backgrounds


@dataclass(frozen=True)
class BackgroundSource:
    """A background image that ships inside a Python package (or a plain colour)."""

    name: str
    kind: str  # "texture", "photo" or "plain"
    package: str = ""
    relpath: str = ""
    # Things in the photo a classifier may see; recorded so ground truth can account for them.
    contains: tuple[str, ...] = ()

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            extra = "photos"
            raise UserError(
                f"The scenes background {self.name!r} ships with {self.package}, which is not "
                f"installed: pip install 'maia[{extra}]', or pick others with backgrounds=..."
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not path.is_file():
            raise UserError(
                f"The scenes background {self.name!r} is missing from {self.package} ({path}); "
                "pick others with backgrounds=..."
            )
        return path


BACKGROUNDS: dict[str, BackgroundSource] = {
    b.name: b
    for b in [
        BackgroundSource("brick", "texture", "skimage", "data/brick.png"),
        BackgroundSource("grass", "texture", "skimage", "data/grass.png"),
        BackgroundSource("gravel", "texture", "skimage", "data/gravel.png"),
        BackgroundSource("china", "photo", "sklearn", "datasets/images/china.jpg", ("pagoda",)),
        BackgroundSource("hubble", "photo", "skimage", "data/hubble_deep_field.jpg"),
        BackgroundSource("flower", "photo", "sklearn", "datasets/images/flower.jpg", ("flower",)),
        BackgroundSource(
            "astronaut", "photo", "skimage", "data/astronaut.png", ("person", "space shuttle")
        ),
        BackgroundSource("chelsea", "photo", "skimage", "data/chelsea.png", ("cat",)),
        BackgroundSource("coffee", "photo", "skimage", "data/coffee.png", ("coffee cup",)),
        BackgroundSource("rocket", "photo", "skimage", "data/rocket.jpg", ("rocket",)),
        BackgroundSource(
            "motorcycle", "photo", "skimage", "data/motorcycle_left.png", ("motorcycle",)
        ),
        BackgroundSource(
            "grace_hopper",
            "photo",
            "matplotlib",
            "mpl-data/sample_data/grace_hopper.jpg",
            ("person", "flag"),
        ),
        BackgroundSource("plain", "plain"),
    ]
}
BACKGROUND_GROUPS = {
    "textures": ("brick", "grass", "gravel"),
    # Photos without a dominant object, so they do not compete with the stamps.
    "scenery": ("china", "hubble"),
    # Every photo, including those of a cat, people, a cup, a rocket, a motorcycle, a flower:
    # opt in, since a unit that fires on cats would find Chelsea rather than the cat stamps.
    "photos": tuple(n for n, b in BACKGROUNDS.items() if b.kind == "photo"),
    "plain": ("plain",),
    "all": tuple(BACKGROUNDS),
}

_SOURCE_CACHE: dict[str, Image.Image] = {}
_SOURCE_LOCK = threading.Lock()


def _background_source(name: str) -> Image.Image:
    with _SOURCE_LOCK:
        if name not in _SOURCE_CACHE:
            with Image.open(BACKGROUNDS[name].path()) as im:
                im.load()
                _SOURCE_CACHE[name] = im.convert("L" if im.mode in ("L", "I", "I;16") else "RGB")
        return _SOURCE_CACHE[name]


# ---------------------------------------------------------------------------------------
# Scene specifications


@dataclass(frozen=True)
class Background:
    """A background: a square crop of a source image (or a plain colour).

    ``crop = (left, top, side)``: the square's side as a fraction of the source's shorter
    side, and its position as fractions of the free room on each axis (0 = left/top edge,
    1 = right/bottom edge). ``color`` is the plain colour, or the tint of a grey texture.
    """

    name: str
    crop: tuple[float, float, float] = (0.5, 0.5, 1.0)
    flip: bool = False
    color: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "crop": list(self.crop),
            "flip": self.flip,
            "color": list(self.color) if self.color is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Background:
        color = d.get("color")
        return cls(
            name=d["name"],
            crop=tuple(d.get("crop", (0.5, 0.5, 1.0))),
            flip=bool(d.get("flip", False)),
            color=tuple(int(c) for c in color) if color is not None else None,
        )


@dataclass(frozen=True)
class Placement:
    """One object: stamp ``stamp`` centred at ``(x, y)`` (fractions of the image side), its
    longest side ``scale`` times the image side, mirrored if ``flip``; recoloured to the RGB
    ``color`` (see :func:`recolor`) if given."""

    stamp: str
    x: float = 0.5
    y: float = 0.5
    scale: float = 0.6
    flip: bool = False
    color: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "stamp": self.stamp,
            "x": self.x,
            "y": self.y,
            "scale": self.scale,
            "flip": self.flip,
        }
        # Only when set, so specs and annotations of uncoloured scenes are as they were.
        if self.color is not None:
            d["color"] = list(self.color)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Placement:
        color = d.get("color")
        return cls(
            stamp=d["stamp"],
            x=float(d.get("x", 0.5)),
            y=float(d.get("y", 0.5)),
            scale=float(d.get("scale", 0.6)),
            flip=bool(d.get("flip", False)),
            color=tuple(int(c) for c in color) if color is not None else None,
        )


@dataclass(frozen=True)
class SceneSpec:
    """What to draw: a background and objects, painted back to front. JSON-able via
    :meth:`to_dict`, so a scene can be written down, edited and drawn again."""

    background: Background
    objects: tuple[Placement, ...] = ()
    # Whole-image effects (greyscale, blur, noise, rotation, a corner patch, a watermark),
    # drawn after the objects in a fixed order; see scene_effects.
    effects: tuple[Effect, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "background": self.background.to_dict(),
            "objects": [o.to_dict() for o in self.objects],
        }
        # Only when set, so specs of scenes without effects are as they were.
        if self.effects:
            d["effects"] = [e.to_dict() for e in self.effects]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneSpec:
        return cls(
            background=Background.from_dict(d["background"]),
            objects=tuple(Placement.from_dict(o) for o in d.get("objects", ())),
            effects=tuple(Effect.from_dict(e) for e in d.get("effects", ())),
        )


@dataclass
class RenderedScene:
    """A drawn scene: the RGB image, the spec it came from, and its ground truth."""

    image: Image.Image
    spec: SceneSpec
    annotation: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Rendering

# How far the parts of a recoloured object brighter than its median go towards white: some
# highlight survives, so shading reads as shading rather than as a flat fill.
_HIGHLIGHT = 0.7


def recolor(image: Image.Image, color: Sequence[int]) -> Image.Image:
    """``image`` (RGBA) in the colour ``color`` (RGB), keeping its shading and its alpha.

    The object's median luminance takes the colour itself; darker pixels the colour
    darkened in proportion, brighter ones the colour moved towards white. So a white cow
    turns a shaded red, and a zebra's stripes dark and light red.
    """
    arr = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    lum = arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    solid = arr[..., 3] >= _MASK_ALPHA / 255.0
    ref = float(np.median(lum[solid])) if solid.any() else 0.5
    ref = min(max(ref, 0.02), 0.98)
    target = np.asarray(color, dtype=np.float32)[:3] / 255.0
    darker = target * np.minimum(lum / ref, 1.0)[..., None]
    toward_white = np.clip((lum - ref) / (1.0 - ref), 0.0, 1.0)[..., None] * _HIGHLIGHT
    rgb = np.where((lum <= ref)[..., None], darker, target + (1.0 - target) * toward_white)
    out = np.concatenate([rgb, arr[..., 3:4]], axis=-1)
    return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), "RGBA")


class SceneRenderer:
    """Draws :class:`SceneSpec` s. Keeps decoded stamps in a bounded LRU cache."""

    def __init__(self, library: StampLibrary, cache_mb: float = 64):
        self.library = library
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[tuple[str, int], Image.Image] = OrderedDict()
        self._cached_bytes = 0
        self._native: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Caches and locks stay behind: each process fills its own.
        return {"library": self.library, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["library"], cache_mb=state["cache_bytes"] / 2**20)

    def _decode(self, stamp_id: str) -> Image.Image:
        stamp = self.library[stamp_id]
        try:
            with Image.open(stamp.path) as im:
                im.load()
                rgba = im.convert("RGBA")
        except OSError as exc:
            raise OSError(f"cannot read stamp {stamp.path}: {exc}") from exc
        # Some stamps carry transparent margins; scale and position refer to what is visible.
        bbox = rgba.getchannel("A").getbbox()
        return rgba.crop(bbox) if bbox else rgba

    def stamp_size(self, stamp_id: str, max_side: int = 256) -> tuple[int, int]:
        """The stamp's visible extent (width, height) in its own pixels.

        ``max_side`` only says which cached copy to fill if the stamp is not decoded yet.
        """
        with self._lock:
            if stamp_id in self._native:
                return self._native[stamp_id]
        self.stamp_image(stamp_id, max_side)
        return self._native[stamp_id]

    def stamp_image(self, stamp_id: str, max_side: int) -> Image.Image:
        """The stamp as RGBA, cropped to its visible part, longest side at most ``max_side``."""
        key = (stamp_id, max_side)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        im = self._decode(stamp_id)
        native = im.size
        if max(native) > max_side:
            ratio = max_side / max(native)
            im = im.resize(
                (max(1, round(native[0] * ratio)), max(1, round(native[1] * ratio))),
                Image.LANCZOS,
            )
        nbytes = im.width * im.height * 4
        with self._lock:
            self._native[stamp_id] = native
            if key not in self._cache:
                self._cache[key] = im
                self._cached_bytes += nbytes
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.width * old.height * 4
        return im

    def object_size(self, placement: Placement, size: int) -> tuple[int, int]:
        """The pixel (width, height) ``placement`` has in a ``size`` image."""
        w, h = self.stamp_size(placement.stamp, size)
        longest = max(1, round(placement.scale * size))
        if w >= h:
            return longest, max(1, round(longest * h / w))
        return max(1, round(longest * w / h)), longest

    def object_image(self, placement: Placement, w: int, h: int, size: int) -> Image.Image:
        """The RGBA image ``placement`` pastes: its stamp at ``w`` x ``h``, mirrored and
        recoloured as it says. A hook: subclasses may cache it (the renderer does not)."""
        stamp = self.stamp_image(placement.stamp, max(size, w, h))
        resample = Image.LANCZOS if stamp.width >= w else Image.BICUBIC
        im = stamp.resize((w, h), resample) if stamp.size != (w, h) else stamp
        if placement.flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if placement.color is not None:
            im = recolor(im, placement.color)
        return im

    def background(self, bg: Background, size: int) -> np.ndarray:
        """The background as a ``size`` x ``size`` x 3 uint8 array."""
        if bg.name not in BACKGROUNDS:
            raise UserError(
                f"Unknown scenes background {bg.name!r}. Known: {', '.join(BACKGROUNDS)}."
            )
        if BACKGROUNDS[bg.name].kind == "plain":
            color = np.array(bg.color or (128, 128, 128), dtype=np.uint8)
            return np.broadcast_to(color, (size, size, 3)).copy()
        src = _background_source(bg.name)
        left, top, side = bg.crop
        side_px = max(1.0, min(1.0, side) * min(src.size))
        x0 = left * (src.width - side_px)
        y0 = top * (src.height - side_px)
        im = src.resize(
            (size, size),
            Image.BICUBIC,
            box=(x0, y0, x0 + side_px, y0 + side_px),
            reducing_gap=2.0,
        )
        if bg.flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(im)
        if arr.ndim == 2:  # grey textures take a tint
            tint = np.array(bg.color or (255, 255, 255), dtype=np.float32) / 255.0
            arr = np.rint(arr[..., None].astype(np.float32) * tint).astype(np.uint8)
        return arr

    def render(self, spec: SceneSpec, size: int, *, masks: bool = True) -> RenderedScene:
        """Draw ``spec`` at ``size`` x ``size``; with ``masks``, also its ground truth.

        Objects are alpha-composited back to front. An object's mask is where its alpha is at
        least one half, minus what later objects cover.
        """
        canvas = self.background(spec.background, size).astype(np.float32)
        full_masks: list[np.ndarray | None] = []
        boxes: list[tuple[int, int, int, int]] = []
        for placement in spec.objects:
            w, h = self.object_size(placement, size)
            im = self.object_image(placement, w, h, size)
            x0 = round(placement.x * size - w / 2)
            y0 = round(placement.y * size - h / 2)
            # The part of the object inside the image, in image and in object coordinates.
            ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
            boxes.append((ix0, iy0, ix1, iy1))
            mask = np.zeros((size, size), dtype=bool) if masks else None
            if ix0 < ix1 and iy0 < iy1:
                rgba = np.asarray(im)[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
                alpha = rgba[..., 3:4].astype(np.float32) / 255.0
                region = canvas[iy0:iy1, ix0:ix1]
                canvas[iy0:iy1, ix0:ix1] = region * (1.0 - alpha) + rgba[..., :3] * alpha
                if masks:
                    mask[iy0:iy1, ix0:ix1] = rgba[..., 3] >= _MASK_ALPHA
            full_masks.append(mask)
        image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
        if spec.effects:
            image = scene_effects.apply(image, spec.effects)
        scene = RenderedScene(image=image, spec=spec)
        if masks:
            scene.annotation = self._annotate(spec, size, full_masks, boxes)
        return scene

    def _annotate(
        self,
        spec: SceneSpec,
        size: int,
        full_masks: list[np.ndarray],
        boxes: list[tuple[int, int, int, int]],
    ) -> dict[str, Any]:
        source = BACKGROUNDS.get(spec.background.name)
        objects = []
        covered = np.zeros((size, size), dtype=bool)
        # Walk front to back so each object's visible part is its mask minus those in front.
        effects = scene_effects.ordered(spec.effects)
        for placement, full, box in reversed(list(zip(spec.objects, full_masks, boxes))):
            visible = full & ~covered
            covered |= full
            if effects:  # where a rotation moves the object, and what a patch covers
                visible = scene_effects.apply_to_mask(visible, effects)
                box = scene_effects.transform_box(box, effects, size, size)
            stamp = self.library[placement.stamp]
            area, full_area = int(visible.sum()), int(full.sum())
            ys, xs = np.nonzero(visible.any(axis=1))[0], np.nonzero(visible.any(axis=0))[0]
            bbox = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1] if area else None
            objects.append(
                {
                    "stamp": stamp.id,
                    "label": stamp.label,
                    "description": stamp.description,
                    "category": stamp.category,
                    **placement.to_dict(),
                    "bbox": bbox,
                    "extent": list(box),
                    "area": area,
                    "visible": area / full_area if full_area else 0.0,
                    "mask": visible,
                }
            )
        objects.reverse()
        annotation = {
            "size": size,
            "background": {
                **spec.background.to_dict(),
                "kind": source.kind if source else None,
                "contains": list(source.contains) if source else [],
            },
            "objects": objects,
            "labels": sorted({o["label"] for o in objects}),
        }
        if effects:
            annotation["effects"] = [e.to_dict() for e in effects]
        return annotation


# ---------------------------------------------------------------------------------------
# The dataset


def background_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """Background names and groups (``textures,scenery,plain``) -> background names."""
    names: list[str] = []
    for term in _as_terms(value):
        group = BACKGROUND_GROUPS.get(term, (term,) if term in BACKGROUNDS else None)
        if group is None:
            raise UserError(
                f"Unknown scenes background {term!r}. Known: "
                f"{', '.join([*BACKGROUND_GROUPS, *BACKGROUNDS])}."
            )
        names += [g for g in group if g not in names]
    if not names:
        raise UserError("Option backgrounds= names no background; e.g. backgrounds=textures,plain.")
    return tuple(names)


def _parse_range(value: Any, name: str, parse, example: str) -> tuple[Any, Any]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = parse(value[0], name), parse(value[1], name)
    else:
        text = str(value).strip()
        # Split on the dash between two numbers, not a leading minus sign.
        m = re.fullmatch(r"\s*([^-\s][^-]*?)\s*-\s*(.+?)\s*", text)
        lo, hi = (parse(m[1], name), parse(m[2], name)) if m else (parse(text, name),) * 2
    if lo > hi:
        raise UserError(
            f"Option {name}={value!r} is an empty range; write it low-high, e.g. {example}."
        )
    return lo, hi


def _as_terms(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [t.strip().strip("/") for t in items if str(t).strip()]


class ScenesDataset(Dataset):
    """``n`` scenes of ``size`` px, item ``i`` drawn from a generator seeded by ``(seed, i)``.

    ``image(i)`` is ``render(spec(i)).image``; ``annotation(i)`` its ground truth (see the
    README's "The scenes dataset" for the format).
    """

    def __init__(
        self,
        n: int | str = DEFAULTS["n"],
        size: int | str = DEFAULTS["size"],
        seed: int | str = DEFAULTS["seed"],
        categories: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] = (),
        objects: str | tuple[int, int] = DEFAULTS["objects"],
        scale: str | tuple[float, float] = DEFAULTS["scale"],
        backgrounds: str | Sequence[str] = DEFAULTS["backgrounds"],
        stamps: str | os.PathLike[str] | None = None,
    ):
        self.n = as_int(n, "n")
        self.size = as_int(size, "size")
        self.seed = as_int(seed, "seed")
        if self.n < 1:
            raise UserError(f"Option n={n!r} must be at least 1.")
        if not 16 <= self.size <= 4096:
            raise UserError(f"Option size={size!r} must be between 16 and 4096 pixels.")
        self.objects = _parse_range(objects, "objects", as_int, "objects=1-3")
        if self.objects[0] < 0 or self.objects[1] > 20:
            raise UserError(f"Option objects={objects!r} must lie within 0-20.")
        self.scale = _parse_range(scale, "scale", as_float, "scale=0.4-0.9")
        if not 0.01 <= self.scale[0] <= self.scale[1] <= 1.5:
            raise UserError(f"Option scale={scale!r} must lie within 0.01-1.5 (of the image side).")
        self.backgrounds = background_names(backgrounds)
        for name in self.backgrounds:
            if BACKGROUNDS[name].kind != "plain":
                BACKGROUNDS[name].path()  # fail here, with the fix, rather than in a worker

        self.library = StampLibrary.open(stamps)
        # Kept for the canonical spec, which must name the same world when resolved again.
        self.stamps_option = str(stamps) if stamps else None
        if categories is None:
            terms = [
                c for c in self.library.top_categories() if c not in DEFAULT_EXCLUDED_CATEGORIES
            ]
        elif _as_terms(categories) == ["all"]:
            terms = None
        else:
            terms = _as_terms(categories)
        self.categories = terms
        self.exclude = _as_terms(exclude)
        chosen = self.library.select(terms, self.exclude)
        if not chosen and self.objects[1] > 0:
            raise UserError(
                "The scenes options leave no stamps to draw; loosen categories= or exclude=."
            )
        self.stamp_ids = tuple(s.id for s in chosen)
        self.renderer = SceneRenderer(self.library)
        self.name = self.canonical_spec()

    # -- the Dataset interface ----------------------------------------------------------

    def __len__(self) -> int:
        return self.n

    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.n:
            raise IndexError(f"scenes item {index} out of range 0..{self.n - 1}")
        return index

    def item_id(self, index: int) -> str:
        return f"{self._check(index):06d}"

    def image(self, index: int) -> Image.Image:
        return self.renderer.render(self.spec(index), self.size, masks=False).image

    def annotation(self, index: int) -> dict[str, Any]:
        return self.scene(index).annotation

    def scene(self, index: int) -> RenderedScene:
        """Item ``index`` drawn, with its image and ground truth together."""
        return self.renderer.render(self.spec(index), self.size)

    def render(self, spec: SceneSpec | dict[str, Any], size: int | None = None) -> RenderedScene:
        """Draw any scene in this world, e.g. one written by hand or edited from ``spec(i)``."""
        if isinstance(spec, dict):
            spec = SceneSpec.from_dict(spec)
        return self.renderer.render(spec, size or self.size)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self._params(), sort_keys=True).encode())
        for stamp_id in self.stamp_ids:
            stamp = self.library[stamp_id]
            h.update(
                f"{stamp.id}\0{stamp.file_size}\0{stamp.description}\0{stamp.label}\n".encode()
            )
        for name in self.backgrounds:
            if BACKGROUNDS[name].kind != "plain":
                h.update(f"{name}\0{BACKGROUNDS[name].path().stat().st_size}\n".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "params": self._params(),
            "stamps": len(self.stamp_ids),
            "stamps_dir": self.library.root,
        }

    def _params(self) -> dict[str, Any]:
        return {
            "world_version": WORLD_VERSION,
            "n": self.n,
            "size": self.size,
            "seed": self.seed,
            "categories": self.categories,
            "exclude": self.exclude,
            "objects": list(self.objects),
            "scale": list(self.scale),
            "backgrounds": list(self.backgrounds),
        }

    def canonical_spec(self) -> str:
        """The options that differ from the defaults, as a ``--dataset`` spec."""
        parts = []
        for key in ("n", "size", "seed"):
            if getattr(self, key) != DEFAULTS[key]:
                parts.append(f"{key}={getattr(self, key)}")
        for key, fmt in (("objects", "{}-{}"), ("scale", "{:g}-{:g}")):
            if tuple(getattr(self, key)) != DEFAULTS[key]:
                parts.append(f"{key}={fmt.format(*getattr(self, key))}")
        if self.backgrounds != background_names(DEFAULTS["backgrounds"]):
            parts.append("backgrounds=" + ",".join(self.backgrounds))
        if self.categories is None:
            parts.append("categories=all")
        elif set(self.categories) != set(self.library.top_categories()) - set(
            DEFAULT_EXCLUDED_CATEGORIES
        ):
            parts.append("categories=" + ",".join(self.categories))
        if self.exclude:
            parts.append("exclude=" + ",".join(self.exclude))
        if self.stamps_option:
            parts.append(f"stamps={self.stamps_option}")
        return "scenes" + (":" + ",".join(parts) if parts else "")

    # -- sampling ------------------------------------------------------------------------

    def spec(self, index: int) -> SceneSpec:
        """The scene of item ``index``: a pure function of (seed, size, options, index)."""
        index = self._check(index)
        # random.Random seeded with a str is stable across platforms and Python versions;
        # only .random() is used, so no method whose algorithm might change is involved.
        rng = random.Random(f"maia-scenes/{WORLD_VERSION}/{self.seed}/{index}")
        background = self._sample_background(rng)
        lo, hi = self.objects
        count = lo + min(int(rng.random() * (hi - lo + 1)), hi - lo) if self.stamp_ids else 0
        # A scene has a subject, drawn at `scale`, and smaller companions: like a photo, and
        # like ImageNet, whose classes are mostly the subject of their images.
        drafts = []
        subject_scale = 0.0
        for j in range(count):
            stamp_id = self.stamp_ids[int(rng.random() * len(self.stamp_ids))]
            u = rng.random()
            if j == 0:
                scale = subject_scale = self.scale[0] + u * (self.scale[1] - self.scale[0])
            else:
                lo_c, hi_c = _COMPANION_SCALE
                scale = subject_scale * (lo_c + u * (hi_c - lo_c))
            # Blowing a 50 px fruit up to 250 px gives mush; cap the magnification.
            native = max(self.renderer.stamp_size(stamp_id, self.size))
            scale = min(scale, _MAX_UPSCALE * native / self.size)
            keep = _SUBJECT_VISIBLE if j == 0 else _MIN_VISIBLE
            drafts.append((stamp_id, scale, rng.random() < 0.5, keep))
        # Large objects go behind small ones, as in a photo where near things are in front.
        drafts.sort(key=lambda d: -d[1])
        placed: list[Placement] = []
        boxes: list[tuple[float, float, float, float]] = []
        keeps: list[float] = []
        for stamp_id, scale, flip, keep in drafts:
            w, h = self.renderer.object_size(Placement(stamp_id, scale=scale), self.size)
            w, h = w / self.size, h / self.size
            for _ in range(_PLACEMENT_TRIES):
                x = self._coordinate(rng.random(), w)
                y = self._coordinate(rng.random(), h)
                box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
                if all(
                    _uncovered(b, [*boxes[k + 1 :], box]) >= keeps[k] for k, b in enumerate(boxes)
                ):
                    placed.append(
                        Placement(stamp_id, round(x, 6), round(y, 6), round(scale, 6), flip)
                    )
                    boxes.append(box)
                    keeps.append(keep)
                    break
        return SceneSpec(background=background, objects=tuple(placed))

    @staticmethod
    def _coordinate(u: float, extent: float) -> float:
        # The centre keeps the object at most _MAX_OUTSIDE out of the image on each side.
        margin = extent * (0.5 - _MAX_OUTSIDE)
        if margin >= 0.5:
            return 0.5
        return margin + u * (1.0 - 2 * margin)

    def _sample_background(self, rng: random.Random) -> Background:
        name = self.backgrounds[int(rng.random() * len(self.backgrounds))]
        side = 0.5 + 0.5 * rng.random()
        crop = (round(rng.random(), 6), round(rng.random(), 6), round(side, 6))
        flip = rng.random() < 0.5
        rgb = tuple(int(rng.random() * 256) for _ in range(3))
        kind = BACKGROUNDS[name].kind
        if kind == "plain":
            return Background(name, color=rgb)
        if kind == "texture":
            # A muted tint: half white, half a random colour.
            return Background(name, crop, flip, tuple(128 + c // 2 for c in rgb))
        return Background(name, crop, flip)


def _uncovered(box: tuple[float, ...], covers: list[tuple[float, ...]], grid: int = 32) -> float:
    """The fraction of ``box`` (clipped to the unit square) outside every box in ``covers``."""
    x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], 1.0), min(box[3], 1.0)
    if x0 >= x1 or y0 >= y1:
        return 0.0
    xs = x0 + (np.arange(grid) + 0.5) * (x1 - x0) / grid
    ys = y0 + (np.arange(grid) + 0.5) * (y1 - y0) / grid
    gx, gy = np.meshgrid(xs, ys)
    hidden = np.zeros_like(gx, dtype=bool)
    for c in covers:
        hidden |= (gx >= c[0]) & (gx < c[2]) & (gy >= c[1]) & (gy < c[3])
    return 1.0 - float(hidden.mean())


__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_GROUPS",
    "Background",
    "Placement",
    "RenderedScene",
    "SceneRenderer",
    "SceneSpec",
    "ScenesDataset",
    "Stamp",
    "StampLibrary",
    "label_from",
    "make_scenes",
    "parse_spec_options",
    "recolor",
]
