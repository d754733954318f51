"""The worker node's side: what the State Manager writes when a job reports (its only dependency).

Every call names one task instance; the State Manager has checked (through :meth:`Reports.authorized`) that the
caller holds that instance's token. A token is good for heartbeats while its instance lives: once the instance is
final (:data:`states.TASK_INSTANCE_FINAL`) it is revoked (:func:`revoked`), and only a repeated final report is
still answered, idempotently (the worker retries its final report).
"""

from __future__ import annotations

import hmac
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobmon_airflow import states, telemetry
from jobmon_airflow.hashing import hash_token
from jobmon_airflow.records import Usage
from jobmon_airflow.service.core import (
    TI,
    TIS,
    NotFound,
    Store,
    Unauthorized,
    chunks,
    finish_instance,
    log_errors,
    status_of,
    transition_task_instances,
    utcnow,
)

log = logging.getLogger(__name__)

#: The outcomes a worker may report as errors.
ERROR_STATES = frozenset({TIS.ERROR, TIS.RESOURCE_ERROR, TIS.ERROR_FATAL, TIS.UNKNOWN_ERROR})
#: Ends that Jobmon reaches from a running instance only: a late report of a triaging instance goes T → R first.
_FROM_RUNNING_ONLY = frozenset({TIS.DONE, TIS.ERROR})
#: Row ids are signed 64-bit integers: anything else names no instance (and would overflow the database driver).
MAX_ID = 2**63 - 1
REVOKED = "token revoked: task instance ended"


class Revoked(Unauthorized):
    """The token was right, but its instance has ended: it no longer authorizes heartbeats."""


def revoked(status: str) -> bool:
    """True when an instance in ``status`` has ended, so its token no longer authorizes heartbeats."""
    return status in states.TASK_INSTANCE_FINAL


class Reports(Store):
    """Authentication, running, heartbeats, done and error reports of task instances."""

    def authenticate(self, ti_id: int, token: str) -> None:
        """The bearer token must be the one issued to this very instance."""
        if token not in self.authorized({ti_id: [token]})[ti_id]:
            raise Unauthorized(f"token is not valid for task instance {ti_id}")

    def authorized(self, tokens: Mapping[int, Iterable[str]]) -> dict[int, set[str]]:
        """Which of the presented tokens (plain) are the ones issued to each instance: one query per chunk, for the
        State Manager's batched heartbeats."""
        stored: dict[int, str] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(i for i in tokens if 1 <= i <= MAX_ID)):
                for ti_id, token_hash in conn.execute(sa.select(TI.c.id, TI.c.token_hash).where(TI.c.id.in_(chunk))):
                    if token_hash:
                        stored[ti_id] = token_hash
        return {
            ti_id: {t for t in presented if ti_id in stored and hmac.compare_digest(stored[ti_id], hash_token(t))}
            for ti_id, presented in tokens.items()
        }

    def log_running(
        self,
        ti_id: int,
        nodename: str,
        process_group_id: int | None,
        distributor_id: str | None,
        next_report: float,
    ) -> str:
        """The worker started. The job id recorded at submission stays authoritative (it is what a kill deletes):
        the worker's only fills in a missing one; a different one is logged as an error of the instance."""
        with self.session() as s:
            return _log_running(s, ti_id, nodename, process_group_id, distributor_id, next_report)

    def log_ran(
        self,
        ti_id: int,
        nodename: str,
        process_group_id: int | None,
        distributor_id: str | None,
        next_report: float,
        status: str,
        exit_status: int | None,
        message: str,
        usage: Usage | None,
    ) -> str:
        """A command that ended before its running report was due: ``log_running`` then ``log_done`` (``status``
        D) or ``log_error`` (an error state), in one transaction, each transition as its own report makes it
        (O → R → D; a kill requested meanwhile: K → D or K → F). An instance already ended is a retry of this
        report whose reply was lost (or an outcome learnt otherwise): the running half is skipped and the end is
        answered as a repeated final report is, so nothing transitions twice."""
        if status != TIS.DONE and status not in ERROR_STATES:
            raise states.IllegalTransition(
                f"task_instance: status must be D or one of {', '.join(sorted(ERROR_STATES))}, got {status!r}"
            )
        with self.session() as s:
            current = s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id).with_for_update()).scalar()
            if current is None:
                raise NotFound(f"task instance {ti_id}")
            if current not in states.TASK_INSTANCE_FINAL:
                _log_running(s, ti_id, nodename, process_group_id, distributor_id, next_report)
            _back_from_triage(s, ti_id, status)
            if status == TIS.DONE:
                finish_instance(s, ti_id, TIS.DONE, 0, "", nodename, usage)
            else:
                finish_instance(s, ti_id, status, exit_status, message, nodename, usage)
            return status_of(s, ti_id)

    def log_report_by_many(self, next_reports: Mapping[int, float]) -> dict[int, str]:
        """Many heartbeats at once (the State Manager coalesces concurrent requests into this), each instance with
        its own increment: one UPDATE per distinct increment (workers share one interval: typically one) for the
        running instances, and one transition back to R for the triaging ones whose heartbeats came late (after a
        network partition, thousands at once); killed or ended instances just report their status."""
        if not next_reports:
            return {}
        now = utcnow()
        by_increment: dict[float, list[int]] = defaultdict(list)
        for ti_id, increment in sorted(next_reports.items()):
            by_increment[increment].append(ti_id)
        out: dict[int, str] = {}
        with self.session() as s:
            for increment, ids in by_increment.items():
                deadline = now + timedelta(seconds=increment)
                for chunk in chunks(ids):
                    s.execute(
                        TI.update()
                        .where(TI.c.id.in_(chunk), TI.c.status == TIS.RUNNING)
                        .values(report_by_date=deadline)
                    )
            for chunk in chunks(sorted(next_reports)):
                for r in s.execute(sa.select(TI.c.id, TI.c.status).where(TI.c.id.in_(chunk))):
                    out[r.id] = r.status
            late = [i for i, status in out.items() if status == TIS.TRIAGING]
            triaging: list[int] = []
            for chunk in chunks(late):  # locked and read again: one that ended meanwhile is left as it is
                triaging += s.execute(
                    sa.select(TI.c.id).where(TI.c.id.in_(chunk), TI.c.status == TIS.TRIAGING).with_for_update()
                ).scalars()
            back = set(transition_task_instances(s, triaging, TIS.RUNNING))
            for increment, ids in by_increment.items():
                deadline = now + timedelta(seconds=increment)
                for chunk in chunks([i for i in ids if i in back]):
                    s.execute(TI.update().where(TI.c.id.in_(chunk)).values(report_by_date=deadline))
            out.update(dict.fromkeys(back, str(TIS.RUNNING)))
        return {ti_id: out.get(ti_id, "unknown") for ti_id in next_reports}

    def log_done(self, ti_id: int, nodename: str | None, usage: Usage | None) -> str:
        """The command exited 0. A triaging instance (its heartbeats were late: a State Manager outage longer than
        the deadline) goes T → R → D, as Jobmon does: the report is the instance's own worker's word."""
        with self.session() as s:
            _back_from_triage(s, ti_id, TIS.DONE)
            finish_instance(s, ti_id, TIS.DONE, 0, "", nodename, usage)
            return status_of(s, ti_id)

    def log_error(
        self,
        ti_id: int,
        error_state: str,
        exit_status: int | None,
        message: str,
        nodename: str | None,
        usage: Usage | None,
    ) -> str:
        if error_state not in ERROR_STATES:
            raise states.IllegalTransition(
                f"task_instance: error_state must be one of {', '.join(sorted(ERROR_STATES))}, got {error_state!r}"
            )
        with self.session() as s:
            _back_from_triage(s, ti_id, error_state)
            finish_instance(s, ti_id, error_state, exit_status, message, nodename, usage)
            return status_of(s, ti_id)


