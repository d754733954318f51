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
    DEFAULT_MEMORY_RESOURCE,
    DEFAULT_PE,
    DEFAULT_SGE_CELL,
    DEFAULT_SGE_ROOT,
    DEFAULT_SUBMIT_RETRY_S,
    GridEngineCluster,
)
from jobmon_airflow.paths import cache_dir

DEFAULT_POLL_INTERVAL_S = 30.0


class GridEngineHook(BaseHook):
    """A Grid Engine cluster, from a connection of type ``gridengine`` (all settings in its extras).

    Extras, each optional: ``sge_root`` (default ``/var/lib/gridengine``), ``sge_cell`` (``default``), ``queue``
    and ``project`` (defaults for jobs that name none), ``pe`` (parallel environment for multi-core jobs, ``smp``),
    ``log_dir`` (where job logs go unless the caller says otherwise), ``poll_interval`` (seconds between shared
    qstat polls, 30), ``command_timeout`` (seconds, 60), ``submit_retry_seconds`` (how long a submission waits out
    an unreachable qmaster, 60; 0: not at all). Without the connection the defaults apply.

    Site options, validated and quoted like everything else (as dask-jobqueue's ``job_extra_directives``):

    * ``memory_resource``: ``"h_vmem"`` (default: ``-l h_vmem=<memory / cores>`` per slot) or ``"m_mem_free"``
      (Univa Grid Engine: ``-l m_mem_free=<memory>`` for the whole job);
    * ``extra_resources``: ``{"name": "value"}`` or ``["name=value"]``, each added as ``-l name=value`` (not
      h_rt, h_vmem or the memory resource: the backend requests those from ``compute_resources``);
    * ``extra_qsub_args``: a list of qsub arguments, one element each, e.g. ``["-p", "-100", "-A", "team"]``
      (passed as argv, never through a shell; options the backend sets itself are refused).

    A refused value raises ValueError naming the connection and the extra when the cluster is built.
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

    def _seconds(self, key: str, default: float, *, zero_ok: bool = False) -> float:
        value = self.extras.get(key, default)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if not (seconds >= 0 if zero_ok else seconds > 0):
            expected = "seconds ≥ 0" if zero_ok else "seconds > 0"
            raise ValueError(f"connection {self.gridengine_conn_id!r} extra {key}: expected {expected}, got {value!r}")
        return seconds

    @property
    def poll_interval(self) -> float:
        return self._seconds("poll_interval", DEFAULT_POLL_INTERVAL_S)

    @property
    def log_dir(self) -> Path | None:
        text = self._text("log_dir")
        return Path(text) if text else None

    def get_cluster(self) -> GridEngineCluster:
        """The cluster; ValueError naming the connection and the extra when a site option is refused."""
        sge_root = self._text("sge_root", DEFAULT_SGE_ROOT) or DEFAULT_SGE_ROOT
        sge_cell = self._text("sge_cell", DEFAULT_SGE_CELL) or DEFAULT_SGE_CELL
        command_timeout = self._seconds("command_timeout", DEFAULT_COMMAND_TIMEOUT_S)
        submit_retry_seconds = self._seconds("submit_retry_seconds", DEFAULT_SUBMIT_RETRY_S, zero_ok=True)
        try:
            return GridEngineCluster(
                sge_root=sge_root,
                sge_cell=sge_cell,
                queue=self._text("queue"),
                project=self._text("project"),
                pe=self._text("pe", DEFAULT_PE) or DEFAULT_PE,
                command_timeout=command_timeout,
                submit_retry_seconds=submit_retry_seconds,
                limits_cache_dir=cache_dir(),  # queue limits shared by this host's task processes
                memory_resource=self.extras.get("memory_resource") or DEFAULT_MEMORY_RESOURCE,
                extra_resources=self.extras.get("extra_resources"),
                extra_qsub_args=self.extras.get("extra_qsub_args"),
            )
        except ValueError as exc:  # the message starts with the extra's name
            raise ValueError(f"connection {self.gridengine_conn_id!r} extra {exc}") from None

    def get_conn(self) -> GridEngineCluster:
        return self.get_cluster()

    def test_connection(self) -> tuple[bool, str]:
        try:
            cluster = self.get_cluster()
            cluster.submit_retry_seconds = 0  # answer the UI now: an unreachable qmaster is the news
            limits = cluster.queue_limits(None)
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
                '"project": null, "log_dir": "/shared/jobmon/logs", "poll_interval": 30, '
                '"memory_resource": "h_vmem", "extra_resources": {"h_stack": "32M"}, '
                '"extra_qsub_args": ["-p", "-100"], "submit_retry_seconds": 60}',
            },
        }
