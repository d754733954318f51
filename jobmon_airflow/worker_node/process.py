"""The command as processes: its process tree (to signal), its stderr tail, its resource usage.

Process model. The command runs as ``/bin/bash -c <command>`` in the worker's own process group, which is the
job's: Grid Engine's ``qdel`` and ``h_rt`` kills signal the job's process group (the addgrp kill that would
catch other groups is off by default), so a command in a group of its own would survive them as an orphan. To
interrupt the command alone (kill request), the worker signals the command's process tree, found through
``/proc``, never the whole group (that holds the job script and the worker too).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import threading
import time

from jobmon_airflow.procfs import live_processes
from jobmon_airflow.records import Usage
from jobmon_airflow.worker_node.outcome import ERROR_MESSAGE_CHARS

_TAIL_BYTES = 4 * ERROR_MESSAGE_CHARS  # enough bytes for 10,000 characters of any UTF-8 text


class CommandTree:
    """Signals a command and all its descendants, including ones orphaned since they were first seen."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self._proc = proc
        self._seen: dict[int, int] = {}  # pid -> start time (clock ticks), so a reused pid is never signalled

    def alive(self) -> dict[int, int]:
        """The live processes of the tree: pid -> start time; empty without /proc."""
        table = live_processes()
        if table is None:
            return {}
        found: dict[int, int] = {}
        for pid, start in self._seen.items():
            stat = table.get(pid)
            if stat is not None and stat.start_ticks == start:
                found[pid] = start
        if self._proc.poll() is None and self._proc.pid in table:
            children: dict[int, list[int]] = {}
            for pid, stat in table.items():
                children.setdefault(stat.ppid, []).append(pid)
            stack = [self._proc.pid]
            while stack:
                pid = stack.pop()
                found[pid] = table[pid].start_ticks
                stack.extend(children.get(pid, ()))
        self._seen.update(found)
        return found

    def signal(self, signum: int) -> None:
        pids = list(self.alive())
        if not pids and self._proc.poll() is None:  # no /proc: the command's shell is all we can reach
            pids = [self._proc.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def wait_gone(self, deadline: float) -> bool:
        """Wait until the command and every descendant have exited, or ``deadline`` (monotonic) passes."""
        while True:
            if self._proc.poll() is not None and not self.alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


class StderrTail(threading.Thread):
    """Copies the command's stderr to the worker's (the job's .e file) and keeps its last bytes."""

    def __init__(self, fd: int):
        super().__init__(name="stderr-tail", daemon=True)
        self._fd = fd
        self._buf = bytearray()
        self._lock = threading.Lock()

    def run(self) -> None:
        while chunk := os.read(self._fd, 65536):
            try:
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
            except (OSError, ValueError):
                pass  # our own stderr is gone; keep collecting the tail anyway
            with self._lock:
                self._buf += chunk
                del self._buf[:-_TAIL_BYTES]

    def text(self) -> str:
        with self._lock:
            data = bytes(self._buf)
        return data.decode("utf-8", "replace")[-ERROR_MESSAGE_CHARS:]


def child_usage(wallclock: float) -> Usage:
    """Usage of the command, once waited for.

    Linux counts the RSS of the worker at the command's fork/exec in the children's max RSS, so a tiny command
    shows the worker's RSS (about 20 MB); for real tasks the command's own peak dominates.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Usage(
        maxrss_bytes=usage.ru_maxrss * 1024,  # Linux reports kilobytes
        wallclock_s=round(wallclock, 3),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
    )
