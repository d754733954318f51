"""Where Jobmon keeps its files by default. Standard library only; no Airflow (it reads ``$AIRFLOW_HOME`` itself).

``$JOBMON_AIRFLOW_HOME`` (default ``$AIRFLOW_HOME/jobmon``) holds the embedded SQLite state database, job logs,
the local cluster's spool and small caches.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def jobmon_home() -> Path:
    """``$JOBMON_AIRFLOW_HOME``, else ``$AIRFLOW_HOME/jobmon``, else ``~/airflow/jobmon``."""
    if home := os.environ.get("JOBMON_AIRFLOW_HOME"):
        return Path(home)
    return Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "jobmon"


def default_db_url() -> str:
    """The embedded state database."""
    return f"sqlite:///{jobmon_home() / 'jobmon.sqlite'}"


def local_cluster_root() -> Path:
    return jobmon_home() / "local-cluster"


def cache_dir() -> Path:
    return jobmon_home() / "cache"


def safe_path_part(text: str) -> str:
    """A name usable as one path component (DAG ids and run ids hold ':' and '+')."""
    return _UNSAFE_RE.sub("_", text)[:120] or "_"


def run_log_dir(root: Path | None, dag_id: str, run_id: str) -> Path:
    """Logs, exit records and tokens of one DAG run: under ``root`` (default ``$JOBMON_AIRFLOW_HOME/logs``)."""
    return (root or jobmon_home() / "logs") / safe_path_part(dag_id) / safe_path_part(run_id)
