"""The "Jobmon" extra link on every Jobmon operator: the task instance's Jobmon page inside Airflow's UI.

The link is built from the task instance's key alone (DAG, run, task, map index), so it needs nothing from the run;
Airflow stores it in XCom when the try ends (the task runner's ``finalize``) and the UI reads it from there. It opens
the "Jobmon" view of Airflow's navigation at the page's path (``/plugin/jobmon/<path>``: Airflow's UI frames the
path it is given), which resolves the task instance to its Jobmon task (or, for an array, its elements).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink, conf

from jobmon_airflow.server.app import URL_PREFIX
from jobmon_airflow.server.pages import task_instance_path

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: The ``url_route`` of the plugin's navigation view (``jobmon_airflow.plugin.EXTERNAL_VIEWS``).
NAV_ROUTE = "jobmon"


def jobmon_page_url(dag_id: str, run_id: str, task_id: str, map_index: int, base_url: str = "") -> str:
    path = task_instance_path(URL_PREFIX, dag_id, run_id, task_id, map_index)
    return f"{base_url.rstrip('/')}/plugin/{NAV_ROUTE}{path}"


class JobmonLink(BaseOperatorLink):
    """Opens the task instance's Jobmon page: its instances (job ids, hosts, resources, exit codes, errors)."""

    name = "Jobmon"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        base_url = conf.get("api", "base_url", fallback="") or ""
        return jobmon_page_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index, base_url)
