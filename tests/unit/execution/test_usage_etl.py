"""The usage ETL's orchestration with sources in memory: the order of the sources, QPID's wait, retirement,
other clusters, idempotence, and one lookup per source per batch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from jobmon_airflow.clusters.base import ExitInfo, ExitKind
from jobmon_airflow.execution.usage_etl import AccountingSource, EtlSettings, run_usage_etl
from jobmon_airflow.service import Services
from jobmon_airflow.service.usage import UsageCollection, UsageFigures, UsageLookup
from tests.support.fakes import FakeCluster
from tests.support.usage import Parents, add_instances, make_parents, usage_of

MB = 2**20


class DictSource:
    """A QPID stand-in: figures by job id; records every lookup."""

    def __init__(self, figures: dict[str, UsageFigures] | None = None, malformed: int = 0):
        self.figures = dict(figures or {})
        self.malformed = malformed
        self.calls: list[list[str]] = []

    def lookup(self, job_ids: Sequence[str]) -> UsageLookup:
        self.calls.append(list(job_ids))
        return UsageLookup({j: self.figures[j] for j in job_ids if j in self.figures}, self.malformed)


@pytest.fixture
def usage(services: Services) -> UsageCollection:
    return UsageCollection(services.engine)


@pytest.fixture
def parents(services: Services) -> Parents:
    return make_parents(services.engine)


def test_qpid_first_then_accounting_after_the_wait(usage: UsageCollection, parents: Parents) -> None:
    in_qpid, in_both = add_instances(usage.engine, parents, ["11", "12"], finished_ago=timedelta(hours=2))
    (acct_old,) = add_instances(usage.engine, parents, ["13"], finished_ago=timedelta(hours=2))
    (acct_recent,) = add_instances(usage.engine, parents, ["14"], finished_ago=timedelta(minutes=1))
    qpid = DictSource({"11": UsageFigures(200 * MB, 190 * MB, 30.0, 29.0), "12": UsageFigures(100 * MB)})
    accounting = DictSource(
        {j: UsageFigures(maxrss_bytes=50 * MB, wallclock_s=1.0, cpu_s=0.5) for j in ["12", "13", "14"]}
    )

    counts = run_usage_etl(
        usage, qpid=qpid, accounting=accounting, settings=EtlSettings(qpid_wait=timedelta(minutes=30))
    )

    got = usage_of(usage.engine, [in_qpid, in_both, acct_old, acct_recent])
    assert (got[in_qpid]["maxrss"], got[in_qpid]["maxpss"], got[in_qpid]["usage_source"]) == (
        200 * MB,
        190 * MB,
        "qpid",
    )
    assert (got[in_both]["maxrss"], got[in_both]["usage_source"]) == (100 * MB, "qpid")  # QPID wins
    assert (got[acct_old]["maxrss"], got[acct_old]["usage_source"]) == (50 * MB, "accounting")
    assert got[acct_recent]["usage_source"] is None  # still within QPID's wait
    assert counts.as_dict() == {
        "candidates": 4, "found_qpid": 2, "found_accounting": 1, "updated": 3, "retired": 0, "waiting": 1,
        "malformed": 0, "other_clusters": 0, "batches": 1,
    }  # fmt: skip
    assert accounting.calls == [["13"]]  # only what QPID lacked and waited long enough

    # A second pass changes nothing but finds the late QPID record of the waiting one.
    again = run_usage_etl(usage, qpid=qpid, accounting=accounting)
    assert (again.updated, again.waiting) == (0, 1)
    qpid.figures["14"] = UsageFigures(300 * MB)
    late = run_usage_etl(usage, qpid=qpid, accounting=accounting)
    assert (late.found_qpid, late.updated) == (1, 1)
    assert usage_of(usage.engine, [acct_recent])[acct_recent]["usage_source"] == "qpid"
    assert run_usage_etl(usage, qpid=qpid, accounting=accounting).candidates == 0


def test_without_qpid_accounting_fills_at_once(usage: UsageCollection, parents: Parents) -> None:
    (ti,) = add_instances(usage.engine, parents, ["21.3"], finished_ago=timedelta(seconds=5))
    accounting = DictSource({"21.3": UsageFigures(maxrss_bytes=210 * MB, wallclock_s=4.0, cpu_s=1.0)})
    counts = run_usage_etl(usage, qpid=None, accounting=accounting)
    assert (counts.found_accounting, counts.updated) == (1, 1)
    assert usage_of(usage.engine, [ti])[ti]["maxrss"] == 210 * MB


def test_unfound_instances_wait_then_retire(usage: UsageCollection, parents: Parents) -> None:
    (young,) = add_instances(usage.engine, parents, ["31"], finished_ago=timedelta(days=1))
    (old_reported,) = add_instances(usage.engine, parents, ["32"], finished_ago=timedelta(days=9), maxrss=7 * MB)
    (old_bare,) = add_instances(usage.engine, parents, ["33"], finished_ago=timedelta(days=9))
    counts = run_usage_etl(usage, qpid=DictSource(), accounting=DictSource(), settings=EtlSettings())
    assert (counts.candidates, counts.retired, counts.waiting, counts.updated) == (3, 2, 1, 0)
    got = usage_of(usage.engine, [young, old_reported, old_bare])
    assert [got[i]["usage_source"] for i in (young, old_reported, old_bare)] == [None, "worker", "missing"]
    assert got[old_reported]["maxrss"] == 7 * MB


def test_other_clusters_and_jobless_instances_are_settled_without_lookups(
    usage: UsageCollection, parents: Parents
) -> None:
    (local,) = add_instances(usage.engine, parents, ["1"], cluster="local", maxrss=3 * MB)
    (never_ran,) = add_instances(usage.engine, parents, [None], status="W")
    qpid, accounting = DictSource(), DictSource()
    counts = run_usage_etl(usage, qpid=qpid, accounting=accounting)
    assert (counts.other_clusters, counts.candidates) == (2, 0)
    assert qpid.calls == [] and accounting.calls == []
    got = usage_of(usage.engine, [local, never_ran])
    assert (got[local]["usage_source"], got[never_ran]["usage_source"]) == ("worker", "missing")


def test_one_lookup_per_source_per_batch(usage: UsageCollection, parents: Parents) -> None:
    jobs = [str(1000 + i) for i in range(25)]
    add_instances(usage.engine, parents, jobs)
    qpid = DictSource({j: UsageFigures(maxrss_bytes=int(j)) for j in jobs}, malformed=1)
    counts = run_usage_etl(usage, qpid=qpid, accounting=None, settings=EtlSettings(batch_size=10))
    assert [len(c) for c in qpid.calls] == [10, 10, 5]
    assert (counts.batches, counts.updated, counts.malformed) == (3, 25, 3)


def test_max_batches_bounds_a_pass(usage: UsageCollection, parents: Parents) -> None:
    add_instances(usage.engine, parents, [str(i) for i in range(1, 8)])
    qpid = DictSource({str(i): UsageFigures(maxrss_bytes=i) for i in range(1, 8)})
    first = run_usage_etl(usage, qpid=qpid, accounting=None, settings=EtlSettings(batch_size=3, max_batches=2))
    assert (first.batches, first.updated) == (2, 6)
    assert run_usage_etl(usage, qpid=qpid, accounting=None).updated == 1


def test_accounting_source_reads_the_clusters_records() -> None:
    cluster = FakeCluster(name="gridengine")
    cluster.finish("5", ExitInfo("5", ExitKind.DONE, 0, maxrss_bytes=210 * MB, wallclock_s=3.0, cpu_s=1.5))
    cluster.finish("6", None)  # no record (yet)
    answer = AccountingSource(cluster).lookup(["5", "6"])
    assert answer.found == {"5": UsageFigures(maxrss_bytes=210 * MB, wallclock_s=3.0, cpu_s=1.5)}
    assert cluster.calls["exit_info"] == 1


def test_accounting_source_skips_records_without_memory(caplog: pytest.LogCaptureFixture) -> None:
    cluster = FakeCluster(name="gridengine")
    cluster.finish("7", ExitInfo("7", ExitKind.DONE, 0, maxrss_bytes=None))
    answer = AccountingSource(cluster).lookup(["7"])
    assert (answer.found, answer.malformed) == ({}, 1)
    assert "job 7 skipped" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"qpid_wait": timedelta(-1)},
        {"retire_after": timedelta(0)},
        {"max_batches": 0},
    ],
)
def test_settings_are_bounded(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EtlSettings(**kwargs)  # type: ignore[arg-type]
