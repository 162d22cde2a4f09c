"""``describe_images`` and ``summarize_images``: MAIA's image-to-text tools.

Both ask the describer backbone (``--describer``, by default the agent's own backbone)
through :meth:`maia_core.tools.ToolContext.ask_backbone`; in the process sandbox the request
goes to the main process, so the worker never holds a key. The describer sees only the images
and a fixed instruction, never the agent's hypotheses, so its descriptions are impartial.

Output formats follow MAIA: ``"<title>", HIGHLIGHTED REGIONS: <description>`` per image, and
``[COMMON]: <description>``.
"""

from __future__ import annotations

import re
from typing import Any

from maia_core import hookimpl
from maia_core.images import to_pil
from maia_core.options import reject_unknown
from maia_core.tools import ToolContext
from maia_core.transcript import ImagePart, Message, TextPart

SYSTEM = "You are a helpful assistant who looks at images and describes them accurately."
DESCRIBE = (
    "Do not describe the full image. Describe ONLY the highlighted regions of this image, the "
    "parts that are not darkened. Be as concise as possible. Answer in this format:\n"
    "[HIGHLIGHTED REGIONS]: <your concise description>"
)
SUMMARIZE = (
    "What do the highlighted (not darkened) regions of all these images have in common? "
    "Consider several kinds of concept: objects, parts, scenes, colours, textures and shapes. "
    "There may be more than one common concept, or groups of images that each share a "
    "different one; if so, name all of them. Answer in this format:\n"
    "[COMMON]: <your description>"
)
_HIGHLIGHTED = re.compile(r"\[HIGHLIGHTED REGIONS\]\s*:?", re.IGNORECASE)
_COMMON = re.compile(r"\[COMMON\]\s*:?", re.IGNORECASE)


@hookimpl
def register_tools(register):
    register(
        "describe_images",
        DescribeImages,
        help="Describe the highlighted regions of images, with the describer backbone",
    )
    register(
        "summarize_images",
        SummarizeImages,
        help="Say what the highlighted regions of images have in common, with the describer backbone",
    )


def _flatten(items: Any) -> list[Any]:
    if isinstance(items, (list, tuple)):
        return [x for item in items for x in _flatten(item)]
    return [items]


def _images(images: Any, tool: str) -> list[ImagePart]:
    flat = _flatten(images)
    if not flat:
        raise ValueError(f"tools.{tool} needs at least one image")
    return [ImagePart.from_pil(to_pil(img)) for img in flat]


def _after(marker: re.Pattern[str], text: str) -> str:
    found = list(marker.finditer(text))
    return (text[found[-1].end() :] if found else text).strip()


class DescribeImages:
    def __init__(self, ctx: ToolContext, **options: str):
        reject_unknown(options, "Tool describe_images", ())
        self._ctx = ctx

    def __call__(self, images: list, titles: list[str] | None = None) -> str:
        """Describe what is in the highlighted (not darkened) region of each image.

        An impartial observer, who knows nothing of your hypotheses, looks at each image on its
        own and describes only its highlighted region. Use it on the masked images that
        system.call_neuron returns, to name what the unit responds to in each.

        Args:
            images: a list of images (PIL images, numpy arrays or base64 strings).
            titles: one title per image, used to label its description (default "Image 1", ...).

        Returns:
            One line per image: '"<title>", HIGHLIGHTED REGIONS: <description>'.

        Example:
            acts, masked = system.call_neuron(images)
            titles = [f"activation {a:.2f}" for a in acts]
            print(tools.describe_images(masked, titles))
        """
        parts = _images(images, "describe_images")
        if titles is None:
            titles = [f"Image {i + 1}" for i in range(len(parts))]
        elif isinstance(titles, str):
            titles = [titles]
        titles = [str(t) for t in _flatten(list(titles))]
        if len(titles) != len(parts):
            raise ValueError(
                f"tools.describe_images got {len(parts)} image(s) but {len(titles)} title(s); "
                "give one title per image"
            )
        lines = []
        for title, part in zip(titles, parts):
            reply = self._ctx.ask_backbone(
                [Message("system", [TextPart(SYSTEM)]), Message("user", [TextPart(DESCRIBE), part])]
            )
            lines.append(f'"{title}", HIGHLIGHTED REGIONS: {_after(_HIGHLIGHTED, reply)}')
        return "\n".join(lines) + "\n"


class SummarizeImages:
    def __init__(self, ctx: ToolContext, **options: str):
        reject_unknown(options, "Tool summarize_images", ())
        self._ctx = ctx

    def __call__(self, images: list) -> str:
        """Say what the highlighted (not darkened) regions of a set of images have in common.

        An impartial observer looks at all the images together. Use it on a unit's most
        activating images to find the shared concept, or on two groups to compare them.

        Args:
            images: a list of images (PIL images, numpy arrays or base64 strings).

        Returns:
            '[COMMON]: <description>', naming every common concept it finds.

        Example:
            acts, masked = system.call_neuron(images)
            top = [masked[i] for i in np.argsort(acts)[-5:]]
            print(tools.summarize_images(top))
        """
        parts = _images(images, "summarize_images")
        reply = self._ctx.ask_backbone(
            [Message("system", [TextPart(SYSTEM)]), Message("user", [TextPart(SUMMARIZE), *parts])]
        )
        return f"[COMMON]: {_after(_COMMON, reply)}"
