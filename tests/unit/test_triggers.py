"""Triggers round-trip through serialize(), as the triggerer re-creates them from the stored classpath."""

from __future__ import annotations

import asyncio
import importlib
from types import SimpleNamespace
from typing import Any

import pytest

from jobmon_airflow import triggers
from jobmon_airflow.triggers import JobmonArrayTrigger, JobmonTaskTrigger

CLUSTER = {"type": "gridengine", "conn_id": "gridengine_default"}


@pytest.mark.parametrize(
    "trigger",
    [
        JobmonTaskTrigger(task_instance_id=7, job_id="12", cluster=CLUSTER, poll_interval=30, lost_grace_s=90),
        JobmonArrayTrigger(array_id=3, carry={"array_id": 3, "requested": {"memory": 2}}, cluster=CLUSTER),
    ],
)
def test_serialize_round_trips(trigger: Any) -> None:
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert type(again) is type(trigger)
    assert again.serialize() == (classpath, kwargs)
    assert kwargs["cluster"] == CLUSTER and "password" not in str(kwargs)


# on_kill: Airflow 3.3's triggerer also calls it when a trigger moves to another triggerer (issue 13).


class _Poller:
    def __init__(self, live: list[tuple[int, str]]) -> None:
        self.services = SimpleNamespace(queries=SimpleNamespace(array_live_instances=lambda array_id: live))
        self.cluster = object()


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[dict[int, str | None]]:
    """Records what on_kill deletes instead of touching a cluster."""
    calls: list[dict[int, str | None]] = []
    poller = _Poller([(11, "101"), (12, "102")])

    async def watcher(self: Any) -> Any:
        return SimpleNamespace(poller=poller)

    monkeypatch.setattr(triggers._JobmonTrigger, "watcher", watcher)
    monkeypatch.setattr(triggers, "kill_instances", lambda services, cluster, jobs: calls.append(dict(jobs)))
    monkeypatch.setattr(triggers, "STATE_BACKOFF_S", 0.0)
    return calls


def _answer(monkeypatch: pytest.MonkeyPatch, *answers: Any) -> list[dict[str, Any]]:
    """Airflow's answers to get_task_states, in order; an exception instance is raised instead."""
    asked: list[dict[str, Any]] = []
    queue = list(answers)

    def get_task_states(**kwargs: Any) -> dict[str, Any]:
        asked.append(kwargs)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(triggers.RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    return asked


def _deferred_task(map_index: int = -1) -> JobmonTaskTrigger:
    trigger = JobmonTaskTrigger(task_instance_id=11, job_id="101", cluster=CLUSTER)
    trigger.task_instance = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=map_index)  # type: ignore[assignment]
    return trigger


def _deferred_array() -> JobmonArrayTrigger:
    trigger = JobmonArrayTrigger(array_id=3, cluster=CLUSTER)
    trigger.task_instance = SimpleNamespace(dag_id="d", run_id="r", task_id="a", map_index=-1)  # type: ignore[assignment]
    return trigger


def test_on_kill_keeps_jobs_when_the_trigger_only_moved(monkeypatch: pytest.MonkeyPatch, killed: list[Any]) -> None:
    asked = _answer(monkeypatch, {"r": {"t": "deferred", "a": "deferred"}})
    asyncio.run(_deferred_task().on_kill())
    asyncio.run(_deferred_array().on_kill())
    assert killed == []
    assert asked[0] == {"dag_id": "d", "map_index": -1, "task_ids": ["t"], "run_ids": ["r"]}


@pytest.mark.parametrize("state", ["failed", "success", None, "up_for_retry"])
def test_on_kill_deletes_jobs_when_the_user_acted(
    monkeypatch: pytest.MonkeyPatch, killed: list[Any], state: str | None
) -> None:
    _answer(monkeypatch, {"r": {"t": state, "a": state}})
    asyncio.run(_deferred_task().on_kill())
    asyncio.run(_deferred_array().on_kill())
    assert killed == [{11: "101"}, {11: "101", 12: "102"}]


def test_on_kill_reads_the_state_of_its_own_map_index(monkeypatch: pytest.MonkeyPatch, killed: list[Any]) -> None:
    asked = _answer(monkeypatch, {"r": {"t_2": "deferred", "t_3": "failed"}})
    asyncio.run(_deferred_task(map_index=3).on_kill())
    assert killed == [{11: "101"}] and asked[0]["map_index"] == 3
    killed.clear()
    asyncio.run(_deferred_task(map_index=2).on_kill())
    assert killed == []


def test_on_kill_retries_then_kills_when_the_state_stays_unknown(
    monkeypatch: pytest.MonkeyPatch, killed: list[Any]
) -> None:
    asked = _answer(monkeypatch, ConnectionError("api server away"))
    asyncio.run(_deferred_task().on_kill())
    assert len(asked) == triggers.STATE_ATTEMPTS and killed == [{11: "101"}]


def test_on_kill_retries_a_transient_fault(monkeypatch: pytest.MonkeyPatch, killed: list[Any]) -> None:
    asked = _answer(monkeypatch, ConnectionError("blip"), {"r": {"t": "deferred"}})
    asyncio.run(_deferred_task().on_kill())
    assert len(asked) == 2 and killed == []


def test_on_kill_outside_a_triggerer_kills_as_before(monkeypatch: pytest.MonkeyPatch, killed: list[Any]) -> None:
    asked = _answer(monkeypatch, {"r": {"t": "deferred"}})
    asyncio.run(JobmonTaskTrigger(task_instance_id=11, job_id="101", cluster=CLUSTER).on_kill())
    assert killed == [{11: "101"}] and asked == []


def test_workflow_sensor_trigger_deletes_nothing_on_kill() -> None:
    from airflow.triggers.base import BaseTrigger

    from jobmon_airflow.sensors.workflow import JobmonWorkflowTrigger

    assert JobmonWorkflowTrigger.on_kill is BaseTrigger.on_kill
