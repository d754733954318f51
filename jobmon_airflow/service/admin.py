"""The CLI's writes, as Jobmon's (``workflow concurrency``, ``workflow reset``, ``task update``): owner checks,
bounds, set-based statements in one transaction each.

``workflow reset`` and ``task update`` are Jobmon's deliberate ways around the task state machine (``Task.reset``,
``/task/update_statuses``): a user says what a task's state is. They stay inside it where it matters: a task whose
job may still be in the cluster (a live instance) is refused, so a manual status never races a running job, and
tasks go to G with their attempts cleared, as Jobmon's reset does. Task dependencies are the Airflow DAG's: the
caller (the CLI, which reads the DAG through Airflow) passes the downstream tasks of ``-s G``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from jobmon_airflow import models, states
from jobmon_airflow.service.core import (
    TASK,
    TI,
    WF,
    WFR,
    NotFound,
    Store,
    Unauthorized,
    chunks,
    table,
    updated_rows,
    utcnow,
)

ARRAY = table(models.Array)
TS = states.TaskStatus
WFS = states.WorkflowStatus

#: Jobmon's bound on ``task update`` (``/task/update_statuses``).
MAX_TASK_UPDATE = 10_000
MAX_CONCURRENCY = 1_000_000
#: The last run's statuses that let a workflow be reset (Jobmon: the last run in E; here also S, T and D, as a
#: finished Airflow DAG run may be re-run from scratch).
RESETTABLE_RUN_STATUSES = frozenset("ESTD")


class NotAllowed(PermissionError):
    """The request is well-formed but the workflow's state forbids it (a live run, a running job)."""


@dataclass(frozen=True)
class TaskUpdate:
    status: str
    updated: tuple[int, ...]  # tasks that changed (the requested ones, and for G their downstream tasks)
    unchanged: tuple[int, ...]  # already in that status


