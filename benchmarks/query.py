"""g. The query API and the CLI on a 100,000-task workflow (MariaDB).

The workflow is bulk-loaded with plain INSERTs (what an array operator would have written over three passes of a
DAG run): 100,000 elements of one array (one template; batches of 500, a resource set each), three instances each
(one per pass; 300,000 instances with usage and job ids), 5 % of the tasks failing in every pass with a stderr
tail (15,000 error logs in five families of messages that differ in numbers, hex addresses and paths), and 200
small workflows beside it. Each route is timed in process (server time: FastAPI, the service layer, JSON): the
first call and the median of the next ones. The CLI's ``workflow status`` is timed as a new process (wall time),
with ``--url`` and through the ``jobmon_default`` connection (``AIRFLOW_CONN_JOBMON_DEFAULT``, read without
importing Airflow). Then, in the same run, schema 0002's narrower indexes replace 0003's covering ones and the
routes are timed again, with the cost of typical writes under each.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

from benchmarks.common import PY, ROOT, fresh_database, load_average, log

DB = "jobmon_test_bench_query"
TASKS = 100_000
PASSES = 3
FAILING = 0.05
SMALL_WORKFLOWS = 200
CHUNK = 5000
BATCH = 500
REPEATS = 5
GOAL_MS = 300
#: Schema 0002's indexes in place of 0003's covering ones (resource usage: an index-only pass in the GROUP BY's
#: order; the workflows list: task counts and retries per status from the index), measured beside them in one run.
INDEXES_0003 = {
    "task": ("ix_task_workflow_id_status_num_attempts", "workflow_id, status, num_attempts"),
    "task_instance": ("ix_task_instance_workflow_run_id_status_usage",
                      "workflow_run_id, status, array_id, task_resources_id, maxrss, wallclock"),
}  # fmt: skip
INDEXES_0002 = {
    "task": ("ix_task_workflow_id_status", "workflow_id, status"),
    "task_instance": ("ix_task_instance_workflow_run_id_status", "workflow_run_id, status"),
}
#: Writes the wider indexes make dearer, as the service makes them, each after an untimed set-up and rolled back:
#: running instances end (status and usage in one statement), the max-RSS ETL's write-back (usage alone), tasks
#: queued again (status and attempts).
TI_RANGE = "WHERE id BETWEEN {ti} AND {ti} + 9999"
TASK_RANGE = "WHERE id BETWEEN {task} AND {task} + 9999"
WRITES = {
    "10,000 running instances end (R → D with maxrss, wallclock)": (
        f"UPDATE task_instance SET status = 'R', maxrss = NULL, wallclock = NULL {TI_RANGE}",
        f"UPDATE task_instance SET status = 'D', maxrss = 2147483648, wallclock = 60 {TI_RANGE}",
    ),
    "10,000 instances' max RSS written back (ETL)": (None, f"UPDATE task_instance SET maxrss = maxrss + 1 {TI_RANGE}"),
    "10,000 tasks queued again (D → Q, num_attempts + 1)": (
        None,
        f"UPDATE task SET status = 'Q', num_attempts = num_attempts + 1 {TASK_RANGE}",
    ),
}
CLI_GOAL_S = 1.0

ERRORS = [
    'Traceback (most recent call last):\n  File "/ihme/code/model.py", line {n}, in fit\nMemoryError: cannot allocate '
    "{b} bytes at 0x{h:x}",
    'Traceback (most recent call last):\n  File "/ihme/code/io.py", line 88, in read\nFileNotFoundError: [Errno 2] '
    "No such file or directory: '/mnt/share/loc_{i}/draws_{n}.csv'",
    "ValueError: location {i} has no rows for year {y}",
    "RuntimeError: optimizer diverged after {n} iterations (step {b})",
    "Killed",
]


def _load(url: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from jobmon_airflow import db, models
    from jobmon_airflow.service import Services, TaskSpec
    from jobmon_airflow.service.core import utcnow

    engine = db.get_engine(url)
    db.upgrade(engine)
    svc = Services.for_engine(engine)
    rnd = random.Random(11)
    started = time.monotonic()
    for k in range(SMALL_WORKFLOWS):
        run = svc.binding.bind_workflow_run(dag_id=f"small_{k % 20}", run_id=f"r{k}", user=f"user{k % 7}")
        svc.binding.bind_tasks(run.workflow_id, [TaskSpec(f"t{i}", f"t{i}", "true") for i in range(10)])
    run = svc.binding.bind_workflow_run(dag_id="big_dag", run_id="big", user="bench")
    ttv = svc.binding.bind_task_template_version(run.tool_version_id, "location_model", "python m.py {loc}", "h",
                                                 ["loc"], [], [])  # fmt: skip
    cluster = svc.binding.cluster_id("gridengine", "gridengine")
    array_id = svc.binding.bind_array(run.workflow_id, "models", ttv, 10_000)
    t = {name: models.Base.metadata.tables[name] for name in ("task", "task_instance", "task_instance_error_log",
                                                              "task_resources", "workflow_run")}  # fmt: skip
    now = utcnow()
    wf = run.workflow_id
    failing = set(rnd.sample(range(TASKS), int(TASKS * FAILING)))
    with engine.begin() as conn:
        runs = [run.workflow_run_id]
        for _ in range(1, PASSES):
            runs.append(
                conn.execute(
                    t["workflow_run"]
                    .insert()
                    .values(
                        workflow_id=wf,
                        user="bench",
                        jobmon_version="bench",
                        created_date=now,
                        status="E",
                        status_date=now,
                        heartbeat_date=now,
                    )
                ).inserted_primary_key[0]
            )
        # One resource set per qsub -t batch of 500, per pass (as ArrayRun writes them); later passes scaled.
        batches = range(TASKS // BATCH + 1)
        tr_ids = {}
        for p in range(PASSES):
            for b in batches:
                requested = {"cores": 1, "memory": 4.0 if p == 0 else 6.0, "runtime": 7200, "queue": "all.q"}
                tr_ids[(p, b)] = conn.execute(
                    t["task_resources"]
                    .insert()
                    .values(task_resources_type_id="O" if p == 0 else "A", requested_resources=json.dumps(requested))
                ).inserted_primary_key[0]
        tr = tr_ids[(0, 0)]
        for start in range(0, TASKS, CHUNK):
            conn.execute(
                t["task"].insert(),
                [
                    {"workflow_id": wf, "airflow_task_id": "models", "map_index": -1, "node_args_hash": str(i),
                     "array_id": array_id,
                     "task_template_version_id": ttv, "name": f"location_model_{i}", "command": f"python m.py {i}",
                     "task_resources_id": tr, "num_attempts": PASSES, "max_attempts": 3,
                     "status": "F" if i in failing else "D", "status_date": now}
                    for i in range(start, min(start + CHUNK, TASKS))
                ],
            )  # fmt: skip
        first_task = conn.execute(sa.select(sa.func.min(t["task"].c.id)).where(t["task"].c.workflow_id == wf)).scalar()
        for p, wfr in enumerate(runs):
            for start in range(0, TASKS, CHUNK):
                rows = []
                for i in range(start, min(start + CHUNK, TASKS)):
                    fail = i in failing
                    rows.append(
                        {"workflow_run_id": wfr, "task_id": first_task + i, "cluster_id": cluster,
                         "distributor_id": f"{1000 + p * 10 + i // 500}.{i % 500 + 1}",
                         "task_resources_id": tr_ids[(p, i // BATCH)], "array_id": array_id,
                         "array_batch_num": p * len(batches) + i // BATCH + 1, "array_step_id": i % BATCH,
                         "nodename": f"node{i % 40:02d}", "exit_status": 1 if fail else 0,
                         "maxrss": int(rnd.uniform(0.3, 3.9) * 2**30), "wallclock": rnd.uniform(60, 3600),
                         "stdout": f"/logs/models.o{1000 + i // 500}.{i % 500 + 1}",
                         "stderr": f"/logs/models.e{1000 + i // 500}.{i % 500 + 1}",
                         "status": ("F" if p == PASSES - 1 else "E") if fail else "D", "submitted_date": now,
                         "status_date": now}
                    )  # fmt: skip
                conn.execute(t["task_instance"].insert(), rows)
        ti = t["task_instance"]
        failed_ids = (
            conn.execute(sa.select(ti.c.id).where(ti.c.workflow_run_id.in_(runs), ti.c.status.in_(["E", "F"])))
            .scalars()
            .all()
        )
        for start in range(0, len(failed_ids), CHUNK):
            rows = []
            for ti_id in failed_ids[start : start + CHUNK]:
                template = ERRORS[ti_id % len(ERRORS)]
                message = template.format(
                    n=rnd.randint(1, 10**6),
                    b=rnd.randint(10**6, 10**10),
                    h=rnd.getrandbits(48),
                    i=rnd.randint(1, 999),
                    y=rnd.randint(1990, 2024),
                )
                rows.append({"task_instance_id": ti_id, "error_time": now,
                             "description": "stderr tail:\n" + "INFO step done\n" * 100 + message})  # fmt: skip
            conn.execute(t["task_instance_error_log"].insert(), rows)
        conn.exec_driver_sql("ANALYZE TABLE task, task_instance, task_instance_error_log")
    return {"workflow_id": wf, "instances": TASKS * PASSES, "error_logs": len(failed_ids),
            "load_s": round(time.monotonic() - started, 1), "first_task": first_task}  # fmt: skip


def _time_requests(url: str, wf: int, task_id: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from jobmon_airflow.server.app import create_app
    from jobmon_airflow.server.viewer import StaticViewerAuth, Viewer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = TestClient(create_app(url, viewer_auth=StaticViewerAuth({"t": Viewer("bench", None)})))
    routes = {
        "workflows list (50 per page)": "/api/workflows?limit=50",
        "workflows list of one user": "/api/workflows?user=bench",
        "one workflow (per-template progress)": f"/api/workflows/{wf}",
        "tasks page (100, FATAL bucket)": f"/api/workflows/{wf}/tasks?bucket=FATAL&limit=100",
        "grouped errors": f"/api/workflows/{wf}/errors",
        "resource usage (2,000 points)": f"/api/workflows/{wf}/usage",
        "one task (3 instances)": f"/api/tasks/{task_id}",
    }
    out: dict[str, Any] = {}
    for name, path in routes.items():
        times, status = [], None
        for _ in range(1 + REPEATS):
            t0 = time.perf_counter()
            answer = client.get(path, headers={"Authorization": "Bearer t"})
            times.append((time.perf_counter() - t0) * 1000)
            status = answer.status_code
        out[name] = {"path": path, "status": status, "first_ms": round(times[0], 1),
                     "median_ms": round(statistics.median(times[1:]), 1), "max_ms": round(max(times[1:]), 1),
                     "bytes": len(answer.content)}  # fmt: skip
        log(f"query: {name}: first {times[0]:.0f} ms, median {statistics.median(times[1:]):.0f} ms ({status})")
    return out


def _swap_indexes(url: str, drop: dict[str, tuple[str, str]], create: dict[str, tuple[str, str]]) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table, (name, columns) in create.items():  # first: a foreign key may need the leading column indexed
            conn.exec_driver_sql(f"CREATE INDEX {name} ON {table} ({columns})")
        for table, (name, _) in drop.items():
            conn.exec_driver_sql(f"DROP INDEX {name} ON {table}")
        conn.exec_driver_sql("ANALYZE TABLE task, task_instance")
    engine.dispose()


def _time_writes(url: str, first_task: int) -> dict[str, float]:
    """Median milliseconds of each of WRITES (of 3), each in a transaction rolled back."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    out = {}
    with engine.connect() as conn:
        first_ti = conn.execute(sa.text("SELECT MIN(id) FROM task_instance")).scalar_one()
        conn.rollback()  # end the read's implicit transaction: each write gets its own below
        ids = {"ti": first_ti + 50_000, "task": first_task + 50_000}
        for name, (setup, statement) in WRITES.items():
            times = []
            for _ in range(3):
                with conn.begin() as txn:
                    if setup:
                        conn.exec_driver_sql(setup.format(**ids))
                    t0 = time.perf_counter()
                    conn.exec_driver_sql(statement.format(**ids))
                    times.append((time.perf_counter() - t0) * 1000)
                    txn.rollback()
            out[name] = round(statistics.median(times), 1)
            log(f"query: write {name}: {out[name]:.0f} ms")
    engine.dispose()
    return out


