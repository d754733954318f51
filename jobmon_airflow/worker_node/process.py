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
import select
import subprocess
import sys
import time

from jobmon_airflow.worker_node.outcome import ERROR_MESSAGE_CHARS, UsageDict

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy and ruff read the name)
if TYPE_CHECKING:
    from collections.abc import Callable

_TAIL_BYTES = 4 * ERROR_MESSAGE_CHARS  # enough bytes for 10,000 characters of any UTF-8 text


class CommandTree:
    """Signals a command and all its descendants, including ones orphaned since they were first seen."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self._proc = proc
        self._seen: dict[int, int] = {}  # pid -> start time (clock ticks), so a reused pid is never signalled

    def alive(self) -> dict[int, int]:
        """The live processes of the tree: pid -> start time; empty without /proc."""
        from jobmon_airflow.procfs import live_processes  # only signals need it: not imported by a plain run

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

    def wait_gone(self, deadline: float, pause: Callable[[float], object] = time.sleep) -> bool:
        """Wait until the command and every descendant have exited, or ``deadline`` (monotonic) passes; between
        looks, ``pause(0.05)`` (:meth:`RunningCommand.pump` keeps the stderr pipe from filling up meanwhile)."""
        while True:
            if self._proc.poll() is not None and not self.alive():
                return True
            if time.monotonic() >= deadline:
                return False
            pause(0.05)


class StderrTail:
    """Copies the command's stderr to the worker's (the job's .e file) and keeps its last bytes: read by
    :class:`RunningCommand` in the worker's one thread (a thread would cost the wrapper a malloc arena, 64 MiB of
    VmSize counted against the job's h_vmem, or ``ctypes`` to forbid it)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.closed = False
        self._buf = bytearray()

    def read(self) -> None:
        """One read of what the pipe holds (call when it is readable); ``closed`` at its end."""
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.closed = True
            return
        try:
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
        except (OSError, ValueError):
            pass  # our own stderr is gone; keep collecting the tail anyway
        self._buf += chunk
        del self._buf[:-_TAIL_BYTES]

    def text(self) -> str:
        return bytes(self._buf).decode("utf-8", "replace")[-ERROR_MESSAGE_CHARS:]


class RunningCommand:
    """The started command: its process tree, and its stderr copied while the worker waits for it.

    One ``poll`` watches the stderr pipe and, where Linux has it (5.3+), a pidfd of the command: the wait ends the
    moment the command exits; without a pidfd the exit is looked for every 50 ms.
    """

    def __init__(self, proc: subprocess.Popen[bytes]):
        assert proc.stderr is not None
        self.proc = proc
        self.tree = CommandTree(proc)
        self.tail = StderrTail(proc.stderr.fileno())
        self._poll = select.poll()
        self._poll.register(self.tail.fd, select.POLLIN)
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfd_open (Linux < 5.3): poll for the exit
            self._pidfd = os.pidfd_open(proc.pid)
            self._poll.register(self._pidfd, select.POLLIN)

    def wait(self, deadline: float) -> bool:
        """Copy stderr until the command exits (True) or ``deadline`` (monotonic) passes (False)."""
        while self.proc.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._pump(remaining if self._pidfd is not None else min(remaining, 0.05))
        return True

    def pump(self, seconds: float) -> None:
        """Copy stderr for ``seconds`` (while the command's tree is being stopped, say)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self.tail.closed:
                time.sleep(remaining)
                return
            self._pump(remaining, exit_too=False)

    def finish(self, drain_s: float) -> str:
        """After the exit: the rest of stderr (for at most ``drain_s``: a background process may hold the pipe
        open), then its tail."""
        if self._pidfd is not None:
            self._poll.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        deadline = time.monotonic() + drain_s
        while not self.tail.closed and (remaining := deadline - time.monotonic()) > 0:
            self._pump(remaining)
        return self.tail.text()

    def _pump(self, seconds: float, exit_too: bool = True) -> None:
        """One poll: reads stderr when it has data; returns on that, on the command's exit, or after ``seconds``."""
        for fd, _ in self._poll.poll(int(min(seconds, 3600.0) * 1000) + 1):
            if fd == self.tail.fd:
                self.tail.read()
                if self.tail.closed:
                    self._poll.unregister(fd)
            elif not exit_too:  # the pidfd stays readable once the command exited: do not spin on it
                time.sleep(min(seconds, 0.05))


def child_usage(wallclock: float) -> UsageDict:
    """Usage of the command, once waited for.

    Linux counts the RSS of the worker at the command's fork/exec in the children's max RSS, so a tiny command
    shows the worker's RSS (about 20 MB); for real tasks the command's own peak dominates.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "maxrss_bytes": usage.ru_maxrss * 1024,  # Linux reports kilobytes
        "wallclock_s": round(wallclock, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }
