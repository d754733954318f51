"""Alembic migrations of the state database, on an empty SQLite file and on MariaDB.

The migrated schema must be exactly the models' (``alembic.autogenerate.compare_metadata`` finds nothing), the
status lookup tables hold exactly the codes of :mod:`jobmon_airflow.states`, the hot-query indexes exist, and a
second upgrade changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from jobmon_airflow import db, models, states
from tests.support.databases import drop_everything


def table_of(model: type[models.Base]) -> sa.Table:
    """A model's table, typed as a Table (``__table__`` is typed as a FromClause)."""
    return cast(sa.Table, model.__table__)


LOOKUPS = {
    "workflow_status": states.WorkflowStatus,
    "workflow_run_status": states.WorkflowRunStatus,
    "task_status": states.TaskStatus,
    "task_instance_status": states.TaskInstanceStatus,
}
# (table, columns) the service's hot queries filter on: triage scan, workflow status counts, job-id lookups.
HOT_INDEXES = [
    ("task_instance", ["status", "report_by_date"]),
    ("task", ["workflow_id", "status", "num_attempts"]),  # the workflows list: counts and retries per status
    # resource usage, covered: one ordered pass over a workflow's instances
    ("task_instance", ["workflow_run_id", "status", "array_id", "task_resources_id", "maxrss", "wallclock"]),
    ("task_instance", ["distributor_id"]),
    ("workflow_run", ["status", "heartbeat_date"]),
    ("task_instance", ["usage_source", "id"]),
]


@pytest.fixture(params=["sqlite", "mariadb"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a database with no tables at all."""
    if request.param == "sqlite":
        engine = db.get_engine(f"sqlite:///{tmp_path / 'migrations.sqlite'}")
    else:
        engine = db.get_engine(request.getfixturevalue("mariadb_url"))
    drop_everything(engine)
    assert sa.inspect(engine).get_table_names() == []
    yield engine
    if request.param == "sqlite":
        engine.dispose()


def schema_snapshot(engine: Engine) -> dict[str, Any]:
    """Tables, columns, indexes, unique constraints, foreign keys and lookup rows: what an upgrade could change."""
    insp = sa.inspect(engine)
    snap: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        snap[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
            "indexes": sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)),
            "uniques": sorted(str(u["name"]) for u in insp.get_unique_constraints(table)),
            "fks": sorted(str(f["name"]) for f in insp.get_foreign_keys(table)),
        }
    with engine.connect() as conn:
        for table in [*LOOKUPS, "task_resources_type", "cluster_type"]:
            snap[f"rows:{table}"] = sorted(tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")))
    return snap


def test_upgrade_creates_every_model_table(empty_engine: Engine) -> None:
    db.upgrade(empty_engine)
    tables = set(sa.inspect(empty_engine).get_table_names())
    assert tables == set(models.Base.metadata.tables) | {db.VERSION_TABLE}
    assert "alembic_version" not in tables, "Jobmon's version table must not collide with Airflow's"
    assert db.current_revision(empty_engine) == db.head_revision() is not None


def test_upgrade_seeds_status_lookups_with_the_state_codes(empty_engine: Engine) -> None:
    db.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        for table, enum in LOOKUPS.items():
            rows = {r.id: (r.label, r.description) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))}
            assert set(rows) == {s.value for s in enum}, table
            for s in enum:
                assert rows[s.value] == (s.name, states.DESCRIPTIONS[enum][s.value]), (table, s)
        resource_types = {r.id: r.label for r in conn.execute(sa.text("SELECT id, label FROM task_resources_type"))}
        assert resource_types == {"O": "ORIGINAL", "V": "VALIDATED", "A": "ADJUSTED"}
        cluster_types = {r.name for r in conn.execute(sa.text("SELECT name FROM cluster_type"))}
        assert cluster_types == {"local", "gridengine"}


def test_models_and_migrations_agree(empty_engine: Engine) -> None:
    db.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "compare_server_default": True, "version_table": db.VERSION_TABLE},
        )
        diff = compare_metadata(ctx, models.Base.metadata)
    assert diff == []


def test_status_columns_reference_the_lookups(empty_engine: Engine) -> None:
    db.upgrade(empty_engine)
    insp = sa.inspect(empty_engine)
    for table, lookup in [
        ("workflow", "workflow_status"),
        ("workflow_run", "workflow_run_status"),
        ("task", "task_status"),
        ("task_instance", "task_instance_status"),
    ]:
        fks = {(tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(table)}
        assert (("status",), lookup) in fks, table


@pytest.mark.parametrize(("table", "columns"), HOT_INDEXES)
def test_hot_query_indexes_exist(empty_engine: Engine, table: str, columns: list[str]) -> None:
    db.upgrade(empty_engine)
    indexed = [i["column_names"] for i in sa.inspect(empty_engine).get_indexes(table)]
    assert columns in indexed, f"{table}({', '.join(columns)}) not indexed; indexes: {indexed}"


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    db.upgrade(empty_engine)
    with empty_engine.begin() as conn:  # some state that a second upgrade must keep
        conn.execute(table_of(models.Tool).insert().values(name="kept"))
    before = schema_snapshot(empty_engine)
    db.upgrade(empty_engine)
    db.ensure_schema(empty_engine)
    assert schema_snapshot(empty_engine) == before
    assert db.current_revision(empty_engine) == db.head_revision()
    with empty_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM tool")).scalars().all() == ["kept"]
        assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {db.VERSION_TABLE}")).scalar() == 1


def test_ensure_schema_on_an_empty_database(empty_engine: Engine) -> None:
    assert db.current_revision(empty_engine) is None
    db.ensure_schema(empty_engine)
    assert db.current_revision(empty_engine) == db.head_revision()
    assert set(models.Base.metadata.tables) <= set(sa.inspect(empty_engine).get_table_names())


def test_mariadb_datetimes_keep_microseconds(mariadb_url: str) -> None:
    """Plain DATETIME truncates to seconds on MariaDB; every DateTime column is DATETIME(6)."""
    engine = db.get_engine(mariadb_url)
    drop_everything(engine)
    db.upgrade(engine)
    datetime_columns = [
        (t.name, c.name)
        for t in models.Base.metadata.tables.values()
        for c in t.columns
        if isinstance(c.type, sa.DateTime)
    ]
    assert len(datetime_columns) >= 10
    with engine.connect() as conn:
        precision = {
            (r.table_name, r.column_name): r.datetime_precision
            for r in conn.execute(
                sa.text(
                    "SELECT table_name AS table_name, column_name AS column_name, "
                    "datetime_precision AS datetime_precision FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND data_type = 'datetime'"
                )
            )
        }
    assert {col: precision.get(col) for col in datetime_columns} == {col: 6 for col in datetime_columns}
