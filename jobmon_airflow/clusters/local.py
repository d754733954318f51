"""The ``local`` cluster: jobs run on this machine under one detached supervisor per root, and look like Grid Engine
jobs.

The embedded default for laptops and demos. Callers see what they would see on Grid Engine: ids "12" and "12.3",
the same log file names and job environment, PENDING until slots are free, h_vmem/h_rt kills as exit 137, and a
``qdel`` of a running job as exit 137 (``local_shepherd`` does the running and enforcing, ``local_supervisor``
runs every job of the root in one process and forks worker nodes from it, warm). Everything lives in files under
``root`` (see the layout in ``local_shepherd``): several Airflow worker processes can submit and watch at the same
time, and jobs outlive the process that submitted them; a job is queued once its ``spec.json`` is written, and a
supervisor that dies loses none of the jobs it had not started (the next one, started by the next submit, poll or
kill, runs them).

There is one queue, ``local``: a job that names no queue gets it, any other queue name is refused with
:class:`~jobmon_airflow.clusters.base.UnknownQueue` (a configuration error, as on Grid Engine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from jobmon_airflow.clusters.base import (
    ExitInfo,
    ExitKind,
    JobRequest,
    JobState,
    JobStatus,
    SubmissionError,
    log_file_paths,
    split_job_id,
)
from jobmon_airflow.clusters.local_procs import is_alive, kill_sessions
from jobmon_airflow.clusters.local_shepherd import (
    CONCURRENCY,
    ENDED,
    KILL,
    SHEPHERD,
    SPEC,
    element_file,
    kill_file,
)
from jobmon_airflow.clusters.local_supervisor import LOG as SUPERVISOR_LOG
from jobmon_airflow.clusters.local_supervisor import ensure_running
from jobmon_airflow.files import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    make_private_dirs,
    read_json,
    write_json,
)
from jobmon_airflow.resources import QueueLimits

QUEUE = "local"
_EXIT_FIELDS = frozenset(f.name for f in fields(ExitInfo)) - {"job_id", "kind"}
# Supervisors started by this process: polled now and then so that they do not linger as zombies.
_supervisors: list[subprocess.Popen[bytes]] = []


def _reap_supervisors() -> None:
    _supervisors[:] = [p for p in _supervisors if p.poll() is None]


def _physical_memory_gib() -> float:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3


def _split(job_id: str) -> tuple[str, int | None]:
    """:func:`~jobmon_airflow.clusters.base.split_job_id` for local ids (numbers); anything else gets a number no
    job has."""
    try:
        number, element = split_job_id(job_id)
    except ValueError:
        return "", None
    return (number, element) if number.isdigit() else ("", None)


@dataclass(frozen=True)
class _JobView:
    """One job directory as seen in one pass: claimant liveness first, then the listing (so no record is missed)."""

    dir: Path
    launched: bool  # submit got as far as writing the spec: the job is queued
    alive: bool  # a live supervisor has claimed it
    shepherd_pid: int | None
    array_length: int | None
    names: frozenset[str]

    def has(self, element: int | None) -> bool:
        if not self.launched:
            return False
        if self.array_length is None:
            return element is None
        return element is None or 1 <= element <= self.array_length

    def elements(self) -> list[int | None]:
        return [None] if self.array_length is None else list(range(1, self.array_length + 1))

    def state(self, element: int | None) -> tuple[JobState, str]:
        """State and Grid Engine's letters; an array's own id gets the most active state of its elements."""
        if not self.has(element):
            return JobState.GONE, ""
        if element is None and self.array_length is not None:
            states = {self.state(e) for e in self.elements()}
            return next((s for s in _ARRAY_ORDER if s in states), (JobState.GONE, ""))
        started = element_file("started", element) in self.names
        if element_file("exit", element) in self.names or (started and not self.alive):
            return JobState.GONE, ""  # ended, or lost with the supervisor that ran it
        if KILL in self.names or kill_file(element) in self.names:
            return JobState.DELETING, "dr" if started else "dqw"
        return (JobState.RUNNING, "r") if started else (JobState.PENDING, "qw")

    @property
    def unattended(self) -> bool:
        """Queued, not ended, and no live supervisor has it: one must be started."""
        return self.launched and not self.alive and ENDED not in self.names


_ARRAY_ORDER = [
    (JobState.DELETING, "dr"),
    (JobState.DELETING, "dqw"),
    (JobState.RUNNING, "r"),
    (JobState.PENDING, "qw"),
]


class LocalCluster:
    """Jobs on this machine with ``slots`` cores shared by all processes using the same ``root``."""

    name = "local"

    def __init__(self, root: Path, slots: int | None = None) -> None:
        self.root = Path(root).absolute()
        self.slots = (os.cpu_count() or 1) if slots is None else slots
        if self.slots < 1:
            raise ValueError(f"LocalCluster slots: must be at least 1, got {slots!r}")
        self.jobs_dir = self.root / "jobs"
        self.slots_dir = self.root / "slots"
        # This user's only (0700, files 0600): job specs hold commands and environments, logs their output.
        make_private_dirs(self.jobs_dir)
        make_private_dirs(self.slots_dir)

    def queue_limits(self, queue: str | None = None) -> QueueLimits:
        """Every queue name is this machine's one queue: a DAG written for Grid Engine runs here unchanged."""
        return QueueLimits(QUEUE, max_cores=self.slots, max_memory=_physical_memory_gib(), max_runtime=None)

    def log_paths(self, job: JobRequest, job_id: str, element: int | None = None) -> tuple[Path, Path]:
        return log_file_paths(job.log_dir.absolute(), job.name, job_id, element)

    # -- submit

    def submit(self, job: JobRequest) -> str:
        self._validate(job)
        log_dir = job.log_dir.absolute()
        try:
            make_private_dirs(log_dir)
        except OSError as exc:
            raise SubmissionError(f"local: cannot create log directory {log_dir}: {exc}") from exc
        job_id, job_dir = self._new_job_dir()
        res = job.resources
        spec = {
            "job_id": job_id,
            "name": job.name,
            "argv": list(job.argv),
            "log_dir": str(log_dir),
            "env": dict(job.env),
            "cores": res.cores,
            "memory_bytes": res.memory_bytes,
            "runtime_s": res.runtime,
            "array_length": job.array_length,
            "max_concurrent": job.max_concurrent,
            "slots": self.slots,
            "slots_dir": str(self.slots_dir),
        }
        write_json(job_dir / SPEC, spec)  # queued from here on: a supervisor runs it
        try:
            self._supervise()
        except OSError as exc:
            (job_dir / KILL).touch(mode=PRIVATE_FILE)  # a later supervisor records it deleted, never runs it
            raise SubmissionError(f"local: could not start the supervisor for job {job_id}: {exc}") from exc
        return job_id

    def _supervise(self) -> None:
        """Wake the root's supervisor, starting one if none runs."""
        _reap_supervisors()
        proc = ensure_running(self.root)
        if proc is not None:
            _supervisors.append(proc)

    def _validate(self, job: JobRequest) -> None:
        """Refuse what can never run, as ``qsub -w e`` does (a local job would otherwise wait forever)."""
        problems = self.queue_limits(job.resources.queue).problems(job.resources)
        if not job.argv or not all(isinstance(a, str) for a in job.argv):
            problems.append(f"argv must be a non-empty list of strings, got {job.argv!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in job.env.items()):
            problems.append(f"env must map strings to strings, got {dict(job.env)!r}")
        if not job.name or any(c in job.name for c in "/\n\0"):
            problems.append(f"name must be non-empty without '/' or newlines, got {job.name!r}")
        if job.array_length is not None and job.array_length < 1:
            problems.append(f"array_length must be at least 1, got {job.array_length}")
        if job.max_concurrent is not None and job.max_concurrent < 1:
            problems.append(f"max_concurrent must be at least 1, got {job.max_concurrent}")
        if problems:
            raise SubmissionError(f"local: job {job.name!r} can never run: {'; '.join(problems)}")

    def _new_job_dir(self) -> tuple[str, Path]:
        """Next id from a counter file under flock (many submitting processes); mkdir is the final arbiter."""
        fd = os.open(self.root / "next_job_id", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 64).strip()
            number = int(raw) if raw.isdigit() else 1
            while True:
                job_dir = self.jobs_dir / str(number)
                number += 1
                with contextlib.suppress(FileExistsError):  # a counter reset must not reuse an id
                    job_dir.mkdir(mode=PRIVATE_DIR)
                    break
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, str(number).encode())
        finally:
            os.close(fd)  # releases the lock
        return str(number - 1), job_dir

    # -- observe

    def _view(self, number: str) -> _JobView:
        job_dir = self.jobs_dir / number
        if not number:
            return _JobView(job_dir, False, False, None, None, frozenset())
        claim = read_json(job_dir / SHEPHERD)
        if claim is None:  # queued, not claimed yet
            spec = read_json(job_dir / SPEC)
            names = frozenset(os.listdir(job_dir)) if spec is not None else frozenset()
            array_length = spec.get("array_length") if spec is not None else None
            return _JobView(job_dir, spec is not None, False, None, array_length, names)
        alive = is_alive(claim["pid"], claim["start_ticks"])
        names = frozenset(os.listdir(job_dir))  # after the liveness check: a dead supervisor's records are all here
        return _JobView(job_dir, True, alive, claim["pid"], claim["array_length"], names)

    def _views(self, job_ids: Iterable[str]) -> list[tuple[str, int | None, _JobView]]:
        cache: dict[str, _JobView] = {}
        out = []
        for job_id in job_ids:
            number, element = _split(job_id)
            if number not in cache:
                cache[number] = self._view(number)
            out.append((job_id, element, cache[number]))
        return out

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        views = self._views(job_ids)
        if any(view.unattended for _, _, view in views):
            self._supervise()  # its supervisor died (or never started): a new one takes the queued jobs
        else:
            _reap_supervisors()
        return {
            job_id: JobStatus(job_id, state, raw)
            for job_id, element, view in views
            for state, raw in [view.state(element)]
        }

    def find_jobs(self, name: str) -> list[str]:
        """Jobs not yet ended that were submitted under ``name`` (a scan of the job directories)."""
        found = []
        for job_dir in self.jobs_dir.iterdir():
            if (job_dir / ENDED).exists():
                continue
            spec = read_json(job_dir / SPEC)
            if spec is None or spec.get("name") != name:
                continue
            view = self._view(job_dir.name)
            if any(view.state(e)[0] != JobState.GONE for e in view.elements()):
                found.append(job_dir.name)
        return sorted(found, key=int)

    def exit_info(self, job_ids: Iterable[str]) -> dict[str, ExitInfo]:
        """Records of ended elements; LOST for a dead shepherd without one. An array's own id is left out."""
        out: dict[str, ExitInfo] = {}
        for job_id, element, view in self._views(job_ids):
            if not view.has(element):
                out[job_id] = ExitInfo(job_id, ExitKind.LOST, reason=f"no job {job_id} in {self.jobs_dir}")
                continue
            if element is None and view.array_length is not None:
                continue  # records are per element: ask for "<id>.<i>"
            name = element_file("exit", element)
            record = read_json(view.dir / name) if name in view.names else None
            if record is not None:
                usage = {k: v for k, v in record.items() if k in _EXIT_FIELDS}
                out[job_id] = ExitInfo(job_id, ExitKind(record["kind"]), **usage)
            elif not view.alive and element_file("started", element) in view.names:
                out[job_id] = self._lost(job_id, element, view)
        return out

    def _lost(self, job_id: str, element: int | None, view: _JobView) -> ExitInfo:
        started = read_json(view.dir / element_file("started", element)) or {}
        when = "while the job ran" if started else "before the job started"
        return ExitInfo(
            job_id,
            ExitKind.LOST,
            reason=f"the supervisor (pid {view.shepherd_pid}) ended {when} without an exit record; "
            f"see {self.root / SUPERVISOR_LOG}",
            hostname=started.get("hostname"),
            start_time=started.get("start_time"),
        )

    # -- kill

    def kill(self, job_ids: Sequence[str]) -> None:
        """Mark for deletion (the shepherd records DELETED; pending elements never start) and SIGKILL the trees."""
        leaders: dict[int, int] = {}
        marked = False
        for _job_id, element, view in self._views(job_ids):
            if not view.has(element):
                continue  # unknown or already cleaned up: not an error, as qdel of a finished job
            (view.dir / kill_file(element)).touch(mode=PRIVATE_FILE)
            marked = True
            targets = view.elements() if element is None else [element]
            for target in targets:
                if element_file("exit", target) in view.names or element_file("started", target) not in view.names:
                    continue
                started = read_json(view.dir / element_file("started", target)) or {}
                if started.get("start_ticks") is not None:
                    leaders[started["pid"]] = started["start_ticks"]
        # The supervisor would kill within one poll; doing it here too makes kill() immediate, and also reaches the
        # processes of a job whose supervisor died.
        kill_sessions(leaders)
        if marked:
            self._supervise()  # pending jobs get their DELETED record now, not at the next poll

    # -- concurrency

    def set_array_concurrency(self, limits: Mapping[str, int | None]) -> None:
        """As ``qalter -tc``: the array's new limit goes to ``concurrency.json`` in its job directory and the
        supervisor is woken; it starts elements only while fewer than the limit run. Ended arrays are skipped."""
        changed = False
        for job_id, limit in limits.items():
            number, element = _split(job_id)
            if element is not None:
                raise ValueError(f"set_array_concurrency: expected an array job id 'J', got an element {job_id!r}")
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise ValueError(f"set_array_concurrency: expected a limit ≥ 1 or None for job {job_id}, got {limit!r}")
            view = self._view(number)
            if not view.launched or view.array_length is None or ENDED in view.names:
                continue  # unknown, not an array, or every element has ended: nothing left to limit
            write_json(view.dir / CONCURRENCY, {"max_concurrent": limit})
            changed = True
        if changed:
            self._supervise()
