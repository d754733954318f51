"""What task and array runs share: the identity of the DAG run they belong to, the verdict they end with, and
the one path by which outcomes learnt without the worker's report are recorded and jobs are killed."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from jobmon_airflow.clusters.base import Cluster, split_job_id
from jobmon_airflow.records import WatchEvent
from jobmon_airflow.service import BoundRun, Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkflowIdentity:
    """The DAG run an operator's tasks belong to (one Jobmon workflow), and which Airflow try this is."""

    dag_id: str
    run_id: str
    tool: str | None = None
    tool_version: str = "1"
    workflow_args: str | None = None
    try_number: int | None = None
    max_concurrently_running: int | None = None
    # The first try after the task was (re)started by a user (Airflow's first try of a pass), not a retry of the
    # same pass: what ended in a pass stays ended through its retries, a new pass starts failed elements over.
    new_pass: bool = True

    def bind(self, services: Services) -> BoundRun:
        return services.binding.bind_workflow_run(
            dag_id=self.dag_id,
            run_id=self.run_id,
            tool=self.tool,
            tool_version=self.tool_version,
            workflow_args=self.workflow_args,
            max_concurrently_running=self.max_concurrently_running,
            user=_os_user(),  # the workflow's owner for `workflow status -u`, `reset`, `task update`
        )


def _os_user() -> str | None:
    """The user the Airflow worker runs as (who submits the jobs: Jobmon's workflow run user)."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


class VerdictKind(Enum):
    SUCCESS = "success"
    RETRY = "retry"  # this try failed; the next one may succeed (an ordinary error, a resource kill)
    FAIL = "fail"  # no further try helps (attempts used up, a fatal error, a kill)


@dataclass(frozen=True)
class Verdict:
    """How a run ended, for the operator to turn into an Airflow outcome."""

    kind: VerdictKind
    message: str = ""
    result: dict[str, Any] | None = None  # the operator's return value on success (XCom)
    details: list[str] = field(default_factory=list)  # error logs worth showing in the task log


def record_events(services: Services, cluster: Cluster, events: Iterable[WatchEvent]) -> None:
    """Outcomes the watchers learnt without the worker's report (exit record, accounting, lost, an error state):
    delete a job the cluster still holds, then record the outcome. Events the database holds are skipped."""
    for event in events:  # only instances whose worker could not report: few
        if event.recorded:
            continue
        if event.kill_job and event.job_id:
            cluster.kill([event.job_id])
        log.info("Task instance %s: outcome %s from %s", event.task_instance_id, event.status, event.source.value)
        services.lifecycle.apply_outcome(
            event.task_instance_id,
            event.status,
            exit_status=event.exit_status,
            message=event.message,
            nodename=event.nodename,
            usage=event.usage,
        )


def kill_instances(services: Services, cluster: Cluster, jobs: Mapping[int, str | None]) -> None:
    """Record K for every instance, delete their jobs (one delete per cluster job: ``qdel J`` takes every element
    of array J), then fail the tasks. The order keeps a late worker report from looking like a normal end."""
    services.lifecycle.request_kill(list(jobs))
    job_ids = sorted({split_job_id(job_id)[0] for job_id in jobs.values() if job_id})
    if job_ids:
        cluster.kill(job_ids)
    services.lifecycle.end_killed(list(jobs))
