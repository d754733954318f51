"""Binding: what the operators write before anything runs. Tool, workflow, workflow run, templates, arrays and
tasks, each idempotent (keyed to the DAG run's and the Airflow task's identity) and in bulk; and the ends of
runs and passes (finish a run, reset tasks for a new pass, acknowledge an end Airflow saw)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobmon_airflow import __version__, models, states
from jobmon_airflow.hashing import sha256
from jobmon_airflow.service.core import (
    REPORT_BY_BUFFER,
    TASK,
    TI,
    TIS,
    TS,
    WF,
    WFR,
    WFRS,
    WFS,
    WORKFLOW_RUN_HEARTBEAT_INTERVAL,
    Store,
    bounded_name,
    chunks,
    inserted_id,
    table,
    transition,
    transition_workflow_run,
    upsert,
    utcnow,
)
from jobmon_airflow.service.queries import Queries, TaskInstanceView

log = logging.getLogger(__name__)

ACKNOWLEDGED = "airflow_acknowledged_task_instance"  # task attribute: the instance whose end Airflow saw
#: Jobmon's start-up of a run: Airflow's scheduler plays the swarm and the distributor, so it is taken at once.
RUN_START_UP = (WFRS.LINKING, WFRS.BOUND, WFRS.INSTANTIATED, WFRS.LAUNCHED, WFRS.RUNNING)
_MUTABLE_TASK_COLUMNS = ("command", "max_attempts", "resource_scales", "fallback_queues")


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


class Binding(Store):
    """Idempotent, bulk binding of everything a DAG run needs in the state database."""

    def __init__(self, engine: Any):
        super().__init__(engine)
        self._cluster_ids: dict[str, int] = {}

    # -- clusters ------------------------------------------------------------------------------------------------
    def cluster_id(self, name: str, cluster_type: str) -> int:
        if name not in self._cluster_ids:
            with self.session() as s:
                type_id = s.execute(
                    sa.select(models.ClusterType.id).where(models.ClusterType.name == cluster_type)
                ).scalar_one()
                upsert(s, table(models.Cluster), [{"name": name, "cluster_type_id": type_id}])
                self._cluster_ids[name] = s.execute(
                    sa.select(models.Cluster.id).where(models.Cluster.name == name)
                ).scalar_one()
        return self._cluster_ids[name]

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
            upsert(s, table(models.Tool), [{"name": tool or dag_id}])
            tool_id = s.execute(sa.select(models.Tool.id).where(models.Tool.name == (tool or dag_id))).scalar_one()
            tv = table(models.ToolVersion)
            upsert(s, tv, [{"tool_id": tool_id, "version": tool_version}])
            tv_id = s.execute(
                sa.select(tv.c.id).where(tv.c.tool_id == tool_id, tv.c.version == tool_version)
            ).scalar_one()
            upsert(
                s,
                WF,
                [
                    {
                        "tool_version_id": tv_id,
                        "dag_id": dag_id,
                        "run_id": run_id,
                        "name": bounded_name("workflow name", name or f"{dag_id} {run_id}"),
                        "description": description,
                        "workflow_args": workflow_args,
                        "workflow_args_hash": args_hash,
                        "max_concurrently_running": max_concurrently_running or 10_000,
                        "created_date": now,
                        "status": WFS.REGISTERING,
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
            wfr_id = self._start_run(s, wf.id, wf.status, user)
            log.info("Jobmon workflow %s: started workflow run %s", wf.id, wfr_id)
            return BoundRun(wf.id, wfr_id, new_run=True, tool_version_id=tv_id)

    @staticmethod
    def _start_run(s: Session, wf_id: int, wf_status: str, user: str | None) -> int:
        now = utcnow()
        if wf_status == WFS.DONE:
            # Re-running a finished DAG run (tasks cleared): Jobmon's reset, which bypasses the FSM.
            s.execute(WF.update().where(WF.c.id == wf_id).values(status=WFS.REGISTERING, status_date=now))
        elif wf_status in (WFS.FAILED, WFS.HALTED, WFS.ABORTED):
            transition(s, states.WORKFLOW_FSM, WF, [wf_id], WFS.REGISTERING)
        wfr_id = inserted_id(
            s,
            WFR.insert().values(
                workflow_id=wf_id,
                user=user,
                jobmon_version=__version__,
                created_date=now,
                status=WFRS.REGISTERED,
                status_date=now,
                heartbeat_date=now + timedelta(seconds=WORKFLOW_RUN_HEARTBEAT_INTERVAL * REPORT_BY_BUFFER),
            ),
        )
        for step in RUN_START_UP:
            transition_workflow_run(s, wfr_id, step)
        return wfr_id

    def finish_workflow_run(self, dag_id: str, run_id: str, success: bool) -> int | None:
        """End the alive run of a DAG run: R→D when every task is done, else R→E (the workflow follows)."""
        with self.session() as s:
            row = s.execute(
                sa.select(WFR.c.id, WFR.c.workflow_id)
                .join(WF, WF.c.id == WFR.c.workflow_id)
                .where(WF.c.dag_id == dag_id, WF.c.run_id == run_id, WFR.c.status.in_(states.WORKFLOW_RUN_ALIVE))
                .order_by(WFR.c.id.desc())
                .limit(1)
            ).one_or_none()
            if row is None:
                return None
            unfinished = s.execute(
                sa.select(sa.func.count()).where(TASK.c.workflow_id == row.workflow_id, TASK.c.status != TS.DONE)
            ).scalar_one()
            transition_workflow_run(s, row.id, WFRS.DONE if success and not unfinished else WFRS.ERROR)
            return int(row.id)

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
                "name": bounded_name("task name", t.name),
                "command": t.command,
                "max_attempts": t.max_attempts,
                "resource_scales": json.dumps(t.resource_scales) if t.resource_scales is not None else None,
                "fallback_queues": json.dumps(list(t.fallback_queues)),
                "num_attempts": 0,
                "status": TS.REGISTERING,
                "status_date": now,
            }
            for t in specs
        ]

        def key(row: Any) -> tuple[Any, ...]:
            return (row["airflow_task_id"], row["map_index"], row["node_args_hash"])

        with self.session() as s:
            existing = self._bound_tasks(s, workflow_id, specs, _MUTABLE_TASK_COLUMNS)
            # New tasks: one multi-row insert (duplicates from a concurrent binder are left alone).
            upsert(s, TASK, [r for r in rows if key(r) not in existing])
            # Re-binding after a DAG change updates what a task runs with, never its status: one multi-row upsert
            # by id (an UPDATE per row would be a round trip per task); unchanged rows cost nothing.
            changed = [
                r | {"id": existing[key(r)]["id"]}
                for r in rows
                if key(r) in existing and any(existing[key(r)][k] != r[k] for k in _MUTABLE_TASK_COLUMNS)
            ]
            upsert(s, TASK, changed, update=_MUTABLE_TASK_COLUMNS)
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
        for chunk in chunks(sorted({t.airflow_task_id for t in specs})):
            for r in s.execute(
                sa.select(*cols).where(TASK.c.workflow_id == workflow_id, TASK.c.airflow_task_id.in_(chunk))
            ):
                out[(r.airflow_task_id, r.map_index, r.node_args_hash)] = r._asdict()
        return out

    def reset_tasks(self, task_ids: Iterable[int]) -> None:
        """Jobmon's ``Task.reset`` on resume: back to G with no attempts used (bypasses the FSM on purpose)."""
        with self.session() as s:
            for chunk in chunks(list(task_ids)):
                s.execute(
                    TASK.update()
                    .where(TASK.c.id.in_(chunk))
                    .values(status=TS.REGISTERING, num_attempts=0, status_date=utcnow())
                )

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
        tt, ttv = table(models.TaskTemplate), table(models.TaskTemplateVersion)
        template_hash = sha256(command_template)
        with self.session() as s:
            upsert(s, tt, [{"tool_version_id": tool_version_id, "name": bounded_name("task template name", name)}])
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
            upsert(s, ttv, [row])
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
        arr = table(models.Array)
        with self.session() as s:
            upsert(
                s,
                arr,
                [
                    {
                        "workflow_id": workflow_id,
                        "name": bounded_name("array name", name),
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

    # -- what Airflow saw ------------------------------------------------------------------------------------------
    def acknowledge(self, task_id: int, ti_id: int) -> None:
        """Record that Airflow saw this instance's end (its try finished with it): see :meth:`unacknowledged_end`."""
        attr_type, attr = table(models.TaskAttributeType), table(models.TaskAttribute)
        with self.session() as s:
            upsert(s, attr_type, [{"name": ACKNOWLEDGED}])
            type_id = s.execute(sa.select(attr_type.c.id).where(attr_type.c.name == ACKNOWLEDGED)).scalar_one()
            s.execute(attr.delete().where(attr.c.task_id == task_id, attr.c.task_attribute_type_id == type_id))
            s.execute(attr.insert().values(task_id=task_id, task_attribute_type_id=type_id, value=str(ti_id)))

    def unacknowledged_end(self, task_id: int) -> TaskInstanceView | None:
        """The task's newest instance if it ended D or F without Airflow seeing it: its Airflow try died (worker
        lost) while the job finished. The next try adopts that outcome instead of running the task again; a task
        whose end Airflow saw and that runs again was cleared by a user: a new pass."""
        attr_type, attr = table(models.TaskAttributeType), table(models.TaskAttribute)
        with self.engine.connect() as conn:
            newest = conn.execute(
                sa.select(TI.c.id, TI.c.status).where(TI.c.task_id == task_id).order_by(TI.c.id.desc()).limit(1)
            ).one_or_none()
            if newest is None or newest.status not in (TIS.DONE, TIS.ERROR_FATAL):
                return None
            seen = conn.execute(
                sa.select(attr.c.value)
                .join(attr_type, attr_type.c.id == attr.c.task_attribute_type_id)
                .where(attr.c.task_id == task_id, attr_type.c.name == ACKNOWLEDGED)
            ).scalar()
        return None if seen == str(newest.id) else Queries(self.engine).task_instance(newest.id)
