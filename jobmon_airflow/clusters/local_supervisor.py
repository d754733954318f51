"""The ``local`` cluster's one supervisor per root: a fork server that runs every job of the root.

``LocalCluster.submit`` writes the job's ``spec.json`` (the job is queued from then on) and calls
:func:`ensure_running`: it wakes the root's supervisor, starting one (``python -m
jobmon_airflow.clusters.local_supervisor <root>``, detached in its own session, so that it outlives the Airflow
task or trigger that submitted) when none runs. The supervisor has imported the worker node once; each element
whose argv is the worker node's is forked from it (no new interpreter, no imports), any other argv is started as
before. One process replaces the per-job shepherds: it claims each queued job (``shepherd.json``) and drives its
:class:`~jobmon_airflow.clusters.local_shepherd.Shepherd` (slots, memory and runtime limits, kills, records).

Root files: ``supervisor.lock`` (held with ``flock`` by the running supervisor for its life: at most one per root,
and a lock nobody holds means none runs), ``supervisor.start`` (held by a submitter starting one),
``supervisor.json`` (its pid), ``supervisor.wake`` (a FIFO: a byte written wakes it at once) and ``supervisor.log``.

Restartable: everything is on disk. A new supervisor takes every job without a live claimant: elements not started
run, elements the dead one had started without an exit record are recorded LOST. It exits after being idle for
``$JOBMON_AIRFLOW_LOCAL_IDLE_S`` (30 s); it lets go of the lock first and looks once more, so a job queued meanwhile
is either seen by it or finds no supervisor and starts one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

from jobmon_airflow.clusters.local_procs import child_setup, is_alive, session_members
from jobmon_airflow.clusters.local_shepherd import (
    ENDED,
    POLL_S,
    SHEPHERD,
    SHEPHERD_LOG,
    SPEC,
    Forked,
    Shepherd,
    element_file,
)
from jobmon_airflow.clusters.local_slots import SlotPool
from jobmon_airflow.files import PRIVATE_FILE, open_private_append, read_json, write_json
from jobmon_airflow.procfs import proc_stat

LOCK = "supervisor.lock"
START_LOCK = "supervisor.start"
INFO = "supervisor.json"
WAKE = "supervisor.wake"
LOG = "supervisor.log"
IDLE_ENV = "JOBMON_AIRFLOW_LOCAL_IDLE_S"
DEFAULT_IDLE_S = 30.0
RESCAN_S = 1.0  # new jobs and kill marks are looked for at least this often, even if a wake-up was missed
LOCK_ATTEMPTS = 50  # x 20 ms: a submitter holds the lock shared for an instant when it checks
INCOMPLETE_S = 60.0  # a job directory without spec.json for this long is a failed submission: stop looking


# ---- the submitter's side --------------------------------------------------------------------------------------


def is_running(root: Path) -> bool:
    """A supervisor holds the root's lock (a shared lock cannot be had)."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also lets go of our shared lock
    return False


