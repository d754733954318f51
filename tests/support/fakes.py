"""A batch system in memory, for unit tests of execution and watching (the real backends have their own tests)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobmon_airflow.clusters.base import (
    ExitInfo,
    JobRequest,
    JobState,
    JobStatus,
    UnknownQueue,
    log_file_paths,
    split_job_id,
)
from jobmon_airflow.resources import QueueLimits


@dataclass
class FakeCluster:
    """Jobs stay RUNNING until a test ends them with :meth:`finish` (GONE, with or without accounting)."""

    name: str = "local"
    queues: dict[str, QueueLimits] = field(default_factory=lambda: {"all.q": QueueLimits("all.q", 8, 16.0, 86400)})
    default_queue: str = "all.q"
    submitted: list[JobRequest] = field(default_factory=list)
    states: dict[str, JobStatus] = field(default_factory=dict)
    accounting: dict[str, ExitInfo] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    concurrency: list[dict[str, int | None]] = field(default_factory=list)  # each set_array_concurrency call
    calls: dict[str, int] = field(default_factory=dict)

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def submit(self, job: JobRequest) -> str:
        self._count("submit")
        self.submitted.append(job)
        job_id = str(100 + len(self.submitted))
        for element in range(1, (job.array_length or 0) + 1):
            self.states[f"{job_id}.{element}"] = JobStatus(f"{job_id}.{element}", JobState.RUNNING)
        if not job.array_length:
            self.states[job_id] = JobStatus(job_id, JobState.RUNNING)
        return job_id

    def finish(self, job_id: str, info: ExitInfo | None = None) -> None:
        """The job leaves the queue; ``info``: what accounting says about it (None: no record)."""
        self.states[job_id] = JobStatus(job_id, JobState.GONE)
        if info is not None:
            self.accounting[job_id] = info

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        self._count("statuses")
        return {j: self.states.get(j, JobStatus(j, JobState.GONE)) for j in job_ids}

    def find_jobs(self, name: str) -> list[str]:
        return [j for j, job in zip(self.states, self.submitted, strict=False) if job.name == name]

    def exit_info(self, job_ids: Iterable[str]) -> dict[str, ExitInfo]:
        self._count("exit_info")
        return {j: self.accounting[j] for j in job_ids if j in self.accounting}

    def kill(self, job_ids: Sequence[str]) -> None:
        self.killed.extend(job_ids)
        for job_id in job_ids:
            for known in list(self.states):
                if split_job_id(known)[0] == split_job_id(job_id)[0]:
                    self.states[known] = JobStatus(known, JobState.GONE)

    def set_array_concurrency(self, limits: Mapping[str, int | None]) -> None:
        self._count("set_array_concurrency")
        self.concurrency.append(dict(limits))

    def queue_limits(self, queue: str | None = None) -> QueueLimits:
        self._count("queue_limits")
        name = queue or self.default_queue
        if name not in self.queues:
            raise UnknownQueue(f"compute_resources.queue: no queue {name!r}; queues: {', '.join(self.queues)}")
        return self.queues[name]

    def log_paths(self, job: JobRequest, job_id: str, element: int | None = None) -> tuple[Path, Path]:
        return log_file_paths(job.log_dir, job.name, job_id, element)
