"""The attempt lifecycle: plan resources, queue instances, record submissions, kills, outcomes learnt without the
worker's report, and liveness (heartbeat deadlines, triage). Used by execution and the watchers.

No cluster I/O here: what the cluster said (job ids, queue limits, exit evidence) is passed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobmon_airflow import models, states, telemetry
from jobmon_airflow.records import Usage
from jobmon_airflow.resources import QueueLimits, ResourceError, Resources, fit_queue, scale_resources
from jobmon_airflow.service.core import (
    LAUNCHED_REPORT_BY,
    REPORT_BY_BUFFER,
    TASK,
    TASK_RESOURCES,
    TI,
    TIS,
    TS,
    WFR,
    WORKFLOW_RUN_HEARTBEAT_INTERVAL,
    NotFound,
    Store,
    chunks,
    finish_instance,
    inserted_id,
    log_errors,
    set_task_status,
    status_of,
    table,
    transition,
    transition_task_instances,
    updated_rows,
    upsert,
    utcnow,
)

TRT = states.TaskResourcesType
#: Instances a kill request reaches: their job may be queued or running.
KILLABLE = (TIS.QUEUED, TIS.INSTANTIATED, TIS.LAUNCHED, TIS.RUNNING)


@dataclass(frozen=True)
class ResourcePlan:
    """One resource set for the next attempt of some tasks."""

    resources: Resources
    kind: states.TaskResourcesType
    warnings: list[str]
    task_ids: list[int]


def _limits_lookup(limits: Mapping[str, QueueLimits]) -> Callable[[str | None], QueueLimits]:
    def limits_of(queue: str | None) -> QueueLimits:
        if queue is None or queue not in limits:
            raise ResourceError(f"compute_resources.queue: no limits known for queue {queue!r}")
        return limits[queue]

    return limits_of


class Lifecycle(Store):
    """Writes of one attempt, from its resources to its end."""

    # -- resources -------------------------------------------------------------------------------------------------
    def plan_resources(
        self,
        task_ids: Sequence[int],
        requested: Resources,
        limits: Mapping[str, QueueLimits],
        resource_scales: Mapping[str, Any] | None = None,
        fallback_queues: Sequence[str] = (),
    ) -> list[ResourcePlan]:
        """Resources of the next attempt of many tasks, grouped by resource set (one array batch each).

        A task whose last instance was killed for resources (Z) gets that attempt's resources scaled (Jobmon's
        ``adjust_resources``, ADJUSTED; a list of scales is indexed by the task's retry number); others get
        ``requested`` (ORIGINAL). Then the first queue of ``[queue] + fallback_queues`` that fits is taken
        (VALIDATED when that changed anything). ``limits``: every one of those queues, by name, as the cluster
        states them; ``requested.queue`` must be set. One query in all.
        """
        latest = (
            sa.select(sa.func.max(TI.c.id).label("ti_id"))
            .where(TI.c.task_id.in_(sa.bindparam("ids", expanding=True)))
            .group_by(TI.c.task_id)
            .scalar_subquery()
        )
        last = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(task_ids)):
                for r in conn.execute(
                    sa.select(TI.c.task_id, TI.c.status, TASK_RESOURCES.c.requested_resources, TASK.c.num_attempts)
                    .join(TASK_RESOURCES, TASK_RESOURCES.c.id == TI.c.task_resources_id)
                    .join(TASK, TASK.c.id == TI.c.task_id)
                    .where(TI.c.id.in_(latest)),
                    {"ids": list(chunk)},
                ):
                    last[r.task_id] = r
        limits_of = _limits_lookup(limits)
        plans: dict[tuple[Resources, str], ResourcePlan] = {}
        for task_id in task_ids:
            row = last.get(task_id)
            kind, base = TRT.ORIGINAL, requested
            if row is not None and row.status == TIS.RESOURCE_ERROR:
                kind = TRT.ADJUSTED
                previous = Resources.parse(json.loads(row.requested_resources))
                base = scale_resources(previous, resource_scales, retry=max(int(row.num_attempts), 1))
            fitted, warnings = fit_queue(base, limits_of, fallback_queues)
            kind = TRT.VALIDATED if warnings and kind == TRT.ORIGINAL else kind
            plan = plans.setdefault((fitted, kind), ResourcePlan(fitted, kind, warnings, []))
            plan.task_ids.append(task_id)
        return list(plans.values())

    # -- queue, instantiate, submit ------------------------------------------------------------------------------
    @staticmethod
    def queue_id(s: Session, cluster_id: int, limits: QueueLimits) -> int:
        params = json.dumps({"cores": limits.max_cores, "memory": limits.max_memory, "runtime": limits.max_runtime})
        queue = table(models.Queue)
        upsert(s, queue, [{"name": limits.name, "cluster_id": cluster_id, "parameters": params}])
        return int(
            s.execute(
                sa.select(queue.c.id).where(queue.c.name == limits.name, queue.c.cluster_id == cluster_id)
            ).scalar_one()
        )

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
            tr_id = inserted_id(
                s,
                TASK_RESOURCES.insert().values(
                    queue_id=self.queue_id(s, cluster_id, queue),
                    task_resources_type_id=str(resources_type),
                    requested_resources=json.dumps(resources.to_dict(), sort_keys=True),
                ),
            )
            transition(s, states.TASK_FSM, TASK, task_ids, TS.QUEUED)
            for chunk in chunks(list(task_ids)):
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
                        "status": TIS.QUEUED,
                        "status_date": now,
                    }
                    for step, t in enumerate(task_ids)
                ],
            )
            newest: dict[int, int] = {}
            for chunk in chunks(list(task_ids)):
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
            transition_task_instances(s, ti_ids, TIS.INSTANTIATED)
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

    def queue_array_batch(
        self,
        workflow_run_id: int,
        cluster_id: int,
        task_ids: Sequence[int],
        resources: Resources,
        resources_type: str,
        queue: QueueLimits,
        *,
        array_id: int,
        batch_num: int,
        token_hash: str,
        try_number: int | None = None,
    ) -> list[tuple[int, int]]:
        """One array batch queued and instantiated in one transaction: tasks G/A → Q → I (attempt counted), one new
        instance each, created instantiated (I) with the batch's shared token hash. Q is never seen outside the
        transaction (Jobmon's distributor instantiates right after queueing too), so it is not written row by row:
        a constant number of statements per 1,000 tasks, and the instances are made by the database from the task
        rows (INSERT … SELECT, array step = rank of the task id), not sent row by row. Returns (instance id, task
        id) by array step: element i runs the (i-1)-th."""
        now = utcnow()
        ordered = sorted(set(task_ids))
        with self.session() as s:
            tr_id = inserted_id(
                s,
                TASK_RESOURCES.insert().values(
                    queue_id=self.queue_id(s, cluster_id, queue),
                    task_resources_type_id=str(resources_type),
                    requested_resources=json.dumps(resources.to_dict(), sort_keys=True),
                ),
            )
            attempt = {"num_attempts": TASK.c.num_attempts + 1, "task_resources_id": tr_id}
            # G/A → Q → I in one write per task (Q is what the state machine checks, I what is written).
            queued = set(transition(s, states.TASK_FSM, TASK, ordered, TS.QUEUED, attempt, then=TS.INSTANTIATING))
            for chunk in chunks([t for t in ordered if t not in queued]):  # already Q: counted, instantiated
                s.execute(TASK.update().where(TASK.c.id.in_(chunk)).values(**attempt))
                set_task_status(s, chunk, TS.INSTANTIATING, only_from=[TS.QUEUED])
            constants = {
                TI.c.workflow_run_id: sa.literal(workflow_run_id, sa.Integer),
                TI.c.array_id: sa.literal(array_id, sa.Integer),
                TI.c.cluster_id: sa.literal(cluster_id, sa.Integer),
                TI.c.task_resources_id: sa.literal(tr_id, sa.Integer),
                TI.c.array_batch_num: sa.literal(batch_num, sa.Integer),
                TI.c.try_number: sa.literal(try_number, sa.Integer),
                TI.c.status: sa.literal(str(TIS.INSTANTIATED), sa.String),
                TI.c.status_date: sa.literal(now, sa.DateTime),
                TI.c.token_hash: sa.literal(token_hash, sa.String),
            }
            offset = 0
            for chunk in chunks(ordered):
                step = sa.func.row_number().over(order_by=TASK.c.id) + (offset - 1)
                columns: list[Any] = [*constants.values(), TASK.c.id, step]
                rows = sa.select(*columns).where(TASK.c.id.in_(chunk))
                s.execute(TI.insert().from_select([*constants, TI.c.task_id, TI.c.array_step_id], rows))
                offset += len(chunk)
            created = s.execute(
                sa.select(TI.c.id, TI.c.task_id)
                .where(TI.c.array_id == array_id, TI.c.array_batch_num == batch_num)
                .order_by(TI.c.array_step_id)
            ).all()
            return [(r.id, r.task_id) for r in created]

    def log_array_distributor_ids(
        self,
        array_id: int,
        batch_num: int,
        job_id: str,
        stdout_prefix: str,
        stderr_prefix: str,
        exit_record_dir: str,
    ) -> None:
        """I→O for one array batch submitted as job ``job_id``: element i (step i-1) is ``<job_id>.<i>``, its logs
        ``<prefix><i>``, its exit record ``<dir>/ti-<id>.exit.json``. Set-based, right after the one qsub: three
        UPDATEs, no row read. An instance no longer in I (a kill came first) still gets its job id and paths, so
        that its job can be deleted and its evidence read."""
        batch = (TI.c.array_id == array_id) & (TI.c.array_batch_num == batch_num)
        element = sa.cast(TI.c.array_step_id + 1, sa.String)
        now = utcnow()
        values = {
            "distributor_id": sa.literal(f"{job_id}.") + element,
            "stdout": sa.literal(stdout_prefix) + element,
            "stderr": sa.literal(stderr_prefix) + element,
            "exit_record": sa.literal(f"{exit_record_dir}/ti-") + sa.cast(TI.c.id, sa.String) + ".exit.json",
            "submitted_date": now,
        }
        with self.session() as s:
            # From I only (a legal I → O): the status condition is the state machine's check, row by row in SQL.
            launched = updated_rows(
                s,
                TI.update()
                .where(batch, TI.c.status == TIS.INSTANTIATED)
                .values(status=TIS.LAUNCHED, status_date=now, report_by_date=now + LAUNCHED_REPORT_BY, **values),
            )
            telemetry.count_transitions(s, states.TASK_INSTANCE_FSM.name, TIS.LAUNCHED, launched)
            s.execute(TI.update().where(batch, TI.c.distributor_id.is_(None)).values(**values))
            # The batch's instances are their tasks' newest (created just now): the tasks follow I → O directly.
            s.execute(
                TASK.update()
                .where(
                    TASK.c.id == TI.c.task_id,
                    batch,
                    TI.c.status == TIS.LAUNCHED,
                    TASK.c.status.in_(sorted(states.TASK_FSM.sources(TS.LAUNCHED))),
                )
                .values({TASK.c.status: TS.LAUNCHED, TASK.c.status_date: now})
            )

    def log_distributor_ids(
        self, distributor_ids: Mapping[int, str], log_paths: Mapping[int, Mapping[str, str]] | None = None
    ) -> None:
        """I→O with the cluster job id (and the job's stdout/stderr paths), right after submission.

        A short job can end before this is written (the warm local launcher runs ``true`` in milliseconds, and its
        worker's one report takes the instance I → R → D): such an instance keeps the status its worker gave it and
        gets its job id all the same; only instances still in I move to O."""
        now = utcnow()
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
            current = {
                r.id: r.status
                for chunk in chunks(list(distributor_ids))
                for r in s.execute(sa.select(TI.c.id, TI.c.status).where(TI.c.id.in_(chunk)).with_for_update())
            }
            if missing := set(distributor_ids) - set(current):
                raise NotFound(f"task_instance: no row with id {sorted(missing)[:10]}")
            waiting = [i for i, status in current.items() if status == TIS.INSTANTIATED]
            transition_task_instances(s, waiting, TIS.LAUNCHED, {"report_by_date": now + LAUNCHED_REPORT_BY})

    def log_no_distributor_id(self, ti_ids: Sequence[int], message: str) -> None:
        """I→W: the submission was refused; the task may retry."""
        with self.session() as s:
            changed = transition_task_instances(s, ti_ids, TIS.NO_DISTRIBUTOR_ID)
            log_errors(s, changed, message)

    # -- kills -----------------------------------------------------------------------------------------------------
    def request_kill(self, ti_ids: Sequence[int], message: str = "killed by user") -> list[int]:
        """Q/I/O/R → K (KILL_SELF). A worker that still runs sees K in its next heartbeat reply and stops (K→F);
        one that finishes first reports K→D. The caller deletes the jobs, then calls :meth:`end_killed`."""
        with self.session() as s:
            live = [
                r.id
                for chunk in chunks(list(ti_ids))
                for r in s.execute(
                    sa.select(TI.c.id).where(TI.c.id.in_(chunk), TI.c.status.in_(KILLABLE)).with_for_update()
                )
            ]
            changed = transition(s, states.TASK_INSTANCE_FSM, TI, live, TIS.KILL_SELF)
            log_errors(s, changed, message)
            return changed

    def end_killed(self, ti_ids: Sequence[int]) -> None:
        """After the jobs were deleted nobody reports: tasks of instances still in K fail without retry (E→F).

        Through legal TASK_FSM steps only, as an instance's own K → F moves its task: a task killed before it was
        ever submitted (Q) takes Q → I first, then I/O/R → E → F. Set-based: three statements per 1,000 tasks.
        Only a task's newest instance decides: a late call for a superseded attempt leaves the new one alone."""
        later = TI.alias("later")
        with self.session() as s:
            task_ids = [
                r.task_id
                for chunk in chunks(list(ti_ids))
                for r in s.execute(
                    sa.select(TI.c.task_id).where(
                        TI.c.id.in_(chunk),
                        TI.c.status == TIS.KILL_SELF,
                        ~sa.exists().where(later.c.task_id == TI.c.task_id, later.c.id > TI.c.id),
                    )
                )
            ]
            set_task_status(s, task_ids, TS.INSTANTIATING, only_from=[TS.QUEUED])
            for step in (TS.ERROR_RECOVERABLE, TS.ERROR_FATAL):
                set_task_status(s, task_ids, step, only_from=states.TASK_FSM.sources(step))

    # -- outcomes and liveness -----------------------------------------------------------------------------------
    def apply_outcome(
        self,
        ti_id: int,
        status: str,
        *,
        exit_status: int | None = None,
        message: str = "",
        nodename: str | None = None,
        usage: Usage | None = None,
    ) -> str:
        """Record an outcome learnt without the worker's report (exit record, cluster accounting).

        An instance that never reported running, or is triaging, passes through R for D/E (O→R→D, T→R→E); Z, U
        and F are legal from O and T; a lost launched instance goes X→E.
        Returns the instance's status afterwards.
        """
        with self.session() as s:
            current = status_of(s, ti_id)
            if current in (TIS.INSTANTIATED, TIS.LAUNCHED, TIS.TRIAGING) and status in (TIS.DONE, TIS.ERROR):
                # It ran (or, triaging, it was running) and ended without reporting: pass through R, as a late
                # report from the worker would.
                transition_task_instances(s, [ti_id], TIS.RUNNING, {"nodename": nodename} if nodename else None)
            if status == TIS.NO_HEARTBEAT:
                transition_task_instances(s, [ti_id], TIS.NO_HEARTBEAT)
                status = TIS.ERROR  # Jobmon's no_heartbeat_error: X → E, retryable
            finish_instance(s, ti_id, status, exit_status, message, nodename, usage)
            return status_of(s, ti_id)

    def log_launched_report_by(self, ti_ids: Sequence[int]) -> None:
        """Push the deadline of launched instances whose jobs the cluster still lists (queued is not lost)."""
        deadline = utcnow() + LAUNCHED_REPORT_BY
        with self.session() as s:
            for chunk in chunks(list(ti_ids)):
                s.execute(
                    TI.update().where(TI.c.id.in_(chunk), TI.c.status == TIS.LAUNCHED).values(report_by_date=deadline)
                )

    def set_status_for_triaging(
        self, workflow_run_ids: Collection[int] | None = None, exclude: Collection[int] = ()
    ) -> tuple[list[int], list[int]]:
        """Overdue instances: R → T (triage from accounting), O → X (never reported running). Set-based.

        ``exclude``: instances whose job left evidence of its end (exit record, accounting): they are concluded
        from it, not triaged for a missing heartbeat."""
        now = utcnow()
        skip = set(exclude)
        out: list[list[int]] = []
        with self.session() as s:
            for old, new in ((TIS.RUNNING, TIS.TRIAGING), (TIS.LAUNCHED, TIS.NO_HEARTBEAT)):
                q = sa.select(TI.c.id).where(TI.c.status == old, TI.c.report_by_date < now)
                if workflow_run_ids is not None:
                    q = q.where(TI.c.workflow_run_id.in_(workflow_run_ids))
                overdue = [i for i in s.execute(q).scalars() if i not in skip]
                out.append(transition_task_instances(s, overdue, new))
        return out[0], out[1]

    def log_workflow_run_heartbeats(self, wfr_ids: Iterable[int]) -> None:
        """Push the report-by deadline of alive runs (one statement per 1,000)."""
        ids = sorted(set(wfr_ids))
        if not ids:
            return
        deadline = utcnow() + timedelta(seconds=WORKFLOW_RUN_HEARTBEAT_INTERVAL * REPORT_BY_BUFFER)
        with self.session() as s:
            for chunk in chunks(ids):
                s.execute(
                    WFR.update()
                    .where(WFR.c.id.in_(chunk), WFR.c.status.in_(states.WORKFLOW_RUN_ALIVE))
                    .values(heartbeat_date=deadline)
                )
