"""What every Jobmon operator shares: the Jobmon connection, the cluster, where logs go, how often to poll."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from jobmon_airflow import db, execution
from jobmon_airflow.clusters import cluster_spec, get_cluster
from jobmon_airflow.clusters.base import Cluster
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.service import JobmonService

LOCAL_POLL_INTERVAL_S = 10.0


def is_templated(value: Any) -> bool:
    """Jinja still to render: validation waits for ``execute``."""
    return "{{" in repr(value) or "{%" in repr(value)


class JobmonBaseOperator(BaseOperator):
    """Collaborators built at run time (never at DAG parse time) from the operator's connection ids."""

    jobmon_conn_id: str
    gridengine_conn_id: str
    cluster: str | None
    log_dir: str | None
    poll_interval: float | None

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
