"""The ``local`` cluster: jobs run on this machine, each under a detached shepherd, and look like Grid Engine jobs.

The embedded default for laptops and demos. Callers see what they would see on Grid Engine: ids "12" and "12.3",
the same log file names and job environment, PENDING until slots are free, h_vmem/h_rt kills as exit 137, and a
``qdel`` of a running job as exit 137 (``local_shepherd`` does the running and enforcing). Everything lives in
files under ``root`` (see the layout in ``local_shepherd``): several Airflow worker processes can submit and watch
at the same time, and jobs outlive the process that submitted them.

There is one queue, ``local``: a job that names no queue gets it, any other queue name is refused with
:class:`~jobmon_airflow.clusters.base.UnknownQueue` (a configuration error, as on Grid Engine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
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
from jobmon_airflow.clusters.local_shepherd import (
    KILL,
    SHEPHERD,
    SHEPHERD_LOG,
    SPEC,
    element_file,
    is_alive,
    kill_file,
    kill_sessions,
)
from jobmon_airflow.files import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    make_private_dirs,
    open_private_append,
    read_json,
    write_json,
)
from jobmon_airflow.procfs import proc_stat
from jobmon_airflow.resources import QueueLimits

QUEUE = "local"
_EXIT_FIELDS = frozenset(f.name for f in fields(ExitInfo)) - {"job_id", "kind"}
# Shepherds started by this process: polled now and then so that they do not linger as zombies.
_shepherds: list[subprocess.Popen[bytes]] = []


def _reap_shepherds() -> None:
    _shepherds[:] = [p for p in _shepherds if p.poll() is None]


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
    """One job directory as seen in one pass: shepherd liveness first, then the listing (so no record is missed)."""

    dir: Path
    launched: bool  # submit got as far as starting the shepherd
    alive: bool
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
        if element_file("exit", element) in self.names or not self.alive:
            return JobState.GONE, ""
        started = element_file("started", element) in self.names
        if KILL in self.names or kill_file(element) in self.names:
            return JobState.DELETING, "dr" if started else "dqw"
        return (JobState.RUNNING, "r") if started else (JobState.PENDING, "qw")


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
        write_json(job_dir / SPEC, spec)
        _reap_shepherds()
        try:
            with open_private_append(job_dir / SHEPHERD_LOG) as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "jobmon_airflow.clusters.local_shepherd", str(job_dir)],
                    cwd=job_dir,
                    # Detached: Airflow's deferral ends the submitting process, the job must go on.
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    close_fds=True,
                )
        except OSError as exc:
            raise SubmissionError(f"local: could not start the shepherd of job {job_id}: {exc}") from exc
        _shepherds.append(proc)
        stat = proc_stat(proc.pid)  # our unreaped child: its /proc entry exists even if it already ended
        write_json(
            job_dir / SHEPHERD,
            {"pid": proc.pid, "start_ticks": stat.start_ticks if stat else None, "array_length": job.array_length},
        )
        return job_id

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
        shepherd = read_json(job_dir / SHEPHERD) if number else None
        if shepherd is None:
            return _JobView(job_dir, False, False, None, None, frozenset())
        alive = is_alive(shepherd["pid"], shepherd["start_ticks"])
        names = frozenset(os.listdir(job_dir))  # after the liveness check: a dead shepherd's records are all here
        return _JobView(job_dir, True, alive, shepherd["pid"], shepherd["array_length"], names)

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
        _reap_shepherds()
        return {
            job_id: JobStatus(job_id, state, raw)
            for job_id, element, view in self._views(job_ids)
            for state, raw in [view.state(element)]
        }

    def find_jobs(self, name: str) -> list[str]:
        """Jobs not yet ended that were submitted under ``name`` (a scan of the job directories)."""
        found = []
        for job_dir in self.jobs_dir.iterdir():
            spec = read_json(job_dir / SPEC)
            if spec is not None and spec.get("name") == name and self._view(job_dir.name).alive:
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
            elif not view.alive:
                out[job_id] = self._lost(job_id, element, view)
        return out

    def _lost(self, job_id: str, element: int | None, view: _JobView) -> ExitInfo:
        started = read_json(view.dir / element_file("started", element)) or {}
        when = "while the job ran" if started else "before the job started"
        return ExitInfo(
            job_id,
            ExitKind.LOST,
            reason=f"the shepherd (pid {view.shepherd_pid}) ended {when} without an exit record; "
            f"see {view.dir / SHEPHERD_LOG}",
            hostname=started.get("hostname"),
            start_time=started.get("start_time"),
        )

    # -- kill

    def kill(self, job_ids: Sequence[str]) -> None:
        """Mark for deletion (the shepherd records DELETED; pending elements never start) and SIGKILL the trees."""
        leaders: dict[int, int] = {}
        for _job_id, element, view in self._views(job_ids):
            if not view.has(element):
                continue  # unknown or already cleaned up: not an error, as qdel of a finished job
            (view.dir / kill_file(element)).touch(mode=PRIVATE_FILE)
            targets = view.elements() if element is None else [element]
            for target in targets:
                if element_file("exit", target) in view.names or element_file("started", target) not in view.names:
                    continue
                started = read_json(view.dir / element_file("started", target)) or {}
                if started.get("start_ticks") is not None:
                    leaders[started["pid"]] = started["start_ticks"]
        # The shepherd would kill within one poll; doing it here too makes kill() immediate, and also reaches the
        # processes of a job whose shepherd died.
        kill_sessions(leaders)
