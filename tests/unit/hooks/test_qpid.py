"""QpidHook without a server: the schema from extras, the batched query, row validation, retries; the connection
through mysql-connector-python (the provider's default client, mysqlclient, is not installed)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from jobmon_airflow.hooks import qpid as qpid_module
from jobmon_airflow.hooks.qpid import DEFAULT_SCHEMA, QpidHook, QpidSchema, parse_row, split_job_ids
from jobmon_airflow.service.usage import UsageFigures

MB = 2**20


class FakeDB:
    """A DB-API connection answering from rows keyed by job number; records every query."""

    def __init__(self, rows: list[tuple[Any, ...]], fail: list[Exception] | None = None):
        self.rows = rows
        self.fail = list(fail or [])
        self.queries: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = False

    def cursor(self) -> FakeDB:
        return self

    def execute(self, sql: str, params: tuple[Any, ...]) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.queries.append((sql, params))
        self._result = [r for r in self.rows if r[0] in params]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._result

    def close(self) -> None:
        self.closed = True


def hook_with(monkeypatch: pytest.MonkeyPatch, db: FakeDB, extra: dict[str, Any] | None = None) -> QpidHook:
    monkeypatch.setenv(
        "AIRFLOW_CONN_QPID_DEFAULT",
        json.dumps({"conn_type": "mysql", "host": "qpid.example", "login": "u", "password": "p", "schema": "qpid",
                    "extra": extra or {}}),
    )  # fmt: skip
    hook = QpidHook()
    monkeypatch.setattr(hook, "get_conn", lambda: db)
    return hook


def test_lookup_is_one_query_per_in_list(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(j, 0, j * MB, j * MB // 2, 10.0, 5.0) for j in range(1, 26)]
    db = FakeDB(rows)
    hook = hook_with(monkeypatch, db, {"in_list_size": 10})
    answer = hook.lookup([str(j) for j in range(1, 26)])
    assert len(db.queries) == 3
    assert [len(params) for _, params in db.queries] == [10, 10, 5]
    assert answer.found["7"] == UsageFigures(7 * MB, 7 * MB // 2, 10.0, 5.0)
    assert len(answer.found) == 25 and answer.malformed == 0


def test_default_schema_query() -> None:
    assert DEFAULT_SCHEMA.select(2) == (
        "SELECT `job_number`, `task_number`, `maxrss`, `maxpss`, `wallclock`, `cpu` FROM `job_usage` "
        "WHERE `job_number` IN (%s, %s)"
    )


def test_schema_from_extras_and_absent_columns() -> None:
    schema = QpidSchema.from_extras(
        {"table": "qpid.jobmaxpss", "job_number_column": "jid", "task_number_column": "", "maxrss_column": "",
         "maxpss_column": "max_pss", "wallclock_column": None, "cpu_column": "", "memory_unit": "KiB"}
    )  # fmt: skip
    assert (
        schema.select(1)
        == "SELECT `jid`, NULL, NULL, `max_pss`, NULL, NULL FROM `qpid`.`jobmaxpss` WHERE `jid` IN (%s)"
    )


@pytest.mark.parametrize(
    ("extras", "match"),
    [
        ({"table": "job_usage; DROP TABLE x"}, "table"),
        ({"maxrss_column": "max rss"}, "maxrss"),
        ({"maxrss_column": "", "maxpss_column": ""}, "at least one"),
        ({"memory_unit": "GB"}, "memory_unit"),
        ({"in_list_size": 0}, "in_list_size"),
    ],
)
def test_schema_refuses_bad_extras(monkeypatch: pytest.MonkeyPatch, extras: dict[str, Any], match: str) -> None:
    hook = hook_with(monkeypatch, FakeDB([]), extras)
    with pytest.raises(ValueError, match=f"connection 'qpid_default' extra .*{match}"):
        hook.lookup(["1"])


def test_array_elements_are_matched_on_the_task_number(monkeypatch: pytest.MonkeyPatch) -> None:
    db = FakeDB(
        [
            (5, 1, 10 * MB, None, 1, 1),
            (5, 2, 20 * MB, None, 1, 1),
            (5, 3, 30 * MB, None, 1, 1),
            (6, None, MB, None, 1, 1),
        ]
    )
    answer = hook_with(monkeypatch, db).lookup(["5.2", "6", "5.9"])
    assert {k: v.maxrss_bytes for k, v in answer.found.items()} == {"5.2": 20 * MB, "6": MB}
    assert db.queries[0][1] == (5, 6)  # each job number once


def test_samples_of_one_job_combine_to_their_maxima(monkeypatch: pytest.MonkeyPatch) -> None:
    db = FakeDB([(8, 0, 10 * MB, 9 * MB, 5.0, None), (8, 0, 30 * MB, 2 * MB, 2.0, 1.0)])
    assert hook_with(monkeypatch, db).lookup(["8"]).found["8"] == UsageFigures(30 * MB, 9 * MB, 5.0, 1.0)


def test_malformed_rows_are_skipped_with_a_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = FakeDB(
        [
            (1, 0, -5, None, 1.0, 1.0),  # negative memory
            (2, 0, "lots", None, 1.0, 1.0),  # not a number
            (3, 0, None, None, 1.0, 1.0),  # no memory figure at all
            (4, 0, 10, None, float("nan"), 1.0),  # NaN wall-clock
            (5, 0.5, 10, None, 1.0, 1.0),  # fractional task number
            (6, 0, Decimal("1048576.0"), "2097152", 1.5, 0.25),  # fine: DECIMAL and a numeric string
        ]
    )
    answer = hook_with(monkeypatch, db).lookup([str(j) for j in range(1, 7)])
    assert answer.found == {"6": UsageFigures(MB, 2 * MB, 1.5, 0.25)}
    assert answer.malformed == 5
    skipped = [r.getMessage() for r in caplog.records if "QPID row skipped" in r.getMessage()]
    assert len(skipped) == 5
    assert "job 1" in skipped[0] and "maxrss" in skipped[0]


def test_memory_unit_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    db = FakeDB([(1, 0, 204800, None, None, None)])
    answer = hook_with(monkeypatch, db, {"memory_unit": "KB"}).lookup(["1"])
    assert answer.found["1"].maxrss_bytes == 200 * MB


def test_ids_that_are_not_grid_engine_ids_are_not_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    keys, bad = split_job_ids(["12", "12.3", "local-7", "1.2.3", ""])
    assert keys == {(12, 0): "12", (12, 3): "12.3"} and bad == ["local-7", "1.2.3", ""]
    db = FakeDB([])
    assert hook_with(monkeypatch, db).lookup(["x"]).found == {}
    assert db.queries == []


class OperationalError(Exception):
    """Named as the DB-API's transient error class."""


