"""Watching submitted jobs until their task instance ends: the logic shared by the trigger and blocking mode.

A task instance ends when the worker node reports it (the database says so), or, when the worker could not report
(killed with its job by the batch system, State Manager down), from what the job left behind: the worker's exit
record beside its logs first, then the cluster's accounting; a job gone from the queue with neither after a grace
period is lost. Evidence is read before deadlines are enforced: an instance whose job left a record is concluded
from it, never failed for a missing heartbeat. One poll covers every watched instance of a process with one
database query, one cluster status call and one accounting call, however many tasks are deferred.

Between polls, an instance watched for less than one interval gets quick looks (soon after submission, then
backing off to the interval): one database query for all such instances, no cluster call, so a short task ends
when its worker reports the end instead of a whole interval later, and the cluster still sees one status call per
interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import stat
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from jobmon_airflow import states
from jobmon_airflow.clusters.base import Cluster, ExitInfo, ExitKind, JobState, JobStatus
from jobmon_airflow.records import EventSource, ExitRecord, RecordError, Usage, WatchEvent
from jobmon_airflow.service import Services, TaskInstanceView

log = logging.getLogger(__name__)

DEFAULT_LOST_GRACE_S = 60.0  # accounting can lag behind a job leaving the queue
MAX_FAILED_POLLS = 60  # blocking mode: an hour of failed polls at one a minute, then the try fails
FIRST_LOOK_S = 0.25  # the first quick look after a watch starts: a trivial job has often ended by then
LOOK_BACKOFF = 1.5  # each further look waits this much longer, up to the poll interval
TIS = states.TaskInstanceStatus

#: Instance statuses that end the wait (K: a kill was requested, the operator finishes the job).
ENDED = states.TASK_INSTANCE_FINAL | {TIS.KILL_SELF}

#: How a cluster's exit classification maps onto Jobmon's instance statuses.
EXIT_KIND_STATUS: Mapping[ExitKind, str] = {
    ExitKind.DONE: TIS.DONE,
    ExitKind.ERROR: TIS.ERROR,
    ExitKind.RESOURCE_KILL: TIS.RESOURCE_ERROR,
    ExitKind.DELETED: TIS.UNKNOWN_ERROR,  # deleted outside Jobmon (a kill through Jobmon is already K)
    ExitKind.LOST: TIS.UNKNOWN_ERROR,
}


def read_exit_record(path: str | None, task_instance_id: int) -> ExitRecord | None:
    """The instance's exit record, or None when it is not there (yet) or not this instance's valid record.

    A record decides an outcome, and it sits in a log directory that may be on a shared root: only a regular file
    owned by this user and writable by nobody else counts (opened without following a link, checked on the open
    file). Anything else is ignored with a warning naming the path and why. Never raises: the job's own command
    can write this file, and the shared poll that reads it serves every watched instance of the process.
    """
    if not path:
        return None
    max_bytes = 1 << 20  # the worker writes a few KB (its error message is capped at 10,000 characters)
    try:
        # O_NONBLOCK: a FIFO put in the record's place must not block the watcher (it is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # not written (yet): the writer renames atomically, so just look again next poll
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else f"cannot open it: {exc.strerror or exc}"
        log.warning("Ignoring exit record %s: %s", path, why)
        return None
    except (ValueError, TypeError) as exc:  # not a path at all (a NUL byte in it)
        log.warning("Ignoring exit record %r: not a usable path: %s", path, exc)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            why = f"not a regular file ({stat.filemode(st.st_mode)})"
        elif st.st_uid != os.getuid():
            why = f"owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            why = f"writable by group or others (mode {stat.filemode(st.st_mode)})"
        else:
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(max_bytes + 1)
            if len(data) > max_bytes:
                why = f"larger than {max_bytes} bytes: not a record the worker wrote"
            else:
                return ExitRecord.from_json(data.decode("utf-8"), task_instance_id=task_instance_id)
    except OSError:
        return None  # unreadable just now: look again next poll
    except (RecordError, UnicodeDecodeError) as exc:
        why = str(exc)
    except Exception as exc:  # whatever else a malformed record may cause, it must not stop the poll
        why = f"unreadable record ({type(exc).__name__}: {exc})"
    finally:
        try:
            os.close(fd)
        except OSError as exc:  # a read-only descriptor: nothing was lost
            log.debug("Closing exit record %s: %s", path, exc)
    log.warning("Ignoring exit record %s: %s", path, why)
    return None


def outcome(
    view: TaskInstanceView,
    job: JobStatus | None,
    exit_info: ExitInfo | None,
    record: ExitRecord | None,
    gone_for: float,
    lost_grace_s: float,
) -> WatchEvent | None:
    """The event that ends the wait, or None to keep waiting. Evidence in order of strength: what the worker
    reported, its exit record, the cluster's accounting; then the absence of evidence (no heartbeat, lost)."""

    def event(status: str, source: EventSource, **kw: Any) -> WatchEvent:
        return WatchEvent(view.id, view.distributor_id, status, source, **kw)

    if view.status == TIS.NO_HEARTBEAT:
        # Moved to X elsewhere (launched, never reported running, deadline passed): Jobmon's no_heartbeat_error.
        return event(TIS.ERROR, EventSource.TRIAGE, message=f"job {view.distributor_id}: no heartbeat")
    if view.status in ENDED:
        return event(view.status, EventSource.DATABASE)
    if job is not None and job.state == JobState.ERROR:
        reason = f"job {job.job_id} is in error state {job.raw}: {job.reason or 'no reason given'}"
        return event(TIS.UNKNOWN_ERROR, EventSource.CLUSTER, message=reason, kill_job=True)
    if job is None or job.state != JobState.GONE:
        return None
    if record is not None:
        return event(
            record.status,
            EventSource.EXIT_RECORD,
            exit_status=record.exit_status,
            message=record.error_message,
            nodename=record.nodename,
            usage=record.usage,
        )
    if exit_info is not None:
        return event(
            EXIT_KIND_STATUS[exit_info.kind],
            EventSource.ACCOUNTING,
            exit_status=exit_info.exit_status,
            message=exit_info.reason,
            nodename=exit_info.hostname,
            usage=Usage(exit_info.maxrss_bytes, exit_info.wallclock_s, exit_info.cpu_s),
        )
    if gone_for >= lost_grace_s:
        # Never ran (deleted while pending leaves no accounting): X, no heartbeat, retryable. Ran: U, lost.
        return event(
            TIS.NO_HEARTBEAT if view.status == TIS.LAUNCHED else TIS.UNKNOWN_ERROR,
            EventSource.LOST,
            message=f"job {job.job_id} left the queue and left no exit record or accounting after {gone_for:.0f}s",
        )
    return None


