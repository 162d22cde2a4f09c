"""Words for whole-image effects in scenes prompts and edit instructions.

``text2image``: "a blurry zebra", "a noisy photo of a dog", "a zebra in black and white", "an
upside down zebra", "a zebra rotated 90 degrees", "a zebra with a red patch in the top left
corner", "a zebra with a watermark"; "sharp", "in colour", "upright" and "without a watermark"
ask for the default and are taken silently.

``edit_images``: "blur the image", "make the image blurry / noisy / sharp", "add noise",
"rotate the image (by 90 degrees)", "turn the image upside down", "add a blue patch in the
bottom right corner", "add a watermark", "remove the blur / noise / patch / watermark /
rotation", "make the image colourful again" (and "make the image black and white", which the
language already parses).

Text arrives tokenized (lower case, "colour" spelled "color", words separated by one space).
"""

from __future__ import annotations

import re

from maia_plugins.datasets.scene_effects import CORNERS, Effect

_SCOPE = r"(?:the\s+)?(?:whole\s+|entire\s+)?(?:image|picture|photo|scene|everything|it)"
_CORNER = (
    r"(top left|top right|bottom left|bottom right|upper left|upper right|lower left|lower right)"
)
_NAMES = {
    "grayscale": "grayscale",
    "greyscale": "grayscale",
    "black and white": "grayscale",
    "monochrome": "grayscale",
    "blur": "blur",
    "blurriness": "blur",
    "noise": "noise",
    "grain": "noise",
    "patch": "patch",
    "sticker": "patch",
    "square": "patch",
    "watermark": "watermark",
    "rotation": "rotate",
}

# Prompt phrases: (pattern, kind or None for "the default, taken silently").
_PROMPT_PATTERNS: list[tuple[re.Pattern[str], str | None]] = [
    (
        re.compile(
            r"\b(?:in\s+)?(?:black\s+and\s+white|grayscale|greyscale|monochrome|desaturated|colorless)\b"
        ),
        "grayscale",
    ),
    (
        re.compile(r"\b(?:very\s+)?(?:blurry|blurred|out\s+of\s+focus|unfocused|defocused)\b"),
        "blur",
    ),
    (
        re.compile(
            r"\b(?:very\s+)?(?:noisy|grainy|speckled)\b|\bwith\s+(?:heavy\s+|lots\s+of\s+|some\s+)?noise\b"
        ),
        "noise",
    ),
    (re.compile(r"\b(?:upside\s+down|flipped\s+vertically)\b"), "rotate180"),
    (
        re.compile(r"\b(?:rotated|turned|sideways)(?:\s+(?:by\s+)?(90|180|270)\s+degrees?)?\b"),
        "rotate",
    ),
    (
        re.compile(
            rf"\b(?:with\s+)?(?:a\s+)?(?:(\S+)\s+)?(?:square\s+)?(?:patch|sticker)(?:\s+(?:in|at|on)\s+the\s+{_CORNER}(?:\s+corner)?)?"
        ),
        "patch",
    ),
    (
        re.compile(
            r"\b(?:with\s+)?(?:a\s+)?(?:(\S+)\s+)?watermark(?:ed)?(?:\s+(?:in|at)\s+the\s+(center|middle|bottom))?"
        ),
        "watermark",
    ),
    (
        re.compile(
            r"\b(?:without\s+(?:a\s+|any\s+)?(?:watermark|patch|noise|blur)|no\s+(?:watermark|patch|noise|blur)|noise\s+free|sharp|in\s+focus|in\s+(?:full\s+)?color|full\s+color|upright|clean)\b"
        ),
        None,
    ),
]


def _corner(words: str | None) -> str:
    if not words:
        return "top left"
    words = words.replace("upper", "top").replace("lower", "bottom")
    return words if words in CORNERS else "top left"


def _color(word: str | None) -> tuple[int, int, int] | None:
    from maia_plugins.tools.scene_language import COLORS, color_rgb

    if not word:
        return None
    try:
        return color_rgb(word) if word.split()[-1] in COLORS or word == "grey" else None
    except KeyError:
        return None


def _make(kind: str, match: re.Match[str]) -> Effect | None:
    if kind == "grayscale" or kind == "blur" or kind == "noise":
        return Effect.make(kind)
    if kind == "rotate180":
        return Effect.make("rotate", amount=180.0)
    if kind == "rotate":
        return Effect.make("rotate", amount=float(match[1] or 90))
    if kind == "patch":
        color = _color(match[1])
        effect = Effect.make("patch", where=_corner(match[2]))
        return effect if color is None else Effect.make("patch", where=effect.where, color=color)
    if kind == "watermark":
        where = "center" if match[2] in ("center", "middle") else "bottom"
        color = _color(match[1])
        return Effect.make("watermark", where=where, **({"color": color} if color else {}))
    return None


