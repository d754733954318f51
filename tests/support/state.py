"""Reading what the tests ran back out of the Jobmon state database."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa

from jobmon_airflow import models
from jobmon_airflow.service import Services


def instances(service: Services, dag_id: str, task_id: str) -> list[dict[str, Any]]:
    """Every task instance of one Airflow task, oldest first, with its requested resources and error logs."""
    ti, task, wf = models.TaskInstance.__table__, models.Task.__table__, models.Workflow.__table__
    tr, el = models.TaskResources.__table__, models.TaskInstanceErrorLog.__table__
    with service.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ti, tr.c.requested_resources, task.c.status.label("task_status"), task.c.num_attempts)
            .join(task, task.c.id == ti.c.task_id)
            .join(wf, wf.c.id == task.c.workflow_id)
            .join(tr, tr.c.id == ti.c.task_resources_id)
            .where(wf.c.dag_id == dag_id, task.c.airflow_task_id == task_id)
            .order_by(ti.c.id)
        ).all()
        return [
            {
                **r._asdict(),
                "resources": json.loads(r.requested_resources),
                "errors": [e.description for e in conn.execute(sa.select(el).where(el.c.task_instance_id == r.id))],
            }
            for r in rows
        ]


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)