_GONE = JobStatus("", JobState.GONE)


@dataclass
class _Watch:
    job_id: str
    gone_since: float | None = None
    future: asyncio.Future[WatchEvent] | None = None
    added: float = field(default_factory=time.monotonic)
    looks: int = 0
    look_due: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.look_due = self.look_due or self.added + FIRST_LOOK_S

    def looked(self, now: float, poll_interval: float) -> None:
        """Schedule the next quick look; none once the watch is an interval old (the polls cover it)."""
        self.looks += 1
        delay = min(poll_interval, FIRST_LOOK_S * LOOK_BACKOFF**self.looks)
        self.look_due = now + delay if now + delay < self.added + poll_interval else float("inf")


@dataclass
class Poller:
    """One poll of many watched instances: 1 DB query, 1 cluster status call, 1 accounting call, 1 heartbeat."""

    services: Services
    cluster: Cluster
    lost_grace_s: float = DEFAULT_LOST_GRACE_S
    polls: int = 0
    looks: int = 0
    failed_polls: int = 0
    watched: dict[int, _Watch] = field(default_factory=dict)

    def poll(self) -> dict[int, WatchEvent]:
        self.polls += 1
        queries, lifecycle = self.services.queries, self.services.lifecycle
        views = queries.task_instances(self.watched)
        open_ids = [i for i, v in views.items() if v.status not in ENDED]
        statuses = self.cluster.statuses([self.watched[i].job_id for i in open_ids]) if open_ids else {}
        # Liveness, as Jobmon's distributor and swarm do it: a launched job still in the queue is not late.
        lifecycle.log_launched_report_by(
            [i for i in open_ids if views[i].status == TIS.LAUNCHED and self._state(statuses, i) != JobState.GONE]
        )
        # What gone jobs left behind, read BEFORE deadlines are enforced: a job that ended while nobody watched
        # (State Manager or triggerer down) is concluded from its record, not failed for a missing heartbeat.
        now = time.monotonic()
        records: dict[int, ExitRecord | None] = {}
        need_accounting: list[str] = []
        for i in open_ids:
            w = self.watched[i]
            st = statuses.get(w.job_id)
            if st is not None and st.state == JobState.GONE:
                w.gone_since = w.gone_since or now
                records[i] = read_exit_record(views[i].exit_record, i)
                if records[i] is None:
                    need_accounting.append(w.job_id)
        exit_infos = self.cluster.exit_info(need_accounting) if need_accounting else {}
        evidence = [i for i in records if records[i] is not None or self.watched[i].job_id in exit_infos]
        # A running instance whose heartbeats stopped goes to T (triage), a launched one that never ran to X.
        triaging, no_heartbeat = lifecycle.set_status_for_triaging(
            {v.workflow_run_id for v in views.values()}, exclude=evidence
        )
        if triaging or no_heartbeat:
            log.warning("Heartbeats overdue: triaging %s, no heartbeat %s", triaging, no_heartbeat)
            views = queries.task_instances(self.watched)
        lifecycle.log_workflow_run_heartbeats({v.workflow_run_id for v in views.values()})
        events: dict[int, WatchEvent] = {}
        for i, view in views.items():
            w = self.watched[i]
            ended = outcome(
                view,
                statuses.get(w.job_id),
                exit_infos.get(w.job_id),
                records.get(i),
                now - w.gone_since if w.gone_since else 0.0,
                self.lost_grace_s,
            )
            if ended is not None:
                events[i] = ended
        return events

    def look(self, ti_ids: Iterable[int], poll_interval: float) -> dict[int, WatchEvent]:
        """A quick look between polls at ``ti_ids``: one database query, no cluster call. Ends the instances the
        database already holds as ended (their worker reported the end); the rest wait for the next look or poll."""
        ids = [i for i in ti_ids if i in self.watched]
        if not ids:
            return {}
        self.looks += 1
        views = self.services.queries.task_instances(ids)
        now = time.monotonic()
        events: dict[int, WatchEvent] = {}
        for i in ids:
            self.watched[i].looked(now, poll_interval)
            view = views.get(i)
            ended = outcome(view, None, None, None, 0.0, self.lost_grace_s) if view is not None else None
            if ended is not None:
                events[i] = ended
        return events

    def look_safely(self, ti_ids: Iterable[int], poll_interval: float) -> dict[int, WatchEvent]:
        """:meth:`look`, or no events when the database is briefly away (the polls decide then)."""
        try:
            return self.look(ti_ids, poll_interval)
        except Exception:
            log.warning("Jobmon watcher: a quick look failed; the next poll decides", exc_info=True)
            return {}

    def due_looks(self, now: float) -> list[int]:
        return [i for i, w in self.watched.items() if w.look_due <= now]

    def next_look(self) -> float:
        """When the next quick look is due (monotonic time; infinity when none is)."""
        return min((w.look_due for w in self.watched.values()), default=float("inf"))

    def watch(self, jobs: Mapping[int, str]) -> None:
        """Add instances to watch: {instance id: job id}."""
        self.watched.update({ti_id: _Watch(job_id) for ti_id, job_id in jobs.items()})

    def _state(self, statuses: Mapping[str, JobStatus], ti_id: int) -> JobState:
        return statuses.get(self.watched[ti_id].job_id, _GONE).state

    def wait_blocking(self, ti_id: int, job_id: str, poll_interval: float) -> WatchEvent:
        """Blocking mode: poll one instance until it ends."""
        return self.wait_all_blocking({ti_id: job_id}, poll_interval)[ti_id]

    def poll_safely(self) -> dict[int, WatchEvent]:
        """:meth:`poll`, or no events when it failed (qmaster or database briefly away): the next interval polls
        again. ``failed_polls`` counts the failures in a row."""
        try:
            events = self.poll()
        except Exception:
            self.failed_polls += 1
            log.exception("Jobmon watcher: poll failed (%s in a row); polling again next interval", self.failed_polls)
            return {}
        self.failed_polls = 0
        return events

    def wait_all_blocking(
        self, jobs: Mapping[int, str], poll_interval: float, every_poll: Callable[[], object] | None = None
    ) -> dict[int, WatchEvent]:
        """Blocking mode: poll until every instance in {instance id: job id} has ended. Failed polls are retried
        each interval; after ``MAX_FAILED_POLLS`` in a row the wait fails (the try; the next one re-attaches).
        ``every_poll`` runs after each poll while some are still waited for (an array applies changed limits);
        its failure is logged and it runs again next poll."""
        self.watch(jobs)
        events: dict[int, WatchEvent] = {}
        try:
            while len(events) < len(jobs):
                if self.failed_polls >= MAX_FAILED_POLLS:
                    raise RuntimeError(f"Jobmon watcher: {self.failed_polls} polls in a row failed; giving up this try")
                next_poll = time.monotonic() + poll_interval
                for ti_id, event in self.poll_safely().items():
                    events[ti_id] = event
                    self.watched.pop(ti_id, None)
                if every_poll is not None and len(events) < len(jobs):
                    try:
                        every_poll()
                    except Exception:
                        log.warning("Jobmon watcher: the per-poll step failed; trying again next poll", exc_info=True)
                while len(events) < len(jobs) and (due := self.next_look()) < next_poll:
                    time.sleep(max(0.0, due - time.monotonic()))
                    for ti_id, event in self.look_safely(self.due_looks(time.monotonic()), poll_interval).items():
                        events[ti_id] = event
                        self.watched.pop(ti_id, None)
                if len(events) < len(jobs):
                    time.sleep(max(0.0, next_poll - time.monotonic()))
            return events
        finally:
            for ti_id in jobs:
                self.watched.pop(ti_id, None)


