"""State Manager routes: the worker node's transitions and heartbeats, each authenticated by the instance's token.

Every route checks ``Authorization: Bearer <token>`` against the hash stored for that very task instance: no token
→ 401, a token of another instance → 403. Transitions go through the service layer, so the state machines hold.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from jobmon_airflow import service, states

router = APIRouter(prefix="/api/state", tags=["state"])
_bearer = HTTPBearer(auto_error=False)


class Usage(BaseModel):
    maxrss_bytes: int | None = None
    wallclock_s: float | None = None
    cpu_s: float | None = None


class LogRunning(BaseModel):
    nodename: str = Field(max_length=150)
    process_group_id: int | None = None
    distributor_id: str | None = Field(default=None, max_length=32)
    next_report_increment: float = Field(gt=0, le=86_400)


class LogReportBy(BaseModel):
    next_report_increment: float = Field(gt=0, le=86_400)


class LogDone(BaseModel):
    nodename: str | None = Field(default=None, max_length=150)
    exit_status: int = 0
    usage: Usage = Usage()


class LogError(BaseModel):
    error_state: str = Field(pattern="^[EZFU]$")
    exit_status: int | None = None
    error_message: str = Field(default="", max_length=100_000)
    nodename: str | None = Field(default=None, max_length=150)
    usage: Usage = Usage()


class StatusReply(BaseModel):
    status: str


def get_service(request: Request) -> service.JobmonService:
    svc: service.JobmonService = request.app.state.jobmon_service
    return svc


Svc = Annotated[service.JobmonService, Depends(get_service)]


def authorized_instance(
    svc: Svc,
    task_instance_id: Annotated[int, Path(ge=1)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> int:
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        svc.authenticate(task_instance_id, credentials.credentials)
    except service.Unauthorized as exc:
        raise HTTPException(403, str(exc)) from None
    return task_instance_id


TaskInstanceId = Annotated[int, Depends(authorized_instance)]


def _reply(call: Any, *args: Any) -> StatusReply:
    try:
        return StatusReply(status=call(*args))
    except states.IllegalTransition as exc:
        raise HTTPException(409, str(exc)) from None
    except service.NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/task_instance/{task_instance_id}/log_running")
def log_running(ti_id: TaskInstanceId, body: LogRunning, svc: Svc) -> StatusReply:
    return _reply(
        svc.log_running, ti_id, body.nodename, body.process_group_id, body.distributor_id, body.next_report_increment
    )


class HeartbeatCoalescer:
    """Concurrent heartbeat requests become one UPDATE per short window (``log_report_by_many``).

    100,000 running jobs heartbeating every 90 s are ~1,100 requests/s; one statement and one commit per
    request would make the database's commit rate the limit. Each request waits at most ``window`` seconds.
    """

    def __init__(self, svc: service.JobmonService, window: float = 0.02) -> None:
        self.svc = svc
        self.window = window
        self._pending: dict[int, tuple[float, list[Future[str]]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._flush_forever, name="jobmon-heartbeats", daemon=True).start()

    def report(self, ti_id: int, next_report: float, timeout: float = 30.0) -> str:
        future: Future[str] = Future()
        with self._lock:
            increment, waiters = self._pending.get(ti_id, (next_report, []))
            self._pending[ti_id] = (max(increment, next_report), [*waiters, future])
        self._wake.set()
        return future.result(timeout)

    def _flush_forever(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.window)  # let concurrent requests join this batch
            with self._lock:
                batch, self._pending = self._pending, {}
                self._wake.clear()
            try:
                statuses = self.svc.log_report_by_many({i: inc for i, (inc, _) in batch.items()})
            except Exception as exc:  # every waiter of this batch gets the error (→ 500, the worker retries)
                for _, waiters in batch.values():
                    for f in waiters:
                        f.set_exception(exc)
                continue
            for ti_id, (_, waiters) in batch.items():
                for f in waiters:
                    f.set_result(statuses.get(ti_id, "unknown"))


@router.post("/task_instance/{task_instance_id}/log_report_by")
def log_report_by(ti_id: TaskInstanceId, body: LogReportBy, request: Request) -> StatusReply:
    coalescer: HeartbeatCoalescer = request.app.state.heartbeats
    return _reply(coalescer.report, ti_id, body.next_report_increment)


@router.post("/task_instance/{task_instance_id}/log_done")
def log_done(ti_id: TaskInstanceId, body: LogDone, svc: Svc) -> StatusReply:
    return _reply(svc.log_done, ti_id, body.nodename, body.usage.model_dump())


@router.post("/task_instance/{task_instance_id}/log_error")
def log_error(ti_id: TaskInstanceId, body: LogError, svc: Svc) -> StatusReply:
    return _reply(
        svc.log_error,
        ti_id,
        body.error_state,
        body.exit_status,
        body.error_message,
        body.nodename,
        body.usage.model_dump(),
    )
