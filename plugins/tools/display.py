"""The ``display`` tool: how the agent shows itself images and text."""

from __future__ import annotations

from typing import Any

from maia_core import hookimpl
from maia_core.options import reject_unknown
from maia_core.tools import ToolContext


@hookimpl
def register_tools(register):
    register("display", Display, help="Show images and text to the agent, in order")


class Display:
    def __init__(self, ctx: ToolContext, **options: str):
        reject_unknown(options, "Tool display", ())
        self._ctx = ctx

    def __call__(self, *items: Any) -> None:
        """Show images and text to yourself. Only what you display or print reaches you.

        Args:
            *items: any mix of PIL images, strings, numbers and lists of them, shown in order.
                Numpy arrays shaped like images are shown as images.

        Returns:
            None.

        Example:
            acts, masked = system.call_neuron(images)
            for act, img in zip(acts, masked):
                tools.display(img, f"activation {act:.2f}")
        """
        self._ctx.display(*items)