def wake(root: Path) -> None:
    """Wake the supervisor now rather than at its next poll (nothing happens when none listens)."""
    try:
        fd = os.open(root / WAKE, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # no FIFO yet, or no reader (ENXIO): a starting supervisor scans anyway
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            with contextlib.suppress(BlockingIOError):  # full: it has plenty of wake-ups pending already
                os.write(fd, b"\0")
    finally:
        os.close(fd)


def ensure_running(root: Path, wait_s: float = 10.0) -> subprocess.Popen[bytes] | None:
    """Wake the root's supervisor, or start one (returned: the caller reaps it) when none runs.

    Under ``supervisor.start`` (flock): concurrent submitters start one supervisor, not one each. The starter waits
    until the new supervisor holds its lock (a fraction of a second), so the next submitter finds it running.
    """
    if is_running(root):
        wake(root)
        return None
    fd = os.open(root / START_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if is_running(root):  # another submitter started it while we waited
            wake(root)
            return None
        with open_private_append(root / LOG) as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobmon_airflow.clusters.local_supervisor", str(root)],
                cwd=root,
                start_new_session=True,  # detached: Airflow's deferral ends the submitting process, the jobs go on
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
            )
        deadline = time.monotonic() + wait_s
        while not is_running(root) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return proc
    finally:
        os.close(fd)


# ---- the fork server -------------------------------------------------------------------------------------------


def _close_inherited_fds() -> None:
    """In the child: close every descriptor above stderr (the lock, the FIFO, slots, pidfds, other logs), so that
    the supervisor's lock and slots never outlive it in a job."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)


def fork_worker(options: list[str], env: dict[str, str], cwd: Path, out: int, err: int, memory_bytes: int) -> Forked:
    """Fork the worker node with ``options`` as its arguments, set up as the shepherd sets up any job: own
    session, stdin from /dev/null, the element's logs as stdout and stderr, its environment, RLIMIT_AS, default
    signals and death with the supervisor."""
    from jobmon_airflow.worker_node.cli import main as worker_main

    setup = child_setup(memory_bytes)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing of ours may be written twice, by parent and child
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        _close_inherited_fds()
        os.chdir(cwd)
        setup()
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [sys.executable, *options]
        code = worker_main(options)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


# ---- the supervisor ----------------------------------------------------------------------------------------------


class Supervisor:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs_dir = root / "jobs"
        self.pool = SlotPool(root / "slots")
        self.jobs: dict[int, Shepherd] = {}
        self.marks: dict[int, set[str]] = {}
        self.scanned_below = 0  # every job id below this was looked at
        self.incomplete: dict[int, float] = {}  # job directories without spec.json (yet): id → first seen
        self.terminated = False
        self.sampled = 0.0  # when memory and runtime were last sampled (monotonic)
        self.idle_s = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_S)
        self.lock_fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        self.wake_fd: int | None = None

    # -- the lock

    def _lock(self) -> bool:
        for _ in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                time.sleep(0.02)
        return False  # another supervisor runs

    def _open_wake(self) -> None:
        path = self.root / WAKE
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, PRIVATE_FILE)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)  # RDWR: never EOF
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.getuid():
            os.close(fd)
            raise RuntimeError(f"{path} is not this user's FIFO")
        os.fchmod(fd, PRIVATE_FILE)
        self.wake_fd = fd

    def _drain_wake(self) -> bool:
        woken = False
        while self.wake_fd is not None:
            try:
                if not os.read(self.wake_fd, 4096):
                    break
                woken = True
            except BlockingIOError:
                break
        return woken

    # -- jobs

    def _counter(self) -> int:
        """The next job id submitters will take (ids below it exist or are being written)."""
        try:
            raw = (self.root / "next_job_id").read_bytes().strip()
        except OSError:
            return 1
        return int(raw) if raw.isdigit() else 1

    def scan(self, everything: bool = False) -> None:
        """Claim the queued jobs: on start every job directory, then the ids submitted since the last scan."""
        if everything:
            ids = sorted(int(p.name) for p in self.jobs_dir.iterdir() if p.name.isdigit())
            top = max([self._counter(), *(i + 1 for i in ids)])
        else:
            top = self._counter()
            ids = [*self.incomplete, *range(self.scanned_below, top)]
        now = time.monotonic()
        for number in ids:
            if number not in self.jobs:
                self._consider(number, now)
        self.scanned_below = max(self.scanned_below, top)

    def _consider(self, number: int, now: float, claim: bool = True) -> bool:
        """Claim job ``number`` if it is queued and nobody alive runs it; True if it was (or could be) claimed."""
        job_dir = self.jobs_dir / str(number)
        if (job_dir / ENDED).exists():
            return False
        if not (job_dir / SPEC).exists():
            first = self.incomplete.setdefault(number, now)
            if now - first > INCOMPLETE_S or not job_dir.exists():
                self.incomplete.pop(number, None)  # a submission that failed before its spec: never a job
            return False
        self.incomplete.pop(number, None)
        owner = read_json(job_dir / SHEPHERD)
        if owner is not None and owner.get("pid") != os.getpid() and is_alive(owner["pid"], owner.get("start_ticks")):
            return False  # another live supervisor (or a shepherd of an earlier version) runs it
        if not claim:
            return True
        try:
            job = Shepherd(job_dir, self.pool, fork_worker)
        except (OSError, ValueError, KeyError) as exc:  # an unreadable spec: say why in the job's log, once
            with contextlib.suppress(OSError), open_private_append(job_dir / SHEPHERD_LOG) as log:
                log.write(f"local_supervisor: cannot run job {number}: {exc!r}\n".encode())
            (job_dir / ENDED).touch(mode=PRIVATE_FILE)
            return False
        me = proc_stat(os.getpid())
        write_json(
            job_dir / SHEPHERD,
            {"pid": os.getpid(), "start_ticks": me.start_ticks if me else None, "array_length": job.array_length},
        )
        with open_private_append(job_dir / SHEPHERD_LOG) as log:
            log.write(f"claimed by supervisor pid {os.getpid()} at {time.time():.3f}\n".encode())
        self.jobs[number] = job
        self.marks[number] = job.refresh()
        return True

    def _ended(self, number: int) -> None:
        job = self.jobs.pop(number)
        self.marks.pop(number, None)
        names = set(os.listdir(job.dir))
        elements = [None] if job.array_length is None else range(1, job.array_length + 1)
        if all(element_file("exit", e) in names for e in elements):
            (job.dir / ENDED).touch(mode=PRIVATE_FILE)

    # -- the loop

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True  # e.g. host shutdown: delete the jobs and record it, instead of dying silently

    def _step(self, refresh_marks: bool) -> None:
        if refresh_marks:
            self.marks = {n: job.refresh() for n, job in self.jobs.items()}  # kill marks, limits
        # Memory and runtime are sampled every POLL_S, as each shepherd did; a wake-up for an element's end (often,
        # with short elements) only reaps and starts: one /proc scan per interval, not per ended element.
        now = time.monotonic()
        enforce = self.terminated or refresh_marks or now - self.sampled >= POLL_S
        members: dict[int, list[int]] = {}
        if enforce:
            self.sampled = now
            leaders = [pid for job in self.jobs.values() for pid in job.leaders()]
            members = session_members(leaders) if leaders else {}
        for number, job in sorted(self.jobs.items()):
            job.terminated = self.terminated
            job.step(self.marks.get(number, set()), members, enforce=enforce)
        for number in [n for n, job in self.jobs.items() if job.done]:
            self._ended(number)

    def _wait(self) -> bool:
        """Sleep one poll interval, waking at once when a leader exits or a submitter writes to the FIFO."""
        fds = [fd for job in self.jobs.values() for fd in job.pidfds()]
        if self.wake_fd is not None:
            fds.append(self.wake_fd)
        timeout = min(POLL_S, max(0.0, self.sampled + POLL_S - time.monotonic())) if self.jobs else POLL_S
        select.select(fds, [], [], timeout)  # a signal (SIGTERM) just shortens the wait (PEP 475)
        return self._drain_wake()

    def _idle_exit(self) -> bool:
        """Let go of the lock, then look once more: a job queued meanwhile was written before its submitter found
        the lock free (and started a supervisor), or is seen now. True: exit."""
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        top, now = self._counter(), time.monotonic()
        ids = [*self.incomplete, *range(self.scanned_below, top)]
        if not any(self._consider(n, now, claim=False) for n in ids):
            return True
        if not self._lock():
            return True  # a newer supervisor took over: it runs them
        self.scan()
        return False

    def run(self) -> int:
        if not self._lock():
            return 0
        me = proc_stat(os.getpid())
        write_json(self.root / INFO, {"pid": os.getpid(), "start_ticks": me.start_ticks if me else None})
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._open_wake()
        import jobmon_airflow.worker_node.cli  # noqa: F401  (the point of a fork server: imported once, here)

        self.scan(everything=True)
        last_scan = idle_since = time.monotonic()
        woken = False
        while True:
            now = time.monotonic()
            rescan = woken or now - last_scan >= RESCAN_S
            if rescan and not self.terminated:
                self.scan()
                last_scan = now
            self._step(refresh_marks=rescan)
            if self.terminated and not self.jobs:
                return 0
            if self.jobs:
                idle_since = now
            elif now - idle_since >= self.idle_s and self._idle_exit():
                return 0
            woken = self._wait()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} <local cluster root>", file=sys.stderr)
        return 2
    try:
        return Supervisor(Path(argv[1])).run()
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # the root was removed (a test's temporary directory): nothing to run
            return 0
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv))
