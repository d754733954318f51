"""The embedded SQLite state database (commands, stderr tails, token hashes) is this user's only, whatever the umask:
directory 0700, database 0600, and its WAL and SHM files too (SQLite gives them the database file's mode)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobmon_airflow import db
from tests.support.modes import mode


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: files 0644, readable by every local user
    try:
        yield
    finally:
        os.umask(old)


def write_something(url: str) -> sa.Engine:
    engine = db.get_engine(url)
    with db.session_scope(engine) as session:
        session.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x TEXT)"))
        session.execute(sa.text("INSERT INTO t VALUES ('python model.py --secret-ish args')"))
    return engine


def test_a_new_database_and_its_wal_and_shm_are_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "home" / "jobmon" / "jobmon.sqlite"
    engine = write_something(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:  # the WAL and SHM exist while a connection is open
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
            assert wal.exists() and shm.exists()
            assert (mode(path), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    finally:
        engine.dispose()
    assert (mode(tmp_path / "home"), mode(tmp_path / "home" / "jobmon")) == (0o700, 0o700)


def test_an_existing_world_readable_database_is_made_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "jobmon.sqlite"
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)  # as an older version left it: umask 022, WAL left behind by a crash
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
    engine.dispose()
    wal = Path(f"{path}-wal")
    wal.touch(mode=0o644)
    for p in (path, wal):
        p.chmod(0o644)
    engine = write_something(url)
    try:
        assert (mode(path), mode(wal), mode(Path(f"{path}-shm"))) == (0o600, 0o600, 0o600)
    finally:
        engine.dispose()


def test_a_database_in_an_existing_directory_leaves_the_directory_alone(tmp_path: Path, umask_022: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    engine = write_something(f"sqlite:///{shared / 'jobmon.sqlite'}")
    engine.dispose()
    assert (mode(shared), mode(shared / "jobmon.sqlite")) == (0o755, 0o600)


def test_in_memory_databases_still_work(umask_022: None) -> None:
    engine = db.get_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
