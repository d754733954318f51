"""End to end with Airflow's real services: API server (serving the Jobmon plugin's State Manager), scheduler,
DAG processor and triggerer, all started here; DAG runs driven through the REST API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.airflow_services

AIRFLOW = str(Path(sys.executable).with_name("airflow"))

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
    """
)


class Airflow:
    def __init__(self, base: str, env: dict[str, str]):
        self.base = base
        self.env = env

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def trigger(self, dag_id: str) -> str:
        deadline = time.monotonic() + 120
        while True:  # the DAG processor needs a moment to parse the file
            try:
                self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        return str(self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def ti_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        ti = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        return ti["state"]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow-services")
    dags = home / "dags"
    dags.mkdir()
    (dags / "e2e_dags.py").write_text(DAGS)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "JOBMON"))},
        "AIRFLOW_HOME": str(home / "airflow"),
        "JOBMON_AIRFLOW_HOME": str(home / "jobmon"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        # Workers report to the State Manager the plugin mounts in the API server.
        "JOBMON_AIRFLOW_STATE_MANAGER_URL": f"{base}/jobmon",
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    logs = home / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen(
            [AIRFLOW, *cmd],
            env=env,
            stdout=(logs / f"{cmd[0]}.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for cmd in (["api-server", "-H", "127.0.0.1", "-p", str(port)], ["scheduler"], ["dag-processor"], ["triggerer"])
    ]
    client = Airflow(base, env)

    def healthy() -> bool:
        try:
            return client.request("GET", "/api/v2/monitor/health")["metadatabase"]["status"] == "healthy"
        except OSError:
            return False

    try:
        wait_for(healthy, 180, "the API server")
        yield client
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for log in sorted(logs.glob("*.log")):  # visible when a test failed
            print(f"==== {log.name} (tail) ====\n" + log.read_text()[-3000:])


def jobmon_rows(airflow: Airflow, dag_id: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("jobmon-airflow")), "workflow", "status", "--dag-id", dag_id, "-n"],
        env=airflow.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return list(json.loads(out))


def test_dag_run_through_scheduler_triggerer_and_plugin_state_manager(airflow: Airflow) -> None:
    run_id = airflow.trigger("e2e_jobmon_quick")
    wait_for(lambda: airflow.run_state("e2e_jobmon_quick", run_id) in ("success", "failed"), 240, "the DAG run")
    assert airflow.run_state("e2e_jobmon_quick", run_id) == "success"
    (row,) = jobmon_rows(airflow, "e2e_jobmon_quick")
    assert (row["TASKS"], row["DONE"], row["WF_STATUS"]) == (2, 2, "DONE")  # the listener ended the run


def test_marking_a_deferred_task_failed_kills_its_job(airflow: Airflow) -> None:
    from jobmon_airflow import db
    from jobmon_airflow.service import JobmonService

    dag_id = "e2e_jobmon_kill"
    run_id = airflow.trigger(dag_id)
    wait_for(lambda: airflow.ti_state(dag_id, run_id, "sleeper") == "deferred", 180, "the task to defer")
    url = f"sqlite:///{airflow.env['JOBMON_AIRFLOW_HOME']}/jobmon.sqlite"
    svc = JobmonService(db.get_engine(url))
    (wf,) = jobmon_rows(airflow, dag_id)
    (task,) = svc.workflow_tasks(wf["WF_ID"])
    ti_id = task["TASK_INSTANCE_ID"]
    wait_for(lambda: svc.status_of(ti_id) == "R", 60, "the job to run")
    pgid = svc.task_instance(ti_id)
    airflow.request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/sleeper", {"new_state": "failed"})
    wait_for(lambda: svc.status_of(ti_id) == "K", 60, "the trigger's on_kill to record K")
    cluster_job = pgid.distributor_id
    assert cluster_job is not None

    from jobmon_airflow.clusters.local import LocalCluster

    local = LocalCluster(Path(airflow.env["JOBMON_AIRFLOW_HOME"]) / "local-cluster")
    wait_for(lambda: local.statuses([cluster_job])[cluster_job].state.value == "gone", 60, "the job to be deleted")
    assert local.exit_info([cluster_job])[cluster_job].kind.value == "deleted"
