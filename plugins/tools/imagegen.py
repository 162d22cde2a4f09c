"""What every ``text2image`` and ``edit_images`` implementation shares: MAIA's meaning.

An implementation subclasses :class:`Text2Image` or :class:`EditImages` and writes only
``generate`` or ``edit`` (and ``parameters``, what its calls record). The agent-facing call,
its docstring, argument checks, seeds, records and the interleaved output of ``edit_images``
live here once, so every implementation behaves the same to the agent.

Seeds: each call draws one seed from :meth:`ToolContext.seed` (or takes the agent's), and
image ``i`` of the call uses ``seed + i``. Seeds depend only on the unit and on the calls made
before, so replaying a transcript regenerates the same images. Host-side callers (evaluation,
tests) call ``generate`` and ``edit`` directly with explicit seeds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from maia_core.errors import ToolError
from maia_core.images import to_pil
from maia_core.tools import ToolContext

if TYPE_CHECKING:
    from PIL import Image

# Most images one call may make: enough for any experiment, not enough to starve other
# investigations of the GPU.
MAX_IMAGES_PER_CALL = 64


def _prompts(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return list(value)
    raise ToolError(f"{what} must be a string or a list of strings, not {type(value).__name__}.")


def _images(value: Any) -> list[Image.Image]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for i, item in enumerate(items):
        try:
            out.append(to_pil(item))
        except (TypeError, ValueError, OSError) as exc:
            raise ToolError(f"base_images[{i}] is not an image: {exc}.") from None
    return out


def _check_count(n: int, what: str) -> None:
    if n == 0:
        raise ToolError(f"{what} is empty; give at least one.")
    if n > MAX_IMAGES_PER_CALL:
        raise ToolError(
            f"{what} has {n} items; one call makes at most {MAX_IMAGES_PER_CALL} images. Split it."
        )


class Text2Image(ABC):
    """Base of ``text2image`` implementations."""

    #: the implementation's name, as registered (``flux``, ``scenes``...)
    name = ""

    def __init__(self, ctx: ToolContext):
        self._ctx = ctx

    @abstractmethod
    def generate(self, prompts: list[str], seed: int) -> tuple[list[Image.Image], list[str]]:
        """One image per prompt, image ``i`` from ``seed + i``; and notes on anything in the
        prompts that could not be followed (empty when all was understood)."""

    def parameters(self) -> dict[str, Any]:
        """What a call records besides its prompts and seed: model, steps, size..."""
        return {}

    def __call__(self, prompt_list: list[str], seed: int | None = None) -> list[Image.Image]:
        """Generate one image per text prompt, to test a hypothesis with images you design.

        Use it to make images that should, and should not, drive the unit, then measure them
        with system.call_neuron. Vary one thing at a time. Several images of one prompt (repeat
        the prompt in the list) make a measurement robust to noise.

        Args:
            prompt_list: a list of text prompts (a single string is also accepted), each
                describing one image, e.g. "a red car on a plain white background".
            seed: optional; the same prompts with the same seed give the same images.

        Returns:
            A list of PIL images, one per prompt, in order.

        Example:
            prompts = ["a dog on grass", "a cat on grass", "grass"]
            images = tools.text2image(prompts)
            acts, masked = system.call_neuron(images)
            for p, a, img in zip(prompts, acts, masked):
                tools.display(img, f"{p}: activation {a:.3f}")
        """
        prompts = _prompts(prompt_list, "prompt_list")
        _check_count(len(prompts), "prompt_list")
        if seed is not None and not isinstance(seed, int):
            raise ToolError(f"seed must be a whole number, not {type(seed).__name__}.")
        base = self._ctx.seed() if seed is None else int(seed) & 0x7FFFFFFF
        images, notes = self.generate(prompts, base)
        self._ctx.record(prompts=prompts, seed=base, **self.parameters())
        for note in notes:
            self._ctx.display(f"[text2image: {note}]")
        return images


class EditImages(ABC):
    """Base of ``edit_images`` implementations."""

    name = ""

    def __init__(self, ctx: ToolContext):
        self._ctx = ctx

    @abstractmethod
    def edit(
        self, images: list[Image.Image], instructions: list[str], seed: int
    ) -> tuple[list[Image.Image], list[str | None]]:
        """Image ``i`` edited by instruction ``i`` (from ``seed + i``); and per image a note on
        what of its instruction could not be done (None when all was done)."""

    def parameters(self) -> dict[str, Any]:
        return {}

    def __call__(
        self, base_images: list[Image.Image], editing_prompts: list[str]
    ) -> tuple[list[Image.Image], list[str]]:
        """Edit images by text instructions, to test whether a change causes the unit's response.

        Change one thing (an object, its colour, the background) and compare the unit's
        activation on the original and the edited image: a difference shows what the unit
        depends on. Phrase each edit as a replacement or a change, e.g. "replace the dog with a
        cat" or "change the color of the car to blue". IMPORTANT: do not use negative
        terminology such as "remove ..."; say what should be there instead.

        Args:
            base_images: a list of images (PIL images, numpy arrays, or images returned by
                any tool); a single image is also accepted.
            editing_prompts: one instruction per image, as a list of the same length.

        Returns:
            (images, prompts): images alternate original and edited,
            [original_1, edited_1, original_2, edited_2, ...], each edited image the size of
            its original; prompts alternate "Original Image" and "Editing Prompt: <instruction>",
            with a note in brackets on anything that could not be done.

        Example:
            base = tools.text2image(["a dog on grass"])
            edits = ["replace the dog with a cat", "change the background to a brick wall"]
            images, prompts = tools.edit_images(base * len(edits), edits)
            acts, masked = system.call_neuron(images)
            for p, a, img in zip(prompts, acts, masked):
                tools.display(img, f"{p}: activation {a:.3f}")
        """
        images = _images(base_images)
        instructions = _prompts(editing_prompts, "editing_prompts")
        if len(images) != len(instructions):
            raise ToolError(
                f"edit_images got {len(images)} image(s) but {len(instructions)} editing "
                "prompt(s); give one prompt per image (repeat an image to edit it several ways)."
            )
        _check_count(len(images), "base_images")
        seed = self._ctx.seed()
        edited, notes = self.edit(images, instructions, seed)
        self._ctx.record(prompts=instructions, seed=seed, **self.parameters())
        from PIL import Image

        out_images: list[Image.Image] = []
        out_prompts: list[str] = []
        for original, result, instruction, note in zip(images, edited, instructions, notes):
            if result.size != original.size:
                result = result.resize(original.size, Image.BICUBIC)
            out_images += [original, result]
            text = f"Editing Prompt: {instruction}" + (f" [{note}]" if note else "")
            out_prompts += ["Original Image", text]
        return out_images, out_prompts
