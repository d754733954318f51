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
    assert sorted(job.array_length or 0 for job in cluster.submitted) == [2, 4, 4]  # two qsubs run at once
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


def _submit_in_batches(services: Services, cluster: FakeCluster, tmp_path: Path, n: int, size: int) -> object:
    """submit_array_batches for an array of ``n`` bound elements, as ArrayRun._submit_ready calls it."""
    from jobmon_airflow.execution.jobs import submit_array_batches
    from jobmon_airflow.resources import QueueLimits

    run = make_run(services, cluster, tmp_path)
    progress = start(run, n)
    ready = sorted(services.queries.array_task_statuses(progress.array_id))
    queue = QueueLimits("all.q", 8, 16.0, 86400)
    (plan,) = services.lifecycle.plan_resources(ready, Resources(memory=1.0, queue="all.q"), {"all.q": queue})
    return submit_array_batches(
        services, cluster, run.settings,
        workflow_run_id=progress.workflow_run_id, cluster_id=services.binding.cluster_id("local", "local"),
        array_id=progress.array_id, name="models", plan=plan, queue=queue,
        commands=services.queries.task_commands(ready), try_number=1, batch_size=size,
    )  # fmt: skip


def _instances_by_batch(services: Services) -> dict[int, list[tuple[str, str | None, str]]]:
    import sqlalchemy as sa

    from jobmon_airflow.service.core import TASK, TI

    out: dict[int, list[tuple[str, str | None, str]]] = {}
    with services.engine.connect() as conn:
        for r in conn.execute(
            sa.select(TI.c.array_batch_num, TI.c.status, TI.c.distributor_id, TASK.c.status.label("task_status"))
            .join(TASK, TASK.c.id == TI.c.task_id)
            .order_by(TI.c.id)
        ):
            out.setdefault(r.array_batch_num, []).append((r.status, r.distributor_id, r.task_status))
    return out


def assert_one_job_per_batch(services: Services, sizes: dict[int, int]) -> None:
    """Each batch is one job J (two qsubs run at once: which gets the lower id is not fixed), its elements J.1..J.n
    launched with their tasks, and no two batches share a job."""
    batches = _instances_by_batch(services)
    assert {b: len(rows) for b, rows in batches.items()} == sizes
    jobs = set()
    for rows in batches.values():
        (job,) = {d.split(".")[0] for _, d, _ in rows if d}
        assert rows == [("O", f"{job}.{i}", "O") for i in range(1, len(rows) + 1)]
        jobs.add(job)
    assert jobs == {str(101 + k) for k in range(len(sizes))}


def test_batches_are_queued_and_launched_with_their_element_job_ids(services: Services, tmp_path: Path) -> None:
    cluster = FakeCluster()
    submitted = _submit_in_batches(services, cluster, tmp_path, 7, 3)
    assert sorted(job.array_length or 0 for job in cluster.submitted) == [1, 3, 3]  # two qsubs run at once
    assert_one_job_per_batch(services, {1: 3, 2: 3, 3: 1})
    assert isinstance(submitted, dict) and len(submitted) == 7
    view = services.queries.task_instance(min(submitted))
    assert view.exit_record and view.exit_record.endswith(f"ti-{view.id}.exit.json")


@pytest.fixture
def mariadb_services(mariadb_url: str) -> Services:
    from jobmon_airflow import db
    from tests.support.databases import drop_everything

    engine = db.get_engine(mariadb_url)
    drop_everything(engine)
    db.upgrade(engine)
    return Services.for_engine(engine)


