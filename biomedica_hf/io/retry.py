"""Retrying HTTP politely: one backoff schedule (exponential, capped, jittered, ``Retry-After`` honoured),
the ``Retry-After`` parser, and a thread-safe rate limiter shared by the threads of one client.

Used by the package downloader (``ingest/download.py``), the E-utilities client (``dataset/enrich.py``)
and the shard range reader (``io/ranges.py``).
"""
from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Wait before retry ``attempt`` (0 = the first retry): ``min(cap, base * 2**attempt)`` stretched by a
    uniform ``1 .. 1 + jitter`` (threads that failed together do not retry together); a server's
    ``Retry-After`` is waited when longer, up to ``max_retry_after`` seconds."""

    base: float = 0.5
    cap: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None,
              rand: Callable[[], float] = random.random) -> float:
        d = min(self.cap, self.base * (2 ** attempt)) * (1.0 + self.jitter * rand())
        if retry_after is not None:
            d = max(d, min(retry_after, self.max_retry_after))
        return d


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class RateLimiter:
    """Thread-safe token bucket (GCRA form): at most ``rate_per_s`` acquisitions per second on average.

    With ``burst=1`` (default) acquisitions are spaced by at least ``1/rate_per_s`` seconds, so no
    one-second window ever holds more than ``rate_per_s`` of them.
    """

    def __init__(self, rate_per_s: float, burst: int = 1, clock=time.monotonic, sleep=time.sleep):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate = float(rate_per_s)
        self.interval = 1.0 / rate_per_s
        self.tolerance = (burst - 1) * self.interval
        self._tat = 0.0  # theoretical arrival time of the next request
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def acquire(self) -> float:
        """Block until a request may start; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            tat = max(self._tat, now)
            wait = max(0.0, tat - self.tolerance - now)
            self._tat = tat + self.interval
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` from now (server asked us to slow down)."""
        with self._lock:
            self._tat = max(self._tat, self._clock() + seconds)


__all__ = ["Backoff", "RateLimiter", "parse_retry_after"]
