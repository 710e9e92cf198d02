"""BatchWindow: the gate and the fill target that keep `@serve.batch` batches whole.

Driven through Serve's own `@serve.batch` in a plain event loop, the way SolverServer wires it
(a batch function that marks the batch started/finished; rows that enter, pass the gate, set
Serve's knobs and call the batch function)."""

import asyncio

import pytest
from ray import serve
from ray.serve import batching

from bdc_ray.serve.window import BatchWindow


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_lone_client_keeps_serves_own_window():
    w = BatchWindow(32, wait_s=0.05, fill_wait_s=0.25, clock=FakeClock())
    for _ in range(5):
        w.enter()
        assert w.settings() == (32, 0.05)
        w.leave()
    assert w.peak() == 1


def test_the_fill_target_follows_the_recent_peak_and_decays():
    clock = FakeClock()
    w = BatchWindow(32, wait_s=0.05, fill_wait_s=0.25, horizon_s=5.0, clock=clock)
    for _ in range(8):
        w.enter()
    for _ in range(8):
        w.leave()
    clock.t += 1.0
    # 8 rows were in flight together a second ago: the next batch waits to gather 8
    assert w.settings() == (8, 0.25)
    w.enter()
    assert w.settings() == (8, 0.25)
    w.leave()
    clock.t += 10.0  # the peak is older than the horizon: back to Serve's window
    assert w.peak() == 0
    assert w.settings() == (32, 0.05)
    for _ in range(6):
        w.enter()
    clock.t += 30.0  # a batch generating for longer than the horizon...
    for _ in range(6):
        w.leave()
    assert w.settings() == (6, 0.25)  # ...still sets the next batch's target
    clock.t += 10.0
    for _ in range(40):  # never beyond the configured batch size
        w.enter()
    assert w.settings() == (32, 0.25)


def test_slow_batches_stretch_the_horizon():
    clock = FakeClock()
    w = BatchWindow(
        32, wait_s=0.05, fill_wait_s=0.25, horizon_s=5.0, horizon_batches=2, clock=clock
    )
    for _ in range(16):
        w.enter()
    w.batch_started(list(range(16)))
    clock.t += 30.0  # one 30 s batch (a CPU): 16 rows in flight, then none
    w.batch_finished(16)
    for i in range(16):
        w.leave(i)
    clock.t += 20.0  # the next wave comes back 20 s later, after a quiet spell
    w.enter()
    w.batch_started([0])
    # the last 2 batches started 50 s ago: the peak of 16 is still recent on this time scale
    assert w.settings() == (16, 0.25)
    clock.t += 60.0
    w.batch_started([1])
    clock.t += 60.0
    assert w.peak() == 1  # two newer batches and two minutes later, it is not


def test_fill_wait_zero_turns_the_target_off():
    w = BatchWindow(16, wait_s=0.05, fill_wait_s=0.0, clock=FakeClock())
    for _ in range(8):
        w.enter()
    assert w.settings() == (16, 0.05)


@pytest.fixture
def outside_a_replica(monkeypatch):
    """`@serve.batch` outside a deployment: skip its check of the replica's
    max_ongoing_requests, the one thing that needs a replica context."""
    monkeypatch.setattr(
        batching._BatchQueue,
        "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
        lambda self: None,
    )


def make_batcher(window: BatchWindow):
    """SolverServer's wiring around `@serve.batch`, with a generator that waits on an event.
    A new class each time: Serve keeps one batch queue per decorated function, bound to the
    event loop of its first call."""

    class Batcher:
        def __init__(self) -> None:
            self.window = window
            self.batches: list[list[int]] = []
            self.release = asyncio.Event()

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.05)
        async def generate(self, rows: list[int]) -> list[int]:
            self.window.batch_started(rows)
            try:
                self.batches.append(list(rows))
                await self.release.wait()
                return rows
            finally:
                self.window.batch_finished(len(rows))

        async def row(self, i: int) -> int:
            self.window.enter()
            try:
                size, wait = await self.window.admit(i)
                self.generate.set_max_batch_size(size)
                self.generate.set_batch_wait_timeout_s(wait)
                return await self.generate(i)
            finally:
                self.window.leave(i)

    return Batcher()


