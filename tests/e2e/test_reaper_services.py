"""The workflow reaper on Airflow's real services: Grid Engine jobs whose Airflow task was marked failed, or whose
DAG run was deleted, through the REST API while the triggerer was down (so nobody deleted them) are found by the
reaper DAG, run by the real scheduler and asking the real REST API, and triaged: jobs deleted, instances closed.
(Runs lost with their DAG run, and Slack, are covered against real Grid Engine and MariaDB in
tests/integration/test_reaper_gridengine.py: Airflow 3.3 deletes only finished DAG runs, whose Jobmon runs the
listener has already ended.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobmon_airflow import db, models
from jobmon_airflow.clusters.base import JobState
from jobmon_airflow.clusters.gridengine import GridEngineCluster
from jobmon_airflow.service import Services
from tests.conftest import free_port
from tests.support.airflow_services import AirflowAPI, airflow_services, services_env, wait_for

pytestmark = [pytest.mark.airflow_services, pytest.mark.gridengine]

ROOT = Path(__file__).resolve().parents[2]
VICTIM = """
from datetime import datetime
from airflow.sdk import DAG
from jobmon_airflow.operators import JobmonTaskOperator

with DAG("e2e_reaper_victim", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    JobmonTaskOperator(task_id="sleeper", command="sleep 600", cluster="gridengine", poll_interval=2)
"""


@pytest.fixture(scope="module")
def airflow(gridengine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("reaper-services")
    dags = home / "dags"
    dags.mkdir()
    (dags / "victim.py").write_text(VICTIM)
    shutil.copy(ROOT / "dags" / "jobmon_workflow_reaper.py", dags)
    logs = home / "sge-logs"
    logs.mkdir()
    port = free_port()
    env = services_env(home, dags, port, parallelism=4)
    env.update(
        {
            "AIRFLOW_CONN_GRIDENGINE_DEFAULT": json.dumps({"conn_type": "gridengine", "extra": {"log_dir": str(logs)}}),
            "AIRFLOW_CONN_AIRFLOW_API_DEFAULT": json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{port}"}),
            "JOBMON_REAPER_SCHEDULE": "none",  # passes are triggered here
            "JOBMON_REAPER_ORPHAN_MIN_AGE_S": "0",
            **gridengine,
        }
    )
    try:
        with airflow_services(env, port, home / "logs", migrate_timeout=300, stop_timeout=20) as client:
            client.wait_healthy(180)
            yield client
    finally:
        for log in sorted((home / "logs").glob("*.log")):
            print(f"==== {log.name} (tail) ====\n" + log.read_text()[-3000:])


def instance_of(svc: Services, run_id: str) -> int | None:
    """The Jobmon task instance of the victim DAG's run ``run_id`` (None before it has one)."""
    ti, task, wf = (t.__table__ for t in (models.TaskInstance, models.Task, models.Workflow))
    with svc.engine.connect() as conn:
        return conn.execute(
            sa.select(ti.c.id).join(task, task.c.id == ti.c.task_id).join(wf, wf.c.id == task.c.workflow_id)
            .where(wf.c.run_id == run_id)
        ).scalar()  # fmt: skip


def test_jobs_left_behind_while_the_triggerer_was_down_are_reaped(airflow: Any) -> None:
    """Run A's task is marked failed, run B is deleted, both through the REST API while the triggerer is down:
    nobody deletes their jobs. One reaper pass on the real scheduler: A's running job is deleted and its instance
    closed (its true outcome: the job was still running); B's (its task instance no longer exists) too."""
    api = airflow
    assert isinstance(api, AirflowAPI) and api.services is not None
    dag_id = "e2e_reaper_victim"
    api.unpause(dag_id, timeout=120)
    run_a, run_b = "marked_failed", "deleted"
    for run_id in (run_a, run_b):  # explicit ids: two triggers in one instant would get the same generated one
        api.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "dag_run_id": run_id})
    for run_id in (run_a, run_b):
        wait_for(lambda r=run_id: api.ti_state(dag_id, r, "sleeper") == "deferred", 180, "the tasks to defer")
    svc = Services.for_engine(db.get_engine(f"sqlite:///{api.env['JOBMON_AIRFLOW_HOME']}/jobmon.sqlite"))
    ti_a, ti_b = instance_of(svc, run_a), instance_of(svc, run_b)
    assert ti_a is not None and ti_b is not None
    wait_for(lambda: svc.queries.task_instance(ti_a).status == "R", 180, "A's job to run")
    jobs = [svc.queries.task_instance(i).distributor_id for i in (ti_a, ti_b)]
    assert None not in jobs

    api.services.kill("triggerer")  # nobody left to run the triggers' on_kill
    try:
        reap(api, svc, dag_id, (run_a, run_b), (ti_a, ti_b))
    finally:
        api.services.start("triggerer")  # as the module found it (and its teardown expects)
        subprocess.run(["qdel", *[j for j in jobs if j]], capture_output=True, check=False)  # if an assertion failed


