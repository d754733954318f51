"""Jobmon's domain operations on the state database, split by caller.

* :mod:`~jobmon_airflow.service.binding`: the operators' binding of workflows, runs, templates, arrays, tasks;
* :mod:`~jobmon_airflow.service.reports`: the worker node's reports (the State Manager's only dependency);
* :mod:`~jobmon_airflow.service.lifecycle`: one attempt from resources to outcome, liveness and triage;
* :mod:`~jobmon_airflow.service.queries`: read-only views for the operators and the demo;
* :mod:`~jobmon_airflow.service.insights`: read-only aggregates for the query API, the pages and the CLI;
* :mod:`~jobmon_airflow.service.admin`: the CLI's writes (concurrency, reset, task update);
* :mod:`~jobmon_airflow.service.reaping` and :mod:`~jobmon_airflow.service.usage`: the maintenance DAGs';
* :mod:`~jobmon_airflow.service.core`: what they share (tables, sessions, chunking, upserts, transitions).

Nothing here talks to a cluster or imports Airflow. :class:`Services` bundles the callers' services for one database.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from jobmon_airflow.service.admin import Admin
from jobmon_airflow.service.binding import Binding, BoundRun, TaskSpec
from jobmon_airflow.service.core import NotFound, Unauthorized
from jobmon_airflow.service.insights import Insights
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
    insights: Insights  # read-only views for the query API, the pages and the CLI
    admin: Admin  # the CLI's writes (concurrency, reset, task update)

    @classmethod
    def for_engine(cls, engine: Engine) -> Services:
        return cls(
            engine,
            Binding(engine),
            Reports(engine),
            Lifecycle(engine),
            Queries(engine),
            Insights(engine),
            Admin(engine),
        )


__all__ = [
    "Admin",
    "Binding",
    "BoundRun",
    "Insights",
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
