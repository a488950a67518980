"""Client-side rate limits: stay under every published window of an endpoint, honour Retry-After.

An API that limits an account to N requests per fixed window (e.g. a 1-second burst window
and a 1-minute steady window per endpoint) answers 429 beyond that. The limiter here keeps a log of the
times requests were sent and allows one only if every window, measured as a *sliding* window, holds
fewer than N: a sequence that fits every sliding window also fits every fixed one, whatever their
alignment. Each window is lengthened by a margin (a fraction, from the mapping set) because the
server counts arrival times and the client send times. A 429's Retry-After pauses the whole
endpoint, not just the request that got it.

`time_scale` shortens every window (and Retry-After) by that factor, to match a fake server that
runs its clock faster so that tests can exercise the limits in seconds.

`share` (0 < share <= 1): this limiter may use only that part of each window's limit, rounded down
(at least one): a worker that delivers m of a split lane's K partitions keeps to m/K of the lane's
limits, so the workers together keep to the whole (partitions.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence

from .config import RateWindow


class RateLimiter:
    def __init__(self, windows: Sequence[RateWindow], margin: float = 0.0, time_scale: float = 1.0):
        self.windows = [(w.limit, w.seconds * (1.0 + margin) / time_scale) for w in windows if w.limit > 0]
        self.time_scale = time_scale
        size = max((limit for limit, _ in self.windows), default=0)
        self._sent: deque[float] = deque(maxlen=size or 1)
        self._paused_until = 0.0
        self._active = list(self.windows)  # (limit, span) at the current share
        self.share = 1.0

    def set_share(self, share: float) -> None:
        """Keep to this part of every window's limit from now on (see the module docstring)."""
        self.share = min(max(share, 0.0), 1.0)
        # (a tiny epsilon: 150 × 2/6 is 50, not 49.999…)
        self._active = [(max(1, int(limit * self.share + 1e-9)), span) for limit, span in self.windows]

    @property
    def limits(self) -> list[int]:
        """Each window's limit at the current share (as many as the endpoint's published windows)."""
        return [limit for limit, _ in self._active]

    def delay(self, now: float | None = None) -> float:
        """Seconds to wait before the next request may go (0 when it may go now)."""
        now = time.monotonic() if now is None else now
        wait = self._paused_until - now
        sent = self._sent
        for limit, span in self._active:
            if len(sent) >= limit:
                wait = max(wait, sent[-limit] + span - now)
        return max(wait, 0.0)

    def record(self, now: float | None = None) -> None:
        if self.windows:
            self._sent.append(time.monotonic() if now is None else now)

    def pause(self, api_seconds: float, now: float | None = None) -> None:
        """No request for `api_seconds` (a Retry-After, in the API's time)."""
        now = time.monotonic() if now is None else now
        self._paused_until = max(self._paused_until, now + api_seconds / self.time_scale)

    async def acquire(self) -> None:
        """Wait until a request may go, and count it."""
        while True:
            wait = self.delay()
            if wait <= 0:
                self.record()
                return
            await asyncio.sleep(wait)
