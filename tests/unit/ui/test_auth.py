"""Airflow users for the query API, through Airflow's real auth manager and JWTs.

The auth manager is a SimpleAuthManager subclass (configured through ``AIRFLOW__CORE__AUTH_MANAGER``, as an
Airflow deployment would) that denies one DAG to viewers, so DAG filtering is Airflow's decision, not ours.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from jobmon_airflow import db
from jobmon_airflow.server.app import create_app
from jobmon_airflow.service import Services
from jobmon_airflow.ui.auth import AirflowViewerAuth
from tests.support.insights import build_known_workflow

pytestmark = pytest.mark.usefixtures("airflow_db")

SECRET_DAG = "secret_dag"


def _denying_class() -> type:
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    class SecretDagDenied(SimpleAuthManager):
        """Viewers may read every DAG but ``secret_dag``; admins everything."""

        def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
            if details is not None and details.id == SECRET_DAG and user.role.upper() != "ADMIN":
                return False
            return bool(super().is_authorized_dag(method=method, user=user, access_entity=access_entity,
                                                  details=details))  # fmt: skip

    return SecretDagDenied


# Importable by dotted path for AIRFLOW__CORE__AUTH_MANAGER.
SecretDagDenied = _denying_class()


@pytest.fixture
def airflow_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    from airflow.api_fastapi import app as api_app

    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", f"{__name__}.SecretDagDenied")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-secret-of-this-airflow-" + "x" * 64)
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,vera:viewer")
    before = api_app._AuthManagerState.instance
    manager = api_app.create_auth_manager()
    assert type(manager).__name__ == "SecretDagDenied"
    yield manager
    api_app._AuthManagerState.instance = before


@pytest.fixture
def client(tmp_path: Path, airflow_auth: Any) -> tuple[TestClient, dict[str, int]]:
    url = f"sqlite:///{tmp_path / 'auth.sqlite'}"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    known = build_known_workflow(svc).workflow_id
    secret = svc.binding.bind_workflow_run(dag_id=SECRET_DAG, run_id="r").workflow_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # The plugin's wiring: the auth manager Airflow's API server initialised (get_auth_manager()).
        return TestClient(create_app(url, viewer_auth=AirflowViewerAuth())), {"known": known, "secret": secret}


def _token(manager: Any, name: str, role: str, **kwargs: Any) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return str(manager.generate_jwt(SimpleAuthManagerUser(username=name, role=role), **kwargs))


def test_a_token_issued_by_airflow_is_accepted_in_header_and_cookie(
    client: tuple[TestClient, dict[str, int]], airflow_auth: Any
) -> None:
    http, ids = client
    admin = _token(airflow_auth, "admin", "admin")
    listed = http.get("/api/workflows", headers={"Authorization": f"Bearer {admin}"})
    assert listed.status_code == 200 and listed.json()["total"] == 2
    http.cookies.set("_token", admin)  # what Airflow's UI holds
    assert http.get(f"/api/workflows/{ids['secret']}").status_code == 200
    http.cookies.clear()


def test_a_viewer_sees_only_the_dags_the_auth_manager_allows(
    client: tuple[TestClient, dict[str, int]], airflow_auth: Any
) -> None:
    http, ids = client
    headers = {"Authorization": f"Bearer {_token(airflow_auth, 'vera', 'viewer')}"}
    listed = http.get("/api/workflows", headers=headers).json()
    assert [w["dag_id"] for w in listed["items"]] == ["known_dag"]
    assert http.get(f"/api/workflows?dag_id={SECRET_DAG}", headers=headers).json()["total"] == 0
    assert http.get(f"/api/workflows/{ids['secret']}", headers=headers).status_code == 403
    assert http.get(f"/api/workflows/{ids['secret']}/errors", headers=headers).status_code == 403
    assert http.get(f"/api/workflows/{ids['known']}", headers=headers).status_code == 200


def test_forged_expired_and_missing_tokens_are_refused(
    client: tuple[TestClient, dict[str, int]], airflow_auth: Any
) -> None:
    http, ids = client
    genuine = jwt.decode(_token(airflow_auth, "admin", "admin"), options={"verify_signature": False})
    forged = jwt.encode(genuine, "another-secret-" + "y" * 64, algorithm="HS512")
    expired = _token(airflow_auth, "admin", "admin", expiration_time_in_seconds=-3600)
    time.sleep(0.01)
    for token in (forged, expired, "not-a-jwt", "token-1"):
        answer = http.get("/api/workflows", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401, (token[:20], answer.text)
    assert http.get("/api/workflows").status_code == 401
    http.cookies.set("_token", forged)
    assert http.get(f"/api/workflows/{ids['known']}").status_code == 401
    http.cookies.clear()