def reap(api: AirflowAPI, svc: Services, dag_id: str, runs: tuple[str, str], tis: tuple[int, int]) -> None:
    (run_a, run_b), (ti_a, ti_b) = runs, tis
    job_a = svc.queries.task_instance(ti_a).distributor_id
    assert job_a is not None
    api.request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_a}/taskInstances/sleeper", {"new_state": "failed"})
    # Airflow deletes only finished DAG runs: B is marked failed first.
    api.request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_b}", {"state": "failed"})
    api.request("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{run_b}")
    wait_for(lambda: api.run_state(dag_id, run_a) == "failed", 60, "the DAG run to fail")
    sge = GridEngineCluster()
    assert sge.statuses([job_a])[job_a].state == JobState.RUNNING  # left running: what the reaper is for
    assert svc.queries.task_instance(ti_a).status == "R"
    assert svc.queries.task_instance(ti_b).status in ("O", "R")  # B's job is queued or running, nobody watching

    reaper = "jobmon_workflow_reaper"
    api.unpause(reaper, timeout=120)
    reap_run = api.trigger(reaper)
    wait_for(lambda: api.run_state(reaper, reap_run) in ("success", "failed"), 240, "the reaper's pass")
    assert api.run_state(reaper, reap_run) == "success", api.ti_states(reaper, reap_run)

    assert svc.queries.task_instance(ti_a).status == "F"  # K (job deleted), then closed: nobody is left to report
    assert any("orphaned: its Airflow task instance is failed" in e for e in svc.queries.error_logs(ti_a))
    assert svc.queries.task_instance(ti_b).status == "F"
    assert any("Airflow task instance no longer exists" in e for e in svc.queries.error_logs(ti_b))
    for ti in (ti_a, ti_b):
        job = svc.queries.task_instance(ti).distributor_id
        assert job is not None
        wait_for(lambda j=job: sge.statuses([j])[j].state == JobState.GONE, 60, "the jobs to leave Grid Engine")
    xcom = api.request(
        "GET", f"/api/v2/dags/{reaper}/dagRuns/{reap_run}/taskInstances/triage_orphans/xcomEntries/return_value"
    )
    triaged = xcom["value"] if isinstance(xcom["value"], list) else json.loads(xcom["value"])
    assert sorted((t["task_instance_id"], t["new_status"]) for t in triaged) == sorted([(ti_a, "F"), (ti_b, "F")])
    # Both Jobmon runs were ended E by the listener when their DAG runs failed: no run was lost, none reaped.
    wfr = models.WorkflowRun.__table__
    with svc.engine.connect() as conn:
        assert set(conn.execute(sa.select(wfr.c.status)).scalars()) == {"E"}
    assert api.request("GET", f"/api/v2/dags/{reaper}/dagRuns/{reap_run}/taskInstances/notify")["state"] == "success"
