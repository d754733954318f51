"""The reaper's triage on a fake cluster: orphans concluded as the trigger would, Eqw jobs, halted runs, one
status call per pass, and the Slack texts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from jobmon_airflow import models
from jobmon_airflow.clusters.base import ExitInfo, ExitKind, JobState, JobStatus
from jobmon_airflow.execution import JobSettings, Submission, TaskRun, WorkflowIdentity
from jobmon_airflow.execution.reaping import (
    find_error_jobs,
    handle_error_jobs,
    reap_lost_runs,
    run_message,
    summary_message,
    triage,
)
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.service.core import utcnow
from jobmon_airflow.service.reaping import Reaping, RunDecision, RunFate
from tests.support.fakes import FakeCluster

TI = models.TaskInstance.__table__
WFR = models.WorkflowRun.__table__


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def submit(services: Services, cluster: FakeCluster, tmp_path: Path, task_id: str, run_id: str = "r1") -> Submission:
    run = TaskRun(services, cluster, JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"))
    sub = run.start(
        WorkflowIdentity("dag", run_id, try_number=1),
        TaskSpec(task_id, task_id, "echo", max_attempts=2),
        Resources.parse({}),
    )
    assert isinstance(sub, Submission)
    return sub


def status(services: Services, sub: Submission) -> str:
    return services.queries.task_instance(sub.task_instance_id).status


def overdue(services: Services, *subs: Submission, seconds: float = 600) -> None:
    with services.engine.begin() as conn:
        conn.execute(
            TI.update()
            .where(TI.c.id.in_([s.task_instance_id for s in subs]))
            .values(report_by_date=utcnow() - timedelta(seconds=seconds))
        )


def test_orphans_are_concluded_from_evidence_and_live_jobs_are_deleted_with_one_status_call(
    services: Services, cluster: FakeCluster, tmp_path: Path
) -> None:
    running = submit(services, cluster, tmp_path, "running")
    services.reports.log_running(running.task_instance_id, "n", None, None, 60)
    resource = submit(services, cluster, tmp_path, "resource")
    services.reports.log_running(resource.task_instance_id, "n", None, None, 60)
    failed = submit(services, cluster, tmp_path, "failed")
    pending_deleted = submit(services, cluster, tmp_path, "pending_deleted")
    cluster.finish(resource.job_id, ExitInfo(resource.job_id, ExitKind.RESOURCE_KILL, 137, reason="h_vmem"))
    cluster.finish(failed.job_id, ExitInfo(failed.job_id, ExitKind.ERROR, 3, reason="exit 3", hostname="n2"))
    cluster.finish(pending_deleted.job_id)  # no accounting: deleted while pending
    overdue(services, pending_deleted)
    cluster.calls.clear()
    subs = [running, resource, failed, pending_deleted]
    results = triage(services, {"local": cluster}, [s.task_instance_id for s in subs], why="Airflow task failed")
    assert cluster.calls["statuses"] == 1 and cluster.calls["exit_info"] == 1
    assert cluster.killed == [running.job_id]
    by_id = {r.task_instance_id: r for r in results}
    assert (by_id[running.task_instance_id].new_status, by_id[running.task_instance_id].source) == ("F", "killed")
    assert by_id[resource.task_instance_id].new_status == "Z" and by_id[resource.task_instance_id].resource_kill
    assert (by_id[failed.task_instance_id].new_status, by_id[failed.task_instance_id].source) == ("E", "accounting")
    assert by_id[pending_deleted.task_instance_id].new_status == "E"  # O → X (no heartbeat) → E
    assert [status(services, s) for s in subs] == ["F", "Z", "E", "E"]
    assert any(
        e.startswith("Reaper: heartbeat overdue, O → X")
        for e in services.queries.error_logs(pending_deleted.task_instance_id)
    )
    assert services.queries.error_logs(failed.task_instance_id)[-1].startswith("Reaper: Airflow task failed; exit 3")
    assert triage(services, {"local": cluster}, [s.task_instance_id for s in subs], why="again") == []


def test_a_gone_job_without_evidence_waits_for_the_lost_grace(
    services: Services, cluster: FakeCluster, tmp_path: Path
) -> None:
    sub = submit(services, cluster, tmp_path, "t")
    services.reports.log_running(sub.task_instance_id, "n", None, None, 60)  # report-by 186 s ahead
    cluster.finish(sub.job_id)
    assert triage(services, {"local": cluster}, [sub.task_instance_id], why="orphan") == []
    assert status(services, sub) == "R"  # accounting may still come: not lost yet
    overdue(services, sub, seconds=61)
    (result,) = triage(services, {"local": cluster}, [sub.task_instance_id], why="orphan")
    assert (result.old_status, result.new_status, result.source) == ("R", "U", "lost")
    assert status(services, sub) == "U"


def test_a_done_job_is_concluded_done_with_a_log_row(services: Services, cluster: FakeCluster, tmp_path: Path) -> None:
    sub = submit(services, cluster, tmp_path, "t")
    cluster.finish(sub.job_id, ExitInfo(sub.job_id, ExitKind.DONE, 0, hostname="n1"))
    (result,) = triage(services, {"local": cluster}, [sub.task_instance_id], why="Airflow task success")
    assert (result.new_status, result.source) == ("D", "accounting")
    assert services.queries.error_logs(sub.task_instance_id) == ["Reaper: Airflow task success; the job had ended DONE"]


def test_eqw_jobs_are_logged_deleted_and_closed(services: Services, cluster: FakeCluster, tmp_path: Path) -> None:
    bad = submit(services, cluster, tmp_path, "bad")
    good = submit(services, cluster, tmp_path, "good")
    reason = "can't chdir to /nonexistent: No such file or directory"
    cluster.states[bad.job_id] = JobStatus(bad.job_id, JobState.ERROR, "Eqw", reason)
    (err,) = find_error_jobs(services, {"local": cluster})
    assert (err.task_instance_id, err.job_id, err.raw, err.reason) == (bad.task_instance_id, bad.job_id, "Eqw", reason)
    assert type(err).from_dict(err.to_dict()) == err
    (result,) = handle_error_jobs(services, {"local": cluster}, [err])
    assert (result.old_status, result.new_status) == ("O", "U")
    assert cluster.killed == [bad.job_id]
    assert reason in services.queries.error_logs(bad.task_instance_id)[-1]
    assert status(services, good) == "O"
    assert find_error_jobs(services, {"local": cluster}) == []


def test_a_run_whose_dag_run_is_gone_kills_its_jobs_and_terminates(
    services: Services, cluster: FakeCluster, tmp_path: Path
) -> None:
    a = submit(services, cluster, tmp_path, "a")
    services.reports.log_running(a.task_instance_id, "n", None, None, 60)
    b = submit(services, cluster, tmp_path, "b")
    wfr = services.queries.task_instance(a.task_instance_id).workflow_run_id
    with services.engine.begin() as conn:
        conn.execute(WFR.update().values(heartbeat_date=utcnow() - timedelta(seconds=1)))
    results, runs = reap_lost_runs(services, {"local": cluster}, [RunDecision(wfr, RunFate.GONE, "DAG run deleted")])
    assert sorted(cluster.killed) == sorted([a.job_id, b.job_id])
    assert {r.new_status for r in results} == {"F"}
    assert [(r.old_run_status, r.new_run_status) for r in runs] == [("R", "C"), ("C", "T")]
    assert runs[-1].new_workflow_status == "H"
    assert reap_lost_runs(services, {"local": cluster}, [RunDecision(wfr, RunFate.GONE, "again")]) == ([], [])
    assert Reaping(services.engine).halted_runs() == {}


def test_a_hot_halt_lets_running_jobs_finish(services: Services, cluster: FakeCluster, tmp_path: Path) -> None:
    running = submit(services, cluster, tmp_path, "running")
    services.reports.log_running(running.task_instance_id, "n", None, None, 60)
    pending = submit(services, cluster, tmp_path, "pending")
    cluster.states[pending.job_id] = JobStatus(pending.job_id, JobState.PENDING, "qw")
    with services.engine.begin() as conn:
        conn.execute(WFR.update().values(status="H", heartbeat_date=utcnow() - timedelta(seconds=1)))
    results, runs = reap_lost_runs(services, {"local": cluster}, [])
    assert cluster.killed == [pending.job_id] and [r.task_instance_id for r in results] == [pending.task_instance_id]
    assert runs == [] and status(services, running) == "R"  # the run waits for its running job
    services.reports.log_done(running.task_instance_id, "n", None)
    _, runs = reap_lost_runs(services, {"local": cluster}, [])
    assert [(r.old_run_status, r.new_run_status, r.new_workflow_status) for r in runs] == [("H", "T", "H")]


def test_slack_texts_carry_jobmons_content(services: Services, cluster: FakeCluster, tmp_path: Path) -> None:
    sub = submit(services, cluster, tmp_path, "t")
    wfr = services.queries.task_instance(sub.task_instance_id).workflow_run_id
    with services.engine.begin() as conn:
        conn.execute(WFR.update().values(heartbeat_date=utcnow() - timedelta(seconds=1)))
    (reaped,) = Reaping(services.engine).reap_runs([RunDecision(wfr, RunFate.FAILED, "DAG run failed")])
    text = run_message(reaped)
    assert "Workflow RUNNING → FAILED" in text and "Workflow Run RUNNING → ERROR" in text
    assert f"Workflow ID: {reaped.workflow_id}\nWorkflow Name: dag r1\nWorkflow Args: r1\nWorkflowRun ID: {wfr}" in text
    assert summary_message([], []) is None


def test_an_orphan_in_an_error_state_is_deleted_with_its_reason_logged(
    services: Services, cluster: FakeCluster, tmp_path: Path
) -> None:
    sub = submit(services, cluster, tmp_path, "t")
    cluster.states[sub.job_id] = JobStatus(sub.job_id, JobState.ERROR, "Eqw", "can't chdir to /gone")
    (result,) = triage(services, {"local": cluster}, [sub.task_instance_id], why="orphaned")
    assert (result.old_status, result.new_status, result.source) == ("O", "F", "killed")
    assert cluster.killed == [sub.job_id]
    logs = services.queries.error_logs(sub.task_instance_id)
    assert logs[0] == "Reaper: orphaned; its job was still in the cluster"
    assert f"Reaper: job {sub.job_id} was in Eqw: can't chdir to /gone" in logs
