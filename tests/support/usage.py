"""Finished task instances in bulk, for the usage ETL's tests and benchmark: one workflow, run and task per cluster,
instances inserted with executemany (or INSERT … SELECT on MariaDB for large backlogs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobmon_airflow import models
from jobmon_airflow.service.core import TI, utcnow


@dataclass(frozen=True)
class Parents:
    workflow_run_id: int
    task_id: int
    clusters: dict[str, int]  # cluster type → cluster id


def make_parents(engine: Engine, tag: str = "usage") -> Parents:
    """A tool, workflow, run and task, and one cluster of each type (named ``<tag>-<type>``)."""
    now = utcnow()
    with engine.begin() as conn:

        def insert(model: Any, **values: Any) -> int:
            key = conn.execute(sa.insert(model.__table__).values(**values)).inserted_primary_key
            assert key is not None
            return int(key[0])

        tool = insert(models.Tool, name=f"{tag}-tool")
        tv = insert(models.ToolVersion, tool_id=tool, version="1")
        wf = insert(
            models.Workflow,
            tool_version_id=tv,
            dag_id=tag,
            run_id="r",
            name=tag,
            workflow_args="{}",
            workflow_args_hash=tag,
            status="D",
            status_date=now,
        )
        wfr = insert(
            models.WorkflowRun,
            workflow_id=wf,
            jobmon_version="t",
            created_date=now,
            status="D",
            status_date=now,
            heartbeat_date=now,
        )
        task = insert(models.Task, workflow_id=wf, airflow_task_id="t", name="t", command="true", status_date=now)
        types = dict(conn.execute(sa.select(models.ClusterType.name, models.ClusterType.id)).tuples().all())
        clusters = {name: insert(models.Cluster, name=f"{tag}-{name}", cluster_type_id=i) for name, i in types.items()}
    return Parents(wfr, task, clusters)


def add_instances(
    engine: Engine,
    parents: Parents,
    job_ids: Sequence[str | None],
    *,
    cluster: str = "gridengine",
    status: str = "D",
    finished_ago: timedelta = timedelta(hours=1),
    maxrss: int | None = None,
) -> list[int]:
    """One instance per job id (executemany); their ids in order."""
    finished = utcnow() - finished_ago
    rows = [
        {
            "workflow_run_id": parents.workflow_run_id,
            "task_id": parents.task_id,
            "cluster_id": parents.clusters[cluster],
            "distributor_id": job_id,
            "status": status,
            "status_date": finished,
            "maxrss": maxrss,
        }
        for job_id in job_ids
    ]
    with engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(TI.c.id), 0))).scalar_one()
        conn.execute(TI.insert(), rows)
        ids = conn.execute(sa.select(TI.c.id).where(TI.c.id > first).order_by(TI.c.id)).scalars().all()
    return list(ids)


def usage_of(engine: Engine, ti_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(TI.c.id, TI.c.maxrss, TI.c.maxpss, TI.c.wallclock, TI.c.cpu, TI.c.usage_source).where(
                TI.c.id.in_(list(ti_ids))
            )
        ).all()
    return {r.id: r._asdict() for r in rows}
