"""One job of the ``local`` cluster as Grid Engine's sge_shepherd runs it: wait for slots, run each element, enforce
memory and runtime as execd does, write one exit record per element.

:class:`Shepherd` is one job's state; the root's one supervisor (:mod:`local_supervisor`) drives the shepherds of
all its jobs in one loop and one process. Each element runs ``argv`` exactly as given (one for a single job, 1..N
for an array, at most ``max_concurrent`` at once); a worker-node argv is forked from the supervisor, which has
imported the worker node already, instead of starting a new interpreter (``Shepherd.fork_worker``). Standard
library (and the package's stdlib-only modules) only.

Job directory (``<root>/jobs/<id>/``), the contract with ``local.py``:

=====================  ===========================================================================
``spec.json``          the request (written by submit; the job is queued from then on)
``shepherd.json``      pid and start time of the supervisor running the job, array length (its claim)
``started[.i].json``   the element got its slots and runs: leader pid, start ticks, host, start time
``exit[.i].json``      how the element ended: the fields of ``base.ExitInfo``
``kill``, ``kill.i``   deletion requested for the whole job / one element (written by ``kill()``)
``concurrency.json``   an array's changed limit of running elements (``set_array_concurrency``, as ``qalter -tc``)
``shepherd.log``       what the supervisor did with this job (claims, errors starting it)
``ended``              every element has its exit record (the supervisor skips the job from then on)
=====================  ===========================================================================

Slots are ``<root>/slots/0..slots-1``; an element holds ``cores`` of them with ``flock`` for its life, so slots
free themselves when the supervisor dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

from jobmon_airflow.clusters.base import ExitKind, log_file_paths
from jobmon_airflow.clusters.local_procs import (
    child_setup,
    kill_pids,
    kill_sessions,
    memory_usage,
    session_members,
)
from jobmon_airflow.clusters.local_slots import SlotPool
from jobmon_airflow.files import open_private_append, read_json, write_json
from jobmon_airflow.procfs import proc_stat

POLL_S = 0.2  # memory sampling and slot polling interval, as execd's load-report cadence but finer
SPEC = "spec.json"
SHEPHERD = "shepherd.json"
SHEPHERD_LOG = "shepherd.log"
ENDED = "ended"
KILL = "kill"
CONCURRENCY = "concurrency.json"
WORKER_MODULE = "jobmon_airflow.worker_node"


def element_file(prefix: str, element: int | None) -> str:
    """``exit.json`` for a single job, ``exit.3.json`` for array element 3 (same for ``started``)."""
    return f"{prefix}.json" if element is None else f"{prefix}.{element}.json"


def kill_file(element: int | None) -> str:
    return KILL if element is None else f"{KILL}.{element}"


class Process(Protocol):
    """What the shepherd needs of a started leader: a ``subprocess.Popen`` or a forked worker node."""

    pid: int
    returncode: int | None


@dataclass
class Forked:
    pid: int
    returncode: int | None = None


#: Forks the worker node with (its options, env, cwd, stdout fd, stderr fd, memory bytes); returns its leader.
ForkWorker = Callable[[list[str], dict[str, str], Path, int, int, int], Process]


def worker_options(argv: list[str]) -> list[str] | None:
    """The worker node's options when ``argv`` starts it with this interpreter (what the fork server can run
    without exec: ``python -m jobmon_airflow.worker_node ...`` or ``worker_node.python_argv()``), else None."""
    prefixes = [[sys.executable, "-m", WORKER_MODULE]]
    with contextlib.suppress(ImportError, AttributeError):
        from jobmon_airflow import worker_node

        prefixes.append(list(worker_node.python_argv()))
    for prefix in prefixes:
        if argv[: len(prefix)] == prefix:
            return argv[len(prefix) :]
    return None


@dataclass
class _Element:
    index: int | None  # None for a single job
    job_id: str  # "12" or "12.3"
    proc: Process | None = None
    pidfd: int | None = None
    slots: list[int] = field(default_factory=list)
    started_mono: float = 0.0
    start_time: float = 0.0
    killed: tuple[ExitKind, str | None, str] | None = None  # (kind, resource, reason) when we sent SIGKILL
    peak_vmem: int | None = None
    peak_rss: int = 0
    rss_floor: int = 0  # the shepherd's RSS at fork: Linux counts the pre-exec image in the child's ru_maxrss


class Shepherd:
    """One job: its pending and running elements. ``step`` advances it; the supervisor calls it in its loop."""

    def __init__(self, job_dir: Path, pool: SlotPool | None = None, fork_worker: ForkWorker | None = None) -> None:
        self.dir = job_dir
        spec = json.loads((job_dir / SPEC).read_text())
        self.job_id: str = spec["job_id"]
        self.name: str = spec["name"]
        self.argv: list[str] = spec["argv"]
        self.log_dir = Path(spec["log_dir"])
        self.env: dict[str, str] = spec["env"]
        self.cores: int = spec["cores"]
        self.memory_bytes: int = spec["memory_bytes"]
        self.runtime_s: int = spec["runtime_s"]
        self.n_slots: int = spec["slots"]
        self.array_length: int | None = spec["array_length"]
        self.pool = pool or SlotPool(Path(spec["slots_dir"]))
        self.worker_options = worker_options(self.argv) if fork_worker is not None else None
        self.fork_worker = fork_worker
        self.host = socket.gethostname()
        if self.array_length is None:
            elements = [_Element(None, self.job_id)]
        else:
            elements = [_Element(i, f"{self.job_id}.{i}") for i in range(1, self.array_length + 1)]
        self.pending = deque(self._not_ended(elements))
        self.all_elements = len(elements)
        self.max_running: int = spec["max_concurrent"] or self.all_elements
        self.concurrency_seen: tuple[int, int] | None = None  # (inode, mtime) of the concurrency.json applied last
        self.running: list[_Element] = []
        self.terminated = False

    def _not_ended(self, elements: list[_Element]) -> list[_Element]:
        """The elements still to run. After a supervisor died, an element it had started but that has no exit
        record ran without supervision: its processes are ended and it is recorded LOST, as a dead execd's jobs
        are; elements it had not started run now."""
        names = set(os.listdir(self.dir))
        todo = []
        for elem in elements:
            if element_file("exit", elem.index) in names:
                continue
            if element_file("started", elem.index) not in names:
                todo.append(elem)
                continue
            started = read_json(self.dir / element_file("started", elem.index)) or {}
            if started.get("pid") and started.get("start_ticks") is not None:
                kill_sessions({started["pid"]: started["start_ticks"]})
            self.host = started.get("hostname") or self.host
            self._record(
                elem, ExitKind.LOST, None, None,
                "the supervisor running the job ended while the job ran, without an exit record; "
                f"see {self.dir / SHEPHERD_LOG}",
                start_time=started.get("start_time"),
            )  # fmt: skip
        return todo

    @property
    def done(self) -> bool:
        return not self.pending and not self.running

    def kill_marks(self) -> set[str]:
        return {n for n in os.listdir(self.dir) if n.startswith(KILL)}

    def refresh(self) -> set[str]:
        """What the job directory asks for now: the kill marks, and a changed concurrency limit (applied here: it
        holds for the elements started from now on; running ones go on, as with ``qalter -tc``)."""
        names = os.listdir(self.dir)
        if CONCURRENCY in names:
            self._apply_concurrency()
        return {n for n in names if n.startswith(KILL)}

    def _apply_concurrency(self) -> None:
        try:
            st = os.stat(self.dir / CONCURRENCY)
        except FileNotFoundError:
            return
        seen = (st.st_ino, st.st_mtime_ns)  # written atomically (a new inode each time): read once per write
        if seen == self.concurrency_seen:
            return
        limit = (read_json(self.dir / CONCURRENCY) or {}).get("max_concurrent")
        if limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
            self.max_running = limit or self.all_elements
            self.concurrency_seen = seen

    def leaders(self) -> list[int]:
        return [e.proc.pid for e in self.running if e.proc]

    def pidfds(self) -> list[int]:
        return [e.pidfd for e in self.running if e.pidfd is not None]

    def step(self, marks: set[str], members: Mapping[int, list[int]] | None = None, enforce: bool = True) -> None:
        """Reap ended elements, enforce limits and deletions on running ones (``enforce``: sample now), start
        pending ones slots allow."""
        self._reap()
        if enforce:
            self._enforce(marks, members)
        self._start(marks)

    def run(self) -> None:
        """This job alone, until every element has ended (the supervisor drives many jobs instead)."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        while not self.done:
            self.step(self.refresh())
            self._wait()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True  # e.g. host shutdown: delete the job and record it, instead of dying silently

    def _kill_requested(self, elem: _Element, marks: set[str]) -> bool:
        return self.terminated or KILL in marks or kill_file(elem.index) in marks

    def _wait(self) -> None:
        """Sleep one poll interval, waking at once when a running leader exits (pidfds are readable then)."""
        fds = [e.pidfd for e in self.running if e.pidfd is not None]
        if fds:
            select.select(fds, [], [], POLL_S)
        elif self.pending:
            time.sleep(POLL_S)

    # -- slots

    def _take_slots(self) -> list[int] | None:
        return self.pool.take(self.cores, self.n_slots)

    def _release(self, slots: list[int]) -> None:
        self.pool.release(slots)

    # -- starting

    def _start(self, marks: set[str]) -> None:
        while self.pending and len(self.running) < self.max_running:
            elem = self.pending[0]
            if self._kill_requested(elem, marks):
                self.pending.popleft()
                self._record(elem, ExitKind.DELETED, None, None, "deleted before it started (qdel of a pending job)")
                continue
            slots = self._take_slots()
            if slots is None:
                return
            self.pending.popleft()
            self._launch(elem, slots)

    def _environment(self, elem: _Element) -> dict[str, str]:
        env = {**os.environ, **self.env}
        task = "undefined" if elem.index is None else str(elem.index)
        env.update(
            JOB_ID=self.job_id,
            JOB_NAME=self.name,
            SGE_TASK_ID=task,
            SGE_TASK_FIRST="undefined" if elem.index is None else "1",
            SGE_TASK_LAST="undefined" if self.array_length is None else str(self.array_length),
            SGE_TASK_STEPSIZE="undefined" if elem.index is None else "1",
            NSLOTS=str(self.cores),
            HOSTNAME=self.host,
        )
        return env

    def _launch(self, elem: _Element, slots: list[int]) -> None:
        out_path, err_path = log_file_paths(self.log_dir, self.name, self.job_id, elem.index)
        elem.slots = slots
        elem.start_time = time.time()
        elem.started_mono = time.monotonic()
        elem.rss_floor = memory_usage([os.getpid()])[1]
        try:
            # Private (0600, never through a link) whatever the umask: logs hold commands' output and errors.
            with open_private_append(out_path) as out, open_private_append(err_path) as err:
                if self.fork_worker is not None and self.worker_options is not None:
                    # Warm: the worker node is imported already in the supervisor, no new interpreter.
                    env, fds = self._environment(elem), (out.fileno(), err.fileno())
                    elem.proc = self.fork_worker(self.worker_options, env, self.log_dir, *fds, self.memory_bytes)
                else:
                    elem.proc = subprocess.Popen(
                        self.argv,
                        cwd=self.log_dir,
                        env=self._environment(elem),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,  # own session and process group: the unit we measure and kill
                        preexec_fn=child_setup(self.memory_bytes),
                    )
        except (OSError, subprocess.SubprocessError) as exc:
            # Grid Engine would put the job in error state; here the element simply fails, with the reason.
            reason = f"could not start {self.argv[0]!r}: {exc}"
            with contextlib.suppress(OSError), open_private_append(err_path) as err:
                err.write(f"local_shepherd: {reason}\n".encode())
            self._release(slots)
            self._record(elem, ExitKind.ERROR, None, None, reason)
            return
        try:
            elem.pidfd = os.pidfd_open(elem.proc.pid)
        except OSError:
            elem.pidfd = None  # old kernel: fall back to plain polling
        stat = proc_stat(elem.proc.pid)  # not reaped yet, so it exists
        write_json(
            self.dir / element_file("started", elem.index),
            {
                "pid": elem.proc.pid,
                "start_ticks": stat.start_ticks if stat else None,
                "hostname": self.host,
                "start_time": elem.start_time,
            },
        )
        self.running.append(elem)

    # -- watching

    def _enforce(self, marks: set[str], members: Mapping[int, list[int]] | None = None) -> None:
        """Sample the memory of every running job tree; SIGKILL trees over memory or runtime, or to be deleted.
        ``members``: the sessions' processes, when the caller scanned /proc once for many jobs."""
        if not self.running:
            return
        if members is None:
            members = session_members(e.proc.pid for e in self.running if e.proc)
        now = time.monotonic()
        for elem in self.running:
            assert elem.proc is not None
            sid = elem.proc.pid
            pids = members.get(sid, [])
            vmem, rss = memory_usage(pids)
            elem.peak_vmem = max(elem.peak_vmem or 0, vmem)
            elem.peak_rss = max(elem.peak_rss, rss)
            if elem.killed is None:
                elem.killed = self._violation(elem, marks, vmem, now)
            if elem.killed is not None:
                # Again on every pass until the leader is reaped: catches processes forked since the last scan.
                kill_pids(pids)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(sid, signal.SIGKILL)

    def _violation(
        self, elem: _Element, marks: set[str], vmem: int, now: float
    ) -> tuple[ExitKind, str | None, str] | None:
        if self._kill_requested(elem, marks):
            return self._deletion()
        if vmem > self.memory_bytes:
            return (
                ExitKind.RESOURCE_KILL,
                "memory",
                f'job {elem.job_id} exceeds job hard limit "h_vmem" of queue "local@{self.host}" '
                f"({vmem:.5f} > limit:{self.memory_bytes:.5f}) - sending SIGKILL",
            )
        if now - elem.started_mono > self.runtime_s:
            return (
                ExitKind.RESOURCE_KILL,
                "runtime",
                f"job {elem.job_id} exceeded hard wallclock time h_rt={self.runtime_s}s "
                f"(ran {now - elem.started_mono:.1f}s) - sending SIGKILL",
            )
        return None

    def _deletion(self) -> tuple[ExitKind, str | None, str]:
        how = "the shepherd got SIGTERM" if self.terminated else "kill()"
        return ExitKind.DELETED, None, f"deleted by {how} while running (as qdel: failed 100)"

    def _reap(self) -> None:
        for elem in list(self.running):
            assert elem.proc is not None
            pid = elem.proc.pid
            # WNOWAIT: the leader stays a zombie, so its pid (= the session id) cannot be reused while we kill the rest.
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                continue
            # Like Grid Engine, end the processes the job left behind, so its slots are really free.
            kill_pids(session_members([pid])[pid])
            _, status, usage = os.wait4(pid, 0)
            # kill() marks, then signals: fresh marks tell its SIGKILL from one of unknown origin.
            if elem.killed is None and os.WIFSIGNALED(status) and self._kill_requested(elem, self.kill_marks()):
                elem.killed = self._deletion()
            ended = time.monotonic(), time.time()  # before the slots go: the next job starts after this end
            elem.proc.returncode = os.waitstatus_to_exitcode(status)
            if elem.pidfd is not None:
                os.close(elem.pidfd)
            self.running.remove(elem)
            self._release(elem.slots)
            self._finish(elem, status, usage, ended)

    def _finish(self, elem: _Element, status: int, usage: resource.struct_rusage, ended: tuple[float, float]) -> None:
        code = os.waitstatus_to_exitcode(status)
        exit_status = 128 - code if code < 0 else code  # signal N → 128 + N, as Grid Engine and shells report
        kind: ExitKind
        if elem.killed is not None and os.WIFSIGNALED(status):
            kind, res, reason = elem.killed
        elif code == 0:
            kind, res, reason = ExitKind.DONE, None, ""
        elif code < 0:
            sig = signal.Signals(-code).name
            kind, res, reason = ExitKind.ERROR, None, f"killed by signal {sig} ({-code}), not sent by the shepherd"
        else:
            kind, res, reason = ExitKind.ERROR, None, f"exit status {code}"
        self._record(
            elem,
            kind,
            exit_status,
            res,
            reason,
            maxrss_bytes=self._maxrss(elem, usage.ru_maxrss * 1024),
            maxvmem_bytes=elem.peak_vmem,
            wallclock_s=round(ended[0] - elem.started_mono, 3),
            cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
            start_time=elem.start_time,
            end_time=ended[1],
        )

    @staticmethod
    def _maxrss(elem: _Element, ru_maxrss: int) -> int:
        """The larger of two lower bounds of the tree's peak RSS: ru_maxrss, exact but per process (the largest of
        the leader and its reaped descendants), and the sampled sum over the tree, which may miss short peaks.

        A ru_maxrss at the fork floor (the shepherd's own image, ~12 MB) says nothing about the job: then only the
        samples count, and without samples (a job shorter than one poll) the floor stands as an upper bound.
        """
        measured = ru_maxrss if ru_maxrss > elem.rss_floor + 2**20 else 0  # 1 MiB: pages the preexec_fn touched
        return max(measured, elem.peak_rss) or ru_maxrss

    def _record(
        self,
        elem: _Element,
        kind: ExitKind,
        exit_status: int | None,
        res: str | None,
        reason: str,
        **usage: float | int | None,
    ) -> None:
        record = {
            "job_id": elem.job_id,
            "kind": kind.value,
            "exit_status": exit_status,
            "reason": reason,
            "resource": res,
            "hostname": self.host,
            "slots": self.cores,
            **usage,
        }
        write_json(self.dir / element_file("exit", elem.index), record)
