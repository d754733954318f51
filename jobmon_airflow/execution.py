"""Submitting one Jobmon task instance as a cluster job: what the operator does between bind and defer.

Kept apart from the operator so the sequence reads in one place: re-attach to a live job of the same task, or
scale and place the resources, queue an instance, issue its token, submit, and record the job id at once.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobmon_airflow import states
from jobmon_airflow.clusters.base import Cluster, JobRequest, JobState
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import JobmonService, hash_token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    task_instance_id: int
    job_id: str
    resources: dict[str, Any]
    reattached: bool = False


def safe_path_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120] or "_"


def write_token(log_dir: Path, ti_id: int) -> tuple[str, Path]:
    """A fresh bearer token for one instance, in a file only the owner can read (never argv or env: ``ps``)."""
    token_dir = log_dir / ".tokens"
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = token_dir / f"ti-{ti_id}.token"
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token, path


def worker_argv(
    ti_id: int,
    command: str,
    state_manager_url: str,
    token_file: Path,
    exit_record: Path,
    heartbeat_interval: float,
    http_retry_seconds: float = 30.0,
) -> list[str]:
    """The job's argv. The command travels base64-encoded: one opaque token no shell or qsub can re-split."""
    return [
        sys.executable,
        "-m",
        "jobmon_airflow.worker_node",
        "--task-instance-id", str(ti_id),
        "--state-manager-url", state_manager_url,
        "--token-file", str(token_file),
        "--exit-record", str(exit_record),
        "--heartbeat-interval", f"{heartbeat_interval:g}",
        "--http-retry-seconds", f"{http_retry_seconds:g}",
        "--command-b64", base64.b64encode(command.encode()).decode(),
    ]  # fmt: skip


def reattach(service: JobmonService, cluster: Cluster, task_id: int) -> Submission | None:
    """A live job of this task from an earlier try or a crashed worker: adopt it instead of submitting twice."""
    live = service.live_task_instance(task_id)
    if live is None:
        return None
    if live.status == states.TaskInstanceStatus.KILL_SELF or not live.distributor_id:
        # Killed on purpose, or the submission was interrupted before the job id was stored: not adoptable.
        if live.distributor_id:
            cluster.kill([live.distributor_id])
        if live.status != states.TaskInstanceStatus.KILL_SELF:
            service.log_no_distributor_id([live.id], "submission interrupted before the job id was recorded")
        return None
    state = cluster.statuses([live.distributor_id])[live.distributor_id].state
    log.info(
        "Re-attaching to job %s of task instance %s (status %s, cluster says %s)",
        live.distributor_id, live.id, live.status, state.value,
    )  # fmt: skip
    if state == JobState.GONE:
        log.info("Job %s already left the queue: its outcome is read from its exit record or accounting", live.id)
    return Submission(live.id, live.distributor_id, live.requested_resources, reattached=True)


def submit_task_instance(
    service: JobmonService,
    cluster: Cluster,
    *,
    workflow_run_id: int,
    cluster_id: int,
    task_id: int,
    name: str,
    command: str,
    requested: Resources,
    resource_scales: Mapping[str, Any] | None,
    fallback_queues: Sequence[str],
    log_dir: Path,
    state_manager_url: str,
    heartbeat_interval: float,
    try_number: int | None,
    http_retry_seconds: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> Submission:
    """Queue one instance with the right resources and submit it; the job id is stored right after submission."""
    resources, kind, warnings = service.resources_for_next_attempt(
        task_id, requested, cluster.queue_limits, resource_scales, fallback_queues
    )
    for warning in warnings:
        log.warning("Resources of %s: %s", name, warning)
    if kind == "A":
        log.info("Last attempt was killed for resources: scaled to %s", resources.to_dict())
    queue = cluster.queue_limits(resources.queue)
    (ti_id,) = service.queue_task_instances(
        workflow_run_id, cluster_id, [task_id], resources, kind, queue, try_number=try_number
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    token, token_file = write_token(log_dir, ti_id)
    exit_record = log_dir / f"ti-{ti_id}.exit.json"
    service.instantiate([ti_id], {ti_id: hash_token(token)}, {ti_id: {"exit_record": str(exit_record)}})
    job = JobRequest(
        name=name,
        argv=worker_argv(
            ti_id, command, state_manager_url, token_file, exit_record, heartbeat_interval, http_retry_seconds
        ),
        resources=resources,
        log_dir=log_dir,
        env=dict(env or {}),
    )
    try:
        job_id = cluster.submit(job)
    except Exception as exc:
        service.log_no_distributor_id([ti_id], f"submission failed: {exc}")
        raise
    stdout, stderr = cluster.log_paths(job, job_id)
    service.log_distributor_ids({ti_id: job_id}, {ti_id: {"stdout": str(stdout), "stderr": str(stderr)}})
    log.info(
        "Submitted task instance %s as %s job %s with %s; logs %s",
        ti_id, cluster.name, job_id, resources.to_dict(), stderr,
    )  # fmt: skip
    return Submission(ti_id, job_id, resources.to_dict())
