"""TaskRun: start (bind, re-attach, adopt, submit) and conclude (verdicts), on a fake cluster and SQLite."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobmon_airflow.clusters.base import UnknownQueue
from jobmon_airflow.execution import JobSettings, Submission, TaskRun, Verdict, VerdictKind, WorkflowIdentity
from jobmon_airflow.records import EventSource, WatchEvent
from jobmon_airflow.resources import QueueLimits, ResourceError, Resources
from jobmon_airflow.service import Services, TaskSpec
from tests.support.fakes import FakeCluster

WORKFLOW = WorkflowIdentity("dag", "run", try_number=1)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(queues={"all.q": QueueLimits("all.q", 8, 4.0, 3600), "long.q": QueueLimits("long.q", 8, 64.0)})


@pytest.fixture
def run(services: Services, cluster: FakeCluster, tmp_path: Path) -> TaskRun:
    return TaskRun(services, cluster, JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"))


def start(run: TaskRun, task: TaskSpec | None = None, **resources: object) -> Submission:
    step = run.start(WORKFLOW, task or TaskSpec("t", "t", "echo hi", max_attempts=3), Resources.parse(resources))
    assert isinstance(step, Submission), step
    return step


def end(services: Services, ti_id: int, status: str, exit_status: int = 0) -> None:
    """The worker's reports."""
    services.reports.log_running(ti_id, "node1", None, None, 60)
    if status == "D":
        services.reports.log_done(ti_id, "node1", None)
    else:
        services.reports.log_error(ti_id, status, exit_status, f"exit {exit_status}", "node1", None)


def conclude(run: TaskRun, sub: Submission) -> Verdict:
    status = run.services.queries.task_instance(sub.task_instance_id).status
    return run.conclude(WatchEvent(sub.task_instance_id, sub.job_id, status, EventSource.DATABASE))


def test_start_submits_one_job_with_a_private_token_and_records_its_id(
    run: TaskRun, services: Services, cluster: FakeCluster
) -> None:
    sub = start(run, memory="1G")
    view = services.queries.task_instance(sub.task_instance_id)
    assert (view.status, view.distributor_id, sub.job_id) == ("O", "101", "101")
    assert view.requested_resources["queue"] == "all.q"  # the cluster's default queue, named
    job = cluster.submitted[0]
    token_file = Path(job.argv[job.argv.index("--token-file") + 1])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert token_file.read_text() not in " ".join(job.argv)
    assert cluster.calls["queue_limits"] == 1  # asked once: planning and queueing share the answer


