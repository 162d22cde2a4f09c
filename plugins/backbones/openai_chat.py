"""The OpenAI backbones: OpenAI's Chat Completions API, and any server that speaks it.

- ``openai``: ``gpt-4o`` (any ``gpt-*``, ``chatgpt-*`` or ``o<digit>*`` id) or ``openai:<model>``;
  the key comes from ``OPENAI_API_KEY``.
- ``openai-compatible``: ``local-<model>`` or ``openai-compatible:<model>`` for vLLM, Ollama,
  llama.cpp's server or SGLang, at ``--base-url`` (default ``http://localhost:11434/v1``, as in
  MAIA). No key is needed unless the server wants one: ``--backbone-option api_key_env=VAR``.

Both use the ``openai`` SDK's current client. The model id is sent exactly as given.

This module only registers them; the backbones are in :mod:`.openai_api`, loaded when one is
made.
"""

from __future__ import annotations

from typing import Any

from maia_core import hookimpl

KEY_ENV = "OPENAI_API_KEY"
LOCAL_BASE_URL = "http://localhost:11434/v1"


@hookimpl
def register_backbones(register):
    register(
        "openai",
        make_openai,
        patterns=("gpt-*", "chatgpt-*", "o[0-9]*"),
        help=f"OpenAI Chat Completions: gpt-4o (any gpt-* id) or openai:<model>; key in {KEY_ENV}",
    )
    register(
        "openai-compatible",
        make_openai_compatible,
        patterns=("local-*",),
        help=f"An OpenAI-compatible server (vLLM, Ollama, llama.cpp, SGLang): local-<model> or openai-compatible:<model>, at --base-url (default {LOCAL_BASE_URL})",
    )


def make_openai(arg: str | None, **options: Any) -> Any:
    from maia_plugins.backbones.openai_api import make_openai as make

    return make(arg, **options)


def make_openai_compatible(arg: str | None, **options: Any) -> Any:
    from maia_plugins.backbones.openai_api import make_openai_compatible as make

    return make(arg, **options)
