"""Read-only views of the state database: what operators look at between steps, and what the CLI, the demo (and
the reaper, the query API and the UI) show. Nothing here writes."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from jobmon_airflow import states
from jobmon_airflow.service.core import ERROR_LOG, TASK, TASK_RESOURCES, TI, TS, WF, NotFound, Store, chunks

#: Tasks holding a place under a workflow's concurrency limit (Jobmon's Q/I/O/R).
ACTIVE_TASK_STATUSES = (TS.QUEUED, TS.INSTANTIATING, TS.LAUNCHED, TS.RUNNING)


@dataclass(frozen=True)
class TaskView:
    id: int
    status: str
    num_attempts: int
    max_attempts: int
    resource_scales: dict[str, Any] | None
    fallback_queues: list[str]
    command: str


@dataclass(frozen=True)
class TaskInstanceView:
    id: int
    task_id: int
    workflow_run_id: int
    status: str
    distributor_id: str | None
    cluster_id: int
    requested_resources: dict[str, Any] = field(default_factory=dict)
    nodename: str | None = None
    exit_status: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_record: str | None = None
    try_number: int | None = None
    maxrss: int | None = None
    wallclock: float | None = None


@dataclass(frozen=True)
class FailedElement:
    """An array element that used up its attempts, with its newest instance and last error."""

    task_id: int
    name: str
    attempts: int
    status: str | None
    job_id: str | None
    error: str

    def line(self) -> str:
        last = self.error.strip().splitlines()[-1] if self.error.strip() else "no error text"
        return (
            f"{self.name} (task {self.task_id}, {self.attempts} attempts, last {self.status} job {self.job_id}): {last}"
        )


class Queries(Store):
    """Read-only queries; each is a constant number of statements however many rows it reads."""

    # -- task instances ----------------------------------------------------------------------------------------
    def task_instance(self, ti_id: int) -> TaskInstanceView:
        views = self.task_instances([ti_id])
        if ti_id not in views:
            raise NotFound(f"task instance {ti_id}")
        return views[ti_id]

    def task_instances(self, ti_ids: Iterable[int]) -> dict[int, TaskInstanceView]:
        """Many instances in one query per chunk (triggers of one process share this)."""
        out: dict[int, TaskInstanceView] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(set(ti_ids))):
                for r in conn.execute(
                    sa.select(TI, TASK_RESOURCES.c.requested_resources)
                    .outerjoin(TASK_RESOURCES, TASK_RESOURCES.c.id == TI.c.task_resources_id)
                    .where(TI.c.id.in_(chunk))
                ):
                    out[r.id] = TaskInstanceView(
                        id=r.id,
                        task_id=r.task_id,
                        workflow_run_id=r.workflow_run_id,
                        status=r.status,
                        distributor_id=r.distributor_id,
                        cluster_id=r.cluster_id,
                        requested_resources=json.loads(r.requested_resources or "{}"),
                        nodename=r.nodename,
                        exit_status=r.exit_status,
                        stdout=r.stdout,
                        stderr=r.stderr,
                        exit_record=r.exit_record,
                        try_number=r.try_number,
                        maxrss=r.maxrss,
                        wallclock=r.wallclock,
                    )
        return out

    def live_task_instance(self, task_id: int) -> TaskInstanceView | None:
        """The newest instance of a task whose job may still be in the cluster (re-attach candidate)."""
        with self.engine.connect() as conn:
            ti_id = conn.execute(
                sa.select(TI.c.id)
                .where(TI.c.task_id == task_id, TI.c.status.in_(states.TASK_INSTANCE_LIVE))
                .order_by(TI.c.id.desc())
                .limit(1)
            ).scalar()
        return None if ti_id is None else self.task_instance(ti_id)

    def error_logs(self, ti_id: int) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(ERROR_LOG.c.description)
                    .where(ERROR_LOG.c.task_instance_id == ti_id)
                    .order_by(ERROR_LOG.c.id)
                ).scalars()
            )

    # -- tasks -------------------------------------------------------------------------------------------------
    def get_task(self, task_id: int) -> TaskView:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(TASK).where(TASK.c.id == task_id)).one_or_none()
        if r is None:
            raise NotFound(f"task {task_id}")
        return TaskView(
            id=r.id,
            status=r.status,
            num_attempts=r.num_attempts,
            max_attempts=r.max_attempts,
            resource_scales=json.loads(r.resource_scales) if r.resource_scales else None,
            fallback_queues=json.loads(r.fallback_queues or "[]"),
            command=r.command,
        )

    def task_commands(self, task_ids: Sequence[int]) -> dict[int, str]:
        with self.engine.connect() as conn:
            return {
                r.id: r.command
                for chunk in chunks(list(task_ids))
                for r in conn.execute(sa.select(TASK.c.id, TASK.c.command).where(TASK.c.id.in_(chunk)))
            }

    def active_task_count(self, workflow_id: int) -> int:
        """Tasks of a workflow holding a place under its concurrency limit."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        TASK.c.workflow_id == workflow_id, TASK.c.status.in_(ACTIVE_TASK_STATUSES)
                    )
                ).scalar_one()
            )

    # -- arrays ------------------------------------------------------------------------------------------------
    def array_task_statuses(self, array_id: int) -> dict[int, str]:
        """Every task of an array with its status (one query)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(TASK.c.id, TASK.c.status).where(TASK.c.array_id == array_id))
            return {r.id: r.status for r in rows}

    def array_live_instances(self, array_id: int) -> dict[int, str]:
        """Instances of an array whose jobs may still be in the cluster: {instance id: job id}."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(TI.c.id, TI.c.distributor_id).where(
                    TI.c.array_id == array_id, TI.c.status.in_(states.TASK_INSTANCE_LIVE)
                )
            )
            return {r.id: r.distributor_id for r in rows if r.distributor_id}

    def array_tasks_live(self, array_id: int) -> int:
        """Tasks of an array whose newest instance is still queued or running: one COUNT on the index
        (array_id, status) of ``task``, cheap enough for an array trigger to ask every second."""
        with self.engine.connect() as conn:
            live = TASK.c.status.in_(ACTIVE_TASK_STATUSES)
            query = sa.select(sa.func.count()).where(TASK.c.array_id == array_id, live)
            return int(conn.execute(query).scalar() or 0)

    def next_array_batch_num(self, array_id: int) -> int:
        with self.engine.connect() as conn:
            current = conn.execute(sa.select(sa.func.max(TI.c.array_batch_num)).where(TI.c.array_id == array_id))
            return int(current.scalar() or 0) + 1

    def array_failures(self, array_id: int, limit: int = 20) -> list[FailedElement]:
        """Failed elements (task F) with their newest instance's status and last error: three queries."""
        with self.engine.connect() as conn:
            tasks = conn.execute(
                sa.select(TASK.c.id, TASK.c.name, TASK.c.num_attempts)
                .where(TASK.c.array_id == array_id, TASK.c.status == TS.ERROR_FATAL)
                .order_by(TASK.c.id)
                .limit(limit)
            ).all()
            task_ids = [t.id for t in tasks]
            newest = {
                r.task_id: r
                for r in conn.execute(
                    sa.select(TI.c.task_id, TI.c.id, TI.c.status, TI.c.distributor_id).where(
                        TI.c.id.in_(
                            sa.select(sa.func.max(TI.c.id)).where(TI.c.task_id.in_(task_ids)).group_by(TI.c.task_id)
                        )
                    )
                )
            }
            last_error = {
                r.task_instance_id: r.description
                for r in conn.execute(
                    sa.select(ERROR_LOG.c.task_instance_id, ERROR_LOG.c.description).where(
                        ERROR_LOG.c.id.in_(
                            sa.select(sa.func.max(ERROR_LOG.c.id))
                            .where(ERROR_LOG.c.task_instance_id.in_([r.id for r in newest.values()]))
                            .group_by(ERROR_LOG.c.task_instance_id)
                        )
                    )
                )
            }
        out = []
        for t in tasks:
            ti = newest.get(t.id)
            out.append(
                FailedElement(
                    task_id=t.id,
                    name=t.name,
                    attempts=t.num_attempts,
                    status=ti.status if ti else None,
                    job_id=ti.distributor_id if ti else None,
                    error=(last_error.get(ti.id, "") if ti else "")[-500:],
                )
            )
        return out

    # -- workflows: Jobmon's status tables ------------------------------------------------------------------------
    def workflow_status(
        self,
        workflow_ids: Sequence[int] | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        limit: int = 5,
    ) -> list[dict[str, Any]]:
        """Jobmon's ``workflow status`` rows: task counts per bucket and retries, two grouped queries in all."""
        with self.engine.connect() as conn:
            q = sa.select(WF.c.id, WF.c.name, WF.c.dag_id, WF.c.run_id, WF.c.status, WF.c.created_date)
            if workflow_ids:
                q = q.where(WF.c.id.in_(workflow_ids))
            if dag_id:
                q = q.where(WF.c.dag_id == dag_id)
            if run_id:
                q = q.where(WF.c.run_id == run_id)
            if not workflow_ids:
                q = q.order_by(WF.c.id.desc()).limit(limit)
            workflows = conn.execute(q).all()
            counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            retries: dict[int, int] = defaultdict(int)
            ids = [w.id for w in workflows]
            if ids:
                for r in conn.execute(
                    sa.select(
                        TASK.c.workflow_id,
                        TASK.c.status,
                        sa.func.count().label("n"),
                        sa.func.sum(sa.case((TASK.c.num_attempts > 1, TASK.c.num_attempts - 1), else_=0)).label(
                            "retries"
                        ),
                    )
                    .where(TASK.c.workflow_id.in_(ids))
                    .group_by(TASK.c.workflow_id, TASK.c.status)
                ):
                    counts[r.workflow_id][states.bucket_of(states.TASK_BUCKETS, r.status)] += r.n
                    retries[r.workflow_id] += int(r.retries or 0)
        rows = []
        for w in workflows:
            c = counts[w.id]
            rows.append(
                {
                    "WF_ID": w.id,
                    "WF_NAME": w.name,
                    "WF_STATUS": states.WorkflowStatus(w.status).name,
                    "CREATED_DATE": w.created_date.isoformat(sep=" ", timespec="seconds") if w.created_date else "",
                    "TASKS": sum(c.values()),
                    **{bucket: c.get(bucket, 0) for bucket in states.TASK_BUCKETS},
                    "RETRIES": retries[w.id],
                }
            )
        return rows

    def workflow_tasks(self, workflow_id: int) -> list[dict[str, Any]]:
        """Jobmon's ``workflow tasks`` rows with each task's newest instance."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                tasks_with_newest_instance(TASK.c.workflow_id == workflow_id, TASK_RESOURCES.c.requested_resources)
                .outerjoin(TASK_RESOURCES, TASK_RESOURCES.c.id == TI.c.task_resources_id)
                .order_by(TASK.c.id)
            ).all()
        return [{**task_status_row(r), "REQUESTED": r.requested_resources} for r in rows]


#: A task's columns and its newest instance's, named as :class:`~.insight_types.TaskRow` names them.
TASK_ROW_COLUMNS = (
    TASK.c.id, TASK.c.name, TASK.c.airflow_task_id, TASK.c.map_index, TASK.c.status, TASK.c.status_date,
    TASK.c.num_attempts, TASK.c.max_attempts, TI.c.id.label("task_instance_id"),
    TI.c.status.label("task_instance_status"), TI.c.distributor_id, TI.c.nodename, TI.c.exit_status, TI.c.maxrss,
    TI.c.wallclock,
)  # fmt: skip


def tasks_with_newest_instance(task_filter: Any, *columns: Any) -> sa.Select[Any]:
    """The tasks ``task_filter`` picks (:data:`TASK_ROW_COLUMNS` and ``columns``), each with its newest instance
    (outer join: None without one), looked up for those tasks only."""
    newest = (
        sa.select(TI.c.task_id, sa.func.max(TI.c.id).label("ti_id"))
        .join(TASK, TASK.c.id == TI.c.task_id)
        .where(task_filter)
        .group_by(TI.c.task_id)
        .subquery("newest")
    )
    return (
        sa.select(*TASK_ROW_COLUMNS, *columns)
        .select_from(TASK)
        .outerjoin(newest, newest.c.task_id == TASK.c.id)
        .outerjoin(TI, TI.c.id == newest.c.ti_id)
        .where(task_filter)
    )


def task_status_row(t: Any) -> dict[str, Any]:
    """Jobmon's ``workflow tasks`` columns of a task with its newest instance (a row of
    :func:`tasks_with_newest_instance` or a :class:`~.insight_types.TaskRow`)."""
    return {
        "TASK_ID": t.id,
        "TASK_NAME": t.name,
        "STATUS": states.bucket_of(states.TASK_BUCKETS, t.status),
        "RETRIES": max(t.num_attempts - 1, 0),
        "TASK_INSTANCE_ID": t.task_instance_id,
        "TI_STATUS": t.task_instance_status,
        "DISTRIBUTOR_ID": t.distributor_id,
        "HOST": t.nodename,
        "EXIT": t.exit_status,
        "MAXRSS_MB": round(t.maxrss / 2**20, 1) if t.maxrss else None,
        "WALLCLOCK_S": round(t.wallclock, 1) if t.wallclock is not None else None,
    }


# --------------------------------------------------------------------------------------------------------------
# Tables, as the CLI and the demo print them


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    headers = list(rows[0])
    cells = [[("" if r[h] is None else str(r[h])) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def status_rows_for_display(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobmon's cells: '37 (12.5%)'."""
    out = []
    for r in rows:
        total = r["TASKS"] or 1
        out.append({**r, **{b: f"{r[b]} ({100 * r[b] / total:.1f}%)" for b in states.TASK_BUCKETS}})
    return out
