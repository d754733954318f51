"""The worker's reports as the service writes them: late final reports after triage, per-instance heartbeat
increments, the submitter's job id, ids out of range."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobmon_airflow.records import Usage
from jobmon_airflow.service import Services, Unauthorized
from jobmon_airflow.service.core import utcnow
from tests.unit.server.helpers import TI, make_instances, report_by, token


def task_status(svc: Services, ti: int) -> str:
    from jobmon_airflow import models

    with svc.engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(models.Task.status).join(models.TaskInstance).where(models.TaskInstance.id == ti)
            ).scalar_one()
        )


# -- 3: a late final report after triage is recorded


def test_late_done_after_triage_is_recorded(services: Services) -> None:
    """A State Manager outage longer than the deadline: the instance is T when the worker's done arrives."""
    (ti,) = make_instances(services, ["T"])
    assert services.reports.log_done(ti, "node2", Usage(maxrss_bytes=2048, wallclock_s=3.0)) == "D"
    view = services.queries.task_instance(ti)
    assert (view.status, view.nodename, view.maxrss, view.wallclock) == ("D", "node2", 2048, 3.0)
    assert task_status(services, ti) == "D"
    assert services.reports.log_done(ti, "node2", None) == "D"  # an HTTP retry of it: idempotent


@pytest.mark.parametrize(("error_state", "task_after"), [("E", "G"), ("Z", "A"), ("U", "G"), ("F", "F")])
def test_late_error_after_triage_is_recorded(services: Services, error_state: str, task_after: str) -> None:
    """E goes T → R → E (E is legal from R only); Z, U and F are legal from T directly."""
    (ti,) = make_instances(services, ["T"])
    assert services.reports.log_error(ti, error_state, 3, "late error", "node2", None) == error_state
    assert services.queries.error_logs(ti)[-1] == "late error"
    assert task_status(services, ti) == task_after


def test_late_done_of_an_instance_that_is_not_triaging_is_unchanged(services: Services) -> None:
    """Only T goes through R: an error already recorded still refuses a done (409 over HTTP)."""
    from jobmon_airflow.states import IllegalTransition

    (ti,) = make_instances(services, ["E"])
    with pytest.raises(IllegalTransition):
        services.reports.log_done(ti, "node", None)
    assert services.queries.task_instance(ti).status == "E"


# -- 8: each instance's deadline moves by its own increment


def test_log_report_by_many_applies_each_instance_its_own_increment(services: Services) -> None:
    short, long_, late = make_instances(services, ["R", "R", "T"])
    before = utcnow()
    statuses = services.reports.log_report_by_many({short: 60.0, long_: 86_400.0, late: 60.0})
    after = utcnow()
    assert statuses == {short: "R", long_: "R", late: "R"}
    for ti, increment in ((short, 60), (late, 60), (long_, 86_400)):
        deadline = report_by(services, ti)
        assert before + timedelta(seconds=increment) <= deadline <= after + timedelta(seconds=increment), ti


def test_log_report_by_many_one_update_per_distinct_increment(services: Services) -> None:
    ids = make_instances(services, ["R"] * 6)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(services.engine, "before_cursor_execute", record)
    try:
        services.reports.log_report_by_many({ti: 90.0 if i % 2 else 270.0 for i, ti in enumerate(ids)})
    finally:
        sa.event.remove(services.engine, "before_cursor_execute", record)
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE TASK_INSTANCE SET REPORT_BY_DATE")]
    assert len(updates) == 2, updates


# -- 11: the submitter's job id is authoritative


def test_log_running_keeps_the_job_id_recorded_at_submission(services: Services) -> None:
    (ti,) = make_instances(services, ["O"])
    assert services.reports.log_running(ti, "node", 1, "forged-99", 90) == "R"
    assert services.queries.task_instance(ti).distributor_id == f"job-{ti}"
    (logged,) = services.queries.error_logs(ti)
    assert "forged-99" in logged and f"job-{ti}" in logged


def test_log_running_fills_in_a_missing_job_id_and_a_matching_one_logs_nothing(services: Services) -> None:
    same, missing = make_instances(services, ["O", "O"])
    with services.engine.begin() as conn:
        conn.execute(TI.update().where(TI.c.id == missing).values(distributor_id=None))
    assert services.reports.log_running(same, "node", 1, f"job-{same}", 90) == "R"
    assert services.reports.log_running(missing, "node", 1, "77.3", 90) == "R"
    assert services.queries.task_instance(missing).distributor_id == "77.3"
    assert services.queries.error_logs(same) == [] and services.queries.error_logs(missing) == []


# -- 9, 14: ids out of range, revoked tokens


def test_ids_out_of_range_authorize_nothing(services: Services) -> None:
    (ti,) = make_instances(services, ["R"])
    answer = services.reports.authorized({ti: [token(ti)], 0: ["x"], -1: ["x"], 2**63: ["x"], 10**30: ["x"]})
    assert answer == {ti: {token(ti)}, 0: set(), -1: set(), 2**63: set(), 10**30: set()}
    with pytest.raises(Unauthorized):
        services.reports.authenticate(2**64, "x")


def test_revoked_means_final() -> None:
    from jobmon_airflow.service.reports import Revoked, revoked

    assert issubclass(Revoked, Unauthorized)
    assert [s for s in "QIORDEFKTUWXZ" if revoked(s)] == list("DEFUWXZ")
