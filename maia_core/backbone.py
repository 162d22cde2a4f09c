"""The backbone interface: a (vision-)language model that answers a transcript."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from maia_core.files import slug
from maia_core.transcript import Message


@dataclass
class Usage:
    """Tokens as the provider reports them, and their estimated cost (None when unknown)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None
            if self.cost_usd is None and other.cost_usd is None
            else (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        )
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens, cost
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reply:
    text: str
    usage: Usage = field(default_factory=Usage)
    model: str | None = None


class Backbone(ABC):
    """Answers the neutral transcript. Lives in the main process, which holds the API keys.

    Implementations translate :class:`~maia_core.transcript.Message` lists to their provider's
    format, retry what is worth retrying, and raise :class:`~maia_core.errors.BackboneError`
    when they give up, or :class:`~maia_core.errors.UserError` for problems the user must fix
    (a missing or rejected key).
    """

    #: the spec the user gave (``claude:claude-sonnet-4-5``); set by the factory
    name: str = ""

    @property
    def slug(self) -> str:
        """The folder name for this backbone's results."""
        return slug(self.name)

    @abstractmethod
    def complete(self, messages: list[Message]) -> Reply:
        """Answer the conversation so far with the next assistant turn."""

    def close(self) -> None:
        pass
