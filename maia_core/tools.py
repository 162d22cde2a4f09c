"""What tools get from maia (:class:`ToolContext`) and what the agent sees (:class:`Tools`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from maia_core.images import to_pil
from maia_core.transcript import ImagePart, Message, Part, TextPart


class ToolContext:
    """Handed to every tool factory. Lives in the sandbox worker, next to the target.

    - ``target``: the loaded :class:`~maia_core.target.Target`;
    - ``device``: where models go (``"cpu"``, ``"cuda"``...);
    - ``exemplars``: the exemplar store folder, or ``None`` for the default;
    - ``display(*items)``: add text and images to the current cell's output, in order;
    - ``ask_backbone(messages)``: ask a backbone (the describer) and get its reply text.
      In the process sandbox the request travels to the main process, which holds the keys.
    """

    def __init__(
        self,
        *,
        target: Any,
        device: str,
        ask_backbone: Callable[[list[Message]], str],
        exemplars: str | None = None,
    ):
        self.target = target
        self.device = device
        self.exemplars = Path(exemplars) if exemplars else None
        self._ask_backbone = ask_backbone
        self._sink: Callable[[Part], None] | None = None

    def set_sink(self, sink: Callable[[Part], None] | None) -> None:
        self._sink = sink

    def emit(self, part: Part) -> None:
        if self._sink is None:
            raise RuntimeError("display() was called outside a running cell")
        self._sink(part)

    def display(self, *items: Any) -> None:
        """Send text and images to the agent, in order. Lists and tuples are flattened."""
        for item in items:
            if isinstance(item, (list, tuple)):
                self.display(*item)
            elif isinstance(item, (TextPart, ImagePart)):
                self.emit(item)
            elif isinstance(item, Image.Image) or _is_image_array(item):
                self.emit(ImagePart.from_pil(to_pil(item), source="display"))
            else:
                self.emit(TextPart(str(item), source="display"))

    def ask_backbone(self, messages: list[Message]) -> str:
        return self._ask_backbone(messages)


def _is_image_array(obj: Any) -> bool:
    shape = getattr(obj, "shape", None)
    if shape is None or not hasattr(obj, "dtype"):
        return False
    return len(shape) == 2 or (len(shape) == 3 and (shape[-1] in (3, 4) or shape[0] in (3, 4)))


class Tools:
    """The agent's ``tools`` object: one attribute per tool capability."""

    def __init__(self, tools: dict[str, Callable[..., Any]]):
        object.__setattr__(self, "_tools", dict(tools))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise AttributeError(f"tools has no {name!r}. Available tools: {known}.") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("tools is read-only")

    def __dir__(self) -> list[str]:
        return sorted(self._tools)

    def items(self) -> list[tuple[str, Callable[..., Any]]]:
        return sorted(self._tools.items())

    def __repr__(self) -> str:
        return f"<tools: {', '.join(sorted(self._tools))}>"
