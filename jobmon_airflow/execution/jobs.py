"""Submitting task instances as cluster jobs: tokens, the worker node's argv, job names, one job or one array
batch, with the job id stored right after submission.

The service layer decides (resources, instances); this module does the cluster I/O around it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import secrets
import stat
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobmon_airflow import worker_node
from jobmon_airflow.array_manifest import write_array_manifest
from jobmon_airflow.clusters.base import Cluster, JobRequest
from jobmon_airflow.files import PRIVATE_FILE, make_private_dirs
from jobmon_airflow.hashing import hash_token
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.service import ResourcePlan, Services

log = logging.getLogger(__name__)
#: Array batch submissions running at once: two qsubs in flight nearly halve 20 batches' time on one qmaster.
SUBMISSIONS_IN_FLIGHT = 2


@dataclass(frozen=True)
class JobSettings:
    """Where an operator's jobs keep their files and how their worker nodes report: the same for every attempt."""

    log_dir: Path  # logs, exit records, tokens and manifests of one DAG run; every node must see it
    state_manager_url: str
    heartbeat_interval: float = 90.0
    http_retry_seconds: float = 30.0


@dataclass(frozen=True)
class Submission:
    task_instance_id: int
    job_id: str
    resources: dict[str, Any]
    reattached: bool = False


def write_token(log_dir: Path, owner: int | str) -> tuple[str, Path]:
    """A fresh bearer token in a file only this user can read (never argv or env: ``ps``, ``qstat -j``).

    The token directory must be this user's own and private (a directory, not a link, mode 0700): on a shared log
    root another user could otherwise plant it, or a link in it, to read or redirect tokens. It is checked on the
    open directory and the file is created in that very directory (``dir_fd``), anew (``O_EXCL | O_NOFOLLOW``),
    never through a link, so nothing can be swapped in between the check and the write.
    """
    token_dir = log_dir / ".tokens"
    try:
        make_private_dirs(token_dir)
        dir_fd = os.open(token_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EEXIST, errno.ENOTDIR):  # a link, or not a directory
            raise
        raise PermissionError(f"token directory {token_dir} must be a directory, not a link or file: {exc}") from exc
    try:
        st = os.fstat(dir_fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise PermissionError(
                f"token directory {token_dir} must be a directory owned by uid {os.getuid()} with mode 0700 "
                f"(found uid {st.st_uid}, mode {stat.filemode(st.st_mode)})"
            )
        name = f"ti-{owner}.token" if isinstance(owner, int) else f"{owner}.token"
        token = secrets.token_urlsafe(32)
        with contextlib.suppress(FileNotFoundError):
            # Left by an earlier state database with the same ids; unlink removes a link, not its target.
            os.unlink(name, dir_fd=dir_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, PRIVATE_FILE, dir_fd=dir_fd)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), PRIVATE_FILE)  # exactly 0600, whatever the umask
            fh.write(token)
    finally:
        os.close(dir_fd)
    return token, token_dir / name


def worker_argv(ti_id: int, command: str, settings: JobSettings, token_file: Path, exit_record: Path) -> list[str]:
    """The job's argv. The command travels base64-encoded: one opaque token no shell or qsub can re-split."""
    return [
        *worker_node.python_argv(),
        "--task-instance-id", str(ti_id),
        "--state-manager-url", settings.state_manager_url,
        "--token-file", str(token_file),
        "--exit-record", str(exit_record),
        "--heartbeat-interval", f"{settings.heartbeat_interval:g}",
        "--http-retry-seconds", f"{settings.http_retry_seconds:g}",
        "--command-b64", base64.b64encode(command.encode()).decode(),
    ]  # fmt: skip


def array_worker_argv(manifest: Path, settings: JobSettings) -> list[str]:
    """The argv every element of an array batch runs; each finds its instance in the manifest by SGE_TASK_ID."""
    return [
        *worker_node.python_argv(),
        "--array-manifest", str(manifest),
        "--state-manager-url", settings.state_manager_url,
        "--heartbeat-interval", f"{settings.heartbeat_interval:g}",
        "--http-retry-seconds", f"{settings.http_retry_seconds:g}",
    ]  # fmt: skip


