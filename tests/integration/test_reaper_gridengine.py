"""The workflow reaper DAG under ``dag.test()`` against the real Grid Engine cluster and the real MariaDB server,
with a real local HTTP endpoint standing in for Slack and one for the two read-only calls of Airflow's REST API
(the real API server is exercised by tests/e2e/test_reaper_services.py).

One pass finds: an orphaned job still in the cluster (deleted, instance closed), a job deleted while pending (X
then E), an Eqw job (reason logged, deleted, instance closed), a run whose DAG run was deleted (its jobs deleted,
C then T), one whose DAG run failed (E, workflow F), a failed workflow whose tasks are all done (D). A second pass
changes nothing; with Slack down (connection refused) a pass still completes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobmon_airflow import models
from jobmon_airflow.clusters.base import JobState
from jobmon_airflow.clusters.gridengine import GridEngineCluster
from jobmon_airflow.execution import JobSettings, Submission, TaskRun, WorkflowIdentity
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.service.core import utcnow
from tests.support.databases import mysql_connection
from tests.support.http_stand_ins import FakeAirflowApi, SlackSink, serving
from tests.support.state import wait_for

pytestmark = [pytest.mark.gridengine, pytest.mark.mariadb, pytest.mark.usefixtures("airflow_db")]

ROOT = Path(__file__).resolve().parents[2]
TI = models.TaskInstance.__table__
WFR = models.WorkflowRun.__table__
WF = models.Workflow.__table__
NOTE = models.WorkflowRunNote.__table__
LOG = models.TaskInstanceErrorLog.__table__


@pytest.fixture(scope="module")
def world(gridengine: dict[str, str], own_mariadb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Connections as a deployment has them, an Airflow API stand-in and a Slack sink; a database of its own (a
    reaper pass covers the whole database, and other modules' workflows are not this test's to reap)."""
    logs = tmp_path_factory.mktemp("reaper-sge-logs")
    with (
        serving(FakeAirflowApi()) as api,
        serving(SlackSink()) as slack,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("AIRFLOW_CONN_JOBMON_MARIADB", json.dumps(mysql_connection(own_mariadb_url)))
        mp.setenv(
            "AIRFLOW_CONN_JOBMON_DEFAULT",
            json.dumps({"conn_type": "jobmon", "extra": {"mysql_conn_id": "jobmon_mariadb", "cluster": "gridengine"}}),
        )
        mp.setenv(
            "AIRFLOW_CONN_GRIDENGINE_DEFAULT", json.dumps({"conn_type": "gridengine", "extra": {"log_dir": str(logs)}})
        )
        mp.setenv("AIRFLOW_CONN_AIRFLOW_API_DEFAULT", json.dumps({"conn_type": "http", "host": api.url}))
        slack_conn = {"conn_type": "slackwebhook", "host": slack.url, "password": "/services/T0/B0/x"}
        mp.setenv("AIRFLOW_CONN_SLACK_DEFAULT", json.dumps(slack_conn))
        mp.setenv("JOBMON_REAPER_ORPHAN_MIN_AGE_S", "0")
        mp.setenv("JOBMON_REAPER_LOST_GRACE_S", "0")
        services = JobmonHook().get_services()
        yield {"services": services, "api": api, "slack": slack, "logs": logs, "mp": mp, "slack_conn": slack_conn}
        qdel_ours(services)


def qdel_ours(services: Services) -> None:
    with services.engine.connect() as conn:
        jobs = [j for j in conn.execute(sa.select(TI.c.distributor_id)).scalars() if j]
    if jobs:
        subprocess.run(["qdel", *sorted({j.split(".")[0] for j in jobs})], capture_output=True, check=False)


def reaper_pass() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "jobmon_workflow_reaper.py"))
    assert bag.import_errors == {}
    dag = bag.get_dag("jobmon_workflow_reaper")
    assert dag is not None
    return dag.test()


