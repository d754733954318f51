"""Jobmon's domain operations on the state database, split by caller.

* :mod:`~jobmon_airflow.service.binding`: the operators' binding of workflows, runs, templates, arrays, tasks;
* :mod:`~jobmon_airflow.service.reports`: the worker node's reports (the State Manager's only dependency);
* :mod:`~jobmon_airflow.service.lifecycle`: one attempt from resources to outcome, liveness and triage;
* :mod:`~jobmon_airflow.service.queries`: read-only views (operators, CLI, demo, later the reaper and the UI);
* :mod:`~jobmon_airflow.service.core`: what they share (tables, sessions, chunking, upserts, transitions).

Nothing here talks to a cluster or imports Airflow. :class:`Services` bundles the four for one database.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from jobmon_airflow.service.binding import Binding, BoundRun, TaskSpec
from jobmon_airflow.service.core import NotFound, Unauthorized
from jobmon_airflow.service.lifecycle import Lifecycle, ResourcePlan
from jobmon_airflow.service.queries import Queries, TaskInstanceView, TaskView
from jobmon_airflow.service.reports import Reports


@dataclass(frozen=True)
class Services:
    """The service layer of one state database."""

    engine: Engine
    binding: Binding
    reports: Reports
    lifecycle: Lifecycle
    queries: Queries

    @classmethod
    def for_engine(cls, engine: Engine) -> Services:
        return cls(engine, Binding(engine), Reports(engine), Lifecycle(engine), Queries(engine))


__all__ = [
    "Binding",
    "BoundRun",
    "Lifecycle",
    "NotFound",
    "Queries",
    "Reports",
    "ResourcePlan",
    "Services",
    "TaskInstanceView",
    "TaskSpec",
    "TaskView",
    "Unauthorized",
]
