"""watch.outcome (evidence in order of strength) and one Poller poll, on a fake cluster and SQLite."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobmon_airflow.clusters.base import ExitInfo, ExitKind, JobState, JobStatus
from jobmon_airflow.execution import JobSettings, Submission, TaskRun, VerdictKind, WorkflowIdentity
from jobmon_airflow.records import EventSource, ExitRecord, Usage, WatchEvent
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import Services, TaskInstanceView, TaskSpec
from jobmon_airflow.service.core import TI, utcnow
from jobmon_airflow.watch import Poller, outcome, read_exit_record
from tests.support.fakes import FakeCluster

GONE = JobStatus("7", JobState.GONE)
RUNNING = JobStatus("7", JobState.RUNNING)


def view(status: str) -> TaskInstanceView:
    return TaskInstanceView(id=3, task_id=1, workflow_run_id=1, status=status, distributor_id="7", cluster_id=1)


def test_what_the_database_holds_ends_the_wait() -> None:
    assert outcome(view("D"), RUNNING, None, None, 0, 60) == WatchEvent(3, "7", "D", EventSource.DATABASE)
    assert outcome(view("K"), RUNNING, None, None, 0, 60) == WatchEvent(3, "7", "K", EventSource.DATABASE)


def test_a_job_still_in_the_queue_keeps_the_wait() -> None:
    assert outcome(view("R"), RUNNING, None, None, 0, 60) is None
    assert outcome(view("O"), None, None, None, 0, 60) is None


def test_exit_record_wins_over_accounting() -> None:
    record = ExitRecord(3, "E", 3, "boom", "node1", usage=Usage(100, 2.0, 1.0))
    acct = ExitInfo("7", ExitKind.DONE, 0)
    event = outcome(view("R"), GONE, acct, record, 0, 60)
    assert event == WatchEvent(3, "7", "E", EventSource.EXIT_RECORD, 3, "boom", "node1", Usage(100, 2.0, 1.0))


def test_accounting_when_there_is_no_record() -> None:
    acct = ExitInfo("7", ExitKind.RESOURCE_KILL, 137, "h_vmem", "memory", "n2", 5, None, 3.0, 1.0)
    event = outcome(view("R"), GONE, acct, None, 0, 60)
    assert event is not None
    assert (event.status, event.source, event.exit_status, event.nodename) == ("Z", EventSource.ACCOUNTING, 137, "n2")
    assert event.usage == Usage(5, 3.0, 1.0)


@pytest.mark.parametrize(("status", "lost_as"), [("O", "X"), ("R", "U")])
def test_lost_only_after_the_grace_period(status: str, lost_as: str) -> None:
    assert outcome(view(status), GONE, None, None, 59, 60) is None
    event = outcome(view(status), GONE, None, None, 60, 60)
    assert event is not None and (event.status, event.source) == (lost_as, EventSource.LOST)


def test_error_state_asks_for_the_job_to_be_deleted() -> None:
    eqw = JobStatus("7", JobState.ERROR, raw="Eqw", reason="can't chdir")
    event = outcome(view("O"), eqw, None, None, 0, 60)
    assert event is not None and event.kill_job and event.status == "U" and "can't chdir" in event.message


def test_watch_events_survive_the_trigger_serialisation() -> None:
    event = WatchEvent(3, "7.2", "Z", EventSource.ACCOUNTING, 137, "m", "n", Usage(1, 2.0, 3.0), kill_job=True)
    assert WatchEvent.from_dict(event.to_dict()) == event


def test_exit_record_of_another_instance_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "ti-3.exit.json"
    path.write_text(ExitRecord(4, "D").to_json())
    assert read_exit_record(str(path), 3) is None
    path.write_text(ExitRecord(3, "D").to_json())
    assert read_exit_record(str(path), 3) == ExitRecord(3, "D")
    path.write_text('{"task_instance_id": 3, "status": "Q"}')
    assert read_exit_record(str(path), 3) is None


def test_a_job_that_ended_while_nobody_watched_is_concluded_from_its_record_not_resubmitted(
    services: Services, tmp_path: Path
) -> None:
    """The worker could not report running (State Manager down) and its job ended D, leaving its exit record;
    nobody polled for longer than the deadline (triggerer down). The next poll must read the record before it
    enforces the deadline: the instance ends D, not O → X → E with the job submitted again."""
    cluster = FakeCluster()
    run = TaskRun(services, cluster, JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"))
    submission = run.start(WorkflowIdentity("dag", "run"), TaskSpec("t", "t", "true"), Resources())
    assert isinstance(submission, Submission)
    ti_id, job_id = submission.task_instance_id, submission.job_id
    with services.engine.begin() as conn:  # the deadline passed while nobody watched
        conn.execute(TI.update().where(TI.c.id == ti_id).values(report_by_date=utcnow() - timedelta(hours=1)))
    record = services.queries.task_instance(ti_id).exit_record
    assert record is not None
    Path(record).write_text(ExitRecord(ti_id, "D", 0, nodename="node1", usage=Usage(1, 1.0, 0.1)).to_json())
    cluster.finish(job_id)

    poller = Poller(services, cluster)
    poller.watch({ti_id: job_id})
    events = poller.poll()

    assert events[ti_id].source == EventSource.EXIT_RECORD and events[ti_id].status == "D"
    verdict = run.conclude(events[ti_id])
    assert verdict.kind == VerdictKind.SUCCESS
    with services.engine.connect() as conn:
        statuses = list(conn.execute(sa.select(TI.c.status).order_by(TI.c.id)).scalars())
    assert statuses == ["D"]
    assert cluster.calls["submit"] == 1


def test_blocking_wait_rides_out_failed_polls_then_gives_up(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocking mode (deferrable=False): a qmaster or database outage fails some polls; the wait goes on (as the
    triggerer's shared watcher does) instead of failing the try, and gives up only after many failures in a row."""
    from jobmon_airflow import watch
    from jobmon_airflow.clusters.base import ClusterUnavailable

    cluster = FakeCluster()
    run = TaskRun(services, cluster, JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"))
    sub = run.start(WorkflowIdentity("dag", "run"), TaskSpec("t", "t", "true"), Resources())
    assert isinstance(sub, Submission)
    record = services.queries.task_instance(sub.task_instance_id).exit_record
    assert record is not None
    Path(record).write_text(ExitRecord(sub.task_instance_id, "D", 0).to_json())
    cluster.finish(sub.job_id)
    real, failures = cluster.statuses, [2]

    def flaky(job_ids: object) -> object:
        if failures[0] > 0:
            failures[0] -= 1
            raise ClusterUnavailable("unable to contact qmaster")
        return real(job_ids)  # type: ignore[arg-type]

    monkeypatch.setattr(cluster, "statuses", flaky)
    event = Poller(services, cluster).wait_blocking(sub.task_instance_id, sub.job_id, 0.01)
    assert (event.status, event.source) == ("D", EventSource.EXIT_RECORD)

    failures[0] = 10**6
    monkeypatch.setattr(watch, "MAX_FAILED_POLLS", 3)
    with pytest.raises(RuntimeError, match="3 polls in a row failed"):
        Poller(services, cluster).wait_blocking(sub.task_instance_id, sub.job_id, 0.01)


def test_quick_looks_start_soon_and_back_off_to_the_interval() -> None:
    from jobmon_airflow.watch import FIRST_LOOK_S, _Watch

    w = _Watch("7", added=100.0)
    dues = [w.look_due]
    while w.look_due != float("inf"):
        w.looked(w.look_due, 2.0)
        dues.append(w.look_due)
    assert dues[0] == 100.0 + FIRST_LOOK_S
    gaps = [b - a for a, b in itertools.pairwise(dues[:-1])]
    assert gaps == sorted(gaps) and gaps[0] > FIRST_LOOK_S  # backing off...
    assert all(d < 102.0 for d in dues[:-1]) and len(dues) < 10  # ...and none once the watch is an interval old


def test_a_look_ends_a_reported_instance_with_no_cluster_call(services: Services, tmp_path: Path) -> None:
    cluster = FakeCluster()
    run = TaskRun(services, cluster, JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"))
    sub = run.start(WorkflowIdentity("dag", "run"), TaskSpec("t", "t", "true"), Resources())
    assert isinstance(sub, Submission)
    poller = Poller(services, cluster)
    poller.watch({sub.task_instance_id: sub.job_id})
    assert poller.look([sub.task_instance_id], 10.0) == {}  # still running: keep waiting
    with services.engine.begin() as conn:  # the worker reported the end
        conn.execute(TI.update().where(TI.c.id == sub.task_instance_id).values(status="D"))
    event = poller.look([sub.task_instance_id], 10.0)[sub.task_instance_id]
    assert (event.status, event.source) == ("D", EventSource.DATABASE)
    assert "statuses" not in cluster.calls and "exit_info" not in cluster.calls


def test_shared_watcher_looks_soon_after_submission_and_polls_the_cluster_once_per_interval(
    services: Services, tmp_path: Path
) -> None:
    """A short task ends by a quick look long before the second poll; the cluster sees one status call per poll
    for all watched tasks, however many quick looks ran between polls."""
    import asyncio
    import time

    from jobmon_airflow.watch import SharedWatcher

    interval = 2.0
    cluster = FakeCluster()
    run = TaskRun(services, cluster, JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"))
    subs = []
    for name in ("short", "long", "late"):
        sub = run.start(WorkflowIdentity("dag", "run"), TaskSpec(name, name, "true"), Resources())
        assert isinstance(sub, Submission)
        subs.append(sub)
    short, long, late = subs
    watcher = SharedWatcher(Poller(services, cluster), interval)

    def report_done(ti_id: int) -> None:
        with services.engine.begin() as conn:
            conn.execute(TI.update().where(TI.c.id == ti_id).values(status="D"))

    async def scenario() -> tuple[float, dict[str, int], int, float]:
        t0 = time.monotonic()
        waiting = asyncio.create_task(watcher.wait(short.task_instance_id, short.job_id))
        long_wait = asyncio.create_task(watcher.wait(long.task_instance_id, long.job_id))
        await asyncio.sleep(0.05)
        report_done(short.task_instance_id)
        event = await waiting
        took = time.monotonic() - t0
        assert (event.status, event.source) == ("D", EventSource.DATABASE)
        polls_then = watcher.poller.polls
        await asyncio.sleep(interval * 0.5)
        late_wait = asyncio.create_task(watcher.wait(late.task_instance_id, late.job_id))  # a new young watch
        await asyncio.sleep(interval * 1.6)
        window = time.monotonic() - t0
        for task in (long_wait, late_wait):
            task.cancel()
        await asyncio.gather(long_wait, late_wait, return_exceptions=True)
        return took, dict(cluster.calls), polls_then, window

    took, calls, polls_then, window = asyncio.run(scenario())
    assert polls_then == 1 and took < interval  # ended by a look, before the second poll
    assert watcher.poller.looks >= 3  # the short, then the late watch were looked at between polls
    # One status call per poll, shared by every watch; polls only once per interval (the first at the start).
    assert calls["statuses"] == watcher.poller.polls <= window / interval + 1
