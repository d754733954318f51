"""Triggers that wait in the triggerer until Jobmon task instances end.

Read-only: they write nothing but workflow-run heartbeats and liveness marks (idempotent); ``execute_complete``
records outcomes, since a trigger may run more than once. Every trigger of one process shares one poll
(:class:`jobmon_airflow.watch.SharedWatcher`). ``on_kill`` deletes jobs only when the user acted on the task, not
when the trigger merely moved to another triggerer (Airflow 3.3 calls ``on_kill`` in both cases).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
from airflow.triggers.base import BaseTrigger, TriggerEvent

from jobmon_airflow.execution import ArrayProgress, apply_concurrency, kill_instances
from jobmon_airflow.hooks.cluster import get_cluster
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.watch import DEFAULT_LOST_GRACE_S, Poller, SharedWatcher

# How often on_kill asks Airflow for the task's state before it assumes the task is gone (Airflow gives on_kill
# [triggerer] on_kill_timeout, 30 s by default, so the back-off stays well inside that).
STATE_ATTEMPTS = 3
STATE_BACKOFF_S = 0.5


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

    async def _still_deferred(self) -> bool:
        """Whether Airflow still holds this trigger's task instance deferred.

        Airflow 3.3's triggerer calls ``on_kill`` not only when a user acts on the task but also when the trigger
        is no longer assigned to this triggerer (another triggerer took it over). Then the task is still
        ``deferred`` and its jobs must live on. Any other state, or no answer after bounded retries, is a real
        kill. The Task SDK's supervisor answers through the execution API, as in the standard provider's
        ``ExternalTaskSensor`` trigger. A moved trigger whose new triggerer already fired (its jobs ended) finds the
        task resumed, not deferred: the kill then meets no live instance, as it only takes live ones.
        """
        ti = self.task_instance
        if ti is None:  # not run by a triggerer (dag.test() or a unit test): nothing to ask
            return False
        key = ti.task_id if ti.map_index is None or ti.map_index < 0 else f"{ti.task_id}_{ti.map_index}"
        for attempt in range(STATE_ATTEMPTS):
            try:
                states = await asyncio.to_thread(
                    RuntimeTaskInstance.get_task_states,
                    dag_id=ti.dag_id,
                    map_index=ti.map_index,
                    task_ids=[ti.task_id],
                    run_ids=[ti.run_id],
                )
            except Exception:  # the API server briefly away: retry, then treat the state as unknown
                self.log.warning("Could not read the state of %s (attempt %d)", key, attempt + 1, exc_info=True)
                await asyncio.sleep(STATE_BACKOFF_S * 2**attempt)
                continue
            state = states.get(ti.run_id, {}).get(key)
            return str(state) == "deferred"
        return False

    async def on_kill(self) -> None:
        """Airflow 3.3+: the user marked the deferred task failed/success or cleared it: delete its jobs.

        Not when the trigger merely moved to another triggerer (the task is still deferred).
        """
        if await self._still_deferred():
            self.log.info("%r moved to another triggerer; its jobs live on", self)
            return
        try:
            await self._kill(await self._jobs())
        except Exception:  # best effort, as Airflow's own on_kill implementations: log and carry on
            self.log.exception("Could not kill the jobs of %r", self)

    async def _jobs(self) -> dict[int, str | None]:
        """Task instance id -> cluster job id of every job this trigger waits for."""
        raise NotImplementedError


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

    async def _jobs(self) -> dict[int, str | None]:
        return {self.task_instance_id: self.job_id}

    def __repr__(self) -> str:
        return f"JobmonTaskTrigger(task_instance_id={self.task_instance_id}, job_id={self.job_id!r})"


def progress_check_s(poll_interval: float) -> float:
    """How often an array trigger counts its live tasks: a tenth of the poll interval, at least 1 s (one indexed
    COUNT per array and check; the cluster still sees one status call per interval)."""
    return min(poll_interval, max(1.0, poll_interval / 10))


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
        services, cluster = watcher.poller.services, watcher.poller.cluster
        live = await asyncio.to_thread(services.queries.array_live_instances, self.array_id)
        waiting = asyncio.ensure_future(watcher.wait_many(live))
        try:
            progress: ArrayProgress | None = ArrayProgress.from_dict(self.carry)
        except ValueError:  # no carry (an older trigger): watch only; execute_complete reports the bad carry
            progress = None
        check = progress_check_s(self.poll_interval)
        next_concurrency = time.monotonic() + self.poll_interval
        try:
            while not (await asyncio.wait({waiting}, timeout=check))[0]:
                # Every check: once the database shows no task of the array queued or running (their workers
                # reported), the watcher looks now instead of at its next poll, up to an interval later.
                try:
                    if await asyncio.to_thread(services.queries.array_tasks_live, self.array_id) == 0:
                        watcher.look_soon(live)
                except Exception:  # the database briefly away: the polls still end the wait
                    self.log.warning("Could not count the live tasks of array %s", self.array_id, exc_info=True)
                # Every interval: a limit changed by `workflow concurrency` goes to the live batches.
                if progress is not None and time.monotonic() >= next_concurrency:
                    next_concurrency = time.monotonic() + self.poll_interval
                    try:
                        await asyncio.to_thread(apply_concurrency, services, cluster, progress, live)
                    except Exception:  # the cluster or database briefly away: the next interval tries again
                        self.log.warning(
                            "Could not apply the concurrency limit of array %s", self.array_id, exc_info=True
                        )
            events = await waiting
        finally:
            waiting.cancel()
        carry = progress.to_dict() if progress is not None else self.carry
        outcomes = [e.to_dict() for e in events.values() if not e.recorded]
        yield TriggerEvent({"array_id": self.array_id, "carry": carry, "ended": len(events), "outcomes": outcomes})

    async def _jobs(self) -> dict[int, str | None]:
        poller = (await self.watcher()).poller
        return dict(await asyncio.to_thread(poller.services.queries.array_live_instances, self.array_id))

    def __repr__(self) -> str:
        return f"JobmonArrayTrigger(array_id={self.array_id})"
