"""The Jobmon Airflow plugin: the Jobmon app (State Manager) in Airflow's API server, and the run listener."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from jobmon_airflow import listeners
from jobmon_airflow.server.app import URL_PREFIX


def _fastapi_apps() -> list[dict[str, Any]]:
    from jobmon_airflow.hooks.jobmon import JobmonHook
    from jobmon_airflow.server.app import create_app

    return [{"app": create_app(JobmonHook().get_db_url()), "url_prefix": URL_PREFIX, "name": "Jobmon"}]


class JobmonPlugin(AirflowPlugin):
    name = "jobmon"
    listeners = [listeners]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Built lazily: only the API server mounts it, and building it connects to the state database.
        return _fastapi_apps()
