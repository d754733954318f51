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
from jobmon_airflow.service import JobmonService, ResourcePlan, hash_token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    task_instance_id: int
    job_id: str
    resources: dict[str, Any]
    reattached: bool = False


def safe_path_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120] or "_"


def write_token(log_dir: Path, owner: int | str) -> tuple[str, Path]:
    """A fresh bearer token, in a file only the owner can read (never argv or env: ``ps``, ``qstat -j``)."""
    token_dir = log_dir / ".tokens"
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = token_dir / (f"ti-{owner}.token" if isinstance(owner, int) else f"{owner}.token")
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


def array_worker_argv(
    manifest: Path, state_manager_url: str, heartbeat_interval: float, http_retry_seconds: float = 30.0
) -> list[str]:
    """The argv every element of an array batch runs; each finds its instance in the manifest by SGE_TASK_ID."""
    return [
        sys.executable,
        "-m",
        "jobmon_airflow.worker_node",
        "--array-manifest", str(manifest),
        "--state-manager-url", state_manager_url,
        "--heartbeat-interval", f"{heartbeat_interval:g}",
        "--http-retry-seconds", f"{http_retry_seconds:g}",
    ]  # fmt: skip


def job_name(ti_id: int, task_name: str) -> str:
    """The cluster job's name: the instance id first, so the job can be found again by name alone."""
    return f"ti{ti_id}.{task_name}"


def reattach(service: JobmonService, cluster: Cluster, task_id: int, task_name: str) -> Submission | None:
    """A live job of this task from an earlier try or a crashed worker: adopt it instead of submitting twice."""
    live = service.live_task_instance(task_id)
    if live is None:
        return None
    if live.status == states.TaskInstanceStatus.KILL_SELF:
        if live.distributor_id:
            cluster.kill([live.distributor_id])  # killed on purpose: make sure, and start afresh
        return None
    if not live.distributor_id:
        # The submitter died between qsub and storing the job id: the job's name still leads to it.
        found = cluster.find_jobs(job_name(live.id, task_name))
        if len(found) != 1:
            service.log_no_distributor_id([live.id], f"submission interrupted; jobs found by name: {found}")
            if found:
                cluster.kill(found)
            return None
        log.info("Found job %s of task instance %s by its name", found[0], live.id)
        service.log_distributor_ids({live.id: found[0]})
        live = service.task_instance(live.id)
        assert live.distributor_id is not None
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
        name=job_name(ti_id, name),
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


def submit_array_batch(
    service: JobmonService,
    cluster: Cluster,
    *,
    workflow_run_id: int,
    cluster_id: int,
    array_id: int,
    name: str,
    plan: ResourcePlan,
    commands: Mapping[int, str],
    log_dir: Path,
    state_manager_url: str,
    heartbeat_interval: float,
    try_number: int | None,
    max_concurrent: int | None = None,
    http_retry_seconds: float = 30.0,
) -> dict[int, str]:
    """One array batch: the plan's tasks (one resource set) queued together and submitted as ONE array job
    (``qsub -t 1-N``). Each element finds its instance in the batch manifest by ``SGE_TASK_ID``. Returns
    {task instance id: element job id "J.i"}; bulk statements throughout, one cluster call."""
    from jobmon_airflow.worker_node import write_array_manifest

    batch = service.next_array_batch_num(array_id)
    queue = cluster.queue_limits(plan.resources.queue)
    ti_ids = service.queue_task_instances(
        workflow_run_id,
        cluster_id,
        plan.task_ids,
        plan.resources,
        plan.kind,
        queue,
        try_number=try_number,
        array_id=array_id,
        array_batch_num=batch,
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    token, token_file = write_token(log_dir, f"array-{array_id}-batch-{batch}")
    # One token per batch: it opens this batch's instances only. Exit records: <log_dir>/ti-<id>.exit.json.
    service.instantiate_array_batch(array_id, batch, hash_token(token), str(log_dir))
    manifest = log_dir / f"array-{array_id}-batch-{batch}.manifest.json"
    write_array_manifest(  # element i is the instance SGE_TASK_ID i runs
        manifest,
        token_file,
        [(ti, commands[task], log_dir / f"ti-{ti}.exit.json") for ti, task in zip(ti_ids, plan.task_ids, strict=True)],
    )
    job = JobRequest(
        name=name,
        argv=array_worker_argv(manifest, state_manager_url, heartbeat_interval, http_retry_seconds),
        resources=plan.resources,
        log_dir=log_dir,
        array_length=len(ti_ids),
        max_concurrent=max_concurrent,
    )
    try:
        job_id = cluster.submit(job)
    except Exception as exc:
        service.log_no_distributor_id(ti_ids, f"submission failed: {exc}")
        raise
    # Element logs are "<prefix><element number>" on both backends (Grid Engine: <name>.o<job>.<task>).
    first_out, first_err = (str(p) for p in cluster.log_paths(job, job_id, 1))
    assert first_out.endswith("1") and first_err.endswith("1"), (first_out, first_err)
    service.log_array_distributor_ids(array_id, batch, job_id, first_out[:-1], first_err[:-1])
    elements = {ti: f"{job_id}.{i}" for i, ti in enumerate(ti_ids, start=1)}
    log.info(
        "Submitted array batch %s of %s elements as %s job %s with %s (at most %s at once)",
        batch, len(ti_ids), cluster.name, job_id, plan.resources.to_dict(), max_concurrent or "all",
    )  # fmt: skip
    return elements
