"""The query API on a known workflow: authentication, DAG visibility, pagination, filters, CSV, bad input."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobmon_airflow.hashing import hash_token
from jobmon_airflow.service import Services
from tests.support.insights import ADMIN, KNOWN_ONLY, OTHER_ONLY, KnownWorkflow, known_app


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, Services, KnownWorkflow, int]]:
    app = known_app(tmp_path / "q.sqlite")
    yield app.client, app.svc, app.known, app.other


def test_every_query_route_needs_a_viewer(setup: tuple[TestClient, Services, KnownWorkflow, int]) -> None:
    client, _, known, _ = setup
    wf = known.workflow_id
    paths = [
        "/api/workflows", f"/api/workflows/{wf}", f"/api/workflows/{wf}/tasks", f"/api/workflows/{wf}/tasks.csv",
        f"/api/tasks/{known.prep}", f"/api/workflows/{wf}/errors", f"/api/workflows/{wf}/usage",
        f"/api/workflows/{wf}/usage.csv", "/api/openapi.json",
    ]  # fmt: skip
    for path in paths:
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer forged"}).status_code == 401, path
        assert client.get(path, headers=ADMIN).status_code == 200, path


def test_a_task_instance_token_reads_nothing(setup: tuple[TestClient, Services, KnownWorkflow, int]) -> None:
    client, svc, known, _ = setup
    (ti,) = [i.id for i in svc.insights.task(known.prep).instances]
    with svc.engine.begin() as conn:  # give the instance a State Manager token
        conn.exec_driver_sql(f"UPDATE task_instance SET token_hash = '{hash_token('ti-token')}' WHERE id = {ti}")
    headers = {"Authorization": "Bearer ti-token"}
    assert client.get("/api/workflows", headers=headers).status_code == 401
    assert client.get(f"/api/tasks/{known.prep}", headers=headers).status_code == 401
    # and a viewer's token is no task-instance token
    assert client.post(f"/api/state/task_instance/{ti}/log_report_by", headers=ADMIN,
                       json={"next_report_increment": 90}).status_code == 403  # fmt: skip


def test_viewers_see_only_their_dags(setup: tuple[TestClient, Services, KnownWorkflow, int]) -> None:
    client, _, known, other = setup
    listed = client.get("/api/workflows", headers=KNOWN_ONLY).json()
    assert [w["dag_id"] for w in listed["items"]] == ["known_dag"] and listed["total"] == 1
    assert client.get("/api/workflows?dag_id=other_dag", headers=KNOWN_ONLY).json()["total"] == 0
    assert client.get(f"/api/workflows/{other}", headers=KNOWN_ONLY).status_code == 403
    for path in (f"/api/workflows/{known.workflow_id}", f"/api/workflows/{known.workflow_id}/tasks",
                 f"/api/workflows/{known.workflow_id}/errors", f"/api/workflows/{known.workflow_id}/usage.csv",
                 f"/api/tasks/{known.prep}"):  # fmt: skip
        assert client.get(path, headers=OTHER_ONLY).status_code == 403, path
        assert client.get(path, headers=KNOWN_ONLY).status_code == 200, path
    assert client.get("/api/workflows/999999", headers=ADMIN).status_code == 404
    assert client.get("/api/tasks/999999", headers=ADMIN).status_code == 404


def test_workflows_filters_and_pages(setup: tuple[TestClient, Services, KnownWorkflow, int]) -> None:
    client, _, known, other = setup
    first = client.get("/api/workflows?limit=1", headers=ADMIN).json()
    assert first["total"] == 2 and [w["id"] for w in first["items"]] == [other] and first["next_offset"] == 1
    second = client.get("/api/workflows?limit=1&offset=1", headers=ADMIN).json()
    assert [w["id"] for w in second["items"]] == [known.workflow_id] and second["next_offset"] is None
    (wf,) = client.get("/api/workflows?user=alice", headers=ADMIN).json()["items"]
    assert wf["buckets"] == {"PENDING": 3, "SCHEDULED": 0, "RUNNING": 0, "DONE": 7, "FATAL": 0}
    assert client.get("/api/workflows?since=2999-01-01T00:00:00Z", headers=ADMIN).json()["total"] == 0
    assert client.get("/api/workflows?status=RUNNING&dag_id=known_dag", headers=ADMIN).json()["total"] == 1


def test_workflow_tasks_task_errors_usage(setup: tuple[TestClient, Services, KnownWorkflow, int]) -> None:
    client, _, known, _ = setup
    wf = known.workflow_id
    detail = client.get(f"/api/workflows/{wf}", headers=ADMIN).json()
    assert {t["name"]: t["tasks"] for t in detail["templates"]} == {"agg": 1, "model": 8, "prep": 1}
    tasks = client.get(f"/api/workflows/{wf}/tasks?bucket=PENDING&limit=2", headers=ADMIN).json()
    assert tasks["total"] == 3 and len(tasks["items"]) == 2 and tasks["next_offset"] == 2
    model7 = client.get(f"/api/tasks/{known.models[7]}", headers=ADMIN).json()
    assert [i["status"] for i in model7["instances"]] == ["D", "Z"]
    assert model7["instances"][1]["requested_resources"]["memory"] == 2
    errors = client.get(f"/api/workflows/{wf}/errors", headers=ADMIN).json()
    assert sum(g["count"] for g in errors) == 5 and max(g["task_count"] for g in errors) == 2
    (usage,) = client.get(f"/api/workflows/{wf}/usage?template=model", headers=ADMIN).json()
    assert usage["suggested"]["memory"] == "5G" and usage["memory_gib"]["count"] == 6


def test_csv_downloads(setup: tuple[TestClient, Services, KnownWorkflow, int]) -> None:
    client, _, known, _ = setup
    answer = client.get(f"/api/workflows/{known.workflow_id}/tasks.csv?template=model", headers=ADMIN)
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["name"] for r in rows] == [f"model_{i}" for i in range(8)]
    usage = list(csv.DictReader(io.StringIO(client.get(f"/api/workflows/{known.workflow_id}/usage.csv",
                                                       headers=ADMIN).text)))  # fmt: skip
    assert len(usage) == 12 and {r["template"] for r in usage} == {"model", "prep"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/api/workflows?limit=0", "limit"),
        ("/api/workflows?limit=100000", "limit"),
        ("/api/workflows?offset=-1", "offset"),
        ("/api/workflows?status=SLEEPY", "status"),
        ("/api/workflows?since=yesterday", "since"),
        ("/api/workflows?since=0001-01-01T00:00:00%2B14:00", "since"),
        ("/api/workflows?user=" + "u" * 151, "user"),
        ("/api/workflows/0", "workflow_id"),
        ("/api/workflows/99999999999999999999999", "workflow_id"),
        ("/api/workflows/1/tasks?bucket=LATE", "bucket"),
        ("/api/workflows/1/tasks?status=QQ", "status"),
        ("/api/workflows/1/usage?sample=-5", "sample"),
        ("/api/tasks/abc", "task_id"),
    ],
)
def test_bad_parameters_answer_422_naming_the_field(
    setup: tuple[TestClient, Services, KnownWorkflow, int], query: str, field: str
) -> None:
    client, _, known, _ = setup
    answer = client.get(query.replace("/1/", f"/{known.workflow_id}/"), headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert any(field in error["loc"] for error in answer.json()["detail"]), answer.text


def test_openapi_schema_lists_the_query_routes(setup: tuple[TestClient, Services, KnownWorkflow, int]) -> None:
    client, *_ = setup
    schema = client.get("/api/openapi.json", headers=ADMIN).json()
    assert {"/api/workflows", "/api/workflows/{workflow_id}/errors", "/api/tasks/{task_id}"} <= set(schema["paths"])
    assert not any(p.startswith("/api/state") for p in schema["paths"])
