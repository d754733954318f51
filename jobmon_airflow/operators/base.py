"""What every Jobmon operator shares: the Jobmon connection, the cluster, where logs go, how often to poll."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from jobmon_airflow import db, execution
from jobmon_airflow.clusters import cluster_spec, get_cluster
from jobmon_airflow.clusters.base import Cluster
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.resources import Resources, scale_resources
from jobmon_airflow.service import JobmonService
from jobmon_airflow.watch import DEFAULT_LOST_GRACE_S

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
    :param resource_scales: growth after a resource kill, Jobmon's default ``{"memory": 0.5, "runtime": 0.5}``.
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
        self.resource_scales = dict(resource_scales) if resource_scales is not None else None
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
        if self.resource_scales is not None:
            scale_resources(Resources(), self.resource_scales)

    @cached_property
    def hook(self) -> JobmonHook:
        return JobmonHook(self.jobmon_conn_id)

    @cached_property
    def service(self) -> JobmonService:
        return self.hook.get_service()

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

    @property
    def cluster_id(self) -> int:
        return self.service.cluster_id(self.cluster_spec["type"], self.cluster_spec["type"])

    def run_log_dir(self, run_id: str) -> Path:
        """Logs, exit records and tokens of one DAG run: ``log_dir``, else the Grid Engine connection's, else
        ``$JOBMON_AIRFLOW_HOME/logs``; on a real cluster a directory every node sees."""
        configured = self.log_dir or (self._gridengine_hook.log_dir if self._gridengine_hook else None)
        root = Path(configured) if configured else db.jobmon_home() / "logs"
        return root / execution.safe_path_part(self.dag_id) / execution.safe_path_part(run_id)

    def tool_version(self) -> str:
        """The DAG's code version: a hash of its file, so a changed DAG binds a new tool version."""
        try:
            return hashlib.sha256(Path(self.dag.fileloc).read_bytes()).hexdigest()[:16]
        except Exception:  # no DAG file (built in a test, a REPL): one version
            return "1"
