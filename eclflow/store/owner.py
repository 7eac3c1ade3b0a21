"""Which process holds a running run, and whether it is still there.

A run's metadata names the process that runs it (`pid`, `host`, and on Linux `started`, the
process's start time in clock ticks since boot), and says `released` when that process stopped
running it without ending it (a run cancelled in a process that goes on). A pid alone is not
enough: after a reboot or a long time another process may have it, and a run that died would
look alive for ever. With the start time, the pid must also be the same process. On Linux the
metadata also names the process's pid namespace (`pidns`): containers that share a host name
(host networking) number their processes apart, so a pid there says nothing here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Literal

Holder = Literal["alive", "gone", "unknown"]


def this_process() -> dict[str, Any]:
    """The metadata fields that name this process as a run's holder (read once per process:
    every run writes them)."""
    pid = os.getpid()
    if _mine.get("pid") != pid:  # first call, or a forked child
        _mine.clear()
        _mine.update(pid=pid, host=socket.gethostname())
        started = _start_ticks(pid)
        if started is not None:
            _mine["started"] = started
        namespace = _pid_namespace()
        if namespace is not None:
            _mine["pidns"] = namespace
    return dict(_mine)


_mine: dict[str, Any] = {}


def holder(meta: Mapping[str, Any]) -> Holder:
    """Whether the process named in a running run's metadata is still running: `unknown` when
    it is on another host (or the run is Restate's, whose workers hold no run), `alive` for this
    very process."""
    pid = meta.get("pid")
    if meta.get("released"):  # its process stopped running it (cancelled) and said so
        return "gone"
    if meta.get("engine") == "restate" or not isinstance(pid, int):
        return "unknown"
    if meta.get("host") not in (None, socket.gethostname()):
        return "unknown"
    if meta.get("pidns") not in (None, _pid_namespace()):  # another container of this host
        return "unknown"
    if pid == os.getpid():
        return "alive"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return "unknown"
    stat = _stat(pid)
    if stat is not None:
        state, now = stat
        if state == "Z":  # ended, not yet reaped by its parent
            return "gone"
        started = meta.get("started")
        if isinstance(started, int) and now != started:
            return "gone"  # the pid was given to another process since
    return "alive"


def shown_state(state: str, meta: Mapping[str, Any]) -> str:
    """A run's state as a person should see it: `interrupted` for one still recorded running
    (or pending: claimed by a batch) whose process has ended, so that nothing will finish it
    but `eclflow resume`."""
    if state in ("running", "pending") and holder(meta) == "gone":
        return "interrupted"
    return state


def held_elsewhere(meta: Mapping[str, Any]) -> bool:
    """True when another process that is still running holds the run."""
    return meta.get("pid") != os.getpid() and holder(meta) == "alive"


def _pid_namespace() -> str | None:
    """This process's pid namespace (`pid:[4026531836]`, Linux), None where there is none."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time from /proc (Linux), None where there is no /proc."""
    stat = _stat(pid)
    return stat[1] if stat is not None else None


def _stat(pid: int) -> tuple[str, int] | None:
    """The process's state letter and start time from /proc/PID/stat (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # the command name (field 2) may hold spaces and parentheses: count from the last ')'
        fields = stat[stat.rindex(b")") + 2 :].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None
