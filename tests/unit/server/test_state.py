"""State Manager routes: authentication per task instance, transitions through the state machines."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from jobmon_airflow import db, models
from jobmon_airflow.hashing import hash_token
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.server.app import create_standalone_app
from jobmon_airflow.service import Services, TaskSpec

BASE = "/jobmon/api/state/task_instance"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestClient, Services, list[int]]:
    url = f"sqlite:///{tmp_path / 'jobmon.sqlite'}"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    run = svc.binding.bind_workflow_run(dag_id="d", run_id="r")
    task_ids = svc.binding.bind_tasks(run.workflow_id, [TaskSpec("a", "a", "true"), TaskSpec("b", "b", "true")])
    cluster_id = svc.binding.cluster_id("local", "local")
    ti_ids = svc.lifecycle.queue_task_instances(
        run.workflow_run_id, cluster_id, task_ids, Resources(), "O", QueueLimits("local")
    )
    svc.lifecycle.instantiate(ti_ids, {ti_ids[0]: hash_token("token-a"), ti_ids[1]: hash_token("token-b")}, {})
    svc.lifecycle.log_distributor_ids({ti_ids[0]: "1", ti_ids[1]: "2"})
    return TestClient(create_standalone_app(url)), svc, ti_ids


RUNNING = {"nodename": "node1", "process_group_id": 42, "distributor_id": "1", "next_report_increment": 279}


def test_missing_token_is_401(setup: tuple[TestClient, Services, list[int]]) -> None:
    client, svc, (a, _) = setup
    response = client.post(f"{BASE}/{a}/log_running", json=RUNNING)
    assert response.status_code == 401
    assert svc.queries.task_instance(a).status == "O"


def test_wrong_token_is_403(setup: tuple[TestClient, Services, list[int]]) -> None:
    client, svc, (a, _) = setup
    response = client.post(f"{BASE}/{a}/log_running", json=RUNNING, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 403
    assert svc.queries.task_instance(a).status == "O"


def test_token_of_another_task_instance_is_403(setup: tuple[TestClient, Services, list[int]]) -> None:
    client, svc, (_, b) = setup
    response = client.post(f"{BASE}/{b}/log_running", json=RUNNING, headers={"Authorization": "Bearer token-a"})
    assert response.status_code == 403
    assert svc.queries.task_instance(b).status == "O"


def test_unknown_task_instance_is_403_not_a_leak(setup: tuple[TestClient, Services, list[int]]) -> None:
    client, _, _ = setup
    response = client.post(f"{BASE}/999/log_running", json=RUNNING, headers={"Authorization": "Bearer token-a"})
    assert response.status_code == 403


def test_heartbeat_route_checks_the_token_with_its_batch(setup: tuple[TestClient, Services, list[int]]) -> None:
    client, svc, (a, _) = setup
    svc.reports.log_running(a, "n", 1, "1", 279)
    beat = {"next_report_increment": 279}
    assert client.post(f"{BASE}/{a}/log_report_by", json=beat).status_code == 401
    forged = client.post(f"{BASE}/{a}/log_report_by", json=beat, headers={"Authorization": "Bearer token-b"})
    assert forged.status_code == 403
    unknown = client.post(f"{BASE}/999/log_report_by", json=beat, headers={"Authorization": "Bearer token-a"})
    assert unknown.status_code == 403
    bad = client.post(
        f"{BASE}/{a}/log_report_by", json={"next_report_increment": -1}, headers={"Authorization": "Bearer token-a"}
    )
    assert bad.status_code == 422 and "next_report_increment" in bad.text

    def report_by() -> object:
        with svc.engine.connect() as conn:
            return conn.execute(
                sa.select(models.TaskInstance.report_by_date).where(models.TaskInstance.id == a)
            ).scalar()

    before = report_by()
    ok = client.post(
        f"{BASE}/{a}/log_report_by", json={"next_report_increment": 5000}, headers={"Authorization": "Bearer token-a"}
    )
    assert ok.json() == {"status": "R"}
    assert report_by() > before  # type: ignore[operator]


def test_worker_lifecycle_over_http(setup: tuple[TestClient, Services, list[int]]) -> None:
    client, svc, (a, _) = setup
    auth = {"Authorization": "Bearer token-a"}
    assert client.post(f"{BASE}/{a}/log_running", json=RUNNING, headers=auth).json() == {"status": "R"}
    assert client.post(f"{BASE}/{a}/log_report_by", json={"next_report_increment": 279}, headers=auth).json() == {
        "status": "R"
    }
    done = {"nodename": "node1", "exit_status": 0, "usage": {"maxrss_bytes": 1024, "wallclock_s": 1.5}}
    assert client.post(f"{BASE}/{a}/log_done", json=done, headers=auth).json() == {"status": "D"}
    view = svc.queries.task_instance(a)
    assert (view.status, view.nodename, view.maxrss, view.wallclock) == ("D", "node1", 1024, 1.5)
    # A retried report after success is a no-op; an error after done is illegal (409).
    assert client.post(f"{BASE}/{a}/log_done", json=done, headers=auth).json() == {"status": "D"}
    error = {"error_state": "E", "exit_status": 1, "error_message": "late"}
    assert client.post(f"{BASE}/{a}/log_error", json=error, headers=auth).status_code == 409
    assert svc.queries.task_instance(a).status == "D"


def test_error_report_stores_the_stderr_tail(setup: tuple[TestClient, Services, list[int]]) -> None:
    client, svc, (_, b) = setup
    auth = {"Authorization": "Bearer token-b"}
    client.post(f"{BASE}/{b}/log_running", json={**RUNNING, "distributor_id": "2"}, headers=auth)
    error = {"error_state": "Z", "exit_status": 137, "error_message": "Killed: out of memory", "nodename": "n"}
    assert client.post(f"{BASE}/{b}/log_error", json=error, headers=auth).json() == {"status": "Z"}
    assert svc.queries.error_logs(b) == ["Killed: out of memory"]
    with svc.engine.connect() as conn:
        task_status = conn.execute(
            sa.select(models.Task.status).join(models.TaskInstance).where(models.TaskInstance.id == b)
        ).scalar_one()
    assert task_status == "A"  # resource kill: the task waits for scaled resources


def test_bad_body_names_the_field(setup: tuple[TestClient, Services, list[int]]) -> None:
    client, _, (a, _) = setup
    auth = {"Authorization": "Bearer token-a"}
    response = client.post(f"{BASE}/{a}/log_error", json={"error_state": "D"}, headers=auth)
    assert response.status_code == 422
    assert "error_state" in response.text


def test_concurrent_heartbeats_are_coalesced_and_answer_each_caller(
    setup: tuple[TestClient, Services, list[int]],
) -> None:
    import asyncio

    from jobmon_airflow.server.state import HeartbeatCoalescer
    from jobmon_airflow.service import Unauthorized
    from jobmon_airflow.service.core import transition_task_instances

    _, svc, (a, b) = setup
    svc.reports.log_running(a, "n", 1, "1", 279)
    svc.reports.log_running(b, "n", 1, "2", 279)
    with db.session_scope(svc.engine) as s:  # b's heartbeats stopped: triaging
        transition_task_instances(s, [b], "T")
    statements: list[str] = []
    sa.event.listen(svc.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    coalescer = HeartbeatCoalescer(svc.reports, window=0.2)

    async def beats() -> list[str | BaseException]:
        return await asyncio.gather(
            coalescer.report(a, "token-a", 279),
            coalescer.report(b, "token-b", 279),
            coalescer.report(a, "token-b", 279),  # a forged heartbeat in the same batch
            return_exceptions=True,
        )

    answer_a, answer_b, forged = asyncio.run(beats())
    batch = list(statements)  # what the batch ran, before the checks below read the database themselves
    assert (answer_a, answer_b) == ("R", "R")  # b's late heartbeat brought it back from triage (T→R)
    assert isinstance(forged, Unauthorized)
    assert svc.queries.task_instance(b).status == "R"
    token_checks = [s for s in batch if "token_hash" in s.lower() and s.lstrip().upper().startswith("SELECT")]
    assert len(token_checks) == 1  # the three tokens checked in one query
    updates = [s for s in batch if s.lstrip().upper().startswith("UPDATE TASK_INSTANCE SET REPORT_BY_DATE")]
    assert any(" IN " in u.upper() for u in updates)  # both heartbeats in one statement
