"""Jobmon's QPID max-RSS ETL as a maintenance DAG: finished Grid Engine task instances get their max RSS, max PSS,
wall-clock and CPU figures from QPID (connection ``qpid_default``), else from Grid Engine's accounting file.

Every 10 minutes (``JOBMON_QPID_ETL_INTERVAL_MINUTES``), one run at a time, no catch-up. Each run works through the
backlog in batches (one candidate scan, one QPID query, one accounting read, one UPDATE per batch); it is idempotent
(a settled instance is never looked at again) and incremental (an instance whose record is not there yet is looked
at again by the next run, until ``retire_after_days``). The task logs its counts and returns them as its XCom.
Settings are the DAG's params (defaults from ``JOBMON_QPID_ETL_*`` environment variables); the README's section
"Maintenance DAGs: the QPID max-RSS ETL" has the details.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

log = logging.getLogger(__name__)

ENV = "JOBMON_QPID_ETL_"
INTERVAL_MINUTES = float(os.environ.get(f"{ENV}INTERVAL_MINUTES", "10"))


def _default(name: str, value: float) -> float:
    return float(os.environ.get(f"{ENV}{name.upper()}", value))


@dag(
    dag_id="jobmon_qpid_maxrss_etl",
    schedule=timedelta(minutes=INTERVAL_MINUTES),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["jobmon", "maintenance"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "jobmon_conn_id": Param("jobmon_default", type="string"),
        "qpid_conn_id": Param("qpid_default", type="string", description="absent: accounting only"),
        "gridengine_conn_id": Param("gridengine_default", type="string"),
        "batch_size": Param(int(_default("batch_size", 1000)), type="integer", minimum=1, maximum=10_000),
        "qpid_wait_minutes": Param(
            _default("qpid_wait_minutes", 30), type="number", minimum=0, description="wait for QPID before accounting"
        ),
        "retire_after_days": Param(_default("retire_after_days", 7), type="number", exclusiveMinimum=0),
        "max_batches": Param(None, type=["null", "integer"], minimum=1, description="bound one run (null: no bound)"),
    },
    doc_md=__doc__,
)
def jobmon_qpid_maxrss_etl() -> None:
    @task
    def collect_usage(params: dict[str, Any] | None = None) -> dict[str, int]:
        from airflow.sdk.exceptions import AirflowNotFoundException

        from jobmon_airflow.execution.usage_etl import AccountingSource, EtlSettings, run_usage_etl
        from jobmon_airflow.hooks.gridengine import GridEngineHook
        from jobmon_airflow.hooks.jobmon import JobmonHook
        from jobmon_airflow.hooks.qpid import QpidHook
        from jobmon_airflow.service.usage import UsageCollection

        p = params or {}
        settings = EtlSettings(
            batch_size=int(p.get("batch_size", 1000)),
            qpid_wait=timedelta(minutes=float(p.get("qpid_wait_minutes", 30))),
            retire_after=timedelta(days=float(p.get("retire_after_days", 7))),
            max_batches=p.get("max_batches"),
        )
        qpid_conn_id = p.get("qpid_conn_id", "qpid_default")
        qpid: QpidHook | None = QpidHook(qpid_conn_id=qpid_conn_id)
        try:
            QpidHook.get_connection(qpid_conn_id)  # a missing connection means "no QPID", not a failure
        except AirflowNotFoundException:
            log.info("No connection %r: QPID is not read, Grid Engine's accounting is the only source", qpid_conn_id)
            qpid = None
        accounting = AccountingSource(GridEngineHook(p.get("gridengine_conn_id", "gridengine_default")).get_cluster())
        usage = UsageCollection(JobmonHook(p.get("jobmon_conn_id", "jobmon_default")).get_conn())
        try:
            counts = run_usage_etl(usage, qpid=qpid, accounting=accounting, settings=settings)
        finally:
            if qpid is not None:
                qpid.close()
        return counts.as_dict()

    collect_usage()


qpid_maxrss_etl = jobmon_qpid_maxrss_etl()

if __name__ == "__main__":
    qpid_maxrss_etl.test()
