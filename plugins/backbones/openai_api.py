"""The OpenAI backbones themselves (registered by :mod:`.openai_chat`, which imports this module
only when one is made, so that ``maia --help`` need not load the provider machinery)."""

from __future__ import annotations

from typing import Any

from maia_core.errors import UserError
from maia_core.images import data_uri
from maia_core.providers.api import (
    Answer,
    ApiBackbone,
    ApiOptions,
    MalformedResponse,
    alternate,
    import_sdk,
    require_key,
    split_system,
)
from maia_core.providers.context import ImageTokens, openai_image_rule
from maia_core.transcript import ImagePart, Message
from maia_plugins.backbones.openai_chat import KEY_ENV, LOCAL_BASE_URL

# Context windows by model-id prefix (longest match wins); the budget default.
CONTEXT = {
    "gpt-4o": 128_000,
    "gpt-4.1": 1_000_000,
    "gpt-5": 400_000,
    "o3": 200_000,
    "o4": 200_000,
}
DEFAULT_CONTEXT = 128_000
# Servers default to their model's window; many local models are served with 32K.
LOCAL_CONTEXT = 32_768


def make_openai(arg: str | None, **options: Any) -> OpenAIBackbone:
    opts = ApiOptions.parse(options, "Backbone openai", extra=("image_detail",))
    return OpenAIBackbone(arg or "gpt-4o", opts)


def make_openai_compatible(arg: str | None, **options: Any) -> OpenAICompatibleBackbone:
    opts = ApiOptions.parse(
        options,
        "Backbone openai-compatible",
        extra=("image_detail",),
        base_url=LOCAL_BASE_URL,
        timeout=600.0,
    )
    model = arg or ""
    if model.startswith("local-"):
        model = model[len("local-") :]
    if not model:
        raise UserError(
            "Name the served model: --backbone local-<model> or openai-compatible:<model>, "
            "e.g. local-google/gemma-3-27b-it."
        )
    return OpenAICompatibleBackbone(model, opts)


def _context_for(model: str) -> int:
    best = max((k for k in CONTEXT if model.startswith(k)), key=len, default=None)
    return CONTEXT[best] if best else DEFAULT_CONTEXT


class OpenAIBackbone(ApiBackbone):
    provider = "OpenAI"
    # OpenAI's newer models take max_completion_tokens and refuse max_tokens.
    max_tokens_field = "max_completion_tokens"

    def __init__(
        self,
        model: str,
        options: ApiOptions,
        *,
        context_tokens: int | None = None,
        key: str | None = None,
    ):
        key_env = options.api_key_env or (KEY_ENV if key is None else None)
        super().__init__(
            model, options, context_tokens=context_tokens or _context_for(model), key_env=key_env
        )
        self.sdk = import_sdk("openai", self.kind, "openai")
        if key_env:
            key = require_key(key_env, self.kind)
        self.detail = options.extra.get("image_detail") or None
        if self.detail not in (None, "auto", "low", "high"):
            raise UserError(f"Option image_detail={self.detail!r} must be auto, low or high.")
        self.client = self.sdk.OpenAI(
            api_key=key,
            base_url=options.base_url,
            timeout=options.timeout,
            max_retries=0,  # maia retries itself
        )
        if options.base_url and self.provider == "OpenAI":
            self.provider = f"OpenAI at {options.base_url}"

    @property
    def kind(self) -> str:
        return "openai"

    def image_rule(self) -> ImageTokens:
        return openai_image_rule(
            self.model, "low" if self.options.extra.get("image_detail") == "low" else "high"
        )

    def request(self, messages: list[Message]) -> dict[str, Any]:
        system, rest = split_system(messages, self.options.merge_system)
        turns = alternate([self._turn(m) for m in rest], _join)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": ([{"role": "system", "content": system}] if system else []) + turns,
            self.max_tokens_field: self.options.max_output_tokens,
        }
        return body

    def _turn(self, message: Message) -> dict[str, Any]:
        if message.role == "assistant" or not message.images:
            # Plain strings where there are no images: every server's chat template takes them.
            return {"role": message.role, "content": message.text or "(empty)"}
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                image: dict[str, Any] = {"url": data_uri(part.data, part.media_type)}
                if self.detail:
                    image["detail"] = self.detail
                content.append({"type": "image_url", "image_url": image})
            elif part.text.strip():
                content.append({"type": "text", "text": part.text})
        return {"role": message.role, "content": content}

    def send(self, request: dict[str, Any]) -> Answer:
        # The request is plain JSON already. ``chat.completions.create`` would first walk all of
        # it through the SDK's type transformer, every round: 16 ms a request with a dozen
        # images, growing with the transcript. ``post`` (the SDK's documented way to send a
        # body as it is) skips that and parses the answer into the same ChatCompletion.
        response = self.client.post(
            "/chat/completions", body=request, cast_to=self.sdk.types.chat.ChatCompletion
        )
        if not getattr(response, "choices", None):
            raise MalformedResponse("the answer has no choices")
        try:
            choice = response.choices[0]
            text = choice.message.content or ""
            usage = response.usage
            prompt = int(usage.prompt_tokens) if usage else 0
            completion = int(usage.completion_tokens) if usage else 0
            details = getattr(usage, "prompt_tokens_details", None) if usage else None
            cached = int(getattr(details, "cached_tokens", 0) or 0) if details else 0
            return Answer(
                text,
                input_tokens=prompt,
                output_tokens=completion,
                cache_read_tokens=cached,
                model=getattr(response, "model", None),
                stop_reason=getattr(choice, "finish_reason", None),
            )
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.client.close()


def _join(a: Any, b: Any) -> Any:
    """Merge two contents of one role: strings join, content lists concatenate."""
    if isinstance(a, str) and isinstance(b, str):
        return "\n\n".join(x for x in (a, b) if x)
    return [*_blocks(a), *_blocks(b)]


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


class OpenAICompatibleBackbone(OpenAIBackbone):
    """A local or self-hosted server that speaks OpenAI's Chat Completions protocol."""

    # vLLM, Ollama and llama.cpp all read max_tokens; not all read max_completion_tokens.
    max_tokens_field = "max_tokens"

    def __init__(self, model: str, options: ApiOptions):
        self.provider = f"the server at {options.base_url}"
        super().__init__(model, options, context_tokens=LOCAL_CONTEXT, key="not-needed")

    @property
    def kind(self) -> str:
        return "openai-compatible"

    connect_hint = "; is the server running? maia serve-model starts a vLLM server"
