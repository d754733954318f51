"""Example Jobmon workflow: prepare inputs → N independent tasks → aggregate, with real files on disk.

The independent tasks are one Jobmon task template run as an array (``JobmonArrayOperator``): one submission of N
elements that the cluster runs side by side (the ``local`` cluster by default, as many at once as it has slots;
Grid Engine: one ``qsub -t``). Each element, like each single task, is a Jobmon task whose attempts are tracked in
the state database. The steps are in ``scripts/example_steps.py``.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from jobmon_airflow.operators import JobmonArrayOperator, JobmonTaskOperator
from jobmon_airflow.paths import jobmon_home
from jobmon_airflow.templates import TaskTemplate

N_TASKS = int(os.environ.get("JOBMON_EXAMPLE_TASKS", "4"))
DATA_ROOT = Path(os.environ.get("JOBMON_EXAMPLE_DATA", jobmon_home() / "example-data"))
STEPS_SCRIPT = str(Path(__file__).with_name("scripts") / "example_steps.py")
STEPS = f"{shlex.quote(sys.executable)} {shlex.quote(STEPS_SCRIPT)}"
RESOURCES = {"memory": "256M", "runtime": "5m", "cores": 1}

SUM_OF_SQUARES = TaskTemplate(
    name="sum_of_squares",
    command_template="{python} {steps} squares {data} {part}",
    node_args=["part"],  # what makes each element a different task
    task_args=["data"],
    op_args=["python", "steps"],  # how it runs, not what it computes
    default_resources=RESOURCES,
)

with DAG(
    dag_id="example_jobmon_workflow",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["jobmon", "example"],
    default_args={"poll_interval": 1.0, "compute_resources": RESOURCES},
    doc_md=__doc__,
) as dag:
    # One data directory per DAG run (run ids contain ':' and '+').
    run_dir = "{{ run_id | replace(':', '_') | replace('+', '_') }}"
    data = f"{shlex.quote(str(DATA_ROOT))}/{run_dir}"

    prepare = JobmonTaskOperator(task_id="prepare_inputs", command=f"{STEPS} prepare {data} {N_TASKS}")
    squares = JobmonArrayOperator(
        task_id="sum_of_squares",
        task_template=SUM_OF_SQUARES,
        node_args={"part": list(range(N_TASKS))},
        task_args={"data": f"{DATA_ROOT}/{run_dir}"},
        op_args={"python": sys.executable, "steps": STEPS_SCRIPT},
    )
    aggregate = JobmonTaskOperator(task_id="aggregate", command=f"{STEPS} aggregate {data} {N_TASKS}")

    prepare >> squares >> aggregate

if __name__ == "__main__":
    dag.test()
