"""Test databases: emptying a shared one (MariaDB test databases outlive a test module)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def drop_everything(engine: Engine) -> None:
    """Every table of the database, Jobmon's version table included: the next upgrade starts from nothing."""
    with engine.begin() as conn:
        if conn.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
            for table in sa.inspect(conn).get_table_names():
                conn.exec_driver_sql(f"DROP TABLE `{table}`")
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")
        else:
            for table in sa.inspect(conn).get_table_names():
                conn.exec_driver_sql(f'DROP TABLE "{table}"')


def mysql_connection(url: str) -> dict[str, Any]:
    """An Airflow MySQL connection (as JSON for ``AIRFLOW_CONN_…``) to the database at the SQLAlchemy ``url``."""
    parts = sa.engine.make_url(url)
    return {
        "conn_type": "mysql",
        "host": parts.host,
        "port": parts.port or 3306,
        "login": parts.username,
        "password": parts.password,
        "schema": parts.database,
    }