@pytest.mark.mariadb
def test_batches_on_mariadb_map_each_element_to_its_instance_and_task(
    mariadb_services: Services, tmp_path: Path
) -> None:
    """The set-based statements (instances made by INSERT … SELECT, steps by task id; launch and the tasks'
    I → O as UPDATEs with no row read) on MariaDB: element i of each batch is the instance whose job id is J.i, and
    the manifest gives element i that instance and its task's command."""
    import base64

    import sqlalchemy as sa

    from jobmon_airflow.array_manifest import load_array_task
    from jobmon_airflow.service.core import TASK, TI

    services, cluster = mariadb_services, FakeCluster()
    submitted = _submit_in_batches(services, cluster, tmp_path, 7, 3)
    assert isinstance(submitted, dict) and len(submitted) == 7
    assert_one_job_per_batch(services, {1: 3, 2: 3, 3: 1})
    with services.engine.connect() as conn:
        rows = conn.execute(
            sa.select(TI.c.id, TI.c.array_batch_num, TI.c.array_step_id, TI.c.distributor_id, TASK.c.command)
            .join(TASK, TASK.c.id == TI.c.task_id)
            .order_by(TI.c.task_id)
        ).all()
    assert [r.array_step_id for r in rows] == [0, 1, 2, 0, 1, 2, 0]  # steps follow the task ids
    for r in rows:
        assert submitted[r.id] == r.distributor_id
        manifest = tmp_path / "logs" / f"array-1-batch-{r.array_batch_num}.manifest.json"
        element = load_array_task(str(manifest), r.array_step_id + 1)
        assert element.task_instance_id == r.id
        assert base64.b64decode(element.command_b64).decode() == r.command


def test_a_failed_batch_submission_keeps_the_jobs_beside_it_and_fails_its_batch_only(
    services: Services, tmp_path: Path
) -> None:
    """Submission is pipelined (two batches' qsubs in flight while the next is queued): when a qsub fails, the
    batches submitted before and beside it keep their job ids, the failed batch goes to W (no job, retryable), and
    no batch after is queued."""
    from jobmon_airflow.clusters.base import JobRequest, SubmissionError

    class FailingSecond(FakeCluster):
        def submit(self, job: JobRequest) -> str:
            if any("-batch-2." in arg for arg in job.argv):
                raise SubmissionError("qsub: no more jobs")
            return super().submit(job)

    cluster = FailingSecond()
    with pytest.raises(SubmissionError, match="no more jobs"):
        _submit_in_batches(services, cluster, tmp_path, 10, 3)
    batches = _instances_by_batch(services)
    assert sorted(batches) == [1, 2, 3]  # batch 4 was never queued
    for b in (1, 3):  # one job each, elements 1..3, launched
        (job,) = {d.split(".")[0] for _, d, _ in batches[b] if d}
        assert batches[b] == [("O", f"{job}.{i}", "O") for i in (1, 2, 3)]
    assert {(s, d) for s, d, _ in batches[2]} == {("W", None)}
    assert len(cluster.submitted) == 2


def test_a_changed_limit_reaches_the_live_batch_once_within_one_advance(services: Services, tmp_path: Path) -> None:
    """`workflow concurrency` while a batch runs: the next advance gives the batch the new -tc, once; an advance
    with the limit unchanged makes no cluster call."""
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path, batch_size=10, max_concurrently_running=1)
    progress = start(run, 6)
    live = run.advance(progress)
    assert isinstance(live, dict) and cluster.submitted[0].max_concurrent == 1
    assert progress.concurrency == 1
    assert run.advance(progress) == live and cluster.concurrency == []  # unchanged: no call
    owner = services.admin.owner(progress.workflow_id)
    assert owner is not None
    services.admin.set_concurrency(progress.workflow_id, 3, user=owner)
    carried = ArrayProgress.from_dict(progress.to_dict())  # as a trigger event carries it
    assert run.advance(carried) == live
    assert cluster.concurrency == [{"101": 3}] and carried.concurrency == 3
    assert run.advance(carried) == live and len(cluster.concurrency) == 1  # applied once
    # Lifted (Jobmon's default 10,000 means no limit of the array's own): -tc 0 on Grid Engine.
    services.admin.set_concurrency(progress.workflow_id, 10_000, user=owner)
    assert run.apply_concurrency(carried, live) is True
    assert cluster.concurrency[-1] == {"101": None}
    assert run.apply_concurrency(carried, live) is False


def test_a_new_try_applies_the_stored_limit_to_batches_it_did_not_submit(services: Services, tmp_path: Path) -> None:
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path, batch_size=10, max_concurrently_running=2)
    progress = start(run, 3)
    live = run.advance(progress)
    assert isinstance(live, dict)
    retry = start(run, 3)  # what a new Airflow try carries: the batch's -tc is not known to it
    assert retry.concurrency is None
    assert run.advance(retry) == live and cluster.concurrency == [{"101": 2}]