def _time_cli(url: str, wf: int) -> dict[str, Any]:
    from benchmarks.common import mariadb_url

    exe = os.path.join(os.path.dirname(PY), "jobmon-airflow")
    cases = {
        "--url": ([exe, "--url", url, "workflow", "status", "-w", str(wf)], {}),
        "JOBMON_AIRFLOW_DB_URL": ([exe, "workflow", "status", "-w", str(wf)], {"JOBMON_AIRFLOW_DB_URL": url}),
        "jobmon_default connection": (
            [exe, "workflow", "status", "-w", str(wf)],
            {
                "AIRFLOW_CONN_JOBMON_DEFAULT": json.dumps(
                    {"conn_type": "jobmon", "extra": {"sql_alchemy_conn": mariadb_url(DB)}}
                )
            },
        ),
    }
    out = {}
    for name, (argv, extra_env) in cases.items():
        times = []
        for _ in range(1 + REPEATS):
            t0 = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **extra_env}, cwd=ROOT)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError(f"CLI failed: {proc.stderr[-500:]}")
        out[name] = {"first_s": round(times[0], 2), "median_s": round(statistics.median(times[1:]), 2)}
        log(f"query: CLI workflow status ({name}): first {times[0]:.2f} s, median {statistics.median(times[1:]):.2f} s")
    return out


