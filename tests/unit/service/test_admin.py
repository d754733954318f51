"""The CLI's writes: owner checks, bounds, live jobs refused, reset (full and partial)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.service import NotFound, Services, Unauthorized
from jobmon_airflow.service.admin import MAX_TASK_UPDATE, NotAllowed
from jobmon_airflow.service.core import WFR
from tests.support.insights import KnownWorkflow, build_known_workflow


@pytest.fixture
def known(services: Services) -> KnownWorkflow:
    return build_known_workflow(services)


def _end_run(services: Services, known: KnownWorkflow, status: str = "E") -> None:
    with services.engine.begin() as conn:
        conn.execute(sa.update(WFR).where(WFR.c.id == known.workflow_run_id).values(status=status))


def test_reset_needs_the_owner_and_an_ended_run(services: Services, known: KnownWorkflow) -> None:
    admin = services.admin
    with pytest.raises(NotAllowed, match="RUNNING"):
        admin.reset_workflow(known.workflow_id, user="alice")
    _end_run(services, known)
    with pytest.raises(Unauthorized, match="belongs to alice"):
        admin.reset_workflow(known.workflow_id, user="bob")
    assert admin.reset_workflow(known.workflow_id, user="alice", partial=True) == 3  # model_5, model_6, agg
    tasks = {t.name: t for t in services.insights.tasks(known.workflow_id).items}
    assert tasks["prep"].status == "D" and (tasks["model_5"].status, tasks["model_5"].num_attempts) == ("G", 0)
    assert admin.reset_workflow(known.workflow_id, user="alice") == 10
    assert all(t.status == "G" and t.num_attempts == 0 for t in services.insights.tasks(known.workflow_id).items)
    assert services.insights.workflow(known.workflow_id).summary.status == "G"


def test_task_update_bounds_and_live_jobs(services: Services, known: KnownWorkflow) -> None:
    admin = services.admin
    with pytest.raises(ValueError, match="status: expected D or G"):
        admin.update_task_statuses(known.workflow_id, [known.agg], "F", user="alice")
    with pytest.raises(ValueError, match=f"at most {MAX_TASK_UPDATE}"):
        admin.update_task_statuses(known.workflow_id, list(range(1, MAX_TASK_UPDATE + 2)), "D", user="alice")
    with pytest.raises(NotFound):
        admin.update_task_statuses(known.workflow_id, [999_999], "D", user="alice")
    # agg gets a queued instance: a job that may run; a manual status must not race it
    services.lifecycle.queue_task_instances(
        known.workflow_run_id, services.binding.cluster_id("local", "local"), [known.agg], Resources(), "O",
        QueueLimits("all.q"),
    )  # fmt: skip
    live = services.insights.task(known.agg).instances[0].id
    services.lifecycle.instantiate([live], {}, {})
    with pytest.raises(NotAllowed, match="may still run"):
        admin.update_task_statuses(known.workflow_id, [known.agg], "D", user="alice")
    result = admin.update_task_statuses(known.workflow_id, [known.models[5]], "D", user="alice")
    assert result.updated == (known.models[5],) and services.insights.task(known.models[5]).status == "D"


def test_concurrency_of_one_array_or_all(services: Services, known: KnownWorkflow) -> None:
    with pytest.raises(ValueError, match="max_concurrently_running"):
        services.admin.set_concurrency(known.workflow_id, 0, user="alice")
    with pytest.raises(NotFound, match="array 'nope'"):
        services.admin.set_concurrency(known.workflow_id, 5, user="alice", array="nope")
    assert services.admin.set_concurrency(known.workflow_id, 5, user="alice") == []
    assert services.insights.workflow(known.workflow_id).summary.max_concurrently_running == 5
