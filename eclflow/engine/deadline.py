"""Step timeouts that stay cheap with thousands of steps in flight.

`asyncio.timeout` puts a timer per step into the event loop's heap and takes it out again when
the step ends. Steps with the same timeout expire in the order they started, so here each
timeout value keeps a first-in, first-out queue, and one loop timer waits for the earliest
unfinished step. Semantics are asyncio.timeout's: the task is cancelled at the deadline and the
block raises TimeoutError.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from types import TracebackType
from typing import Any
from weakref import WeakKeyDictionary

# How early a deadline may be taken as reached: the loop's own timers fire up to its clock
# resolution early, and re-arming for a nanosecond would only spin.
_SLACK = 1e-3


class _Watch:
    __slots__ = ("deadline", "expired", "running", "task")

    def __init__(self, deadline: float, task: asyncio.Task[Any]) -> None:
        self.deadline = deadline
        self.task: asyncio.Task[Any] | None = task
        self.running = True
        self.expired = False


class _Deadlines:
    """The running steps of one event loop that have a timeout, by timeout value."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, deque[_Watch]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def watch(self, seconds: float, task: asyncio.Task[Any]) -> _Watch:
        w = _Watch(self._loop.time() + seconds, task)
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = deque()
        queue.append(w)
        if w.deadline < self._timer_at:
            self._arm(w.deadline)
        return w

    def release(self, seconds: float, w: _Watch) -> None:
        w.running = False
        w.task = None
        queue = self._queues[seconds]
        while queue and not queue[0].running:
            queue.popleft()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time() + _SLACK
        earliest = math.inf
        for queue in self._queues.values():
            while queue:
                w = queue[0]
                if w.running and w.deadline > now:
                    earliest = min(earliest, w.deadline)
                    break
                queue.popleft()
                if w.running and w.task is not None:
                    w.expired = True
                    w.task.cancel()
        if earliest < math.inf:
            self._arm(earliest)


_by_loop: WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = WeakKeyDictionary()


def timeout(seconds: float | None) -> _Timeout:
    """`async with timeout(seconds):` like `asyncio.timeout`, for a fixed delay (None: none)."""
    return _Timeout(seconds)


class _Timeout:
    __slots__ = ("_cancelling", "_deadlines", "_seconds", "_watch")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._watch: _Watch | None = None

    async def __aenter__(self) -> _Timeout:
        if self._seconds is None:
            return self
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("timeout() should be used inside a task")
        loop = task.get_loop()
        deadlines = _by_loop.get(loop)
        if deadlines is None:
            deadlines = _by_loop[loop] = _Deadlines(loop)
        self._deadlines = deadlines
        self._cancelling = task.cancelling()
        self._watch = deadlines.watch(self._seconds, task)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        w = self._watch
        if w is None or self._seconds is None:
            return
        task = w.task
        self._deadlines.release(self._seconds, w)
        # an expired watch cancelled the task once: take that back, and unless somebody else
        # asked for a cancellation meanwhile, the block timed out
        if (
            w.expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
