"""The worker node's side: what the State Manager writes when a job reports (its only dependency).

Every call names one task instance; the State Manager has checked (through :meth:`Reports.authorized`) that the
caller holds that instance's token.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from jobmon_airflow import states
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
    status_of,
    transition_task_instances,
    updated_rows,
    utcnow,
)

#: The outcomes a worker may report as errors.
ERROR_STATES = frozenset({TIS.ERROR, TIS.RESOURCE_ERROR, TIS.ERROR_FATAL, TIS.UNKNOWN_ERROR})


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
            for chunk in chunks(sorted(tokens)):
                for ti_id, token_hash in conn.execute(sa.select(TI.c.id, TI.c.token_hash).where(TI.c.id.in_(chunk))):
                    if token_hash:
                        stored[ti_id] = token_hash
        return {
            ti_id: {t for t in presented if ti_id in stored and hmac.compare_digest(stored[ti_id], hash_token(t))}
            for ti_id, presented in tokens.items()
        }

    def status_of(self, ti_id: int) -> str:
        with self.engine.connect() as conn:
            status = conn.execute(sa.select(TI.c.status).where(TI.c.id == ti_id)).scalar()
        if status is None:
            raise NotFound(f"task instance {ti_id}")
        return str(status)

    def log_running(
        self,
        ti_id: int,
        nodename: str,
        process_group_id: int | None,
        distributor_id: str | None,
        next_report: float,
    ) -> str:
        with self.session() as s:
            current = s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id).with_for_update()).scalar_one()
            if current == TIS.KILL_SELF:
                return current
            values: dict[str, Any] = {
                "nodename": nodename,
                "process_group_id": process_group_id,
                "report_by_date": utcnow() + timedelta(seconds=next_report),
            }
            if distributor_id:
                values["distributor_id"] = distributor_id
            transition_task_instances(s, [ti_id], TIS.RUNNING, values)
            return status_of(s, ti_id)

    def log_report_by(self, ti_id: int, next_report: float) -> str:
        """Heartbeat: push the deadline; a triaging instance (late heartbeat) goes back to R.

        The common case, a running instance, is one conditional UPDATE; anything else takes the locked path.
        """
        deadline = utcnow() + timedelta(seconds=next_report)
        with self.session() as s:
            running = TI.update().where(TI.c.id == ti_id, TI.c.status == TIS.RUNNING).values(report_by_date=deadline)
            if updated_rows(s, running) == 1:
                return str(TIS.RUNNING)
        with self.session() as s:
            current = s.execute(sa.select(TI.c.status).where(TI.c.id == ti_id).with_for_update()).scalar_one()
            if current == TIS.TRIAGING:
                transition_task_instances(s, [ti_id], TIS.RUNNING)
                current = TIS.RUNNING
            if current == TIS.RUNNING:
                s.execute(TI.update().where(TI.c.id == ti_id).values(report_by_date=deadline))
            return str(current)

    def log_report_by_many(self, next_reports: Mapping[int, float]) -> dict[int, str]:
        """Many heartbeats at once (the State Manager coalesces concurrent requests into this): one UPDATE for the
        running instances, and one transition back to R for the triaging ones whose heartbeats came late (after a
        network partition, thousands at once); killed or ended instances just report their status."""
        if not next_reports:
            return {}
        deadline = utcnow() + timedelta(seconds=max(next_reports.values()))
        out: dict[int, str] = {}
        with self.session() as s:
            for chunk in chunks(sorted(next_reports)):
                s.execute(
                    TI.update().where(TI.c.id.in_(chunk), TI.c.status == TIS.RUNNING).values(report_by_date=deadline)
                )
                for r in s.execute(sa.select(TI.c.id, TI.c.status).where(TI.c.id.in_(chunk))):
                    out[r.id] = r.status
            late = [i for i, status in out.items() if status == TIS.TRIAGING]
            triaging: list[int] = []
            for chunk in chunks(late):  # locked and read again: one that ended meanwhile is left as it is
                triaging += s.execute(
                    sa.select(TI.c.id).where(TI.c.id.in_(chunk), TI.c.status == TIS.TRIAGING).with_for_update()
                ).scalars()
            back = transition_task_instances(s, triaging, TIS.RUNNING)
            for chunk in chunks(back):
                s.execute(TI.update().where(TI.c.id.in_(chunk)).values(report_by_date=deadline))
            out.update(dict.fromkeys(back, str(TIS.RUNNING)))
        return {ti_id: out.get(ti_id, "unknown") for ti_id in next_reports}

    def log_done(self, ti_id: int, nodename: str | None, usage: Usage | None) -> str:
        with self.session() as s:
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
            finish_instance(s, ti_id, error_state, exit_status, message, nodename, usage)
            return status_of(s, ti_id)
