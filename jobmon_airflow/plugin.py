"""The Jobmon Airflow plugin: the Jobmon app (State Manager, query API, pages) in Airflow's API server, the views
that show the pages in Airflow's UI, and the run listener."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from jobmon_airflow import listeners
from jobmon_airflow.server.app import URL_PREFIX
from jobmon_airflow.server.pages import airflow_hrefs


def _fastapi_apps() -> list[dict[str, Any]]:
    from jobmon_airflow.hooks.jobmon import JobmonHook
    from jobmon_airflow.server.app import create_app
    from jobmon_airflow.ui.auth import AirflowViewerAuth

    # Airflow does not authenticate plugin apps: the query API and the pages check Airflow's token themselves.
    app = create_app(JobmonHook().get_db_url(), viewer_auth=AirflowViewerAuth())
    return [{"app": app, "url_prefix": URL_PREFIX, "name": "Jobmon"}]


#: Where the Jobmon pages show in Airflow's UI: rendered in Airflow's iframe (``url_route``), at the same origin,
#: so the pages read the UI's own token (see README, "Jobmon in the Airflow UI").
_HREFS = airflow_hrefs(URL_PREFIX)
EXTERNAL_VIEWS = [
    {"name": "Jobmon", "href": _HREFS["nav"], "destination": "nav", "url_route": "jobmon"},
    {"name": "Jobmon", "href": _HREFS["dag_run"], "destination": "dag_run", "url_route": "jobmon-dag-run"},
    {"name": "Jobmon", "href": _HREFS["task_instance"], "destination": "task_instance",
     "url_route": "jobmon-task-instance"},
]  # fmt: skip


class JobmonPlugin(AirflowPlugin):
    name = "jobmon"
    listeners = [listeners]
    external_views = EXTERNAL_VIEWS

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Built lazily: only the API server mounts it, and building it connects to the state database.
        return _fastapi_apps()