def scale_of(loaded: dict[str, Any]) -> dict[str, Any]:
    """What a result of g or p says of the workflow it timed."""
    return {"tasks": TASKS, "instances": loaded["instances"], "error_logs": loaded["error_logs"],
            "load_s": loaded["load_s"], "goal_ms": GOAL_MS, "python": sys.version.split()[0]}  # fmt: skip


def run() -> dict[str, Any]:
    url = fresh_database(DB)
    log(f"query: bulk-loading {TASKS:,} tasks × {PASSES} instances into {DB}")
    loaded = _load(url)
    log(f"query: loaded in {loaded['load_s']} s ({loaded['error_logs']:,} error logs)")
    wf = loaded["workflow_id"]
    task_id = loaded["first_task"] + 7
    requests = _time_requests(url, wf, task_id)
    writes = _time_writes(url, loaded["first_task"])
    cli = _time_cli(url, wf)
    log("query: the same routes with schema 0002's indexes instead of 0003's covering ones")
    _swap_indexes(url, drop=INDEXES_0003, create=INDEXES_0002)
    with_0002 = _time_requests(url, wf, task_id)
    writes_0002 = _time_writes(url, loaded["first_task"])
    return {
        **scale_of(loaded),
        "cli_goal_s": CLI_GOAL_S,
        "requests": requests,
        "writes_ms": writes,
        "indexes_0002": INDEXES_0002,
        "requests_with_indexes_0002": with_0002,
        "writes_ms_with_indexes_0002": writes_0002,
        "cli_workflow_status": cli,
        "load_average": load_average(),
    }
