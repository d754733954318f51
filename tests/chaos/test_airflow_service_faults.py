"""Airflow's own services fail under running Jobmon work: the triggerer, the scheduler and the API server (which
also hosts the State Manager and Airflow's execution API) are killed with SIGKILL and started again while mapped
tasks and an array run on the local cluster. Nothing may be lost or run twice."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.chaos.conftest import Fault
from tests.conftest import free_port
from tests.support.airflow_services import AirflowAPI, airflow_services, services_env, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.airflow_services]

MAPPED, ELEMENTS = 3, 4
DAGS = textwrap.dedent(
    f"""
    from datetime import datetime
    from airflow.sdk import DAG
    from jobmon_airflow.operators import JobmonArrayOperator, JobmonTaskOperator
    from jobmon_airflow.templates import TaskTemplate

    TEMPLATE = TaskTemplate(name="step", command_template="sleep {{seconds}}; echo {{i}}", node_args=["i"],
                            task_args=["seconds"])
    for fault in ("triggerer", "scheduler", "api-server"):
        with DAG(f"chaos_{{fault}}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
            JobmonTaskOperator.partial(task_id="mapped", poll_interval=1, heartbeat_interval=5).expand(
                command=[f"sleep 8; echo {{i}}" for i in range({MAPPED})]
            )
            JobmonArrayOperator(task_id="array", task_template=TEMPLATE, node_args={{"i": list(range({ELEMENTS}))}},
                                task_args={{"seconds": 8}}, poll_interval=1, heartbeat_interval=5)
    """
)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowAPI]:
    home = tmp_path_factory.mktemp("chaos-services")
    dags = home / "dags"
    dags.mkdir()
    (dags / "chaos_dags.py").write_text(DAGS)
    port = free_port()
    env = services_env(home, dags, port, parallelism=16)
    env["AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY"] = "5"
    logs = home / "logs"
    try:
        with airflow_services(env, port, logs, migrate_timeout=300, stop_timeout=20) as client:
            client.wait_healthy(180)
            yield client
    finally:
        for log in sorted(logs.glob("*.log")):  # visible when a test failed
            print(f"==== {log.name} (tail) ====\n" + log.read_text()[-3000:])


def jobmon_attempts(airflow: AirflowAPI, dag_id: str) -> list[dict[str, Any]]:
    """Every Jobmon task of the DAG's workflow with its instances' statuses and job ids."""
    from jobmon_airflow import db, models

    engine = db.get_engine(f"sqlite:///{airflow.env['JOBMON_AIRFLOW_HOME']}/jobmon.sqlite")
    task, ti, wf = models.Task.__table__, models.TaskInstance.__table__, models.Workflow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(task.c.id, task.c.name, task.c.status, ti.c.status.label("ti_status"), ti.c.distributor_id)
            .join(wf, wf.c.id == task.c.workflow_id)
            .outerjoin(ti, ti.c.task_id == task.c.id)
            .where(wf.c.dag_id == dag_id)
            .order_by(task.c.id, ti.c.id)
        ).all()
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(r.id, {"name": r.name, "status": r.status, "instances": [], "jobs": []})
        if r.ti_status:
            entry["instances"].append(r.ti_status)
            entry["jobs"].append(r.distributor_id)
    return list(out.values())


@pytest.mark.parametrize("service", ["triggerer", "scheduler", "api-server"])
def test_a_service_killed_and_restarted_mid_run_loses_nothing_and_runs_nothing_twice(
    airflow: AirflowAPI, service: str, fault: Fault
) -> None:
    dag_id = f"chaos_{service}"
    fault.fault = f"{service} SIGKILLed while {MAPPED} mapped tasks and a {ELEMENTS}-element array run, restarted"
    fault.runs = MAPPED + ELEMENTS
    airflow.unpause(dag_id, timeout=120)
    run_id = airflow.trigger(dag_id)
    # Jobs are running (8 s each, two at a time on the local cluster's two slots), the others queued.
    wait_for(lambda: any(a["instances"] == ["R"] for a in jobmon_attempts(airflow, dag_id)), 120, "a job to run")
    assert airflow.services is not None
    airflow.services.kill(service)
    time.sleep(20)  # jobs end while the service is down: their triggers fire, or would, and queued ones start
    airflow.services.start(service)
    if service == "api-server":
        airflow.wait_healthy(180)
    wait_for(lambda: airflow.run_state(dag_id, run_id) in ("success", "failed"), 420, "the DAG run to end", 3)
    attempts = jobmon_attempts(airflow, dag_id)
    # One instance is one job: every job ran to its end once, so a second instance would be a job run twice.
    fault.completed = sum(a["status"] == "D" and a["instances"][-1] == "D" for a in attempts)
    fault.duplicates = (
        sum(len(a["instances"]) - 1 for a in attempts)
        + len([j for a in attempts for j in a["jobs"]])
        - len({j for a in attempts for j in a["jobs"]})
    )
    fault.lost = fault.runs - fault.completed
    fault.notes.append(json.dumps({a["name"]: a["instances"] for a in attempts}))
    assert airflow.run_state(dag_id, run_id) == "success", fault.notes
    assert len(attempts) == fault.runs
    assert (fault.duplicates, fault.lost) == (0, 0), fault.notes
    assert all(a["instances"] == ["D"] for a in attempts), fault.notes  # the jobs ran once, their results kept
