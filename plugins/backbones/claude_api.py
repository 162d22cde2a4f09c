"""The ``claude`` backbone itself (registered by :mod:`.claude`, which imports this module only
when a Claude backbone is made, so that ``maia --help`` need not load the provider machinery)."""

from __future__ import annotations

from typing import Any

from maia_core.options import as_bool
from maia_core.providers.api import (
    Answer,
    ApiBackbone,
    ApiOptions,
    MalformedResponse,
    alternate,
    b64,
    import_sdk,
    require_key,
    split_system,
)
from maia_core.providers.context import ImageTokens, anthropic_image_tokens
from maia_core.transcript import ImagePart, Message
from maia_plugins.backbones.claude import DEFAULT_MODEL, KEY_ENV

# Claude's own window is larger on recent models (1M); the budget stays at 200K by default
# because every round resends the whole transcript, so a long context is paid for each round.
DEFAULT_CONTEXT = 200_000
# Recent Claude models think before answering, and thinking counts against max_tokens.
DEFAULT_MAX_OUTPUT = 8192


def make_claude(arg: str | None, **options: Any) -> ClaudeBackbone:
    opts = ApiOptions.parse(
        options, "Backbone claude", extra=("prompt_cache",), max_output_tokens=DEFAULT_MAX_OUTPUT
    )
    return ClaudeBackbone(arg or DEFAULT_MODEL, opts)


class ClaudeBackbone(ApiBackbone):
    provider = "Anthropic"

    def __init__(self, model: str, options: ApiOptions):
        key_env = options.api_key_env or KEY_ENV
        super().__init__(model, options, context_tokens=DEFAULT_CONTEXT, key_env=key_env)
        self.sdk = import_sdk("anthropic", "claude", "anthropic")
        self.prompt_cache = as_bool(options.extra.get("prompt_cache", "true"), "prompt_cache")
        self.client = self.sdk.Anthropic(
            api_key=require_key(key_env, "claude"),
            base_url=options.base_url,
            timeout=options.timeout,
            # maia retries itself, with its own policy and messages.
            max_retries=0,
        )
        if options.base_url:
            self.provider = f"Anthropic at {options.base_url}"

    def image_rule(self) -> ImageTokens:
        return anthropic_image_tokens

    def request(self, messages: list[Message]) -> dict[str, Any]:
        system, rest = split_system(messages, self.options.merge_system)
        turns = [{"role": m.role, "content": self._blocks(m)} for m in rest]
        turns = alternate(turns, lambda a, b: [*a, *b])
        for turn in turns:
            if not turn["content"]:
                turn["content"] = [{"type": "text", "text": "(no output)"}]
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.options.max_output_tokens,
            "messages": turns,
        }
        if system:
            body["system"] = [{"type": "text", "text": system}]
        if self.prompt_cache and turns:
            # Every round resends the transcript: marking its end lets the next round read
            # this prefix from Anthropic's prompt cache at a tenth of the input price.
            if system:
                body["system"][-1]["cache_control"] = {"type": "ephemeral"}
            last = turns[-1]["content"][-1]
            turns[-1]["content"][-1] = {**last, "cache_control": {"type": "ephemeral"}}
        return body

    @staticmethod
    def _blocks(message: Message) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                blocks.append(
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": part.media_type,
                            "data": b64(part),
                        },
                    }
                )
            elif part.text.strip():  # the API rejects empty text blocks
                blocks.append({"type": "text", "text": part.text})
        return blocks

    def send(self, request: dict[str, Any]) -> Answer:
        response = self.client.messages.create(**request)
        if (
            not isinstance(getattr(response, "content", None), list)
            or getattr(response, "usage", None) is None
        ):
            raise MalformedResponse("the answer has no content list or no usage")
        try:
            text = "".join(b.text for b in response.content if getattr(b, "type", None) == "text")
            usage = response.usage
            read = usage.cache_read_input_tokens or 0
            write = usage.cache_creation_input_tokens or 0
            return Answer(
                text,
                input_tokens=int(usage.input_tokens) + read + write,
                output_tokens=int(usage.output_tokens),
                cache_read_tokens=read,
                cache_write_tokens=write,
                model=getattr(response, "model", None),
                stop_reason=getattr(response, "stop_reason", None),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.client.close()