class Admin(Store):
    """Writes a workflow's owner may make from the command line."""

    def owner(self, workflow_id: int) -> str | None:
        """Who runs a workflow: the user of its newest run that has one (Jobmon's ``workflow_run.user``)."""
        with self.engine.connect() as conn:
            if conn.execute(sa.select(WF.c.id).where(WF.c.id == workflow_id)).scalar() is None:
                raise NotFound(f"workflow {workflow_id}")
            user = conn.execute(
                sa.select(WFR.c.user)
                .where(WFR.c.workflow_id == workflow_id, WFR.c.user.is_not(None))
                .order_by(WFR.c.id.desc())
                .limit(1)
            ).scalar()
        return None if user is None else str(user)

    def check_owner(self, workflow_id: int, user: str) -> None:
        owner = self.owner(workflow_id)
        if owner != user:
            raise Unauthorized(
                f"workflow {workflow_id} belongs to {owner or 'no recorded user'}; only its owner may change it "
                f"(you are {user})"
            )

    def set_concurrency(self, workflow_id: int, limit: int, *, user: str, array: str | None = None) -> list[str]:
        """Jobmon's ``workflow concurrency``: the workflow's max_concurrently_running and its arrays' (or one
        array's, by name). Array operators read it every round. Returns the arrays changed."""
        if not 1 <= limit <= MAX_CONCURRENCY:
            raise ValueError(f"max_concurrently_running: expected 1 to {MAX_CONCURRENCY}, got {limit}")
        self.check_owner(workflow_id, user)
        with self.session() as s:
            arrays = sa.select(ARRAY.c.name).where(ARRAY.c.workflow_id == workflow_id)
            if array is not None:
                arrays = arrays.where(ARRAY.c.name == array)
            names = list(s.execute(arrays).scalars())
            if array is not None and not names:
                raise NotFound(f"array {array!r} in workflow {workflow_id}")
            if array is None:
                s.execute(WF.update().where(WF.c.id == workflow_id).values(max_concurrently_running=limit))
            if names:
                s.execute(
                    ARRAY.update()
                    .where(ARRAY.c.workflow_id == workflow_id, ARRAY.c.name.in_(names))
                    .values(max_concurrently_running=limit)
                )
            return names

    def reset_workflow(self, workflow_id: int, *, user: str, partial: bool = False) -> int:
        """Jobmon's ``workflow reset [-p]``: owner only, no alive run, the last run ended (E, S, T or D); the
        workflow → G (bypassing its FSM, as Jobmon does) and its tasks → G with no attempts used (``partial``:
        done tasks are kept). Returns how many tasks were reset."""
        self.check_owner(workflow_id, user)
        with self.session() as s:
            s.execute(sa.select(WF.c.id).where(WF.c.id == workflow_id).with_for_update())
            last = s.execute(
                sa.select(WFR.c.id, WFR.c.status)
                .where(WFR.c.workflow_id == workflow_id)
                .order_by(WFR.c.id.desc())
                .limit(1)
            ).one_or_none()
            if last is not None and last.status not in RESETTABLE_RUN_STATUSES:
                raise NotAllowed(
                    f"workflow {workflow_id}: its last run {last.id} is {states.WorkflowRunStatus(last.status).name}"
                    f"; reset needs a run that ended (ERROR, STOPPED, TERMINATED or DONE)"
                )
            # Jobmon leaves G tasks alone; here they get their attempts back too, so each has max_attempts again.
            keep = [TS.DONE] if partial else []
            now = utcnow()
            count = updated_rows(
                s,
                TASK.update()
                .where(TASK.c.workflow_id == workflow_id, TASK.c.status.not_in(keep))
                .values(status=TS.REGISTERING, num_attempts=0, status_date=now),
            )
            s.execute(WF.update().where(WF.c.id == workflow_id).values(status=WFS.REGISTERING, status_date=now))
            return int(count)

    def update_task_statuses(
        self, workflow_id: int, task_ids: Sequence[int], status: str, *, user: str, downstream: Sequence[int] = ()
    ) -> TaskUpdate:
        """Jobmon's ``task update -s D|G``: owner only, at most MAX_TASK_UPDATE tasks (with ``downstream``, which
        for G go to G too); tasks of another workflow and tasks with a live instance are refused."""
        if status not in (TS.DONE, TS.REGISTERING):
            raise ValueError(f"status: expected D or G, got {status!r}")
        targets = sorted(set(task_ids) | (set(downstream) if status == TS.REGISTERING else set()))
        if not task_ids:
            raise ValueError("task_ids: give at least one task")
        if len(targets) > MAX_TASK_UPDATE:
            raise ValueError(f"task_ids: at most {MAX_TASK_UPDATE} tasks at once (with downstream), got {len(targets)}")
        self.check_owner(workflow_id, user)
        now = utcnow()
        with self.session() as s:
            found: dict[int, str] = {}
            live: set[int] = set()
            for chunk in chunks(targets):
                for r in s.execute(
                    sa.select(TASK.c.id, TASK.c.status)
                    .where(TASK.c.id.in_(chunk), TASK.c.workflow_id == workflow_id)
                    .with_for_update()
                ):
                    found[r.id] = r.status
                live.update(
                    s.execute(
                        sa.select(TI.c.task_id).where(
                            TI.c.task_id.in_(chunk), TI.c.status.in_(sorted(states.TASK_INSTANCE_LIVE))
                        )
                    ).scalars()
                )
            missing = [t for t in targets if t not in found]
            if missing:
                raise NotFound(f"tasks {missing[:10]} in workflow {workflow_id}")
            if live:
                raise NotAllowed(
                    f"tasks {sorted(live)[:10]} have a job that may still run; kill it or wait for it to end"
                )
            changing = [t for t in targets if found[t] != status]
            values: dict[str, object] = {"status": status, "status_date": now}
            if status == TS.REGISTERING:
                values["num_attempts"] = 0
            # G clears the attempts of every target, those already in G too: each gets its full max_attempts again.
            for chunk in chunks(targets if status == TS.REGISTERING else changing):
                s.execute(TASK.update().where(TASK.c.id.in_(chunk)).values(**values))
            return TaskUpdate(status, tuple(changing), tuple(t for t in targets if found[t] == status))
