"""a. N trivial elements (``true``) through JobmonArrayOperator vs a raw ``qsub -t 1-N``, on the real cluster.

Jobmon: ``dag.test()`` of one JobmonArrayOperator (deferrable; dag.test runs the trigger in process), State Manager
in a thread, Jobmon DB on MariaDB, poll interval 1 s; from start until the DAG run is over (every element done).
Raw: ``qsub -terse -t 1-N -b y true``, then ``qstat`` every 1 s until the job has left it, then ``qacct -j`` every
1 s until N records are there: the least any tracker must do to know N elements ended and how.
Runs raw → Jobmon → raw (N ≤ 500; larger N: raw → Jobmon), so a change of load on the shared host shows up as
a difference between the two raws;
the ratio is against their mean.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CommandCounter,
    RawCommands,
    delete_jobs_named,
    fresh_database,
    init_airflow_db,
    listed_job_ids,
    load_average,
    log,
    run_dag,
    set_connections,
    sge_jobs_of_others,
    state_manager,
)
from tests.support.airflow_services import wait_for

DB = "jobmon_test_bench_a"
POLL_S = 1.0
SANDWICH_MAX_N = 500  # above this, raw → Jobmon only (a second raw run of 1000 trivial jobs takes ~17 min)


def raw_array(
    n: int, log_dir: Path, *, name: str = "bench_raw", qsub_options: Sequence[str] = (), poll: float = POLL_S
) -> dict[str, Any]:
    """``qsub -t 1-N`` of ``true``, then qstat every ``poll`` s until it left, then qacct until N records."""
    raw = RawCommands()
    load = load_average()
    t0 = time.monotonic()
    argv = [
        "qsub",
        "-terse",
        "-t",
        f"1-{n}",
        *qsub_options,
        "-b",
        "y",
        "-N",
        name,
        "-o",
        str(log_dir),
        "-e",
        str(log_dir),
    ]
    proc = raw.run([*argv, "true"], check=True)
    job_id = proc.stdout.strip().split(".")[0]
    submitted = time.monotonic() - t0
    try:
        wait_for(lambda: job_id not in listed_job_ids(raw), 4 * 3600, "qstat", poll)
        left_qstat = time.monotonic() - t0

        def records() -> int:
            out = raw.run(["qacct", "-j", job_id]).stdout
            return sum(1 for line in out.splitlines() if line.startswith("jobnumber"))

        wait_for(lambda: records() >= n, 600, "accounting", poll)
    finally:
        delete_jobs_named(name)
    wall = time.monotonic() - t0
    return {
        "job_id": job_id,
        "wall_s": round(wall, 1),
        "elements_per_s": round(n / wall, 2),
        "qsub_s": round(submitted, 3),
        "left_qstat_s": round(left_qstat, 1),
        "commands": raw.snapshot(),
        "load_average_before": load,
        "load_average_after": load_average(),
    }


def jobmon_array(
    n: int,
    tag: str,
    *,
    task_id: str = "bench_arr",
    compute_resources: Mapping[str, Any] | None = None,
    poll: float = POLL_S,
) -> dict[str, Any]:
    """``dag.test()`` of one JobmonArrayOperator of N ``true`` elements until the DAG run is over; what became of
    the elements, from the Jobmon DB."""
    import sqlalchemy as sa
    from airflow.sdk import DAG

    from jobmon_airflow import models
    from jobmon_airflow.operators import JobmonArrayOperator
    from jobmon_airflow.templates import TaskTemplate

    template = TaskTemplate(name="trivial", command_template="true {i}", node_args=["i"])
    with DAG(f"{task_id}_{tag}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        op = JobmonArrayOperator(
            task_id=task_id,
            task_template=template,
            node_args={"i": list(range(n))},
            compute_resources=compute_resources,
            poll_interval=poll,
            cluster="gridengine",
        )
    load = load_average()
    with CommandCounter() as counter:
        t0 = time.monotonic()
        try:
            dag_run = run_dag(dag)
        finally:
            delete_jobs_named(task_id)
        wall = time.monotonic() - t0
    ti, task, wf = models.TaskInstance.__table__, models.Task.__table__, models.Workflow.__table__
    with op.services.engine.connect() as conn:
        by_status = {
            status: count
            for status, count in conn.execute(
                sa.select(ti.c.status, sa.func.count())
                .select_from(ti.join(task, task.c.id == ti.c.task_id).join(wf, wf.c.id == task.c.workflow_id))
                .where(wf.c.dag_id == dag.dag_id)
                .group_by(ti.c.status)
            )
        }
        tasks_done = conn.execute(
            sa.select(sa.func.count())
            .select_from(task.join(wf, wf.c.id == task.c.workflow_id))
            .where(wf.c.dag_id == dag.dag_id, task.c.status == "D")
        ).scalar_one()
    return {
        "dag_run_state": str(dag_run.state),
        "wall_s": round(wall, 1),
        "elements_per_s": round(n / wall, 2),
        "tasks_done": tasks_done,
        "task_instances_by_status": by_status,
        "commands": counter.snapshot(),
        "seconds_in_commands": counter.seconds_snapshot(),
        "qacct_note": "Jobmon reads the accounting file directly: no qacct calls",
        "load_average_before": load,
        "load_average_after": load_average(),
    }


def run(sizes: list[int]) -> dict[str, Any]:
    import os

    url = fresh_database(DB)
    log_dir = Path(os.environ["JOBMON_AIRFLOW_HOME"]) / "sge-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    set_connections(DB, log_dir, POLL_S)
    init_airflow_db()
    runs = []
    with state_manager(url):
        for n in sizes:
            others = sge_jobs_of_others()
            log(f"a: N={n}: raw qsub -t (1)")
            raw1 = raw_array(n, log_dir)
            log(f"a: raw {raw1['wall_s']} s; Jobmon array")
            jm = jobmon_array(n, f"{n}_{int(time.time())}")
            raws = [raw1]
            if n <= SANDWICH_MAX_N:
                log(f"a: Jobmon {jm['wall_s']} s ({jm['dag_run_state']}); raw qsub -t (2)")
                raws.append(raw_array(n, log_dir))
            else:
                log(f"a: Jobmon {jm['wall_s']} s ({jm['dag_run_state']}); no second raw run at N={n} (time)")
            raw2 = raws[-1]
            raw_mean = (raw1["wall_s"] + raw2["wall_s"]) / 2
            runs.append(
                {
                    "n": n,
                    "jobs_of_others_listed_before": others,
                    "raw": {**raw1, "wall_s": round(raw_mean, 1), "runs": raws},
                    "jobmon": jm,
                    "ratio_wall": round(jm["wall_s"] / raw_mean, 3),
                    "raw_spread": round(abs(raw1["wall_s"] - raw2["wall_s"]) / raw_mean, 3),
                    "target_ratio": 1.10,
                }
            )
            log(f"a: N={n}: ratio {runs[-1]['ratio_wall']} (raw {raw1['wall_s']} / {raw2['wall_s']})")
    return {"poll_interval_s": POLL_S, "runs": runs}
