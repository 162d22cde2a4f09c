"""The backbone interface: a (vision-)language model that answers a transcript."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from maia_core.files import slug
from maia_core.providers.pricing import PriceTable
from maia_core.transcript import Message


@dataclass
class Usage:
    """Tokens as the provider reports them, and their estimated cost (None when unknown).

    ``input_tokens`` is every prompt token, cached ones included; ``cache_read_tokens`` and
    ``cache_write_tokens`` say how many of them the provider's prompt cache served or stored.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None
            if self.cost_usd is None and other.cost_usd is None
            else (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        )
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            cost,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reply:
    text: str
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    # Bookkeeping the loop stores with the assistant message, e.g. what context fitting dropped.
    meta: dict[str, Any] = field(default_factory=dict)


class Backbone(ABC):
    """Answers the neutral transcript. Lives in the main process, which holds the API keys.

    Implementations translate :class:`~maia_core.transcript.Message` lists to their provider's
    format, retry what is worth retrying, and raise :class:`~maia_core.errors.BackboneError`
    when they give up, or :class:`~maia_core.errors.UserError` for problems the user must fix
    (a missing or rejected key).
    """

    #: the spec the user gave (``claude:claude-sonnet-4-5``); set by the factory
    name: str = ""
    #: the model id sent to the provider, when there is one
    model: str | None = None
    #: the price table costs are estimated with; ``maia run`` sets it from ``--price-file``
    prices: PriceTable | None = None
    #: whether it can answer a request for text2image prompts (reflection's predictions,
    #: evaluation); a scripted backbone (the baseline, a replay) cannot
    writes_prompts: bool = True

    @property
    def slug(self) -> str:
        """The folder name for this backbone's results."""
        return slug(self.name)

    @abstractmethod
    def complete(self, messages: list[Message]) -> Reply:
        """Answer the conversation so far with the next assistant turn."""

    def price_known(self) -> bool:
        """Whether this backbone's calls get a cost estimate (``--budget-usd`` needs one)."""
        return True

    def close(self) -> None:
        pass
