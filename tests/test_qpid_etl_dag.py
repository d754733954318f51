"""The QPID max-RSS ETL DAG loads from dags/ and runs under ``dag.test()`` on the embedded state database, with no
QPID connection and no accounting records: instances of other clusters are settled, Grid Engine ones wait."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow import db
from tests.support.usage import add_instances, make_parents, usage_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("airflow_db")
def test_qpid_etl_dag_loads_and_runs(tmp_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "jobmon_qpid_maxrss_etl.py"))
    assert bag.import_errors == {}
    dag: Any = bag.get_dag("jobmon_qpid_maxrss_etl")
    assert dag is not None
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.timetable.delta == timedelta(minutes=10)

    # The embedded state database (no jobmon_default connection), an empty Grid Engine cell (no accounting file).
    monkeypatch.setenv(
        "AIRFLOW_CONN_GRIDENGINE_DEFAULT", f'{{"conn_type": "gridengine", "extra": {{"sge_root": "{tmp_path}"}}}}'
    )
    engine = db.get_engine()
    db.ensure_schema(engine)
    parents = make_parents(engine, "dagtest")
    (local,) = add_instances(engine, parents, ["1"], cluster="local", maxrss=1234)
    (waiting,) = add_instances(engine, parents, ["2"])

    run = dag.test()
    assert str(run.state) == "success"
    (ti,) = run.get_task_instances()
    counts = ti.xcom_pull(task_ids="collect_usage")
    assert counts["other_clusters"] == 1 and counts["candidates"] == 1 and counts["waiting"] == 1
    got = usage_of(engine, [local, waiting])
    assert got[local]["usage_source"] == "worker" and got[waiting]["usage_source"] is None
