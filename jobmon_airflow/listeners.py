"""Airflow listener: a DAG run's end ends its Jobmon workflow run (R→D or R→E; the workflow follows).

Listeners run inside the scheduler's loop. Resolving the Jobmon connection goes through Airflow's thread-local
ORM session, which would detach the scheduler's own DagRun objects; so the listener copies the identifiers and
does the work in a short-lived thread, with a session of its own, waiting for it a bounded time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 10.0


def _finish(dag_id: str, run_id: str, success: bool) -> None:
    try:
        from jobmon_airflow.hooks.jobmon import JobmonHook

        wfr_id = JobmonHook().get_services().binding.finish_workflow_run(dag_id, run_id, success)
    except Exception:  # never let Jobmon bookkeeping disturb the scheduler
        log.exception("Jobmon: could not end the workflow run of %s %s", dag_id, run_id)
        return
    if wfr_id is not None:
        log.info("Jobmon: workflow run %s of %s %s ended", wfr_id, dag_id, run_id)


def _finish_in_thread(dag_run: Any, success: bool) -> None:
    thread = threading.Thread(
        target=_finish, args=(dag_run.dag_id, dag_run.run_id, success), name="jobmon-listener", daemon=True
    )
    thread.start()
    thread.join(JOIN_TIMEOUT_S)  # a few ms normally; bounded so a slow state database cannot stall the scheduler


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _finish_in_thread(dag_run, success=True)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _finish_in_thread(dag_run, success=False)
