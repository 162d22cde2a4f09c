"""``scenes``: offline ``text2image`` and ``edit_images`` over the scenes world.

No network, no GPU, no diffusion model: a prompt is parsed (:mod:`.scene_language`) into a
scene of the scenes dataset (Tux Paint photo cut-outs on textures, photos or plain colours)
and drawn by its renderer in a few milliseconds. Both are the defaults wherever a diffusion
model is not available. What they understand, with examples:

- objects by name: any stamp label (``a zebra``, ``a fire truck``, ``a teddy bear``) and
  groups (``a bird``, ``a fruit``, ``a car``, ``a vehicle``, ``an animal``, ``a person``);
  other words go to the nearest label by MiniLM embeddings (``a puppy`` draws a dog) with a
  note, or are ignored with a note;
- counts: ``two dogs``, ``three red apples``, ``a dog and a cat``, ``5 balls`` (at most 8);
- colours, of objects (recoloured keeping their shading) or of the background: ``a red car``,
  ``a blue dog on a plain yellow background``, ``red`` alone (a plain red image); red,
  orange, yellow, green, blue, purple, pink, brown, black, white, gray and a few more,
  optionally ``dark``/``light``;
- size and position: ``a small cat on the left``, ``a big dog in the center``, ``a tiny bird
  at the top right``, ``a cat above a dog``, ``a dog next to a car``, ``a cat in front of a
  dog``;
- backgrounds: ``on grass`` (green), ``in front of a brick wall`` (red brick), ``on
  gravel``, ``in space``/``night sky``, ``in a landscape``, ``on a plain blue background``;
  sky, water, sand and snow are drawn as plain colours (with a note). With no background
  named, the background is plain light gray, so the image shows the objects alone.

``edit_images`` understands ``replace the zebra with a horse`` (or ``with two cats``), ``add
a dog on the right``, ``add a red ball next to the dog``, ``remove the cat``, ``change the
color of the car to blue``, ``make the dog red``, ``change the background to a brick wall``
(or ``replace the grass with sand``, ``make the grass blue``), ``make the cat bigger`` /
``much smaller`` / ``tiny``, ``move the dog to the left`` / ``up``, ``flip the car``, ``make
the image black and white``, and several joined by "and". Objects are named as in prompts,
or as "it" (the largest), "everything", "the red car", "the dog on the left". An image made by
these tools is edited exactly (its scene is changed and drawn again); any other image (a
photo, an exemplar, a masked image) can only have objects pasted on it and be recoloured or
grayed as a whole, and the note says what could not be done. The agent-facing docstrings
are the base classes' (:mod:`.imagegen`).

Options (``--tool-option`` or factory keywords): ``size`` (default 256, as the scenes
dataset), ``stamps`` (the stamps folder), ``categories`` and ``exclude`` (as the dataset:
which stamps may be drawn).

Ground truth: every image returned is put in ``ctx.truth`` with the scenes annotation
(``objects`` with stamp, label, category, concept, bbox, mask, area, ``color``/``color_name``
when recoloured; ``background`` with its ``label``; ``labels``; ``colors``) plus ``spec`` (the
``SceneSpec.to_dict()`` that drew it, None for an edited outside image), ``prompt``, ``seed``
and ``notes``.

Host-side API (no call scope needed; ``ctx = ToolContext(target=None, device="cpu")``)::

    t2i = ScenesText2Image(ctx, size=224)
    images, notes = t2i.generate(["a zebra on grass"], seed=0)   # image i from seed + i
    [(image, annotation)] = t2i.render(["a zebra on grass"], seed=0)
    t2i.language.vocabulary(); t2i.language.match("zebra stripes")
    edit = ScenesEditImages(ctx)
    edited, notes = edit.edit(images, ["replace the zebra with a horse"], seed=0)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maia_core import hookimpl
from maia_core.errors import ToolError, UserError
from maia_core.options import as_int, reject_unknown
from maia_core.tools import ToolContext
from maia_plugins.tools.imagegen import EditImages, Text2Image

if TYPE_CHECKING:
    from PIL import Image

OPTIONS = ("size", "stamps", "categories", "exclude")
DEFAULT_SIZE = 256
# Rendered images kept for prompts that come back (the annotations are held anyway, by the
# truth registry and the scenes detector): a baseline's largest round, 1,411 images at 224
# px, fits, with the other units' surveys beside it.
RENDER_CACHE_MB = 384


@hookimpl
def register_tools(register):
    register(
        "scenes",
        ScenesText2Image,
        capability="text2image",
        default=True,
        help="Offline text2image: prompts drawn as scenes of Tux Paint cut-outs, with ground truth",
    )
    register(
        "scenes",
        ScenesEditImages,
        capability="edit_images",
        default=True,
        help="Offline edit_images: replace, add, remove, recolour, move, resize objects; "
        "change backgrounds (scenes images exactly, others by pasting)",
    )


def _language(ctx: ToolContext, options: dict[str, Any], owner: str) -> tuple[Any, int]:
    """The language (stamps, renderer, matcher) for these options, shared by both tools; or,
    where the stamps are not installed, the error to answer calls with."""
    reject_unknown(options, owner, OPTIONS)
    from maia_plugins.datasets.scenes import (
        APT_INSTALL,
        DEFAULT_STAMPS_DIR,
        STAMPS_ENV,
        StampLibrary,
    )
    from maia_plugins.tools.scene_language import (
        CachingRenderer,
        SceneLanguage,
        default_encoder,
        select_stamps,
        split_terms,
    )

    size = as_int(options.get("size", DEFAULT_SIZE), "size")
    if not 16 <= size <= 4096:
        raise UserError(f"Option size={size!r} must be between 16 and 4096 pixels.")
    root = str(Path(options.get("stamps") or os.environ.get(STAMPS_ENV) or DEFAULT_STAMPS_DIR))
    if not Path(root).is_dir():
        # These are the default tools: a run that does not use them must not fail for them.
        return ToolError(
            f"{owner.split()[-1]} needs Tux Paint's photo stamps, not found at {root}; "
            f"install them with: {APT_INSTALL} (or set {STAMPS_ENV})."
        ), size
    categories = options.get("categories")
    cats = split_terms(categories) if categories is not None else None
    excl = split_terms(options.get("exclude", ()))
    library = ctx.shared(f"scenes/stamps:{root}", lambda: StampLibrary.open(root))
    renderer = ctx.shared(f"scenes/renderer:{root}", lambda: CachingRenderer(library))
    encoder = ctx.shared("scenes/minilm", default_encoder)
    key = f"scenes/language:{root}|{cats}|{excl}"
    language = ctx.shared(
        key,
        lambda: SceneLanguage(
            library, select_stamps(library, cats, excl), renderer=renderer, encoder=encoder
        ),
    )
    return language, size


class _ScenesTool:
    """What both tools share: the language, or the error when the stamps are missing."""

    _language: Any

    @property
    def language(self):
        """The :class:`~.scene_language.SceneLanguage` these tools draw with."""
        if isinstance(self._language, ToolError):
            raise self._language
        return self._language


class ScenesText2Image(_ScenesTool, Text2Image):
    """text2image over the scenes world (see the module docstring for what it understands)."""

    name = "scenes"

    def __init__(self, ctx: ToolContext, **options: Any):
        from maia_plugins.tools.scene_language import _LRU

        super().__init__(ctx)
        self._language, self.size = _language(ctx, options, "Tool text2image=scenes")
        # Recent renders by (prompt, seed): a render is a pure function of them, and the same
        # prompts come back from unit to unit (a baseline's survey, seed 0, for every unit).
        self._renders = _LRU(RENDER_CACHE_MB * 2**20)
        self._drawing: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()

    def parameters(self) -> dict[str, Any]:
        return {"size": self.size}

    def generate(self, prompts: list[str], seed: int) -> tuple[list[Image.Image], list[str]]:
        images = []
        notes: dict[str, list[str]] = {}
        for prompt, (image, annotation) in zip(prompts, self.render(prompts, seed)):
            images.append(image)
            for note in annotation["notes"]:
                if note not in notes.setdefault(prompt, []):
                    notes[prompt].append(note)
        return images, [f"{p!r}: " + "; ".join(n) for p, n in notes.items() if n]

    def render(self, prompts: list[str], seed: int) -> list[tuple[Image.Image, dict[str, Any]]]:
        """One (image, ground truth) per prompt, image ``i`` from ``seed + i``; the ground truth
        is also put in ``ctx.truth``."""
        out = []
        for i, prompt in enumerate(prompts):
            cached, annotation = self._render_one(prompt, seed + i)
            # The cached image stays the cache's; the annotation is the same object, so the
            # facts a detector built from it last time are still its (``ViewTruth``).
            image = cached.copy()
            self._ctx.truth.put(image, annotation)
            out.append((image, annotation))
        return out

    def _render_one(self, prompt: str, seed: int) -> tuple[Image.Image, dict[str, Any]]:
        """From the cache, or drawn once: a prompt another call is drawing at this moment (two
        investigations running the same survey) is waited for, not drawn twice."""
        key = (prompt, seed, self.size)
        while True:
            hit = self._renders.value(key)
            if hit is not None:
                return hit
            with self._lock:
                drawing = self._drawing.get(key)
                if drawing is None:
                    self._drawing[key] = threading.Event()
                    break
            drawing.wait()  # then from the cache (or drawn here, if that call failed)
        try:
            parsed = self.language.parse(prompt)
            composed = self.language.compose(parsed, seed, self.size)
            scene = self.language.renderer.render(composed.spec, self.size)
            annotation = _annotate(scene, composed.extras, composed.background)
            annotation.update(prompt=prompt, seed=seed, notes=parsed.notes + composed.notes)
            im = scene.image
            self._renders.put(key, (im, annotation), im.width * im.height * len(im.getbands()))
            return im, annotation
        finally:
            with self._lock:
                self._drawing.pop(key).set()


class ScenesEditImages(_ScenesTool, EditImages):
    """edit_images over the scenes world (see the module docstring for what it understands)."""

    name = "scenes"

    def __init__(self, ctx: ToolContext, **options: Any):
        super().__init__(ctx)
        self._language, self.size = _language(ctx, options, "Tool edit_images=scenes")

    def parameters(self) -> dict[str, Any]:
        return {"size": self.size}

    def edit(
        self, images: list[Image.Image], instructions: list[str], seed: int
    ) -> tuple[list[Image.Image], list[str | None]]:
        from maia_core.images import as_rgb
        from maia_plugins.tools.scenes_editing import edit_outside, edit_scene, is_scene_truth

        out: list[Image.Image] = []
        notes: list[str | None] = []
        for i, (image, instruction) in enumerate(zip(images, instructions)):
            image = as_rgb(image)
            truth = self._ctx.truth.get(image)
            edits = self.language.parse_edit(instruction)
            if is_scene_truth(truth, image):
                result, annotation, said = edit_scene(self.language, truth, edits, seed + i)
            else:
                result, annotation, said = edit_outside(
                    self.language, image, truth, edits, seed + i
                )
            annotation.update(prompt=instruction, seed=seed + i, notes=said)
            self._ctx.truth.put(result, annotation)
            out.append(result)
            notes.append("; ".join(said) if said else None)
        return out, notes


def _annotate(scene, extras: list[dict[str, Any]], background) -> dict[str, Any]:
    from maia_plugins.tools.scenes_editing import annotate

    return annotate(scene, extras, background)
