"""Engines, sessions and migrations of the Jobmon state database.

SQLite (the embedded default) is shared by many processes (Airflow workers, the triggerer, the State Manager), so
it runs in WAL mode with a busy timeout, and every transaction starts with ``BEGIN IMMEDIATE``: writers queue for
the lock up front instead of failing when a read transaction tries to upgrade. MySQL/MariaDB needs none of this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobmon_airflow.paths import default_db_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "jobmon_alembic_version"  # not Airflow's alembic_version, in case both share one database

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN IMMEDIATE
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process."""
    url = url or default_db_url()
    with _lock:
        if url in _engines:
            return _engines[url]
        sa_url = sa.engine.make_url(url)
        kwargs: dict[str, Any] = {"future": True}
        if sa_url.get_backend_name() == "sqlite":
            if sa_url.database:
                Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        else:
            # READ COMMITTED: a transaction that waited for another writer's insert must see its row afterwards
            # (REPEATABLE READ keeps the snapshot of its first read, so get-or-create would not find it).
            kwargs.update(pool_pre_ping=True, pool_recycle=3600, isolation_level="READ COMMITTED")
        engine = sa.create_engine(sa_url, **kwargs)
        if sa_url.get_backend_name() == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_on_connect)
            sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        _engines[url] = engine
        return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on any error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations (idempotent)."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)  # it logs its dialect on every call
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def ensure_schema(engine: Engine) -> None:
    """Upgrade unless already at head (cheap check first: many processes call this)."""
    if current_revision(engine) != head_revision():
        upgrade(engine)
