"""The QPID max-RSS ETL on real parts: jobs of known memory use run on the real Grid Engine cluster through
mapped ``JobmonTaskOperator`` (state database on MariaDB), a QPID database on the same MariaDB server holds records the
test writes from the jobs' own /proc measurements, and the DAG ``jobmon_qpid_maxrss_etl`` runs under ``dag.test()``.

The figures the worker node reported at the end of each job are cleared first: every figure read afterwards was
written by the ETL (from QPID, or from Grid Engine's accounting file).
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.sdk import DAG

from jobmon_airflow import db
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.operators import JobmonTaskOperator
from jobmon_airflow.server.app import start_in_thread
from jobmon_airflow.service.core import TI
from jobmon_airflow.service.usage import UsageCollection, UsageFigures, UsageSource, UsageUpdate, WriteMethod
from tests.conftest import ROOT, free_port, run_dag
from tests.support.databases import mysql_connection
from tests.support.usage import add_instances, make_parents, usage_of

pytestmark = [pytest.mark.gridengine, pytest.mark.mariadb, pytest.mark.usefixtures("airflow_db")]

MIB = 2**20
#: Element → MiB it writes to (every page resident). 150 never gets a QPID record: accounting fills it.
SIZES = (200, 120, 60, 150)
# Touch every page (bytes * n is a memset, unlike bytearray(n), whose calloc'd pages stay unmapped), then measure
# this process from /proc: VmHWM (its peak RSS) and Pss, as QPID's profiler would see them.
ELEMENT = """
import json, os, sys, time
mb, out = int(sys.argv[1]), sys.argv[2]
t0 = time.monotonic()
block = b"\\x01" * (mb * 2**20)
time.sleep(1)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
rollup = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup").read().splitlines()[1:])
times = os.times()
record = {
    "job_id": os.environ["JOB_ID"] + ("" if os.environ.get("SGE_TASK_ID", "undefined") == "undefined"
                                      else "." + os.environ["SGE_TASK_ID"]),
    "hwm": int(status["VmHWM"].split()[0]) * 1024,
    "pss": int(rollup["Pss"].split()[0]) * 1024,
    "wallclock": time.monotonic() - t0,
    "cpu": times.user + times.system,
}
open(os.path.join(out, f"{mb}.json"), "w").write(json.dumps(record))
"""
QPID_TABLE = """CREATE TABLE job_usage (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    job_number BIGINT NOT NULL,
    task_number INT NULL,
    maxrss BIGINT NULL,
    maxpss BIGINT NULL,
    wallclock DOUBLE NULL,
    cpu DOUBLE NULL,
    INDEX ix_job_usage_job (job_number, task_number)
)"""


def _database(server: sa.engine.URL, prefix: str) -> tuple[str, sa.engine.Engine]:
    name = f"jobmon_test_{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server.set(database=""))
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    admin.dispose()
    return name, sa.create_engine(server.set(database=name))


def _drop(server: sa.engine.URL, name: str) -> None:
    admin = sa.create_engine(server.set(database=""))
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(scope="module")
def setting(gridengine: dict[str, str], mariadb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Jobmon state database and a QPID database of this module's own on the MariaDB server; the connections."""
    server = sa.engine.make_url(mariadb_url)
    jobmon_db, _ = _database(server, "qpidetl")
    qpid_db, qpid = _database(server, "qpid")
    with qpid.begin() as conn:
        conn.execute(sa.text(QPID_TABLE))
    logs = tmp_path_factory.mktemp("sge-logs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "AIRFLOW_CONN_JOBMON_MARIADB",
            json.dumps(mysql_connection(server.set(database=jobmon_db).render_as_string(hide_password=False))),
        )
        mp.setenv(
            "AIRFLOW_CONN_JOBMON_DEFAULT",
            json.dumps({"conn_type": "jobmon", "extra": {"mysql_conn_id": "jobmon_mariadb", "cluster": "gridengine"}}),
        )
        mp.setenv(
            "AIRFLOW_CONN_GRIDENGINE_DEFAULT",
            json.dumps({"conn_type": "gridengine", "extra": {"log_dir": str(logs), "poll_interval": 1}}),
        )
        # A plain MySQL connection: no "client" extra, so the hook connects through mysql-connector-python.
        mp.setenv(
            "AIRFLOW_CONN_QPID_DEFAULT",
            json.dumps(mysql_connection(server.set(database=qpid_db).render_as_string(hide_password=False))),
        )
        hook = JobmonHook()
        port = free_port()
        state_manager = start_in_thread(port, hook.get_db_url())
        mp.setenv("JOBMON_AIRFLOW_STATE_MANAGER_URL", f"http://127.0.0.1:{port}/jobmon")
        yield {"jobmon": hook.get_conn(), "qpid": qpid}
        state_manager.should_exit = True
    qpid.dispose()
    _drop(server, jobmon_db)
    _drop(server, qpid_db)


