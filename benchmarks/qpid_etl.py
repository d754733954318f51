"""(g) The QPID max-RSS ETL on MariaDB: a backlog of 200,000 finished Grid Engine instances without usage, a QPID
table holding all their records, one ETL pass (candidate scan → QPID lookup → set-based write, per batch) through
the real ``QpidHook`` (mysql-connector-python), side by side with a row-at-a-time baseline shaped like Jobmon's QPID
integrator (one QPID query and one committed UPDATE per task instance, without its 10 rows/s limiter), run on a
sample and extrapolated. Also: each write method (join / case / executemany) on MariaDB and SQLite, the candidate
scan's plan, and a second pass (nothing to do).

Fixtures are bulk-loaded with INSERT … SELECT from MariaDB's sequence engine (``seq_1_to_N``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import drop_database, fresh_database, log

DB = "jobmon_test_bench_qpid_etl"
QPID_DB = "jobmon_test_bench_qpid"
JOB_BASE = 5_000_000  # job numbers JOB_BASE + seq
QPID_TABLE = """CREATE TABLE job_usage (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    job_number BIGINT NOT NULL, task_number INT NULL,
    maxrss BIGINT NULL, maxpss BIGINT NULL, wallclock DOUBLE NULL, cpu DOUBLE NULL,
    INDEX ix_job_usage_job (job_number, task_number)
)"""


def _load_backlog(engine: Any, parents: Any, n: int, settled: int) -> None:
    """``settled`` instances already done with (usage_source 'qpid'), then ``n`` candidates, one job each."""
    import sqlalchemy as sa

    cluster = parents.clusters["gridengine"]
    with engine.begin() as conn:
        for count, source, base in ((settled, "'qpid'", JOB_BASE), (n, "NULL", JOB_BASE + settled)):
            if not count:
                continue
            conn.execute(
                sa.text(
                    "INSERT INTO task_instance (workflow_run_id, task_id, cluster_id, distributor_id, status, "
                    "status_date, usage_source) "
                    f"SELECT :wfr, :task, :cluster, CAST(:base + seq AS CHAR), 'D', "
                    f"UTC_TIMESTAMP() - INTERVAL 2 HOUR, {source} FROM seq_1_to_{count}"
                ),
                {"wfr": parents.workflow_run_id, "task": parents.task_id, "cluster": cluster, "base": base},
            )


def _load_qpid(engine: Any, first_job: int, n: int) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text(QPID_TABLE))
        conn.execute(
            sa.text(
                "INSERT INTO job_usage (job_number, task_number, maxrss, maxpss, wallclock, cpu) "
                f"SELECT :first + seq, 0, 1048576 * (seq % 4000 + 1), 1048576 * (seq % 3000 + 1), seq % 3600, "
                f"seq % 1800 FROM seq_0_to_{n - 1}"
            ),
            {"first": first_job},
        )


def _row_at_a_time(engine: Any, qpid_conn: Any, candidates: list[Any]) -> tuple[float, int]:
    """Jobmon's integrator, without its sleep: per instance one QPID lookup and one committed UPDATE."""
    import sqlalchemy as sa

    t0 = time.perf_counter()
    found = 0
    cursor = qpid_conn.cursor()
    with engine.connect() as conn:
        for c in candidates:
            cursor.execute(
                "SELECT maxrss, maxpss, wallclock, cpu FROM job_usage WHERE job_number = %s AND task_number = 0",
                (int(c.job_id),),
            )
            row = cursor.fetchone()
            if row is None:
                continue
            found += 1
            conn.execute(
                sa.text(
                    "UPDATE task_instance SET maxrss = :rss, maxpss = :pss, wallclock = :w, cpu = :c, "
                    "usage_source = 'qpid' WHERE id = :id"
                ),
                {"rss": row[0], "pss": row[1], "w": row[2], "c": row[3], "id": c.id},
            )
            conn.commit()
    cursor.close()
    return time.perf_counter() - t0, found


def _write_methods(engine: Any, parents: Any, rows: int, add: Any) -> dict[str, float]:
    """rows/s of UsageCollection.record with each method, on the same rows (reset between methods)."""
    import sqlalchemy as sa

    from jobmon_airflow.service.usage import UsageCollection, UsageFigures, UsageSource, UsageUpdate, WriteMethod

    ids = add(engine, parents, rows)
    usage = UsageCollection(engine)
    updates = [UsageUpdate(i, UsageFigures(i * 1024, i * 512, 10.0, 5.0), UsageSource.QPID) for i in ids]
    out: dict[str, float] = {}
    for method in WriteMethod:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE task_instance SET usage_source = NULL, maxrss = NULL WHERE id BETWEEN :a AND :b"),
                {"a": ids[0], "b": ids[-1]},
            )
        t0 = time.perf_counter()
        written = usage.record(updates, method)
        elapsed = time.perf_counter() - t0
        assert written == rows, (method, written)
        out[method.value] = round(rows / elapsed)
        log(f"  write {method.value}: {out[method.value]:,} rows/s ({engine.dialect.name})")
    return out


