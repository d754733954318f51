"""The state database URL of a ``jobmon`` connection (the rules :class:`~.jobmon.JobmonHook` applies), and a way to
read it without importing Airflow when the answer cannot differ from Airflow's.

Importing Airflow takes over a second, which a ``jobmon-airflow workflow status`` cannot afford (benchmark g).
Outside a task and outside Airflow's servers, Airflow 3.3 looks a connection up in the custom secrets backend
(``[workers] secrets_backend``, else ``[secrets] backend``) and then in ``AIRFLOW_CONN_<ID>`` only
(``airflow.sdk.execution_time.supervisor.ensure_secrets_backend_loaded``). So when no custom backend is configured
and ``_AIRFLOW_PROCESS_CONTEXT`` is not ``server`` (which adds the metastore), the environment variable alone decides;
:func:`resolve_without_airflow` then parses it as Airflow's ``Connection.from_json`` / ``from_uri`` do. Anything it is
not sure of (a custom backend, a config file it cannot read, a value Airflow would refuse) answers None: ask Airflow.

No Airflow import here: this module is on the command line's fast path.
"""

from __future__ import annotations

import configparser
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import sqlalchemy as sa

from jobmon_airflow.paths import default_db_url

#: Configuration options naming a custom secrets backend (any of them set: only Airflow can resolve a connection).
SECRETS_BACKEND_OPTIONS = {
    "secrets": ("backend", "backend_cmd", "backend_secret"),
    "workers": ("secrets_backend", "secrets_backend_cmd", "secrets_backend_secret"),
}
JSON_FIELDS = {"conn_type", "description", "host", "schema", "login", "password", "port", "extra"}


@dataclass(frozen=True)
class ConnectionFields:
    """What the URL rules read of a connection (an Airflow ``Connection`` has the same attributes)."""

    host: str | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    port: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def mysql_url(conn: Any) -> str:
    """A MySQL/MariaDB connection's SQLAlchemy URL (driver PyMySQL, database ``jobmon`` unless named)."""
    url = sa.engine.URL.create(
        "mysql+pymysql",
        username=conn.login or None,
        password=conn.password or None,
        host=conn.host,
        port=conn.port or 3306,
        database=conn.schema or "jobmon",
        query={"charset": "utf8mb4"},
    )
    return url.render_as_string(hide_password=False)


def db_url_of(conn: Any | None, extra: Mapping[str, Any], get_connection: Callable[[str], Any]) -> str:
    """The state database of a ``jobmon`` connection (None: there is none), first match wins: extra
    ``sql_alchemy_conn``; extra ``mysql_conn_id`` (that connection, fetched with ``get_connection``); a host (MySQL);
    else the embedded SQLite file."""
    if conn is None:
        return default_db_url()
    if url := extra.get("sql_alchemy_conn"):
        return str(url)
    if mysql_conn_id := extra.get("mysql_conn_id"):
        return mysql_url(get_connection(mysql_conn_id))
    if conn.host:
        return mysql_url(conn)
    return default_db_url()


class _AskAirflow(Exception):
    """The fast path cannot be sure of the answer."""


def _custom_secrets_backend(environ: Mapping[str, str]) -> bool:
    """Whether a custom secrets backend may be configured (environment or config file); unsure counts as yes."""
    for section, options in SECRETS_BACKEND_OPTIONS.items():
        if any(environ.get(f"AIRFLOW__{section.upper()}__{o.upper()}") for o in options):
            return True
    if environ.get("AIRFLOW__CORE__UNIT_TEST_MODE", "").lower() in ("1", "true", "t"):
        return True  # Airflow then reads its test configuration as well
    home = environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    config = Path(environ.get("AIRFLOW_CONFIG") or os.path.join(home, "airflow.cfg"))
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        if not config.is_file():
            return False
        parser.read(config, encoding="utf-8")
    except (OSError, UnicodeError, configparser.Error):
        return True
    return any(
        parser.get(section, option, fallback="").strip()
        for section, options in SECRETS_BACKEND_OPTIONS.items()
        for option in options
    )


def _from_json(value: str) -> ConnectionFields:
    """As ``Connection.from_json`` (then ``extra_dejson``); anything Airflow would refuse or read oddly: ask it."""
    kwargs = json.loads(value)
    if not isinstance(kwargs, dict) or set(kwargs) - JSON_FIELDS:
        raise _AskAirflow
    extra = kwargs.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    port = kwargs.get("port")
    if not isinstance(extra, dict) or any(
        v is not None and not isinstance(v, str) for k, v in kwargs.items() if k not in ("port", "extra")
    ):
        raise _AskAirflow
    return ConnectionFields(
        host=kwargs.get("host"),
        login=kwargs.get("login"),
        password=kwargs.get("password"),
        schema=kwargs.get("schema"),
        port=int(port) if port else None,
        extra=extra,
    )


def _from_uri(uri: str) -> ConnectionFields:
    """As ``Connection.from_uri`` (then ``extra_dejson``)."""
    schemes = uri.count("://")
    if schemes > 2:
        raise _AskAirflow
    with_protocol = schemes == 2
    conn_type = urlsplit(uri).scheme
    rest = uri.replace(f"{conn_type}://", "" if with_protocol else "//")
    if with_protocol and ("@" in rest.split("://", 1)[0] or ":" in rest.split("://", 1)[0]):
        raise _AskAirflow
    parts = urlsplit(rest)
    host = unquote(parts.hostname or "")
    if "/" in host:
        host = parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0]
        host = unquote(host)
    if host and with_protocol:
        host = f"{parts.scheme}://{host}"
    extra: Any = {}
    if parts.query:
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        extra = json.loads(query["__extra__"]) if "__extra__" in query else query
    if not isinstance(extra, dict):
        raise _AskAirflow
    return ConnectionFields(
        host=host or None,
        login=unquote(parts.username) if parts.username else parts.username,
        password=unquote(parts.password) if parts.password else parts.password,
        schema=unquote(parts.path[1:]) if parts.path[1:] else None,
        port=parts.port,
        extra=extra,
    )


def _lookup(conn_id: str, environ: Mapping[str, str]) -> ConnectionFields | None:
    value = environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not value:  # unset or empty: not in the environment
        if environ.get("_AIRFLOW_PROCESS_CONTEXT") == "server":
            raise _AskAirflow  # Airflow's servers also look in the metastore
        return None
    value = value.strip()
    if not value:
        raise _AskAirflow
    try:
        return _from_json(value) if value.startswith("{") else _from_uri(value)
    except (ValueError, TypeError):  # bad JSON, a bad port: Airflow says what is wrong
        raise _AskAirflow from None


def resolve_without_airflow(conn_id: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The state database URL of connection ``conn_id`` exactly as :class:`~.jobmon.JobmonHook` would find it, when
    that is certain without Airflow; None: ask Airflow."""
    environ = os.environ if environ is None else environ
    if _custom_secrets_backend(environ):
        return None

    def get_connection(other: str) -> ConnectionFields:
        found = _lookup(other, environ)
        if found is None:
            raise _AskAirflow  # Airflow raises its own "isn't defined" error
        return found

    try:
        conn = _lookup(conn_id, environ)
        return db_url_of(conn, conn.extra if conn else {}, get_connection)
    except _AskAirflow:
        return None