def run_jobs(tmp_path: Path) -> dict[int, dict[str, Any]]:
    """One Grid Engine job per size (mapped JobmonTaskOperator); each job's measurement by size."""
    script, out = tmp_path / "touch.py", tmp_path / "measured"
    script.write_text(ELEMENT)
    out.mkdir()
    commands = [f"{sys.executable} {script} {mb} {out}" for mb in SIZES]
    with DAG(f"qpid_etl_{uuid.uuid4().hex[:8]}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonTaskOperator.partial(
            task_id="touch",
            compute_resources={"memory": "1G", "runtime": 300},
            cluster="gridengine",
            poll_interval=1.0,
        ).expand(command=commands)
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    return {mb: json.loads((out / f"{mb}.json").read_text()) for mb in SIZES}


def usage_rows(engine: sa.engine.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(TI.c.distributor_id, TI.c.maxrss, TI.c.maxpss, TI.c.wallclock, TI.c.cpu, TI.c.usage_source)
        ).all()
    return {r.distributor_id: r._asdict() for r in rows}


def qpid_record(m: dict[str, Any], **override: Any) -> dict[str, Any]:
    job, _, task = m["job_id"].partition(".")
    row = {"job_number": int(job), "task_number": int(task or 0), "maxrss": m["hwm"], "maxpss": m["pss"]}
    return {**row, "wallclock": m["wallclock"], "cpu": m["cpu"], **override}


def write_qpid(engine: sa.engine.Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_usage (job_number, task_number, maxrss, maxpss, wallclock, cpu) "
                "VALUES (:job_number, :task_number, :maxrss, :maxpss, :wallclock, :cpu)"
            ),
            rows,
        )


def run_etl(**conf: Any) -> dict[str, int]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "jobmon_qpid_maxrss_etl.py"))
    assert bag.import_errors == {}
    dag: Any = bag.get_dag("jobmon_qpid_maxrss_etl")
    run = dag.test(run_conf=conf or None)
    assert str(run.state) == "success"
    (ti,) = run.get_task_instances()
    counts: dict[str, int] = ti.xcom_pull(task_ids="collect_usage")
    return counts


def near(value: float, truth: float, tolerance: float = 0.10) -> bool:
    return abs(value - truth) <= tolerance * truth


