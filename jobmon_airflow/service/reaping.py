"""The workflow reaper's reads and writes (Jobmon's ``workflow_reaper`` and its server routes), set-based.

What the reaper looks at: live task instances with their Airflow identity (orphan candidates), workflow runs whose
heartbeat expired (lost-run candidates, Jobmon's ``/lost_workflow_run``), and failed workflows whose tasks are all
done (Jobmon's ``fix_status_inconsistency``, scanned in id windows). What it writes goes through the state machines
(:func:`~jobmon_airflow.service.core.transition`), and every change leaves a row saying why: an error-log row for an
instance, a ``workflow_run_note`` for a run or workflow. No cluster I/O and no Airflow here: what Airflow and the
cluster said is passed in (``execution.reaping`` and the reaper's sensors ask them).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobmon_airflow import models, states
from jobmon_airflow.service.core import (
    TASK,
    TI,
    TIS,
    TS,
    WF,
    WFR,
    WFRS,
    WFS,
    Store,
    chunks,
    log_errors,
    table,
    transition,
    transition_task_instances,
    utcnow,
)
from jobmon_airflow.service.reaping_types import (
    LiveInstance,
    OrphanCandidate,
    ReapedRun,
    RunCandidate,
    RunDecision,
    RunFate,
    iso_or_none,
)

__all__ = [
    "HALTED",
    "ORPHAN_STATUSES",
    "LiveInstance",
    "OrphanCandidate",
    "ReapedRun",
    "Reaping",
    "RunCandidate",
    "RunDecision",
    "RunFate",
]
log = logging.getLogger(__name__)

CLUSTER = table(models.Cluster)
CLUSTER_TYPE = table(models.ClusterType)
NOTE = table(models.WorkflowRunNote)
SOURCE = "reaper"
PAGE = 10_000  # candidates per query (keyset pages by id)
NOTE_MAX = 2000  # workflow_run_note.description

#: Instances whose job may be queued or running, or whose end nobody has recorded (K: a kill nobody closed).
ORPHAN_STATUSES = (
    TIS.QUEUED,
    TIS.INSTANTIATED,
    TIS.LAUNCHED,
    TIS.RUNNING,
    TIS.TRIAGING,
    TIS.NO_HEARTBEAT,
    TIS.KILL_SELF,
)
#: Instances a halted run must see ended before it terminates (Jobmon: "If K TIs remain, return and wait").
LIVE_STATUSES = ORPHAN_STATUSES
HALTED = (WFRS.COLD_RESUME, WFRS.HOT_RESUME)
#: Lost runs Jobmon's reaper looks at: L (_aborted_state), R (_error_state), C/H (_halted_state); B, I, O never.
REAPED_RUN_STATUSES = (WFRS.LINKING, WFRS.RUNNING, *HALTED)
#: The workflow's legal way from F back to D (F→G is Jobmon's resume, then its start-up): Jobmon's
#: fix_status_inconsistency writes F→D directly; here every step is a transition the state machine allows.
_FIX_PATH = (WFS.REGISTERING, WFS.QUEUED, WFS.INSTANTIATING, WFS.LAUNCHED, WFS.RUNNING, WFS.DONE)


class Reaping(Store):
    """The reaper's queries and writes on one state database."""

    # -- orphan candidates --------------------------------------------------------------------------------------
    def orphan_candidates(
        self, min_age: timedelta = timedelta(seconds=60), limit: int = 100_000
    ) -> list[OrphanCandidate]:
        """Live instances not changed for ``min_age`` (an operator mid-submission is left alone), with their
        Airflow identity; keyset pages of :data:`PAGE` by id, at most ``limit`` (the rest next pass)."""
        cutoff = utcnow() - min_age
        out: list[OrphanCandidate] = []
        after = 0
        with self.engine.connect() as conn:
            while len(out) < limit:
                rows = conn.execute(
                    sa.select(
                        TI.c.id,
                        TI.c.task_id,
                        TI.c.workflow_run_id,
                        TI.c.status,
                        TI.c.distributor_id,
                        TI.c.try_number,
                        CLUSTER.c.name.label("cluster"),
                        WF.c.dag_id,
                        WF.c.run_id,
                        TASK.c.airflow_task_id,
                        TASK.c.map_index,
                    )
                    .join(TASK, TASK.c.id == TI.c.task_id)
                    .join(WF, WF.c.id == TASK.c.workflow_id)
                    .join(CLUSTER, CLUSTER.c.id == TI.c.cluster_id)
                    .where(TI.c.status.in_(ORPHAN_STATUSES), TI.c.status_date <= cutoff, TI.c.id > after)
                    .order_by(TI.c.id)
                    .limit(min(PAGE, limit - len(out)))
                ).all()
                out.extend(
                    OrphanCandidate(
                        r.id,
                        r.task_id,
                        r.workflow_run_id,
                        r.status,
                        r.distributor_id,
                        r.cluster,
                        r.dag_id,
                        r.run_id,
                        r.airflow_task_id,
                        r.map_index,
                        r.try_number,
                    )
                    for r in rows
                )
                if len(rows) < PAGE:
                    break
                after = rows[-1].id
        return out

    def live_instances(
        self, workflow_run_ids: Collection[int] | None = None, with_job: bool = False, limit: int = 100_000
    ) -> list[LiveInstance]:
        """Live instances (of some runs, or all of them; ``with_job``: only those holding a cluster job id)."""
        statuses = [s for s in LIVE_STATUSES if not with_job or s not in (TIS.QUEUED,)]
        q = (
            sa.select(TI.c.id, TI.c.workflow_run_id, TI.c.status, TI.c.distributor_id, CLUSTER.c.name)
            .join(CLUSTER, CLUSTER.c.id == TI.c.cluster_id)
            .where(TI.c.status.in_(statuses))
        )
        if with_job:
            q = q.where(TI.c.distributor_id.is_not(None))
        out: list[LiveInstance] = []
        with self.engine.connect() as conn:
            run_chunks: Iterable[Sequence[int] | None] = (
                chunks(sorted(workflow_run_ids)) if workflow_run_ids is not None else [None]
            )
            for chunk in run_chunks:
                after = 0
                while len(out) < limit:
                    page = q.where(TI.c.id > after)
                    if chunk is not None:
                        page = page.where(TI.c.workflow_run_id.in_(chunk))
                    rows = conn.execute(page.order_by(TI.c.id).limit(PAGE)).all()
                    out.extend(LiveInstance(r.id, r.workflow_run_id, r.status, r.distributor_id, r.name) for r in rows)
                    if len(rows) < PAGE:
                        break
                    after = rows[-1].id
        return out[:limit]

    def cluster_types(self) -> dict[str, str]:
        """{cluster name: its type (local, gridengine)}: what to build a cluster from is its type, not its name."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(CLUSTER.c.name, CLUSTER_TYPE.c.name).join(
                    CLUSTER_TYPE, CLUSTER_TYPE.c.id == CLUSTER.c.cluster_type_id
                )
            ).all()
        return {name: kind for name, kind in rows}

    def instance_facts(self, ti_ids: Iterable[int]) -> dict[int, tuple[str, datetime | None]]:
        """{instance id: (its cluster's name, the deadline it should have been heard from by)}: the report-by
        date, else its last status change."""
        out: dict[int, tuple[str, datetime | None]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(set(ti_ids))):
                for r in conn.execute(
                    sa.select(TI.c.id, CLUSTER.c.name, sa.func.coalesce(TI.c.report_by_date, TI.c.status_date))
                    .join(CLUSTER, CLUSTER.c.id == TI.c.cluster_id)
                    .where(TI.c.id.in_(chunk))
                ):
                    out[r[0]] = (r[1], r[2])
        return out

    # -- instance writes the trigger does not make -------------------------------------------------------------
    def mark_overdue(self, ti_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Of these instances, the overdue ones: R → T (triage), O → X (never reported running); as the swarm's
        ``set_status_for_triaging`` does for a run, here for instances nobody watches any more."""
        now = utcnow()
        out: list[list[int]] = []
        with self.session() as s:
            for old, new in ((TIS.RUNNING, TIS.TRIAGING), (TIS.LAUNCHED, TIS.NO_HEARTBEAT)):
                overdue = [
                    i
                    for chunk in chunks(sorted(set(ti_ids)))
                    for i in s.execute(
                        sa.select(TI.c.id).where(TI.c.id.in_(chunk), TI.c.status == old, TI.c.report_by_date < now)
                    ).scalars()
                ]
                changed = transition_task_instances(s, overdue, new)
                log_errors(s, changed, f"Reaper: heartbeat overdue, {old} → {new}")
                out.append(changed)
        return out[0], out[1]

    def close_killed(self, ti_ids: Sequence[int], message: str) -> list[int]:
        """K → F for instances whose job is gone: nobody is left to report (Jobmon's worker logs it after the kill).
        Q/I instances (never submitted) take Q/I → K first: Jobmon's "no worker to clean up"."""
        with self.session() as s:
            never_ran = [
                i
                for chunk in chunks(sorted(set(ti_ids)))
                for i in s.execute(
                    sa.select(TI.c.id).where(TI.c.id.in_(chunk), TI.c.status.in_((TIS.QUEUED, TIS.INSTANTIATED)))
                ).scalars()
            ]
            transition_task_instances(s, never_ran, TIS.KILL_SELF)
            killed = [
                i
                for chunk in chunks(sorted(set(ti_ids)))
                for i in s.execute(
                    sa.select(TI.c.id).where(TI.c.id.in_(chunk), TI.c.status == TIS.KILL_SELF).with_for_update()
                ).scalars()
            ]
            changed = transition_task_instances(s, killed, TIS.ERROR_FATAL)
            log_errors(s, changed, message)
            return changed

    def log(self, ti_ids: Sequence[int], message: str) -> None:
        """An error-log row for instances the reaper concluded (an outcome whose own write logs nothing: D)."""
        with self.session() as s:
            log_errors(s, list(ti_ids), message)

    # -- lost runs ------------------------------------------------------------------------------------------------
    def lost_run_candidates(self, limit: int = 10_000) -> list[RunCandidate]:
        """Runs in L, R, C or H whose heartbeat deadline passed (the (status, heartbeat_date) index), oldest first."""
        now = utcnow()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(WFR.c.id, WFR.c.workflow_id, WFR.c.status, WFR.c.heartbeat_date, WF.c.dag_id, WF.c.run_id)
                .join(WF, WF.c.id == WFR.c.workflow_id)
                .where(WFR.c.status.in_(REAPED_RUN_STATUSES), WFR.c.heartbeat_date <= now)
                .order_by(WFR.c.id)
                .limit(limit)
            ).all()
        return [
            RunCandidate(r.id, r.workflow_id, r.status, r.dag_id, r.run_id, iso_or_none(r.heartbeat_date)) for r in rows
        ]

    def reap_runs(self, decisions: Sequence[RunDecision]) -> list[ReapedRun]:
        """Lost runs to Jobmon's end states: linking → A (``_aborted_state``); DAG run failed → E, workflow F
        (``_error_state``); succeeded → D when every task is done, else E; gone → C (a cold halt: the halted-run
        clean-up kills its jobs, then terminates it). The heartbeat is checked again under the row lock, as
        Jobmon's ``/reap`` does: a run that came back to life is left alone. Set-based: one pass per target."""
        by_run = {d.workflow_run_id: d for d in decisions}
        if not by_run:
            return []
        now = utcnow()
        targets: dict[str, list[int]] = defaultdict(list)
        with self.session() as s:
            rows = {
                r.id: r
                for chunk in chunks(sorted(by_run))
                for r in s.execute(
                    sa.select(WFR.c.id, WFR.c.status, WFR.c.workflow_id)
                    .where(WFR.c.id.in_(chunk), WFR.c.heartbeat_date <= now)
                    .with_for_update()
                )
            }
            succeeded = [i for i, r in rows.items() if by_run[i].fate == RunFate.SUCCEEDED]
            unfinished = self._workflows_with_unfinished_tasks(s, {rows[i].workflow_id for i in succeeded})
            for run_id, r in rows.items():
                fate = by_run[run_id].fate
                if r.status == WFRS.LINKING:
                    targets[WFRS.ABORTED].append(run_id)
                elif r.status == WFRS.RUNNING:
                    if fate == RunFate.GONE:
                        targets[WFRS.COLD_RESUME].append(run_id)
                    elif fate == RunFate.SUCCEEDED and r.workflow_id not in unfinished:
                        targets[WFRS.DONE].append(run_id)
                    else:
                        targets[WFRS.ERROR].append(run_id)
            reaped: list[ReapedRun] = []
            for target, ids in targets.items():
                reasons = {i: by_run[i].reason for i in ids}
                reaped.extend(self._move_runs(s, ids, target, reasons))
        return reaped

    @staticmethod
    def _workflows_with_unfinished_tasks(s: Session, workflow_ids: Collection[int]) -> set[int]:
        return {
            w
            for chunk in chunks(sorted(workflow_ids))
            for w in s.execute(
                sa.select(TASK.c.workflow_id).where(TASK.c.workflow_id.in_(chunk), TASK.c.status != TS.DONE).distinct()
            ).scalars()
        }

    def _move_runs(self, s: Session, run_ids: Sequence[int], new: str, reasons: Mapping[int, str]) -> list[ReapedRun]:
        """Runs → ``new`` and their workflows after them (Jobmon's ``WorkflowRun.transition``), a note each."""
        before = self._run_rows(s, run_ids)
        changed = transition(s, states.WORKFLOW_RUN_FSM, WFR, run_ids, new)
        if not changed:
            return []
        follows = states.WORKFLOW_FOLLOWS_RUN.get(new)
        if follows is not None:
            transition(s, states.WORKFLOW_FSM, WF, sorted({before[i].workflow_id for i in changed}), follows)
        after = self._run_rows(s, changed)
        reaped = [
            ReapedRun(
                workflow_id=before[i].workflow_id,
                workflow_name=before[i].name,
                workflow_args=before[i].workflow_args,
                workflow_run_id=i,
                old_run_status=before[i].status,
                new_run_status=after[i].status,
                old_workflow_status=before[i].wf_status,
                new_workflow_status=after[i].wf_status,
                reason=reasons[i],
            )
            for i in changed
        ]
        self._notes(s, [(r.workflow_run_id, r.old_run_status, r.new_run_status, r.reason) for r in reaped])
        return reaped

    @staticmethod
    def _run_rows(s: Session, run_ids: Sequence[int]) -> dict[int, Any]:
        return {
            r.id: r
            for chunk in chunks(sorted(set(run_ids)))
            for r in s.execute(
                sa.select(
                    WFR.c.id,
                    WFR.c.status,
                    WFR.c.workflow_id,
                    WF.c.name,
                    WF.c.workflow_args,
                    WF.c.status.label("wf_status"),
                )
                .join(WF, WF.c.id == WFR.c.workflow_id)
                .where(WFR.c.id.in_(chunk))
            )
        }

    @staticmethod
    def _notes(s: Session, notes: Sequence[tuple[int, str, str, str]]) -> None:
        if notes:
            now = utcnow()
            s.execute(
                NOTE.insert(),
                [
                    {
                        "workflow_run_id": run_id,
                        "note_date": now,
                        "old_status": old,
                        "new_status": new,
                        "source": SOURCE,
                        "description": f"Reaper: {why}"[:NOTE_MAX],
                    }
                    for run_id, old, new, why in notes
                ],
            )

    # -- halted runs ----------------------------------------------------------------------------------------------
    def halted_runs(self, limit: int = 10_000) -> dict[int, str]:
        """Lost runs in C or H (cold / hot resume): {run id: status}; the clean-up kills or waits for their
        instances first (``execution.reaping``), then :meth:`terminate_halted`."""
        now = utcnow()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(WFR.c.id, WFR.c.status)
                .where(WFR.c.status.in_(HALTED), WFR.c.heartbeat_date <= now)
                .order_by(WFR.c.id)
                .limit(limit)
            ).all()
        return {r.id: r.status for r in rows}

    def terminate_halted(self, run_ids: Collection[int]) -> list[ReapedRun]:
        """C/H → T (workflow H) for the runs with no live instance left; the others wait (Jobmon's
        ``_halted_state``: "If K TIs remain, return and wait")."""
        if not run_ids:
            return []
        with self.session() as s:
            busy = {
                r
                for chunk in chunks(sorted(run_ids))
                for r in s.execute(
                    sa.select(TI.c.workflow_run_id)
                    .where(TI.c.workflow_run_id.in_(chunk), TI.c.status.in_(LIVE_STATUSES))
                    .distinct()
                ).scalars()
            }
            done = [i for i in run_ids if i not in busy]
            reasons = {i: "halted run has no live task instance left: terminated" for i in done}
            return self._move_runs(s, done, WFRS.TERMINATED, reasons)

    # -- for JobmonWorkflowSensor ----------------------------------------------------------------------------------
    def workflow_state(
        self, workflow_id: int | None = None, dag_id: str | None = None, run_id: str | None = None
    ) -> tuple[int, str] | None:
        """(id, status) of a workflow by id, or the newest one of a DAG run; None when there is none (yet)."""
        q = sa.select(WF.c.id, WF.c.status)
        if workflow_id is not None:
            q = q.where(WF.c.id == workflow_id)
        else:
            q = q.where(WF.c.dag_id == dag_id, WF.c.run_id == run_id).order_by(WF.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return (int(row[0]), str(row[1])) if row is not None else None

    # -- the F/D fix ----------------------------------------------------------------------------------------------
    def max_workflow_id(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(WF.c.id))).scalar() or 0)

    def fix_status_inconsistency(self, start_id: int, step: int = 100) -> tuple[list[ReapedRun], int]:
        """Workflows with id in (start_id, start_id + step] in F whose tasks are all D → D (Jobmon's
        ``fix_status_inconsistency``). One short transaction per window; returns the fixed workflows and the
        next start (0 after the last window: Jobmon wraps around)."""
        end = start_id + step
        with self.session() as s:
            not_done = sa.exists().where(TASK.c.workflow_id == WF.c.id, TASK.c.status != TS.DONE)
            has_tasks = sa.exists().where(TASK.c.workflow_id == WF.c.id)
            ids = list(
                s.execute(
                    sa.select(WF.c.id)
                    .where(WF.c.id > start_id, WF.c.id <= end, WF.c.status == WFS.FAILED, has_tasks, ~not_done)
                    .with_for_update()
                ).scalars()
            )
            fixed: list[ReapedRun] = []
            if ids:
                newest = {
                    r.workflow_id: r
                    for r in s.execute(
                        sa.select(WFR.c.workflow_id, WFR.c.id, WFR.c.status, WF.c.name, WF.c.workflow_args)
                        .join(WF, WF.c.id == WFR.c.workflow_id)
                        .where(
                            WFR.c.id.in_(
                                sa.select(sa.func.max(WFR.c.id))
                                .where(WFR.c.workflow_id.in_(ids))
                                .group_by(WFR.c.workflow_id)
                            )
                        )
                    )
                }
                moving = list(ids)
                for step_status in _FIX_PATH:
                    moving = transition(s, states.WORKFLOW_FSM, WF, moving, step_status)
                why = "workflow FAILED but every task DONE: workflow F → D (Jobmon's fix_status_inconsistency)"
                for wf_id in moving:
                    run = newest.get(wf_id)
                    fixed.append(
                        ReapedRun(
                            wf_id,
                            run.name if run else "",
                            run.workflow_args if run else "",
                            run.id if run else 0,
                            run.status if run else "",
                            run.status if run else "",
                            WFS.FAILED,
                            WFS.DONE,
                            why,
                        )
                    )
                self._notes(s, [(r.workflow_run_id, WFS.FAILED, WFS.DONE, why) for r in fixed if r.workflow_run_id])
            with_more = s.execute(sa.select(WF.c.id).where(WF.c.id > end).limit(1)).scalar()
        return fixed, end if with_more is not None else 0

    def fix_all_status_inconsistencies(self, step: int = 1000) -> list[ReapedRun]:
        """One sweep over every workflow in windows of ``step`` ids (each window its own short transaction)."""
        fixed: list[ReapedRun] = []
        start = 0
        while True:
            window, start = self.fix_status_inconsistency(start, step)
            fixed.extend(window)
            if start == 0:
                return fixed
