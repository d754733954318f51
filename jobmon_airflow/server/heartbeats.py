"""The hot route, ``POST /task_instance/{id}/log_report_by``: heartbeats coalesced into one token check and one
UPDATE per short window.

Every waiter of a batch is answered on its own: its token decides its answer, only authenticated heartbeats move a
deadline, and each by its own caller's increment (per instance, the largest one among its authenticated waiters).
A token whose instance has ended is revoked (403). A request that fails validation never joins a batch, and a batch
that fails on its data is written again instance by instance, so one bad instance cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from jobmon_airflow.server.limits import error_response, validation_error_response
from jobmon_airflow.server.schemas import MAX_ID, MIN_ID, LogReportBy, StatusReply
from jobmon_airflow.service import Reports, Unauthorized
from jobmon_airflow.service.reports import REVOKED, Revoked, revoked

log = logging.getLogger(__name__)

#: Errors of the database itself (down, locked, pool exhausted): writing instance by instance cannot help.
_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, sa.exc.DisconnectionError)


@dataclass
class _Beats:
    """The heartbeats of one instance waiting for the next flush: (token, increment, future) each."""

    waiters: list[tuple[str, float, asyncio.Future[str]]] = field(default_factory=list)


class HeartbeatCoalescer:
    """Concurrent heartbeats become one token check and one UPDATE per short window (``authorized`` and
    ``log_report_by_many``), off the event loop.

    100,000 running jobs heartbeating every 90 s are ~1,100 requests/s; a database round trip, a statement and a
    commit per request would make the database the limit, and a worker thread per waiting request the server's.
    A request waits for at most ``window`` seconds plus two flushes: flushes run one at a time, and requests
    arriving during one form the next batch.
    """

    def __init__(self, svc: Reports, window: float = 0.02) -> None:
        self.svc = svc
        self.window = window
        self._pending: dict[int, _Beats] = {}
        self._flush: asyncio.Task[None] | None = None

    async def report(self, ti_id: int, token: str, next_report: float) -> str:
        """The instance's status after this heartbeat; :class:`Unauthorized` for a wrong token, :class:`Revoked`
        for the token of an instance that has ended."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(ti_id, _Beats()).waiters.append((token, next_report, future))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_soon())
        return await future

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.window)  # let concurrent requests join the first batch
        while self._pending:  # later batches: whatever arrived while the last one was written
            batch, self._pending = self._pending, {}
            try:
                answers = await asyncio.to_thread(self._write_isolated, batch)
            except Exception as exc:  # the database failed: every waiter gets the error (→ 500, the worker retries)
                answers = dict.fromkeys(batch, exc)
            for ti_id, beats in batch.items():
                self._answer(ti_id, beats, answers[ti_id])

    @staticmethod
    def _answer(ti_id: int, beats: _Beats, answer: tuple[str, set[str]] | BaseException) -> None:
        for token, _, future in beats.waiters:
            if future.done():  # the request was cancelled (client gone)
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
                continue
            status, authorized = answer
            if token not in authorized:
                future.set_exception(Unauthorized(f"token is not valid for task instance {ti_id}"))
            elif revoked(status):
                future.set_exception(Revoked(REVOKED))
            else:
                future.set_result(status)

    def _write_isolated(self, batch: dict[int, _Beats]) -> dict[int, tuple[str, set[str]] | BaseException]:
        """The batch in one go; if that fails on its data (not on the database being unreachable), instance by
        instance, so that whatever one instance's heartbeat trips on is its own error only."""
        try:
            return dict(self._write(batch))
        except _UNAVAILABLE:
            raise
        except Exception:
            if len(batch) == 1:
                raise
            log.exception("heartbeat batch of %d instances failed; writing them one by one", len(batch))
        out: dict[int, tuple[str, set[str]] | BaseException] = {}
        for ti_id, beats in batch.items():
            try:
                out.update(self._write({ti_id: beats}))
            except Exception as exc:
                out[ti_id] = exc
        return out

    def _write(self, batch: dict[int, _Beats]) -> dict[int, tuple[str, set[str]]]:
        """(status, the tokens that are the instance's own) per instance; each instance's deadline moved by the
        largest increment among its authenticated heartbeats, and by nothing else."""
        authorized = self.svc.authorized({ti_id: [t for t, _, _ in beats.waiters] for ti_id, beats in batch.items()})
        increments = {
            ti_id: max(inc for token, inc, _ in beats.waiters if token in authorized[ti_id])
            for ti_id, beats in batch.items()
            if authorized[ti_id]
        }
        statuses = self.svc.log_report_by_many(increments)
        return {ti_id: (statuses.get(ti_id, "unknown"), authorized[ti_id]) for ti_id in batch}


def _task_instance_id(request: Request) -> int | None:
    text = str(request.path_params.get("task_instance_id", ""))
    if text.isascii() and text.isdigit() and len(text.lstrip("0")) <= 19 and MIN_ID <= int(text) <= MAX_ID:
        return int(text)
    return None


async def log_report_by(request: Request) -> Response:
    """``POST /task_instance/{id}/log_report_by``, the hot route (every running job, every ~90 s).

    A plain Starlette endpoint: FastAPI's per-request dependency and validation machinery cost more than the
    batched heartbeat itself (one server process, 512 connections: 3,454 heartbeats/s this way, 2,112/s as a
    FastAPI route). The contract is the other routes': 401 without a token, 422 naming a bad id or field (without
    its value), 403 for a token not issued to this instance or revoked because the instance ended. The heartbeat
    waits for its batch on the event loop, not in a worker thread, and its token is checked with the batch's.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return error_response(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    ti_id = _task_instance_id(request)
    if ti_id is None:
        return validation_error_response([_ID_ERROR])
    try:
        body = LogReportBy.model_validate_json(await request.body())
    except ValidationError as exc:
        return validation_error_response([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)])
    coalescer: HeartbeatCoalescer = request.app.state.heartbeats
    try:
        status = await coalescer.report(ti_id, token, body.next_report_increment)
    except Unauthorized as exc:
        return error_response(403, str(exc))
    return Response(StatusReply(status=status).model_dump_json(), media_type="application/json")


_ID_ERROR: dict[str, Any] = {
    "type": "int_range",
    "loc": ("path", "task_instance_id"),
    "msg": f"task_instance_id must be a whole number from {MIN_ID} to {MAX_ID}",
    "ctx": {"ge": MIN_ID, "le": MAX_ID},
}
