"""The worker node starts with every job on a compute node: the standard library only, and only what a run needs.

The modules are checked as a job starts the worker (``python_argv()``: ``-I -S``, so that ``site`` imports
nothing first). Start-up time itself is measured by ``benchmarks/worker_node.py``, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from jobmon_airflow import worker_node
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
#: Modules a run needs none of (each costs every job milliseconds): logging, HTTP and URL libraries (the client
#: speaks plain HTTP itself; urllib only for https or a proxy), argparse's help formatter (shutil), dataclasses
#: (inspect), typing, pathlib, secrets, the idna codec (a host name as text), and the domain modules built on them.
SLOW = (
    "logging",
    "http",
    "urllib",
    "email",
    "ssl",
    "argparse",
    "shutil",
    "dataclasses",
    "inspect",
    "typing",
    "pathlib",
    "secrets",
    "encodings.idna",
    "jobmon_airflow.records",
    "jobmon_airflow.states",
    "jobmon_airflow.procfs",
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
    """The modules loaded after ``statement``, in an interpreter started as jobs start the worker node."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); {statement}; "
    code += "import json; print(json.dumps(sorted(sys.modules)))"
    python = worker_node.python_argv()[:-1]  # the interpreter and its flags, without the script
    out = subprocess.run([*python, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout)) - {"json", "json.decoder", "json.scanner", "json.encoder", "_json"}


def _foreign(modules: set[str]) -> set[str]:
    """Modules neither of the standard library, nor of the package, nor loaded by the interpreter's start-up."""
    at_start = _modules_after("pass")
    return {m for m in modules - at_start if m.split(".")[0] not in sys.stdlib_module_names | {"jobmon_airflow"}}


def _is(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def test_a_run_imports_only_the_standard_library_and_little_of_it() -> None:
    modules = _modules_after("import jobmon_airflow.worker_node.cli")
    assert sorted(m for m in modules if _is(m, FORBIDDEN)) == []
    assert sorted(m for m in modules if _is(m, SLOW)) == []
    ours = {
        m for m in modules if m.split(".")[0] == "jobmon_airflow" and not m.startswith("jobmon_airflow.worker_node")
    }
    assert ours <= ALLOWED_PACKAGE_MODULES, ours - ALLOWED_PACKAGE_MODULES
    assert _foreign(modules) == set()


def test_the_package_imports_nothing_until_asked() -> None:
    modules = _modules_after("import jobmon_airflow.worker_node")
    assert not any(m.startswith("jobmon_airflow.worker_node.") for m in modules)
    assert "subprocess" not in modules
    # ... and its names are still there, imported on first use.
    assert _modules_after("from jobmon_airflow.worker_node import WorkerNode") >= {"jobmon_airflow.worker_node.node"}


def test_signalling_the_command_imports_procfs_then() -> None:
    modules = _modules_after(
        "import subprocess; from jobmon_airflow.worker_node.process import CommandTree; "
        "p = subprocess.Popen(['sleep', '5']); CommandTree(p).signal(9); p.wait()"
    )
    assert "jobmon_airflow.procfs" in modules  # (with typing: a kill is rare, a start is every job's)


def test_array_manifest_imports_only_the_standard_library() -> None:
    modules = _modules_after("import jobmon_airflow.array_manifest")
    assert {m for m in modules if m.split(".")[0] == "jobmon_airflow"} <= ALLOWED_PACKAGE_MODULES
    assert sorted(m for m in modules if _is(m, SLOW)) == []
    assert _foreign(modules) == set()