def test_the_etl_fills_max_rss_from_qpid_then_accounting(
    setting: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    measured = run_jobs(tmp_path)
    jobmon, qpid = setting["jobmon"], setting["qpid"]
    by_job = {m["job_id"]: mb for mb, m in measured.items()}
    assert set(usage_rows(jobmon)) == set(by_job)  # the instances are the jobs that measured themselves
    for mb, m in measured.items():
        assert m["hwm"] >= mb * MIB  # the pages really were touched
    with jobmon.begin() as conn:  # what is read from here on was written by the ETL
        conn.execute(TI.update().values(maxrss=None, maxpss=None, wallclock=None, cpu=None))

    # QPID has 200 and 120; 60's only record is malformed; 150 has none (it waits for QPID: accounting not yet).
    good = [qpid_record(measured[200]), qpid_record(measured[120])]
    write_qpid(qpid, [*good, qpid_record(measured[60], maxrss=-1, maxpss=None)])
    caplog.set_level(logging.WARNING, logger="jobmon_airflow.hooks.qpid")
    first = run_etl()
    assert {k: first[k] for k in ("candidates", "found_qpid", "found_accounting", "updated", "waiting")} == {
        "candidates": 4,
        "found_qpid": 2,
        "found_accounting": 0,
        "updated": 2,
        "waiting": 2,
    }
    assert first["malformed"] == 1
    assert any("QPID row skipped" in r.getMessage() and "maxrss" in r.getMessage() for r in caplog.records)
    rows = usage_rows(jobmon)
    for mb in (200, 120):
        row, m = rows[measured[mb]["job_id"]], measured[mb]
        assert row["usage_source"] == "qpid"
        assert near(row["maxrss"], m["hwm"]) and near(row["maxrss"], mb * MIB)  # within 10 % of the truth
        assert row["maxpss"] == m["pss"] and row["wallclock"] == pytest.approx(m["wallclock"])
    for mb in (60, 150):
        assert rows[measured[mb]["job_id"]]["usage_source"] is None
        assert rows[measured[mb]["job_id"]]["maxrss"] is None

    # A second run changes nothing.
    second = run_etl()
    assert (second["updated"], second["found_qpid"], second["retired"]) == (0, 0, 0)
    assert usage_rows(jobmon) == rows

    # A record that appears later is picked up later.
    write_qpid(qpid, [qpid_record(measured[60])])
    third = run_etl()
    assert (third["found_qpid"], third["updated"]) == (1, 1)
    row = usage_rows(jobmon)[measured[60]["job_id"]]
    assert row["usage_source"] == "qpid" and near(row["maxrss"], measured[60]["hwm"])

    # Without a QPID connection Grid Engine's accounting fills the last one at once (ru_maxrss, KB in the file).
    fourth = run_etl(qpid_conn_id="no_qpid_here")
    assert (fourth["found_qpid"], fourth["found_accounting"], fourth["updated"]) == (0, 1, 1)
    row = usage_rows(jobmon)[measured[150]["job_id"]]
    assert row["usage_source"] == "accounting" and row["maxpss"] is None
    assert near(row["maxrss"], measured[150]["hwm"]) and near(row["maxrss"], 150 * MIB)
    assert row["wallclock"] is not None and row["cpu"] is not None
    assert run_etl()["candidates"] == 0


@pytest.mark.parametrize("method", list(WriteMethod))
def test_each_write_method_on_mariadb(mariadb_url: str, method: WriteMethod) -> None:
    """The set-based writes (unit-tested on SQLite) as MariaDB runs them: figures, COALESCE, the source, once."""
    engine = db.get_engine(mariadb_url)
    db.ensure_schema(engine)
    parents = make_parents(engine, f"write-{method.value}-{uuid.uuid4().hex[:6]}")
    ids = add_instances(engine, parents, [str(7_000_000 + i) for i in range(1500)], maxrss=5)
    updates = [
        UsageUpdate(i, UsageFigures(i * MIB if k % 2 else None, i * 1000, 1.5, 0.25), UsageSource.QPID)
        for k, i in enumerate(ids)
    ]
    usage = UsageCollection(engine)
    assert usage.record(updates, method) == len(ids)
    assert usage.record(updates, method) == 0
    got = usage_of(engine, ids)
    for k, i in enumerate(ids):
        assert got[i]["maxrss"] == (i * MIB if k % 2 else 5)  # PSS only: the RSS there stays
        assert (got[i]["maxpss"], got[i]["wallclock"], got[i]["cpu"]) == (i * 1000, 1.5, 0.25)
        assert got[i]["usage_source"] == "qpid"
