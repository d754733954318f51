"""Triggers that wait in the triggerer until Jobmon task instances end.

Read-only: they write nothing but workflow-run heartbeats and liveness marks (idempotent); ``execute_complete``
records outcomes, since a trigger may run more than once. Every trigger of one process shares one poll
(:class:`jobmon_airflow.watch.SharedWatcher`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from jobmon_airflow.execution import kill_instances
from jobmon_airflow.hooks.cluster import get_cluster
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.watch import DEFAULT_LOST_GRACE_S, Poller, SharedWatcher


class _JobmonTrigger(BaseTrigger):
    """Where to look (state database, cluster) and how often; subclasses add what they wait for."""

    def __init__(
        self,
        cluster: dict[str, Any],
        jobmon_conn_id: str = "jobmon_default",
        poll_interval: float = 10.0,
        lost_grace_s: float = DEFAULT_LOST_GRACE_S,
    ) -> None:
        super().__init__()
        self.cluster = cluster
        self.jobmon_conn_id = jobmon_conn_id
        self.poll_interval = poll_interval
        self.lost_grace_s = lost_grace_s

    def _own_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **self._own_kwargs(),
                "cluster": self.cluster,
                "jobmon_conn_id": self.jobmon_conn_id,
                "poll_interval": self.poll_interval,
                "lost_grace_s": self.lost_grace_s,
            },
        )

    def _build_poller(self) -> Poller:
        return Poller(JobmonHook(self.jobmon_conn_id).get_services(), get_cluster(self.cluster), self.lost_grace_s)

    async def watcher(self) -> SharedWatcher:
        key = {"jobmon_conn_id": self.jobmon_conn_id, "cluster": self.cluster, "lost_grace_s": self.lost_grace_s}
        return await SharedWatcher.get(key, self.poll_interval, self._build_poller)

    async def _kill(self, jobs: dict[int, str | None]) -> None:
        poller = (await self.watcher()).poller
        await asyncio.to_thread(kill_instances, poller.services, poller.cluster, jobs)


class JobmonTaskTrigger(_JobmonTrigger):
    """Waits until one task instance ends."""

    def __init__(self, task_instance_id: int, job_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_instance_id = task_instance_id
        self.job_id = job_id

    def _own_kwargs(self) -> dict[str, Any]:
        return {"task_instance_id": self.task_instance_id, "job_id": self.job_id}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watcher = await self.watcher()
        yield TriggerEvent((await watcher.wait(self.task_instance_id, self.job_id)).to_dict())

    async def on_kill(self) -> None:
        """Airflow 3.3+: the user marked the deferred task failed/success or cleared it: delete the job."""
        try:
            await self._kill({self.task_instance_id: self.job_id})
        except Exception:  # best effort, as Airflow's own on_kill implementations: log and carry on
            self.log.exception("Could not kill job %s of task instance %s", self.job_id, self.task_instance_id)


class JobmonArrayTrigger(_JobmonTrigger):
    """Waits until every live instance of a Jobmon array has ended.

    The event carries only the outcomes the database does not already hold (exit records, accounting, lost
    jobs), so it stays small for arrays of thousands of elements, and ``carry``: what the operator needs to go on
    (``dag.test()`` drops ``defer(kwargs=...)``, the event reaches the operator everywhere).
    """

    def __init__(self, array_id: int, carry: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.array_id = array_id
        self.carry = carry or {}

    def _own_kwargs(self) -> dict[str, Any]:
        return {"array_id": self.array_id, "carry": self.carry}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watcher = await self.watcher()
        live = await asyncio.to_thread(watcher.poller.services.queries.array_live_instances, self.array_id)
        events = await watcher.wait_many(live)
        outcomes = [e.to_dict() for e in events.values() if not e.recorded]
        yield TriggerEvent({"array_id": self.array_id, "carry": self.carry, "ended": len(events), "outcomes": outcomes})

    async def on_kill(self) -> None:
        """Airflow 3.3+: the user killed the deferred array task: delete every job of the array."""
        try:
            poller = (await self.watcher()).poller
            live = await asyncio.to_thread(poller.services.queries.array_live_instances, self.array_id)
            await self._kill(dict(live))
        except Exception:  # best effort, logged
            self.log.exception("Could not kill the jobs of Jobmon array %s", self.array_id)
