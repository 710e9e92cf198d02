"""When a `@serve.batch` batch closes: Serve's two knobs, set per batch from the load.

Serve forms the next batch while the current one generates, and closes it `max_batch_size`
rows or `batch_wait_timeout_s` after its first row, whichever comes first. Under closed-loop
load that splits batches for good: the answers of a batch of 32 go out together, the clients'
next requests come back through the proxy over more than the 50 ms window, the first 7 make a
batch, the other 25 the next one, and each half's clients then return while the other half
generates: batches of a few rows and of the rest alternate, with less throughput than all at once.

:class:`BatchWindow` keeps the batching in Serve and adds two rules:

- **the gate**: a row waits in :meth:`admit` while a batch generates, or while the batch being
  formed already has the rows it is waiting for, and enters Serve's queue when the generator is
  free (it would have waited for it anyway): the next batch holds every row that arrived
  meanwhile, instead of Serve forming it from whichever rows came first and a small one after;
- **the fill target**: once rows have been in flight together (the peak over the last
  `horizon_s` or the last `horizon_batches` batches, whichever is longer: batches take seconds
  on a CPU and milliseconds on a GPU; rows generating, queued and at the gate all count), the
  next batch may wait up to `fill_wait_s` to gather that many rows, and closes as soon as it
  has them. With no such peak
  (a lone client, or the first burst after an idle spell) Serve's own `max_batch_size` and
  `batch_wait_timeout_s` apply unchanged.

Single event loop: every method is called from the replica's loop, never from a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any


class BatchWindow:
    def __init__(
        self,
        max_batch_size: int,
        wait_s: float,
        fill_wait_s: float,
        horizon_s: float = 5.0,
        horizon_batches: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.fill_wait_s = fill_wait_s
        self.horizon_s = horizon_s
        self._batch_starts: deque[float] = deque(maxlen=max(1, horizon_batches))
        self.clock = clock
        self.inflight = 0  # rows between enter() and leave(): at the gate, queued or generating
        self._pending: set[Hashable] = set()  # rows past the gate, not yet in a started batch
        self.generating = 0  # rows in the batch being generated now
        self._peaks: deque[tuple[float, int]] = deque()  # (time, inflight), values decreasing
        self._changed = asyncio.Event()  # set, then replaced, whenever a batch starts or ends
        self._forming: tuple[int, float] | None = None  # knobs of the batch being formed

    # ------------------------------------------------------------------ load
    def enter(self) -> None:
        self.inflight += 1
        self._note()

    def leave(self, key: Hashable = None) -> None:
        """A row is done (answered, failed or cancelled: also if it never reached a batch)."""
        self._pending.discard(key)
        if not self._pending:
            self._forming = None
        self._note()  # the count held until now: a batch that generated for longer than the
        self.inflight -= 1  # horizon still sets the target of the next one

    def _note(self) -> None:
        while self._peaks and self._peaks[-1][1] <= self.inflight:
            self._peaks.pop()  # a later, larger or equal value outlives it in every window
        self._peaks.append((self.clock(), self.inflight))

    def peak(self) -> int:
        """Most rows in flight at once lately (see the module doc; the current count included)."""
        now = self.clock()
        cutoff = now - self.horizon_s
        if len(self._batch_starts) == self._batch_starts.maxlen:
            cutoff = min(cutoff, self._batch_starts[0])
        while self._peaks and self._peaks[0][0] < cutoff:
            self._peaks.popleft()
        return max(self._peaks[0][1] if self._peaks else 0, self.inflight)

    def settings(self) -> tuple[int, float]:
        """(max_batch_size, batch_wait_timeout_s) for the next batch Serve forms."""
        waiting = self.inflight - self.generating
        target = min(self.max_batch_size, max(self.peak(), waiting))
        if target <= 1 or self.fill_wait_s <= 0:
            return self.max_batch_size, self.wait_s
        return target, max(self.wait_s, self.fill_wait_s)

    # ------------------------------------------------------------------ the gate
    @property
    def pending(self) -> int:
        return len(self._pending)

    async def admit(self, key: Hashable) -> tuple[int, float]:
        """Wait until row `key` may enter Serve's queue; returns (max_batch_size,
        batch_wait_timeout_s) to set before it does. The first row past the gate opens the
        next batch and fixes its knobs (Serve reads them then); later rows get the same ones,
        and once that batch has its rows, the rest wait for the one after."""
        while self.generating or (self._forming is not None and self.pending >= self._forming[0]):
            await self._changed.wait()
        if not self._pending:
            self._forming = self.settings()
        self._pending.add(key)
        assert self._forming is not None
        return self._forming

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def batch_started(self, keys: list[Hashable]) -> None:
        self._batch_starts.append(self.clock())
        self._pending.difference_update(keys)
        if not self._pending:
            self._forming = None
        self.generating += len(keys)
        self._wake()

    def batch_finished(self, rows: int) -> None:
        self.generating = max(0, self.generating - rows)
        self._wake()

    def snapshot(self) -> dict[str, Any]:
        size, wait = self.settings()
        return {
            "inflight": self.inflight,
            "pending": self.pending,
            "generating": self.generating,
            "peak": self.peak(),
            "next_max_batch_size": size,
            "next_wait_s": wait,
        }
