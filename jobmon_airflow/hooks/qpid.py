"""QpidHook: jobs' memory use from a QPID database (IHME's memory profiler for Grid Engine), through the MySQL
provider on the ``qpid_default`` connection.

Table and column names come from the connection's extras (defaults: :data:`DEFAULT_SCHEMA`, documented in the
README). Lookups are batched: one ``SELECT … WHERE job_number IN (…)`` per ``in_list_size`` job ids, never one
query per job. A row that does not hold sane figures is skipped with a log line; several rows of one job (samples)
are combined by taking each figure's maximum.

The MySQL provider connects through ``mysqlclient`` by default, which this project does not install (it needs a C
toolchain; ``overrides.txt``). The provider also supports ``mysql-connector-python`` (installed with it): a
connection without a ``client`` extra uses that one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from airflow.providers.mysql.hooks.mysql import MySqlHook

from jobmon_airflow.service.usage import MAX_BYTES, UsageFigures, UsageLookup

#: Memory units a QPID table may store figures in (extra ``memory_unit``).
MEMORY_UNITS = {"B": 1, "KB": 1024, "KiB": 1024, "MB": 1024**2, "MiB": 1024**2}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,63}(\.[A-Za-z_][A-Za-z0-9_$]{0,63})?$")
_JOB_ID = re.compile(r"^(\d{1,18})(?:\.(\d{1,9}))?$")
#: Transient errors (DB-API class names shared by mysql-connector-python, PyMySQL and mysqlclient).
_TRANSIENT = ("OperationalError", "InterfaceError")
RETRY_DELAYS_S = (1.0, 2.0, 4.0)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QpidSchema:
    """Where QPID keeps a job's figures. ``task_number``: the array element (0 or NULL for a job that is not an
    array); empty when the table has no such column. Figures: memory in ``memory_unit``, times in seconds; an empty
    column name means the table does not have that figure (``maxrss`` or ``maxpss`` must be there)."""

    table: str = "job_usage"
    job_number: str = "job_number"
    task_number: str = "task_number"
    maxrss: str = "maxrss"
    maxpss: str = "maxpss"
    wallclock: str = "wallclock"
    cpu: str = "cpu"
    memory_unit: str = "B"
    in_list_size: int = 1000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("memory_unit", "in_list_size"):
                continue
            required = f.name in ("table", "job_number")
            if (value or required) and not _IDENTIFIER.match(str(value)):
                raise ValueError(f"{f.name}: expected a table/column name ([A-Za-z_][A-Za-z0-9_$]*), got {value!r}")
        if not (self.maxrss or self.maxpss):
            raise ValueError("maxrss, maxpss: at least one of the two columns must be named")
        if self.memory_unit not in MEMORY_UNITS:
            raise ValueError(f"memory_unit: expected one of {', '.join(MEMORY_UNITS)}, got {self.memory_unit!r}")
        if not 1 <= self.in_list_size <= 10_000:
            raise ValueError(f"in_list_size: expected 1..10000, got {self.in_list_size!r}")

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> QpidSchema:
        """From a connection's extras: ``table``, ``<figure>_column`` for each column, ``memory_unit``,
        ``in_list_size``; anything not given keeps its default."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name if f.name in ("table", "memory_unit", "in_list_size") else f"{f.name}_column"
            if key in extras:
                kwargs[f.name] = int(extras[key]) if f.name == "in_list_size" else str(extras[key] or "")
        return cls(**kwargs)

    def select(self, n_jobs: int) -> str:
        """The lookup for ``n_jobs`` job numbers (%s placeholders; names validated and quoted)."""
        q = _quote
        columns = [self.job_number, self.task_number, self.maxrss, self.maxpss, self.wallclock, self.cpu]
        select = ", ".join(q(c) if c else "NULL" for c in columns)
        marks = ", ".join(["%s"] * n_jobs)
        return f"SELECT {select} FROM {q(self.table)} WHERE {q(self.job_number)} IN ({marks})"


DEFAULT_SCHEMA = QpidSchema()


