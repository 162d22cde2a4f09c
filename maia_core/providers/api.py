"""What the API backbones share: options, image preparation, context fitting, retries, cost.

A provider subclass of :class:`ApiBackbone` says how to build a request from the fitted
neutral messages (:meth:`~ApiBackbone.request`), how to send it and read the answer
(:meth:`~ApiBackbone.send`), and which SDK's exception types to classify. Everything else,
the order of the steps included, lives here:

1. images are shrunk to ``image_size`` on their longest side and re-encoded compactly
   (cached, since every round resends them);
2. the transcript is fitted into the context budget (:mod:`maia_core.providers.context`);
3. the request is sent with retries (:mod:`maia_core.providers.retry`);
4. tokens come from the provider's usage fields and cost from the price table.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

from maia_core.backbone import Backbone, Reply, Usage
from maia_core.errors import BackboneError, UserError
from maia_core.images import decode_image, encode_image, resize_longest, sniff_media_type
from maia_core.loop.describer import DESCRIBER_KIND
from maia_core.options import as_bool, as_float, as_int, reject_unknown
from maia_core.providers.context import ContextFitter, ImageTokens, image_size
from maia_core.providers.limiter import RateLimiter
from maia_core.providers.pricing import PriceTable
from maia_core.providers.retry import Retry, RetryPolicy, call_with_retries, parse_retry_after
from maia_core.transcript import ImagePart, Message, TextPart

DEFAULT_IMAGE_SIZE = 512
# Media types every provider we speak to accepts; anything else is re-encoded.
SENDABLE = {"image/jpeg", "image/png", "image/gif", "image/webp"}
COMMON_OPTIONS = (
    "base_url",
    "api_key_env",
    "timeout",
    "max_attempts",
    "retry_base_delay",
    "max_output_tokens",
    "context_tokens",
    "image_size",
    "merge_system",
    "max_concurrent_requests",
    "requests_per_minute",
    "tokens_per_minute",
)


@dataclass
class ApiOptions:
    """The ``--backbone-option`` settings every API backbone takes (see the README)."""

    base_url: str | None = None
    api_key_env: str | None = None
    timeout: float = 300.0
    max_attempts: int = 6
    retry_base_delay: float = 1.0
    max_output_tokens: int = 4096
    context_tokens: int | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    merge_system: bool = False
    # Shared by every investigation on this backbone (maia_core.providers.limiter).
    max_concurrent_requests: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, options: dict[str, Any], owner: str, extra: tuple[str, ...] = (), **defaults: Any
    ) -> ApiOptions:
        reject_unknown(options, owner, (*COMMON_OPTIONS, *extra))
        o = cls(**defaults)
        if options.get("base_url"):
            o.base_url = str(options["base_url"])
        if options.get("api_key_env"):
            o.api_key_env = str(options["api_key_env"])
        if "timeout" in options:
            o.timeout = _positive(as_float(options["timeout"], "timeout"), "timeout")
        if "max_attempts" in options:
            o.max_attempts = int(
                _positive(as_int(options["max_attempts"], "max_attempts"), "max_attempts")
            )
        if "retry_base_delay" in options:
            o.retry_base_delay = as_float(options["retry_base_delay"], "retry_base_delay")
        if "max_output_tokens" in options:
            o.max_output_tokens = int(
                _positive(
                    as_int(options["max_output_tokens"], "max_output_tokens"), "max_output_tokens"
                )
            )
        if "context_tokens" in options:
            o.context_tokens = int(
                _positive(as_int(options["context_tokens"], "context_tokens"), "context_tokens")
            )
        if "image_size" in options:
            o.image_size = int(_positive(as_int(options["image_size"], "image_size"), "image_size"))
        if "merge_system" in options:
            o.merge_system = as_bool(options["merge_system"], "merge_system")
        for name in ("max_concurrent_requests", "requests_per_minute", "tokens_per_minute"):
            if name in options:
                setattr(o, name, int(_positive(as_int(options[name], name), name)))
        if o.base_url is not None:
            check_base_url(o.base_url)
        o.extra = {k: str(v) for k, v in options.items() if k in extra}
        return o


def check_base_url(url: str) -> None:
    """A server address maia can reach: http(s)://host[:port][/path]. Checked before any unit
    runs, so a typo is one line, not minutes of retries per unit."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UserError(
            f"Malformed --base-url {url!r} ({exc}). Expected e.g. http://localhost:11434/v1."
        ) from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or (port is not None and not 0 < port < 65536)
    ):
        raise UserError(
            f"Malformed --base-url {url!r}. Expected http:// or https://, a host and an optional port, "
            "e.g. http://localhost:11434/v1."
        )


def _positive(value: float, name: str) -> float:
    if value <= 0:
        raise UserError(f"Option {name}={value:g} must be greater than 0.")
    return value