def job_name(ti_id: int, task_name: str) -> str:
    """The cluster job's name: the instance id first, so the job can be found again by name alone."""
    return f"ti{ti_id}.{task_name}"


def exit_record_path(log_dir: Path, ti_id: int) -> Path:
    return log_dir / f"ti-{ti_id}.exit.json"


def queue_limits(
    cluster: Cluster, requested: Resources, fallback_queues: Sequence[str]
) -> tuple[Resources, dict[str, QueueLimits]]:
    """The limits of every queue an attempt may go to, asked of the cluster once: the requested queue (the
    cluster's default when none is named, which ``requested`` then names) and the fallback queues."""
    first = cluster.queue_limits(requested.queue)
    limits = {first.name: first}
    for queue in fallback_queues:
        if queue not in limits:
            limits[queue] = cluster.queue_limits(queue)
    return replace(requested, queue=first.name), limits


def submit_task_instance(
    services: Services,
    cluster: Cluster,
    settings: JobSettings,
    *,
    workflow_run_id: int,
    cluster_id: int,
    task_id: int,
    name: str,
    command: str,
    plan: ResourcePlan,
    queue: QueueLimits,
    try_number: int | None,
    env: Mapping[str, str] | None = None,
) -> Submission:
    """Queue one instance with the planned resources and submit it; the job id is stored right after."""
    lifecycle = services.lifecycle
    (ti_id,) = lifecycle.queue_task_instances(
        workflow_run_id, cluster_id, [task_id], plan.resources, plan.kind, queue, try_number=try_number
    )
    make_private_dirs(settings.log_dir)  # logs, exit records, tokens: this user's only
    token, token_file = write_token(settings.log_dir, ti_id)
    exit_record = exit_record_path(settings.log_dir, ti_id)
    lifecycle.instantiate([ti_id], {ti_id: hash_token(token)}, {ti_id: {"exit_record": str(exit_record)}})
    job = JobRequest(
        name=job_name(ti_id, name),
        argv=worker_argv(ti_id, command, settings, token_file, exit_record),
        resources=plan.resources,
        log_dir=settings.log_dir,
        env=dict(env or {}),
    )
    try:
        job_id = cluster.submit(job)
    except Exception as exc:
        lifecycle.log_no_distributor_id([ti_id], f"submission failed: {exc}")
        raise
    stdout, stderr = cluster.log_paths(job, job_id)
    lifecycle.log_distributor_ids({ti_id: job_id}, {ti_id: {"stdout": str(stdout), "stderr": str(stderr)}})
    log.info(
        "Submitted task instance %s as %s job %s with %s; logs %s",
        ti_id, cluster.name, job_id, plan.resources.to_dict(), stderr,
    )  # fmt: skip
    return Submission(ti_id, job_id, plan.resources.to_dict())


@dataclass(frozen=True)
class _Batch:
    num: int
    ti_ids: list[int]
    job: JobRequest


