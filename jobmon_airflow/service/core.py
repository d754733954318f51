"""What every part of the service layer shares: tables, sessions, chunking, upserts and set-based transitions.

Every status write goes through :func:`transition`, which checks the state machine tables in
:mod:`jobmon_airflow.states` under a row lock and issues a conditional, set-based UPDATE: concurrent writers cannot
leave an illegal state, and N rows cost a constant number of statements (chunked).
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from jobmon_airflow import models, states, telemetry
from jobmon_airflow.db import session_scope
from jobmon_airflow.records import Usage

log = logging.getLogger(__name__)

TIS = states.TaskInstanceStatus
TS = states.TaskStatus
WFS = states.WorkflowStatus
WFRS = states.WorkflowRunStatus

CHUNK = 1000  # rows per statement: keeps IN lists and packets small on MySQL
WORKFLOW_RUN_HEARTBEAT_INTERVAL = 30.0  # Jobmon's heartbeat.workflow_run_interval
TASK_INSTANCE_HEARTBEAT_INTERVAL = 90.0  # Jobmon's heartbeat.task_instance_interval
REPORT_BY_BUFFER = 3.1  # Jobmon's heartbeat.report_by_buffer
LAUNCHED_REPORT_BY = timedelta(seconds=TASK_INSTANCE_HEARTBEAT_INTERVAL * REPORT_BY_BUFFER)


def table(model: type[models.Base]) -> sa.Table:
    return cast(sa.Table, model.__table__)


TI = table(models.TaskInstance)
TASK = table(models.Task)
WF = table(models.Workflow)
WFR = table(models.WorkflowRun)
TASK_RESOURCES = table(models.TaskResources)
ERROR_LOG = table(models.TaskInstanceErrorLog)
TTV = table(models.TaskTemplateVersion)
TT = table(models.TaskTemplate)
ARRAY = table(models.Array)
QUEUE = table(models.Queue)


class NotFound(LookupError):
    pass


class Unauthorized(PermissionError):
    pass


MAX_NAME = 255  # the name columns (task, array, workflow, template)


def bounded_name(field: str, value: str, limit: int = MAX_NAME) -> str:
    """A name as given, or ValueError naming the field: a name cut to fit would no longer identify its row."""
    if len(value) > limit:
        raise ValueError(f"{field}: at most {limit} characters, got {len(value)}: {value[:80]!r}…")
    return value


def utcnow() -> datetime:
    """Naive UTC, as stored in DATETIME columns."""
    return datetime.now(UTC).replace(tzinfo=None)


T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Store:
    """One state database: the base of every service class."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def session(self) -> AbstractContextManager[Session]:
        return session_scope(self.engine)


def upsert(session: Session, tbl: sa.Table, rows: Sequence[Mapping[str, Any]], update: Sequence[str] = ()) -> None:
    """Bulk insert that leaves existing rows (same unique key) alone, the basis of idempotent binding; or, with
    ``update``, sets those columns of an existing row from the new one (rows then carry their primary key)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    pk = next(iter(tbl.primary_key.columns))
    stmt: Any
    if dialect == "sqlite":
        lite = sqlite_dialect.insert(tbl)
        stmt = (
            lite.on_conflict_do_update(index_elements=[pk], set_={c: lite.excluded[c] for c in update})
            if update
            else lite.on_conflict_do_nothing()
        )
    elif dialect in ("mysql", "mariadb"):
        my = mysql_dialect.insert(tbl)
        # "id = id" keeps the existing row untouched
        stmt = my.on_duplicate_key_update({c: my.inserted[c] for c in update} if update else {pk.name: pk})
    else:  # pragma: no cover - only SQLite and MySQL/MariaDB are supported
        raise NotImplementedError(dialect)
    for chunk in chunks(list(rows)):
        session.execute(stmt, list(chunk))


def inserted_id(session: Session, stmt: sa.Insert) -> int:
    """Execute a one-row INSERT; the new row's id."""
    key = cast(sa.CursorResult[Any], session.execute(stmt)).inserted_primary_key
    assert key is not None
    return int(key[0])


def updated_rows(session: Session, stmt: sa.Update) -> int:
    """Execute an UPDATE; how many rows matched."""
    return int(cast(sa.CursorResult[Any], session.execute(stmt)).rowcount)


# --------------------------------------------------------------------------------------------------------------
# Transitions