def test_a_job_that_reports_its_end_before_its_id_is_recorded_is_done_not_an_error(
    run: TaskRun, services: Services, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm local launcher can run ``true`` and its worker's one report (I → R → D) before the submitter
    records the job id: the id is recorded, the instance stays D (seen under Airflow's services as
    "illegal transition D → O", which failed the task)."""
    submit = cluster.submit

    def fast_job(job: object) -> str:
        job_id = submit(job)  # type: ignore[arg-type]
        with services.engine.connect() as conn:
            (ti_id,) = conn.execute(sa.text("SELECT id FROM task_instance")).scalars()
        services.reports.log_ran(ti_id, "node1", None, job_id, 60, "D", 0, "", None)
        return job_id

    monkeypatch.setattr(cluster, "submit", fast_job)
    sub = start(run)
    view = services.queries.task_instance(sub.task_instance_id)
    assert (view.status, view.distributor_id) == ("D", sub.job_id)
    assert conclude(run, sub).kind == VerdictKind.SUCCESS


def test_done_is_success_and_a_second_start_does_not_run_it_again(
    run: TaskRun, services: Services, cluster: FakeCluster
) -> None:
    sub = start(run)
    end(services, sub.task_instance_id, "D")
    verdict = conclude(run, sub)
    assert verdict.kind == VerdictKind.SUCCESS and verdict.result == {
        "task_instance_id": sub.task_instance_id,
        "job_id": "101",
        "nodename": "node1",
    }


def test_a_live_job_is_reattached_not_submitted_twice(run: TaskRun, cluster: FakeCluster) -> None:
    first = start(run)
    again = start(run)
    assert again.reattached and again.task_instance_id == first.task_instance_id
    assert cluster.calls["submit"] == 1


def test_an_end_no_airflow_try_saw_is_adopted(run: TaskRun, services: Services, cluster: FakeCluster) -> None:
    """The try's Airflow worker died while the job finished: the next try adopts D instead of running again."""
    sub = start(run)
    end(services, sub.task_instance_id, "D")
    cluster.finish(sub.job_id)
    step = run.start(WORKFLOW, TaskSpec("t", "t", "echo hi"), Resources())
    assert isinstance(step, Verdict) and step.kind == VerdictKind.SUCCESS
    assert cluster.calls["submit"] == 1


def test_error_retries_until_attempts_are_used_up(run: TaskRun, services: Services, cluster: FakeCluster) -> None:
    kinds = []
    for _ in range(3):
        sub = start(run)
        end(services, sub.task_instance_id, "E", 3)
        cluster.finish(sub.job_id)
        verdict = conclude(run, sub)
        kinds.append(verdict.kind)
    assert kinds == [VerdictKind.RETRY, VerdictKind.RETRY, VerdictKind.FAIL]
    assert "attempt 3 of 3" in verdict.message and verdict.details == ["exit 3"]


def test_resource_kill_retries_with_scaled_resources(run: TaskRun, services: Services, cluster: FakeCluster) -> None:
    sub = start(run, memory="2G", runtime=600)
    end(services, sub.task_instance_id, "Z", 137)
    cluster.finish(sub.job_id)
    verdict = conclude(run, sub)
    assert verdict.kind == VerdictKind.RETRY and "scaled resources" in verdict.message
    second = start(run, memory="2G", runtime=600)
    assert (second.resources["memory"], second.resources["runtime"]) == (3.0, 900)


def test_scaled_past_the_queue_moves_to_a_fallback_queue(
    run: TaskRun, services: Services, cluster: FakeCluster
) -> None:
    task = TaskSpec("t", "t", "x", fallback_queues=["long.q"])
    sub = start(run, task, memory="3G")
    end(services, sub.task_instance_id, "Z", 137)
    cluster.finish(sub.job_id)
    conclude(run, sub)
    second = start(run, task, memory="3G")
    assert (second.resources["memory"], second.resources["queue"]) == (4.5, "long.q")


def test_fatal_error_fails_without_retry(run: TaskRun, services: Services) -> None:
    sub = start(run)
    end(services, sub.task_instance_id, "F", 198)
    assert conclude(run, sub).kind == VerdictKind.FAIL


def test_an_unknown_queue_is_a_configuration_error(run: TaskRun, cluster: FakeCluster) -> None:
    with pytest.raises(UnknownQueue, match=r"compute_resources\.queue"):
        start(run, queue="nope.q")
    assert isinstance(UnknownQueue("x"), ResourceError)
    assert "submit" not in cluster.calls


def test_kill_records_k_deletes_the_job_and_fails_the_task(
    run: TaskRun, services: Services, cluster: FakeCluster
) -> None:
    sub = start(run)
    run.kill(sub)
    assert cluster.killed == ["101"]
    assert services.queries.task_instance(sub.task_instance_id).status == "K"
    assert services.queries.get_task(services.queries.task_instance(sub.task_instance_id).task_id).status == "F"
    assert os.path.exists(cluster.submitted[0].log_dir)


def test_a_late_end_of_a_superseded_kill_leaves_the_new_attempt_alone(
    run: TaskRun, services: Services, cluster: FakeCluster
) -> None:
    """A kill of attempt 1 whose clean-up (end_killed) comes late, after attempt 2 started, must not fail attempt
    2's task: only a task's newest instance decides."""
    first = start(run)
    services.lifecycle.request_kill([first.task_instance_id])
    second = start(run)  # the next try: the killed job is deleted, a new pass submits attempt 2
    assert second.task_instance_id != first.task_instance_id and cluster.calls["submit"] == 2
    services.lifecycle.end_killed([first.task_instance_id])
    task = services.queries.get_task(services.queries.task_instance(second.task_instance_id).task_id)
    assert task.status == "O"
