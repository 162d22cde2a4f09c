"""One rate limiter per backbone, shared by every investigation in flight.

- ``max_concurrent_requests``: requests in flight at once;
- ``requests_per_minute`` and ``tokens_per_minute``: sliding one-minute windows;
- a rate-limit answer (429, 529) pauses *every* investigation on the backbone for the wait the
  provider asked for (or the backoff), not only the one that got it: otherwise the others keep
  hammering a provider that already said stop.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator


class RateLimiter:
    def __init__(
        self,
        max_concurrent: int | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        clock=time.monotonic,
        sleep=time.sleep,
    ):
        self.max_concurrent = max_concurrent
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._clock, self._sleep = clock, sleep
        self._cond = threading.Condition()
        self._in_flight = 0
        self._requests: collections.deque[float] = collections.deque()
        self._tokens: collections.deque[tuple[float, int]] = collections.deque()
        self.paused_until = 0.0
        self.pauses = 0

    def _wait_time(self, now: float, tokens: int) -> float:
        """Seconds until a request of ``tokens`` may go; 0 when it may go now."""
        waits = [self.paused_until - now]
        window = now - 60.0
        while self._requests and self._requests[0] <= window:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= window:
            self._tokens.popleft()
        if self.rpm is not None and len(self._requests) >= self.rpm:
            waits.append(self._requests[0] + 60.0 - now)
        if self.tpm is not None and self._tokens:
            used = sum(n for _, n in self._tokens)
            if used + tokens > self.tpm:
                # Wait until enough of the window has expired (all of it, at worst).
                freed, at = 0, self._tokens[-1][0]
                for t, n in self._tokens:
                    freed += n
                    if used - freed + tokens <= self.tpm:
                        at = t
                        break
                waits.append(at + 60.0 - now)
        return max(0.0, *waits)

    @contextlib.contextmanager
    def slot(self, tokens: int = 0) -> Iterator[None]:
        """Hold a place for one request (of about ``tokens`` tokens) while it is in flight."""
        with self._cond:
            while True:
                now = self._clock()
                wait = self._wait_time(now, tokens)
                busy = self.max_concurrent is not None and self._in_flight >= self.max_concurrent
                if wait <= 0 and not busy:
                    break
                self._cond.wait(timeout=wait if wait > 0 else 0.5)
            self._in_flight += 1
            self._requests.append(self._clock())
            if tokens:
                self._tokens.append((self._clock(), tokens))
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def record(self, tokens: int) -> None:
        """Tokens a request used beyond its estimate (the provider's count)."""
        if tokens > 0:
            with self._cond:
                self._tokens.append((self._clock(), tokens))

    def pause(self, seconds: float) -> None:
        """The provider asked to slow down: nobody sends for ``seconds``."""
        with self._cond:
            until = self._clock() + max(0.0, seconds)
            if until > self.paused_until:
                self.paused_until = until
                self.pauses += 1
            self._cond.notify_all()
