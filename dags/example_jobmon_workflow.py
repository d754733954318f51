"""Example Jobmon workflow: prepare inputs → N parallel tasks → aggregate, with real files on disk.

Each task is a cluster job (the ``local`` cluster by default) tracked in the Jobmon state database.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from jobmon_airflow.db import jobmon_home
from jobmon_airflow.operators import JobmonTaskOperator

N_TASKS = int(os.environ.get("JOBMON_EXAMPLE_TASKS", "4"))
DATA_ROOT = Path(os.environ.get("JOBMON_EXAMPLE_DATA", jobmon_home() / "example-data"))
PY = shlex.quote(sys.executable)

with DAG(
    dag_id="example_jobmon_workflow",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["jobmon", "example"],
    default_args={"poll_interval": 2.0},
    doc_md=__doc__,
) as dag:
    data = shlex.quote(str(DATA_ROOT)) + "/{{ run_id | replace(':', '_') | replace('+', '_') }}"

    prep = JobmonTaskOperator(
        task_id="prepare_inputs",
        command=(
            f"mkdir -p {data} && {PY} -c 'import sys; "
            f'[open(f"{{sys.argv[1]}}/input_{{i}}.txt", "w").write("\\n".join(map(str, range(i * 1000, (i + 1) * 1000)))) '
            f"for i in range({N_TASKS})]' {data}"
        ),
        compute_resources={"memory": "256M", "runtime": "5m"},
    )

    summarise = [
        JobmonTaskOperator(
            task_id=f"sum_of_squares_{i}",
            command=(
                f"{PY} -c 'import sys; total = sum(int(x) ** 2 for x in open(sys.argv[1])); "
                f'open(sys.argv[2], "w").write(str(total))\' {data}/input_{i}.txt {data}/squares_{i}.txt'
            ),
            compute_resources={"memory": "256M", "runtime": "5m"},
        )
        for i in range(N_TASKS)
    ]

    aggregate = JobmonTaskOperator(
        task_id="aggregate",
        command=(
            f'{PY} -c \'import sys, glob; parts = sorted(glob.glob(sys.argv[1] + "/squares_*.txt")); '
            f"assert len(parts) == {N_TASKS}, parts; "
            f'total = sum(int(open(p).read()) for p in parts); open(sys.argv[1] + "/total.txt", "w").write(str(total)); '
            f'print("sum of squares:", total)\' {data}'
        ),
        compute_resources={"memory": "256M", "runtime": "5m"},
    )

    prep >> summarise >> aggregate

if __name__ == "__main__":
    dag.test()
