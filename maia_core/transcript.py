"""The neutral transcript: messages with a role and ordered text and image parts.

Every backbone translates this one form to its provider's format; reporters render it;
``history.json`` stores it. Images are kept encoded (JPEG or PNG bytes), so a transcript
is cheap to copy between processes and to write to disk.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

from maia_core.images import decode_image, encode_image, is_pil_image, sniff_media_type

if TYPE_CHECKING:
    from PIL import Image

FORMAT = "maia-transcript/1"
Role = Literal["system", "user", "assistant"]


@dataclass
class TextPart:
    text: str
    # Where the text came from in an execution result: "stdout", "display", "error" or "note".
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "text", "text": self.text}
        if self.source:
            d["source"] = self.source
        return d


@dataclass
class ImagePart:
    data: bytes
    media_type: str
    source: str | None = None

    @classmethod
    def from_pil(cls, img: Image.Image, source: str | None = None) -> ImagePart:
        data, media_type = encode_image(img)
        return cls(data, media_type, source)

    def to_pil(self) -> Image.Image:
        return decode_image(self.data)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": "image",
            "media_type": self.media_type,
            "data": base64.b64encode(self.data).decode("ascii"),
        }
        if self.source:
            d["source"] = self.source
        return d


Part = Union[TextPart, ImagePart]  # noqa: UP007 - a runtime alias, kept readable on 3.10


def part_from_json(d: dict[str, Any]) -> Part:
    if d.get("type") == "image":
        data = base64.b64decode(d["data"])
        return ImagePart(data, d.get("media_type") or sniff_media_type(data), d.get("source"))
    return TextPart(d.get("text", ""), d.get("source"))


@dataclass
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)
    # Loop bookkeeping: round number, token usage, the kind of message ("task", "result",
    # "correction", "final_request"...). Backbones ignore it.
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, role: Role, *items: str | Image.Image | Part, **meta: Any) -> Message:
        """Build a message from strings, PIL images and parts, in order."""
        parts: list[Part] = []
        for item in items:
            if isinstance(item, (TextPart, ImagePart)):
                parts.append(item)
            elif is_pil_image(item):
                parts.append(ImagePart.from_pil(item))
            else:
                parts.append(TextPart(str(item)))
        return cls(role, parts, dict(meta))

    @property
    def text(self) -> str:
        """The text parts joined in order (images left out)."""
        return "\n".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.parts if isinstance(p, ImagePart)]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "parts": [p.to_json() for p in self.parts]}
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Message:
        return cls(
            d["role"], [part_from_json(p) for p in d.get("parts", [])], dict(d.get("meta") or {})
        )


def transcript_to_json(messages: list[Message], **meta: Any) -> dict[str, Any]:
    return {"format": FORMAT, **meta, "messages": [m.to_json() for m in messages]}


def transcript_from_json(obj: dict[str, Any]) -> list[Message]:
    return [Message.from_json(m) for m in obj["messages"]]
