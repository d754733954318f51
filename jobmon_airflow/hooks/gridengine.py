"""GridEngineHook: the Grid Engine cluster described by a ``gridengine`` connection.

All Grid Engine logic lives in :mod:`jobmon_airflow.clusters.gridengine` (which never imports Airflow); this hook
only reads the connection and builds a :class:`GridEngineCluster` from it.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from jobmon_airflow.clusters.gridengine import (
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_PE,
    DEFAULT_SGE_CELL,
    DEFAULT_SGE_ROOT,
    GridEngineCluster,
)
from jobmon_airflow.db import jobmon_home

DEFAULT_POLL_INTERVAL_S = 30.0


class GridEngineHook(BaseHook):
    """A Grid Engine cluster, from a connection of type ``gridengine`` (all settings in its extras).

    Extras, each optional: ``sge_root`` (default ``/var/lib/gridengine``), ``sge_cell`` (``default``), ``queue``
    and ``project`` (defaults for jobs that name none), ``pe`` (parallel environment for multi-core jobs, ``smp``),
    ``log_dir`` (where job logs go unless the caller says otherwise), ``poll_interval`` (seconds between shared
    qstat polls, 30), ``command_timeout`` (seconds, 60). Without the connection the defaults apply.
    """

    conn_name_attr = "gridengine_conn_id"
    default_conn_name = "gridengine_default"
    conn_type = "gridengine"
    hook_name = "Grid Engine"

    def __init__(self, gridengine_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gridengine_conn_id = gridengine_conn_id

    @cached_property
    def extras(self) -> dict[str, Any]:
        try:
            conn = self.get_connection(self.gridengine_conn_id)
        except AirflowNotFoundException:
            self.log.info("No connection %r: using Grid Engine defaults", self.gridengine_conn_id)
            return {}
        return dict(conn.extra_dejson)

    def _text(self, key: str, default: str | None = None) -> str | None:
        value = self.extras.get(key)
        return str(value) if value not in (None, "") else default

    def _seconds(self, key: str, default: float) -> float:
        value = self.extras.get(key, default)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if not seconds > 0:
            raise ValueError(f"connection {self.gridengine_conn_id!r} extra {key}: expected seconds > 0, got {value!r}")
        return seconds

    @property
    def poll_interval(self) -> float:
        return self._seconds("poll_interval", DEFAULT_POLL_INTERVAL_S)

    @property
    def log_dir(self) -> Path | None:
        text = self._text("log_dir")
        return Path(text) if text else None

    def get_cluster(self) -> GridEngineCluster:
        return GridEngineCluster(
            sge_root=self._text("sge_root", DEFAULT_SGE_ROOT) or DEFAULT_SGE_ROOT,
            sge_cell=self._text("sge_cell", DEFAULT_SGE_CELL) or DEFAULT_SGE_CELL,
            queue=self._text("queue"),
            project=self._text("project"),
            pe=self._text("pe", DEFAULT_PE) or DEFAULT_PE,
            command_timeout=self._seconds("command_timeout", DEFAULT_COMMAND_TIMEOUT_S),
            limits_cache_dir=jobmon_home() / "cache",  # queue limits shared by this host's task processes
        )

    def get_conn(self) -> GridEngineCluster:
        return self.get_cluster()

    def test_connection(self) -> tuple[bool, str]:
        try:
            limits = self.get_cluster().queue_limits(None)
        except Exception as exc:  # report any failure to the UI instead of raising
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Grid Engine reachable; queue {limits.name}: {limits}"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden-fields": ["host", "schema", "login", "password", "port"],
            "relabeling": {},
            "placeholders": {
                "extra": '{"sge_root": "/var/lib/gridengine", "sge_cell": "default", "queue": "all.q", '
                '"project": null, "log_dir": "/shared/jobmon/logs", "poll_interval": 30}',
            },
        }
