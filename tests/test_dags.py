"""Every DAG in dags/ imports cleanly; the provider and the plugin register with Airflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("airflow_db")
def test_every_dag_in_the_dags_folder_imports_without_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert "example_jobmon_workflow" in bag.dag_ids
    dag = bag.get_dag("example_jobmon_workflow")
    assert dag is not None
    assert {t.task_id: t.task_type for t in dag.tasks} == {  # the 4 independent tasks run as one array
        "prepare_inputs": "JobmonTaskOperator",
        "sum_of_squares": "JobmonArrayOperator",
        "aggregate": "JobmonTaskOperator",
    }
    assert dag.get_task("sum_of_squares").node_args == {"part": [0, 1, 2, 3]}


def test_provider_info_validates_against_airflows_schema() -> None:
    import jsonschema
    from airflow import providers_manager

    from jobmon_airflow.get_provider_info import get_provider_info

    schema_path = Path(providers_manager.__file__).with_name("provider_info.schema.json")
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))


def test_connection_types_registered() -> None:
    from airflow.providers_manager import ProvidersManager

    hooks = ProvidersManager().hooks  # the core manager: what the API server and UI list
    assert hooks["jobmon"] is not None and hooks["jobmon"].hook_class_name.endswith("JobmonHook")
    assert "jobmon-airflow" in ProvidersManager().providers


@pytest.mark.usefixtures("airflow_db")
def test_plugin_serves_the_state_manager_and_listens_to_runs() -> None:
    from airflow import plugins_manager

    plugins = {p.name: p for p in plugins_manager._get_plugins()[0]}
    plugin = plugins["jobmon"]
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == "/jobmon"
    routes = {r.path for r in app["app"].routes}
    assert "/api/state/task_instance/{task_instance_id}/log_running" in routes
    assert any(getattr(m, "__name__", "") == "jobmon_airflow.listeners" for m in plugin.listeners)
