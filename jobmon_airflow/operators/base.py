"""What every Jobmon operator shares: its arguments (checked at parse time), the collaborators built at run time
from the connections, and the one place where a run's verdict becomes an Airflow outcome."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from jobmon_airflow import paths
from jobmon_airflow.clusters.base import Cluster, ClusterUnavailable, SubmissionError
from jobmon_airflow.execution import JobSettings, Verdict, VerdictKind, WorkflowIdentity
from jobmon_airflow.hooks.cluster import cluster_spec, get_cluster
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.records import RecordError, WatchEvent
from jobmon_airflow.resources import Resources, validate_resource_scales
from jobmon_airflow.service import Services
from jobmon_airflow.watch import DEFAULT_LOST_GRACE_S, Poller

LOCAL_POLL_INTERVAL_S = 10.0


def is_templated(value: Any) -> bool:
    """Jinja still to render: validation waits for ``execute``."""
    return "{{" in repr(value) or "{%" in repr(value)


class JobmonBaseOperator(BaseOperator):
    """Arguments every Jobmon operator takes, checked when the DAG is parsed, and the collaborators built at run
    time (never at parse time) from the connection ids.

    :param compute_resources: Jobmon resource keys: ``cores``, ``memory`` ("2G", "500M" or GiB), ``runtime``
        (seconds, "HH:MM:SS" or "10m"), ``queue``, ``project`` (templated); bad values fail naming the field.
    :param max_attempts: Jobmon attempts per task (default 3).
    :param resource_scales: growth after a resource kill, per resource: a number ``s`` (× (1 + s)) or a list of
        numbers, the k-th for the k-th retry (the last repeats); Jobmon's default ``{"memory": 0.5, "runtime":
        0.5}``. Callables and iterators are refused: every try is a new process and the scales are stored as JSON.
    :param fallback_queues: queues to try, in order, when the resources do not fit the requested queue.
    :param cluster: ``local`` or ``gridengine`` (default: the Jobmon connection's ``cluster`` extra, else local).
    :param tool: Jobmon tool name (default: the dag_id); ``workflow_args``: the workflow's identity within the
        DAG (default: the run_id).
    :param deferrable: wait in the triggerer (default) or block a worker slot while polling.
    :param poll_interval: seconds between polls (one batched poll per process, whatever the task count);
        default: the Grid Engine connection's ``poll_interval``, 10 s on the local cluster.
    :param heartbeat_interval: seconds between worker-node heartbeats (Jobmon's 90).
    :param lost_grace_s: how long a job may be gone from the queue without exit record or accounting before it
        counts as lost.
    :param log_dir: where job logs, exit records and tokens go (default: the Grid Engine connection's
        ``log_dir``, else ``$JOBMON_AIRFLOW_HOME/logs``); on a real cluster a directory every node sees.
    """

    def __init__(
        self,
        *,
        compute_resources: Mapping[str, Any] | None = None,
        max_attempts: int = 3,
        resource_scales: Mapping[str, Any] | None = None,
        fallback_queues: Sequence[str] = (),
        cluster: str | None = None,
        jobmon_conn_id: str = JobmonHook.default_conn_name,
        gridengine_conn_id: str = "gridengine_default",
        tool: str | None = None,
        workflow_args: str | None = None,
        log_dir: str | None = None,
        deferrable: bool = True,
        poll_interval: float | None = None,
        heartbeat_interval: float = 90.0,
        lost_grace_s: float = DEFAULT_LOST_GRACE_S,
        **kwargs: Any,
    ) -> None:
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise ValueError(f"max_attempts: expected a whole number ≥ 1, got {max_attempts!r}")
        super().__init__(**kwargs)
        self.compute_resources = dict(compute_resources or {})
        self.max_attempts = max_attempts
        self.resource_scales = validate_resource_scales(resource_scales)  # consumes nothing; JSON-able
        self.fallback_queues = list(fallback_queues)
        self.cluster = cluster
        self.jobmon_conn_id = jobmon_conn_id
        self.gridengine_conn_id = gridengine_conn_id
        self.tool = tool
        self.workflow_args = workflow_args
        self.log_dir = log_dir
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.lost_grace_s = lost_grace_s
        if not is_templated(self.compute_resources):
            Resources.parse(self.compute_resources)  # bad values fail when the DAG is parsed

    # -- collaborators, built at run time ----------------------------------------------------------------------
    @cached_property
    def hook(self) -> JobmonHook:
        return JobmonHook(self.jobmon_conn_id)

    @cached_property
    def services(self) -> Services:
        return self.hook.get_services()

    @cached_property
    def cluster_spec(self) -> dict[str, Any]:
        return cluster_spec(self.cluster or self.hook.cluster_type, gridengine_conn_id=self.gridengine_conn_id)

    @cached_property
    def cluster_backend(self) -> Cluster:
        return get_cluster(self.cluster_spec)

    @cached_property
    def _gridengine_hook(self) -> Any:
        from jobmon_airflow.hooks.gridengine import GridEngineHook

        return GridEngineHook(self.gridengine_conn_id) if self.cluster_spec["type"] == "gridengine" else None

    @property
    def resolved_poll_interval(self) -> float:
        """The operator's ``poll_interval``, else the Grid Engine connection's, else 10 s (local)."""
        if self.poll_interval is not None:
            return float(self.poll_interval)
        return float(self._gridengine_hook.poll_interval) if self._gridengine_hook else LOCAL_POLL_INTERVAL_S

    def job_settings(self, run_id: str) -> JobSettings:
        """Logs, exit records and tokens of one DAG run: ``log_dir``, else the Grid Engine connection's, else
        ``$JOBMON_AIRFLOW_HOME/logs``; on a real cluster a directory every node sees."""
        configured = self.log_dir or (self._gridengine_hook.log_dir if self._gridengine_hook else None)
        return JobSettings(
            log_dir=paths.run_log_dir(Path(configured) if configured else None, self.dag_id, run_id),
            state_manager_url=self.hook.state_manager_url,
            heartbeat_interval=self.heartbeat_interval,
            http_retry_seconds=self.hook.worker_http_retry_seconds,
        )

    def workflow(self, context: Context) -> WorkflowIdentity:
        ti = context["ti"]
        max_tries = getattr(ti, "max_tries", None)
        return WorkflowIdentity(
            dag_id=self.dag_id,
            run_id=context["run_id"],
            tool=self.tool,
            tool_version=self.tool_version(),
            workflow_args=self.workflow_args,
            try_number=ti.try_number,
            # Airflow's own reckoning (a clear sets max_tries = try_number + retries): the pass's first try.
            new_pass=max_tries is None or ti.try_number == max_tries - (self.retries or 0) + 1,
        )

    def tool_version(self) -> str:
        """The DAG's code version: a hash of its file, so a changed DAG binds a new tool version."""
        try:
            return hashlib.sha256(Path(self.dag.fileloc).read_bytes()).hexdigest()[:16]
        except Exception:  # no DAG file (built in a test, a REPL): one version
            return "1"

    # -- waiting ---------------------------------------------------------------------------------------------------
    def trigger_kwargs(self) -> dict[str, Any]:
        """Where a trigger looks and how often (what every Jobmon trigger takes)."""
        return {
            "cluster": self.cluster_spec,
            "jobmon_conn_id": self.jobmon_conn_id,
            "poll_interval": self.resolved_poll_interval,
            "lost_grace_s": self.lost_grace_s,
        }

    def wait_for(
        self, trigger: Any, jobs: Mapping[int, str], every_poll: Callable[[], object] | None = None
    ) -> dict[int, WatchEvent]:
        """Defer to ``trigger`` (``execute_complete`` goes on); in blocking mode, poll here until the instances in
        {instance id: job id} have ended and return their events (``every_poll``: what the trigger does on each
        poll besides watching)."""
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete", timeout=self.execution_timeout)
        poller = Poller(self.services, self.cluster_backend, self.lost_grace_s)
        return poller.wait_all_blocking(jobs, self.resolved_poll_interval, every_poll)

    # -- outcomes ------------------------------------------------------------------------------------------------
    @contextmanager
    def run_errors(self) -> Iterator[None]:
        """A configuration error (bad resources, an unknown queue, a name too long) or a refusal fails without
        retry; a cluster that cannot be reached fails this try only (Airflow retries it)."""
        try:
            yield
        except ClusterUnavailable as exc:
            raise AirflowException(f"{self.cluster_spec['type']} cluster unavailable: {exc}") from None
        except SubmissionError as exc:
            raise AirflowFailException(f"{self.cluster_spec['type']} refused the job: {exc}") from None
        except ValueError as exc:  # ResourceError and UnknownQueue are ValueErrors
            raise AirflowFailException(str(exc)) from None

    def watch_event(self, event: Any) -> WatchEvent:
        try:
            return WatchEvent.from_dict(event)
        except RecordError as exc:
            raise AirflowException(f"Jobmon trigger sent an unexpected event {event!r}: {exc}") from None

    def outcome(self, verdict: Verdict) -> Any:
        """Success returns the result (XCom); a retry or a failure raises, with the error logs in the task log."""
        for detail in verdict.details:
            self.log.error("Error log (stderr tail):\n%s", detail)
        if verdict.kind == VerdictKind.SUCCESS:
            return verdict.result
        if verdict.kind == VerdictKind.RETRY:
            raise AirflowException(verdict.message)
        raise AirflowFailException(verdict.message)
