"""Ground truth of scenes images as a model sees them: what is where, in the model's view.

The model host keeps the annotation of every image the scenes dataset, ``text2image`` or
``edit_images`` made (:class:`~maia_core.tools.TruthRegistry`, keyed by the image's pixels).
A detector runs on the preprocessed batch, not on those images, so :class:`ViewTruth` keys
annotations by the *view*: the resized and centre-cropped uint8 pixels a normalized input row
goes back to exactly. Whoever still holds the images (a target's ``batches``, the exemplar
pass with the dataset's annotations) notes them; the detector looks rows up. An image that was
changed in any way (masked, resized, a photo) has no entry, and the caller falls back.

:class:`SceneFacts` is one view's truth in the terms detectors and planted reliances ask
about, on the view's 56 x 56 grid: the visible object instances (label, stamp, what the
prompt called it, mask, box, colour), the background (label, colour, region) and the effects.

Colours are named exactly where the scene names them (a recoloured object, a plain or tinted
background) and otherwise read from the pixels with the offline detector's colour rules, so a
red strawberry stamp is red and a green-recoloured one green; under a greyscale effect every
colour is read from the (grey) pixels.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maia_core.torch_runtime.detector import normalize_concept
from maia_core.torch_runtime.target import Preprocess
from maia_plugins.detectors.vocabulary import COLORS

GRID = 56  # the facts' grid over the view, as the offline detector's masks
_RECENT = 8  # batches whose keys a ViewTruth remembers
COLOR_NAMES = COLORS  # the offline detector's colours, in its order
# Scenes background names -> the label a prompt would give them.
BACKGROUND_LABELS = {
    "grass": "grass",
    "brick": "brick wall",
    "gravel": "gravel",
    "hubble": "space",
    "china": "landscape",
    "plain": "plain",
}


# -- keys ------------------------------------------------------------------------------------


def view_pixels(x: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Normalized rows ``[B, 3, H, W]`` back to the uint8 views they were made from (exact:
    normalizing a uint8 view and inverting it round-trips to the same integers)."""
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    pixels = x.to(torch.float32, copy=True).mul_(std).add_(mean).mul_(255.0)
    return pixels.round_().clamp_(0, 255).to(torch.uint8)


def view_keys(x: torch.Tensor, preprocess: Preprocess) -> list[bytes]:
    """One key per row of a normalized batch: a digest of its uint8 view."""
    pixels = view_pixels(x, preprocess).cpu().contiguous().numpy()
    return [_key(row) for row in pixels]


def pixel_keys(views: Sequence[Image.Image]) -> list[bytes]:
    """The :func:`view_keys` of the batch ``views`` normalize to, read off the views
    themselves (RGB, the preprocessing's size): a fifth of the work."""
    return [_key(np.asarray(v, dtype=np.uint8).transpose(2, 0, 1)) for v in views]


def _key(chw: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(chw).tobytes(), digest_size=16).digest()


def _version(x: torch.Tensor) -> int | None:
    """How many times ``x`` was changed in place, or None for an inference tensor."""
    try:
        return x._version
    except RuntimeError:
        return None


def is_scene(annotation: Any) -> bool:
    """Whether ``annotation`` is a whole scenes image's (not an outside image that had objects
    pasted on it, whose photo is unknown)."""
    if not isinstance(annotation, dict) or not isinstance(annotation.get("size"), int):
        return False
    bg = annotation.get("background")
    objects = annotation.get("objects")
    return (
        isinstance(bg, dict)
        and bg.get("kind") in ("plain", "texture", "photo")
        and isinstance(objects, list)
        and all(isinstance(o, dict) and "mask" in o for o in objects)
    )


@dataclass
class _Entry:
    annotation: dict[str, Any]
    facts: SceneFacts | None = None
    building: threading.Event | None = None  # set while one thread builds the facts


