"""Test set-up shared by every suite.

Airflow reads its configuration at import, so the environment is fixed here, before any test imports airflow.
Tests that need Grid Engine or MariaDB take the ``gridengine`` / ``mariadb_url`` fixtures: when the service is
missing they fail under ``CI=true`` and skip with a one-line reason elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="jobmon-airflow-tests-"))

os.environ.setdefault("AIRFLOW_HOME", str(_HOME / "airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("JOBMON_AIRFLOW_HOME", str(_HOME / "jobmon"))

IN_CI = os.environ.get("CI", "").lower() == "true"
SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}
MARIADB_URL = os.environ.get("JOBMON_TEST_MARIADB_URL", "mysql+pymysql://jobmon:jobmon@127.0.0.1:3306/jobmon")


def require_service(reason: str | None, what: str) -> None:
    """Fail in CI, skip elsewhere, when a service the test needs is missing."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{what} is required when CI=true: {reason}", pytrace=False)
    pytest.skip(f"{what} not available ({reason}); run scripts/setup_services.sh as root")


def _gridengine_problem() -> str | None:
    for key, value in SGE_ENV.items():
        os.environ.setdefault(key, value)
    if shutil.which("qsub") is None:
        return "qsub not on PATH"
    try:
        proc = subprocess.run(["qstat", "-f"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"qstat failed: {exc}"
    if proc.returncode != 0:
        return f"qstat -f exit {proc.returncode}: {proc.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def gridengine() -> dict[str, str]:
    """The real Grid Engine cluster's client environment."""
    require_service(_gridengine_problem(), "Grid Engine")
    return {k: os.environ[k] for k in SGE_ENV}


@contextlib.contextmanager
def _fresh_mariadb_database() -> Iterator[str]:
    """SQLAlchemy URL of a new, empty MariaDB database (``jobmon_test_<random>``), dropped on exit."""
    import uuid

    import sqlalchemy as sa

    problem: str | None = None
    name = f"jobmon_test_{uuid.uuid4().hex[:12]}"
    server = sa.engine.make_url(MARIADB_URL)
    try:
        admin = sa.create_engine(server, pool_pre_ping=True)  # outlives MariaDB restarts (chaos suite)
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    except Exception as exc:  # any failure to connect or create means the service is not there
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
    require_service(problem, "MariaDB")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh MariaDB database for this session, dropped at the end.

    The server keeps its data between sessions (and CI runs on the developer's machine): a database of our own
    keeps every session independent of what earlier ones left.
    """
    with _fresh_mariadb_database() as url:
        yield url


@pytest.fixture(scope="module")
def own_mariadb_url() -> Iterator[str]:
    """A fresh MariaDB database for one test module alone: for tests of passes over the whole database (the
    reaper, the max-RSS ETL) that other modules' workflows would otherwise meet."""
    with _fresh_mariadb_database() as url:
        yield url


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private JOBMON_AIRFLOW_HOME (SQLite state DB, logs, local cluster) for one test."""
    monkeypatch.setenv("JOBMON_AIRFLOW_HOME", str(tmp_path / "jobmon"))
    yield tmp_path / "jobmon"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata database (SQLite under the session's AIRFLOW_HOME)."""
    from airflow.utils import db as airflow_db

    airflow_db.initdb()


@pytest.fixture(scope="session")
def state_manager() -> Iterator[str]:
    """The standalone Jobmon State Manager on the session's embedded database; its URL is exported to operators."""
    from jobmon_airflow.server.app import start_in_thread

    port = free_port()
    server = start_in_thread(port)
    url = f"http://127.0.0.1:{port}/jobmon"
    os.environ["JOBMON_AIRFLOW_STATE_MANAGER_URL"] = url
    yield url
    server.should_exit = True


def run_dag(dag: object) -> object:
    """``dag.test()`` for a DAG built inside a test (it must be serialised to the metadata DB first)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()  # type: ignore[attr-defined]
