"""Watching submitted jobs until their task instance ends: the logic shared by the trigger and blocking mode.

A task instance ends when the worker node reports it (the database says so), or, when the worker could not report
(killed with its job by the batch system, State Manager down), from what the job left behind: the worker's exit
record beside its logs first, then the cluster's accounting; a job gone from the queue with neither after a grace
period is lost. One poll covers every watched instance of a process with one database query, one cluster status
call and one accounting call, however many tasks are deferred.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from jobmon_airflow import states
from jobmon_airflow.clusters import get_cluster
from jobmon_airflow.clusters.base import Cluster, ExitInfo, ExitKind, JobState, JobStatus
from jobmon_airflow.service import JobmonService, TaskInstanceView

log = logging.getLogger(__name__)

DEFAULT_LOST_GRACE_S = 60.0  # accounting can lag behind a job leaving the queue

#: Instance statuses that end the wait (K: a kill was requested, the operator finishes the job).
ENDED = states.TASK_INSTANCE_FINAL | {states.TaskInstanceStatus.KILL_SELF}

#: How a cluster's exit classification maps onto Jobmon's instance statuses.
EXIT_KIND_STATUS: Mapping[ExitKind, str] = {
    ExitKind.DONE: "D",
    ExitKind.ERROR: "E",
    ExitKind.RESOURCE_KILL: "Z",
    ExitKind.DELETED: "U",  # deleted outside Jobmon (a kill through Jobmon is already K)
    ExitKind.LOST: "U",
}


def read_exit_record(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        record: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # not written (yet), or being replaced: the writer renames atomically, so just look again
    return record if record.get("status") in ("D", "E", "Z", "F", "U") else None


def outcome(
    view: TaskInstanceView,
    job: JobStatus | None,
    exit_info: ExitInfo | None,
    record: Mapping[str, Any] | None,
    gone_for: float,
    lost_grace_s: float,
) -> dict[str, Any] | None:
    """The event that ends the wait, or None to keep waiting."""
    base = {"task_instance_id": view.id, "job_id": view.distributor_id}
    if view.status == states.TaskInstanceStatus.NO_HEARTBEAT:
        # Launched, never reported running, and its deadline passed: Jobmon's no_heartbeat_error, retryable.
        return {**base, "status": "E", "source": "triage", "message": f"job {view.distributor_id}: no heartbeat"}
    if view.status in ENDED:
        return {**base, "status": view.status, "source": "database"}
    if job is not None and job.state == JobState.ERROR:
        return {
            **base,
            "status": "U",
            "source": "cluster",
            "kill_job": True,
            "message": f"job {job.job_id} is in error state {job.raw}: {job.reason or 'no reason given'}",
        }
    if job is None or job.state != JobState.GONE:
        return None
    if record is not None:
        return {
            **base,
            "status": record["status"],
            "source": "exit_record",
            "exit_status": record.get("exit_status"),
            "message": record.get("error_message") or "",
            "nodename": record.get("nodename"),
            "usage": record.get("usage") or {},
        }
    if exit_info is not None:
        return {
            **base,
            "status": EXIT_KIND_STATUS[exit_info.kind],
            "source": "accounting",
            "exit_status": exit_info.exit_status,
            "message": exit_info.reason,
            "nodename": exit_info.hostname,
            "usage": {
                "maxrss_bytes": exit_info.maxrss_bytes,
                "wallclock_s": exit_info.wallclock_s,
                "cpu_s": exit_info.cpu_s,
            },
        }
    if gone_for >= lost_grace_s:
        return {
            **base,
            # Never ran (deleted while pending leaves no accounting): X, no heartbeat, retryable. Ran: U, lost.
            "status": "X" if view.status == states.TaskInstanceStatus.LAUNCHED else "U",
            "source": "lost",
            "message": f"job {job.job_id} left the queue and left no exit record or accounting after {gone_for:.0f}s",
        }
    return None


_GONE = JobStatus("", JobState.GONE)


@dataclass
class _Watch:
    job_id: str
    gone_since: float | None = None
    future: asyncio.Future[dict[str, Any]] | None = None


@dataclass
class Poller:
    """One poll of many watched instances: 1 DB query, 1 cluster status call, 1 accounting call, 1 heartbeat."""

    service: JobmonService
    cluster: Cluster
    lost_grace_s: float = DEFAULT_LOST_GRACE_S
    polls: int = 0
    watched: dict[int, _Watch] = field(default_factory=dict)

    def poll(self) -> dict[int, dict[str, Any]]:
        self.polls += 1
        views = self.service.task_instances(self.watched)
        open_ids = [i for i, v in views.items() if v.status not in ENDED]
        statuses = self.cluster.statuses([self.watched[i].job_id for i in open_ids]) if open_ids else {}
        # Liveness, as Jobmon's distributor and swarm do it: a launched job still in the queue is not late; a
        # running instance whose heartbeats stopped goes to T (triage), a launched one that never ran to X.
        queued = [
            i
            for i in open_ids
            if views[i].status == "O" and statuses.get(self.watched[i].job_id, _GONE).state != JobState.GONE
        ]
        self.service.log_launched_report_by(queued)
        triaging, no_heartbeat = self.service.set_status_for_triaging({v.workflow_run_id for v in views.values()})
        if triaging or no_heartbeat:
            log.warning("Heartbeats overdue: triaging %s, no heartbeat %s", triaging, no_heartbeat)
            views = self.service.task_instances(self.watched)
        now = time.monotonic()
        records: dict[int, dict[str, Any] | None] = {}
        need_accounting: list[str] = []
        for i in open_ids:
            w = self.watched[i]
            st = statuses.get(w.job_id)
            if st is not None and st.state == JobState.GONE:
                w.gone_since = w.gone_since or now
                records[i] = read_exit_record(views[i].exit_record)
                if records[i] is None:
                    need_accounting.append(w.job_id)
        exit_infos = self.cluster.exit_info(need_accounting) if need_accounting else {}
        self.service.log_workflow_run_heartbeats({v.workflow_run_id for v in views.values()})
        events: dict[int, dict[str, Any]] = {}
        for i, view in views.items():
            w = self.watched[i]
            event = outcome(
                view,
                statuses.get(w.job_id),
                exit_infos.get(w.job_id),
                records.get(i),
                now - w.gone_since if w.gone_since else 0.0,
                self.lost_grace_s,
            )
            if event is not None:
                events[i] = event
        return events

    def wait_blocking(self, ti_id: int, job_id: str, poll_interval: float) -> dict[str, Any]:
        """Blocking mode: poll one instance until it ends."""
        return self.wait_all_blocking({ti_id: job_id}, poll_interval)[ti_id]

    def wait_all_blocking(self, jobs: Mapping[int, str], poll_interval: float) -> dict[int, dict[str, Any]]:
        """Blocking mode: poll until every instance in {instance id: job id} has ended."""
        self.watched.update({ti_id: _Watch(job_id) for ti_id, job_id in jobs.items()})
        events: dict[int, dict[str, Any]] = {}
        try:
            while len(events) < len(jobs):
                for ti_id, event in self.poll().items():
                    events[ti_id] = event
                    self.watched.pop(ti_id, None)
                if len(events) < len(jobs):
                    time.sleep(poll_interval)
            return events
        finally:
            for ti_id in jobs:
                self.watched.pop(ti_id, None)


class SharedWatcher:
    """Every trigger of one process and event loop with the same database and cluster shares one poll loop."""

    # Per event loop (a watcher's futures belong to one loop), then per database, cluster and interval.
    _instances: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], SharedWatcher]]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, poller: Poller, poll_interval: float):
        self.poller = poller
        self.poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def get(
        cls, jobmon_conn_id: str, cluster: dict[str, Any], poll_interval: float, lost_grace_s: float
    ) -> SharedWatcher:
        watchers = cls._instances.setdefault(asyncio.get_running_loop(), {})
        key = (jobmon_conn_id, json.dumps(cluster, sort_keys=True), poll_interval, lost_grace_s)
        if key not in watchers:
            poller = await asyncio.to_thread(_build_poller, jobmon_conn_id, cluster, lost_grace_s)
            watchers.setdefault(key, cls(poller, poll_interval))  # another trigger may have won the race
        return watchers[key]

    async def wait(self, ti_id: int, job_id: str) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.poller.watched[ti_id] = _Watch(job_id, future=future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        try:
            return await future
        finally:
            self.poller.watched.pop(ti_id, None)

    async def wait_many(self, jobs: Mapping[int, str]) -> dict[int, dict[str, Any]]:
        """Wait until every instance in {instance id: job id} has ended; their events by instance id."""
        events = await asyncio.gather(*(self.wait(ti_id, job_id) for ti_id, job_id in jobs.items()))
        return dict(zip(jobs, events, strict=True))

    async def _loop(self) -> None:
        while self.poller.watched:
            try:
                events = await asyncio.to_thread(self.poller.poll)
            except Exception:  # a failed poll (DB or cluster hiccup) must not end every watch: retry next interval
                log.exception("Jobmon watcher: poll failed; retrying in %ss", self.poll_interval)
                events = {}
            for ti_id, event in events.items():
                w = self.poller.watched.get(ti_id)
                if w is not None and w.future is not None and not w.future.done():
                    w.future.set_result(event)
            await asyncio.sleep(self.poll_interval)


def _build_poller(jobmon_conn_id: str, cluster: dict[str, Any], lost_grace_s: float) -> Poller:
    from jobmon_airflow.hooks.jobmon import JobmonHook

    return Poller(JobmonHook(jobmon_conn_id).get_service(), get_cluster(cluster), lost_grace_s)


def kill_task_instance(service: JobmonService, cluster: Cluster, ti_id: int, job_id: str | None) -> None:
    """Record K, delete the job, then fail the task (the order keeps a late worker report from looking like a
    normal end)."""
    service.request_kill([ti_id])
    if job_id:
        cluster.kill([job_id])
    service.end_killed([ti_id])


def kill_instances(service: JobmonService, cluster: Cluster, jobs: Mapping[int, str]) -> None:
    """Many instances at once (an array): K for all, one delete per cluster job (``qdel J`` takes every element
    of array J), then the tasks fail."""
    service.request_kill(list(jobs))
    job_ids = sorted({job_id.split(".")[0] for job_id in jobs.values() if job_id})
    if job_ids:
        cluster.kill(job_ids)
    service.end_killed(list(jobs))
