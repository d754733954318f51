"""The architecture is kept by import-linter (``[tool.importlinter]`` in pyproject.toml, run by scripts/test.sh).

One test breaks a copy of the package on purpose (a domain module importing Airflow, or the service's database)
and checks that ``lint-imports`` fails naming the contract and the import; the other runs it on the real tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason=f"{LINT_IMPORTS} is not installed (extra 'test')")


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``root``'s pyproject.toml, ``root`` first on the path, no cache left behind."""
    args = [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(root / "pyproject.toml")]
    for contract in contracts:
        args += ["--contract", contract]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)


def copy_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(REPO / "jobmon_airflow", root / "jobmon_airflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(
    ("injected", "contract", "contract_name", "broken"),
    [
        pytest.param(
            "import airflow",
            "no-airflow",
            "Only the adapters import airflow",
            "jobmon_airflow.resources -> airflow",
            id="domain-imports-airflow",
        ),
        pytest.param(
            "from jobmon_airflow import db",
            "layers",
            "Layers: adapters > server",
            "jobmon_airflow.resources -> jobmon_airflow.db",
            id="domain-imports-db",
        ),
    ],
)
def test_lint_imports_fails_when_a_domain_module_breaks_a_contract(
    tmp_path: Path, injected: str, contract: str, contract_name: str, broken: str
) -> None:
    root = copy_project(tmp_path)
    module = root / "jobmon_airflow" / "resources.py"
    module.write_text(module.read_text() + f"\n{injected}  # injected by test_architecture\n")

    result = lint_imports(root, contract)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"{contract_name}" in output and "BROKEN" in output, output
    assert broken in output, f"the injected import is not named:\n{output}"


def test_lint_imports_passes_on_the_tree() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