class ProgrammingError(Exception):
    pass


def test_transient_errors_are_retried_with_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(qpid_module.time, "sleep", sleeps.append)
    db = FakeDB([(1, 0, MB, None, None, None)], fail=[OperationalError("gone away"), OperationalError("again")])
    assert hook_with(monkeypatch, db).lookup(["1"]).found["1"].maxrss_bytes == MB
    assert sleeps == [1.0, 2.0]


def test_persistent_transient_errors_fail_naming_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qpid_module.time, "sleep", lambda _s: None)
    db = FakeDB([], fail=[OperationalError("refused")] * 4)
    with pytest.raises(RuntimeError, match="QPID connection 'qpid_default': still failing after 4 attempts"):
        hook_with(monkeypatch, db).lookup(["1"])


def test_permanent_errors_fail_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    db = FakeDB([], fail=[ProgrammingError("Table 'qpid.job_usage' doesn't exist")])
    with pytest.raises(ProgrammingError):
        hook_with(monkeypatch, db).lookup(["1"])


def test_connects_through_mysql_connector_python(monkeypatch: pytest.MonkeyPatch) -> None:
    import mysql.connector

    seen: dict[str, Any] = {}
    monkeypatch.setattr(mysql.connector, "connect", lambda **kw: seen.update(kw) or "connection")
    monkeypatch.setenv(
        "AIRFLOW_CONN_QPID_DEFAULT",
        json.dumps({"conn_type": "mysql", "host": "qpid.example", "port": 3307, "login": "reader",
                    "password": "secret", "schema": "qpid"}),
    )  # fmt: skip
    assert QpidHook().get_conn() == "connection"
    assert seen == {"user": "reader", "password": "secret", "host": "qpid.example", "database": "qpid", "port": 3307}


def test_parse_row_is_strict_about_job_numbers() -> None:
    with pytest.raises(ValueError, match="job_number"):
        parse_row((None, 0, 1, None, None, None), 1)
    with pytest.raises(ValueError, match="too large"):
        parse_row((1, 0, 2**62, None, None, None), 1024)
    key, figures = parse_row((b"17", None, 1, None, None, None), 1)
    assert key == (17, 0) and figures.maxrss_bytes == 1