def test_rows_arriving_while_a_batch_generates_form_one_batch_after_it(outside_a_replica):
    async def main() -> list[list[int]]:
        b = make_batcher(BatchWindow(32, wait_s=0.01, fill_wait_s=0.0))
        first = asyncio.ensure_future(b.row(0))
        while not b.batches:
            await asyncio.sleep(0.001)
        # 12 rows trickle in over ~120 ms while the first batch generates: far longer than
        # Serve's 10 ms window; without the gate they would make several small batches
        later = []
        for i in range(1, 13):
            later.append(asyncio.ensure_future(b.row(i)))
            await asyncio.sleep(0.01)
        assert b.window.inflight == 13 and len(b.batches) == 1
        b.release.set()
        assert await first == 0
        assert await asyncio.gather(*later) == list(range(1, 13))
        return b.batches

    batches = asyncio.run(main())
    assert batches == [[0], list(range(1, 13))]


def test_after_a_full_batch_the_next_one_waits_for_the_stragglers(outside_a_replica):
    async def main() -> list[list[int]]:
        b = make_batcher(BatchWindow(32, wait_s=0.01, fill_wait_s=1.0))
        b.release.set()
        wave = [asyncio.ensure_future(b.row(i)) for i in range(8)]
        await asyncio.gather(*wave)
        # the 8 clients come back 20 ms apart (140 ms in all, 14x Serve's window): the peak
        # of 8 makes the batch wait for all of them, and it closes as soon as it has 8
        t0 = asyncio.get_running_loop().time()
        wave = []
        for i in range(8, 16):
            wave.append(asyncio.ensure_future(b.row(i)))
            await asyncio.sleep(0.02)
        await asyncio.gather(*wave)
        assert asyncio.get_running_loop().time() - t0 < 0.9  # not the full fill wait
        return b.batches

    batches = asyncio.run(main())
    assert batches[-1] == list(range(8, 16))


def test_rows_beyond_the_forming_batch_wait_for_the_next_one(outside_a_replica):
    async def main() -> list[list[int]]:
        b = make_batcher(BatchWindow(32, wait_s=0.01, fill_wait_s=1.0))
        b.release.set()
        await asyncio.gather(*(b.row(i) for i in range(4)))  # 4 clients: the target is 4
        b.release.clear()
        # 6 rows at once: 4 make the batch; 4 and 5 must not form a second batch of their own
        # while it waits to run: they wait at the gate, and the 3 rows arriving while the
        # batch generates join them
        rows = [asyncio.ensure_future(b.row(i)) for i in range(4, 10)]
        while len(b.batches) < 2:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert b.window.pending == 0 and b.window.generating == 4
        rows += [asyncio.ensure_future(b.row(i)) for i in range(10, 13)]
        await asyncio.sleep(0.05)
        assert len(b.batches) == 2
        b.release.set()
        await asyncio.gather(*rows)
        return b.batches

    batches = asyncio.run(main())
    assert batches[1:] == [[4, 5, 6, 7], [8, 9, 10, 11, 12]]


def test_a_row_that_leaves_before_its_batch_does_not_block_the_gate():
    async def main() -> None:
        w = BatchWindow(2, wait_s=0.01, fill_wait_s=0.0)
        for key in ("a", "b"):
            w.enter()
            await w.admit(key)
        assert w.pending == 2  # the forming batch is full: the next row would wait...
        w.leave("b")  # ...but "b" was cancelled before its batch started
        w.enter()
        await asyncio.wait_for(w.admit("c"), 1.0)
        w.batch_started(["a", "c"])
        assert w.pending == 0 and w.generating == 2

    asyncio.run(main())
