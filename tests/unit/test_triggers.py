"""Triggers round-trip through serialize(), as the triggerer re-creates them from the stored classpath."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

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