def transition(
    session: Session,
    fsm: states.StateMachine,
    tbl: sa.Table,
    ids: Iterable[int],
    new: str,
    values: Mapping[str, Any] | None = None,
    then: str | None = None,
) -> list[int]:
    """Move rows to ``new`` where the state machine allows; return the ids that changed.

    Rows already in ``new`` and untimely transitions are left alone (reporters race; retried HTTP calls repeat);
    an illegal transition raises :class:`states.IllegalTransition` and rolls the whole transaction back.
    ``then``: a further legal step taken in the same UPDATE (``new`` is then an intermediate status that nobody
    outside the transaction sees, and costs no write of its own).
    """
    changed: list[int] = []
    now = utcnow()
    final = new
    if then is not None and fsm.check(new, then):
        final = then
    for chunk in chunks(sorted(set(ids))):
        rows = session.execute(
            sa.select(tbl.c.id, tbl.c.status).where(tbl.c.id.in_(chunk)).order_by(tbl.c.id).with_for_update()
        ).all()
        missing = set(chunk) - {r.id for r in rows}
        if missing:
            raise NotFound(f"{fsm.name}: no row with id {sorted(missing)[:10]}")
        legal = [r.id for r in rows if r.status != new and fsm.check(r.status, new)]
        if legal:
            session.execute(
                tbl.update()
                .where(tbl.c.id.in_(legal), tbl.c.status.in_(fsm.sources(new)))
                .values(status=final, status_date=now, **(values or {}))
            )
            changed.extend(legal)
            telemetry.count_transitions(session, fsm.name, new, len(legal))  # counted at commit
            if final != new:  # the step through ``new`` happened too, in the same UPDATE
                telemetry.count_transitions(session, fsm.name, final, len(legal))
    return changed


def set_task_status(session: Session, task_ids: Sequence[int], new: str, *, only_from: Iterable[str]) -> None:
    """A conditional, set-based task status write: tasks not in ``only_from`` are left as they are."""
    now = utcnow()
    for chunk in chunks(list(task_ids)):
        session.execute(
            TASK.update()
            .where(TASK.c.id.in_(chunk), TASK.c.status.in_(list(only_from)))
            .values(status=new, status_date=now)
        )


#: The task's way forward with its instance (the targets of states.TASK_FOLLOWS_INSTANCE, each a legal TASK_FSM
#: step from the one before it).
_TASK_PROGRESS: tuple[str, ...] = (TS.QUEUED, TS.INSTANTIATING, TS.LAUNCHED, TS.RUNNING, TS.DONE)


def _tasks_follow(session: Session, ti_ids: Sequence[int], ti_status: str) -> None:
    """A task follows its instance through Q/I/O/R/D; after errors it takes Jobmon's retry path.

    A task can lag behind its instance: one killed (→ K) before it reported running may still end K → D (it ran
    anyway) or K → F, its task left in Q, I or O. Such a task catches up through legal TASK_FSM steps
    (Q → I → O → R before D; Q → I before the error path), set-based like every other write.
    """
    if not ti_ids:
        return
    # Only a task's newest instance moves the task: a late report of a superseded attempt must not. Only D can
    # find a task lagging behind (an instance killed before it ran, then ended K → D): read task statuses then.
    status_of_task: dict[int, str] = {}
    lag_possible = ti_status == TIS.DONE
    for chunk in chunks(list(ti_ids)):
        own = sa.select(TI.c.task_id, TI.c.id).where(TI.c.id.in_(chunk)).subquery()
        newest = own.c.id == sa.select(sa.func.max(TI.c.id)).where(TI.c.task_id == own.c.task_id).scalar_subquery()
        query = (
            sa.select(own.c.task_id, TASK.c.status).join(TASK, TASK.c.id == own.c.task_id)
            if lag_possible
            else sa.select(own.c.task_id, sa.literal("").label("status"))
        )
        for r in session.execute(query.where(newest)):
            status_of_task[r.task_id] = r.status
    task_ids = list(status_of_task)
    if ti_status in states.TASK_FOLLOWS_INSTANCE:
        target = states.TASK_FOLLOWS_INSTANCE[ti_status]
        sources = states.TASK_FSM.sources(target)
        behind = _TASK_PROGRESS[: _TASK_PROGRESS.index(target)]
        lagging = [t for t, status in status_of_task.items() if status in behind and status not in sources]
        if lagging:
            # Catch up to a source of the target one legal step at a time, each a conditional UPDATE (a task
            # further on takes only the rest of the way).
            for old, new in itertools.pairwise(behind):
                set_task_status(session, lagging, new, only_from=[old])
                if new in sources:
                    break
        # Conditional: a task already past this point (a late, untimely report) is left as it is.
        set_task_status(session, task_ids, target, only_from=sources)
    elif ti_status in states.TASK_INSTANCE_RETRYABLE or ti_status == TIS.ERROR_FATAL:
        _tasks_after_instance_error(session, task_ids, ti_status)


