"""ArrayRun: binding, batches per resource set, rounds of retries and the verdict, on a fake cluster and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobmon_airflow.execution import (
    ArrayOptions,
    ArrayProgress,
    ArrayRun,
    JobSettings,
    Verdict,
    VerdictKind,
    WorkflowIdentity,
)
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import Services
from jobmon_airflow.templates import TaskTemplate
from jobmon_airflow.watch import Poller
from tests.support.fakes import FakeCluster

TEMPLATE = TaskTemplate(name="m", command_template="model --loc {loc}", node_args=["loc"])


def make_run(services: Services, cluster: FakeCluster, tmp_path: Path, **options: object) -> ArrayRun:
    settings = JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon")
    return ArrayRun(services, cluster, settings, ArrayOptions(**options))  # type: ignore[arg-type]


def start(run: ArrayRun, n: int) -> ArrayProgress:
    elements = TEMPLATE.create_tasks(loc=list(range(n)))
    return run.start(
        WorkflowIdentity("dag", "run", try_number=1),
        TEMPLATE,
        elements,
        airflow_task_id="models",
        map_index=-1,
        requested=Resources(memory=1.0),
    )


def finish_all(services: Services, cluster: FakeCluster, live: dict[int, str], fail: set[int] = frozenset()) -> None:
    for ti_id, job_id in live.items():
        services.reports.log_running(ti_id, "n", None, None, 60)
        if ti_id in fail:
            services.reports.log_error(ti_id, "E", 1, "boom", "n", None)
        else:
            services.reports.log_done(ti_id, "n", None)
        cluster.finish(job_id)


def test_elements_go_in_batches_and_the_array_succeeds(services: Services, tmp_path: Path) -> None:
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path, batch_size=4)
    progress = start(run, 10)
    live = run.advance(progress)
    assert isinstance(live, dict) and len(live) == 10
    assert [job.array_length for job in cluster.submitted] == [4, 4, 2]
    poller = Poller(services, cluster)
    finish_all(services, cluster, live)
    poller.watch(live)
    run.record(poller.poll().values())
    verdict = run.advance(ArrayProgress.from_dict(progress.to_dict()))  # as carried through a trigger event
    assert isinstance(verdict, Verdict) and verdict.kind == VerdictKind.SUCCESS
    assert verdict.result == {"array_id": progress.array_id, "elements": 10, "done": 10}


def test_failed_elements_are_retried_then_listed(services: Services, tmp_path: Path) -> None:
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path, max_attempts=2)
    progress = start(run, 3)
    for _ in range(2):
        live = run.advance(progress)
        assert isinstance(live, dict)
        failing = {min(live)}  # the first element fails on both attempts
        finish_all(services, cluster, live, fail=failing)
    verdict = run.advance(progress)
    assert isinstance(verdict, Verdict) and verdict.kind == VerdictKind.FAIL
    assert "1 of 3 elements failed, 2 done" in verdict.message and "2 attempts" in verdict.message
    assert len(cluster.submitted) == 2  # the retry is a new batch of one


def test_concurrency_limit_submits_one_batch_at_a_time(services: Services, tmp_path: Path) -> None:
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path, batch_size=2, max_concurrently_running=2)
    live = run.advance(start(run, 5))
    assert isinstance(live, dict) and len(live) == 2 and cluster.submitted[0].max_concurrent == 2


@pytest.mark.parametrize("bad", [None, {}, {"array_id": "1", "workflow_id": 1, "workflow_run_id": 1}])
def test_progress_from_an_event_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="array progress"):
        ArrayProgress.from_dict(bad)


def test_a_retry_of_the_same_pass_keeps_ended_elements_a_new_pass_starts_failed_ones_over(
    services: Services, tmp_path: Path
) -> None:
    """An Airflow retry after a try failed at its resume point (every element had ended, one F) must not give the
    failed element new attempts; a user's clear (a new pass) does."""
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path, max_attempts=1)
    progress = start(run, 2)
    live = run.advance(progress)
    assert isinstance(live, dict)
    finish_all(services, cluster, live, fail={min(live)})
    retry = run.start(
        WorkflowIdentity("dag", "run", try_number=2, new_pass=False),
        TEMPLATE,
        TEMPLATE.create_tasks(loc=[0, 1]),
        airflow_task_id="models",
        map_index=-1,
        requested=Resources(memory=1.0),
    )
    verdict = run.advance(retry)
    assert isinstance(verdict, Verdict) and verdict.kind == VerdictKind.FAIL
    assert len(cluster.submitted) == 1  # nothing ran again
    cleared = run.start(
        WorkflowIdentity("dag", "run", try_number=3, new_pass=True),
        TEMPLATE,
        TEMPLATE.create_tasks(loc=[0, 1]),
        airflow_task_id="models",
        map_index=-1,
        requested=Resources(memory=1.0),
    )
    live = run.advance(cleared)
    assert isinstance(live, dict) and len(live) == 1 and len(cluster.submitted) == 2
