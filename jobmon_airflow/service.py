"""Jobmon's domain operations on the state database: bind, queue, transition, heartbeat, kill, triage, report.

The one place that writes Jobmon state. Hooks, operators, triggers, State Manager routes, sensors and the CLI call
these functions; none of them writes rows itself. Every status write goes through ``_transition``, which checks the
state machine tables in :mod:`jobmon_airflow.states` under a row lock and issues a conditional, set-based UPDATE:
concurrent writers cannot leave an illegal state, and N rows cost a constant number of statements (chunked).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from jobmon_airflow import __version__, models, states
from jobmon_airflow.db import session_scope
from jobmon_airflow.resources import QueueLimits, Resources, ScaleSpec, fit_queue, scale_resources

log = logging.getLogger(__name__)

ACKNOWLEDGED = "airflow_acknowledged_task_instance"  # task attribute: the instance whose end Airflow saw
CHUNK = 1000  # rows per statement: keeps IN lists and packets small on MySQL
WORKFLOW_RUN_HEARTBEAT_INTERVAL = 30.0  # Jobmon's heartbeat.workflow_run_interval
TASK_INSTANCE_HEARTBEAT_INTERVAL = 90.0  # Jobmon's heartbeat.task_instance_interval
REPORT_BY_BUFFER = 3.1  # Jobmon's heartbeat.report_by_buffer


def _table(model: type[models.Base]) -> sa.Table:
    return cast(sa.Table, model.__table__)


TI = _table(models.TaskInstance)
TASK = _table(models.Task)
WF = _table(models.Workflow)
WFR = _table(models.WorkflowRun)


class NotFound(LookupError):
    pass


class Unauthorized(PermissionError):
    pass


def utcnow() -> datetime:
    """Naive UTC, as stored in DATETIME columns."""
    return datetime.now(UTC).replace(tzinfo=None)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sha256(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _insert_ignoring_duplicates(
    session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], update: Sequence[str] = ()
) -> None:
    """Bulk insert that leaves existing rows (same unique key) alone, the basis of idempotent binding; or, with
    ``update``, sets those columns of an existing row from the new one (rows then carry their primary key)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    pk = next(iter(table.primary_key.columns))
    stmt: Any
    if dialect == "sqlite":
        lite = sqlite_dialect.insert(table)
        stmt = (
            lite.on_conflict_do_update(index_elements=[pk], set_={c: lite.excluded[c] for c in update})
            if update
            else lite.on_conflict_do_nothing()
        )
    elif dialect in ("mysql", "mariadb"):
        my = mysql_dialect.insert(table)
        # "id = id" keeps the existing row untouched
        stmt = my.on_duplicate_key_update({c: my.inserted[c] for c in update} if update else {pk.name: pk})
    else:  # pragma: no cover - only SQLite and MySQL/MariaDB are supported
        raise NotImplementedError(dialect)
    for chunk in _chunks(list(rows)):
        session.execute(stmt, list(chunk))


# --------------------------------------------------------------------------------------------------------------
# Transitions


def _transition(
    session: Session,
    fsm: states.StateMachine,
    table: sa.Table,
    ids: Sequence[int],
    new: str,
    values: Mapping[str, Any] | None = None,
) -> list[int]:
    """Move rows to ``new`` where the state machine allows; return the ids that changed.

    Rows already in ``new`` and untimely transitions are left alone (reporters race; retried HTTP calls repeat);
    an illegal transition raises :class:`states.IllegalTransition` and rolls the whole transaction back.
    """
    changed: list[int] = []
    now = utcnow()
    for chunk in _chunks(sorted(set(ids))):
        rows = session.execute(
            sa.select(table.c.id, table.c.status).where(table.c.id.in_(chunk)).order_by(table.c.id).with_for_update()
        ).all()
        missing = set(chunk) - {r.id for r in rows}
        if missing:
            raise NotFound(f"{fsm.name}: no row with id {sorted(missing)[:10]}")
        legal = [r.id for r in rows if r.status != new and fsm.check(r.status, new)]
        if legal:
            session.execute(
                table.update()
                .where(table.c.id.in_(legal), table.c.status.in_(fsm.sources(new)))
                .values(status=new, status_date=now, **(values or {}))
            )
            changed.extend(legal)
    return changed


def _tasks_follow(session: Session, ti_ids: Sequence[int], ti_status: str) -> None:
    """A task follows its instance through Q/I/O/R/D; after errors it takes Jobmon's retry path."""
    if not ti_ids:
        return
    # Only a task's newest instance moves the task: a late report of a superseded attempt must not.
    task_ids: list[int] = []
    for chunk in _chunks(list(ti_ids)):
        own = sa.select(TI.c.task_id, TI.c.id).where(TI.c.id.in_(chunk)).subquery()
        task_ids += [
            r.task_id
            for r in session.execute(
                sa.select(own.c.task_id).where(
                    own.c.id == sa.select(sa.func.max(TI.c.id)).where(TI.c.task_id == own.c.task_id).scalar_subquery()
                )
            )
        ]
    if ti_status in states.TASK_FOLLOWS_INSTANCE:
        target = states.TASK_FOLLOWS_INSTANCE[ti_status]
        now = utcnow()
        for chunk in _chunks(task_ids):
            # Conditional: a task already past this point (a late, untimely report) is left as it is.
            session.execute(
                TASK.update()
                .where(TASK.c.id.in_(chunk), TASK.c.status.in_(states.TASK_FSM.sources(target)))
                .values(status=target, status_date=now)
            )
    elif ti_status in states.TASK_INSTANCE_RETRYABLE or ti_status == states.TaskInstanceStatus.ERROR_FATAL:
        _tasks_after_instance_error(session, task_ids, ti_status)


