"""Retrying backbone calls: exponential backoff with jitter, honouring Retry-After.

Provider-neutral: each backbone classifies its SDK's exceptions into :class:`Retry` (worth
another attempt) or an exception to raise now (a :class:`~maia_core.errors.UserError` for a
rejected key, a :class:`~maia_core.errors.BackboneError` for a request the provider refused).
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from maia_core.errors import BackboneError

log = logging.getLogger("maia.backbone")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``attempts`` counts every try, the first included. The n-th retry waits a random time
    between half and all of ``base_delay * 2**(n-1)``, capped at ``max_delay``; jitter keeps
    many workers that hit a rate limit together from retrying together. A server's
    Retry-After wins over the backoff, up to ``max_retry_after``.
    """

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 600.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        step = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return rng.uniform(step / 2, step)


@dataclass(frozen=True)
class Retry:
    """A failed attempt worth repeating: why, and how long the server asked us to wait."""

    reason: str
    after: float | None = None
    # The provider said to slow down (429, 529): every request on the backbone should wait.
    rate_limited: bool = False


Classifier = Callable[[Exception], "Retry | BaseException"]


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``retry-after`` as seconds or an HTTP date."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def call_with_retries(
    fn: Callable[[], T],
    classify: Classifier,
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[Retry, float], None] | None = None,
) -> T:
    """``fn()``, retried as ``classify`` and ``policy`` say.

    Raises what ``classify`` returns for errors not worth retrying, and a
    :class:`BackboneError` naming the last error once the attempts are spent. ``on_retry``
    hears of every retry and its wait (a shared rate limiter pauses everyone on a 429).
    """
    rng = rng or random.Random()
    attempts = max(1, policy.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            verdict = classify(exc)
            if not isinstance(verdict, Retry):
                raise verdict from exc
            if attempt == attempts:
                raise BackboneError(
                    f"{what} failed after {attempts} attempt(s); last error: {verdict.reason}"
                ) from exc
            wait = policy.delay(attempt, verdict.after, rng)
            log.warning(
                "maia: %s: %s; retrying in %.1f s (attempt %d of %d)",
                what,
                verdict.reason,
                wait,
                attempt + 1,
                attempts,
            )
            if on_retry is not None:
                on_retry(verdict, wait)
            sleep(wait)
    raise AssertionError("unreachable")
