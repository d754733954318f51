"""Task instances in any status, each with its own bearer token (``token-<id>``) and job id (``job-<id>``), made
through the service layer as the operator and the worker would."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy as sa

from jobmon_airflow import db, models
from jobmon_airflow.hashing import hash_token
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.service.core import transition_task_instances

TI = cast(sa.Table, models.TaskInstance.__table__)
ERROR_LOG = cast(sa.Table, models.TaskInstanceErrorLog.__table__)


def token(ti_id: int) -> str:
    return f"token-{ti_id}"


def auth(ti_id: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(ti_id)}"}


def make_instances(svc: Services, statuses: Sequence[str], run_id: str = "r") -> list[int]:
    """One task per status, its instance brought to that status (O, R, T, K, X, D, E, Z, U, F)."""
    run = svc.binding.bind_workflow_run(dag_id="d", run_id=run_id)
    specs = [TaskSpec(f"{run_id}-{i}", f"{run_id}-{i}", "true") for i in range(len(statuses))]
    task_ids = svc.binding.bind_tasks(run.workflow_id, specs)
    cluster_id = svc.binding.cluster_id("local", "local")
    ti_ids = svc.lifecycle.queue_task_instances(
        run.workflow_run_id, cluster_id, task_ids, Resources(), "O", QueueLimits("local")
    )
    svc.lifecycle.instantiate(ti_ids, {ti: hash_token(token(ti)) for ti in ti_ids}, {})
    svc.lifecycle.log_distributor_ids({ti: f"job-{ti}" for ti in ti_ids})
    for ti, status in zip(ti_ids, statuses, strict=True):
        if status in ("O", "X"):
            if status == "X":
                with db.session_scope(svc.engine) as s:
                    transition_task_instances(s, [ti], "X")
            continue
        svc.reports.log_running(ti, "node", 1, f"job-{ti}", 279)
        if status == "T":
            with db.session_scope(svc.engine) as s:
                transition_task_instances(s, [ti], "T")
        elif status == "K":
            svc.lifecycle.request_kill([ti])
        elif status == "D":
            svc.reports.log_done(ti, "node", None)
        elif status in "EZUF":
            svc.reports.log_error(ti, status, 1, f"error {status}", "node", None)
        else:
            assert status == "R", status
    assert [svc.queries.task_instance(ti).status for ti in ti_ids] == list(statuses)
    return ti_ids


def rows(svc: Services, table: Any = TI) -> dict[int, tuple[Any, ...]]:
    """Every row of ``table`` by id: the snapshot to compare before and after requests that must change nothing."""
    with svc.engine.connect() as conn:
        return {r.id: tuple(r) for r in conn.execute(sa.select(table).order_by(table.c.id))}


def report_by(svc: Services, ti_id: int) -> Any:
    with svc.engine.connect() as conn:
        return conn.execute(sa.select(TI.c.report_by_date).where(TI.c.id == ti_id)).scalar()
