"""Tasks for the task table, the task page and the CLI: a page of a workflow's tasks (filters, keyset cursor), tasks
by id, and one task with every instance and its error logs. Per-row details are read for the rows of one page only.
Also what the other insight modules share: a task's template name and the status / bucket filters."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobmon_airflow import states
from jobmon_airflow.service.core import ERROR_LOG, QUEUE, TASK, TASK_RESOURCES, TI, TT, TTV, WF, NotFound
from jobmon_airflow.service.insight_types import ErrorLogEntry, InstanceDetail, Page, PageRequest, TaskDetail, TaskRow
from jobmon_airflow.service.queries import tasks_with_newest_instance

#: A task's template: its template's name, or its Airflow task id for a task bound without one (single tasks,
#: mapped tasks: one "template" per operator, as Jobmon's GUI groups them).
TEMPLATE_NAME: sa.ColumnElement[str] = sa.func.coalesce(TT.c.name, TASK.c.airflow_task_id)
MAX_INSTANCES_PER_TASK = 200
MAX_ERRORS_PER_INSTANCE = 20


def with_template(select: sa.Select[Any]) -> sa.Select[Any]:
    """``select`` (from the task table) joined to the task's template, for :data:`TEMPLATE_NAME`."""
    return select.outerjoin(TTV, TTV.c.id == TASK.c.task_template_version_id).outerjoin(
        TT, TT.c.id == TTV.c.task_template_id
    )


def status_letter(machine: type[states.StrEnum], value: str, field: str) -> str:
    """A status given as Jobmon's letter or name ("D", "DONE", "done"); ValueError naming the field otherwise."""
    for member in machine:
        if value.upper() in (member.value, member.name):
            return str(member.value)
    names = ", ".join(f"{m.value} ({m.name})" for m in machine)
    raise ValueError(f"{field}: unknown status {value[:40]!r}; expected one of {names}")


def bucket_statuses(bucket: str) -> frozenset[str]:
    """The task statuses of one of Jobmon's buckets; ValueError naming the bucket otherwise."""
    members = states.TASK_BUCKETS.get(bucket.upper())
    if members is None:
        raise ValueError(f"bucket: unknown bucket {bucket[:40]!r}; expected one of {', '.join(states.TASK_BUCKETS)}")
    return members


def task_page(
    conn: Connection,
    workflow_id: int,
    *,
    bucket: str | None,
    template: str | None,
    status: str | None,
    after_id: int | None,
    buckets: Collection[str],
    page: PageRequest,
) -> Page[TaskRow]:
    where: list[Any] = [TASK.c.workflow_id == workflow_id]
    if after_id is not None:
        where.append(TASK.c.id > after_id)
    if bucket or buckets:
        members = set().union(*(bucket_statuses(b) for b in [*([bucket] if bucket else []), *buckets]))
        where.append(TASK.c.status.in_(sorted(members)))
    if status:
        where.append(TASK.c.status == status_letter(states.TaskStatus, status, "status"))
    base = with_template(sa.select(TASK.c.id).select_from(TASK))
    if template:
        where.append(TEMPLATE_NAME.in_([template]))
    if conn.execute(sa.select(WF.c.id).where(WF.c.id == workflow_id)).scalar() is None:
        raise NotFound(f"workflow {workflow_id}")
    counted = base if template else sa.select(TASK.c.id)
    total = conn.execute(sa.select(sa.func.count()).select_from(counted.where(*where).subquery())).scalar_one()
    ids = list(conn.execute(base.where(*where).order_by(TASK.c.id).offset(page.offset).limit(page.limit)).scalars())
    rows = task_rows(conn, ids)
    return Page(tuple(rows[i] for i in ids), int(total), page.offset, page.limit)


