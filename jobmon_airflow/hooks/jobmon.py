"""JobmonHook: the Jobmon state database and the State Manager URL, from the ``jobmon`` connection."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from jobmon_airflow import db
from jobmon_airflow.hooks.jobmon_url import db_url_of
from jobmon_airflow.service import Services

STATE_MANAGER_URL_ENV = "JOBMON_AIRFLOW_STATE_MANAGER_URL"
DEFAULT_STATE_MANAGER_URL = "http://127.0.0.1:8790/jobmon"  # `jobmon-airflow server` defaults


class JobmonHook(BaseHook):
    """The Jobmon state database.

    Connection (type ``jobmon``), first match wins:
      * extra ``sql_alchemy_conn``: a SQLAlchemy URL (e.g. ``sqlite:////data/jobmon.sqlite``);
      * extra ``mysql_conn_id``: an Airflow MySQL connection holding the database;
      * host/login/password/schema/port: a MySQL/MariaDB server (driver PyMySQL);
      * no connection at all: the embedded SQLite file under ``$JOBMON_AIRFLOW_HOME``.
    Extras: ``state_manager_url`` (where worker nodes report; default ``$JOBMON_AIRFLOW_STATE_MANAGER_URL``,
    else the standalone server's address), ``cluster`` (``local`` or ``gridengine``; default ``local``) and
    ``worker_http_retry_seconds`` (default 30).
    """

    conn_name_attr = "jobmon_conn_id"
    default_conn_name = "jobmon_default"
    conn_type = "jobmon"
    hook_name = "Jobmon"

    def __init__(self, jobmon_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jobmon_conn_id = jobmon_conn_id

    @cached_property
    def _extra(self) -> dict[str, Any]:
        conn = self._connection
        return dict(conn.extra_dejson) if conn is not None else {}

    @cached_property
    def _connection(self) -> Any:
        try:
            return self.get_connection(self.jobmon_conn_id)
        except AirflowNotFoundException:
            self.log.info("No connection %r: using the embedded SQLite state database", self.jobmon_conn_id)
            return None

    def get_db_url(self) -> str:
        # The rules live beside the command line's Airflow-free reading of the same connection.
        return db_url_of(self._connection, self._extra, self.get_connection)

    def get_conn(self) -> sa.engine.Engine:
        """The engine, migrated to the newest schema."""
        engine = db.get_engine(self.get_db_url())
        db.ensure_schema(engine)
        return engine

    def get_services(self) -> Services:
        """The service layer on this connection's state database."""
        return Services.for_engine(self.get_conn())

    @property
    def state_manager_url(self) -> str:
        url = self._extra.get("state_manager_url") or os.environ.get(STATE_MANAGER_URL_ENV)
        return str(url or DEFAULT_STATE_MANAGER_URL).rstrip("/")

    @property
    def worker_http_retry_seconds(self) -> float:
        """How long a worker node retries its start and final reports before relying on its exit record."""
        return float(self._extra.get("worker_http_retry_seconds", 30.0))

    @property
    def cluster_type(self) -> str:
        return str(self._extra.get("cluster", "local"))

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self.get_conn().connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, "Jobmon state database reachable and migrated"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden-fields": [],
            "relabeling": {"host": "MySQL host (empty: SQLite)", "schema": "Database"},
            "placeholders": {
                "extra": '{"state_manager_url": "http://api-server:8080/jobmon", "cluster": "gridengine"}',
            },
        }
