"""What users look at (the seed's Query Service): workflows with Jobmon's progress buckets, one workflow with its
runs and per-template progress, tasks, every instance of one task, errors grouped by similar message, and resource
usage against the request. Read-only; the query API, the pages and the CLI share it.

Built to stay fast for a 100,000-task workflow with several instances each: counts are GROUP BYs on covering
indexes (``task(workflow_id, status, num_attempts)``, ``task_instance(workflow_run_id, status, ...)``), lists are
pages, per-row details are read for the rows of one page only, error texts are read for failed instances only (at
most ``ERROR_SCAN`` of them), and scatter points are an evenly spaced sample.

This module holds the workflows list and one workflow; the task table and one task are in :mod:`.insight_tasks`,
grouped errors in :mod:`.insight_errors`, resource usage in :mod:`.insight_usage`, result types in
:mod:`.insight_types`; whose DAG a workflow or task is comes from :class:`~.lookup.Lookup`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobmon_airflow import models, states
from jobmon_airflow.service import insight_tasks
from jobmon_airflow.service.core import ARRAY, TASK, TI, TT, TTV, WF, WFR, NotFound, table
from jobmon_airflow.service.insight_errors import error_groups, error_signature
from jobmon_airflow.service.insight_tasks import bucket_statuses, status_letter
from jobmon_airflow.service.insight_types import (
    MAX_PAGE_LIMIT,
    ErrorGroup,
    Page,
    PageRequest,
    Percentiles,
    TaskDetail,
    TaskRow,
    TemplateProgress,
    TemplateUsage,
    UsagePoint,
    WorkflowDetail,
    WorkflowRunRow,
    WorkflowSummary,
)
from jobmon_airflow.service.lookup import Lookup
from jobmon_airflow.service.queries import Queries

DEFAULT_PAGE = PageRequest()
#: Jobmon's default max_concurrently_running: no limit of its own.
DEFAULT_CONCURRENCY = 10_000
RETRIES: sa.ColumnElement[Any] = sa.func.sum(sa.case((TASK.c.num_attempts > 1, TASK.c.num_attempts - 1), else_=0))


class Insights(Queries, Lookup):
    """Read-only views for the query API, the pages and the CLI (and, from :class:`~.lookup.Lookup`, whose DAG a
    workflow or task is); a constant number of statements per call."""

    def concurrency_limits(self, array_id: int) -> tuple[int | None, int | None]:
        """An array's and its workflow's max_concurrently_running as stored now (None: Jobmon's default 10,000,
        i.e. no limit of its own)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(ARRAY.c.max_concurrently_running.label("array"), WF.c.max_concurrently_running.label("wf"))
                .join(WF, WF.c.id == ARRAY.c.workflow_id)
                .where(ARRAY.c.id == array_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"array {array_id}")
        return (
            None if row.array >= DEFAULT_CONCURRENCY else int(row.array),
            None if row.wf >= DEFAULT_CONCURRENCY else int(row.wf),
        )

    # -- workflows -------------------------------------------------------------------------------------------------
    def workflows(
        self,
        *,
        dag_ids: Collection[str] | None = None,
        workflow_ids: Collection[int] | None = None,
        run_id: str | None = None,
        user: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page: PageRequest = DEFAULT_PAGE,
    ) -> Page[WorkflowSummary]:
        """Workflows, newest first; ``dag_ids`` None means every DAG (an empty collection: none)."""
        where: list[Any] = []
        if dag_ids is not None:
            if not dag_ids:
                return Page((), 0, page.offset, page.limit)
            where.append(WF.c.dag_id.in_(sorted(dag_ids)))
        if workflow_ids is not None:
            where.append(WF.c.id.in_(sorted(workflow_ids)))
        if run_id:
            where.append(WF.c.run_id == run_id)
        if user:
            where.append(sa.exists().where(WFR.c.workflow_id == WF.c.id, WFR.c.user == user))
        if status:
            where.append(WF.c.status == status_letter(states.WorkflowStatus, status, "status"))
        if since:
            where.append(WF.c.created_date >= since)
        if until:
            where.append(WF.c.created_date < until)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(WF).where(*where)).scalar_one()
            ids = list(
                conn.execute(
                    sa.select(WF.c.id).where(*where).order_by(WF.c.id.desc()).offset(page.offset).limit(page.limit)
                ).scalars()
            )
            items = self._summaries(conn, ids)
        return Page(tuple(items[i] for i in ids), int(total), page.offset, page.limit)

    def _summaries(
        self, conn: Connection, ids: Sequence[int], counted: tuple[dict[str, int], int] | None = None
    ) -> dict[int, WorkflowSummary]:
        """Summaries of some workflows; ``counted``: one workflow's buckets and retries, already counted."""
        if not ids:
            return {}
        counts: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(states.TASK_BUCKETS, 0))
        retries: dict[int, int] = defaultdict(int)
        if counted is not None:
            counts[ids[0]], retries[ids[0]] = dict(counted[0]), counted[1]
        for r in (
            []
            if counted is not None
            else conn.execute(
                sa.select(
                    TASK.c.workflow_id,
                    TASK.c.status,
                    sa.func.count().label("n"),
                    RETRIES.label("retries"),
                )
                .where(TASK.c.workflow_id.in_(ids))
                .group_by(TASK.c.workflow_id, TASK.c.status)
            )
        ):
            bucket = states.bucket_of(states.TASK_BUCKETS, r.status)
            counts[r.workflow_id][bucket] = counts[r.workflow_id].get(bucket, 0) + int(r.n)
            retries[r.workflow_id] += int(r.retries or 0)
        newest_run = (
            sa.select(WFR.c.workflow_id, sa.func.max(WFR.c.id).label("id"))
            .where(WFR.c.workflow_id.in_(ids))
            .group_by(WFR.c.workflow_id)
            .subquery()
        )
        runs = {
            r.workflow_id: r
            for r in conn.execute(
                sa.select(WFR.c.workflow_id, WFR.c.user, WFR.c.status, newest_run.c.id).join(
                    newest_run, newest_run.c.id == WFR.c.id
                )
            )
        }
        run_counts: dict[int, int] = dict(
            conn.execute(
                sa.select(WFR.c.workflow_id, sa.func.count())
                .where(WFR.c.workflow_id.in_(ids))
                .group_by(WFR.c.workflow_id)
            ).all()
        )
        out = {}
        for w in conn.execute(sa.select(WF).where(WF.c.id.in_(ids))):
            run = runs.get(w.id)
            c = counts[w.id]
            out[w.id] = WorkflowSummary(
                id=w.id,
                name=w.name,
                dag_id=w.dag_id,
                run_id=w.run_id,
                status=w.status,
                status_name=states.WorkflowStatus(w.status).name,
                user=run.user if run else None,
                created_date=w.created_date,
                status_date=w.status_date,
                tasks=sum(c.values()),
                buckets=dict(c),
                retries=retries[w.id],
                runs=int(run_counts.get(w.id, 0)),
                latest_run_status=run.status if run else None,
                max_concurrently_running=w.max_concurrently_running,
            )
        return out

    def workflow(self, workflow_id: int) -> WorkflowDetail:
        with self.engine.connect() as conn:
            w = conn.execute(sa.select(WF).where(WF.c.id == workflow_id)).one_or_none()
            if w is None:
                raise NotFound(f"workflow {workflow_id}")
            runs = [
                WorkflowRunRow(
                    r.id,
                    r.user,
                    r.status,
                    states.WorkflowRunStatus(r.status).name,
                    r.created_date,
                    r.status_date,
                    r.heartbeat_date,
                )
                for r in conn.execute(
                    sa.select(WFR).where(WFR.c.workflow_id == workflow_id).order_by(WFR.c.id.desc()).limit(100)
                )
            ]
            per_template: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(states.TASK_BUCKETS, 0))
            # Grouped on the task table alone (no join per task); the few template versions named afterwards.
            ttv, airflow_task, status = TASK.c.task_template_version_id, TASK.c.airflow_task_id, TASK.c.status
            grouped = conn.execute(
                sa.select(ttv, airflow_task, status, sa.func.count().label("n"), RETRIES.label("retries"))
                .where(TASK.c.workflow_id == workflow_id)
                .group_by(ttv, airflow_task, status)
            ).all()
            versions = {r.task_template_version_id for r in grouped if r.task_template_version_id is not None}
            names = {
                r.id: r.name
                for r in conn.execute(
                    sa.select(TTV.c.id, TT.c.name)
                    .join(TT, TT.c.id == TTV.c.task_template_id)
                    .where(TTV.c.id.in_(sorted(versions)))
                )
            }
            overall, retries = dict.fromkeys(states.TASK_BUCKETS, 0), 0
            for r in grouped:
                template = names.get(r.task_template_version_id) or r.airflow_task_id
                bucket = states.bucket_of(states.TASK_BUCKETS, r.status)
                per_template[template][bucket] = per_template[template].get(bucket, 0) + int(r.n)
                overall[bucket] = overall.get(bucket, 0) + int(r.n)
                retries += int(r.retries or 0)
            # One pass over the tasks serves both the per-template progress and the summary.
            summary = self._summaries(conn, [workflow_id], counted=(overall, retries))[workflow_id]
            arrays = {
                r.name: r.max_concurrently_running
                for r in conn.execute(
                    sa.select(ARRAY.c.name, ARRAY.c.max_concurrently_running).where(ARRAY.c.workflow_id == workflow_id)
                )
            }
        return WorkflowDetail(
            summary=summary,
            description=w.description,
            workflow_args=w.workflow_args,
            runs=tuple(runs),
            templates=tuple(
                TemplateProgress(name, sum(c.values()), dict(c)) for name, c in sorted(per_template.items())
            ),
            array_limits=arrays,
        )

    # -- tasks (insight_tasks) ---------------------------------------------------------------------------------
    def tasks(
        self,
        workflow_id: int,
        *,
        bucket: str | None = None,
        template: str | None = None,
        status: str | None = None,
        after_id: int | None = None,
        buckets: Collection[str] = (),
        page: PageRequest = DEFAULT_PAGE,
    ) -> Page[TaskRow]:
        """A page of a workflow's tasks in id order, each with its newest instance (read for that page only).
        ``after_id``: a cursor (tasks with a greater id; ``total`` then counts those), for walking every task."""
        with self.engine.connect() as conn:
            return insight_tasks.task_page(conn, workflow_id, bucket=bucket, template=template, status=status,
                                           after_id=after_id, buckets=buckets, page=page)  # fmt: skip

    def task(self, task_id: int) -> TaskDetail:
        """One task with every instance (newest first) and its error logs."""
        with self.engine.connect() as conn:
            return insight_tasks.task_detail(conn, task_id)

    def task_rows(self, task_ids: Collection[int]) -> list[TaskRow]:
        """Tasks by id (those that exist), in id order, each with its newest instance."""
        wanted = sorted(set(task_ids))[:MAX_PAGE_LIMIT]
        with self.engine.connect() as conn:
            rows = insight_tasks.task_rows(conn, wanted)
        return [rows[i] for i in wanted if i in rows]

    def tasks_of_airflow_tasks(
        self, workflow_id: int, airflow_task_ids: Collection[str], limit: int = 10_001
    ) -> list[TaskRow]:
        """The tasks of some Airflow tasks of a workflow (dependencies are the DAG's: between Airflow tasks), in id
        order, at most ``limit``."""
        if not airflow_task_ids:
            return []
        with self.engine.connect() as conn:
            ids = list(
                conn.execute(
                    sa.select(TASK.c.id)
                    .where(TASK.c.workflow_id == workflow_id, TASK.c.airflow_task_id.in_(sorted(airflow_task_ids)))
                    .order_by(TASK.c.id)
                    .limit(limit)
                ).scalars()
            )
            rows = insight_tasks.task_rows(conn, ids)
        return [rows[i] for i in ids]

    def log_paths(
        self, workflow_id: int, *, limit: int = 5, array: str | None = None, job: str | None = None
    ) -> list[dict[str, Any]]:
        """Jobmon's ``workflow logs``: the newest instances' job ids and stdout / stderr paths."""
        with self.engine.connect() as conn:
            runs = self._run_ids(conn, workflow_id)
            if not runs:
                return []
            query = (
                sa.select(
                    TI.c.id, TI.c.task_id, TASK.c.name, TI.c.distributor_id, TI.c.status, TI.c.stdout, TI.c.stderr
                )
                .join(TASK, TASK.c.id == TI.c.task_id)
                .where(TI.c.workflow_run_id.in_(runs))
            )
            if array is not None:
                query = query.join(ARRAY, ARRAY.c.id == TI.c.array_id).where(ARRAY.c.name == array)
            if job is not None:
                query = query.where(
                    sa.or_(TI.c.distributor_id == job, TI.c.distributor_id.startswith(f"{job}.", autoescape=True))
                )
            rows = conn.execute(query.order_by(TI.c.id.desc()).limit(limit)).all()
        return [
            {
                "TASK_ID": r.task_id,
                "TASK_NAME": r.name,
                "TASK_INSTANCE_ID": r.id,
                "DISTRIBUTOR_ID": r.distributor_id,
                "STATUS": r.status,
                "STDOUT": r.stdout,
                "STDERR": r.stderr,
            }
            for r in rows
        ]

    def workflow_clusters(self, workflow_id: int) -> list[str]:
        """The clusters a workflow's instances ran on, most used first."""
        cluster = table(models.Cluster)
        with self.engine.connect() as conn:
            runs = self._run_ids(conn, workflow_id)
            if not runs:
                return []
            return list(
                conn.execute(
                    sa.select(cluster.c.name)
                    .join(TI, TI.c.cluster_id == cluster.c.id)
                    .where(TI.c.workflow_run_id.in_(runs))
                    .group_by(cluster.c.name)
                    .order_by(sa.func.count().desc())
                ).scalars()
            )

    # -- errors ----------------------------------------------------------------------------------------------------
    def _run_ids(self, conn: Connection, workflow_id: int) -> list[int]:
        if conn.execute(sa.select(WF.c.id).where(WF.c.id == workflow_id)).scalar() is None:
            raise NotFound(f"workflow {workflow_id}")
        return list(conn.execute(sa.select(WFR.c.id).where(WFR.c.workflow_id == workflow_id)).scalars())

    def error_groups(self, workflow_id: int, *, limit: int = 50, template: str | None = None) -> list[ErrorGroup]:
        """Errors of a workflow's instances grouped by :func:`~.insight_errors.error_signature`, largest first.

        Reads failed instances through ``task_instance(workflow_run_id, status)`` and only the ends of at most
        ERROR_SCAN error logs (the newest); when there are more, ``scanned`` < ``total`` on each group says so.
        """
        with self.engine.connect() as conn:
            return error_groups(conn, self._run_ids(conn, workflow_id), limit=limit, template=template)

    # -- resources -------------------------------------------------------------------------------------------------
    def resource_usage(
        self, workflow_id: int, *, template: str | None = None, sample: int = 2000
    ) -> list[TemplateUsage]:
        """Per template: used memory (max RSS) and runtime (wallclock) of done instances against their request,
        percentiles from a SQL histogram, the suggested request (Jobmon's ``resources yaml`` default: the maximum
        used), and at most ``sample`` evenly spaced points of every ended instance with usage (for scatter plots)."""
        from jobmon_airflow.service.insight_usage import resource_usage

        with self.engine.connect() as conn:
            runs = self._run_ids(conn, workflow_id)
            return resource_usage(conn, runs, template=template, sample=max(0, min(sample, 20_000)))


__all__ = [
    "ErrorGroup",
    "Insights",
    "Page",
    "PageRequest",
    "Percentiles",
    "TaskDetail",
    "TaskRow",
    "TemplateUsage",
    "UsagePoint",
    "WorkflowDetail",
    "WorkflowSummary",
    "bucket_statuses",
    "error_signature",
]
