"""``/jobmon/metrics``: off without a token file, 401/403 without the right bearer token, Prometheus' text format
with it; every request is timed by route (ids folded) and an accepted heartbeat counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from jobmon_airflow import db
from jobmon_airflow.server.app import create_standalone_app
from jobmon_airflow.server.metrics import TOKEN_FILE_ENV, route_label
from jobmon_airflow.service import Services
from tests.unit.server.helpers import auth, make_instances


@pytest.fixture
def client(tmp_path: Path) -> tuple[TestClient, int]:
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    svc = Services.for_engine(db.get_engine(url))
    db.ensure_schema(svc.engine)
    (ti,) = make_instances(svc, ["R"])
    return TestClient(create_standalone_app(url)), ti


def test_metrics_are_off_without_a_token_file(client: tuple[TestClient, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    assert client[0].get("/jobmon/metrics").status_code == 404


def test_metrics_need_the_token(
    client: tuple[TestClient, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "metrics.token"
    token.write_text("s3cret\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token))
    http, ti = client
    assert http.get("/jobmon/metrics").status_code == 401
    assert http.get("/jobmon/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    beats = REGISTRY.get_sample_value("jobmon_heartbeats_total") or 0.0
    reply = http.post(
        f"/jobmon/api/state/task_instance/{ti}/log_report_by", json={"next_report_increment": 60}, headers=auth(ti)
    )
    assert reply.status_code == 200, reply.text
    assert (
        http.post(f"/jobmon/api/state/task_instance/{ti}/log_report_by", json={"next_report_increment": 60}).status_code
        == 401
    )
    answer = http.get("/jobmon/metrics", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "jobmon_heartbeats_total" in answer.text
    assert 'route="/jobmon/api/state/task_instance/{id}/log_report_by"' in answer.text
    assert REGISTRY.get_sample_value("jobmon_heartbeats_total") == beats + 1  # the 401 one is not a heartbeat


def test_route_label_folds_ids_and_unknown_paths() -> None:
    assert (
        route_label("/jobmon/api/state/task_instance/123/log_done", 200)
        == "/jobmon/api/state/task_instance/{id}/log_done"
    )
    assert route_label("/jobmon/whatever/9", 404) == "other"