def test_a_limit_is_split_among_several_live_batches() -> None:
    from jobmon_airflow.execution.array_run import concurrency_shares

    assert concurrency_shares(["7"], 5) == {"7": 5}
    assert concurrency_shares(["7", "8", "9"], 5) == {"7": 2, "8": 2, "9": 1}
    assert concurrency_shares(["7", "8"], 1) == {"7": 1, "8": 1}  # -tc 0 would mean none: at least one each
    assert concurrency_shares(["7", "8"], None) == {"7": None, "8": None}


def test_several_unlimited_batches_share_a_new_limit(services: Services, tmp_path: Path) -> None:
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path, batch_size=2)
    progress = start(run, 6)
    live = run.advance(progress)
    assert isinstance(live, dict) and [j.max_concurrent for j in cluster.submitted] == [None, None, None]
    owner = services.admin.owner(progress.workflow_id)
    assert owner is not None
    services.admin.set_concurrency(progress.workflow_id, 4, user=owner)
    run.advance(progress)
    assert cluster.concurrency == [{"101": 2, "102": 1, "103": 1}]


def test_blocking_mode_applies_a_changed_limit_on_each_poll(services: Services, tmp_path: Path) -> None:
    """deferrable=False: the operator's wait polls here and applies a changed limit after each poll."""
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path, batch_size=10, max_concurrently_running=1)
    progress = start(run, 4)
    live = run.advance(progress)
    assert isinstance(live, dict)
    owner = services.admin.owner(progress.workflow_id)
    assert owner is not None
    services.admin.set_concurrency(progress.workflow_id, 2, user=owner)
    polls: list[int] = []

    def every_poll() -> None:
        polls.append(len(cluster.concurrency))
        run.apply_concurrency(progress, live)
        if len(polls) == 2:
            finish_all(services, cluster, live)

    events = Poller(services, cluster).wait_all_blocking(live, 0.01, every_poll)
    assert len(events) == 4 and polls == [0, 1]  # applied after the first poll, not again after the second
    assert cluster.concurrency == [{"101": 2}]


def test_an_array_whose_workers_all_reported_fires_before_the_next_poll(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elements older than one quick-look window end by their workers' reports; the array trigger sees in the
    database that no task is live and the watcher looks at once, instead of at the next poll an interval later.
    The cluster still sees one status call per poll."""
    import asyncio
    import time

    from jobmon_airflow import triggers
    from jobmon_airflow.watch import SharedWatcher

    interval = 30.0
    cluster = FakeCluster()
    run = make_run(services, cluster, tmp_path)
    progress = start(run, 5)
    live = run.advance(progress)
    assert isinstance(live, dict) and len(live) == 5
    assert services.queries.array_tasks_live(progress.array_id) == 5
    watcher = SharedWatcher(Poller(services, cluster), interval)

    async def shared(self: object) -> SharedWatcher:
        return watcher

    monkeypatch.setattr(triggers._JobmonTrigger, "watcher", shared)
    monkeypatch.setattr(triggers, "progress_check_s", lambda poll_interval: 0.2)
    trigger = triggers.JobmonArrayTrigger(array_id=progress.array_id, carry=progress.to_dict(), cluster={})

    async def scenario() -> tuple[float, dict[str, object]]:
        t0 = time.monotonic()
        events = trigger.run().__aiter__()
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.5)
        for w in watcher.poller.watched.values():  # past their quick looks: only polls (30 s apart) would see them
            w.look_due = float("inf")
        finish_all(services, cluster, live)
        event = await asyncio.wait_for(first, timeout=10)
        return time.monotonic() - t0, event.payload

    took, payload = asyncio.run(scenario())
    assert took < 5.0, f"fired after {took:.1f}s: waited for the next poll"
    assert payload["ended"] == 5 and payload["outcomes"] == []  # every outcome was in the database already
    assert services.queries.array_tasks_live(progress.array_id) == 0
    assert cluster.calls["statuses"] == watcher.poller.polls == 1  # the first poll only, at the start
