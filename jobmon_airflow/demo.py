"""The main job: run the example workflow on the embedded defaults (SQLite + the local cluster), no service to
install, then print Jobmon's status table. ``jobmon-airflow demo``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

DAG_ID = "example_jobmon_workflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(home: Path, tasks: int = 4) -> int:
    # Airflow reads its configuration when first imported: set everything before that.
    os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))
    os.environ.setdefault("JOBMON_AIRFLOW_HOME", str(home / "jobmon"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
    os.environ["JOBMON_EXAMPLE_TASKS"] = str(tasks)
    port = _free_port()
    os.environ["JOBMON_AIRFLOW_STATE_MANAGER_URL"] = f"http://127.0.0.1:{port}/jobmon"

    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db as airflow_db

    from jobmon_airflow.hooks.jobmon import JobmonHook
    from jobmon_airflow.server.app import start_in_thread
    from jobmon_airflow.service.queries import format_table, status_rows_for_display

    print(f"Airflow home {os.environ['AIRFLOW_HOME']}; Jobmon home {os.environ['JOBMON_AIRFLOW_HOME']}", flush=True)
    airflow_db.initdb()
    hook = JobmonHook()
    start_in_thread(port, hook.get_db_url())
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(DAG_ID)
    if dag is None:
        raise SystemExit(f"DAG {DAG_ID} not found in {os.environ['AIRFLOW__CORE__DAGS_FOLDER']}")
    dag_run = dag.test()
    services = hook.get_services()
    success = str(dag_run.state) == "success"
    services.binding.finish_workflow_run(dag_run.dag_id, dag_run.run_id, success)  # if no listener ran
    rows = services.queries.workflow_status(dag_id=dag_run.dag_id, run_id=dag_run.run_id)
    print(f"\nDAG run {dag_run.run_id}: {dag_run.state}\n")
    print(format_table(status_rows_for_display(rows)))
    if rows:
        print()
        print(format_table(services.queries.workflow_tasks(rows[0]["WF_ID"])))
    all_done = bool(rows) and all(r["DONE"] == r["TASKS"] for r in rows)
    return 0 if all_done and str(dag_run.state) == "success" else 1
