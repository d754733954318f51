"""Engines, sessions and migrations of the Jobmon state database.

SQLite (the embedded default) is shared by many processes (Airflow workers, the triggerer, the State Manager), so
it runs in WAL mode with a busy timeout, and every transaction starts with ``BEGIN IMMEDIATE``: writers queue for
the lock up front instead of failing when a read transaction tries to upgrade. MySQL/MariaDB needs none of this.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobmon_airflow.files import PRIVATE_FILE, make_private_dirs
from jobmon_airflow.paths import default_db_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "jobmon_alembic_version"  # not Airflow's alembic_version, in case both share one database

log = logging.getLogger(__name__)
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


def _private_sqlite_file(path: Path) -> None:
    """Make the SQLite database (commands, stderr tails, token hashes) this user's only, whatever the umask.

    A new database: its directory is created 0700 and the file 0600 before SQLite opens it; SQLite gives its WAL,
    SHM and journal files the database file's mode. An existing file of this user, and those companions, lose any
    group/other bits (databases created before this check, or under a loose umask). Another user's file is left
    as it is (a site may share one on purpose).
    """
    make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, PRIVATE_FILE)  # an empty file is a new, empty database to SQLite
        finally:
            os.close(fd)
    for name in (path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal"))):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # not there (or a link, or unreadable): nothing of ours to fix
        try:
            st = os.fstat(fd)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISREG(st.st_mode) and mode & 0o077 and st.st_uid == os.getuid():
                os.fchmod(fd, mode & 0o700)
        except OSError as exc:
            log.warning("Could not make state database file %s private: %s", name, exc)
        finally:
            os.close(fd)


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process."""
    url = url or default_db_url()
    with _lock:
        if url in _engines:
            return _engines[url]
        sa_url = sa.engine.make_url(url)
        kwargs: dict[str, Any] = {"future": True}
        if sa_url.get_backend_name() == "sqlite":
            if sa_url.database and sa_url.database != ":memory:" and not sa_url.query.get("uri"):
                _private_sqlite_file(Path(sa_url.database))
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