class SharedWatcher:
    """Every trigger of one process and event loop with the same database and cluster shares one poll loop."""

    # Per event loop (a watcher's futures belong to one loop), then per database, cluster and interval.
    _instances: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], SharedWatcher]]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, poller: Poller, poll_interval: float):
        self.poller = poller
        self.poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # a new watch: its first quick look may be due before the loop wakes

    @classmethod
    async def get(
        cls, key: Mapping[str, Any], poll_interval: float, build_poller: Callable[[], Poller]
    ) -> SharedWatcher:
        """The watcher for ``key`` (what identifies the database and the cluster) and interval; the first caller
        builds its poller (in a thread: building connects to the database)."""
        watchers = cls._instances.setdefault(asyncio.get_running_loop(), {})
        full_key = (json.dumps(key, sort_keys=True), poll_interval)
        if full_key not in watchers:
            poller = await asyncio.to_thread(build_poller)
            watchers.setdefault(full_key, cls(poller, poll_interval))  # another trigger may have won the race
        return watchers[full_key]

    async def wait(self, ti_id: int, job_id: str) -> WatchEvent:
        future: asyncio.Future[WatchEvent] = asyncio.get_running_loop().create_future()
        self.poller.watched[ti_id] = _Watch(job_id, future=future)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        try:
            return await future
        finally:
            self.poller.watched.pop(ti_id, None)

    def look_soon(self, ti_ids: Iterable[int]) -> None:
        """A quick look at these watched instances now (one database query, no cluster call), whatever their age:
        for a caller that knows they have probably ended (an array whose tasks the database shows all ended)."""
        now = time.monotonic()
        for ti_id in ti_ids:
            if (w := self.poller.watched.get(ti_id)) is not None:
                w.look_due = now
        self._changed.set()

    async def wait_many(self, jobs: Mapping[int, str]) -> dict[int, WatchEvent]:
        """Wait until every instance in {instance id: job id} has ended; their events by instance id."""
        events = await asyncio.gather(*(self.wait(ti_id, job_id) for ti_id, job_id in jobs.items()))
        return dict(zip(jobs, events, strict=True))

    async def _loop(self) -> None:
        """A full poll every interval for all watches; quick looks (database only) in between for young ones."""
        next_poll = time.monotonic()
        while self.poller.watched:
            if (started := time.monotonic()) >= next_poll:
                # One poll per interval, counted from poll start to poll start (the poll's own time included).
                next_poll = started + self.poll_interval
                # A failed poll (DB or cluster hiccup) must not end every watch: it is retried next interval.
                self._deliver(await asyncio.to_thread(self.poller.poll_safely))
            elif due := self.poller.due_looks(time.monotonic()):
                self._deliver(await asyncio.to_thread(self.poller.look_safely, due, self.poll_interval))
            self._changed.clear()
            delay = min(next_poll, self.poller.next_look()) - time.monotonic()
            if delay > 0 and self.poller.watched:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)

    def _deliver(self, events: Mapping[int, WatchEvent]) -> None:
        for ti_id, event in events.items():
            w = self.poller.watched.get(ti_id)
            if w is not None and w.future is not None and not w.future.done():
                w.future.set_result(event)