def _tasks_after_instance_error(session: Session, task_ids: Sequence[int], ti_status: str) -> None:
    by_path: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for chunk in _chunks(list(task_ids)):
        for r in session.execute(
            sa.select(TASK.c.id, TASK.c.status, TASK.c.num_attempts, TASK.c.max_attempts).where(TASK.c.id.in_(chunk))
        ):
            if r.status in ("I", "O", "R", "E"):
                path = states.task_after_instance_error(ti_status, r.num_attempts, r.max_attempts)
                by_path[tuple(path[1:] if r.status == "E" else path)].append(r.id)
    for steps, ids in by_path.items():
        for step in steps:
            _transition(session, states.TASK_FSM, TASK, ids, step)


def transition_task_instances(
    session: Session, ti_ids: Sequence[int], new: str, values: Mapping[str, Any] | None = None
) -> list[int]:
    """Transition instances (and their tasks); the building block of every instance write."""
    changed = _transition(session, states.TASK_INSTANCE_FSM, TI, ti_ids, new, values)
    _tasks_follow(session, changed, new)
    return changed


def transition_workflow_run(session: Session, wfr_id: int, new: str) -> bool:
    """Transition a run; its workflow follows (Jobmon's ``WorkflowRun.transition``)."""
    changed = _transition(session, states.WORKFLOW_RUN_FSM, WFR, [wfr_id], new)
    if changed and new in states.WORKFLOW_FOLLOWS_RUN:
        wf_id = session.execute(sa.select(WFR.c.workflow_id).where(WFR.c.id == wfr_id)).scalar_one()
        _transition(session, states.WORKFLOW_FSM, WF, [wf_id], states.WORKFLOW_FOLLOWS_RUN[new])
    return bool(changed)


def _log_errors(session: Session, ti_ids: Sequence[int], description: str) -> None:
    if description and ti_ids:
        now = utcnow()
        session.execute(
            _table(models.TaskInstanceErrorLog).insert(),
            [{"task_instance_id": i, "error_time": now, "description": description} for i in ti_ids],
        )


# --------------------------------------------------------------------------------------------------------------
# Binding


@dataclass(frozen=True)
class BoundRun:
    workflow_id: int
    workflow_run_id: int
    new_run: bool
    tool_version_id: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """One task to bind, keyed to its Airflow identity."""

    airflow_task_id: str
    name: str
    command: str
    map_index: int = -1
    node_args_hash: str = ""
    task_args_hash: str = ""
    max_attempts: int = 3
    resource_scales: Mapping[str, Any] | None = None
    fallback_queues: Sequence[str] = ()
    array_id: int | None = None
    task_template_version_id: int | None = None


@dataclass(frozen=True)
class ResourcePlan:
    """One resource set for the next attempt of some tasks."""

    resources: Resources
    kind: str  # task_resources type: O original, V validated (moved/coerced), A adjusted (scaled)
    warnings: list[str]
    task_ids: list[int]


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


