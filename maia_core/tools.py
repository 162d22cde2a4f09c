"""What tools get from maia (:class:`ToolContext`) and what the agent sees (:class:`Tools`).

Tools live in the model host, next to the target, and one tool object serves every
investigation on that device. What belongs to one investigation, the unit, the output of the
cell in flight, the seeds drawn so far, is a :class:`CallScope` that maia makes current
around each call, so a tool reads it through its context without knowing about concurrency.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maia_core.images import is_pil_image, to_pil
from maia_core.transcript import ImagePart, Message, Part, TextPart
from maia_core.units import Unit

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class CallScope:
    """One investigation's state as its tool calls see it."""

    unit: Unit | None = None
    # Where displayed parts go: the output of the cell in flight.
    sink: Callable[[Part], None] | None = None
    # What tools recorded about their calls in this cell (seeds, parameters...).
    records: list[dict[str, Any]] = field(default_factory=list)
    # The describer, for this investigation (a request travels to the process with the keys).
    ask_backbone: Callable[[list[Message]], str] | None = None
    seeds: Counter = field(default_factory=Counter)
    # The capability and implementation being called, for records.
    tool: tuple[str, str] | None = None
    # Set while a call runs: when its caller is interrupted, the host sets ``cancel`` and
    # long work stops at its next check (``cancelled()``); ``abandoned`` tells whether the
    # caller already hung up.
    cancel: threading.Event | None = None
    abandoned: Callable[[], bool] | None = None

    def cancelled(self) -> bool:
        """Whether no one waits for the call in flight any more (check between batches)."""
        if self.cancel is not None and self.cancel.is_set():
            return True
        return self.abandoned is not None and self.abandoned()

    def take_records(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records


_current: ContextVar[CallScope | None] = ContextVar("maia_call_scope", default=None)


@contextlib.contextmanager
def call_scope(scope: CallScope, tool: tuple[str, str] | None = None) -> Iterator[CallScope]:
    """Make ``scope`` current (in this thread) for the duration of a call."""
    previous_tool = scope.tool
    if tool is not None:
        scope.tool = tool
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
        scope.tool = previous_tool


def current_scope() -> CallScope | None:
    return _current.get()


class TruthRegistry:
    """Ground truth of generated images, keyed by their pixels, kept where models live.

    A generator that knows what it drew (the ``scenes`` world: objects, labels, masks)
    ``put`` s it; whoever later receives the same pixels (an editor, an evaluation) ``get`` s it
    back. The agent only ever holds pixels, so it never sees the annotations. Bounded: the
    oldest entries go first.
    """

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(image: Image.Image) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
        h.update(image.tobytes())
        return h.hexdigest()

    def put(self, image: Image.Image, truth: Any) -> None:
        key = self.key(image)
        with self._lock:
            self._items[key] = truth
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, image: Image.Image) -> Any | None:
        key = self.key(image)
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)


class ToolContext:
    """Handed to every tool factory; lives in the model host and serves every investigation.

    - ``target``: the loaded :class:`~maia_core.target.Target`;
    - ``device``: where models go (``"cpu"``, ``"cuda"``...); ``precision``: ``fp32``, ``bf16``
      or ``fp16``, as the run asked;
    - ``exemplars``: the exemplar store folder, or ``None`` for the default;
    - ``display(*items)``: add text and images to the output of the cell in flight, in order;
    - ``ask_backbone(messages)``: ask the describer backbone and get its reply text; the
      request travels to the main process, which holds the keys;
    - ``record(**meta)``: note what this call did (its seed, its parameters); stored with the
      round's result in ``history.json`` and shown in the report;
    - ``seed(name)``: a seed for this call that depends only on the unit and on how many seeds
      this investigation drew for ``name`` before, so replaying a transcript draws the same;
    - ``unit``: the unit of the investigation making the call (``None`` outside one);
    - ``truth``: the :class:`TruthRegistry` of generated images' ground truth;
    - ``shared(key, factory)``: one object per host for ``key`` (a text encoder two tools use).
    """

    def __init__(
        self,
        *,
        target: Any,
        device: str,
        ask_backbone: Callable[[list[Message]], str] | None = None,
        exemplars: str | None = None,
        precision: str = "fp32",
        seed: int = 0,
    ):
        self.target = target
        self.device = device
        self.precision = precision
        self.exemplars = Path(exemplars) if exemplars else None
        self.truth = TruthRegistry()
        self.base_seed = seed
        # Outside any investigation (a notebook calling a tool by hand), calls use this scope.
        self._default_scope = CallScope(ask_backbone=ask_backbone)
        self._shared: dict[str, Any] = {}
        self._shared_lock = threading.Lock()

    # -- the investigation making the call ---------------------------------------------------
    @property
    def scope(self) -> CallScope:
        return current_scope() or self._default_scope

    @property
    def unit(self) -> Unit | None:
        return self.scope.unit

    def emit(self, part: Part) -> None:
        sink = self.scope.sink
        if sink is None:
            raise RuntimeError("display() was called outside a running cell")
        sink(part)

    def display(self, *items: Any) -> None:
        """Send text and images to the agent, in order. Lists and tuples are flattened."""
        for item in items:
            if isinstance(item, (list, tuple)):
                self.display(*item)
            elif isinstance(item, (TextPart, ImagePart)):
                self.emit(item)
            elif is_pil_image(item) or _is_image_array(item):
                self.emit(ImagePart.from_pil(to_pil(item), source="display"))
            else:
                self.emit(TextPart(str(item), source="display"))

    def ask_backbone(self, messages: list[Message]) -> str:
        ask = self.scope.ask_backbone or self._default_scope.ask_backbone
        if ask is None:
            raise RuntimeError("no describer backbone is available here")
        return ask(messages)

    def record(self, **meta: Any) -> None:
        """Note what this call did; kept with the round's result (plain JSON data only)."""
        scope = self.scope
        entry: dict[str, Any] = {}
        if scope.tool is not None:
            entry["tool"], entry["implementation"] = scope.tool
        entry.update(meta)
        scope.records.append(entry)

    def seed(self, name: str = "") -> int:
        """A deterministic 31-bit seed for this call (see the class docstring)."""
        scope = self.scope
        name = name or (scope.tool[0] if scope.tool else "")
        count = scope.seeds[name]
        scope.seeds[name] += 1
        unit = scope.unit
        where = f"{unit.layer}/{unit.index}" if unit is not None else "-"
        digest = hashlib.sha256(f"{self.base_seed}/{where}/{name}/{count}".encode()).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF

    def shared(self, key: str, factory: Callable[[], Any]) -> Any:
        """The object for ``key``, made by ``factory`` the first time any tool asks."""
        with self._shared_lock:
            if key not in self._shared:
                self._shared[key] = factory()
            return self._shared[key]


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
