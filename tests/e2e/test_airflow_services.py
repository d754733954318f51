"""End to end with Airflow's real services: API server (serving the Jobmon plugin's State Manager), scheduler,
DAG processor and triggerer, all started here; DAG runs driven through the REST API."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.support.airflow_services import AirflowAPI, airflow_services, services_env, wait_for

pytestmark = pytest.mark.airflow_services

DAGS = textwrap.dedent(
    """
    from datetime import datetime
    from airflow.sdk import DAG
    from jobmon_airflow.operators import JobmonTaskOperator

    with DAG("e2e_jobmon_quick", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
        a = JobmonTaskOperator(task_id="first", command="echo first", poll_interval=1)
        b = JobmonTaskOperator(task_id="second", command="echo second >&2", poll_interval=1)
        a >> b

    with DAG("e2e_jobmon_kill", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
        JobmonTaskOperator(task_id="sleeper", command="sleep 600", poll_interval=1)

    # Each mapped task fails its first attempt (exit 3) and succeeds on the retry Airflow must schedule.
    FLAKY = "mkdir -p MARKERS && test -e MARKERS/m{i} || {{ touch MARKERS/m{i}; exit 3; }}"
    with DAG("e2e_jobmon_mapped_retry", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
        JobmonTaskOperator.partial(task_id="flaky", poll_interval=1, max_attempts=2).expand(
            command=[FLAKY.format(i=i) for i in range(2)]
        )
    """
)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowAPI]:
    home = tmp_path_factory.mktemp("airflow-services")
    dags = home / "dags"
    dags.mkdir()
    (dags / "e2e_dags.py").write_text(DAGS.replace("MARKERS", str(home / "markers")))
    port = free_port()
    env = services_env(home, dags, port, parallelism=4)
    logs = home / "logs"
    try:
        with airflow_services(env, port, logs, migrate_timeout=300, stop_timeout=20) as client:
            client.wait_healthy(180)
            yield client
    finally:
        for log in sorted(logs.glob("*.log")):  # visible when a test failed
            print(f"==== {log.name} (tail) ====\n" + log.read_text()[-3000:])


def trigger(airflow: AirflowAPI, dag_id: str) -> str:
    """Unpause (the DAG processor may need up to 2 minutes to parse the file), then trigger a run."""
    airflow.unpause(dag_id, timeout=120)
    return airflow.trigger(dag_id)


def jobmon_rows(airflow: AirflowAPI, dag_id: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("jobmon-airflow")), "workflow", "status", "--dag-id", dag_id, "-n"],
        env=airflow.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return list(json.loads(out))


def test_dag_run_through_scheduler_triggerer_and_plugin_state_manager(airflow: AirflowAPI) -> None:
    run_id = trigger(airflow, "e2e_jobmon_quick")
    wait_for(lambda: airflow.run_state("e2e_jobmon_quick", run_id) in ("success", "failed"), 240, "the DAG run")
    assert airflow.run_state("e2e_jobmon_quick", run_id) == "success"
    (row,) = jobmon_rows(airflow, "e2e_jobmon_quick")
    assert (row["TASKS"], row["DONE"], row["WF_STATUS"]) == (2, 2, "DONE")  # the listener ended the run


def test_marking_a_deferred_task_failed_kills_its_job(airflow: AirflowAPI) -> None:
    from jobmon_airflow import db
    from jobmon_airflow.service import Services

    dag_id = "e2e_jobmon_kill"
    run_id = trigger(airflow, dag_id)
    wait_for(lambda: airflow.ti_state(dag_id, run_id, "sleeper") == "deferred", 180, "the task to defer")
    url = f"sqlite:///{airflow.env['JOBMON_AIRFLOW_HOME']}/jobmon.sqlite"
    svc = Services.for_engine(db.get_engine(url))
    (wf,) = jobmon_rows(airflow, dag_id)
    (task,) = svc.queries.workflow_tasks(wf["WF_ID"])
    ti_id = task["TASK_INSTANCE_ID"]
    wait_for(lambda: svc.queries.task_instance(ti_id).status == "R", 60, "the job to run")
    pgid = svc.queries.task_instance(ti_id)
    airflow.request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/sleeper", {"new_state": "failed"})
    wait_for(lambda: svc.queries.task_instance(ti_id).status == "K", 60, "the trigger's on_kill to record K")
    cluster_job = pgid.distributor_id
    assert cluster_job is not None

    from jobmon_airflow.clusters.local import LocalCluster

    local = LocalCluster(Path(airflow.env["JOBMON_AIRFLOW_HOME"]) / "local-cluster")
    wait_for(lambda: local.statuses([cluster_job])[cluster_job].state.value == "gone", 60, "the job to be deleted")
    assert local.exit_info([cluster_job])[cluster_job].kind.value == "deleted"


def test_mapped_tasks_are_retried_by_the_scheduler(airflow: AirflowAPI) -> None:
    """max_attempts=2 on partial(): the scheduler gives each mapped task one retry, which succeeds."""
    dag_id = "e2e_jobmon_mapped_retry"
    run_id = trigger(airflow, dag_id)
    wait_for(lambda: airflow.run_state(dag_id, run_id) in ("success", "failed"), 300, "the DAG run")
    assert airflow.run_state(dag_id, run_id) == "success"
    tries = [
        airflow.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/flaky/{i}")["try_number"]
        for i in range(2)
    ]
    assert tries == [2, 2]
    (row,) = jobmon_rows(airflow, dag_id)
    assert (row["TASKS"], row["DONE"], row["RETRIES"]) == (2, 2, 2)