class JobmonService:
    """Domain operations on one state database."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._cluster_ids: dict[str, int] = {}

    def session(self) -> Any:
        return session_scope(self.engine)

    # -- clusters ------------------------------------------------------------------------------------------------
    def cluster_id(self, name: str, cluster_type: str) -> int:
        if name not in self._cluster_ids:
            with self.session() as s:
                type_id = s.execute(
                    sa.select(models.ClusterType.id).where(models.ClusterType.name == cluster_type)
                ).scalar_one()
                _insert_ignoring_duplicates(s, _table(models.Cluster), [{"name": name, "cluster_type_id": type_id}])
                self._cluster_ids[name] = s.execute(
                    sa.select(models.Cluster.id).where(models.Cluster.name == name)
                ).scalar_one()
        return self._cluster_ids[name]

    def queue_id(self, s: Session, cluster_id: int, limits: QueueLimits) -> int:
        params = json.dumps({"cores": limits.max_cores, "memory": limits.max_memory, "runtime": limits.max_runtime})
        table = _table(models.Queue)
        _insert_ignoring_duplicates(s, table, [{"name": limits.name, "cluster_id": cluster_id, "parameters": params}])
        return s.execute(
            sa.select(table.c.id).where(table.c.name == limits.name, table.c.cluster_id == cluster_id)
        ).scalar_one()

    # -- workflow and run ------------------------------------------------------------------------------------------
    def bind_workflow_run(
        self,
        *,
        dag_id: str,
        run_id: str,
        tool: str | None = None,
        tool_version: str = "1",
        workflow_args: str | None = None,
        name: str | None = None,
        description: str | None = None,
        user: str | None = None,
        max_concurrently_running: int | None = None,
    ) -> BoundRun:
        """Bind tool, version, workflow and an alive workflow run for one DAG run (idempotent).

        The first task of a DAG run (or of a new pass after the run ended, e.g. failed tasks cleared) creates the
        run and takes it through Jobmon's start-up states G→L→B→I→O→R at once: Airflow's scheduler plays the
        swarm and distributor, so there is no separate launch phase to wait for.
        """
        workflow_args = workflow_args if workflow_args is not None else run_id
        args_hash = sha256(dag_id, workflow_args)
        now = utcnow()
        with self.session() as s:
            _insert_ignoring_duplicates(s, _table(models.Tool), [{"name": tool or dag_id}])
            tool_id = s.execute(sa.select(models.Tool.id).where(models.Tool.name == (tool or dag_id))).scalar_one()
            tv = _table(models.ToolVersion)
            _insert_ignoring_duplicates(s, tv, [{"tool_id": tool_id, "version": tool_version}])
            tv_id = s.execute(
                sa.select(tv.c.id).where(tv.c.tool_id == tool_id, tv.c.version == tool_version)
            ).scalar_one()
            _insert_ignoring_duplicates(
                s,
                WF,
                [
                    {
                        "tool_version_id": tv_id,
                        "dag_id": dag_id,
                        "run_id": run_id,
                        "name": name or f"{dag_id} {run_id}",
                        "description": description,
                        "workflow_args": workflow_args,
                        "workflow_args_hash": args_hash,
                        "max_concurrently_running": max_concurrently_running or 10_000,
                        "created_date": now,
                        "status": "G",
                        "status_date": now,
                    }
                ],
            )
            # Lock the workflow row: concurrent first tasks of one DAG run must agree on one alive run.
            wf = s.execute(
                sa.select(WF.c.id, WF.c.status)
                .where(WF.c.tool_version_id == tv_id, WF.c.workflow_args_hash == args_hash)
                .with_for_update()
            ).one()
            if max_concurrently_running is not None:
                s.execute(WF.update().where(WF.c.id == wf.id).values(max_concurrently_running=max_concurrently_running))
            alive = s.execute(
                sa.select(WFR.c.id)
                .where(WFR.c.workflow_id == wf.id, WFR.c.status.in_(states.WORKFLOW_RUN_ALIVE))
                .order_by(WFR.c.id.desc())
                .limit(1)
            ).scalar()
            if alive is not None:
                return BoundRun(wf.id, alive, new_run=False, tool_version_id=tv_id)
            if wf.status == states.WorkflowStatus.DONE:
                # Re-running a finished DAG run (tasks cleared): Jobmon's reset, which bypasses the FSM.
                s.execute(WF.update().where(WF.c.id == wf.id).values(status="G", status_date=now))
            elif wf.status in ("F", "H", "A"):
                _transition(s, states.WORKFLOW_FSM, WF, [wf.id], "G")
            wfr_id = s.execute(
                WFR.insert().values(
                    workflow_id=wf.id,
                    user=user,
                    jobmon_version=__version__,
                    created_date=now,
                    status="G",
                    status_date=now,
                    heartbeat_date=now + timedelta(seconds=WORKFLOW_RUN_HEARTBEAT_INTERVAL * REPORT_BY_BUFFER),
                )
            ).inserted_primary_key[0]
            for step in "LBIOR":
                transition_workflow_run(s, wfr_id, step)
            log.info("Jobmon workflow %s: started workflow run %s", wf.id, wfr_id)
            return BoundRun(wf.id, wfr_id, new_run=True, tool_version_id=tv_id)

    def finish_workflow_run(self, dag_id: str, run_id: str, success: bool) -> int | None:
        """End the alive run of a DAG run: R→D when every task is done, else R→E (the workflow follows)."""
        with self.session() as s:
            row = s.execute(
                sa.select(WFR.c.id)
                .join(WF, WF.c.id == WFR.c.workflow_id)
                .where(WF.c.dag_id == dag_id, WF.c.run_id == run_id, WFR.c.status.in_(states.WORKFLOW_RUN_ALIVE))
                .order_by(WFR.c.id.desc())
                .limit(1)
            ).scalar()
            if row is None:
                return None
            wf_id = s.execute(sa.select(WFR.c.workflow_id).where(WFR.c.id == row)).scalar_one()
            unfinished = s.execute(
                sa.select(sa.func.count()).where(TASK.c.workflow_id == wf_id, TASK.c.status != "D")
            ).scalar_one()
            transition_workflow_run(s, row, "D" if success and not unfinished else "E")
            return int(row)

    def log_workflow_run_heartbeats(self, wfr_ids: Iterable[int]) -> None:
        """Push the report-by deadline of alive runs (one statement for all)."""
        ids = sorted(set(wfr_ids))
        if not ids:
            return
        deadline = utcnow() + timedelta(seconds=WORKFLOW_RUN_HEARTBEAT_INTERVAL * REPORT_BY_BUFFER)
        with self.session() as s:
            for chunk in _chunks(ids):
                s.execute(
                    WFR.update()
                    .where(WFR.c.id.in_(chunk), WFR.c.status.in_(states.WORKFLOW_RUN_ALIVE))
                    .values(heartbeat_date=deadline)
                )

    # -- tasks -----------------------------------------------------------------------------------------------------
    def bind_tasks(self, workflow_id: int, specs: Sequence[TaskSpec]) -> list[int]:
        """Bind many tasks in bulk (idempotent); returns task ids in the order of ``specs``."""
        now = utcnow()
        rows = [
            {
                "workflow_id": workflow_id,
                "airflow_task_id": t.airflow_task_id,
                "map_index": t.map_index,
                "node_args_hash": t.node_args_hash,
                "task_args_hash": t.task_args_hash,
                "array_id": t.array_id,
                "task_template_version_id": t.task_template_version_id,
                "name": t.name[:255],
                "command": t.command,
                "max_attempts": t.max_attempts,
                "resource_scales": json.dumps(t.resource_scales) if t.resource_scales is not None else None,
                "fallback_queues": json.dumps(list(t.fallback_queues)),
                "num_attempts": 0,
                "status": "G",
                "status_date": now,
            }
            for t in specs
        ]
        mutable = ("command", "max_attempts", "resource_scales", "fallback_queues")

        def key(row: Any) -> tuple[Any, ...]:
            return (row["airflow_task_id"], row["map_index"], row["node_args_hash"])

        with self.session() as s:
            existing = self._bound_tasks(s, workflow_id, specs, mutable)
            # New tasks: one multi-row insert (duplicates from a concurrent binder are left alone).
            _insert_ignoring_duplicates(s, TASK, [r for r in rows if key(r) not in existing])
            # Re-binding after a DAG change updates what a task runs with, never its status: one multi-row upsert
            # by id (an UPDATE per row would be a round trip per task); unchanged rows cost nothing.
            changed = [
                r | {"id": existing[key(r)]["id"]}
                for r in rows
                if key(r) in existing and any(existing[key(r)][k] != r[k] for k in mutable)
            ]
            _insert_ignoring_duplicates(s, TASK, changed, update=mutable)
            if any(key(r) not in existing for r in rows):  # some were new: read their ids back
                existing = self._bound_tasks(s, workflow_id, specs, ())
            return [existing[(t.airflow_task_id, t.map_index, t.node_args_hash)]["id"] for t in specs]

    @staticmethod
    def _bound_tasks(
        s: Session, workflow_id: int, specs: Sequence[TaskSpec], columns: Sequence[str]
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        """Tasks of the workflow with these Airflow task ids, by identity (one query per 1,000 task ids)."""
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        cols = [
            TASK.c.id,
            TASK.c.airflow_task_id,
            TASK.c.map_index,
            TASK.c.node_args_hash,
            *(TASK.c[c] for c in columns),
        ]
        for chunk in _chunks(sorted({t.airflow_task_id for t in specs})):
            for r in s.execute(
                sa.select(*cols).where(TASK.c.workflow_id == workflow_id, TASK.c.airflow_task_id.in_(chunk))
            ):
                out[(r.airflow_task_id, r.map_index, r.node_args_hash)] = r._asdict()
        return out

    # -- templates and arrays ------------------------------------------------------------------------------------
    def bind_task_template_version(
        self,
        tool_version_id: int,
        name: str,
        command_template: str,
        arg_mapping_hash: str,
        node_args: Sequence[str],
        task_args: Sequence[str],
        op_args: Sequence[str],
    ) -> int:
        """Tool version → task template → task template version (idempotent); returns the version's id."""
        tt, ttv = _table(models.TaskTemplate), _table(models.TaskTemplateVersion)
        template_hash = sha256(command_template)
        with self.session() as s:
            _insert_ignoring_duplicates(s, tt, [{"tool_version_id": tool_version_id, "name": name}])
            tt_id = s.execute(
                sa.select(tt.c.id).where(tt.c.tool_version_id == tool_version_id, tt.c.name == name)
            ).scalar_one()
            row = {
                "task_template_id": tt_id,
                "command_template": command_template,
                "command_template_hash": template_hash,
                "arg_mapping_hash": arg_mapping_hash,
                "node_args": json.dumps(list(node_args)),
                "task_args": json.dumps(list(task_args)),
                "op_args": json.dumps(list(op_args)),
            }
            _insert_ignoring_duplicates(s, ttv, [row])
            return int(
                s.execute(
                    sa.select(ttv.c.id).where(
                        ttv.c.task_template_id == tt_id,
                        ttv.c.command_template_hash == template_hash,
                        ttv.c.arg_mapping_hash == arg_mapping_hash,
                    )
                ).scalar_one()
            )

    def bind_array(self, workflow_id: int, name: str, ttv_id: int | None, max_concurrently_running: int) -> int:
        arr = _table(models.Array)
        with self.session() as s:
            _insert_ignoring_duplicates(
                s,
                arr,
                [
                    {
                        "workflow_id": workflow_id,
                        "name": name,
                        "task_template_version_id": ttv_id,
                        "max_concurrently_running": max_concurrently_running,
                    }
                ],
            )
            array_id = s.execute(
                sa.select(arr.c.id).where(
                    arr.c.workflow_id == workflow_id, arr.c.name == name, arr.c.task_template_version_id == ttv_id
                )
            ).scalar_one()
            s.execute(
                arr.update().where(arr.c.id == array_id).values(max_concurrently_running=max_concurrently_running)
            )
            return int(array_id)

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

    def next_array_batch_num(self, array_id: int) -> int:
        with self.engine.connect() as conn:
            current = conn.execute(sa.select(sa.func.max(TI.c.array_batch_num)).where(TI.c.array_id == array_id))
            return int(current.scalar() or 0) + 1

    def active_task_count(self, workflow_id: int) -> int:
        """Tasks of a workflow holding a place under its concurrency limit (Jobmon's Q/I/O/R)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(TASK.c.workflow_id == workflow_id, TASK.c.status.in_(list("QIOR")))
                ).scalar_one()
            )

    def array_failures(self, array_id: int, limit: int = 20) -> list[dict[str, Any]]:
        """Failed elements (task F) with their newest instance's status and last error."""
        el = _table(models.TaskInstanceErrorLog)
        with self.engine.connect() as conn:
            tasks = conn.execute(
                sa.select(TASK.c.id, TASK.c.name, TASK.c.num_attempts)
                .where(TASK.c.array_id == array_id, TASK.c.status == "F")
                .order_by(TASK.c.id)
                .limit(limit)
            ).all()
            out = []
            for t in tasks:  # at most `limit` rows: a report, not a scan
                ti = conn.execute(
                    sa.select(TI.c.id, TI.c.status, TI.c.distributor_id)
                    .where(TI.c.task_id == t.id)
                    .order_by(TI.c.id.desc())
                    .limit(1)
                ).one_or_none()
                error = None
                if ti is not None:
                    error = conn.execute(
                        sa.select(el.c.description)
                        .where(el.c.task_instance_id == ti.id)
                        .order_by(el.c.id.desc())
                        .limit(1)
                    ).scalar()
                out.append(
                    {
                        "task_id": t.id,
                        "name": t.name,
                        "attempts": t.num_attempts,
                        "status": ti.status if ti else None,
                        "job_id": ti.distributor_id if ti else None,
                        "error": (error or "")[-500:],
                    }
                )
            return out

    def task_commands(self, task_ids: Sequence[int]) -> dict[int, str]:
        with self.engine.connect() as conn:
            return {
                r.id: r.command
                for chunk in _chunks(list(task_ids))
                for r in conn.execute(sa.select(TASK.c.id, TASK.c.command).where(TASK.c.id.in_(chunk)))
            }

    def acknowledge(self, task_id: int, ti_id: int) -> None:
        """Record that Airflow saw this instance's end (its try finished with it): see :meth:`unacknowledged_end`."""
        attr_type, attr = _table(models.TaskAttributeType), _table(models.TaskAttribute)
        with self.session() as s:
            _insert_ignoring_duplicates(s, attr_type, [{"name": ACKNOWLEDGED}])
            type_id = s.execute(sa.select(attr_type.c.id).where(attr_type.c.name == ACKNOWLEDGED)).scalar_one()
            s.execute(attr.delete().where(attr.c.task_id == task_id, attr.c.task_attribute_type_id == type_id))
            s.execute(attr.insert().values(task_id=task_id, task_attribute_type_id=type_id, value=str(ti_id)))

    def unacknowledged_end(self, task_id: int) -> TaskInstanceView | None:
        """The task's newest instance if it ended D or F without Airflow seeing it: its Airflow try died (worker
        lost) while the job finished. The next try adopts that outcome instead of running the task again; a task
        whose end Airflow saw and that runs again was cleared by a user: a new pass."""
        attr_type, attr = _table(models.TaskAttributeType), _table(models.TaskAttribute)
        with self.engine.connect() as conn:
            newest = conn.execute(
                sa.select(TI.c.id, TI.c.status).where(TI.c.task_id == task_id).order_by(TI.c.id.desc()).limit(1)
            ).one_or_none()
            if newest is None or newest.status not in ("D", "F"):
                return None
            seen = conn.execute(
                sa.select(attr.c.value)
                .join(attr_type, attr_type.c.id == attr.c.task_attribute_type_id)
                .where(attr.c.task_id == task_id, attr_type.c.name == ACKNOWLEDGED)
            ).scalar()
        return None if seen == str(newest.id) else self.task_instance(newest.id)

    def get_task(self, task_id: int) -> TaskView:
        with self.session() as s:
            r = s.execute(sa.select(TASK).where(TASK.c.id == task_id)).one_or_none()
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

    def reset_tasks(self, task_ids: Sequence[int]) -> None:
        """Jobmon's ``Task.reset`` on resume: back to G with no attempts used (bypasses the FSM on purpose)."""
        with self.session() as s:
            for chunk in _chunks(list(task_ids)):
                s.execute(
                    TASK.update().where(TASK.c.id.in_(chunk)).values(status="G", num_attempts=0, status_date=utcnow())
                )

    def plan_resources(
        self,
        task_ids: Sequence[int],
        requested: Resources,
        limits_of: Any,
        resource_scales: Mapping[str, ScaleSpec] | None = None,
        fallback_queues: Sequence[str] = (),
    ) -> list[ResourcePlan]:
        """Resources of the next attempt of many tasks, grouped by resource set (one array batch each).

        A task whose last instance was killed for resources (Z) gets that attempt's resources scaled (Jobmon's
        ``adjust_resources``, type A); others get ``requested`` (type O). Then the first queue of
        ``[queue] + fallback_queues`` that fits is taken (type V when that changed anything). One query in all.
        """
        latest = (
            sa.select(sa.func.max(TI.c.id).label("ti_id"))
            .where(TI.c.task_id.in_(sa.bindparam("ids", expanding=True)))
            .group_by(TI.c.task_id)
            .scalar_subquery()
        )
        tr = _table(models.TaskResources)
        last: dict[int, Any] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(task_ids)):
                for r in conn.execute(
                    sa.select(TI.c.task_id, TI.c.status, tr.c.requested_resources)
                    .join(tr, tr.c.id == TI.c.task_resources_id)
                    .where(TI.c.id.in_(latest)),
                    {"ids": list(chunk)},
                ):
                    last[r.task_id] = r
        plans: dict[tuple[Resources, str], ResourcePlan] = {}
        for task_id in task_ids:
            row = last.get(task_id)
            kind, base = "O", requested
            if row is not None and row.status == states.TaskInstanceStatus.RESOURCE_ERROR:
                kind = "A"
                base = scale_resources(Resources.parse(json.loads(row.requested_resources)), resource_scales)
            fitted, warnings = fit_queue(base, limits_of, fallback_queues)
            kind = "V" if warnings and kind == "O" else kind
            plan = plans.setdefault((fitted, kind), ResourcePlan(fitted, kind, warnings, []))
            plan.task_ids.append(task_id)
        return list(plans.values())

    def resources_for_next_attempt(
        self,
        task_id: int,
        requested: Resources,
        limits_of: Any,
        resource_scales: Mapping[str, ScaleSpec] | None = None,
        fallback_queues: Sequence[str] = (),
    ) -> tuple[Resources, str, list[str]]:
        """:meth:`plan_resources` for one task: (resources, task_resources type, warnings)."""
        (plan,) = self.plan_resources([task_id], requested, limits_of, resource_scales, fallback_queues)
        return plan.resources, plan.kind, plan.warnings

    # -- task instances: the operator's side -------------------------------------------------------------------
    def queue_task_instances(
        self,
        workflow_run_id: int,
        cluster_id: int,
        task_ids: Sequence[int],
        resources: Resources,
        resources_type: str,
        queue: QueueLimits,
        try_number: int | None = None,
        array_id: int | None = None,
        array_batch_num: int | None = None,
    ) -> list[int]:
        """Tasks G/A → Q (attempt counted) and one new instance each in Q, in one transaction (bulk).

        All tasks share one resource set (one task_resources row), as one array batch or one single task does.
        Returns the instance ids in the order of ``task_ids``.
        """
        now = utcnow()
        with self.session() as s:
            queue_id = self.queue_id(s, cluster_id, queue)
            tr_id = s.execute(
                _table(models.TaskResources)
                .insert()
                .values(
                    queue_id=queue_id,
                    task_resources_type_id=resources_type,
                    requested_resources=json.dumps(resources.to_dict(), sort_keys=True),
                )
            ).inserted_primary_key[0]
            _transition(s, states.TASK_FSM, TASK, task_ids, "Q")
            for chunk in _chunks(list(task_ids)):
                s.execute(
                    TASK.update()
                    .where(TASK.c.id.in_(chunk))
                    .values(num_attempts=TASK.c.num_attempts + 1, task_resources_id=tr_id)
                )
            s.execute(
                TI.insert(),
                [
                    {
                        "workflow_run_id": workflow_run_id,
                        "task_id": t,
                        "array_id": array_id,
                        "cluster_id": cluster_id,
                        "task_resources_id": tr_id,
                        "array_batch_num": array_batch_num,
                        "array_step_id": step if array_batch_num is not None else None,
                        "try_number": try_number,
                        "status": "Q",
                        "status_date": now,
                    }
                    for step, t in enumerate(task_ids)
                ],
            )
            newest: dict[int, int] = {}
            for chunk in _chunks(list(task_ids)):
                for r in s.execute(
                    sa.select(TI.c.task_id, sa.func.max(TI.c.id).label("id"))
                    .where(TI.c.task_id.in_(chunk))
                    .group_by(TI.c.task_id)
                ):
                    newest[r.task_id] = r.id
            return [newest[t] for t in task_ids]

    def instantiate(
        self, ti_ids: Sequence[int], token_hashes: Mapping[int, str], paths: Mapping[int, Mapping[str, str]]
    ) -> None:
        """Q→I, storing each instance's token hash and log / exit-record paths."""
        with self.session() as s:
            transition_task_instances(s, ti_ids, "I")
            s.execute(
                TI.update()
                .where(TI.c.id == sa.bindparam("b_id"))
                .values(
                    token_hash=sa.bindparam("token_hash"),
                    stdout=sa.bindparam("stdout"),
                    stderr=sa.bindparam("stderr"),
                    exit_record=sa.bindparam("exit_record"),
                ),
                [
                    {
                        "b_id": i,
                        "token_hash": token_hashes.get(i),
                        "stdout": paths.get(i, {}).get("stdout"),
                        "stderr": paths.get(i, {}).get("stderr"),
                        "exit_record": paths.get(i, {}).get("exit_record"),
                    }
                    for i in ti_ids
                ],
            )

    def instantiate_array_batch(self, array_id: int, batch_num: int, token_hash: str, exit_record_dir: str) -> None:
        """Q→I for one array batch, its shared token hash and each instance's exit record path
        (``<dir>/ti-<id>.exit.json``): set-based, a constant number of statements for any batch size."""
        batch = (TI.c.array_id == array_id) & (TI.c.array_batch_num == batch_num)
        with self.session() as s:
            ids = [r.id for r in s.execute(sa.select(TI.c.id).where(batch, TI.c.status == "Q"))]
            transition_task_instances(s, ids, "I")
            s.execute(
                TI.update()
                .where(batch)
                .values(
                    token_hash=token_hash,
                    exit_record=sa.literal(f"{exit_record_dir}/ti-") + sa.cast(TI.c.id, sa.String) + ".exit.json",
                )
            )

    def log_array_distributor_ids(
        self, array_id: int, batch_num: int, job_id: str, stdout_prefix: str, stderr_prefix: str
    ) -> None:
        """I→O for one array batch submitted as job ``job_id``: element i (step i-1) is ``<job_id>.<i>``, its logs
        ``<prefix><i>``. Set-based, right after the one qsub."""
        batch = (TI.c.array_id == array_id) & (TI.c.array_batch_num == batch_num)
        element = sa.cast(TI.c.array_step_id + 1, sa.String)
        now = utcnow()
        with self.session() as s:
            s.execute(
                TI.update()
                .where(batch)
                .values(
                    distributor_id=sa.literal(f"{job_id}.") + element,
                    stdout=sa.literal(stdout_prefix) + element,
                    stderr=sa.literal(stderr_prefix) + element,
                    submitted_date=now,
                )
            )
            ids = [r.id for r in s.execute(sa.select(TI.c.id).where(batch, TI.c.status == "I"))]
            report_by = now + timedelta(seconds=TASK_INSTANCE_HEARTBEAT_INTERVAL * REPORT_BY_BUFFER)
            transition_task_instances(s, ids, "O", {"report_by_date": report_by})

    def log_distributor_ids(
        self, distributor_ids: Mapping[int, str], log_paths: Mapping[int, Mapping[str, str]] | None = None
    ) -> None:
        """I→O with the cluster job id (and the job's stdout/stderr paths), right after submission."""
        now = utcnow()
        report_by = now + timedelta(seconds=TASK_INSTANCE_HEARTBEAT_INTERVAL * REPORT_BY_BUFFER)
        log_paths = log_paths or {}
        with self.session() as s:
            s.execute(
                TI.update()
                .where(TI.c.id == sa.bindparam("b_id"))
                .values(
                    distributor_id=sa.bindparam("distributor_id"),
                    submitted_date=now,
                    stdout=sa.func.coalesce(sa.bindparam("stdout"), TI.c.stdout),
                    stderr=sa.func.coalesce(sa.bindparam("stderr"), TI.c.stderr),
                ),
                [
                    {
                        "b_id": i,
                        "distributor_id": d,
                        "stdout": log_paths.get(i, {}).get("stdout"),
                        "stderr": log_paths.get(i, {}).get("stderr"),
                    }
                    for i, d in distributor_ids.items()
                ],
            )
            transition_task_instances(s, list(distributor_ids), "O", {"report_by_date": report_by})

    def log_no_distributor_id(self, ti_ids: Sequence[int], message: str) -> None:
        """I→W: the submission was refused; the task may retry."""
        with self.session() as s:
            changed = transition_task_instances(s, ti_ids, "W")
            _log_errors(s, changed, message)

    def request_kill(self, ti_ids: Sequence[int], message: str = "killed by user") -> list[int]:
        """Q/I/O/R → K (KILL_SELF). A worker that still runs sees K in its next heartbeat reply and stops (K→F);
        one that finishes first reports K→D. The caller deletes the jobs, then calls :meth:`end_killed`."""
        with self.session() as s:
            live = [
                r.id
                for chunk in _chunks(list(ti_ids))
                for r in s.execute(
                    sa.select(TI.c.id).where(TI.c.id.in_(chunk), TI.c.status.in_(list("QIOR"))).with_for_update()
                )
            ]
            changed = _transition(s, states.TASK_INSTANCE_FSM, TI, live, "K")
            _log_errors(s, changed, message)
            return changed

    def end_killed(self, ti_ids: Sequence[int]) -> None:
        """After the jobs were deleted nobody reports: tasks of instances still in K fail without retry (E→F)."""
        with self.session() as s:
            task_ids = [
                r.task_id
                for chunk in _chunks(list(ti_ids))
                for r in s.execute(sa.select(TI.c.task_id).where(TI.c.id.in_(chunk), TI.c.status == "K"))
            ]
            for step in "EF":
                for chunk in _chunks(task_ids):
                    s.execute(
                        TASK.update()
                        .where(TASK.c.id.in_(chunk), TASK.c.status.in_(states.TASK_FSM.sources(step)))
                        .values(status=step, status_date=utcnow())
                    )
            for chunk in _chunks(task_ids):
                # Killed before it was ever submitted: the task FSM has no way out of Q but a reset, and nothing
                # will report again; end it as Jobmon's cleanup would, bypassing the FSM on purpose.
                s.execute(
                    TASK.update()
                    .where(TASK.c.id.in_(chunk), TASK.c.status == "Q")
                    .values(status="F", status_date=utcnow())
                )

    def apply_outcome(
        self,
        ti_id: int,
        status: str,
        *,
        exit_status: int | None = None,
        message: str = "",
        nodename: str | None = None,
        usage: Mapping[str, Any] | None = None,
    ) -> str:
        """Record an outcome learnt without the worker's report (exit record, cluster accounting).

        An instance that never reported running, or is triaging, passes through R for D/E (O→R→D, T→R→E); Z, U
        and F are legal from O and T; a lost launched instance goes X→E.
        Returns the instance's status afterwards.
        """
        with self.session() as s:
            current = s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar_one()
            if current in ("I", "O", "T") and status in ("D", "E"):
                # It ran (or, triaging, it was running) and ended without reporting: pass through R, as a late
                # report from the worker would.
                transition_task_instances(s, [ti_id], "R", {"nodename": nodename} if nodename else None)
            if status == states.TaskInstanceStatus.NO_HEARTBEAT:
                transition_task_instances(s, [ti_id], "X")
                status = states.TaskInstanceStatus.ERROR  # Jobmon's no_heartbeat_error: X → E, retryable
            self._finish(s, ti_id, status, exit_status, message, nodename, usage)
            return str(s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar_one())

    def _finish(
        self,
        s: Session,
        ti_id: int,
        status: str,
        exit_status: int | None,
        message: str,
        nodename: str | None,
        usage: Mapping[str, Any] | None,
    ) -> list[int]:
        values: dict[str, Any] = {"exit_status": exit_status}
        if nodename:
            values["nodename"] = nodename
        usage = usage or {}
        if usage.get("maxrss_bytes") is not None:
            values["maxrss"] = int(usage["maxrss_bytes"])
        if usage.get("wallclock_s") is not None:
            values["wallclock"] = float(usage["wallclock_s"])
        if usage.get("cpu_s") is not None:
            values["cpu"] = float(usage["cpu_s"])
        if status == states.TaskInstanceStatus.DONE:
            row = s.execute(
                sa.select(TI.c.status, TASK.c.status.label("task_status"))
                .join(TASK, TASK.c.id == TI.c.task_id)
                .where(TI.c.id == ti_id)
            ).one()
            if row.status == states.TaskInstanceStatus.KILL_SELF and row.task_status == states.TaskStatus.ERROR_FATAL:
                # The kill was completed (job deleted, task failed): a done report still in flight is stale.
                raise states.IllegalTransition(f"task_instance {ti_id} was killed and its task failed; K → D refused")
        if status == states.TaskInstanceStatus.ERROR_FATAL:
            # Jobmon reaches F from a running instance only through triage (R→T→F): take the same path.
            current = s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar_one()
            if current == states.TaskInstanceStatus.RUNNING:
                transition_task_instances(s, [ti_id], "T")
        changed = transition_task_instances(s, [ti_id], status, values)
        if status != "D":
            _log_errors(s, changed, message)
        return changed

    def log_launched_report_by(self, ti_ids: Sequence[int]) -> None:
        """Push the deadline of launched instances whose jobs the cluster still lists (queued is not lost)."""
        deadline = utcnow() + timedelta(seconds=TASK_INSTANCE_HEARTBEAT_INTERVAL * REPORT_BY_BUFFER)
        with self.session() as s:
            for chunk in _chunks(list(ti_ids)):
                s.execute(TI.update().where(TI.c.id.in_(chunk), TI.c.status == "O").values(report_by_date=deadline))

    def set_status_for_triaging(self, workflow_run_ids: Collection[int] | None = None) -> tuple[list[int], list[int]]:
        """Overdue instances: R → T (triage from accounting), O → X (never reported running). Set-based."""
        now = utcnow()
        out: list[list[int]] = []
        with self.session() as s:
            for old, new in (("R", "T"), ("O", "X")):
                q = sa.select(TI.c.id).where(TI.c.status == old, TI.c.report_by_date < now)
                if workflow_run_ids is not None:
                    q = q.where(TI.c.workflow_run_id.in_(workflow_run_ids))
                ids = [r.id for r in s.execute(q)]
                out.append(transition_task_instances(s, ids, new))
        return out[0], out[1]

    # -- task instances: the worker node's side (State Manager routes) ------------------------------------------
    def authenticate(self, ti_id: int, token: str) -> None:
        """The bearer token must be the one issued to this very instance."""
        if token not in self.authorized({ti_id: [token]})[ti_id]:
            raise Unauthorized(f"token is not valid for task instance {ti_id}")

    def authorized(self, tokens: Mapping[int, Iterable[str]]) -> dict[int, set[str]]:
        """Which of the presented tokens (plain) are the ones issued to each instance: one query per chunk, for the
        State Manager's batched heartbeats."""
        stored: dict[int, str] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(tokens)):
                for ti_id, token_hash in conn.execute(sa.select(TI.c.id, TI.c.token_hash).where(TI.c.id.in_(chunk))):
                    if token_hash:
                        stored[ti_id] = token_hash
        return {
            ti_id: {t for t in presented if ti_id in stored and hmac.compare_digest(stored[ti_id], hash_token(t))}
            for ti_id, presented in tokens.items()
        }

    def status_of(self, ti_id: int) -> str:
        with self.engine.connect() as conn:
            status = conn.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar()
        if status is None:
            raise NotFound(f"task instance {ti_id}")
        return str(status)

    def log_running(
        self,
        ti_id: int,
        nodename: str,
        process_group_id: int | None,
        distributor_id: str | None,
        next_report: float,
    ) -> str:
        with self.session() as s:
            current = s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id).with_for_update()).scalar_one()
            if current == states.TaskInstanceStatus.KILL_SELF:
                return current
            values: dict[str, Any] = {
                "nodename": nodename,
                "process_group_id": process_group_id,
                "report_by_date": utcnow() + timedelta(seconds=next_report),
            }
            if distributor_id:
                values["distributor_id"] = distributor_id
            transition_task_instances(s, [ti_id], "R", values)
            return str(s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar_one())

    def log_report_by(self, ti_id: int, next_report: float) -> str:
        """Heartbeat: push the deadline; a triaging instance (late heartbeat) goes back to R.

        The common case, a running instance, is one conditional UPDATE; anything else takes the locked path.
        """
        deadline = utcnow() + timedelta(seconds=next_report)
        with self.session() as s:
            running = s.execute(TI.update().where(TI.c.id == ti_id, TI.c.status == "R").values(report_by_date=deadline))
            if running.rowcount == 1:
                return "R"
        with self.session() as s:
            current = s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id).with_for_update()).scalar_one()
            if current == states.TaskInstanceStatus.TRIAGING:
                transition_task_instances(s, [ti_id], "R")
                current = "R"
            if current == "R":
                s.execute(TI.update().where(TI.c.id == ti_id).values(report_by_date=deadline))
            return str(current)

    def log_report_by_many(self, next_reports: Mapping[int, float]) -> dict[int, str]:
        """Many heartbeats at once (the State Manager coalesces concurrent requests into this): one UPDATE for the
        running instances, and one transition back to R for the triaging ones whose heartbeats came late (after a
        network partition, thousands at once); killed or ended instances just report their status."""
        if not next_reports:
            return {}
        deadline = utcnow() + timedelta(seconds=max(next_reports.values()))
        out: dict[int, str] = {}
        with self.session() as s:
            for chunk in _chunks(sorted(next_reports)):
                s.execute(TI.update().where(TI.c.id.in_(chunk), TI.c.status == "R").values(report_by_date=deadline))
                for r in s.execute(sa.select(TI.c.id, TI.c.status).where(TI.c.id.in_(chunk))):
                    out[r.id] = r.status
            late = [i for i, status in out.items() if status == states.TaskInstanceStatus.TRIAGING]
            triaging: list[int] = []
            for chunk in _chunks(late):  # locked and read again: one that ended meanwhile is left as it is
                triaging += s.execute(
                    sa.select(TI.c.id).where(TI.c.id.in_(chunk), TI.c.status == "T").with_for_update()
                ).scalars()
            back = transition_task_instances(s, triaging, "R")
            for chunk in _chunks(back):
                s.execute(TI.update().where(TI.c.id.in_(chunk)).values(report_by_date=deadline))
            out.update(dict.fromkeys(back, "R"))
        return {ti_id: out.get(ti_id, "unknown") for ti_id in next_reports}

    def log_done(self, ti_id: int, nodename: str | None, usage: Mapping[str, Any] | None) -> str:
        with self.session() as s:
            self._finish(s, ti_id, "D", 0, "", nodename, usage)
            return str(s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar_one())

    def log_error(
        self,
        ti_id: int,
        error_state: str,
        exit_status: int | None,
        message: str,
        nodename: str | None,
        usage: Mapping[str, Any] | None,
    ) -> str:
        if error_state not in ("E", "Z", "F", "U"):
            raise states.IllegalTransition(f"task_instance: error_state must be E, Z, F or U, got {error_state!r}")
        with self.session() as s:
            self._finish(s, ti_id, error_state, exit_status, message, nodename, usage)
            return str(s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar_one())

    # -- reads -----------------------------------------------------------------------------------------------------
    def task_instance(self, ti_id: int) -> TaskInstanceView:
        views = self.task_instances([ti_id])
        if ti_id not in views:
            raise NotFound(f"task instance {ti_id}")
        return views[ti_id]

    def task_instances(self, ti_ids: Iterable[int]) -> dict[int, TaskInstanceView]:
        """Many instances in one query per chunk (triggers of one process share this)."""
        ids = sorted(set(ti_ids))
        out: dict[int, TaskInstanceView] = {}
        tr = _table(models.TaskResources)
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                for r in conn.execute(
                    sa.select(TI, tr.c.requested_resources)
                    .outerjoin(tr, tr.c.id == TI.c.task_resources_id)
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
        el = _table(models.TaskInstanceErrorLog)
        with self.engine.connect() as conn:
            return [
                r.description
                for r in conn.execute(
                    sa.select(el.c.description).where(el.c.task_instance_id == ti_id).order_by(el.c.id)
                )
            ]

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
        latest = sa.select(TI.c.task_id, sa.func.max(TI.c.id).label("ti_id")).group_by(TI.c.task_id).subquery("latest")
        tr = _table(models.TaskResources)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    TASK.c.id,
                    TASK.c.name,
                    TASK.c.status,
                    TASK.c.num_attempts,
                    TI.c.id.label("ti_id"),
                    TI.c.status.label("ti_status"),
                    TI.c.distributor_id,
                    TI.c.nodename,
                    TI.c.exit_status,
                    TI.c.maxrss,
                    TI.c.wallclock,
                    tr.c.requested_resources,
                )
                .select_from(TASK)
                .outerjoin(latest, latest.c.task_id == TASK.c.id)
                .outerjoin(TI, TI.c.id == latest.c.ti_id)
                .outerjoin(tr, tr.c.id == TI.c.task_resources_id)
                .where(TASK.c.workflow_id == workflow_id)
                .order_by(TASK.c.id)
            ).all()
        return [
            {
                "TASK_ID": r.id,
                "TASK_NAME": r.name,
                "STATUS": states.bucket_of(states.TASK_BUCKETS, r.status),
                "RETRIES": max(r.num_attempts - 1, 0),
                "TASK_INSTANCE_ID": r.ti_id,
                "TI_STATUS": r.ti_status,
                "DISTRIBUTOR_ID": r.distributor_id,
                "HOST": r.nodename,
                "EXIT": r.exit_status,
                "MAXRSS_MB": round(r.maxrss / 2**20, 1) if r.maxrss else None,
                "WALLCLOCK_S": round(r.wallclock, 1) if r.wallclock is not None else None,
                "REQUESTED": r.requested_resources,
            }
            for r in rows
        ]