def extract_effects(text: str) -> tuple[str, list[Effect], list[str]]:
    """The prompt ``text`` (tokenized) without its effect phrases, the effects it asks for,
    and what the effects were called (for notes)."""
    effects: list[Effect] = []
    said: list[str] = []
    for pattern, kind in _PROMPT_PATTERNS:
        while True:
            match = pattern.search(text)
            if match is None:
                break
            if kind is not None:
                if kind in ("patch", "watermark") and match[1] and _color(match[1]) is None:
                    # "a zebra patch": not a colour before it; keep the word for the parser
                    start = match.start(1) + len(match[1])
                    text = text[:start] + text[match.end() :]
                else:
                    text = text[: match.start()] + text[match.end() :]
                effect = _make(kind, match)
                if effect is not None:
                    effects.append(effect)
                    said.append(match[0].strip())
            else:
                text = text[: match.start()] + text[match.end() :]
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\b(?:with|and)\s*$", "", text).strip(" ,")
    return text, effects, said


def parse_effect_edit(clause: str) -> tuple[Effect | None, str | None] | None:
    """An edit clause about a whole-image effect: (effect to add, kind to remove), or None
    when the clause is about something else."""
    m = re.fullmatch(
        r"(?:remove|delete|erase|take away|take out|get rid of|undo|clear)\s+(?:the\s+|any\s+|all\s+)?"
        r"(grayscale|greyscale|black and white|monochrome|blur|blurriness|noise|grain|patch|"
        r"sticker|square patch|watermark|rotation)(?:\s+(?:from|of|in)\s+.+)?",
        clause,
    )
    if m:
        return None, _NAMES[m[1].split()[-1] if m[1] == "square patch" else m[1]]
    m = re.fullmatch(rf"(?:make|turn|render|set)\s+{_SCOPE}\s+(?:into\s+|to\s+|be\s+)?(.+)", clause)
    if m:
        what = m[1]
        if re.fullmatch(r"(?:very\s+|more\s+)?(?:blurry|blurred|out of focus|unfocused)", what):
            return Effect.make("blur"), None
        if re.fullmatch(r"(?:very\s+|more\s+)?(?:noisy|grainy)", what):
            return Effect.make("noise"), None
        if re.fullmatch(r"upside down", what):
            return Effect.make("rotate", amount=180.0), None
        if re.fullmatch(r"(?:sharp|sharper|clear|crisp|in focus)(?: again)?", what):
            return None, "blur"
        if re.fullmatch(r"(?:clean|noise free|smooth)(?: again)?", what):
            return None, "noise"
        if re.fullmatch(r"(?:colorful|in color|in full color|colored)(?: again)?", what):
            return None, "grayscale"
        if re.fullmatch(r"upright(?: again)?", what):
            return None, "rotate"
        return None
    if re.fullmatch(rf"(?:rotate|turn)\s+{_SCOPE}\s+back(?:\s+upright)?", clause):
        return None, "rotate"
    if re.fullmatch(
        rf"(?:blur|defocus)(?:\s+{_SCOPE})?(?:\s+(?:a\s+bit|slightly|heavily))?", clause
    ):
        return Effect.make("blur"), None
    if re.fullmatch(rf"(?:denoise|sharpen|unblur)(?:\s+{_SCOPE})?", clause):
        return None, "noise" if clause.startswith("denoise") else "blur"
    if re.fullmatch(
        rf"(?:add|put|apply)\s+(?:some\s+|heavy\s+|gaussian\s+|random\s+)?(?:noise|grain)(?:\s+(?:to|on)\s+{_SCOPE})?",
        clause,
    ):
        return Effect.make("noise"), None
    m = re.fullmatch(
        rf"(?:rotate|turn|flip)\s+{_SCOPE}(?:\s+(?:by\s+)?(90|180|270)\s+degrees?)?"
        r"(?:\s+(?:clockwise|counterclockwise|anticlockwise|counter clockwise))?(\s+upside down|\s+vertically)?",
        clause,
    )
    if m and (clause.startswith("rotate") or m[2]):
        amount = 180.0 if m[2] else float(m[1] or 90)
        if "clockwise" in clause and "counter" not in clause and "anti" not in clause:
            amount = (360.0 - amount) % 360.0
        return Effect.make("rotate", amount=amount), None
    m = re.fullmatch(
        rf"(?:add|put|place|paste|draw|stick)\s+(?:a\s+|an\s+)?(?:(\S+)\s+)?(?:square\s+)?(?:patch|sticker)"
        rf"(?:\s+(?:in|at|on|to|into)\s+(?:the\s+)?{_CORNER}(?:\s+corner)?)?(?:\s+(?:of|to|on)\s+{_SCOPE})?",
        clause,
    )
    if m:
        color = _color(m[1])
        effect = Effect.make("patch", where=_corner(m[2]))
        if color is not None:
            effect = Effect.make("patch", where=effect.where, color=color)
        return effect, None
    m = re.fullmatch(
        rf"(?:add|put|place|stamp|apply)\s+(?:a\s+|an\s+)?(?:(\S+)\s+)?watermark"
        rf"(?:\s+(?:in|at|on|to)\s+(?:the\s+)?(center|middle|bottom))?(?:\s+(?:of|to|on)\s+{_SCOPE})?",
        clause,
    )
    if m:
        color = _color(m[1])
        where = "center" if m[2] in ("center", "middle") else "bottom"
        return Effect.make("watermark", where=where, **({"color": color} if color else {})), None
    return None
