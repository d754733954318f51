"""Which cluster a task runs on: the small JSON-able spec an operator gives its trigger, and the cluster built from
it again in the triggerer. An adapter: a ``gridengine`` cluster comes from an Airflow connection
(:class:`~jobmon_airflow.hooks.gridengine.GridEngineHook`); the backends themselves never import Airflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobmon_airflow.clusters import CLUSTER_TYPES
from jobmon_airflow.clusters.base import Cluster
from jobmon_airflow.paths import local_cluster_root


def cluster_spec(cluster_type: str, *, gridengine_conn_id: str = "gridengine_default") -> dict[str, Any]:
    """The serialisable description of a cluster (what a trigger carries)."""
    if cluster_type == "local":
        return {"type": "local", "root": str(local_cluster_root())}
    if cluster_type == "gridengine":
        return {"type": "gridengine", "conn_id": gridengine_conn_id}
    raise ValueError(f"cluster: expected one of {', '.join(CLUSTER_TYPES)}, got {cluster_type!r}")


def get_cluster(spec: dict[str, Any]) -> Cluster:
    """The cluster a spec of :func:`cluster_spec` describes."""
    if spec["type"] == "local":
        from jobmon_airflow.clusters.local import LocalCluster

        return LocalCluster(Path(spec["root"]), slots=spec.get("slots"))
    if spec["type"] == "gridengine":
        from jobmon_airflow.hooks.gridengine import GridEngineHook

        return GridEngineHook(gridengine_conn_id=spec["conn_id"]).get_cluster()
    raise ValueError(f"cluster spec: unknown type {spec.get('type')!r}")
