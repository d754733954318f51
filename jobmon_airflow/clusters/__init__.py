"""Batch-system backends behind one interface (:mod:`jobmon_airflow.clusters.base`): ``local`` and ``gridengine``.

Triggers re-create their cluster in the triggerer from a small JSON-able spec; :func:`get_cluster` builds it.
"""

from __future__ import annotations

from typing import Any

from jobmon_airflow.clusters.base import Cluster

CLUSTER_TYPES = ("local", "gridengine")


def cluster_spec(cluster_type: str, *, gridengine_conn_id: str = "gridengine_default") -> dict[str, Any]:
    """The serialisable description of a cluster (what a trigger carries)."""
    if cluster_type == "local":
        from jobmon_airflow.db import jobmon_home

        return {"type": "local", "root": str(jobmon_home() / "local-cluster")}
    if cluster_type == "gridengine":
        return {"type": "gridengine", "conn_id": gridengine_conn_id}
    raise ValueError(f"cluster: expected one of {', '.join(CLUSTER_TYPES)}, got {cluster_type!r}")


def get_cluster(spec: dict[str, Any]) -> Cluster:
    if spec["type"] == "local":
        from pathlib import Path

        from jobmon_airflow.clusters.local import LocalCluster

        return LocalCluster(Path(spec["root"]), slots=spec.get("slots"))
    if spec["type"] == "gridengine":
        from jobmon_airflow.hooks.gridengine import GridEngineHook

        return GridEngineHook(gridengine_conn_id=spec["conn_id"]).get_cluster()
    raise ValueError(f"cluster spec: unknown type {spec.get('type')!r}")
