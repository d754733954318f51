"""The max-RSS ETL (Jobmon's QPID integrator, set-based): finished Grid Engine instances without settled usage →
QPID → Grid Engine's accounting → written back, a batch at a time.

Sources, in order of preference: QPID (max RSS *and* PSS, the figures Jobmon trusts), then the accounting file
(``ru_maxrss``, per process, read in KB from the raw file, see :mod:`jobmon_airflow.clusters.gridengine.accounting`).
A finished instance waits ``qpid_wait`` for its QPID record before accounting is used (QPID's collector lags the
job's end); with no QPID source, accounting is used at once. An instance found nowhere is looked at again by the
next pass, until ``retire_after`` from its end: then it is closed as ``worker`` (the worker's own report stands) or
``missing``, with a log line. Each pass is idempotent: a settled row is never a candidate again.

The QPID source is anything with the :class:`UsageLookupSource` shape (the adapter passes the hook in); the
accounting source wraps a :class:`~jobmon_airflow.clusters.base.Cluster`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from jobmon_airflow.clusters.base import Cluster
from jobmon_airflow.service.core import utcnow
from jobmon_airflow.service.usage import (
    UsageCandidate,
    UsageCollection,
    UsageFigures,
    UsageLookup,
    UsagePassCounts,
    UsageSource,
    UsageUpdate,
)

log = logging.getLogger(__name__)


class UsageLookupSource(Protocol):
    """A source of usage figures by job id ("J" or "J.T"): one call per batch, never one per job."""

    def lookup(self, job_ids: Sequence[str]) -> UsageLookup: ...


class AccountingSource:
    """Grid Engine's accounting, through the cluster's reader (the raw file: ru_maxrss in KB, made bytes there)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def lookup(self, job_ids: Sequence[str]) -> UsageLookup:
        found: dict[str, UsageFigures] = {}
        malformed = 0
        for job_id, info in self.cluster.exit_info(job_ids).items():
            try:
                found[job_id] = UsageFigures(
                    maxrss_bytes=info.maxrss_bytes, wallclock_s=info.wallclock_s, cpu_s=info.cpu_s
                )
            except ValueError as exc:
                malformed += 1
                log.warning("accounting record of job %s skipped: %s", job_id, exc)
        return UsageLookup(found, malformed)


@dataclass(frozen=True)
class EtlSettings:
    batch_size: int = 1000  # candidates per batch: one candidate scan, one lookup per source, one write
    qpid_wait: timedelta = timedelta(minutes=30)
    retire_after: timedelta = timedelta(days=7)
    max_batches: int | None = None  # bound one pass (None: until the backlog is worked through)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError(f"batch_size: expected 1..10000, got {self.batch_size}")
        if self.qpid_wait < timedelta(0) or self.retire_after <= timedelta(0):
            raise ValueError(f"qpid_wait ≥ 0 and retire_after > 0 expected, got {self.qpid_wait}, {self.retire_after}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches: expected ≥ 1 or None, got {self.max_batches}")


def run_usage_etl(
    usage: UsageCollection,
    *,
    qpid: UsageLookupSource | None,
    accounting: UsageLookupSource | None,
    settings: EtlSettings = EtlSettings(),
    now: Callable[[], datetime] = utcnow,
) -> UsagePassCounts:
    """One pass over the backlog; the counts (also logged)."""
    total = UsagePassCounts()
    after = 0
    while settings.max_batches is None or total.batches < settings.max_batches:
        batch = usage.candidates(after, settings.batch_size)
        if not batch:
            break
        after = batch[-1].id
        counts = _one_batch(usage, batch, qpid, accounting, settings, now())
        total.add(counts)
    log.info(
        "usage ETL: %d candidates, found %d in QPID and %d in accounting, %d updated, %d retired, %d waiting, "
        "%d malformed source rows skipped, %d instances of other clusters settled (%d batches)",
        total.candidates,
        total.found_qpid,
        total.found_accounting,
        total.updated,
        total.retired,
        total.waiting,
        total.malformed,
        total.other_clusters,
        total.batches,
    )
    return total


def _one_batch(
    usage: UsageCollection,
    batch: Sequence[UsageCandidate],
    qpid: UsageLookupSource | None,
    accounting: UsageLookupSource | None,
    settings: EtlSettings,
    now: datetime,
) -> UsagePassCounts:
    counts = UsagePassCounts(batches=1)
    # Other clusters have no source but the worker; a Grid Engine instance without a job id never ran.
    elsewhere = [c.id for c in batch if not c.on_gridengine or not c.job_id]
    if elsewhere:
        counts.other_clusters = usage.settle_without_figures(elsewhere)
    by_job: dict[str, list[UsageCandidate]] = defaultdict(list)
    for c in batch:
        if c.on_gridengine and c.job_id:
            by_job[c.job_id].append(c)
    counts.candidates = sum(len(cs) for cs in by_job.values())
    if not by_job:
        return counts

    updates: list[UsageUpdate] = []

    def take(answer: UsageLookup, source: UsageSource) -> int:
        counts.malformed += answer.malformed
        for job_id, figures in answer.found.items():
            for c in by_job.pop(job_id, ()):
                updates.append(UsageUpdate(c.id, figures, source))
        return len(answer.found)

    if qpid is not None:
        counts.found_qpid = take(qpid.lookup(sorted(by_job)), UsageSource.QPID)
    if accounting is not None:
        # QPID gets its collector's lag to deliver (it also has PSS); without QPID accounting is used at once.
        ready = [j for j, cs in by_job.items() if qpid is None or now - cs[0].finished_at >= settings.qpid_wait]
        if ready:
            counts.found_accounting = take(accounting.lookup(sorted(ready)), UsageSource.ACCOUNTING)
    counts.updated = usage.record(updates)

    left = [c for cs in by_job.values() for c in cs]
    old = [c for c in left if now - c.finished_at >= settings.retire_after]
    if old:
        counts.retired = usage.settle_without_figures(c.id for c in old)
        log.info(
            "usage ETL: retired %d instances with no usage record after %s (e.g. task instance %d, job %s): "
            "%d keep the worker's figures, the others are marked missing",
            counts.retired,
            settings.retire_after,
            old[0].id,
            old[0].job_id,
            sum(c.has_worker_usage for c in old),
        )
    counts.waiting = len(left) - len(old)
    return counts
