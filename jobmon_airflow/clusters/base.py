"""The cluster interface: what Jobmon needs from a batch system, implemented by ``local`` and ``gridengine``.

Every method that asks about jobs takes many ids at once: a caller watching 10,000 jobs makes one call. Also here:
what both backends share (job ids "J" / "J.T", Grid Engine's default log file names) and the errors they raise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from jobmon_airflow.resources import QueueLimits, ResourceError, Resources

__all__ = [
    "Cluster",
    "ClusterError",
    "ClusterUnavailable",
    "ExitInfo",
    "ExitKind",
    "JobRequest",
    "JobState",
    "JobStatus",
    "SubmissionError",
    "UnknownQueue",
    "log_file_paths",
    "split_job_id",
]


class JobState(StrEnum):
    """Where a job is according to the batch system's queue listing."""

    PENDING = "pending"  # waiting for a slot (qw, hqw)
    RUNNING = "running"  # r, t (transferring), R (restarted)
    SUSPENDED = "suspended"  # s, S, T
    ERROR = "error"  # Eqw: will never run until the error is cleared
    DELETING = "deleting"  # d: qdel registered, not gone yet
    GONE = "gone"  # not in the queue listing: finished, deleted or lost; ask exit_info
    UNKNOWN = "unknown"  # a state the parser could not decode


@dataclass(frozen=True)
class JobStatus:
    job_id: str  # "123" for a single job, "123.4" for array element 4
    state: JobState
    raw: str = ""  # the batch system's own letters, e.g. "Eqw"
    reason: str | None = None  # e.g. Eqw's error reason
    name: str = ""  # the job's name as the batch system shows it


class ExitKind(StrEnum):
    DONE = "done"  # exit 0
    ERROR = "error"  # non-zero exit of the command
    RESOURCE_KILL = "resource_kill"  # killed for memory or runtime: retry with scaled resources
    DELETED = "deleted"  # qdel / kill()
    LOST = "lost"  # no accounting after the grace period


@dataclass(frozen=True)
class ExitInfo:
    """How a finished job ended, from accounting (Grid Engine) or the shepherd's record (local)."""

    job_id: str
    kind: ExitKind
    exit_status: int | None = None
    reason: str = ""  # human-readable, e.g. "exceeded runtime h_rt=10s (qacct failed 37)"
    resource: str | None = None  # "memory" or "runtime" for RESOURCE_KILL
    hostname: str | None = None
    maxrss_bytes: int | None = None
    maxvmem_bytes: int | None = None
    wallclock_s: float | None = None
    cpu_s: float | None = None
    start_time: float | None = None  # epoch seconds
    end_time: float | None = None
    slots: int | None = None
    granted_pe: str | None = None


@dataclass(frozen=True)
class JobRequest:
    """One job to submit. ``argv`` is executed as given (no shell between the submitter and the job)."""

    name: str
    argv: Sequence[str]
    resources: Resources
    log_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    # Arrays: elements 1..array_length, at most max_concurrent running at once (Grid Engine ``-t``/``-tc``).
    array_length: int | None = None
    max_concurrent: int | None = None


class SubmissionError(RuntimeError):
    """The batch system refused a job (an invalid request, a ``qsub -w e`` verdict); its message says why."""


class ClusterError(RuntimeError):
    """A batch system command failed (not reachable, unparsable output)."""


class ClusterUnavailable(ClusterError):
    """The batch system could not be reached (e.g. the Grid Engine qmaster is down): transient, and nothing was done.

    For ``submit`` it means the job was provably not submitted, so the try may simply be retried.
    """


class UnknownQueue(ResourceError):
    """A queue the cluster does not have: a configuration error (fatal), the message lists the queues there are."""


_JOB_ID_RE = re.compile(r"^([^.\s]+)(?:\.(\d+))?$")


def split_job_id(job_id: str) -> tuple[str, int | None]:
    """A job id "J" or an array element's "J.T" → ("J", None) or ("J", T); ValueError for anything else.

    Generic on purpose: a backend checks ``J`` further (Grid Engine and the local cluster number their jobs).
    """
    m = _JOB_ID_RE.match(job_id) if isinstance(job_id, str) else None
    if not m:
        raise ValueError(f"not a job id (expected 'J' or an array element 'J.T' with a numeric T): {job_id!r}")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def log_file_paths(log_dir: Path, name: str, job_id: str, element: int | None = None) -> tuple[Path, Path]:
    """Grid Engine's default stdout/stderr names in ``log_dir``: ``<name>.o<job>`` / ``.e<job>``, array elements
    ``<name>.o<job>.<task>``. Both backends write there; ``name`` is the job name as the backend spells it."""
    suffix = job_id if element is None else f"{job_id}.{element}"
    return log_dir / f"{name}.o{suffix}", log_dir / f"{name}.e{suffix}"


class Cluster(Protocol):
    """A batch system backend."""

    name: str  # "local" or "gridengine": the cluster_type name in the state database

    def submit(self, job: JobRequest) -> str:
        """Submit; return the job id ("123"; arrays "123", elements addressed as "123.<i>").

        SubmissionError: refused, ClusterUnavailable: not reachable and not submitted (retry later)."""
        ...

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """One batch-system query for all ids; ids not in the queue come back as GONE."""
        ...

    def find_jobs(self, name: str) -> list[str]:
        """Ids of jobs still in the queue that were submitted under ``name`` (one listing): re-attach when the
        submitter died between the submission and storing the job id."""
        ...

    def exit_info(self, job_ids: Iterable[str]) -> dict[str, ExitInfo]:
        """Exit info of finished jobs; ids whose record is not available yet are left out."""
        ...

    def kill(self, job_ids: Sequence[str]) -> None:
        """Delete jobs (one call); jobs already gone are not an error."""
        ...

    def set_array_concurrency(self, limits: Mapping[str, int | None]) -> None:
        """Change how many elements of submitted arrays may run at once ({array job id: limit, None: no limit of
        its own}), as ``qalter -tc``: running elements go on, pending ones start only while under the limit.
        Arrays already gone are not an error."""
        ...

    def queue_limits(self, queue: str | None) -> QueueLimits:
        """Limits of a queue (None: the default queue); UnknownQueue when the cluster has no such queue."""
        ...

    def log_paths(self, job: JobRequest, job_id: str, element: int | None = None) -> tuple[Path, Path]:
        """Where the job's stdout and stderr go."""
        ...
