"""The workflow reaper's sensors, and the tasks that act on what they found (``dags/jobmon_workflow_reaper.py``).

Each sensor finds one kind of work, in Jobmon's words, and returns it through XCom (``PokeReturnValue``): orphaned
task instances (live in Jobmon, their Airflow task no longer running or deferred), jobs in Grid Engine's error
state (Eqw), lost workflow runs (heartbeat expired and the DAG run finished, failed or gone). Airflow's own view
comes from its REST API (:class:`~jobmon_airflow.hooks.airflow_api.AirflowApiHook`), batched. The acting
functions go through ``execution.reaping`` and the service layer; :func:`notify` posts the pass to Slack.
By default a sensor reports what it found at once (``wait_for_work=False``): each reaper run is one pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseHook, BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowNotFoundException

from jobmon_airflow.clusters.base import Cluster
from jobmon_airflow.execution.reaping import (
    ErrorJob,
    TriageResult,
    find_error_jobs,
    handle_error_jobs,
    reap_lost_runs,
    run_message,
    summary_message,
    triage,
)
from jobmon_airflow.hooks.airflow_api import ACTIVE_DAG_RUN_STATES, ACTIVE_TASK_STATES, AirflowApiHook, TaskInstanceKey
from jobmon_airflow.hooks.cluster import cluster_spec, get_cluster
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.service import Services
from jobmon_airflow.service.reaping import (
    HALTED,
    OrphanCandidate,
    ReapedRun,
    Reaping,
    RunDecision,
    RunFate,
)
from jobmon_airflow.watch import DEFAULT_LOST_GRACE_S

log = logging.getLogger(__name__)
SLACK_CHANNEL_DEFAULT = "jobmon-alerts"  # Jobmon's reaper.slack_channel_default


def clusters_for(services: Services, gridengine_conn_id: str = "gridengine_default") -> dict[str, Cluster]:
    """The clusters the state database knows (by name), each built from its type's connection."""
    types = Reaping(services.engine).cluster_types()
    return {
        name: get_cluster(cluster_spec(kind, gridengine_conn_id=gridengine_conn_id)) for name, kind in types.items()
    }


class _ReaperSensor(BaseSensorOperator):
    """Where to look: the Jobmon state database, Airflow's REST API, the Grid Engine connection."""

    template_fields: Sequence[str] = ()

    def __init__(
        self,
        *,
        jobmon_conn_id: str = "jobmon_default",
        airflow_api_conn_id: str = "airflow_api_default",
        gridengine_conn_id: str = "gridengine_default",
        wait_for_work: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 60)
        kwargs.setdefault("timeout", 240)  # inside one 5-minute pass
        super().__init__(**kwargs)
        self.jobmon_conn_id = jobmon_conn_id
        self.airflow_api_conn_id = airflow_api_conn_id
        self.gridengine_conn_id = gridengine_conn_id
        self.wait_for_work = wait_for_work

    def services(self) -> Services:
        return JobmonHook(self.jobmon_conn_id).get_services()

    def _found(self, work: list[Any], what: str) -> PokeReturnValue:
        self.log.info("Reaper: %d %s", len(work), what)
        return PokeReturnValue(is_done=bool(work) or not self.wait_for_work, xcom_value=work)


