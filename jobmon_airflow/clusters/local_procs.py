"""The process trees of the ``local`` cluster's jobs, as execd sees them: alive, members, memory, kill, and the
set-up of a job's leader (memory limit, default signals, death with its shepherd). Standard library only."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jobmon_airflow.procfs import live_processes, proc_stat

_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1
_DEFAULT_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def is_alive(pid: int, start_ticks: int | None) -> bool:
    """The process exists, is the same one (start time guards against pid reuse) and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and start_ticks in (None, stat.start_ticks) and stat.alive


def session_members(sessions: Iterable[int]) -> dict[int, list[int]]:
    """Live (non-zombie) pids of each session, from one pass over /proc.

    The job's leader starts a new session; its descendants stay in it even when they change process group, so
    the session is the job's process tree (Grid Engine tracks an additional group id for the same reason).
    """
    wanted = set(sessions)
    members: dict[int, list[int]] = {sid: [] for sid in wanted}
    if wanted:
        for pid, stat in (live_processes() or {}).items():
            if stat.session in wanted:
                members[stat.session].append(pid)
    return members


def memory_usage(pids: Iterable[int]) -> tuple[int, int]:
    """Summed (virtual, resident) bytes; ``statm`` gives VmSize and VmRSS of ``status`` in pages, cheaper to parse."""
    vmem = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                size, resident = f.read().split()[:2]
        except (OSError, ValueError):
            continue  # ended between the scan and now
        vmem += int(size) * _PAGE
        rss += int(resident) * _PAGE
    return vmem, rss


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def kill_sessions(leaders: Mapping[int, int]) -> None:
    """SIGKILL every process of the sessions led by ``{leader pid: leader start ticks}``.

    A session whose leader pid now belongs to another process (different start time) is not ours and is skipped.
    """
    ours = [sid for sid, ticks in leaders.items() if (stat := proc_stat(sid)) is None or stat.start_ticks == ticks]
    for sid, pids in session_members(ours).items():
        kill_pids(pids)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)


def child_setup(memory_bytes: int) -> Callable[[], None]:
    """preexec_fn of the job's leader: execd's h_vmem as RLIMIT_AS, and die with the shepherd."""
    try:
        prctl: Any = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: no loading in the child
    except (OSError, AttributeError):
        prctl = None

    def setup() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for sig in _DEFAULT_SIGNALS:  # an ignored SIGHUP (nohup'd Airflow worker) would survive exec
            signal.signal(sig, signal.SIG_DFL)
        if prctl is not None:
            # A SIGKILLed shepherd cannot kill its job; the leader at least goes with it (descendants may not).
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return setup
