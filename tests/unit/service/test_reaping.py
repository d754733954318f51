"""The reaper's service layer on SQLite: candidates, lost runs, halted runs, the F/D fix; every change leaves a row."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobmon_airflow import models
from jobmon_airflow.execution import JobSettings, Submission, TaskRun, WorkflowIdentity
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.service.core import utcnow
from jobmon_airflow.service.reaping import Reaping, RunDecision, RunFate
from tests.support.fakes import FakeCluster

TI = models.TaskInstance.__table__
WFR = models.WorkflowRun.__table__
WF = models.Workflow.__table__
TASK = models.Task.__table__
NOTE = models.WorkflowRunNote.__table__
LOG = models.TaskInstanceErrorLog.__table__
NOW = timedelta(0)


@pytest.fixture
def reaping(services: Services) -> Reaping:
    return Reaping(services.engine)


def submit(services: Services, tmp_path: Path, run_id: str, task_id: str, map_index: int = -1) -> Submission:
    run = TaskRun(services, FakeCluster(), JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"))
    spec = TaskSpec(task_id, f"{task_id}[{map_index}]", "echo hi", map_index=map_index, max_attempts=1)
    sub = run.start(WorkflowIdentity("dag", run_id, try_number=2), spec, Resources.parse({}))
    assert isinstance(sub, Submission)
    return sub


def expire_heartbeats(services: Services) -> None:
    with services.engine.begin() as conn:
        conn.execute(WFR.update().values(heartbeat_date=utcnow() - timedelta(seconds=1)))


def run_of(services: Services, ti_id: int) -> int:
    return services.queries.task_instance(ti_id).workflow_run_id


def statuses(services: Services, wfr_id: int) -> tuple[str, str]:
    with services.engine.connect() as conn:
        row = conn.execute(
            sa.select(WFR.c.status, WF.c.status).join(WF, WF.c.id == WFR.c.workflow_id).where(WFR.c.id == wfr_id)
        ).one()
    return row[0], row[1]


def notes(services: Services) -> list[tuple[int, str, str, str]]:
    with services.engine.connect() as conn:
        rows = conn.execute(sa.select(NOTE).order_by(NOTE.c.id)).all()
    return [(r.workflow_run_id, r.old_status, r.new_status, r.description) for r in rows]


def test_orphan_candidates_carry_the_airflow_identity_and_skip_fresh_and_ended(
    services: Services, reaping: Reaping, tmp_path: Path
) -> None:
    a = submit(services, tmp_path, "r1", "t", map_index=3)
    b = submit(services, tmp_path, "r1", "u")
    services.reports.log_running(b.task_instance_id, "node1", None, None, 60)
    services.reports.log_done(b.task_instance_id, "node1", None)
    assert reaping.orphan_candidates() == []  # changed less than a minute ago: an operator may be mid-step
    (cand,) = reaping.orphan_candidates(min_age=NOW)
    assert cand.task_instance_id == a.task_instance_id
    assert (cand.dag_id, cand.run_id, cand.airflow_task_id, cand.map_index, cand.try_number) == ("dag", "r1", "t", 3, 2)
    assert (cand.status, cand.distributor_id, cand.cluster) == ("O", a.job_id, "local")
    assert type(cand).from_dict(cand.to_dict()) == cand


def test_orphan_candidates_page_by_id(services: Services, reaping: Reaping, tmp_path: Path) -> None:
    subs = [submit(services, tmp_path, "r1", f"t{i}") for i in range(5)]
    assert [c.task_instance_id for c in reaping.orphan_candidates(min_age=NOW, limit=3)] == [
        s.task_instance_id for s in subs[:3]
    ]


def test_lost_run_candidates_are_alive_runs_past_their_heartbeat(
    services: Services, reaping: Reaping, tmp_path: Path
) -> None:
    sub = submit(services, tmp_path, "r1", "t")
    assert reaping.lost_run_candidates() == []
    expire_heartbeats(services)
    (cand,) = reaping.lost_run_candidates()
    assert (cand.workflow_run_id, cand.status, cand.dag_id, cand.run_id) == (
        run_of(services, sub.task_instance_id),
        "R",
        "dag",
        "r1",
    )


def test_failed_dag_run_errors_the_run_and_fails_the_workflow_once(
    services: Services, reaping: Reaping, tmp_path: Path
) -> None:
    wfr = run_of(services, submit(services, tmp_path, "r1", "t").task_instance_id)
    expire_heartbeats(services)
    (reaped,) = reaping.reap_runs([RunDecision(wfr, RunFate.FAILED, "DAG run failed")])
    assert (reaped.old_run_status, reaped.new_run_status) == ("R", "E")
    assert (reaped.old_workflow_status, reaped.new_workflow_status) == ("R", "F")
    assert (reaped.workflow_name, reaped.workflow_args) == ("dag r1", "r1")
    assert statuses(services, wfr) == ("E", "F")
    assert notes(services) == [(wfr, "R", "E", "Reaper: DAG run failed")]
    assert reaping.reap_runs([RunDecision(wfr, RunFate.FAILED, "again")]) == []  # no longer alive
    assert len(notes(services)) == 1


def test_succeeded_dag_run_is_done_only_when_every_task_is(
    services: Services, reaping: Reaping, tmp_path: Path
) -> None:
    done = submit(services, tmp_path, "r1", "t")
    services.reports.log_running(done.task_instance_id, "n", None, None, 60)
    services.reports.log_done(done.task_instance_id, "n", None)
    open_ = submit(services, tmp_path, "r2", "t")
    expire_heartbeats(services)
    r1, r2 = run_of(services, done.task_instance_id), run_of(services, open_.task_instance_id)
    reaped = reaping.reap_runs([RunDecision(r, RunFate.SUCCEEDED, "DAG run success") for r in (r1, r2)])
    assert {r.workflow_run_id: r.new_run_status for r in reaped} == {r1: "D", r2: "E"}
    assert statuses(services, r1) == ("D", "D") and statuses(services, r2) == ("E", "F")


def test_a_run_whose_heartbeat_came_back_is_not_reaped(services: Services, reaping: Reaping, tmp_path: Path) -> None:
    wfr = run_of(services, submit(services, tmp_path, "r1", "t").task_instance_id)
    assert reaping.reap_runs([RunDecision(wfr, RunFate.FAILED, "x")]) == []  # heartbeat still in the future
    assert statuses(services, wfr) == ("R", "R")


def test_gone_dag_run_halts_cold_and_terminates_once_no_instance_is_live(
    services: Services, reaping: Reaping, tmp_path: Path
) -> None:
    sub = submit(services, tmp_path, "r1", "t")
    wfr = run_of(services, sub.task_instance_id)
    expire_heartbeats(services)
    (reaped,) = reaping.reap_runs([RunDecision(wfr, RunFate.GONE, "DAG run no longer exists")])
    assert (reaped.new_run_status, statuses(services, wfr)) == ("C", ("C", "R"))
    assert reaping.halted_runs() == {wfr: "C"}
    assert reaping.terminate_halted([wfr]) == []  # its instance is still live: wait
    reaping.close_killed([sub.task_instance_id], "Reaper: test")  # O is not K: left alone
    assert services.queries.task_instance(sub.task_instance_id).status == "O"
    services.lifecycle.request_kill([sub.task_instance_id])
    assert reaping.close_killed([sub.task_instance_id], "Reaper: job deleted") == [sub.task_instance_id]
    (terminated,) = reaping.terminate_halted([wfr])
    assert (terminated.old_run_status, terminated.new_run_status, terminated.new_workflow_status) == ("C", "T", "H")
    assert [n[1:3] for n in notes(services)] == [("R", "C"), ("C", "T")]
    assert services.queries.error_logs(sub.task_instance_id)[-1] == "Reaper: job deleted"


def test_a_linking_run_is_aborted(services: Services, reaping: Reaping, tmp_path: Path) -> None:
    wfr = run_of(services, submit(services, tmp_path, "r1", "t").task_instance_id)
    with services.engine.begin() as conn:  # Jobmon's lost-while-linking run (here binding passes L at once)
        conn.execute(WFR.update().where(WFR.c.id == wfr).values(status="L"))
        conn.execute(WF.update().values(status="G"))
    expire_heartbeats(services)
    (reaped,) = reaping.reap_runs([RunDecision(wfr, RunFate.GONE, "DAG run no longer exists")])
    assert (reaped.new_run_status, reaped.new_workflow_status) == ("A", "A")


def test_failed_workflow_whose_tasks_are_all_done_is_fixed_in_windows(
    services: Services, reaping: Reaping, tmp_path: Path
) -> None:
    ids = []
    for run_id in ("r1", "r2", "r3"):
        sub = submit(services, tmp_path, run_id, "t")
        services.reports.log_running(sub.task_instance_id, "n", None, None, 60)
        ids.append(sub.task_instance_id)
    services.reports.log_done(ids[0], "n", None)
    services.reports.log_done(ids[2], "n", None)
    services.reports.log_error(ids[1], "E", 1, "boom", "n", None)
    expire_heartbeats(services)
    runs = [run_of(services, i) for i in ids]
    reaping.reap_runs([RunDecision(r, RunFate.FAILED, "failed") for r in runs])  # all three F
    fixed, nxt = reaping.fix_status_inconsistency(0, step=2)  # window (0, 2]: workflows 1 and 2
    assert [f.workflow_id for f in fixed] == [1] and nxt == 2
    fixed, nxt = reaping.fix_status_inconsistency(nxt, step=2)  # (2, 4]: workflow 3, the last: wrap to 0
    assert [f.workflow_id for f in fixed] == [3] and nxt == 0
    assert [statuses(services, r)[1] for r in runs] == ["D", "F", "D"]
    assert [n[1:3] for n in notes(services)][-2:] == [("F", "D"), ("F", "D")]
    assert reaping.fix_all_status_inconsistencies() == []  # a second sweep changes nothing


def test_overdue_instances_go_to_triage_with_a_log_row(services: Services, reaping: Reaping, tmp_path: Path) -> None:
    launched = submit(services, tmp_path, "r1", "a")
    running = submit(services, tmp_path, "r1", "b")
    services.reports.log_running(running.task_instance_id, "n", None, None, 60)
    fresh = submit(services, tmp_path, "r1", "c")
    with services.engine.begin() as conn:
        conn.execute(
            TI.update()
            .where(TI.c.id.in_([launched.task_instance_id, running.task_instance_id]))
            .values(report_by_date=utcnow() - timedelta(seconds=5))
        )
    ids = [launched.task_instance_id, running.task_instance_id, fresh.task_instance_id]
    assert reaping.mark_overdue(ids) == ([running.task_instance_id], [launched.task_instance_id])
    assert services.queries.error_logs(launched.task_instance_id) == ["Reaper: heartbeat overdue, O → X"]
    assert services.queries.task_instance(fresh.task_instance_id).status == "O"


def test_never_submitted_instances_close_through_kill(services: Services, reaping: Reaping, tmp_path: Path) -> None:
    sub = submit(services, tmp_path, "r1", "t")
    with services.engine.begin() as conn:  # an instance queued by an operator that died before submitting
        conn.execute(TI.update().where(TI.c.id == sub.task_instance_id).values(status="Q"))
        conn.execute(TASK.update().values(status="Q"))
    assert reaping.close_killed([sub.task_instance_id], "Reaper: no worker") == [sub.task_instance_id]
    assert services.queries.task_instance(sub.task_instance_id).status == "F"
    assert services.queries.get_task(services.queries.task_instance(sub.task_instance_id).task_id).status == "F"


def test_clusters_are_known_by_name_and_built_from_their_type(services: Services, reaping: Reaping) -> None:
    """A cluster row's name need not be its type (another deployment's naming, a test's cluster): the reaper builds
    each cluster from its type, so one such row cannot stop a pass (it did: "expected one of local, gridengine")."""
    services.binding.cluster_id("local", "local")
    services.binding.cluster_id("site-b-gridengine", "gridengine")
    assert reaping.cluster_types() == {"local": "local", "site-b-gridengine": "gridengine"}