class ViewTruth:
    """Scenes annotations keyed by the views of a :class:`Preprocess`; bounded, thread-safe."""

    def __init__(self, preprocess: Preprocess, capacity: int = 2048):
        self.preprocess = preprocess
        self.capacity = capacity
        self._items: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        # The keys of the last batches noted, by the tensor itself: the same batch is looked
        # up again in its forward pass, and its keys need not be computed twice.
        self._recent: OrderedDict[int, tuple[weakref.ref, int, list[bytes]]] = OrderedDict()

    def keys(self, x: torch.Tensor) -> list[bytes]:
        """:func:`view_keys` of ``x``, remembered for the few tensors noted last (while they
        live and are not changed in place)."""
        version = _version(x)
        if version is None:  # an inference tensor: no counter tells whether it changed
            return view_keys(x, self.preprocess)
        with self._lock:
            memo = self._recent.get(id(x))
        if memo is not None and memo[0]() is x and memo[1] == version:
            return memo[2]
        return self.remember(x, view_keys(x, self.preprocess))

    def remember(self, x: torch.Tensor, keys: list[bytes]) -> list[bytes]:
        """Take ``keys`` as the :func:`view_keys` of ``x`` (computed by a caller that holds its
        views: :func:`pixel_keys`), for as long as :meth:`keys` would remember them."""
        version = _version(x)
        if version is not None:
            with self._lock:
                self._recent[id(x)] = (weakref.ref(x), version, keys)
                while len(self._recent) > _RECENT:
                    self._recent.popitem(last=False)
        return keys

    def note(
        self, x: torch.Tensor, annotations: Sequence[Any], keys: list[bytes] | None = None
    ) -> list[bool]:
        """Remember the annotations of rows of ``x`` (None, or anything but a whole scene's,
        is skipped); ``keys``: the rows' view keys, when the caller has them. Returns which
        rows have one."""
        found = [is_scene(a) for a in annotations]
        if not any(found):
            return found
        keys = self.keys(x) if keys is None else self.remember(x, keys)
        with self._lock:
            for key, annotation, ok in zip(keys, annotations, found):
                if not ok:
                    continue
                entry = self._items.get(key)
                if entry is None or entry.annotation is not annotation:
                    self._items[key] = _Entry(annotation)
                self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return found

    def facts(
        self, x: torch.Tensor, matcher: ConceptMatcher, keys: list[bytes] | None = None
    ) -> list[SceneFacts | None]:
        """The facts of each row of ``x`` (whose :func:`view_keys` may be given), or None
        where it has no annotation."""
        if not self._items:
            return [None] * x.shape[0]
        keys = keys if keys is not None else self.keys(x)
        # Facts missing are built here, once: those another thread is building (the same
        # images, measured by two investigations at once) are waited for.
        mine: list[int] = []
        theirs: list[threading.Event] = []
        with self._lock:
            entries = [self._items.get(k) for k in keys]
            for i, e in enumerate(entries):
                if e is None or e.facts is not None:
                    continue
                if e.building is None:
                    e.building = threading.Event()
                    mine.append(i)
                elif not any(entries[j] is e for j in mine):
                    theirs.append(e.building)
        if mine:
            try:
                self._build(x, entries, mine, matcher)
            finally:
                with self._lock:
                    for i in mine:
                        event, entries[i].building = entries[i].building, None
                        if event is not None:
                            event.set()
        for event in theirs:
            event.wait()
        late = [i for i, e in enumerate(entries) if e is not None and e.facts is None]
        if late:  # their builder failed: build them here
            self._build(x, entries, late, matcher)
        return [None if e is None else e.facts for e in entries]

    def _build(
        self, x: torch.Tensor, entries: list[_Entry | None], rows: list[int], matcher: Any
    ) -> None:
        cells = cell_colors(x[rows], self.preprocess)
        for j, i in enumerate(rows):
            entry = entries[i]
            if entry is not None and entry.facts is None:
                entry.facts = SceneFacts.build(entry.annotation, cells[j], self.preprocess, matcher)

    def __len__(self) -> int:
        return len(self._items)


