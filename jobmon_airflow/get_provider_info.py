"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Every operator, hook, trigger and sensor module of the package is listed (tests/unit/test_provider_info.py fails
when a module defining one is left out), and so is every extra link class of its operators. The sensors' entry is
built from the modules of ``jobmon_airflow.sensors``. Nothing here imports Airflow.
"""

from __future__ import annotations

import importlib.util
import pkgutil
from typing import Any

from jobmon_airflow import __version__

OPERATOR_MODULES = ["jobmon_airflow.operators.task", "jobmon_airflow.operators.array"]
JOBMON_HOOK_MODULES = ["jobmon_airflow.hooks.jobmon", "jobmon_airflow.hooks.airflow_api", "jobmon_airflow.hooks.qpid"]
GRIDENGINE_HOOK_MODULES = ["jobmon_airflow.hooks.gridengine"]
TRIGGER_MODULES = ["jobmon_airflow.triggers", "jobmon_airflow.sensors.workflow"]
EXTRA_LINKS = ["jobmon_airflow.ui.links.JobmonLink"]  # on every Jobmon operator: the task's Jobmon page
SENSORS_PACKAGE = "jobmon_airflow.sensors"


def _public_submodules(package: str) -> list[str]:
    """The public modules of ``package`` (found on disk, not imported); [] when the package does not exist."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return sorted(
        f"{package}.{info.name}"
        for info in pkgutil.iter_modules(spec.submodule_search_locations)
        if not info.name.startswith("_")
    )


def get_provider_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "package-name": "jobmon-airflow",
        "name": "Jobmon",
        "description": "Jobmon workflow tracking on Grid Engine for Apache Airflow.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Jobmon", "external-doc-url": "https://github.com/ihmeuw-scicomp/jobmon"},
            {"integration-name": "Grid Engine"},
        ],
        "operators": [{"integration-name": "Jobmon", "python-modules": list(OPERATOR_MODULES)}],
        "hooks": [
            {"integration-name": "Jobmon", "python-modules": list(JOBMON_HOOK_MODULES)},
            {"integration-name": "Grid Engine", "python-modules": list(GRIDENGINE_HOOK_MODULES)},
        ],
        "triggers": [{"integration-name": "Jobmon", "python-modules": list(TRIGGER_MODULES)}],
        "connection-types": [
            {"connection-type": "jobmon", "hook-class-name": "jobmon_airflow.hooks.jobmon.JobmonHook"},
            {
                "connection-type": "gridengine",
                "hook-class-name": "jobmon_airflow.hooks.gridengine.GridEngineHook",
            },
        ],
        "plugins": [{"name": "jobmon", "plugin-class": "jobmon_airflow.plugin.JobmonPlugin"}],
        "extra-links": list(EXTRA_LINKS),
    }
    sensor_modules = _public_submodules(SENSORS_PACKAGE)
    if sensor_modules:
        info["sensors"] = [{"integration-name": "Jobmon", "python-modules": sensor_modules}]
    return info