def submit_array_batches(
    services: Services,
    cluster: Cluster,
    settings: JobSettings,
    *,
    workflow_run_id: int,
    cluster_id: int,
    array_id: int,
    name: str,
    plan: ResourcePlan,
    queue: QueueLimits,
    commands: Mapping[int, str],
    try_number: int | None,
    batch_size: int,
    max_batches: int | None = None,
    max_concurrent: int | None = None,
) -> dict[int, str]:
    """The plan's tasks (one resource set) in array batches of ``batch_size``, each queued together and submitted
    as ONE array job (``qsub -t 1-N``); each element finds its instance in the batch manifest by ``SGE_TASK_ID``.
    Returns {task instance id: element job id "J.i"}; bulk statements throughout, one cluster call per batch.

    Pipelined: up to ``SUBMISSIONS_IN_FLIGHT`` submissions run at once (in threads: a qsub is a process that mostly
    waits on the qmaster, which serves several at a time), while the database records the job ids of the batch
    before and queues the next one. Every submitted job's ids are recorded; a failed submission turns the instances
    of its batch to W (no job), no further batch is queued, the submission still running beside it is settled
    (recorded, or W if it failed too), and the first error is raised."""
    lifecycle, log_dir = services.lifecycle, settings.log_dir
    groups = [plan.task_ids[i : i + batch_size] for i in range(0, len(plan.task_ids), batch_size)]
    groups = groups[:max_batches] if max_batches is not None else groups
    if not groups:
        return {}
    make_private_dirs(log_dir)
    first_num = services.queries.next_array_batch_num(array_id)

    def prepare(k: int) -> _Batch:
        num = first_num + k
        token, token_file = write_token(log_dir, f"array-{array_id}-batch-{num}")  # one token per batch
        steps = lifecycle.queue_array_batch(
            workflow_run_id, cluster_id, groups[k], plan.resources, plan.kind, queue,
            array_id=array_id, batch_num=num, token_hash=hash_token(token), try_number=try_number,
        )  # fmt: skip
        ti_ids = [ti for ti, _ in steps]
        manifest = log_dir / f"array-{array_id}-batch-{num}.manifest.json"
        write_array_manifest(  # element i is the instance SGE_TASK_ID i runs: the (i-1)-th step
            manifest, token_file, [(ti, commands[t], exit_record_path(log_dir, ti)) for ti, t in steps]
        )
        job = JobRequest(
            name=name,
            argv=array_worker_argv(manifest, settings),
            resources=plan.resources,
            log_dir=log_dir,
            array_length=len(ti_ids),
            max_concurrent=max_concurrent,
        )
        return _Batch(num, ti_ids, job)

    def record(batch: _Batch, job_id: str) -> dict[int, str]:
        # Element logs are "<prefix><element number>" on both backends (Grid Engine: <name>.o<job>.<task>).
        first_out, first_err = (str(p) for p in cluster.log_paths(batch.job, job_id, 1))
        assert first_out.endswith("1") and first_err.endswith("1"), (first_out, first_err)
        lifecycle.log_array_distributor_ids(array_id, batch.num, job_id, first_out[:-1], first_err[:-1], str(log_dir))
        log.info(
            "Submitted array batch %s of %s elements as %s job %s with %s (at most %s at once)",
            batch.num, len(batch.ti_ids), cluster.name, job_id, plan.resources.to_dict(), max_concurrent or "all",
        )  # fmt: skip
        return {ti: f"{job_id}.{i}" for i, ti in enumerate(batch.ti_ids, start=1)}

    submitted: dict[int, str] = {}
    in_flight: deque[tuple[Future[str], _Batch]] = deque()
    failure: BaseException | None = None
    queued = 0
    with ThreadPoolExecutor(max_workers=SUBMISSIONS_IN_FLIGHT, thread_name_prefix="jobmon-submit") as pool:
        while in_flight or (failure is None and queued < len(groups)):
            while failure is None and queued < len(groups) and len(in_flight) < SUBMISSIONS_IN_FLIGHT:
                try:
                    batch = prepare(queued)
                except BaseException as exc:  # the database failed: settle what was submitted, then fail
                    failure = exc
                    break
                queued += 1
                in_flight.append((pool.submit(cluster.submit, batch.job), batch))
            if not in_flight:
                break
            future, batch = in_flight.popleft()
            try:
                job_id = future.result()
            except Exception as exc:
                lifecycle.log_no_distributor_id(batch.ti_ids, f"submission failed: {exc}")
                failure = failure or exc
                continue
            try:
                submitted.update(record(batch, job_id))
            except BaseException as exc:  # its job exists; the others in flight are still settled
                failure = failure or exc
    if failure is not None:
        raise failure
    return submitted
