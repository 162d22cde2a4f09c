"""The ``offline`` detector's vocabulary: ImageNet classes, groups of them, colours and grass.

No torch here: ``maia synthetic vocabulary`` lists it without loading a model. The class names
are torchvision's short ImageNet-1k names, lower-cased.

Groups are curated lists of ImageNet-1k class indices (WordNet, which would give them by
hypernym, is not available offline). Each is the standard contiguous block of the 1000-class
list where there is one (the 118 dog breeds are 151-268, the birds 7-24, 80-100 and 127-146)
and a hand-picked list otherwise; the names are checked against the class list when the
detector loads. A name that is both a class and a group (``mushroom``) means the group.

``orange`` is the colour; the fruit is ``orange fruit``. ``cardigan`` is the sweater; the dog
is ``cardigan corgi``.
"""

from __future__ import annotations


def _span(lo: int, hi: int) -> list[int]:
    return list(range(lo, hi + 1))


# Group name -> ImageNet-1k class indices.
GROUPS: dict[str, list[int]] = {
    "fish": [*_span(0, 6), *_span(389, 397)],
    "bird": [*_span(7, 24), *_span(80, 100), *_span(127, 146)],
    "chicken": [7, 8],
    "duck": [97, 98],
    "parrot": _span(87, 90),
    "penguin": [145],
    "owl": [24],
    "eagle": [22],
    "salamander": _span(25, 29),
    "frog": _span(30, 32),
    "turtle": _span(33, 37),
    "lizard": _span(38, 48),
    "crocodile": [49, 50],
    "snake": _span(52, 68),
    "spider": _span(72, 77),
    "crab": [*_span(118, 121), 125],
    "lobster": _span(122, 124),
    "whale": [147, 148],
    "dog": _span(151, 268),
    "wolf": _span(269, 271),
    "fox": _span(277, 280),
    "cat": _span(281, 285),
    "big cat": _span(286, 293),
    "bear": _span(294, 297),
    "insect": _span(300, 326),
    "beetle": _span(300, 307),
    "butterfly": _span(321, 326),
    "rabbit": _span(330, 332),
    "squirrel": [335],
    "horse": [339],
    "pig": _span(341, 343),
    "cow": [345, 346],
    "cattle": _span(345, 347),
    "sheep": [348, 349],
    "antelope": _span(350, 353),
    "camel": [354],
    "monkey": _span(365, 384),
    "ape": _span(365, 369),
    "elephant": [101, 385, 386],
    "panda": [387, 388],
    "apple": [948],
    "orange fruit": [950],
    "fruit": _span(948, 957),
    "vegetable": _span(936, 945),
    "pepper": [945],
    "mushroom": [947, *_span(991, 997)],
    "flower": [985, 986],
    "car": [407, 436, 468, 511, 609, 627, 656, 661, 717, 734, 751, 817],
    "truck": [555, 569, 675, 717, 864, 867],
    "bus": [654, 779, 874],
    "train": [466, 547, 565, 705, 820, 829],
    "boat": [403, 472, 484, 510, 554, 576, 625, 628, 694, 724, 780, 814, 833, 871, 914],
    "airplane": [404, 895],
    "aircraft": [404, 405, 895],
    "bicycle": [444, 671],
    "guitar": [402, 546],
    "musical instrument": [
        401,
        402,
        420,
        432,
        486,
        494,
        513,
        541,
        546,
        558,
        566,
        577,
        579,
        593,
        594,
        641,
        642,
        683,
        684,
        687,
        699,
        776,
        822,
        875,
        881,
        889,
    ],
    "ball": [429, 430, 522, 574, 722, 768, 805, 852, 890],
    "hat": [433, 439, 452, 515, 667, 793, 808],
    "helmet": [518, 560, 715],
    "shoe": [502, 514, 630, 770, 774],
    "bottle": [440, 720, 737, 898, 907],
    "clock": [409, 530, 892],
    "chair": [423, 559, 765, 857],
    "cup": [504, 968],
    "camera": [732, 759],
    "teddy bear": [850],
    "toilet": [861],
}

# Colour name -> what it is in HSV (see plugins/detectors/offline.py for the rules).
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
TEXTURES = ("grass",)

# Lower-cased class names that two classes share, and what each one is called instead.
RENAMED_CLASSES = {264: "cardigan corgi"}


def _torchvision_categories() -> list[str]:
    """torchvision's ImageNet-1k names, read from its source without importing it (importing
    torchvision.models takes seconds; ``maia synthetic vocabulary`` should not)."""
    import ast
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("torchvision")
        source = Path(list(spec.submodule_search_locations)[0], "models", "_meta.py").read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "_IMAGENET_CATEGORIES" for t in node.targets
            ):
                names = ast.literal_eval(node.value)
                if len(names) == 1000:
                    return list(names)
    except (AttributeError, ImportError, OSError, SyntaxError, TypeError, ValueError):
        pass
    from maia_core.torch_runtime.target import imagenet_class_names

    return imagenet_class_names()


def class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, lower-cased and made unique (index -> name)."""
    names = [n.lower() for n in _torchvision_categories()]
    for index, name in RENAMED_CLASSES.items():
        names[index] = name
    return names


def concept_table() -> dict[str, tuple[str, list[int]]]:
    """Every concept -> (kind, ImageNet indices): kind ``class``, ``group``, ``color`` or
    ``texture`` (the last two have no indices). Groups and colours win over class names."""
    table: dict[str, tuple[str, list[int]]] = {}
    for index, name in enumerate(class_names()):
        table[name] = ("class", [index])
    for name, indices in GROUPS.items():
        table[name] = ("group", list(indices))
    for name in COLORS:
        table[name] = ("color", [])
    for name in TEXTURES:
        table[name] = ("texture", [])
    return table


def vocabulary() -> list[str]:
    return sorted(concept_table())


def describe() -> str:
    """The vocabulary for people: colours, texture, groups (with their classes), classes."""
    names = class_names()
    groups = "\n".join(
        f"  {name}: {', '.join(names[i] for i in indices)}"
        for name, indices in sorted(GROUPS.items())
    )
    shadowed = sorted(set(names) & (set(GROUPS) | set(COLORS)))
    return "\n".join(
        [
            "The offline detector's concepts.",
            f"Colours (share of the image of that colour): {', '.join(COLORS)}",
            f"Textures: {', '.join(TEXTURES)} (green texture)",
            f"Groups of ImageNet classes (summed probability), {len(GROUPS)}:",
            groups,
            f"ImageNet classes (softmax probability), {len(names)}"
            + (f"; {', '.join(shadowed)} mean(s) the group or colour above" if shadowed else "")
            + ":",
            "  " + ", ".join(sorted(names)),
        ]
    )
