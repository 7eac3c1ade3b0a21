"""Step timeouts: asyncio.timeout's behaviour, one loop timer for all steps."""

from __future__ import annotations

import asyncio

import pytest

from eclflow.engine import deadline

# The loop's clock is looptime's: it jumps to the next timer instead of sleeping, so the times
# below are exact whatever the machine's load (they were real seconds and failed under load).
pytestmark = pytest.mark.looptime


async def test_blocks_over_their_timeout_raise_timeout_error_and_the_others_finish() -> None:
    loop = asyncio.get_running_loop()

    async def block(seconds: float, sleep: float) -> tuple[str, float]:
        t0 = loop.time()
        try:
            async with deadline.timeout(seconds):
                await asyncio.sleep(sleep)
        except TimeoutError:
            return "timeout", loop.time() - t0
        return "done", loop.time() - t0

    outcomes = await asyncio.gather(
        *(block(0.2, 0.05) for _ in range(50)),
        *(block(0.05, 1.0) for _ in range(50)),
        *(block(0.1, 1.0) for _ in range(50)),
        block(0.3, 0.1),
    )
    assert [o for o, _ in outcomes] == ["done"] * 50 + ["timeout"] * 100 + ["done"]
    # each timed-out block ended at its own deadline, not at another timeout's
    assert all(t == pytest.approx(0.05, abs=2e-3) for _, t in outcomes[50:100])
    assert all(t == pytest.approx(0.1, abs=2e-3) for _, t in outcomes[100:150])
    # nothing is left waiting once every block has ended
    assert all(not q for q in deadline._by_loop[loop]._queues.values())


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def block() -> None:
        async with deadline.timeout(5):
            await asyncio.sleep(5)

    task = asyncio.create_task(block())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_goes_on_normally_after_a_timed_out_block() -> None:
    async def two_blocks() -> str:
        with pytest.raises(TimeoutError):
            async with deadline.timeout(0.01):
                await asyncio.sleep(1)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        async with deadline.timeout(1):
            await asyncio.sleep(0.02)  # not cut short by the first block's cancellation
        return "finished"

    assert await two_blocks() == "finished"


async def test_no_timeout_means_none() -> None:
    async with deadline.timeout(None):
        await asyncio.sleep(0.01)


def test_a_finished_event_loop_is_not_kept_alive() -> None:
    import gc
    import weakref

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with deadline.timeout(60):  # its timer would still be pending when the loop ends
            await asyncio.sleep(0)

    asyncio.run(main())
    gc.collect()
    assert loops[0]() is None


async def test_time_spent_suspended_does_not_count() -> None:
    loop = asyncio.get_running_loop()

    async def block(before: float, waiting: float, after: float) -> tuple[str, float]:
        t0 = loop.time()
        try:
            async with deadline.timeout(0.3):
                await asyncio.sleep(before)
                async with deadline.suspended():
                    await asyncio.sleep(waiting)
                await asyncio.sleep(after)
        except TimeoutError:
            return "timeout", loop.time() - t0
        return "done", loop.time() - t0

    outcomes = await asyncio.gather(
        block(0.1, 0.5, 0.1),  # 0.2 s its own: done, after 0.7 s
        block(0.2, 0.5, 0.2),  # 0.4 s its own: timed out 0.1 s after the wait
        block(0.0, 0.0, 0.5),  # an ordinary one beside them
    )
    assert [o for o, _ in outcomes] == ["done", "timeout", "timeout"]
    assert outcomes[0][1] == pytest.approx(0.7, abs=2e-3)
    assert outcomes[1][1] == pytest.approx(0.8, abs=2e-3)  # 0.2 + 0.5 + the 0.1 s left
    assert outcomes[2][1] == pytest.approx(0.3, abs=2e-3)
    # outside a timeout it does nothing
    async with deadline.suspended():
        await asyncio.sleep(0)


async def test_the_clock_runs_while_any_call_of_the_block_has_its_turn() -> None:
    """Two calls at once in one step: the second waited (clock stopped) while the first, the
    step's own work, ran with no deadline at all."""
    loop = asyncio.get_running_loop()
    turn = asyncio.Lock()  # a model that answers one call at a time

    async def call(seconds: float) -> None:
        async with deadline.suspended():
            await turn.acquire()
        try:
            async with deadline.working():
                await asyncio.sleep(seconds)
        finally:
            turn.release()

    t0 = loop.time()
    with pytest.raises(TimeoutError):
        async with deadline.timeout(0.5):
            await asyncio.gather(call(2.0), call(0.1))
    assert loop.time() - t0 == pytest.approx(0.5, abs=2e-3)
    # a call waiting for another block's: only its own call counts
    await turn.acquire()
    loop.call_later(0.6, turn.release)
    async with deadline.timeout(0.5):
        await call(0.1)
    assert loop.time() - t0 == pytest.approx(0.5 + 0.6 + 0.1, abs=2e-3)
    assert not turn.locked()
