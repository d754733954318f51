"""Processes as Linux's ``/proc`` shows them: the one reader used by the worker node and the local cluster.

Standard library only. Fields of ``/proc/<pid>/stat`` per proc(5); the command name (field 2) may hold spaces and
parentheses, so the fixed fields are read after its last ``)``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

ENDED_STATES = ("Z", "X")  # zombie, dead: no longer running anything


class ProcStat(NamedTuple):
    state: str  # R, S, D, Z, ...
    ppid: int
    session: int
    start_ticks: int  # start time in clock ticks since boot: tells a process from a later one with its pid

    @property
    def alive(self) -> bool:
        return self.state not in ENDED_STATES


def proc_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    return ProcStat(rest[0].decode("ascii", "replace"), int(rest[1]), int(rest[3]), int(rest[19]))


def live_processes() -> dict[int, ProcStat] | None:
    """Every live (not zombie) process, by pid, from one pass over /proc; None without /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    out: dict[int, ProcStat] = {}
    for name in names:
        if name.isdigit() and (stat := proc_stat(int(name))) is not None and stat.alive:
            out[int(name)] = stat
    return out
