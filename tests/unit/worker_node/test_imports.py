"""The worker node starts with every job on a compute node: standard library and stdlib-only modules only."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.unit.worker_node.helpers import ROOT

FORBIDDEN = (
    "sqlalchemy",
    "airflow",
    "requests",
    "pydantic",
    "fastapi",
    "jobmon_airflow.service",
    "jobmon_airflow.clusters",
)
ALLOWED_PACKAGE_MODULES = {
    "jobmon_airflow",
    "jobmon_airflow.array_manifest",
    "jobmon_airflow.exit_codes",
    "jobmon_airflow.files",
    "jobmon_airflow.procfs",
    "jobmon_airflow.records",
    "jobmon_airflow.states",
}


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def _foreign(modules: set[str]) -> set[str]:
    """Modules neither of the standard library, nor of the package, nor loaded by the interpreter's start-up."""
    at_start = _modules_after("pass")
    return {m for m in modules - at_start if m.split(".")[0] not in sys.stdlib_module_names | {"jobmon_airflow"}}


def test_worker_imports_only_the_standard_library() -> None:
    modules = _modules_after("import jobmon_airflow.worker_node")
    assert "jobmon_airflow.worker_node.cli" in modules  # the package imports the whole worker
    assert sorted(m for m in modules if m.startswith(FORBIDDEN)) == []
    ours = {
        m for m in modules if m.split(".")[0] == "jobmon_airflow" and not m.startswith("jobmon_airflow.worker_node")
    }
    assert ours <= ALLOWED_PACKAGE_MODULES, ours - ALLOWED_PACKAGE_MODULES
    assert _foreign(modules) == set()


def test_array_manifest_imports_only_the_standard_library() -> None:
    modules = _modules_after("import jobmon_airflow.array_manifest")
    assert {m for m in modules if m.split(".")[0] == "jobmon_airflow"} <= ALLOWED_PACKAGE_MODULES
    assert _foreign(modules) == set()
