"""Jobmon's workflow reaper as a maintenance DAG: sensors find work, tasks act through the service layer, the last
task notifies Slack.

One pass every 5 minutes (Airflow Variable ``jobmon_reaper_schedule`` or env ``JOBMON_REAPER_SCHEDULE``: a cron
expression, a number of minutes, or ``none``), one run at a time, no catch-up. Connections: ``jobmon_default`` (the
state database), ``airflow_api_default`` (Airflow's REST API, for the state of task instances and DAG runs),
``gridengine_default``, ``slack_default`` (optional: webhook or API).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Variable, task

from jobmon_airflow.sensors import reaper
from jobmon_airflow.sensors.reaper import EqwJobSensor, LostWorkflowRunSensor, OrphanedTaskInstanceSensor

DAG_ID = "jobmon_workflow_reaper"
DEFAULT_SCHEDULE = "*/5 * * * *"  # Jobmon's reaper.poll_interval_minutes = 5


def _setting(name: str, default: str) -> str:
    """An Airflow Variable, else the environment (``JOBMON_REAPER_<NAME>``), else the default."""
    env = os.environ.get(f"JOBMON_REAPER_{name.upper()}")
    try:
        value = Variable.get(f"jobmon_reaper_{name}", default=None)
    except Exception:  # no metadata database reachable while parsing: the environment decides
        value = None
    return str(value or env or default)


def _schedule(value: str) -> str | timedelta | None:
    """ "none": passes only when triggered; a number: every so many minutes; else a cron expression or preset."""
    if value.strip().lower() == "none":
        return None
    return timedelta(minutes=float(value)) if value.replace(".", "", 1).isdigit() else value


SCHEDULE = _schedule(_setting("schedule", DEFAULT_SCHEDULE))
LOST_GRACE_S = float(_setting("lost_grace_s", "60"))
ORPHAN_MIN_AGE_S = float(_setting("orphan_min_age_s", "120"))

with DAG(
    DAG_ID,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    tags=["jobmon", "maintenance"],
    doc_md=__doc__,
) as dag:
    orphans = OrphanedTaskInstanceSensor(
        task_id="find_orphaned_task_instances", min_age=timedelta(seconds=ORPHAN_MIN_AGE_S)
    )
    error_jobs = EqwJobSensor(task_id="find_eqw_jobs")
    # all_done: lost runs are reaped even when the orphan or Eqw step failed (Airflow's API away, say).
    lost_runs = LostWorkflowRunSensor(task_id="find_lost_workflow_runs", trigger_rule="all_done")

    @task
    def triage_orphans(found: Any) -> list[dict[str, Any]]:
        return reaper.act_on_orphans(found, lost_grace_s=LOST_GRACE_S)

    @task
    def close_eqw_jobs(found: Any) -> list[dict[str, Any]]:
        return reaper.act_on_error_jobs(found)

    @task
    def reap_workflow_runs(found: Any) -> dict[str, list[dict[str, Any]]]:
        return reaper.act_on_lost_runs(found, lost_grace_s=LOST_GRACE_S)

    @task(trigger_rule="all_done")
    def fix_status_inconsistencies() -> list[dict[str, Any]]:
        return reaper.fix_status_inconsistencies()

    @task(trigger_rule="all_done", retries=0)
    def notify(triaged: Any, eqw: Any, runs: Any, fixed: Any) -> dict[str, int]:
        """Slack: one message per reaped or fixed run, one summary when there were resource kills or Eqw jobs.
        (Arguments are the acting tasks' XComs, typed Any: TaskFlow passes XComArgs where they are declared.)"""
        runs = runs or {"runs": [], "instances": []}
        texts = reaper.messages([*runs["runs"], *(fixed or [])], [*(triaged or []), *runs["instances"]], eqw or [])
        sent = reaper.notify(texts)
        return {"messages": len(texts), "sent": sent}

    # Orphans first: a lost run's instances are concluded from their evidence before the run is ended.
    triaged = triage_orphans(orphans.output)
    eqw = close_eqw_jobs(error_jobs.output)
    reaped = reap_workflow_runs(lost_runs.output)
    fixed = fix_status_inconsistencies()
    triaged >> lost_runs
    eqw >> lost_runs
    reaped >> fixed
    notify(triaged, eqw, reaped, fixed)

if __name__ == "__main__":
    dag.test()
