"""r. One full pass of the workflow reaper over a MariaDB state database of 1,000,000 task instances and 10,000
workflow runs (``BENCH_REAPER_INSTANCES`` / ``BENCH_REAPER_RUNS`` to change the size).

The fixture is bulk-loaded with ``INSERT ... SELECT`` from MariaDB's sequence engine. The pass is what the reaper
DAG's tasks run, in one process: orphan candidates, Airflow's word (an in-memory answer standing in for the REST
API, whose cost is not the database's), triage of the orphans, Eqw jobs, lost and halted runs, the F/D fix over
every workflow in windows. The cluster is an in-memory one (one status call per step, as the real one). Every SQL
statement is timed (SQLAlchemy cursor events): the total, the slowest, and their text are written. A second pass
must change nothing. Goal (issue 10): the pass ≤ 10 s, no statement > 500 ms.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import drop_database, fresh_database, log

DB = "jobmon_test_bench_reaper"
GOAL_PASS_S = 10.0
GOAL_STATEMENT_MS = 500.0

# Workflows by id % 100: their run, tasks and instances (K tasks each; "live" ones have LIVE instances in R/O).
#   0-89 done · 90-92 F with every task D (the F/D fix) · 93-94 F with a failed task · 95-97 running, alive
#   98 running, heartbeat expired (lost: DAG run failed / succeeded / deleted by id % 3) · 99 running, launched
LIVE = 10  # live instances per running workflow


def _class_sql(w: str) -> dict[str, str]:
    """SQL CASE expressions of the statuses of workflow ``w`` (an SQL expression) and its run."""
    m = f"({w} MOD 100)"
    return {
        "wf": f"CASE WHEN {m} < 90 THEN 'D' WHEN {m} < 95 THEN 'F' ELSE 'R' END",
        "wfr": f"CASE WHEN {m} < 90 THEN 'D' WHEN {m} < 95 THEN 'E' ELSE 'R' END",
        "hb": f"CASE WHEN {m} = 98 THEN NOW(6) - INTERVAL 1 HOUR ELSE NOW(6) + INTERVAL 1 HOUR END",
        "m": m,
    }


def load(engine: Any, instances: int, runs: int) -> float:
    import sqlalchemy as sa

    from jobmon_airflow.service.binding import Binding

    k = instances // runs
    started = time.monotonic()
    cluster_id = Binding(engine).cluster_id("gridengine", "gridengine")
    c = _class_sql("w")
    with engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 0, unique_checks = 0")
        conn.exec_driver_sql("INSERT INTO tool (id, name) VALUES (1, 'bench')")
        conn.exec_driver_sql("INSERT INTO tool_version (id, tool_id, version) VALUES (1, 1, '1')")
        conn.exec_driver_sql(
            "INSERT INTO task_resources (id, task_resources_type_id, requested_resources) VALUES (1, 'O', '{}')"
        )
        conn.exec_driver_sql(
            "INSERT INTO workflow (id, tool_version_id, dag_id, run_id, name, workflow_args, workflow_args_hash,"
            " max_concurrently_running, created_date, status, status_date)"
            f" SELECT w, 1, 'bench', CONCAT('run', w), CONCAT('bench run', w), CONCAT('run', w), SHA2(w, 256),"
            f" 10000, NOW(6), {c['wf']}, NOW(6) FROM (SELECT seq AS w FROM seq_1_to_{runs}) s"
        )
        conn.exec_driver_sql(
            "INSERT INTO workflow_run (id, workflow_id, jobmon_version, created_date, status, status_date,"
            f" heartbeat_date) SELECT w, w, 'bench', NOW(6), {c['wfr']}, NOW(6), {c['hb']}"
            f" FROM (SELECT seq AS w FROM seq_1_to_{runs}) s"
        )
        # Per task: its workflow w and index i (0-based). Live: the first LIVE tasks of a running workflow.
        per = f"(SELECT seq AS id, (seq - 1) DIV {k} + 1 AS w, (seq - 1) MOD {k} AS i FROM seq_1_to_{runs * k}) s"
        live = f"({c['m']} >= 95 AND i < {LIVE})"
        task_status = f"CASE WHEN {live} THEN 'R' WHEN {c['m']} IN (93, 94) AND i = 0 THEN 'F' ELSE 'D' END"
        ti_status = (
            f"CASE WHEN {live} AND {c['m']} = 99 THEN 'O' WHEN {live} THEN 'R'"
            f" WHEN {c['m']} IN (93, 94) AND i = 0 THEN 'E' ELSE 'D' END"
        )
        conn.exec_driver_sql(
            "INSERT INTO task (id, workflow_id, airflow_task_id, map_index, node_args_hash, task_args_hash, name,"
            " command, task_resources_id, num_attempts, max_attempts, status, status_date)"
            f" SELECT id, w, 't', i, '', '', CONCAT('t[', i, ']'), 'echo', 1, 1, 1, {task_status}, NOW(6) FROM {per}"
        )
        conn.exec_driver_sql(
            "INSERT INTO task_instance (id, workflow_run_id, task_id, cluster_id, distributor_id, task_resources_id,"
            " try_number, status, submitted_date, status_date, report_by_date)"
            f" SELECT id, w, id, {cluster_id}, CAST(id AS CHAR), 1, 1, {ti_status}, NOW(6),"
            f" NOW(6) - INTERVAL 1 DAY, NOW(6) + INTERVAL 1 HOUR FROM {per}"
        )
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 1, unique_checks = 1")
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE TABLE task_instance, task, workflow, workflow_run")
        n = conn.execute(sa.text("SELECT COUNT(*) FROM task_instance")).scalar()
    assert n == runs * k, n
    return time.monotonic() - started


@dataclass
class BenchCluster:
    """Grid Engine as the reaper sees it: jobs of orphans gone with accounting (exit 1) or running, a few Eqw."""

    gone: set[str]
    eqw: set[str]
    name: str = "gridengine"
    calls: dict[str, int] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def statuses(self, job_ids: Iterable[str]) -> dict[str, Any]:
        from jobmon_airflow.clusters.base import JobState, JobStatus

        self._count("statuses")
        out = {}
        for j in job_ids:
            if j in self.gone or j in self.killed:
                out[j] = JobStatus(j, JobState.GONE)
            elif j in self.eqw:
                out[j] = JobStatus(j, JobState.ERROR, "Eqw", "can't chdir to /nonexistent")
            else:
                out[j] = JobStatus(j, JobState.RUNNING, "r")
        return out

    def exit_info(self, job_ids: Iterable[str]) -> dict[str, Any]:
        from jobmon_airflow.clusters.base import ExitInfo, ExitKind

        self._count("exit_info")
        return {j: ExitInfo(j, ExitKind.ERROR, 1, reason="exit 1") for j in job_ids if j in self.gone}

    def kill(self, job_ids: Sequence[str]) -> None:
        self._count("kill")
        self.killed.extend(job_ids)


def one_pass(services: Any, cluster: BenchCluster) -> dict[str, int]:
    from jobmon_airflow.execution.reaping import find_error_jobs, handle_error_jobs, reap_lost_runs, triage
    from jobmon_airflow.service.reaping import Reaping, RunDecision, RunFate

    reaping = Reaping(services.engine)
    clusters = {"gridengine": cluster}
    candidates = reaping.orphan_candidates()
    orphans = [
        c.task_instance_id
        for c in candidates
        if (int(c.run_id[3:]) % 100 == 95 and c.map_index == 0) or int(c.run_id[3:]) % 100 == 98
    ]
    triaged = triage(services, clusters, orphans, why="orphaned (benchmark)", lost_grace_s=0) if orphans else []
    eqw = handle_error_jobs(services, clusters, find_error_jobs(services, clusters))
    fates = (RunFate.FAILED, RunFate.SUCCEEDED, RunFate.GONE)
    decisions = [
        RunDecision(c.workflow_run_id, fates[c.workflow_run_id % 3], "benchmark")
        for c in reaping.lost_run_candidates()
        if c.status not in ("C", "H")
    ]
    results, runs = reap_lost_runs(services, clusters, decisions, lost_grace_s=0)
    fixed = reaping.fix_all_status_inconsistencies(step=1000)
    return {
        "live_candidates": len(candidates),
        "orphans_triaged": len(triaged),
        "eqw_closed": len(eqw),
        "lost_runs_decided": len(decisions),
        "runs_moved": len(runs),
        "halted_instances": len(results),
        "workflows_fixed": len(fixed),
    }


class StatementTimer:
    """Every statement's time on ``engine`` (cursor events), while enabled."""

    def __init__(self, engine: Any) -> None:
        import sqlalchemy as sa

        self.times: list[tuple[float, str]] = []
        self.on = False
        self._start: dict[int, float] = {}
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self._start[id(cursor)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        t0 = self._start.pop(id(cursor), None)
        if self.on and t0 is not None:
            self.times.append((time.perf_counter() - t0, " ".join(statement.split())[:300]))


def state_counts(engine: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        out: dict[str, Any] = {}
        for table in ("task_instance", "task", "workflow", "workflow_run"):
            out[table] = dict(conn.exec_driver_sql(f"SELECT status, COUNT(*) FROM {table} GROUP BY status").all())
        for table in ("workflow_run_note", "task_instance_error_log"):
            out[table] = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar()
    return out


def run() -> dict[str, Any]:
    from jobmon_airflow import db
    from jobmon_airflow.service import Services

    instances = int(os.environ.get("BENCH_REAPER_INSTANCES", 1_000_000))
    runs = int(os.environ.get("BENCH_REAPER_RUNS", 10_000))
    url = fresh_database(DB)
    engine = db.get_engine(url)
    db.upgrade(engine)
    services = Services.for_engine(engine)
    log(f"reaper: loading {instances:,} task instances, {runs:,} workflow runs")
    load_s = load(engine, instances, runs)
    log(f"reaper: fixture loaded in {load_s:.1f} s")
    k = instances // runs
    eqw = {str((w - 1) * k + 1) for w in range(96, runs + 1, 100)[:10]}  # the first live instance of ten workflows
    gone = {str((w - 1) * k + 1) for w in range(95, runs + 1, 100)}
    cluster = BenchCluster(gone=gone, eqw=eqw)
    timer = StatementTimer(engine)
    passes = []
    for n in (1, 2):
        before = state_counts(engine)
        timer.times.clear()
        timer.on = True
        started = time.perf_counter()
        found = one_pass(services, cluster)
        elapsed = time.perf_counter() - started
        timer.on = False
        slowest = sorted(timer.times, reverse=True)[:10]
        after = state_counts(engine)
        passes.append(
            {
                "pass": n,
                "seconds": round(elapsed, 3),
                "statements": len(timer.times),
                "sql_seconds": round(sum(t for t, _ in timer.times), 3),
                "slowest_ms": [{"ms": round(t * 1000, 1), "sql": s} for t, s in slowest],
                "found": found,
                "changed": before != after,
                "cluster_calls": dict(cluster.calls),
            }
        )
        cluster.calls.clear()
        log(f"reaper: pass {n}: {elapsed:.2f} s, {len(timer.times)} statements, slowest {slowest[0][0] * 1000:.0f} ms")
        for t, s in slowest[:5]:
            log(f"    {t * 1000:7.1f} ms  {s[:150]}")
    engine.dispose()
    drop_database(DB)
    first = passes[0]
    return {
        "task_instances": instances,
        "workflow_runs": runs,
        "fixture_load_s": round(load_s, 1),
        "goal_pass_s": GOAL_PASS_S,
        "goal_statement_ms": GOAL_STATEMENT_MS,
        "pass_s": first["seconds"],
        "max_statement_ms": first["slowest_ms"][0]["ms"],
        "second_pass_changed": passes[1]["changed"],
        "passes": passes,
    }
