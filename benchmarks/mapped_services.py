"""b. N mapped JobmonTaskOperator tasks vs N mapped plain BashOperator tasks (``qsub -sync y -b y true``), both
through Airflow's REAL services: API server (with the Jobmon plugin's State Manager), scheduler (LocalExecutor),
DAG processor and triggerer, started here; DAG runs triggered and watched over the REST API.

Grid Engine commands are counted with a PATH shim (``qsub``/``qstat``/``qacct``/``qdel``/``qconf``/``qmod``
wrappers that log a line and exec the real binary) first on the PATH of every Airflow service, for both variants.
The two DAG runs go one after the other on the same running services (Jobmon first, then plain); the shim log is
read before and after each. Wall time: from the REST trigger until the DAG run's state is final.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MARIADB,
    delete_jobs_named,
    free_port,
    fresh_database,
    load_average,
    log,
    make_shim,
    sge_jobs_of_others,
    shim_counts,
)
from tests.support.airflow_services import AirflowAPI, airflow_services, services_env, wait_for

DB = "jobmon_test_bench_b"
PARALLELISM = 8
POLL_S = 1.0

DAGS = """
from datetime import datetime
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG
from jobmon_airflow.operators import JobmonTaskOperator

N = {n}
with DAG("bench_jobmon_{n}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=N):
    JobmonTaskOperator.partial(task_id="bench_jm", poll_interval={poll}, cluster="gridengine").expand(
        command=["true"] * N
    )

with DAG("bench_plain_{n}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=N):
    BashOperator.partial(task_id="bench_plain").expand(
        bash_command=["qsub -sync y -b y -N bench_plain -j y -o {logs} true"] * N
    )
"""


def _variant(af: AirflowAPI, dag_id: str, shim_log: Path, timeout: float) -> dict[str, Any]:
    _, start_line = shim_counts(shim_log)
    load = load_average()
    t0 = time.monotonic()
    run_id = af.trigger(dag_id)
    state = "running"
    try:
        wait_for(lambda: af.run_state(dag_id, run_id) in ("success", "failed"), timeout, dag_id)
        state = af.run_state(dag_id, run_id)
    except TimeoutError:
        state = f"not finished after {timeout:.0f}s"
    wall = time.monotonic() - t0
    time.sleep(3)  # the triggerer's last poll, the listener
    counts, _ = shim_counts(shim_log, start_line)
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "state": state,
        "wall_s": round(wall, 1),
        "task_states": af.ti_states(dag_id, run_id),
        "commands": counts,
        "load_average_before": load,
        "load_average_after": load_average(),
    }


def run(sizes: list[int], timeout: float = 1800.0) -> dict[str, Any]:
    home = Path(os.environ["AIRFLOW_HOME"]).parent / "services"
    dags, logs, sge_logs = home / "dags", home / "logs", home / "sge-logs"
    for d in (dags, logs, sge_logs):
        d.mkdir(parents=True, exist_ok=True)
    (dags / "bench_dags.py").write_text(
        "\n".join(textwrap.dedent(DAGS).format(n=n, poll=POLL_S, logs=sge_logs) for n in sizes)
    )
    shim_log = home / "ge-commands.log"
    shim = make_shim(home / "shim", shim_log)
    fresh_database(DB)
    port = free_port()
    env = {
        **services_env(home, dags, port, PARALLELISM),
        "PATH": f"{shim}:{os.environ['PATH']}",
        "AIRFLOW_CONN_JOBMON_MARIADB": json.dumps({"conn_type": "mysql", **MARIADB, "schema": DB}),
        "AIRFLOW_CONN_JOBMON_DEFAULT": json.dumps(
            {"conn_type": "jobmon", "extra": {"mysql_conn_id": "jobmon_mariadb", "cluster": "gridengine"}}
        ),
        "AIRFLOW_CONN_GRIDENGINE_DEFAULT": json.dumps(
            {"conn_type": "gridengine", "extra": {"log_dir": str(sge_logs), "poll_interval": POLL_S}}
        ),
    }
    log("b: airflow db migrate")
    runs = []
    try:
        with airflow_services(env, port, logs, migrate_timeout=600, stop_timeout=30, request_timeout=60) as af:
            log(f"b: services healthy after {af.wait_healthy(300):.0f}s")
            for n in sizes:
                for dag_id in (f"bench_jobmon_{n}", f"bench_plain_{n}"):
                    af.unpause(dag_id, timeout=300)
                others = sge_jobs_of_others()
                log(f"b: N={n}: Jobmon mapped tasks")
                jm = _variant(af, f"bench_jobmon_{n}", shim_log, timeout)
                delete_jobs_named("bench_jm")
                log(f"b: Jobmon {jm['wall_s']} s {jm['state']} {jm['commands']}; plain BashOperator qsub -sync y")
                plain = _variant(af, f"bench_plain_{n}", shim_log, timeout)
                delete_jobs_named("bench_plain")
                log(f"b: plain {plain['wall_s']} s {plain['state']} {plain['commands']}")
                runs.append({"n": n, "jobs_of_others_listed_before": others, "jobmon": jm, "plain": plain,
                             "ratio_wall": round(jm["wall_s"] / plain["wall_s"], 3)})  # fmt: skip
    finally:
        delete_jobs_named("bench_jm")
        delete_jobs_named("bench_plain")
    return {
        "parallelism": PARALLELISM,
        "poll_interval_s": POLL_S,
        "order": "Jobmon first, then plain, on the same running services",
        "airflow_metadata_db": "SQLite (LocalExecutor)",
        "jobmon_db": f"MariaDB {DB}",
        "runs": runs,
        "service_logs": str(logs),
    }