def require_key(variable: str, backbone: str) -> str:
    """The API key in ``variable``; a one-line error naming it when it is not set."""
    key = os.environ.get(variable, "").strip()
    if not key:
        raise UserError(
            f"The {backbone} backbone needs an API key in the environment variable {variable}, "
            f"which is not set. Set it (export {variable}=...) and run again."
        )
    return key


def import_sdk(module: str, backbone: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise UserError(
            f"The {backbone} backbone needs the Python package {module!r}, which is not installed. "
            f"Install it with pip install 'maia[{extra}]'."
        ) from None


@dataclass
class Answer:
    """What a provider said, read from its response."""

    text: str
    input_tokens: int = 0  # every prompt token, cached ones included
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    model: str | None = None
    stop_reason: str | None = None


class MalformedResponse(ValueError):
    """A response that does not have the protocol's shape; worth retrying."""


def split_system(messages: list[Message], merge: bool) -> tuple[str, list[Message]]:
    """The system text and the other messages; with ``merge`` the system text instead opens
    the first user turn, for servers whose chat template has no system role."""
    system = "\n\n".join(m.text for m in messages if m.role == "system" and m.text)
    rest = [m for m in messages if m.role != "system"]
    if merge and system:
        i = next((k for k, m in enumerate(rest) if m.role == "user"), None)
        if i is None:
            rest.insert(0, Message("user", [TextPart(system)]))
        else:
            rest[i] = Message("user", [TextPart(system), *rest[i].parts], rest[i].meta)
        system = ""
    return system, rest


def alternate(turns: list[dict[str, Any]], join: Any) -> list[dict[str, Any]]:
    """Merge consecutive turns of one role with ``join(a, b)`` so roles strictly alternate,
    starting with a user turn."""
    out: list[dict[str, Any]] = []
    for turn in turns:
        if out and out[-1]["role"] == turn["role"]:
            out[-1] = {"role": turn["role"], "content": join(out[-1]["content"], turn["content"])}
        else:
            out.append(dict(turn))
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": join([], [])})
    return out


def b64(part: ImagePart) -> str:
    return base64.b64encode(part.data).decode("ascii")


class ApiBackbone(Backbone):
    """A backbone that talks to a provider's HTTP API through its SDK."""

    #: who answers, for messages: "Anthropic", "OpenAI", "the server at http://..."
    provider = ""
    #: the SDK module, whose exception types classify failures
    sdk: Any = None
    #: added to the message when the server cannot be reached
    connect_hint = ""

    def __init__(
        self, model: str, options: ApiOptions, *, context_tokens: int, key_env: str | None
    ):
        self.model = model
        self.options = options
        self.key_env = key_env
        self.policy = RetryPolicy(
            attempts=options.max_attempts, base_delay=options.retry_base_delay
        )
        budget = (options.context_tokens or context_tokens) - options.max_output_tokens
        if budget <= 0:
            raise UserError(
                f"The context budget of {model} ({options.context_tokens or context_tokens} tokens) "
                f"leaves no room for max_output_tokens={options.max_output_tokens}; raise "
                "context_tokens or lower max_output_tokens."
            )
        self.fitter = ContextFitter(budget, self.image_rule())
        self._prepared: dict[int, tuple[bytes, ImagePart]] = {}
        self.limiter = RateLimiter(
            options.max_concurrent_requests, options.requests_per_minute, options.tokens_per_minute
        )

    # -- what a provider defines ----------------------------------------------------------------
    def image_rule(self) -> ImageTokens:
        raise NotImplementedError

    def request(self, messages: list[Message]) -> dict[str, Any]:
        """The provider's request body for the fitted neutral messages."""
        raise NotImplementedError

    def send(self, request: dict[str, Any]) -> Answer:
        raise NotImplementedError

    # -- images ----------------------------------------------------------------------------------
    def prepare_image(self, part: ImagePart) -> ImagePart:
        """The image as sent: at most ``image_size`` px on its longest side, in a format every
        provider accepts, its media type sniffed from the bytes. Cached per image."""
        cached = self._prepared.get(id(part.data))
        if cached is not None and cached[0] is part.data:
            return cached[1]
        try:
            media_type = sniff_media_type(part.data)
        except ValueError:
            media_type = None
        size = self.options.image_size
        img = None
        if media_type not in SENDABLE or max(image_size(part)) > size:
            img = decode_image(part.data)
        if img is None:
            prepared = ImagePart(part.data, media_type, part.source)
        else:
            data, media_type = encode_image(resize_longest(img, size))
            prepared = ImagePart(data, media_type, part.source)
        if len(self._prepared) > 4096:
            self._prepared.clear()
        self._prepared[id(part.data)] = (part.data, prepared)
        return prepared

    def _prepare(self, message: Message) -> Message:
        if not any(isinstance(p, ImagePart) for p in message.parts):
            return message
        parts = [self.prepare_image(p) if isinstance(p, ImagePart) else p for p in message.parts]
        return Message(message.role, parts, message.meta)

    # -- the call --------------------------------------------------------------------------------
    def complete(self, messages: list[Message]) -> Reply:
        fitted, report = self.fitter.fit([self._prepare(m) for m in messages])
        body = self.request(fitted)
        expected = (
            report.estimated_tokens + self.options.max_output_tokens if self.limiter.tpm else 0
        )

        def attempt() -> Answer:
            with self.limiter.slot(expected):
                return self.send(body)

        answer = call_with_retries(
            attempt,
            self.classify,
            self.policy,
            what=f"{self.name or self.model}",
            on_retry=self._slow_down,
        )
        if self.limiter.tpm:
            self.limiter.record(answer.input_tokens + answer.output_tokens - expected)
        if not (messages and messages[0].meta.get("kind") == DESCRIBER_KIND):
            # Short describer requests (mostly image) would skew the text estimate for the agent.
            self.fitter.calibrate(report.estimated_tokens, answer.input_tokens)
        uncached = max(
            0, answer.input_tokens - answer.cache_read_tokens - answer.cache_write_tokens
        )
        cost = (self.prices or PriceTable()).cost(
            self.model,
            uncached,
            answer.output_tokens,
            answer.cache_read_tokens,
            answer.cache_write_tokens,
        )
        meta: dict[str, Any] = {}
        if report.dropped:
            meta["context"] = report.to_json()
        if answer.stop_reason and answer.stop_reason not in ("end_turn", "stop"):
            meta["stop_reason"] = answer.stop_reason
        usage = Usage(
            answer.input_tokens,
            answer.output_tokens,
            cost,
            answer.cache_read_tokens,
            answer.cache_write_tokens,
        )
        return Reply(answer.text, usage, answer.model or self.model, meta)

    def _slow_down(self, verdict: Retry, wait: float) -> None:
        if verdict.rate_limited:
            self.limiter.pause(wait)

    def price_known(self) -> bool:
        return (self.prices or PriceTable()).lookup(self.model) is not None

    # -- failures --------------------------------------------------------------------------------
    def where(self) -> str:
        return self.options.base_url or self.provider

    def classify(self, exc: Exception) -> Retry | BaseException:
        """Retry rate limits, overload, server errors, timeouts, lost connections and
        malformed answers; turn a rejected key into a user error; fail the unit otherwise."""
        sdk = self.sdk
        if isinstance(exc, MalformedResponse):
            return Retry(f"malformed response: {exc}")
        if sdk is not None and isinstance(exc, sdk.APITimeoutError):
            return Retry(f"no answer within the {self.options.timeout:g} s timeout")
        if sdk is not None and isinstance(exc, sdk.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f" ({type(cause).__name__}: {cause})" if cause else ""
            return Retry(f"cannot connect to {self.where()}{detail}{self.connect_hint}")
        if sdk is not None and isinstance(exc, sdk.APIStatusError):
            return self.classify_status(exc.status_code, error_detail(exc), exc.response.headers)
        if sdk is not None and isinstance(exc, sdk.APIResponseValidationError):
            return Retry(f"malformed response: {exc}")
        if isinstance(exc, ValueError):  # a body that is not JSON, from the SDK's parser
            return Retry(f"malformed response: {type(exc).__name__}: {exc}")
        return exc

    def classify_status(self, status: int, detail: str, headers: Any) -> Retry | BaseException:
        label = f"{self.provider} answered {status}" + (f": {detail}" if detail else "")
        if status in (408, 429, 529) or status >= 500:
            return Retry(label, parse_retry_after(headers), rate_limited=status in (429, 529))
        if status == 401:
            how = (
                f"Check the key in {self.key_env}."
                if self.key_env
                else "Give the server's key with --backbone-option api_key_env=VARIABLE."
            )
            return UserError(f"{self.provider} rejected the API key ({status}: {detail}). {how}")
        if status == 403:
            return UserError(
                f"{self.provider} refused access to model {self.model} ({status}: {detail}). "
                "Check that the key may use this model."
            )
        if status == 404:
            return UserError(
                f"{self.provider} does not know model {self.model!r} at {self.where()} "
                f"({status}: {detail}). Check the model id"
                + (" and --base-url." if self.options.base_url else ".")
            )
        return BackboneError(f"{label} (the request was refused and not retried)")


def error_detail(exc: Any) -> str:
    """The provider's own one-line explanation, from the error body when there is one."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            message = err.get("message")
            kind = err.get("type")
            if message and kind:
                message = f"{kind}: {message}"
        elif isinstance(err, str):
            message = err
    text = str(message or getattr(exc, "message", "") or "")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