def task_rows(conn: Connection, ids: Sequence[int]) -> dict[int, TaskRow]:
    """Tasks by id (those that exist), each with its newest instance."""
    if not ids:
        return {}
    query = with_template(tasks_with_newest_instance(TASK.c.id.in_(ids), TEMPLATE_NAME.label("template")))
    return {
        r.id: TaskRow(
            id=r.id,
            name=r.name,
            airflow_task_id=r.airflow_task_id,
            map_index=r.map_index,
            template=r.template,
            status=r.status,
            bucket=states.bucket_of(states.TASK_BUCKETS, r.status),
            status_date=r.status_date,
            num_attempts=r.num_attempts,
            max_attempts=r.max_attempts,
            retries=max(r.num_attempts - 1, 0),
            task_instance_id=r.task_instance_id,
            task_instance_status=r.task_instance_status,
            distributor_id=r.distributor_id,
            nodename=r.nodename,
            exit_status=r.exit_status,
            maxrss=r.maxrss,
            wallclock=r.wallclock,
        )
        for r in conn.execute(query)
    }


def task_detail(conn: Connection, task_id: int) -> TaskDetail:
    """One task with every instance (newest first, at most MAX_INSTANCES_PER_TASK) and its error logs."""
    t = conn.execute(
        with_template(
            sa.select(TASK, TEMPLATE_NAME.label("template"), WF.c.dag_id, WF.c.run_id)
            .select_from(TASK)
            .join(WF, WF.c.id == TASK.c.workflow_id)
        ).where(TASK.c.id == task_id)
    ).one_or_none()
    if t is None:
        raise NotFound(f"task {task_id}")
    instances = conn.execute(
        sa.select(
            TI,
            TASK_RESOURCES.c.requested_resources,
            TASK_RESOURCES.c.task_resources_type_id,
            QUEUE.c.name.label("queue"),
        )
        .outerjoin(TASK_RESOURCES, TASK_RESOURCES.c.id == TI.c.task_resources_id)
        .outerjoin(QUEUE, QUEUE.c.id == TASK_RESOURCES.c.queue_id)
        .where(TI.c.task_id == task_id)
        .order_by(TI.c.id.desc())
        .limit(MAX_INSTANCES_PER_TASK)
    ).all()
    errors: dict[int, list[ErrorLogEntry]] = defaultdict(list)
    if instances:
        for e in conn.execute(
            sa.select(ERROR_LOG)
            .where(ERROR_LOG.c.task_instance_id.in_([i.id for i in instances]))
            .order_by(ERROR_LOG.c.id)
        ):
            if len(errors[e.task_instance_id]) < MAX_ERRORS_PER_INSTANCE:
                errors[e.task_instance_id].append(ErrorLogEntry(e.error_time, e.description[-10_000:]))
    return TaskDetail(
        id=t.id,
        name=t.name,
        workflow_id=t.workflow_id,
        dag_id=t.dag_id,
        run_id=t.run_id,
        airflow_task_id=t.airflow_task_id,
        map_index=t.map_index,
        template=t.template,
        array_id=t.array_id,
        command=t.command,
        status=t.status,
        status_name=states.TaskStatus(t.status).name,
        bucket=states.bucket_of(states.TASK_BUCKETS, t.status),
        status_date=t.status_date,
        num_attempts=t.num_attempts,
        max_attempts=t.max_attempts,
        resource_scales=json.loads(t.resource_scales) if t.resource_scales else None,
        fallback_queues=tuple(json.loads(t.fallback_queues or "[]")),
        instances=tuple(_instance(i, errors.get(i.id, [])) for i in instances),
    )


def _instance(i: Any, errors: Sequence[ErrorLogEntry]) -> InstanceDetail:
    return InstanceDetail(
        id=i.id,
        workflow_run_id=i.workflow_run_id,
        status=i.status,
        status_name=states.TaskInstanceStatus(i.status).name,
        distributor_id=i.distributor_id,
        nodename=i.nodename,
        queue=i.queue,
        requested_resources=json.loads(i.requested_resources or "{}"),
        resources_type=i.task_resources_type_id,
        exit_status=i.exit_status,
        submitted_date=i.submitted_date,
        status_date=i.status_date,
        report_by_date=i.report_by_date,
        try_number=i.try_number,
        array_batch_num=i.array_batch_num,
        array_step_id=i.array_step_id,
        maxrss=i.maxrss,
        maxpss=i.maxpss,
        wallclock=i.wallclock,
        cpu=i.cpu,
        usage_source=i.usage_source,
        stdout=i.stdout,
        stderr=i.stderr,
        exit_record=i.exit_record,
        errors=tuple(errors),
    )
