"""Fitting a transcript into a model's context window, and the image-token rules it counts with.

The system prompt, the task and the newest turn always stay. When the estimate is over budget,
the oldest images go first (each replaced by a short note), then the oldest exchanges
(an assistant turn with the result that answered it, so roles keep alternating). The newest
turn then starts with a note telling the agent what was dropped.

Text is estimated at :data:`CHARS_PER_TOKEN` characters a token, then calibrated: after each
call, the provider's own input count over our estimate scales the next estimate.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maia_core.transcript import ImagePart, Message, Part, TextPart

# Conservative for English and code: modern tokenizers average 3 to 4 characters a token.
CHARS_PER_TOKEN = 3.0
# Role markers and message framing.
MESSAGE_OVERHEAD = 8
IMAGE_PLACEHOLDER = "[an image was removed here to fit the context window]"

ImageTokens = Callable[[int, int], int]


# -- the providers' published image-token rules ---------------------------------------------


def anthropic_image_tokens(width: int, height: int, max_edge: int = 1568) -> int:
    """Claude: about width*height/750 tokens, after the API shrinks the image so its long edge
    is at most ``max_edge`` and it costs at most about 1,600 tokens."""
    w, h = float(width), float(height)
    scale = min(1.0, max_edge / max(w, h, 1.0))
    w, h = w * scale, h * scale
    if w * h / 750 > 1600:
        shrink = math.sqrt(1600 * 750 / (w * h))
        w, h = w * shrink, h * shrink
    return max(1, math.ceil(w * h / 750))


def openai_tile_tokens(width: int, height: int, detail: str = "high") -> int:
    """GPT-4o and the o-series: 85 tokens, plus 170 per 512-px tile after the image is fit in a
    2048-px square and its short side shrunk to 768 px. ``detail="low"`` costs 85 flat."""
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    scale = min(1.0, 2048 / max(w, h, 1.0))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / max(min(w, h), 1.0))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def openai_patch_tokens(width: int, height: int, multiplier: float = 1.0, cap: int = 1536) -> int:
    """GPT-4.1-mini/nano and o4-mini: one token per 32-px patch (at most ``cap`` patches, the
    image shrunk to fit), times a per-model multiplier."""
    w, h = float(width), float(height)

    def count(w: float, h: float) -> int:
        # rounding first, so 44.0000001 patches are 44
        return math.ceil(round(w / 32, 6)) * math.ceil(round(h / 32, 6))

    patches = count(w, h)
    if patches > cap:
        shrink = math.sqrt(cap * 32 * 32 / (w * h))
        w, h = w * shrink, h * shrink
        # then shrink a little more, so the width is a whole number of patches
        fit = math.floor(w / 32) / (w / 32)
        patches = count(w * fit, h * fit)
    return math.ceil(patches * multiplier)


_PATCH_MODELS = {"gpt-4.1-mini": 1.62, "gpt-4.1-nano": 2.46, "o4-mini": 1.72}


def openai_image_rule(model: str | None, detail: str = "high") -> ImageTokens:
    """The rule OpenAI publishes for ``model``: patches for the small 4.1/o4 models, else tiles."""
    for prefix, multiplier in _PATCH_MODELS.items():
        if model and model.startswith(prefix):
            return lambda w, h: openai_patch_tokens(w, h, multiplier)
    return lambda w, h: openai_tile_tokens(w, h, detail)


# -- fitting ----------------------------------------------------------------------------------


def image_size(part: ImagePart) -> tuple[int, int]:
    """Width and height from the encoded header, without decoding the pixels (read once per
    part: every image of the transcript is measured at every round)."""
    size = getattr(part, "_size", None)
    if size is None or size[0] is not part.data:
        from PIL import Image

        with Image.open(io.BytesIO(part.data)) as img:
            size = (part.data, img.size)
        part._size = size  # type: ignore[attr-defined]
    return size[1]


@dataclass
class FitReport:
    estimated_tokens: int = 0
    budget: int = 0
    dropped_images: int = 0
    dropped_messages: int = 0

    @property
    def dropped(self) -> bool:
        return bool(self.dropped_images or self.dropped_messages)

    def to_json(self) -> dict[str, Any]:
        return {
            "estimated_tokens": self.estimated_tokens,
            "budget": self.budget,
            "dropped_images": self.dropped_images,
            "dropped_messages": self.dropped_messages,
        }


def dropped_note(images: int, messages: int) -> str:
    what = []
    if images:
        what.append(f"the {images} oldest image(s)")
    if messages:
        what.append(f"the {messages} oldest message(s) after the task")
    return (
        f"[Note: to fit the model's context window, {' and '.join(what)} of this conversation "
        "were removed. Print or display again anything from earlier that you still need.]"
    )


class ContextFitter:
    """Keeps requests inside ``budget`` estimated input tokens."""

    def __init__(self, budget: int, image_tokens: ImageTokens):
        self.budget = budget
        self.image_tokens = image_tokens
        # The provider's count over our estimate, from the last call.
        self.scale = 1.0
        self._image_cost: dict[int, tuple[bytes, int]] = {}

    # -- estimates ----------------------------------------------------------------------------
    def _text(self, text: str) -> float:
        return len(text) / CHARS_PER_TOKEN

    def _image(self, part: ImagePart) -> int:
        cached = self._image_cost.get(id(part.data))
        if cached is not None and cached[0] is part.data:
            return cached[1]
        tokens = self.image_tokens(*image_size(part))
        if len(self._image_cost) > 4096:
            self._image_cost.clear()
        # Holding the bytes keeps their id from being reused while cached.
        self._image_cost[id(part.data)] = (part.data, tokens)
        return tokens

    def _part(self, part: Part) -> float:
        return self._image(part) if isinstance(part, ImagePart) else self._text(part.text)

    def _message(self, message: Message) -> float:
        return MESSAGE_OVERHEAD + sum(self._part(p) for p in message.parts)

    def estimate(self, messages: list[Message]) -> int:
        return math.ceil(self.scale * sum(self._message(m) for m in messages))

    def calibrate(self, estimated: int, actual: int) -> None:
        """Learn from the provider's input count for a request we estimated at ``estimated``."""
        if estimated > 0 and actual > 0:
            raw = actual / (estimated / self.scale)
            self.scale = min(3.0, max(0.5, raw))

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, messages: list[Message]) -> tuple[list[Message], FitReport]:
        """A copy of ``messages`` within budget (as far as dropping can get it) and a report."""
        msgs = [Message(m.role, list(m.parts), m.meta) for m in messages]
        total = sum(self._message(m) for m in msgs)
        report = FitReport(budget=self.budget)
        limit = self.budget / self.scale
        if total <= limit or len(msgs) < 3:
            report.estimated_tokens = math.ceil(total * self.scale)
            return msgs, report

        # Room for the note that tells the agent what was dropped.
        limit -= self._text(dropped_note(99, 99))
        first = 1 if msgs[0].role == "system" else 0
        task = next((i for i in range(first, len(msgs)) if msgs[i].role == "user"), first)
        middle = list(range(task + 1, len(msgs) - 1))
        placeholder = self._text(IMAGE_PLACEHOLDER)

        def drop_images(indices: list[int]) -> None:
            nonlocal total
            for i in indices:
                parts = msgs[i].parts
                for j, part in enumerate(parts):
                    if total <= limit:
                        return
                    if isinstance(part, ImagePart):
                        total -= self._image(part) - placeholder
                        parts[j] = TextPart(IMAGE_PLACEHOLDER, "note")
                        report.dropped_images += 1

        # 1. images before the newest turn, oldest first
        drop_images(middle)
        # 2. whole exchanges, oldest first, so roles keep alternating
        dropped: set[int] = set()
        k = 0
        while total > limit and k < len(middle):
            pair = middle[k : k + 2]
            for i in pair:
                total -= self._message(msgs[i])
                dropped.add(i)
            report.dropped_messages += len(pair)
            k += 2
        # 3. as a last resort, the images of the newest turn, which the agent asked to see
        drop_images([len(msgs) - 1])
        msgs = [m for i, m in enumerate(msgs) if i not in dropped]

        if report.dropped:
            note = TextPart(dropped_note(report.dropped_images, report.dropped_messages), "note")
            msgs[-1] = Message(msgs[-1].role, [note, *msgs[-1].parts], msgs[-1].meta)
            total += self._text(note.text)
        report.estimated_tokens = math.ceil(total * self.scale)
        return msgs, report