def _quote(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


def split_job_ids(job_ids: Sequence[str]) -> tuple[dict[tuple[int, int], str], list[str]]:
    """Grid Engine job ids ("J", "J.T") → {(J, T or 0): id}, and the ids that are not Grid Engine job ids."""
    keys: dict[tuple[int, int], str] = {}
    bad: list[str] = []
    for job_id in job_ids:
        m = _JOB_ID.match(job_id)
        if m:
            keys[(int(m.group(1)), int(m.group(2) or 0))] = job_id
        else:
            bad.append(job_id)
    return keys, bad


def _number(value: Any, what: str, *, integral: bool = False) -> int | float | None:
    """A figure as a finite, non-negative number (None stays None); ValueError naming it otherwise."""
    if value is None:
        return None
    if type(value) is int:  # the common case (BIGINT columns): no conversion
        if value < 0:
            raise ValueError(f"{what}: expected a number ≥ 0, got {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str | bytes):
        raise ValueError(f"{what}: expected a number, got {type(value).__name__}")
    try:
        number = float(value.decode() if isinstance(value, bytes) else value)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{what}: expected a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what}: expected a finite number ≥ 0, got {str(value)[:40]!r}")
    if integral and number != int(number):
        raise ValueError(f"{what}: expected a whole number, got {str(value)[:40]!r}")
    return number


def parse_row(row: Sequence[Any], unit: int) -> tuple[tuple[int, int], UsageFigures]:
    """One QPID row (job, task, maxrss, maxpss, wallclock, cpu) → its key and figures; ValueError saying what is
    wrong with it."""
    job, task, rss, pss, wallclock, cpu = row
    job_number = _number(job, "job_number", integral=True)
    task_number = _number(task, "task_number", integral=True) or 0
    if job_number is None:
        raise ValueError("job_number: NULL")

    def memory(value: Any, what: str) -> int | None:
        number = _number(value, what)
        if number is None:
            return None
        if number * unit > MAX_BYTES:
            raise ValueError(f"{what}: too large for a byte count: {value!r}")
        return round(number * unit)

    def seconds(value: Any, what: str) -> float | None:
        number = _number(value, what)
        return None if number is None else float(number)

    figures = UsageFigures(
        maxrss_bytes=memory(rss, "maxrss"),
        maxpss_bytes=memory(pss, "maxpss"),
        wallclock_s=seconds(wallclock, "wallclock"),
        cpu_s=seconds(cpu, "cpu"),
    )
    return (int(job_number), int(task_number)), figures


def _larger(a: int | float | None, b: int | float | None) -> Any:
    return b if a is None else a if b is None else max(a, b)


def combine(a: UsageFigures, b: UsageFigures) -> UsageFigures:
    """Two samples of one job: each figure's maximum."""
    return UsageFigures(
        _larger(a.maxrss_bytes, b.maxrss_bytes),
        _larger(a.maxpss_bytes, b.maxpss_bytes),
        _larger(a.wallclock_s, b.wallclock_s),
        _larger(a.cpu_s, b.cpu_s),
    )


class QpidHook(MySqlHook):
    """A QPID database on a MySQL/MariaDB server (an Airflow ``mysql`` connection, default ``qpid_default``).

    Extras, besides the MySQL provider's: ``table`` and ``job_number_column``, ``task_number_column``,
    ``maxrss_column``, ``maxpss_column``, ``wallclock_column``, ``cpu_column`` (empty: the table has no such
    column), ``memory_unit`` (``B``, ``KB``/``KiB``, ``MB``/``MiB``), ``in_list_size`` (job ids per query, 1000).
    """

    conn_name_attr = "qpid_conn_id"
    default_conn_name = "qpid_default"
    hook_name = "QPID"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._db: Any = None
        self._schema_cache: QpidSchema | None = None

    @property
    def qpid_schema(self) -> QpidSchema:
        """The table and columns; ValueError naming the connection and the extra when one is refused."""
        if self._schema_cache is None:
            try:
                self._schema_cache = QpidSchema.from_extras(dict(self.connection.extra_dejson))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"connection {self.get_conn_id()!r} extra {exc}") from None
        return self._schema_cache

    def get_conn(self) -> Any:
        """A DB-API connection; through mysql-connector-python unless the connection's ``client`` extra says
        otherwise."""
        conn = self.connection
        if "client" not in conn.extra_dejson:
            conn = copy.copy(conn)
            conn.extra = json.dumps({**conn.extra_dejson, "client": "mysql-connector-python"})
            hook = MySqlHook(mysql_conn_id=self.get_conn_id(), connection=conn)
            return hook.get_conn()
        return super().get_conn()

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None

    def __enter__(self) -> QpidHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one query, retrying transient errors (connection lost, server restarting) with back-off."""
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
            try:
                if self._db is None:
                    self._db = self.get_conn()
                cursor = self._db.cursor()
                try:
                    cursor.execute(sql, tuple(params))
                    return list(cursor.fetchall())
                finally:
                    cursor.close()
            except Exception as exc:
                if type(exc).__name__ not in _TRANSIENT:
                    raise
                self.close()
                if delay is None:
                    raise RuntimeError(
                        f"QPID connection {self.get_conn_id()!r}: still failing after {attempt + 1} attempts: {exc}"
                    ) from exc
                log.warning("QPID query failed (%s); retrying in %.0f s", exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def lookup(self, job_ids: Sequence[str]) -> UsageLookup:
        """Figures of the jobs QPID has a usable record of; one query per ``in_list_size`` jobs."""
        schema = self.qpid_schema
        keys, bad = split_job_ids(job_ids)
        if bad:
            log.warning("QPID: %d ids are not Grid Engine job ids, not looked up: %s", len(bad), bad[:5])
        unit = MEMORY_UNITS[schema.memory_unit]
        found: dict[str, UsageFigures] = {}
        malformed = 0
        numbers = sorted({job for job, _ in keys})
        for chunk in _chunks(numbers, schema.in_list_size):
            for row in self._rows(schema.select(len(chunk)), chunk):
                try:
                    key, figures = parse_row(row, unit)
                except (TypeError, ValueError) as exc:
                    malformed += 1
                    log.warning("QPID row skipped (table %s, job %r): %s", schema.table, row[0], exc)
                    continue
                job_id = keys.get(key)
                if job_id is not None:
                    found[job_id] = combine(found[job_id], figures) if job_id in found else figures
        return UsageLookup(found, malformed)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
