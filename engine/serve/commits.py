"""Group commit: the messages of concurrent requests are recorded in one outbox transaction.

One commit per request made 16 concurrent single-message requests queue on the outbox's write lock
one fsync-sized step at a time. Here a request hands its messages to `CommitGroup.record` and awaits
its turn: while one transaction is being written (in a worker thread), the requests that arrive are
gathered, and the next transaction records all of them. A request is answered only once the
transaction holding its messages has committed, so what is acknowledged is durable, as before; a
lone request waits for nothing but its own write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# The most requests one transaction takes: enough to absorb any burst of single messages, few enough
# that a transaction of batch requests (500 KB each) stays short.
MAX_GROUP = 256


class CommitGroup:
    """Runs `write(groups)` in a thread for the groups gathered meanwhile; each `record` call gets
    its own group's outcome back (or its exception raised), in the order the groups were given."""

    def __init__(self, write: Callable[[list[Any]], list[Any]], max_group: int = MAX_GROUP):
        self._write = write
        self._max_group = max_group
        self._waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, group: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((group, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        # (a request cancelled meanwhile leaves its group here: it is recorded all the same)
        outcome = await future
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _drain(self) -> None:
        taken: list[tuple[Any, asyncio.Future[Any]]] = []
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:  # (no await between this test and the end: no request is left behind)
                taken, self._waiting = self._waiting[:self._max_group], self._waiting[self._max_group:]
                try:
                    # (run_in_executor, not to_thread: no context to copy for a write)
                    outcomes = await loop.run_in_executor(None, self._write, [group for group, _ in taken])
                except Exception as exc:  # the transaction failed: every request in it is refused
                    outcomes = [exc] * len(taken)
                for (_, future), outcome in zip(taken, outcomes, strict=True):
                    if not future.cancelled():
                        future.set_result(outcome)
                taken = []
        except asyncio.CancelledError:  # the server is stopping: no request is left waiting
            for _, future in taken + self._waiting:
                if not future.done():
                    future.set_result(RuntimeError("the server stopped while storing the messages"))
            self._waiting = []
            raise
        finally:
            self._writer = None
