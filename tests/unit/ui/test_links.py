"""The operators' "Jobmon" extra link: on both operators, kept through DAG serialisation (Airflow's UI reads it
from XCom by its key), and pointing at Airflow's "Jobmon" view framing the page that resolves the task instance."""

from __future__ import annotations

import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from airflow.sdk.types import TaskInstanceKey
from fastapi.testclient import TestClient

from jobmon_airflow import db
from jobmon_airflow.operators import JobmonArrayOperator, JobmonTaskOperator
from jobmon_airflow.plugin import EXTERNAL_VIEWS
from jobmon_airflow.server.app import URL_PREFIX, create_app
from jobmon_airflow.server.viewer import StaticViewerAuth, Viewer
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.templates import TaskTemplate
from jobmon_airflow.ui.links import NAV_ROUTE, JobmonLink, jobmon_page_url


def test_the_link_opens_the_nav_view_at_the_task_instance_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    key = TaskInstanceKey("my_dag", "model", "manual__2026-01-01T00:00:00+00:00", 2, map_index=4)
    url = JobmonLink().get_link(JobmonTaskOperator(task_id="model", command="true"), ti_key=key)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "airflow.example.org")
    assert parts.path == f"/plugin/{NAV_ROUTE}{URL_PREFIX}/ui/task-instance"
    assert parse_qs(parts.query) == {
        "dag_id": ["my_dag"], "run_id": ["manual__2026-01-01T00:00:00+00:00"], "task_id": ["model"],
        "map_index": ["4"],
    }  # fmt: skip
    (nav,) = [v for v in EXTERNAL_VIEWS if v["destination"] == "nav"]
    assert nav["url_route"] == NAV_ROUTE


def test_the_framed_path_resolves_to_the_task_page(tmp_path: Path) -> None:
    """What Airflow's UI frames for ``/plugin/jobmon/<path>`` is ``<path>``: the Jobmon app redirects it to the
    task's page."""
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    run = svc.binding.bind_workflow_run(dag_id="my_dag", run_id="r 1+", user="u")
    (task,) = svc.binding.bind_tasks(run.workflow_id, [TaskSpec("model", "model[4]", "true", map_index=4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(url, viewer_auth=StaticViewerAuth({"t": Viewer("u", None)})))
    framed = jobmon_page_url("my_dag", "r 1+", "model", 4).removeprefix(f"/plugin/{NAV_ROUTE}")
    assert framed.startswith(URL_PREFIX)
    r = client.get(framed.removeprefix(URL_PREFIX), headers={"Authorization": "Bearer t"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ui/tasks/{task}"


def test_both_operators_carry_the_link_through_serialisation() -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    template = TaskTemplate(name="t", command_template="echo {i}", node_args=["i"])
    with DAG("links_dag", schedule=None) as dag:
        JobmonTaskOperator(task_id="single", command="true")
        JobmonArrayOperator(task_id="array", task_template=template, node_args={"i": [1, 2]})
    serialized = DagSerialization.to_dict(dag)
    for task in serialized["dag"]["tasks"]:
        assert task["__var"]["_operator_extra_links"] == {"Jobmon": "_link_JobmonLink"}, task["__var"]["task_id"]


def test_external_views_are_what_airflows_plugin_api_accepts() -> None:
    """The views as Airflow's UI reads them (``GET /api/v2/plugins``): one per destination, each framed
    (``url_route``, unique) and pointing into the Jobmon app."""
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    views = [ExternalViewResponse.model_validate(v) for v in EXTERNAL_VIEWS]
    assert sorted(v.destination for v in views) == ["dag_run", "nav", "task_instance"]
    assert len({v.url_route for v in views}) == 3 and all(v.url_route and v.name == "Jobmon" for v in views)
    assert all(v.href.startswith(f"{URL_PREFIX}/ui/") for v in views)
