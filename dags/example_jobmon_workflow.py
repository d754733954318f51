"""Example Jobmon workflow: prepare inputs → N parallel tasks → aggregate, with real files on disk.

Each task is a cluster job (the ``local`` cluster by default) tracked in the Jobmon state database; the steps are
in ``scripts/example_steps.py``.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from jobmon_airflow.operators import JobmonTaskOperator
from jobmon_airflow.paths import jobmon_home

N_TASKS = int(os.environ.get("JOBMON_EXAMPLE_TASKS", "4"))
DATA_ROOT = Path(os.environ.get("JOBMON_EXAMPLE_DATA", jobmon_home() / "example-data"))
STEPS = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).with_name('scripts') / 'example_steps.py'))}"
RESOURCES = {"memory": "256M", "runtime": "5m", "cores": 1}

with DAG(
    dag_id="example_jobmon_workflow",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["jobmon", "example"],
    default_args={"poll_interval": 2.0, "compute_resources": RESOURCES},
    doc_md=__doc__,
) as dag:
    # One data directory per DAG run (run ids contain ':' and '+').
    data = shlex.quote(str(DATA_ROOT)) + "/{{ run_id | replace(':', '_') | replace('+', '_') }}"

    prepare = JobmonTaskOperator(task_id="prepare_inputs", command=f"{STEPS} prepare {data} {N_TASKS}")
    squares = [
        JobmonTaskOperator(task_id=f"sum_of_squares_{i}", command=f"{STEPS} squares {data} {i}") for i in range(N_TASKS)
    ]
    aggregate = JobmonTaskOperator(task_id="aggregate", command=f"{STEPS} aggregate {data} {N_TASKS}")

    prepare >> squares >> aggregate

if __name__ == "__main__":
    dag.test()
