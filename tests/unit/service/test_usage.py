"""The usage ETL's service side: the candidate scan (keyset batches, finished only, unsettled only) and the
set-based writes (each method), on the embedded SQLite database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jobmon_airflow.service import Services
from jobmon_airflow.service.usage import (
    UsageCollection,
    UsageFigures,
    UsagePassCounts,
    UsageSource,
    UsageUpdate,
    WriteMethod,
)
from tests.support.usage import Parents, add_instances, make_parents, usage_of


@pytest.fixture
def usage(services: Services) -> UsageCollection:
    return UsageCollection(services.engine)


@pytest.fixture
def parents(services: Services) -> Parents:
    return make_parents(services.engine)


def test_candidates_are_finished_unsettled_instances_in_id_order(usage: UsageCollection, parents: Parents) -> None:
    engine = usage.engine
    done = add_instances(engine, parents, ["1", "2"])
    add_instances(engine, parents, ["3"], status="R")  # still running: not yet
    failed = add_instances(engine, parents, ["4.2"], status="Z")
    local = add_instances(engine, parents, ["5"], cluster="local", maxrss=10)
    settled = add_instances(engine, parents, ["6"])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE task_instance SET usage_source = 'qpid' WHERE id = :i"), {"i": settled[0]})

    found = usage.candidates()
    assert [c.id for c in found] == [*done, *failed, *local]
    assert [c.job_id for c in found] == ["1", "2", "4.2", "5"]
    assert [c.on_gridengine for c in found] == [True, True, True, False]
    assert [c.has_worker_usage for c in found] == [False, False, False, True]


def test_candidates_come_in_keyset_batches(usage: UsageCollection, parents: Parents) -> None:
    ids = add_instances(usage.engine, parents, [str(i) for i in range(1, 8)])
    first = usage.candidates(0, limit=3)
    second = usage.candidates(first[-1].id, limit=3)
    third = usage.candidates(second[-1].id, limit=3)
    assert [c.id for c in first + second + third] == ids
    assert usage.candidates(third[-1].id, limit=3) == []
    with pytest.raises(ValueError, match="limit"):
        usage.candidates(0, limit=0)


@pytest.mark.parametrize("method", list(WriteMethod))
def test_record_writes_figures_and_source_once(usage: UsageCollection, parents: Parents, method: WriteMethod) -> None:
    engine = usage.engine
    a, b, c = add_instances(engine, parents, ["1", "2", "3"], maxrss=111)
    updates = [
        UsageUpdate(a, UsageFigures(200 * 2**20, 150 * 2**20, 12.5, 3.25), UsageSource.QPID),
        # PSS only: the worker's max RSS stays, the other figures are not touched
        UsageUpdate(b, UsageFigures(maxpss_bytes=7 * 2**20), UsageSource.QPID),
        UsageUpdate(c, UsageFigures(maxrss_bytes=50 * 2**20, wallclock_s=2.0, cpu_s=0.5), UsageSource.ACCOUNTING),
    ]
    assert usage.record(updates, method) == 3
    got = usage_of(engine, [a, b, c])
    assert got[a] == {
        "id": a,
        "maxrss": 200 * 2**20,
        "maxpss": 150 * 2**20,
        "wallclock": 12.5,
        "cpu": 3.25,
        "usage_source": "qpid",
    }
    assert got[b] == {
        "id": b,
        "maxrss": 111,
        "maxpss": 7 * 2**20,
        "wallclock": None,
        "cpu": None,
        "usage_source": "qpid",
    }
    assert got[c]["maxrss"] == 50 * 2**20 and got[c]["maxpss"] is None and got[c]["usage_source"] == "accounting"
    # Settled rows are not written again (a second pass, or a concurrent one, changes nothing).
    again = [UsageUpdate(a, UsageFigures(maxrss_bytes=1), UsageSource.ACCOUNTING)]
    assert usage.record(again, method) == 0
    assert usage_of(engine, [a])[a]["maxrss"] == 200 * 2**20
    assert usage.candidates() == []


@pytest.mark.parametrize("method", list(WriteMethod))
def test_record_spans_chunks(usage: UsageCollection, parents: Parents, method: WriteMethod) -> None:
    ids = add_instances(usage.engine, parents, [str(i) for i in range(1, 2502)])
    updates = [UsageUpdate(i, UsageFigures(maxrss_bytes=i * 1000), UsageSource.QPID) for i in ids]
    assert usage.record(updates, method) == len(ids)
    got = usage_of(usage.engine, ids)
    assert all(got[i]["maxrss"] == i * 1000 and got[i]["usage_source"] == "qpid" for i in ids)


def test_settle_without_figures_keeps_the_workers_report(usage: UsageCollection, parents: Parents) -> None:
    (reported,) = add_instances(usage.engine, parents, ["1"], maxrss=5 * 2**20)
    (bare,) = add_instances(usage.engine, parents, ["2"])
    assert usage.settle_without_figures([reported, bare, bare]) == 2
    got = usage_of(usage.engine, [reported, bare])
    assert got[reported]["usage_source"] == "worker" and got[reported]["maxrss"] == 5 * 2**20
    assert got[bare]["usage_source"] == "missing"
    assert usage.settle_without_figures([reported, bare]) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"maxrss_bytes": -1}, "maxrss_bytes"),
        ({"maxrss_bytes": 2**63}, "maxrss_bytes"),
        ({"maxrss_bytes": 1.5}, "maxrss_bytes"),
        ({"maxpss_bytes": 1, "wallclock_s": float("nan")}, "wallclock_s"),
        ({"maxpss_bytes": 1, "cpu_s": -0.1}, "cpu_s"),
        ({"wallclock_s": 1.0}, "max RSS or max PSS"),
    ],
)
def test_figures_are_bounded(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UsageFigures(**kwargs)  # type: ignore[arg-type]


def test_counts_add_up_and_serialise() -> None:
    total = UsagePassCounts(candidates=2, found_qpid=1)
    total.add(UsagePassCounts(candidates=3, found_accounting=2, batches=1))
    assert total.as_dict()["candidates"] == 5
    assert total.as_dict() == {
        **UsagePassCounts().as_dict(),
        "candidates": 5,
        "found_qpid": 1,
        "found_accounting": 2,
        "batches": 1,
    }
