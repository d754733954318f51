"""d. qstat calls per poll interval with 500 deferred JobmonTaskTriggers in one process (one event loop).

500 JobmonTaskOperators are executed up to their deferral with ``all.q`` disabled (``qmod -d``), so their jobs stay
pending; the 500 triggers then run together for a window of several poll intervals and every Grid Engine command
is counted (``GridEngineCluster._run`` wrapped). The jobs are deleted in one ``qdel`` and the queue re-enabled.
One poller per trigger would make 500 qstat calls per interval; the SharedWatcher should make 1.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.common import (
    CommandCounter,
    fresh_database,
    init_airflow_db,
    load_average,
    log,
    queue_disabled,
    set_connections,
    sge_jobs_of_others,
)

DB = "jobmon_test_bench_d"


def run(triggers: int = 500, poll_interval: float = 2.0, intervals: int = 10) -> dict[str, Any]:
    import sqlalchemy as sa
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import TaskDeferred

    from jobmon_airflow.operators import JobmonTaskOperator
    from jobmon_airflow.watch import Poller

    fresh_database(DB)
    log_dir = Path(os.environ["JOBMON_AIRFLOW_HOME"]) / "sge-logs"
    set_connections(DB, log_dir, poll_interval)
    os.environ["JOBMON_AIRFLOW_STATE_MANAGER_URL"] = "http://127.0.0.1:9/jobmon"  # the jobs never start
    init_airflow_db()
    dag_id = f"bench_poll_{int(time.time())}"
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        ops = [
            JobmonTaskOperator(task_id=f"t{i}", command="true", poll_interval=poll_interval, cluster="gridengine")
            for i in range(triggers)
        ]
    deferred: list[Any] = []
    others = sge_jobs_of_others()
    load = load_average()
    poll_times: list[float] = []
    statements = [0]
    real_poll = Poller.poll

    def timed_poll(self: Poller) -> dict[int, Any]:
        t = time.perf_counter()
        try:
            return real_poll(self)
        finally:
            poll_times.append(time.perf_counter() - t)

    with CommandCounter() as counter, queue_disabled():
        try:
            t0 = time.monotonic()
            for i, op in enumerate(ops):
                context: Any = {"ti": SimpleNamespace(try_number=1, map_index=-1), "run_id": "r1"}
                try:
                    op.execute(context)
                except TaskDeferred as d:
                    deferred.append(d.trigger)
                if i % 100 == 99:
                    log(f"d: {i + 1} deferred")
            submit_s = time.monotonic() - t0
            submit_counts = counter.snapshot()
            assert len(deferred) == triggers
            counter.counts.clear()
            counter.times.clear()

            async def scenario() -> float:
                first = deferred[0]
                watcher = await first.watcher()
                sa.event.listen(
                    watcher.poller.services.engine,
                    "before_cursor_execute",
                    lambda *a, **k: statements.__setitem__(0, statements[0] + 1),
                )
                Poller.poll = timed_poll  # type: ignore[method-assign]
                tasks = [asyncio.create_task(anext(t.run())) for t in deferred]
                start = time.monotonic()
                await asyncio.sleep(poll_interval * intervals)
                elapsed = time.monotonic() - start
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                done = [t for t in tasks if t.done() and not t.cancelled()]
                assert not done, f"{len(done)} triggers fired while their jobs were pending"
                return elapsed

            window = asyncio.run(scenario())
            Poller.poll = real_poll  # type: ignore[method-assign]
            poll_counts = counter.snapshot()
        finally:
            Poller.poll = real_poll  # type: ignore[method-assign]
            job_ids = [t.job_id for t in deferred]
            if job_ids:
                import subprocess

                subprocess.run(["qdel", *job_ids], capture_output=True)  # one call; pending jobs leave no record
    n_polls = len(poll_times)
    qstat = poll_counts["qstat"]
    expected_intervals = window / poll_interval
    return {
        "triggers": triggers,
        "poll_interval_s": poll_interval,
        "window_s": round(window, 1),
        "intervals": round(expected_intervals, 1),
        "polls": n_polls,
        "qstat_calls": qstat,
        "qstat_per_interval": round(qstat / expected_intervals, 2),
        "qstat_per_poll": round(qstat / n_polls, 2) if n_polls else None,
        "one_poller_per_trigger_would_make_per_interval": triggers,
        "reduction_vs_per_trigger_polling": round(triggers * expected_intervals / qstat, 1) if qstat else None,
        "commands_in_window": poll_counts,
        "sql_statements_per_poll": round(statements[0] / n_polls, 1) if n_polls else None,
        "poll_duration_s": {
            "mean": round(sum(poll_times) / n_polls, 3) if n_polls else None,
            "max": round(max(poll_times), 3) if n_polls else None,
        },
        "submission": {
            "operators_executed_to_deferral": triggers,
            "wall_s": round(submit_s, 1),
            "per_task_s": round(submit_s / triggers, 3),
            "commands": submit_counts,
            "note": "each operator instance builds its own GridEngineCluster, as separate Airflow worker "
            "processes do; their queue limits come from qconf, or from the host's file cache when it is fresh",
        },
        "queue_disabled_during": "submission and the polling window (qmod -d all.q; re-enabled in a finally)",
        "jobs_of_others_listed_before": others,
        "load_average_before": load,
    }
