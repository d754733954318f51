"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from jobmon_airflow import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "jobmon-airflow",
        "name": "Jobmon",
        "description": "Jobmon workflow tracking on Grid Engine for Apache Airflow.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Jobmon", "external-doc-url": "https://github.com/ihmeuw-scicomp/jobmon"},
            {"integration-name": "Grid Engine"},
        ],
        "operators": [{"integration-name": "Jobmon", "python-modules": ["jobmon_airflow.operators.task"]}],
        "sensors": [{"integration-name": "Jobmon", "python-modules": ["jobmon_airflow.sensors.reaper"]}],
        "hooks": [
            {"integration-name": "Jobmon", "python-modules": ["jobmon_airflow.hooks.jobmon"]},
            {"integration-name": "Grid Engine", "python-modules": ["jobmon_airflow.hooks.gridengine"]},
        ],
        "triggers": [{"integration-name": "Jobmon", "python-modules": ["jobmon_airflow.triggers"]}],
        "connection-types": [
            {"connection-type": "jobmon", "hook-class-name": "jobmon_airflow.hooks.jobmon.JobmonHook"},
            {
                "connection-type": "gridengine",
                "hook-class-name": "jobmon_airflow.hooks.gridengine.GridEngineHook",
            },
        ],
        "plugins": [{"name": "jobmon", "plugin-class": "jobmon_airflow.plugin.JobmonPlugin"}],
    }