def _log_running(
    session: Session,
    ti_id: int,
    nodename: str,
    process_group_id: int | None,
    distributor_id: str | None,
    next_report: float,
) -> str:
    """log_running's writes, in the caller's transaction (see :meth:`Reports.log_running`)."""
    row = session.execute(
        sa.select(TI.c.status, TI.c.distributor_id, TI.c.submitted_date).where(TI.c.id == ti_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"task instance {ti_id}")
    values: dict[str, Any] = {
        "nodename": nodename,
        "process_group_id": process_group_id,
        "report_by_date": utcnow() + timedelta(seconds=next_report),
    }
    if distributor_id and not row.distributor_id:
        values["distributor_id"] = distributor_id
    elif distributor_id and distributor_id != row.distributor_id:
        message = (
            f"log_running: the worker reported job id {distributor_id!r}, but {row.distributor_id!r} was "
            f"recorded at submission; {row.distributor_id!r} is kept"
        )
        log.warning("task instance %d: %s", ti_id, message)
        log_errors(session, [ti_id], message)
    if row.status == TIS.KILL_SELF:
        return str(row.status)
    if transition_task_instances(session, [ti_id], TIS.RUNNING, values):
        telemetry.queue_wait(row.submitted_date)
    return status_of(session, ti_id)


def _back_from_triage(session: Session, ti_id: int, end: str) -> None:
    """A late final report of a triaging instance: T → R first where the end is legal from R only (D, E); Z, U
    and F are legal from T directly. Under the row lock, so a concurrent writer cannot slip in between."""
    if end not in _FROM_RUNNING_ONLY:
        return
    current = session.execute(sa.select(TI.c.status).where(TI.c.id == ti_id).with_for_update()).scalar()
    if current == TIS.TRIAGING:
        transition_task_instances(session, [ti_id], TIS.RUNNING)
