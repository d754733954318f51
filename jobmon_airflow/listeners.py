"""Airflow listener: a DAG run's end ends its Jobmon workflow run (R→D or R→E; the workflow follows)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def _finish(dag_run: Any, success: bool) -> None:
    try:
        from jobmon_airflow.hooks.jobmon import JobmonHook

        wfr_id = JobmonHook().get_service().finish_workflow_run(dag_run.dag_id, dag_run.run_id, success)
    except Exception:  # a listener must never break the scheduler
        log.exception("Jobmon: could not end the workflow run of %s %s", dag_run.dag_id, dag_run.run_id)
        return
    if wfr_id is not None:
        log.info("Jobmon: workflow run %s of %s %s ended", wfr_id, dag_run.dag_id, dag_run.run_id)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _finish(dag_run, success=True)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _finish(dag_run, success=False)
