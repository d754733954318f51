"""``log_ran``: the running and the final report of a short command in one request and one transaction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from jobmon_airflow import db, models
from jobmon_airflow.server.app import create_standalone_app
from jobmon_airflow.service import Services, core
from tests.unit.server.helpers import ERROR_LOG, TI, auth, make_instances, report_by, rows

BASE = "/jobmon/api/state/task_instance"
RAN = {
    "nodename": "node7",
    "process_group_id": 42,
    "next_report_increment": 279,
    "status": "D",
    "exit_status": 0,
    "usage": {"maxrss_bytes": 2048, "wallclock_s": 0.02, "cpu_s": 0.01},
}


@pytest.fixture
def svc(tmp_path: Path) -> Services:
    services = Services.for_engine(db.get_engine(f"sqlite:///{tmp_path / 'jobmon.sqlite'}"))
    db.upgrade(services.engine)
    return services


@pytest.fixture
def client(svc: Services) -> TestClient:
    return TestClient(create_standalone_app(svc.engine.url.render_as_string(hide_password=False)))


@pytest.fixture
def transitions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, list[int]]]:
    """Every task-instance transition made, in order: (new status, its instance ids) as the state machine took
    them (the building block every write goes through)."""
    made: list[tuple[str, str, list[int]]] = []
    real = core.transition

    def spy(session: Any, fsm: Any, table: Any, ids: Any, new: str, values: Any = None) -> list[int]:
        changed = real(session, fsm, table, ids, new, values)
        if fsm.name == "task_instance" and changed:
            made.append((fsm.name, new, list(changed)))
        return changed

    monkeypatch.setattr(core, "transition", spy)
    return made


def post(client: TestClient, ti: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    content = body if isinstance(body, str) else json.dumps(body)
    return client.post(
        f"{BASE}/{ti}/log_ran", content=content, headers={"Content-Type": "application/json", **(headers or {})}
    )


def task_status(svc: Services, ti: int) -> str:
    with svc.engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(models.Task.status).join(models.TaskInstance).where(models.TaskInstance.id == ti)
            ).scalar_one()
        )


def test_one_request_makes_both_transitions(
    svc: Services, client: TestClient, transitions: list[tuple[str, str, list[int]]]
) -> None:
    (ti,) = make_instances(svc, ["O"])
    transitions.clear()
    answer = post(client, ti, RAN, auth(ti))

    assert (answer.status_code, answer.json()) == (200, {"status": "D"})
    assert [(new, ids) for _, new, ids in transitions] == [("R", [ti]), ("D", [ti])]  # O → R → D
    view = svc.queries.task_instance(ti)
    assert (view.status, view.nodename, view.maxrss, view.wallclock) == ("D", "node7", 2048, 0.02)
    assert view.distributor_id == f"job-{ti}"  # the job id from the submission stays
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(TI.c.process_group_id).where(TI.c.id == ti)).scalar() == 42
    assert report_by(svc, ti) is not None  # the running half's deadline was written
    assert task_status(svc, ti) == "D"


@pytest.mark.parametrize(
    ("status", "path", "task"),
    [("E", ["R", "E"], "G"), ("Z", ["R", "Z"], "A"), ("F", ["R", "T", "F"], "F")],
)
def test_an_error_end_takes_the_path_of_the_two_reports(
    svc: Services,
    client: TestClient,
    transitions: list[tuple[str, str, list[int]]],
    status: str,
    path: list[str],
    task: str,
) -> None:
    (ti,) = make_instances(svc, ["O"])
    transitions.clear()
    body = {**RAN, "status": status, "exit_status": 3, "error_message": "disk quota exceeded"}
    answer = post(client, ti, body, auth(ti))

    assert (answer.status_code, answer.json()) == (200, {"status": status})
    assert [new for _, new, _ in transitions] == path
    assert svc.queries.error_logs(ti) == ["disk quota exceeded"]
    assert task_status(svc, ti) == task


def test_a_retry_after_a_lost_reply_transitions_nothing(
    svc: Services, client: TestClient, transitions: list[tuple[str, str, list[int]]]
) -> None:
    done, error = make_instances(svc, ["O", "O"])
    failed = {**RAN, "status": "E", "exit_status": 1, "error_message": "boom"}
    assert post(client, done, RAN, auth(done)).json() == {"status": "D"}
    assert post(client, error, failed, auth(error)).json() == {"status": "E"}
    before = rows(svc), rows(svc, ERROR_LOG), task_status(svc, done), task_status(svc, error)
    made = len(transitions)

    for _ in range(2):
        again = post(client, done, RAN, auth(done))
        assert (again.status_code, again.json()) == (200, {"status": "D"})
        again = post(client, error, failed, auth(error))
        assert (again.status_code, again.json()) == (200, {"status": "E"})

    assert len(transitions) == made
    assert (rows(svc), rows(svc, ERROR_LOG), task_status(svc, done), task_status(svc, error)) == before


def test_a_kill_requested_before_the_report_is_kept_in_the_history(
    svc: Services, client: TestClient, transitions: list[tuple[str, str, list[int]]]
) -> None:
    """Killed while launched (K), the command ran anyway: the running half leaves K alone, the end is K → D, as a
    log_running (answered K) then log_done would make it."""
    (ti,) = make_instances(svc, ["O"])
    svc.lifecycle.request_kill([ti])
    transitions.clear()
    answer = post(client, ti, RAN, auth(ti))

    assert (answer.status_code, answer.json()) == (200, {"status": "D"})
    assert [new for _, new, _ in transitions] == ["D"]


def test_a_triaging_instance_goes_back_through_running(
    svc: Services, client: TestClient, transitions: list[tuple[str, str, list[int]]]
) -> None:
    (ti,) = make_instances(svc, ["T"])
    transitions.clear()
    assert post(client, ti, RAN, auth(ti)).json() == {"status": "D"}
    assert [new for _, new, _ in transitions] == ["R", "D"]


def test_both_halves_or_neither(svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """One transaction: when the end fails, the running half is not kept either."""
    (ti,) = make_instances(svc, ["O"])
    before = rows(svc)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr("jobmon_airflow.service.reports.finish_instance", broken)
    with pytest.raises(RuntimeError):
        svc.reports.log_ran(ti, "node7", 42, None, 279, "D", 0, "", None)
    assert rows(svc) == before
    assert svc.queries.task_instance(ti).status == "O"


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, 401), ({"Authorization": "Bearer nope"}, 403), ("other", 403)],
    ids=["no-token", "wrong-token", "token-of-another-instance"],
)
def test_authentication(svc: Services, client: TestClient, headers: Any, code: int) -> None:
    ti, other = make_instances(svc, ["O", "O"])
    before = rows(svc), rows(svc, ERROR_LOG)
    answer = post(client, ti, RAN, auth(other) if headers == "other" else headers)

    assert answer.status_code == code
    assert (rows(svc), rows(svc, ERROR_LOG)) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**RAN, "status": "R"}, "status"),
        ({**RAN, "status": "K"}, "status"),
        ({k: v for k, v in RAN.items() if k != "status"}, "status"),
        ({k: v for k, v in RAN.items() if k != "next_report_increment"}, "next_report_increment"),
        ({k: v for k, v in RAN.items() if k != "nodename"}, "nodename"),
        ({**RAN, "exit_status": 256}, "exit_status"),
        ({**RAN, "error_message": "x" * 20_001}, "error_message"),
        ({**RAN, "usage": {"maxrss_bytes": -1}}, "maxrss_bytes"),
        ('{"nodename": "n", "next_report_increment": NaN, "status": "D"}', "next_report_increment"),
        ("not json", "json"),
    ],
)
def test_a_bad_body_is_422_and_changes_nothing(svc: Services, client: TestClient, body: Any, field: str) -> None:
    (ti,) = make_instances(svc, ["O"])
    before = rows(svc)
    answer = post(client, ti, body, auth(ti))

    assert answer.status_code == 422, answer.text
    assert field in answer.text.lower() and "input" not in answer.json()["detail"][0]
    assert rows(svc) == before


def test_a_done_instance_refuses_a_late_error_with_409(svc: Services, client: TestClient) -> None:
    (ti,) = make_instances(svc, ["D"])
    answer = post(client, ti, {**RAN, "status": "E", "exit_status": 1}, auth(ti))
    assert answer.status_code == 409
    assert svc.queries.task_instance(ti).status == "D"