def submit(services: Services, logs: Path, dag_id: str, run_id: str, command: str, **site: Any) -> Submission:
    cluster = GridEngineCluster(**site)
    run = TaskRun(services, cluster, JobSettings(logs / run_id, "http://127.0.0.1:9/jobmon", http_retry_seconds=1))
    spec = TaskSpec("t", f"{run_id}_t", command, max_attempts=1)
    sub = run.start(WorkflowIdentity(dag_id, run_id, try_number=1), spec, Resources.parse({"runtime": 600}))
    assert isinstance(sub, Submission)
    return sub


def job_state(job_id: str) -> JobState:
    return GridEngineCluster().statuses([job_id])[job_id].state


def snapshot(services: Services) -> tuple[Any, ...]:
    with services.engine.connect() as conn:
        return (
            conn.execute(sa.select(TI.c.id, TI.c.status).order_by(TI.c.id)).all(),
            conn.execute(sa.select(WFR.c.id, WFR.c.status).order_by(WFR.c.id)).all(),
            conn.execute(sa.select(WF.c.id, WF.c.status).order_by(WF.c.id)).all(),
            conn.execute(sa.select(sa.func.count()).select_from(NOTE)).scalar(),
            conn.execute(sa.select(sa.func.count()).select_from(LOG)).scalar(),
        )


def run_status(services: Services, ti_id: int) -> tuple[str, str]:
    with services.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(
                sa.select(WFR.c.status, WF.c.status)
                .join(WF, WF.c.id == WFR.c.workflow_id)
                .join(TI, TI.c.workflow_run_id == WFR.c.id)
                .where(TI.c.id == ti_id)
            ).one()
        )


