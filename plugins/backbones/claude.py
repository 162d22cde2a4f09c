"""The ``claude`` backbone: Anthropic's Messages API through the ``anthropic`` SDK.

``--backbone claude`` uses :data:`DEFAULT_MODEL`; ``claude:<model-id>`` or a bare
``claude-<...>`` id sends exactly that id. The key comes from ``ANTHROPIC_API_KEY``.

This module only registers it; the backbone is in :mod:`.claude_api`, loaded when one is made.
"""

from __future__ import annotations

from typing import Any

from maia_core import hookimpl

#: the current Sonnet; change it with claude:<model-id>
DEFAULT_MODEL = "claude-sonnet-5-5"
KEY_ENV = "ANTHROPIC_API_KEY"


@hookimpl
def register_backbones(register):
    register(
        "claude",
        make_claude,
        patterns=("claude-*",),
        help=f"Anthropic Claude: claude ({DEFAULT_MODEL}), claude:<model-id>, or a claude-* id; key in {KEY_ENV}",
    )


def make_claude(arg: str | None, **options: Any) -> Any:
    from maia_plugins.backbones.claude_api import make_claude as make

    return make(arg, **options)