def _tasks_after_instance_error(session: Session, task_ids: Sequence[int], ti_status: str) -> None:
    """Jobmon's retry path (→ E, then G, A or F) for tasks whose newest instance ended in error. A task still in
    Q (its instance was killed before it was instantiated, then ended K → F) first takes Q → I, the only legal way
    onto the path."""
    by_path: dict[tuple[str, ...], list[int]] = defaultdict(list)
    waiting = (TS.QUEUED, TS.INSTANTIATING, TS.LAUNCHED, TS.RUNNING, TS.ERROR_RECOVERABLE)
    for chunk in chunks(list(task_ids)):
        for r in session.execute(
            sa.select(TASK.c.id, TASK.c.status, TASK.c.num_attempts, TASK.c.max_attempts).where(TASK.c.id.in_(chunk))
        ):
            if r.status in waiting:
                path = states.task_after_instance_error(ti_status, r.num_attempts, r.max_attempts)
                if r.status == TS.ERROR_RECOVERABLE:
                    path = path[1:]
                elif r.status == TS.QUEUED:
                    path = [TS.INSTANTIATING, *path]
                by_path[tuple(path)].append(r.id)
    for steps, ids in by_path.items():
        for step in steps:
            transition(session, states.TASK_FSM, TASK, ids, step)


def transition_task_instances(
    session: Session, ti_ids: Sequence[int], new: str, values: Mapping[str, Any] | None = None
) -> list[int]:
    """Transition instances (and their tasks); the building block of every instance write."""
    changed = transition(session, states.TASK_INSTANCE_FSM, TI, ti_ids, new, values)
    _tasks_follow(session, changed, new)
    return changed


def transition_workflow_run(session: Session, wfr_id: int, new: str) -> bool:
    """Transition a run; its workflow follows (Jobmon's ``WorkflowRun.transition``)."""
    changed = transition(session, states.WORKFLOW_RUN_FSM, WFR, [wfr_id], new)
    if changed and new in states.WORKFLOW_FOLLOWS_RUN:
        wf_id = session.execute(sa.select(WFR.c.workflow_id).where(WFR.c.id == wfr_id)).scalar_one()
        transition(session, states.WORKFLOW_FSM, WF, [wf_id], states.WORKFLOW_FOLLOWS_RUN[new])
    return bool(changed)


def log_errors(session: Session, ti_ids: Sequence[int], description: str) -> None:
    if description and ti_ids:
        now = utcnow()
        session.execute(
            ERROR_LOG.insert(),
            [{"task_instance_id": i, "error_time": now, "description": description} for i in ti_ids],
        )


def status_of(session: Session, ti_id: int) -> str:
    """An instance's status; :class:`NotFound` when there is no such instance."""
    status = session.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar()
    if status is None:
        raise NotFound(f"task instance {ti_id}")
    return str(status)


def finish_instance(
    session: Session,
    ti_id: int,
    status: str,
    exit_status: int | None,
    message: str,
    nodename: str | None,
    usage: Usage | None,
) -> list[int]:
    """An instance's end (D, E, Z, F or U) with its exit status, host, usage and error text, however it was
    learnt: the worker's report or evidence the watchers found (exit record, accounting)."""
    values: dict[str, Any] = {"exit_status": exit_status}
    if nodename:
        values["nodename"] = nodename
    usage = usage or Usage()
    if usage.maxrss_bytes is not None:
        values["maxrss"] = usage.maxrss_bytes
    if usage.wallclock_s is not None:
        values["wallclock"] = usage.wallclock_s
    if usage.cpu_s is not None:
        values["cpu"] = usage.cpu_s
    if status == TIS.DONE:
        row = session.execute(
            sa.select(TI.c.status, TASK.c.status.label("task_status"))
            .join(TASK, TASK.c.id == TI.c.task_id)
            .where(TI.c.id == ti_id)
        ).one_or_none()
        if row is None:
            raise NotFound(f"task instance {ti_id}")
        if row.status == TIS.KILL_SELF and row.task_status == TS.ERROR_FATAL:
            # The kill was completed (job deleted, task failed): a done report still in flight is stale.
            raise states.IllegalTransition(f"task_instance {ti_id} was killed and its task failed; K → D refused")
    if status == TIS.ERROR_FATAL and status_of(session, ti_id) == TIS.RUNNING:
        # Jobmon reaches F from a running instance only through triage (R→T→F): take the same path.
        transition_task_instances(session, [ti_id], TIS.TRIAGING)
    changed = transition_task_instances(session, [ti_id], status, values)
    if status != TIS.DONE:
        log_errors(session, changed, message)
    return changed