def test_one_pass_reaps_everything_and_a_second_changes_nothing(world: Any) -> None:
    services: Services = world["services"]
    api: FakeAirflowApi = world["api"]
    logs: Path = world["logs"]
    dag = f"reaper_{uuid.uuid4().hex[:8]}"
    sleep = "sleep 600"

    # The short and held jobs first: the two sleepers may take both of the queue's slots.
    eqw = submit(services, logs, dag, "eqw", "/bin/true", extra_qsub_args=["-h"])
    shutil.rmtree(logs / "eqw")  # at dispatch its working directory is gone: Eqw
    subprocess.run(["qrls", eqw.job_id], check=True, capture_output=True)
    pending = submit(services, logs, dag, "pending", sleep, extra_qsub_args=["-h"])
    subprocess.run(["qdel", pending.job_id], check=True, capture_output=True)  # deleted while pending
    failed = submit(services, logs, dag, "failed", "/bin/false")  # its DAG run failed while nobody watched
    done = submit(services, logs, dag, "done", "/bin/true")  # workflow F, every task D
    wait_for(lambda: job_state(eqw.job_id) == JobState.ERROR, 300)
    wait_for(lambda: {job_state(failed.job_id), job_state(done.job_id)} == {JobState.GONE}, 300)
    orphan = submit(services, logs, dag, "orphan", sleep)  # its Airflow task was marked failed
    deleted = submit(services, logs, dag, "deleted", sleep)  # its DAG run was deleted
    services.lifecycle.apply_outcome(done.task_instance_id, "D", exit_status=0)
    for run_id in ("orphan", "pending", "eqw", "deleted", "failed", "done"):
        api.task_instances[(dag, run_id, "t", -1)] = "deferred"
    api.task_instances[(dag, "orphan", "t", -1)] = "failed"
    api.task_instances[(dag, "pending", "t", -1)] = "failed"
    api.task_instances[(dag, "failed", "t", -1)] = "failed"
    del api.task_instances[(dag, "deleted", "t", -1)]
    api.dag_runs = {(dag, r): "running" for r in ("orphan", "pending", "eqw")}
    api.dag_runs[(dag, "failed")] = "failed"
    with services.engine.begin() as conn:
        # The deadlines pass while nobody watches (the triggerer is what pushes them): the pending job's launch
        # deadline, and the heartbeats of the runs whose DAG runs ended.
        conn.execute(
            TI.update()
            .where(TI.c.id == pending.task_instance_id)
            .values(report_by_date=utcnow() - timedelta(seconds=1))
        )
        for sub in (deleted, failed, done):
            conn.execute(
                WFR.update()
                .where(WFR.c.id == services.queries.task_instance(sub.task_instance_id).workflow_run_id)
                .values(heartbeat_date=utcnow() - timedelta(seconds=1))
            )
        conn.execute(  # the run ended E while its task's end was not yet recorded (a listener racing the worker)
            WFR.update()
            .where(WFR.c.id == services.queries.task_instance(done.task_instance_id).workflow_run_id)
            .values(status="E")
        )
        conn.execute(WF.update().where(WF.c.dag_id == dag, WF.c.run_id == "done").values(status="F"))

    dr = reaper_pass()
    assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}

    q = services.queries
    assert q.task_instance(orphan.task_instance_id).status == "F"
    wait_for(lambda: job_state(orphan.job_id) == JobState.GONE, 60)  # not left running: qdel was issued
    assert any("Airflow task instance is failed" in e for e in q.error_logs(orphan.task_instance_id))
    errors = q.error_logs(pending.task_instance_id)
    assert q.task_instance(pending.task_instance_id).status == "E"
    assert errors[0] == "Reaper: heartbeat overdue, O → X" and "no heartbeat" in errors[-1]
    assert q.task_instance(eqw.task_instance_id).status == "U"
    assert "can't chdir to" in q.error_logs(eqw.task_instance_id)[-1]
    wait_for(lambda: job_state(eqw.job_id) == JobState.GONE, 60)
    assert q.task_instance(deleted.task_instance_id).status == "F"
    wait_for(lambda: job_state(deleted.job_id) == JobState.GONE, 60)
    assert run_status(services, deleted.task_instance_id) == ("T", "H")
    assert run_status(services, failed.task_instance_id) == ("E", "F")
    assert q.task_instance(failed.task_instance_id).status == "E"  # from the exit record its worker left
    assert run_status(services, done.task_instance_id) == ("E", "D")

    texts = world["slack"].texts()
    for sub in (deleted, failed):
        wfr = q.task_instance(sub.task_instance_id).workflow_run_id
        assert any(f"WorkflowRun ID: {wfr}\n" in t for t in texts), texts
    assert any("Workflow RUNNING → FAILED and its Workflow Run RUNNING → ERROR" in t for t in texts)
    assert any("Workflow FAILED → DONE" in t for t in texts)
    assert any("jobs in error state (Eqw)" in t and f"job {eqw.job_id}: Eqw" in t for t in texts), texts
    sent = len(texts)

    before = snapshot(services)
    assert reaper_pass().state == "success"
    assert snapshot(services) == before  # a second pass changes nothing
    assert len(world["slack"].texts()) == sent


def test_a_pass_completes_with_slack_down(world: Any) -> None:
    services: Services = world["services"]
    dag = f"reaper_{uuid.uuid4().hex[:8]}"
    sub = submit(services, world["logs"], dag, "failed", "/bin/false")
    world["api"].task_instances[(dag, "failed", "t", -1)] = "failed"
    world["api"].dag_runs[(dag, "failed")] = "failed"
    wait_for(lambda: job_state(sub.job_id) == JobState.GONE, 180)
    with services.engine.begin() as conn:
        conn.execute(
            WFR.update()
            .where(WFR.c.id == services.queries.task_instance(sub.task_instance_id).workflow_run_id)
            .values(heartbeat_date=utcnow() - timedelta(seconds=1))
        )
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    world["mp"].setenv("AIRFLOW_CONN_SLACK_DEFAULT", json.dumps({**world["slack_conn"], "host": dead}))
    dr = reaper_pass()
    assert dr.state == "success"
    assert run_status(services, sub.task_instance_id) == ("E", "F")
    assert services.queries.task_instance(sub.task_instance_id).status == "E"  # concluded from its exit record
    notify = next(ti for ti in dr.get_task_instances() if ti.task_id == "notify")
    assert notify.state == "success"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", *sys.argv[1:]]))
