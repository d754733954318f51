"""Usage collection (Jobmon's QPID / usage integrators): which finished instances still wait for their max RSS,
PSS, wall-clock and CPU figures, and set-based writes of what the sources found.

``task_instance.usage_source`` is the work queue: NULL until the ETL has settled an instance, then the source its
figures came from (``qpid``, ``accounting``), ``worker`` when only the worker's own report is left (other clusters,
or nothing else found before the retirement age), or ``missing`` when there is nothing at all. Candidates are
scanned through the index (usage_source, id) in id order, a batch at a time (keyset), so a pass over a large backlog
never holds a long statement; every write is conditional on ``usage_source IS NULL`` (idempotent, and two passes
cannot both write a row).

No cluster or QPID I/O here: the execution layer looks the candidates up and passes the figures in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobmon_airflow import models, states
from jobmon_airflow.service.core import CHUNK, TI, Store, chunks, table

CLUSTER = table(models.Cluster)
CLUSTER_TYPE = table(models.ClusterType)
GRIDENGINE = "gridengine"
#: Byte counts go in BIGINT columns.
MAX_BYTES = 2**63 - 1
#: The most seconds a wall-clock or CPU figure may hold (ten years of one core: more is no measurement).
MAX_SECONDS = 10 * 366 * 86400.0


class UsageSource(StrEnum):
    """What ``task_instance.usage_source`` says about an instance's figures."""

    QPID = "qpid"
    ACCOUNTING = "accounting"
    WORKER = "worker"  # the worker node's own report (getrusage of its children), nothing better was found
    MISSING = "missing"  # nothing was found before the retirement age


class WriteMethod(StrEnum):
    """How a batch of figures is written (``benchmarks/qpid_etl.py`` measures each)."""

    JOIN = "join"  # one UPDATE joined to the batch as a derived table (UNION ALL of rows)
    CASE = "case"  # one UPDATE ... SET col = CASE id WHEN ... END WHERE id IN (...)
    EXECUTEMANY = "executemany"  # one parameterised UPDATE, executemany over the rows


#: The fastest method on each database (benchmarks/qpid_etl.py, 20,000 rows): MariaDB join 11,500 rows/s, case
#: 10,100, executemany 1,700 (a round trip per row); SQLite executemany 245,000 (in process), join 113,000.
FASTEST_WRITE = {"sqlite": WriteMethod.EXECUTEMANY}
DEFAULT_WRITE = WriteMethod.JOIN
JOIN_CHUNK_SQLITE = 500  # SQLite allows at most 500 SELECTs in one compound SELECT


@dataclass(frozen=True)
class UsageFigures:
    """What a source knows of one job (None: the source does not say). Memory in bytes, times in seconds."""

    maxrss_bytes: int | None = None
    maxpss_bytes: int | None = None
    wallclock_s: float | None = None
    cpu_s: float | None = None

    def __post_init__(self) -> None:
        # Plain comparisons (NaN fails every one): this runs once per row of a 200,000-row backlog.
        for name, value in (("maxrss_bytes", self.maxrss_bytes), ("maxpss_bytes", self.maxpss_bytes)):
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_BYTES):
                raise ValueError(f"{name}: expected a whole number of bytes in [0, 2**63), got {value!r}")
        for name, seconds in (("wallclock_s", self.wallclock_s), ("cpu_s", self.cpu_s)):
            if seconds is not None and (type(seconds) not in (int, float) or not 0 <= seconds <= MAX_SECONDS):
                raise ValueError(f"{name}: expected seconds in [0, {MAX_SECONDS:.0f}], got {seconds!r}")
        if self.maxrss_bytes is None and self.maxpss_bytes is None:
            raise ValueError("usage figures without max RSS or max PSS say nothing about memory")


@dataclass(frozen=True)
class UsageLookup:
    """A source's answer for some job ids: figures by job id (ids it has no record of are left out), and how many
    of its rows it skipped as malformed (each logged by the source)."""

    found: dict[str, UsageFigures] = field(default_factory=dict)
    malformed: int = 0