class OrphanedTaskInstanceSensor(_ReaperSensor):
    """Live Jobmon task instances (Q/I/O/R/T/X, or K nobody closed) whose Airflow task instance is no longer running,
    deferred or about to run again: asks Airflow once per DAG and 50 DAG runs, not once per task.
    XCom: ``[{"candidate": OrphanCandidate, "airflow_state": state or "absent"}]``."""

    def __init__(self, *, min_age: timedelta = timedelta(seconds=120), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_age = min_age

    def poke(self, context: Any) -> PokeReturnValue:
        candidates = Reaping(self.services().engine).orphan_candidates(min_age=self.min_age)
        if not candidates:
            return self._found([], "orphaned task instances (no live instance)")
        states = AirflowApiHook(self.airflow_api_conn_id).task_instance_states(
            {(c.dag_id, c.run_id) for c in candidates}
        )
        return self._found(orphans(candidates, states), f"orphaned task instances of {len(candidates)} live ones")


def orphans(
    candidates: Iterable[OrphanCandidate], airflow_states: Mapping[TaskInstanceKey, str | None]
) -> list[dict[str, Any]]:
    """The candidates whose Airflow task instance is absent or in a state that will not look after them."""
    out = []
    for c in candidates:
        key = TaskInstanceKey(c.dag_id, c.run_id, c.airflow_task_id, c.map_index)
        state = airflow_states.get(key, "absent")
        if state not in ACTIVE_TASK_STATES:
            out.append({"candidate": c.to_dict(), "airflow_state": state})
    return out


class EqwJobSensor(_ReaperSensor):
    """Live instances whose job is in Grid Engine's error state (Eqw), with its reason: one status call per cluster.
    XCom: ``[ErrorJob]``."""

    def poke(self, context: Any) -> PokeReturnValue:
        services = self.services()
        found = find_error_jobs(services, clusters_for(services, self.gridengine_conn_id))
        return self._found([e.to_dict() for e in found], "jobs in an error state")


class LostWorkflowRunSensor(_ReaperSensor):
    """Alive workflow runs whose heartbeat expired, with what became of their DAG run (Airflow's word: success,
    failed, or no longer there); runs whose DAG run still runs are alive whatever their heartbeat. Halted runs
    (C/H) need no Airflow: they are cleaned up as Jobmon does. XCom: ``{"decisions": [...], "halted": [ids]}``."""

    def poke(self, context: Any) -> PokeReturnValue:
        candidates = Reaping(self.services().engine).lost_run_candidates()
        halted = [c.workflow_run_id for c in candidates if c.status in HALTED]
        others = [c for c in candidates if c.status not in HALTED]
        decisions: list[dict[str, Any]] = []
        if others:
            states = AirflowApiHook(self.airflow_api_conn_id).dag_run_states({(c.dag_id, c.run_id) for c in others})
            for c in others:
                state = states.get((c.dag_id, c.run_id))
                if state in ACTIVE_DAG_RUN_STATES:
                    continue
                fate = RunFate.GONE if state is None else RunFate.SUCCEEDED if state == "success" else RunFate.FAILED
                why = (
                    f"DAG run {c.dag_id} {c.run_id} "
                    + ("no longer exists" if state is None else f"is {state}")
                    + f" and the run's heartbeat expired at {c.heartbeat_date}"
                )
                decisions.append(RunDecision(c.workflow_run_id, fate, why).to_dict())
        work = {"decisions": decisions, "halted": halted}
        self.log.info("Reaper: %d lost workflow runs, %d halted", len(decisions), len(halted))
        return PokeReturnValue(is_done=bool(decisions or halted) or not self.wait_for_work, xcom_value=work)


# -- acting on what the sensors found ------------------------------------------------------------------------------


def act_on_orphans(
    found: Sequence[Mapping[str, Any]] | None,
    jobmon_conn_id: str = "jobmon_default",
    gridengine_conn_id: str = "gridengine_default",
    lost_grace_s: float = DEFAULT_LOST_GRACE_S,
) -> list[dict[str, Any]]:
    """Triage the orphans, grouped by what Airflow said of their task (it goes into each log row)."""
    if not found:
        return []
    services = JobmonHook(jobmon_conn_id).get_services()
    clusters = clusters_for(services, gridengine_conn_id)
    by_state: dict[str, list[int]] = {}
    for item in found:
        by_state.setdefault(str(item["airflow_state"]), []).append(int(item["candidate"]["task_instance_id"]))
    results: list[TriageResult] = []
    for state, ids in sorted(by_state.items()):
        why = "orphaned: its Airflow task instance " + ("no longer exists" if state == "absent" else f"is {state}")
        results += triage(services, clusters, ids, why=why, lost_grace_s=lost_grace_s)
    return [r.to_dict() for r in results]


def act_on_error_jobs(
    found: Sequence[Mapping[str, Any]] | None,
    jobmon_conn_id: str = "jobmon_default",
    gridengine_conn_id: str = "gridengine_default",
) -> list[dict[str, Any]]:
    if not found:
        return []
    services = JobmonHook(jobmon_conn_id).get_services()
    results = handle_error_jobs(
        services, clusters_for(services, gridengine_conn_id), [ErrorJob.from_dict(e) for e in found]
    )
    return [r.to_dict() for r in results]


def act_on_lost_runs(
    found: Mapping[str, Any] | None,
    jobmon_conn_id: str = "jobmon_default",
    gridengine_conn_id: str = "gridengine_default",
    lost_grace_s: float = DEFAULT_LOST_GRACE_S,
) -> dict[str, list[dict[str, Any]]]:
    decisions = [RunDecision.from_dict(d) for d in (found or {}).get("decisions", [])]
    if not decisions and not (found or {}).get("halted"):
        return {"runs": [], "instances": []}
    services = JobmonHook(jobmon_conn_id).get_services()
    results, runs = reap_lost_runs(services, clusters_for(services, gridengine_conn_id), decisions, lost_grace_s)
    return {"runs": [r.to_dict() for r in runs], "instances": [r.to_dict() for r in results]}


def fix_status_inconsistencies(jobmon_conn_id: str = "jobmon_default", step: int = 1000) -> list[dict[str, Any]]:
    """Jobmon's F/D fix over every workflow, in id windows of ``step`` (one short transaction each)."""
    fixed = Reaping(JobmonHook(jobmon_conn_id).get_services().engine).fix_all_status_inconsistencies(step)
    return [r.to_dict() for r in fixed]


def messages(
    runs: Iterable[Mapping[str, Any]], triaged: Iterable[Mapping[str, Any]], eqw: Iterable[Mapping[str, Any]]
) -> list[str]:
    """One message per reaped run (Jobmon's content), and one summary when there were resource kills or Eqw jobs."""
    texts = [run_message(ReapedRun.from_dict(r)) for r in runs]
    summary = summary_message([TriageResult.from_dict(t) for t in triaged], [TriageResult.from_dict(e) for e in eqw])
    return texts + ([summary] if summary else [])


def notify(texts: Sequence[str], slack_conn_id: str = "slack_default") -> int:
    """Post each text to Slack through the Slack provider: a webhook connection (type ``slackwebhook``) or an API
    one (``slack``, extra ``channel``, default ``jobmon-alerts``). No connection: one log line. A failed post is
    logged and never raises: notifying must not fail the reaping. Returns how many were sent."""
    if not texts:
        return 0
    try:
        conn = BaseHook.get_connection(slack_conn_id)
    except AirflowNotFoundException:
        log.info("Reaper: no Slack connection %r; %d messages not sent", slack_conn_id, len(texts))
        return 0
    sent = 0
    try:
        if conn.conn_type == "slackwebhook":
            from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

            webhook = SlackWebhookHook(slack_webhook_conn_id=slack_conn_id)
            post = lambda text: webhook.send_text(text)  # noqa: E731
        else:
            from airflow.providers.slack.hooks.slack import SlackHook

            api = SlackHook(slack_conn_id=slack_conn_id)
            channel = str(conn.extra_dejson.get("channel") or SLACK_CHANNEL_DEFAULT)
            post = lambda text: api.client.chat_postMessage(channel=channel, text=text)  # noqa: E731
    except Exception as exc:  # a connection the provider cannot use: logged, the pass goes on
        log.warning("Reaper: Slack connection %r unusable: %s", slack_conn_id, exc)
        return 0
    for text in texts:
        try:
            post(text)
            sent += 1
        except Exception as exc:
            log.warning("Reaper: Slack message not sent (%s: %s)", type(exc).__name__, str(exc)[:300])
    return sent