def run(backlog: int = 200_000, settled: int = 200_000, baseline_sample: int = 5_000, batch_size: int = 1000) -> dict:
    import sqlalchemy as sa

    from jobmon_airflow import db
    from jobmon_airflow.execution.usage_etl import EtlSettings, run_usage_etl
    from jobmon_airflow.hooks.qpid import QpidHook
    from jobmon_airflow.service.usage import UsageCollection
    from tests.support.usage import add_instances, make_parents

    url = fresh_database(DB)
    qpid_url = fresh_database(QPID_DB)
    engine = db.get_engine(url)
    db.ensure_schema(engine)
    qpid_engine = sa.create_engine(qpid_url)
    parts = sa.engine.make_url(qpid_url)
    os.environ["AIRFLOW_CONN_QPID_BENCH"] = json.dumps(
        {"conn_type": "mysql", "host": parts.host, "port": parts.port, "login": parts.username,
         "password": parts.password, "schema": parts.database}
    )  # fmt: skip
    out: dict[str, Any] = {"backlog": backlog, "settled_rows": settled, "batch_size": batch_size}
    try:
        parents = make_parents(engine, "bench")
        t0 = time.perf_counter()
        _load_backlog(engine, parents, backlog, settled)
        _load_qpid(qpid_engine, JOB_BASE + settled + 1, backlog)
        out["fixture_load_s"] = round(time.perf_counter() - t0, 2)
        log(
            f"fixture: {settled:,} settled + {backlog:,} candidates, {backlog:,} QPID rows in {out['fixture_load_s']} s"
        )

        usage = UsageCollection(engine)
        with engine.connect() as conn:
            plan = (
                conn.execute(
                    sa.text(
                        "EXPLAIN SELECT id FROM task_instance FORCE INDEX (ix_task_instance_usage_source_id) "
                        "WHERE usage_source IS NULL AND id > 0 AND status IN ('D','E','F','U','W','X','Z') "
                        "ORDER BY id LIMIT 1000"
                    )
                )
                .mappings()
                .all()
            )
        out["candidate_scan_plan"] = [{k: r[k] for k in ("key", "type", "rows", "Extra")} for r in plan]

        # Baseline on a sample (its rows are then settled, so the ETL pass below gets backlog - sample).
        sample = usage.candidates(0, baseline_sample)
        qpid_raw = QpidHook(qpid_conn_id="qpid_bench").get_conn()
        base_s, base_found = _row_at_a_time(engine, qpid_raw, sample)
        qpid_raw.close()
        assert base_found == len(sample), (base_found, len(sample))
        out["baseline"] = {
            "rows": len(sample),
            "seconds": round(base_s, 2),
            "rows_per_s": round(len(sample) / base_s),
            "extrapolated_backlog_s": round(backlog * base_s / len(sample), 1),
            "jobmon_configured_rate_per_s": 10,
            "jobmon_backlog_at_configured_rate_h": round(backlog / 10 / 3600, 1),
        }
        log(f"baseline row at a time: {out['baseline']['rows_per_s']:,} rows/s on {len(sample):,} rows")

        hook = QpidHook(qpid_conn_id="qpid_bench")
        t0 = time.perf_counter()
        counts = run_usage_etl(usage, qpid=hook, accounting=None, settings=EtlSettings(batch_size=batch_size))
        etl_s = time.perf_counter() - t0
        again_t0 = time.perf_counter()
        again = run_usage_etl(usage, qpid=hook, accounting=None, settings=EtlSettings(batch_size=batch_size))
        again_s = time.perf_counter() - again_t0
        hook.close()
        assert counts.updated == backlog - len(sample), counts
        assert again.updated == 0 and again.candidates == 0, again
        out["etl"] = {
            "rows": counts.updated,
            "seconds": round(etl_s, 2),
            "rows_per_s": round(counts.updated / etl_s),
            "counts": counts.as_dict(),
            "second_pass_s": round(again_s, 3),
            "target_rows_per_s": 5000,
        }
        out["ratio_etl_to_baseline"] = round(out["etl"]["rows_per_s"] / out["baseline"]["rows_per_s"], 1)
        etl, ratio = out["etl"], out["ratio_etl_to_baseline"]
        log(f"ETL: {etl['rows_per_s']:,} rows/s ({etl['rows']:,} in {etl['seconds']} s); {ratio}× the baseline")

        def add(e: Any, p: Any, n: int) -> list[int]:
            return add_instances(e, p, [str(9_000_000 + i) for i in range(n)])

        out["write_methods_rows_per_s"] = {"mariadb": _write_methods(engine, parents, 20_000, add)}
        with tempfile.TemporaryDirectory() as tmp:
            lite = db.get_engine(f"sqlite:///{Path(tmp) / 'bench.sqlite'}")
            db.ensure_schema(lite)
            out["write_methods_rows_per_s"]["sqlite"] = _write_methods(lite, make_parents(lite, "lite"), 20_000, add)
            lite.dispose()
    finally:
        engine.dispose()
        qpid_engine.dispose()
        drop_database(DB)
        drop_database(QPID_DB)
    return out
