"""The typed results of :mod:`.insights` (frozen dataclasses): what the query API, the pages and the CLI show.

Units are the database's: memory in bytes (``maxrss``), requested memory in GiB and runtime in seconds (Jobmon's
``requested_resources``), dates naive UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MAX_PAGE_LIMIT = 1000
MAX_OFFSET = 10_000_000


@dataclass(frozen=True)
class PageRequest:
    """Which slice of a list: ``limit`` rows from ``offset`` (bounded, ValueError naming the field)."""

    offset: int = 0
    limit: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.offset <= MAX_OFFSET:
            raise ValueError(f"offset: expected 0 to {MAX_OFFSET}, got {self.offset}")
        if not 1 <= self.limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"limit: expected 1 to {MAX_PAGE_LIMIT}, got {self.limit}")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    total: int  # rows matching the filters, over all pages
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.items)
        return end if end < self.total else None


@dataclass(frozen=True)
class WorkflowSummary:
    """One row of Jobmon's ``workflow status`` / the GUI's workflow overview."""

    id: int
    name: str
    dag_id: str
    run_id: str
    status: str  # Jobmon's letter
    status_name: str
    user: str | None  # of the newest run
    created_date: datetime | None
    status_date: datetime | None
    tasks: int
    buckets: dict[str, int]  # PENDING SCHEDULED RUNNING DONE FATAL → task count
    retries: int
    runs: int
    latest_run_status: str | None
    max_concurrently_running: int


@dataclass(frozen=True)
class WorkflowRunRow:
    id: int
    user: str | None
    status: str
    status_name: str
    created_date: datetime | None
    status_date: datetime | None
    heartbeat_date: datetime | None


@dataclass(frozen=True)
class TemplateProgress:
    """Tasks of one template per bucket (a task bound without a template counts under its Airflow task id)."""

    name: str
    tasks: int
    buckets: dict[str, int]


@dataclass(frozen=True)
class WorkflowDetail:
    summary: WorkflowSummary
    description: str | None
    workflow_args: str
    runs: tuple[WorkflowRunRow, ...]  # newest first, at most 100
    templates: tuple[TemplateProgress, ...]
    array_limits: dict[str, int] = field(default_factory=dict)  # array name → max_concurrently_running


@dataclass(frozen=True)
class TaskRow:
    """One row of a workflow's task table (Jobmon's ``workflow tasks``), with the newest instance."""

    id: int
    name: str
    airflow_task_id: str
    map_index: int
    template: str
    status: str
    bucket: str
    status_date: datetime | None
    num_attempts: int
    max_attempts: int
    retries: int
    task_instance_id: int | None
    task_instance_status: str | None
    distributor_id: str | None
    nodename: str | None
    exit_status: int | None
    maxrss: int | None
    wallclock: float | None


@dataclass(frozen=True)
class ErrorLogEntry:
    error_time: datetime | None
    description: str  # the end of it (at most 10,000 characters)


@dataclass(frozen=True)
class InstanceDetail:
    """One attempt: Jobmon's TI table (distributor id, status, dates, logs, error, requested resources)."""

    id: int
    workflow_run_id: int
    status: str
    status_name: str
    distributor_id: str | None  # the cluster's job id (with ".step" for array elements)
    nodename: str | None
    queue: str | None
    requested_resources: dict[str, Any]
    resources_type: str | None  # O original, V validated, A adjusted (scaled after a resource kill)
    exit_status: int | None
    submitted_date: datetime | None
    status_date: datetime | None
    report_by_date: datetime | None
    try_number: int | None
    array_batch_num: int | None
    array_step_id: int | None
    maxrss: int | None
    maxpss: int | None
    wallclock: float | None
    cpu: float | None
    usage_source: str | None
    stdout: str | None  # log paths
    stderr: str | None
    exit_record: str | None
    errors: tuple[ErrorLogEntry, ...]  # error logs (the stderr tail the worker sent), oldest first


@dataclass(frozen=True)
class TaskDetail:
    id: int
    name: str
    workflow_id: int
    dag_id: str
    run_id: str
    airflow_task_id: str
    map_index: int
    template: str
    array_id: int | None
    command: str
    status: str
    status_name: str
    bucket: str
    status_date: datetime | None
    num_attempts: int
    max_attempts: int
    resource_scales: dict[str, Any] | None
    fallback_queues: tuple[str, ...]
    instances: tuple[InstanceDetail, ...]  # newest first


@dataclass(frozen=True)
class ErrorGroup:
    """Errors with the same signature (numbers, hex ids and paths masked in their last lines)."""

    signature: str
    count: int  # error logs in the group (of those scanned)
    task_count: int
    task_ids: tuple[int, ...]  # sorted, at most 100
    sample: str  # the newest error's tail
    scanned: int  # error logs read to group (the newest ones)
    total: int  # error logs of the workflow's failed instances


@dataclass(frozen=True)
class Percentiles:
    """Statistics of one used resource over done instances; ``None`` when nothing was measured."""

    count: int
    min: float | None
    max: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class UsagePoint:
    task_instance_id: int
    task_id: int
    status: str
    memory_gib: float | None  # used (max RSS)
    runtime_s: float | None  # used (wallclock)
    requested_memory_gib: float | None
    requested_runtime_s: float | None


@dataclass(frozen=True)
class TemplateUsage:
    """Used vs requested resources of one template, and the request Jobmon's ``resources yaml`` would suggest."""

    template: str
    instances: int  # ended instances with usage
    memory_gib: Percentiles  # done instances
    runtime_s: Percentiles
    requested_memory_gib: Percentiles  # over done instances (what they asked for)
    requested_runtime_s: Percentiles
    suggested: dict[str, Any]  # {"memory": "3G", "runtime": 1234, "cores": n, "queue": q}
    points: tuple[UsagePoint, ...]  # evenly spaced sample, every status
    sampled: bool  # points are a sample of `instances`
