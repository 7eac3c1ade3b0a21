"""Step timeouts that stay cheap with thousands of steps in flight.

`asyncio.timeout` puts a timer per step into the event loop's heap and takes it out again when
the step ends. Steps with the same timeout expire in the order they started, so here each
timeout value keeps a first-in, first-out queue, and one loop timer waits for the earliest
unfinished step. Semantics are asyncio.timeout's: the task is cancelled at the deadline and the
block raises TimeoutError.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any
from weakref import WeakKeyDictionary, ref

# How early a deadline may be taken as reached: the loop's own timers fire up to its clock
# resolution early, and re-arming for a nanosecond would only spin.
_SLACK = 1e-3


class _Watch:
    __slots__ = ("deadline", "expired", "handle", "running", "seconds", "task")

    def __init__(self, seconds: float, deadline: float, task: asyncio.Task[Any]) -> None:
        self.seconds = seconds
        self.deadline = deadline
        self.task: asyncio.Task[Any] | None = task
        self.running = True
        self.expired = False
        self.handle: asyncio.TimerHandle | None = None  # a timer of its own (`watch_alone`)

    def expire(self) -> None:
        if self.running and self.task is not None:
            self.expired = True
            self.task.cancel()


class _Deadlines:
    """The running steps of one event loop that have a timeout, by timeout value.

    It is the loop's value in a weak-keyed mapping, so it keeps no reference to the loop: the
    timers it arms are only in the loop's own schedule, and one that is no longer needed fires
    and finds nothing to do (cheaper than cancelling it)."""

    def __init__(self) -> None:
        self._queues: dict[float, deque[_Watch]] = {}
        self._armed: list[float] = []  # a heap: when the timers already scheduled fire

    def watch(
        self, seconds: float, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop
    ) -> _Watch:
        w = _Watch(seconds, loop.time() + seconds, task)
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = deque()
        queue.append(w)
        if not self._armed or w.deadline < self._armed[0]:
            self._arm(loop, w.deadline)
        return w

    def watch_alone(
        self, seconds: float, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop
    ) -> _Watch:
        """A watch with a timer of its own: one resumed after a pause (`suspended`) is not in
        the order of its queue, which expires in the order the steps started."""
        w = _Watch(seconds, loop.time() + seconds, task)
        w.handle = loop.call_at(w.deadline, w.expire)
        return w

    def release(self, w: _Watch) -> None:
        w.running = False
        w.task = None
        if w.handle is not None:
            w.handle.cancel()
            return
        queue = self._queues[w.seconds]
        while queue and not queue[0].running:
            queue.popleft()

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        heapq.heappush(self._armed, when)
        loop.call_at(when, self._expire)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time() + _SLACK
        while self._armed and self._armed[0] <= now:
            heapq.heappop(self._armed)
        earliest = math.inf
        for queue in self._queues.values():
            while queue:
                w = queue[0]
                if w.running and w.deadline > now:
                    earliest = min(earliest, w.deadline)
                    break
                queue.popleft()
                w.expire()
        if earliest < math.inf and (not self._armed or earliest < self._armed[0]):
            self._arm(loop, earliest)


_by_loop: WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = WeakKeyDictionary()
_last: tuple[ref[asyncio.AbstractEventLoop], _Deadlines] | None = None


def _deadlines(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    """The loop's deadlines; the last loop's without a lookup (a weak-keyed lookup makes a
    weak reference every time)."""
    global _last
    last = _last
    if last is not None and last[0]() is loop:
        return last[1]
    deadlines = _by_loop.get(loop)
    if deadlines is None:
        deadlines = _by_loop[loop] = _Deadlines()
    _last = (ref(loop), deadlines)
    return deadlines


def timeout(seconds: float | None) -> _Timeout:
    """`async with timeout(seconds):` like `asyncio.timeout`, for a fixed delay (None: none)."""
    return _Timeout(seconds)


_current: ContextVar[_Timeout | None] = ContextVar("eclflow_step_timeout", default=None)


def suspended() -> AbstractAsyncContextManager[None]:
    """Inside `timeout()`: while the block's calls all wait in here (for a model that answers
    one call at a time and is busy with another step's), its clock stops."""
    return _counted("_waiting")


def working() -> AbstractAsyncContextManager[None]:
    """Inside `timeout()`: a call that has its turn. While one does, the clock runs, even if
    other calls of the block wait in `suspended()`."""
    return _counted("_working")


@asynccontextmanager
async def _counted(counter: str) -> AsyncIterator[None]:
    t = _current.get()
    if t is None or t._watch is None:
        yield
        return
    setattr(t, counter, getattr(t, counter) + 1)
    t._settle()
    try:
        yield
    finally:
        setattr(t, counter, getattr(t, counter) - 1)
        t._settle()


class _Timeout:
    __slots__ = (
        "_cancelling",
        "_deadlines",
        "_remaining",
        "_seconds",
        "_task",
        "_token",
        "_waiting",
        "_watch",
        "_working",
    )

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
        self._deadlines = _deadlines(loop)
        self._cancelling = task.cancelling()
        self._watch = self._deadlines.watch(self._seconds, task, loop)
        self._task = task
        self._waiting = self._working = 0
        self._token = _current.set(self)
        return self

    @property
    def expired(self) -> bool:
        """Whether the block ran out of time (rather than something in it raising
        TimeoutError of its own)."""
        return self._watch is not None and self._watch.expired

    def _settle(self) -> None:
        """Stop the clock when every call of the block waits (`suspended`), start it again with
        the time that was left when one does not."""
        w = self._watch
        if w is None:
            return
        stop = self._waiting > 0 and self._working == 0
        if stop and w.running and not w.expired:
            self._remaining = max(w.deadline - self._task.get_loop().time(), 0.0)
            self._deadlines.release(w)
        elif not stop and not w.running:
            loop = self._task.get_loop()
            self._watch = self._deadlines.watch_alone(self._remaining, self._task, loop)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        w = self._watch
        if w is None:
            return
        _current.reset(self._token)
        task = self._task
        self._deadlines.release(w)
        # an expired watch cancelled the task once: take that back, and unless somebody else
        # asked for a cancellation meanwhile, the block timed out
        if (
            w.expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
