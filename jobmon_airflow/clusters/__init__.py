"""Batch-system backends behind one interface (:mod:`jobmon_airflow.clusters.base`): ``local`` and ``gridengine``.

Nothing here imports Airflow: worker nodes and the local shepherd stay light. A cluster is built from a connection
or a trigger's spec by the adapter :mod:`jobmon_airflow.hooks.cluster`.
"""

from __future__ import annotations

CLUSTER_TYPES = ("local", "gridengine")