@dataclass(frozen=True)
class UsageCandidate:
    """A finished instance whose usage has not been settled yet."""

    id: int
    job_id: str | None  # distributor_id: "J" or an array element's "J.T"
    finished_at: datetime  # status_date of the final status (naive UTC)
    on_gridengine: bool
    has_worker_usage: bool  # the worker reported a max RSS


@dataclass(frozen=True)
class UsageUpdate:
    task_instance_id: int
    figures: UsageFigures
    source: UsageSource


@dataclass
class UsagePassCounts:
    """What one ETL pass did; logged, and the DAG task's XCom (``as_dict``)."""

    candidates: int = 0  # finished, unsettled Grid Engine instances looked at
    found_qpid: int = 0
    found_accounting: int = 0
    updated: int = 0  # rows written with figures
    retired: int = 0  # unsettled past the retirement age: worker or missing
    waiting: int = 0  # not found anywhere yet: looked at again by the next pass
    malformed: int = 0  # source rows skipped
    other_clusters: int = 0  # finished instances of other clusters (or without a job) settled as worker/missing
    batches: int = 0

    def add(self, other: UsagePassCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class UsageCollection(Store):
    """The state database's side of the usage ETL."""

    def gridengine_cluster_ids(self, session: Session) -> set[int]:
        return set(
            session.execute(
                sa.select(CLUSTER.c.id)
                .join(CLUSTER_TYPE, CLUSTER_TYPE.c.id == CLUSTER.c.cluster_type_id)
                .where(CLUSTER_TYPE.c.name == GRIDENGINE)
            ).scalars()
        )

    def candidates(self, after_id: int = 0, limit: int = 1000) -> list[UsageCandidate]:
        """Up to ``limit`` finished instances with ``usage_source`` NULL and id > ``after_id``, in id order.

        A range scan of the (usage_source, id) index: live instances (a few) are stepped over, settled ones are
        not in the range at all.
        """
        if limit < 1:
            raise ValueError(f"limit: expected ≥ 1, got {limit}")
        with self.session() as s:
            gridengine = self.gridengine_cluster_ids(s)
            query = (
                sa.select(TI.c.id, TI.c.distributor_id, TI.c.status_date, TI.c.cluster_id, TI.c.maxrss)
                .where(
                    TI.c.usage_source.is_(None),
                    TI.c.id > after_id,
                    TI.c.status.in_(sorted(states.TASK_INSTANCE_FINAL)),
                )
                .order_by(TI.c.id)
                .limit(limit)
                # MariaDB may otherwise take the (status, report_by_date) index and sort a large part of the table.
                .with_hint(TI, "FORCE INDEX (ix_task_instance_usage_source_id)", "mysql")
                .with_hint(TI, "FORCE INDEX (ix_task_instance_usage_source_id)", "mariadb")
            )
            return [
                UsageCandidate(
                    id=r.id,
                    job_id=r.distributor_id,
                    finished_at=r.status_date,
                    on_gridengine=r.cluster_id in gridengine,
                    has_worker_usage=r.maxrss is not None,
                )
                for r in s.execute(query)
            ]

    def record(self, updates: Sequence[UsageUpdate], method: WriteMethod | None = None) -> int:
        """Write found figures (a figure a source does not give keeps the value there) and their source, only on
        rows still unsettled; how many rows were written. One statement per chunk of rows (``executemany``: one
        prepared statement per chunk, executed per row)."""
        if not updates:
            return 0
        writer = {WriteMethod.JOIN: _write_join, WriteMethod.CASE: _write_case, WriteMethod.EXECUTEMANY: _write_many}
        dialect = self.engine.dialect.name
        method = method or FASTEST_WRITE.get(dialect, DEFAULT_WRITE)
        size = JOIN_CHUNK_SQLITE if method == WriteMethod.JOIN and dialect == "sqlite" else CHUNK
        written = 0
        with self.session() as s:
            for chunk in chunks(sorted(updates, key=lambda u: u.task_instance_id), size):
                written += writer[method](s, chunk)
        return written

    def settle_without_figures(self, ti_ids: Iterable[int]) -> int:
        """Close instances no source will answer for: ``worker`` if the worker reported usage, else ``missing``.
        Only rows still unsettled; how many were closed."""
        ids = sorted(set(ti_ids))
        closed = 0
        with self.session() as s:
            for chunk in chunks(ids):
                closed += _rowcount(
                    s.execute(
                        TI.update()
                        .where(TI.c.id.in_(chunk), TI.c.usage_source.is_(None))
                        .values(
                            usage_source=sa.case(
                                (TI.c.maxrss.is_(None), UsageSource.MISSING.value), else_=UsageSource.WORKER.value
                            )
                        )
                    )
                )
        return closed


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


_FIGURES = ("maxrss", "maxpss", "wallclock", "cpu")


def _row(u: UsageUpdate) -> tuple[Any, ...]:
    f = u.figures
    return (u.task_instance_id, f.maxrss_bytes, f.maxpss_bytes, f.wallclock_s, f.cpu_s, u.source.value)


def _mark(s: Session) -> str:
    """The driver's placeholder: these statements go to the driver as text (building thousands of SQLAlchemy
    literals costs more than the UPDATE itself; benchmarks/qpid_etl.py)."""
    return "?" if s.get_bind().dialect.paramstyle == "qmark" else "%s"


def _write_join(s: Session, chunk: Sequence[UsageUpdate]) -> int:
    """One UPDATE joined to the batch as a derived table of UNION ALL rows (MariaDB: multi-table UPDATE, the
    derived table driving an eq_ref on the primary key; SQLite: UPDATE … FROM)."""
    m = _mark(s)
    first = "SELECT " + ", ".join(f"{m} AS {c}" for c in ("ti_id", *_FIGURES, "source"))
    rest = " UNION ALL SELECT " + ", ".join([m] * 6)
    rows = first + rest * (len(chunk) - 1)
    params = tuple(value for u in chunk for value in _row(u))
    figures = ", ".join(f"{c} = COALESCE(v.{c}, task_instance.{c})" for c in _FIGURES)
    if s.get_bind().dialect.name == "sqlite":
        sql = (
            f"UPDATE task_instance SET {figures}, usage_source = v.source FROM ({rows}) AS v "
            "WHERE task_instance.id = v.ti_id AND task_instance.usage_source IS NULL"
        )
    else:
        figures = ", ".join(f"task_instance.{c} = COALESCE(v.{c}, task_instance.{c})" for c in _FIGURES)
        sql = (
            f"UPDATE task_instance JOIN ({rows}) AS v ON task_instance.id = v.ti_id "
            f"SET {figures}, task_instance.usage_source = v.source WHERE task_instance.usage_source IS NULL"
        )
    return _rowcount(s.connection().exec_driver_sql(sql, params))


def _write_case(s: Session, chunk: Sequence[UsageUpdate]) -> int:
    """UPDATE task_instance SET maxrss = COALESCE(CASE id WHEN … THEN … END, maxrss), … WHERE id IN (…)."""
    m = _mark(s)
    rows = [_row(u) for u in chunk]
    params: list[Any] = []
    sets = []
    for k, column in enumerate((*_FIGURES, "usage_source"), start=1):
        pairs = [(r[0], r[k]) for r in rows if r[k] is not None]
        if not pairs:
            continue
        whens = " ".join([f"WHEN {m} THEN {m}"] * len(pairs))
        params += [v for pair in pairs for v in pair]
        case = f"CASE id {whens} END"
        sets.append(f"{column} = {case}" if column == "usage_source" else f"{column} = COALESCE({case}, {column})")
    ids = [r[0] for r in rows]
    sql = (
        f"UPDATE task_instance SET {', '.join(sets)} WHERE id IN ({', '.join([m] * len(ids))}) AND usage_source IS NULL"
    )
    return _rowcount(s.connection().exec_driver_sql(sql, tuple(params + ids)))


def _write_many(s: Session, chunk: Sequence[UsageUpdate]) -> int:
    """One UPDATE per row, sent with the driver's executemany (SQLite: in process, no round trips)."""
    m = _mark(s)
    figures = ", ".join(f"{c} = COALESCE({m}, {c})" for c in _FIGURES)
    sql = f"UPDATE task_instance SET {figures}, usage_source = {m} WHERE id = {m} AND usage_source IS NULL"
    rows = [(*r[1:], r[0]) for r in map(_row, chunk)]
    return _rowcount(s.connection().exec_driver_sql(sql, rows))
