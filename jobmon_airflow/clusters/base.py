"""The cluster interface: what Jobmon needs from a batch system, implemented by ``local`` and ``gridengine``.

Every method that asks about jobs takes many ids at once: a caller watching 10,000 jobs makes one call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from jobmon_airflow.resources import QueueLimits, Resources


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
    # Job context key=value pairs (``qsub -ac``): identity used to find the job again (re-attach).
    context: Mapping[str, str] = field(default_factory=dict)


class SubmissionError(RuntimeError):
    """The batch system refused a job; the message carries its own reason."""


class ClusterError(RuntimeError):
    """A batch system command failed (not reachable, unparsable output)."""


class Cluster(Protocol):
    """A batch system backend."""

    name: str  # "local" or "gridengine": the cluster_type name in the state database

    def submit(self, job: JobRequest) -> str:
        """Submit; return the job id ("123"; arrays "123", elements addressed as "123.<i>")."""
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

    def queue_limits(self, queue: str | None) -> QueueLimits:
        """Limits of a queue (None: the default queue)."""
        ...

    def log_paths(self, job: JobRequest, job_id: str, element: int | None = None) -> tuple[Path, Path]:
        """Where the job's stdout and stderr go."""
        ...
