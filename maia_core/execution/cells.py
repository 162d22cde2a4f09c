"""Running one cell of agent code and collecting what it shows, in order and bounded.

Used by the kernel process and by the in-process sandbox. A cell's output is a list of
transcript parts: what it printed (``stdout``, ``stderr``), what it displayed (text and
images), and at the end its error. Output is capped so a runaway cell cannot flood the
backbone's context or the history: characters, images, pixels per image and image bytes.
"""

from __future__ import annotations

import ast
import io
import linecache
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from maia_core.errors import ToolError
from maia_core.images import resize_longest
from maia_core.transcript import ImagePart, Part, TextPart

# Bounds on one cell's output.
MAX_OUTPUT_CHARS = 20_000
MAX_IMAGES = 40
# An image larger than this (on its longest side) is shrunk before it is kept.
MAX_IMAGE_SIDE = 1024
# Encoded image bytes one cell may add to the transcript.
MAX_IMAGE_BYTES = 8 * 2**20


@dataclass
class CellResult:
    parts: list[Part]
    error: str | None = None
    seconds: float = 0.0
    # Set when the sandbox had to be restarted: why, for the note to the agent.
    restarted: str | None = None
    # The sandbox had died before the cell (between rounds) and the cell ran in a fresh one.
    restarted_before: bool = False
    # What the tools recorded about their calls (seeds, parameters), for the round's metadata.
    records: list[dict[str, Any]] = field(default_factory=list)
    # Of ``seconds``, the time the model host spent on the cell's calls.
    host_seconds: float = 0.0


class CellTimeout(BaseException):
    """Raised inside a cell that ran past its time limit (BaseException: ``except Exception``
    in agent code cannot swallow it)."""


class Collector:
    """A cell's output parts, in order, within the bounds above. Thread-safe: descriptor-level
    output arrives from reader threads while the cell runs."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._chars = 0
        self._images = 0
        self._image_bytes = 0
        self._dropped_chars = 0
        self._dropped_images = 0
        self._shrunk = 0
        self._lock = threading.Lock()

    def text(self, s: str, source: str) -> None:
        if not s:
            return
        with self._lock:
            room = MAX_OUTPUT_CHARS - self._chars
            if room <= 0:
                self._dropped_chars += len(s)
                return
            if len(s) > room:
                self._dropped_chars += len(s) - room
                s = s[:room]
            self._chars += len(s)
            last = self.parts[-1] if self.parts else None
            if isinstance(last, TextPart) and last.source == source:
                last.text += s
            else:
                self.parts.append(TextPart(s, source))

    def add(self, part: Part) -> None:
        if isinstance(part, ImagePart):
            self._add_image(part)
        else:
            self.text(
                part.text if part.text.endswith("\n") else part.text + "\n",
                part.source or "display",
            )

    def _add_image(self, part: ImagePart) -> None:
        from PIL import Image

        with self._lock:
            if self._images >= MAX_IMAGES:
                self._dropped_images += 1
                return
        try:
            with Image.open(io.BytesIO(part.data)) as img:  # its header: pixels only to shrink
                if max(img.size) > MAX_IMAGE_SIDE:
                    img.load()
                    part = ImagePart.from_pil(resize_longest(img, MAX_IMAGE_SIDE), part.source)
                    self._shrunk += 1
        except (OSError, ValueError):
            pass  # not decodable here: kept as sent, bytes still count
        with self._lock:
            if self._images >= MAX_IMAGES or self._image_bytes + len(part.data) > MAX_IMAGE_BYTES:
                self._dropped_images += 1
                return
            self._images += 1
            self._image_bytes += len(part.data)
            self.parts.append(part)

    def finish(self) -> list[Part]:
        notes = []
        if self._dropped_chars:
            notes.append(
                f"{self._dropped_chars} more characters of output were cut (limit {MAX_OUTPUT_CHARS})"
            )
        if self._dropped_images:
            notes.append(
                f"{self._dropped_images} more images were not shown (limit {MAX_IMAGES} images "
                f"and {MAX_IMAGE_BYTES // 2**20} MB per cell)"
            )
        if self._shrunk:
            notes.append(f"{self._shrunk} image(s) larger than {MAX_IMAGE_SIDE} px were shrunk")
        if notes:
            self.parts.append(
                TextPart("[" + "; ".join(notes) + ". Print and display less at once.]\n", "note")
            )
        return self.parts


class Output(io.TextIOBase):
    """A text stream that appends what is written to the cell's ordered parts."""

    def __init__(self, collector: Collector, source: str):
        self._collector = collector
        self._source = source

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._collector.text(s, self._source)
        return len(s)


def execute(code: str, namespace: dict[str, Any], filename: str, show: Any) -> None:
    """Run ``code`` in ``namespace``; like a notebook, a final bare expression's value is shown
    with ``show(value)``."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, filename, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), filename, "eval"), namespace)
        if value is not None:
            show(value)


def describe_error(exc: BaseException, timeout: float | None) -> str:
    """What the agent reads for a cell that raised."""
    if isinstance(exc, CellTimeout):
        return f"TimeoutError: the cell ran longer than its {timeout:g} s limit and was stopped. Variables are kept."
    if isinstance(exc, SystemExit):
        return f"SystemExit: the code called sys.exit({exc.code!r}); the session ignores it and goes on. Variables are kept."
    return format_error(exc)


def format_error(exc: BaseException) -> str:
    """The traceback from the agent's own code down, without the framework's frames above it."""
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell"):
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        tb = None
    elif getattr(exc, "agent_frames_only", False) or isinstance(exc, ToolError):
        # Keep the agent's frames only: the message says what to do.
        frames = []
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith("<cell"):
            frames.append(tb)
            tb = tb.tb_next
        if frames:
            frames[-1].tb_next = None
            tb = frames[0]
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