# -- colours ----------------------------------------------------------------------------------


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` averaged over the cells of the GRID x GRID grid (a plain average pool
    when the grid divides the image, as 224 px views; adaptive otherwise)."""
    h, w = x.shape[-2:]
    if h % GRID == 0 and w % GRID == 0:
        return F.avg_pool2d(x, (h // GRID, w // GRID))
    return F.adaptive_avg_pool2d(x, (GRID, GRID))


def cell_colors(x: torch.Tensor, preprocess: Preprocess) -> np.ndarray:
    """Each cell of the GRID x GRID grid over each row's view: the index of its colour in
    :data:`COLOR_NAMES` by the offline detector's rules, or -1. ``[B, GRID, GRID]``."""
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return grid_colors((to_grid(x.float()) * std + mean).clamp(0.0, 1.0))


def grid_colors(rgb: torch.Tensor) -> np.ndarray:
    """:func:`cell_colors` of a grid of RGB cells in [0, 1], ``[B, 3, G, G]``."""
    from maia_plugins.detectors.offline import color_masks

    masks = color_masks(rgb, COLOR_NAMES).float()  # [B, 11, G, G], at most one true per cell
    order = torch.arange(1, len(COLOR_NAMES) + 1, dtype=torch.float32, device=rgb.device)
    return ((masks * order.view(1, -1, 1, 1)).sum(1) - 1).long().cpu().numpy()


_BASE_COLORS: dict[str, str | None] = {}


def base_color(name: str | None) -> str | None:
    """A scenes colour name (``dark blue``, ``cyan``, ``gold``) as one of :data:`COLOR_NAMES`,
    by the colour rules applied to the RGB the scenes tools paint it with."""
    if not name:
        return None
    if name in COLOR_NAMES:
        return name
    if name not in _BASE_COLORS:
        from maia_plugins.detectors.offline import color_masks
        from maia_plugins.tools.scene_language import color_rgb

        try:
            rgb = torch.tensor(color_rgb(name), dtype=torch.float32).view(1, 3, 1, 1) / 255.0
        except KeyError:
            _BASE_COLORS[name] = None
        else:
            hits = color_masks(rgb, COLOR_NAMES)[0, :, 0, 0]
            _BASE_COLORS[name] = COLOR_NAMES[int(hits.float().argmax())] if hits.any() else None
    return _BASE_COLORS[name]


def dominant(cells: np.ndarray, where: np.ndarray) -> str | None:
    """The most common colour of ``cells`` (indices, -1 for none) where ``where`` is true."""
    values = cells[where]
    values = values[values >= 0]
    if values.size == 0:
        return None
    return COLOR_NAMES[int(np.bincount(values, minlength=len(COLOR_NAMES)).argmax())]


# -- objects by name ---------------------------------------------------------------------------


class ConceptMatcher:
    """Which scene objects a concept names, as the scenes ``text2image`` would draw it: the
    stamps its exact word tiers give (a group such as ``ball``, a label, the last word of
    labels), or the object's own label or prompt name. No embeddings: ``puppy`` names nothing
    here, so a label is never stretched to a look-alike."""

    def __init__(self) -> None:
        self._stamps: dict[str, frozenset[str]] = {}
        self._language: Any = None
        self._failed = False
        self._lock = threading.Lock()

    def _lang(self) -> Any:
        if self._language is None and not self._failed:
            try:
                from maia_plugins.tools.scene_language import SceneLanguage

                self._language = SceneLanguage.open(categories="all")
            except Exception:  # noqa: BLE001 - no stamps here: labels alone still match
                self._failed = True
        return self._language

    def stamps(self, concept: str) -> frozenset[str]:
        concept = normalize_concept(concept)
        with self._lock:
            if concept not in self._stamps:
                lang = self._lang()
                found = lang.stamps_named(concept) if lang is not None else ()
                self._stamps[concept] = frozenset(found)
            return self._stamps[concept]

    def names(self, concept: str, obj: dict[str, Any]) -> bool:
        """Whether ``concept`` names the annotated object ``obj``."""
        concept = normalize_concept(concept)
        if obj.get("stamp") in self.stamps(concept):
            return True
        return concept in (
            normalize_concept(obj.get("label") or ""),
            normalize_concept(obj.get("concept") or ""),
        )


# -- one view's facts -------------------------------------------------------------------------


@dataclass
class Instance:
    """One visible object of a view."""

    label: str
    stamp: str
    concept: str
    mask: np.ndarray  # [GRID, GRID] float, the share of each cell it covers
    box: tuple[float, float, float, float]  # its visible box, fractions of the image
    color: str | None
    flipped: bool


@dataclass
class SceneFacts:
    """What an annotated view shows (see the module docstring). ``exact`` is True: the same
    interface estimated from pixels has it False."""

    instances: list[Instance]
    background: str  # its label: grass, brick wall, sky, plain, ...
    background_color: str | None
    background_region: np.ndarray  # [GRID, GRID] float
    contains: tuple[str, ...]  # what a photo background shows (chelsea: cat)
    effects: dict[str, dict[str, Any]]
    cells: np.ndarray  # [GRID, GRID] colour indices with the scene's named colours
    matcher: ConceptMatcher = field(repr=False)
    exact: bool = True

    @classmethod
    def build(
        cls,
        annotation: dict[str, Any],
        cells: np.ndarray,
        preprocess: Preprocess,
        matcher: ConceptMatcher,
    ) -> SceneFacts:
        size = int(annotation["size"])
        effects = {e["kind"]: e for e in annotation.get("effects") or ()}
        grey = "grayscale" in effects
        cells = cells.copy()
        named = cells.copy()
        covered = np.zeros((GRID, GRID), dtype=np.float32)
        instances = []
        for obj in annotation["objects"]:
            mask = view_mask(obj["mask"], preprocess)
            if not obj.get("area") or mask.max() <= 0:
                continue
            covered = np.maximum(covered, mask)
            solid = mask >= 0.5
            color = None if grey else base_color(obj.get("color_name"))
            if color is not None:
                named[solid] = COLOR_NAMES.index(color)
            x0, y0, x1, y1 = obj["bbox"]
            instances.append(
                Instance(
                    label=str(obj.get("label") or ""),
                    stamp=str(obj.get("stamp") or ""),
                    concept=str(obj.get("concept") or obj.get("label") or ""),
                    mask=mask,
                    box=(x0 / size, y0 / size, x1 / size, y1 / size),
                    color=color or dominant(cells, solid if solid.any() else mask > 0),
                    flipped=bool(obj.get("flip")),
                )
            )
        bg = annotation["background"]
        region = np.clip(1.0 - covered, 0.0, 1.0)
        if "patch" in effects:
            region = region * (1.0 - _patch_cells(effects["patch"], size, preprocess))
        open_bg = region >= 0.5
        bg_color = None if grey else base_color(bg.get("color_name"))
        if bg_color is not None:
            named[open_bg] = COLOR_NAMES.index(bg_color)
        label = bg.get("label")
        if not label or label == bg.get("color_name") or base_color(label) is not None:
            label = BACKGROUND_LABELS.get(bg.get("name"), bg.get("name") or "plain")
        if bg.get("kind") == "plain" and label not in ("sky", "water", "sand", "sunset", "snow"):
            label = "plain"
        return cls(
            instances=instances,
            background=str(label),
            background_color=bg_color or dominant(cells, open_bg),
            background_region=region,
            contains=tuple(normalize_concept(c) for c in bg.get("contains") or ()),
            effects=effects,
            cells=named,
            matcher=matcher,
        )

    def of(self, concept: str) -> list[Instance]:
        """The visible instances ``concept`` names."""
        return [
            i
            for i in self.instances
            if self.matcher.names(
                concept, {"stamp": i.stamp, "label": i.label, "concept": i.concept}
            )
        ]

    def region(self, concept: str) -> np.ndarray | None:
        """Where ``concept`` is as an object (its instances, or a photo background that shows
        it), or None when it is not there."""
        masks = [i.mask for i in self.of(concept)]
        if normalize_concept(concept) in self.contains:
            masks.append(self.background_region)
        return np.maximum.reduce(masks) if masks else None

    def color_share(self, color: str) -> tuple[float, np.ndarray]:
        """The share of the view in ``color`` and its cells."""
        cells = (self.cells == COLOR_NAMES.index(color)).astype(np.float32)
        return float(cells.mean()), cells


def view_mask(mask: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """An image-sized bool mask as the share of each GRID cell of the view it covers."""
    im = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, "L")
    view = np.asarray(preprocess.view(im))[..., 0].astype(np.float32) / 255.0
    return grid_of(view)


def grid_of(plane: np.ndarray) -> np.ndarray:
    """:func:`to_grid` of one float32 ``[H, W]`` plane, in numpy: the same numbers (each cell
    summed in float32 row by row, then divided, as torch's average pool does), without a
    torch call per mask. A small torch op runs in parallel across threads, and on a busy
    machine each such call waits for its threads: an image's facts cost milliseconds a mask."""
    h, w = plane.shape
    if h % GRID or w % GRID:
        t = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
        return to_grid(t)[0, 0].numpy()
    kh, kw = h // GRID, w // GRID
    cells = np.asarray(plane, dtype=np.float32).reshape(GRID, kh, GRID, kw)
    total = np.zeros((GRID, GRID), dtype=np.float32)
    for i in range(kh):
        for j in range(kw):
            total += cells[:, i, :, j]
    return total / np.float32(kh * kw)


def _patch_cells(effect: dict[str, Any], size: int, preprocess: Preprocess) -> np.ndarray:
    from maia_plugins.datasets.scene_effects import Effect, patch_box

    x0, y0, x1, y1 = patch_box(Effect.from_dict(effect), size, size)
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return view_mask(mask, preprocess)
