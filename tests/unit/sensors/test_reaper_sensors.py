"""The reaper's sensors and Slack notification against real local HTTP servers (a stand-in of Airflow's REST API,
a Slack webhook sink), on a SQLite state database; JobmonWorkflowSensor and its trigger."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow import db, models
from jobmon_airflow.execution import JobSettings, Submission, TaskRun, WorkflowIdentity
from jobmon_airflow.hooks.airflow_api import AirflowApiError, AirflowApiHook, TaskInstanceKey
from jobmon_airflow.resources import Resources
from jobmon_airflow.sensors import reaper
from jobmon_airflow.sensors.reaper import LostWorkflowRunSensor, OrphanedTaskInstanceSensor
from jobmon_airflow.sensors.workflow import JobmonWorkflowSensor, JobmonWorkflowTrigger
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.service.core import utcnow
from tests.support.fakes import FakeCluster
from tests.support.http_stand_ins import FakeAirflowApi, SlackSink, serving

WFR = models.WorkflowRun.__table__


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Any:
    with serving(FakeAirflowApi(password="pw")) as server:
        conn = {"conn_type": "http", "host": server.url, "login": "admin", "password": "pw"}
        monkeypatch.setenv("AIRFLOW_CONN_AIRFLOW_API_DEFAULT", json.dumps(conn))
        yield server


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Services:
    url = f"sqlite:///{tmp_path / 'jobmon.sqlite'}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_JOBMON_DEFAULT", json.dumps({"conn_type": "jobmon", "extra": {"sql_alchemy_conn": url}})
    )
    engine = db.get_engine(url)
    db.upgrade(engine)
    return Services.for_engine(engine)


CLUSTER = FakeCluster()


def submit(services: Services, tmp_path: Path, run_id: str, task_id: str) -> Submission:
    run = TaskRun(services, CLUSTER, JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"))
    sub = run.start(
        WorkflowIdentity("dag", run_id, try_number=1), TaskSpec(task_id, task_id, "echo"), Resources.parse({})
    )
    assert isinstance(sub, Submission)
    return sub


def test_hook_lists_task_instances_in_pages_with_a_token(api: FakeAirflowApi) -> None:
    api.task_instances = {
        ("dag", "r1", "a", -1): "running",
        ("dag", "r1", "b", 0): "failed",
        ("dag", "r2", "a", -1): None,
    }
    api.task_instances[("dag", "r3", "a", -1)] = "success"  # a DAG run not asked about
    states = AirflowApiHook().task_instance_states({("dag", "r1"), ("dag", "r2")})
    assert states == {
        TaskInstanceKey("dag", "r1", "a", -1): "running",
        TaskInstanceKey("dag", "r1", "b", 0): "failed",
        TaskInstanceKey("dag", "r2", "a", -1): None,
    }
    listings = [p for m, p in api.requests if p.endswith("taskInstances/list")]
    assert len(listings) == 2  # 3 rows, pages of 2: one batch, not one call per task
    assert api.requests[0] == ("POST", "/auth/token")


def test_hook_reads_dag_runs_and_names_a_refusal(api: FakeAirflowApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api.dag_runs = {("dag", "manual__2026-01-01T00:00:00+00:00"): "failed"}
    assert AirflowApiHook().dag_run_states({("dag", "manual__2026-01-01T00:00:00+00:00"), ("dag", "gone")}) == {
        ("dag", "manual__2026-01-01T00:00:00+00:00"): "failed",
        ("dag", "gone"): None,
    }
    api.dag_runs.update({("dag", f"live{i}"): "running" for i in range(3)})
    api.requests.clear()
    live = {("dag", f"live{i}") for i in range(3)}
    expected = {**dict.fromkeys(live, "running"), ("dag", "gone"): None}
    assert AirflowApiHook().dag_run_states(live | {("dag", "gone")}) == expected
    gets = [p for m, p in api.requests if m == "GET"]
    assert gets == ["/api/v2/dags/dag/dagRuns/gone"]  # running runs come from the listing, the others one by one
    listings = [p for m, p in api.requests if p.endswith("dagRuns/list")]
    assert len(listings) == 2  # three running runs in pages of two
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRFLOW_API_DEFAULT",
        json.dumps({"conn_type": "http", "host": api.url, "login": "admin", "password": "wrong"}),
    )
    with pytest.raises(AirflowApiError, match="auth/token: HTTP 401"):
        AirflowApiHook().dag_run_states({("dag", "x")})


def test_orphan_sensor_returns_instances_whose_airflow_task_is_over(
    api: FakeAirflowApi, state: Services, tmp_path: Path
) -> None:
    failed = submit(state, tmp_path, "r1", "failed_task")
    submit(state, tmp_path, "r1", "deferred_task")
    absent = submit(state, tmp_path, "r2", "t")  # its DAG run was deleted
    api.task_instances = {("dag", "r1", "failed_task", -1): "failed", ("dag", "r1", "deferred_task", -1): "deferred"}
    sensor = OrphanedTaskInstanceSensor(task_id="s", min_age=timedelta(0))
    result = sensor.poke({})
    assert result.is_done
    found = {o["candidate"]["task_instance_id"]: o["airflow_state"] for o in result.xcom_value}
    assert found == {failed.task_instance_id: "failed", absent.task_instance_id: "absent"}
    waiting = OrphanedTaskInstanceSensor(task_id="w", min_age=timedelta(days=1), wait_for_work=True).poke({})
    assert not waiting.is_done and waiting.xcom_value == []  # nothing old enough yet: keep poking


def test_lost_run_sensor_decides_from_the_dag_run(
    api: FakeAirflowApi, state: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper, "clusters_for", lambda services, conn_id: {"local": CLUSTER})
    runs = {r: submit(state, tmp_path, r, "t") for r in ("failed", "success", "running", "deleted")}
    with state.engine.begin() as conn:
        conn.execute(WFR.update().values(heartbeat_date=utcnow() - timedelta(seconds=1)))
    api.dag_runs = {("dag", "failed"): "failed", ("dag", "success"): "success", ("dag", "running"): "running"}
    work = LostWorkflowRunSensor(task_id="s").poke({}).xcom_value
    fates = {d["reason"].split()[3]: d["fate"] for d in work["decisions"]}
    assert fates == {"failed": "failed", "success": "succeeded", "deleted": "gone"}
    assert work["halted"] == []
    out = reaper.act_on_lost_runs(work)
    moved = {(r["old_run_status"], r["new_run_status"]) for r in out["runs"]}
    assert moved == {("R", "E"), ("R", "C"), ("C", "T")}  # success with a task not done: E
    (killed,) = out["instances"]  # the deleted run's job was deleted, its instance closed
    assert (killed["task_instance_id"], killed["new_status"]) == (runs["deleted"].task_instance_id, "F")
    assert runs["deleted"].job_id in CLUSTER.killed


def test_notify_posts_each_text_to_a_webhook_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert reaper.notify(["x"], slack_conn_id="slack_nowhere") == 0
    assert "no Slack connection 'slack_nowhere'" in caplog.text
    with serving(SlackSink()) as sink:
        conn = {"conn_type": "slackwebhook", "host": sink.url, "password": "/services/T0/B0/secret"}
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_DEFAULT", json.dumps(conn))
        assert reaper.notify(["first", "second"]) == 2
        assert sink.texts() == ["first", "second"] and sink.payloads[0]["path"] == "/services/T0/B0/secret"
        dead = f"http://127.0.0.1:{sink.server_address[1]}"
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_DEFAULT", json.dumps({**conn, "host": dead}))
    assert reaper.notify(["lost"]) == 0  # connection refused: logged, not raised
    assert "Slack message not sent" in caplog.text


def test_workflow_sensor_waits_for_a_status_and_fails_on_a_failed_one(state: Services, tmp_path: Path) -> None:
    sub = submit(state, tmp_path, "r1", "t")
    sensor = JobmonWorkflowSensor(task_id="w", external_dag_id="dag", external_run_id="r1", failed_statuses=["FAILED"])
    assert not sensor.poke({})
    state.reports.log_running(sub.task_instance_id, "n", None, None, 60)
    state.reports.log_done(sub.task_instance_id, "n", None)
    state.binding.finish_workflow_run("dag", "r1", success=True)
    assert sensor.poke({})
    assert sensor.execute({}) == {"workflow_id": 1, "status": "D"}
    with pytest.raises(ValueError, match="target_statuses: not a workflow status: 'NOPE'"):
        JobmonWorkflowSensor(task_id="x", workflow_id=1, target_statuses=["NOPE"])
    failing = JobmonWorkflowSensor(task_id="f", workflow_id=1, failed_statuses=["D"])
    with pytest.raises(Exception, match="Jobmon workflow 1 is DONE"):
        failing.poke({})


def test_workflow_trigger_fires_on_the_target_status_and_round_trips(state: Services, tmp_path: Path) -> None:
    submit(state, tmp_path, "r1", "t")
    trigger = JobmonWorkflowTrigger(target=["R"], failed=[], dag_id="dag", run_id="r1", poll_interval=0.05)
    path, kwargs = trigger.serialize()
    assert path == "jobmon_airflow.sensors.workflow.JobmonWorkflowTrigger"
    assert JobmonWorkflowTrigger(**kwargs).serialize() == (path, kwargs)

    async def first() -> Any:
        return await asyncio.wait_for(anext(trigger.run()), 30)

    event = asyncio.run(first())
    assert event.payload == {"workflow_id": 1, "status": "R"}
