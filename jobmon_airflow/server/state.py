"""State Manager routes: the worker node's transitions and heartbeats, each authenticated by the instance's token.

Every route checks ``Authorization: Bearer <token>`` against the hash stored for that very task instance: no token
→ 401, a token of another instance → 403. Transitions go through the service layer, so the state machines hold.
``log_ran`` is ``log_running`` and ``log_done``/``log_error`` in one request and one transaction, for a command
that ended before its running report was due.
A token stops authorizing heartbeats when its instance ends (403, revoked); a repeated final report still gets the
status back. Every field is bounded (:mod:`.schemas`) and validation errors never echo their input (:mod:`.limits`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobmon_airflow import states
from jobmon_airflow.server.heartbeats import HeartbeatCoalescer, log_report_by
from jobmon_airflow.server.schemas import MAX_ID, MIN_ID, LogDone, LogError, LogRan, LogRunning, StatusReply
from jobmon_airflow.service import NotFound, Reports, Unauthorized

router = APIRouter(prefix="/api/state", tags=["state"])
_bearer = HTTPBearer(auto_error=False)


def get_reports(request: Request) -> Reports:
    reports: Reports = request.app.state.reports
    return reports


Svc = Annotated[Reports, Depends(get_reports)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials


def authorized_instance(
    svc: Svc,
    task_instance_id: Annotated[int, Path(ge=MIN_ID, le=MAX_ID)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> int:
    try:
        svc.authenticate(task_instance_id, _token(credentials))
    except Unauthorized as exc:
        raise HTTPException(403, str(exc)) from None
    return task_instance_id


TaskInstanceId = Annotated[int, Depends(authorized_instance)]


def _reply(call: Any, *args: Any) -> StatusReply:
    try:
        return StatusReply(status=call(*args))
    except states.IllegalTransition as exc:
        raise HTTPException(409, str(exc)) from None
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/task_instance/{task_instance_id}/log_running")
def log_running(ti_id: TaskInstanceId, body: LogRunning, svc: Svc) -> StatusReply:
    return _reply(
        svc.log_running, ti_id, body.nodename, body.process_group_id, body.distributor_id, body.next_report_increment
    )


router.add_route(f"{router.prefix}/task_instance/{{task_instance_id}}/log_report_by", log_report_by, ["POST"])


@router.post("/task_instance/{task_instance_id}/log_done")
def log_done(ti_id: TaskInstanceId, body: LogDone, svc: Svc) -> StatusReply:
    return _reply(svc.log_done, ti_id, body.nodename, body.usage.record())


@router.post("/task_instance/{task_instance_id}/log_error")
def log_error(ti_id: TaskInstanceId, body: LogError, svc: Svc) -> StatusReply:
    return _reply(
        svc.log_error,
        ti_id,
        body.error_state,
        body.exit_status,
        body.error_message,
        body.nodename,
        body.usage.record(),
    )


@router.post("/task_instance/{task_instance_id}/log_ran")
def log_ran(ti_id: TaskInstanceId, body: LogRan, svc: Svc) -> StatusReply:
    """log_running and log_done / log_error in one request and one transaction (a command that ended before its
    running report was due); the separate routes stay for longer commands and for workers of older versions."""
    return _reply(
        svc.log_ran,
        ti_id,
        body.nodename,
        body.process_group_id,
        body.distributor_id,
        body.next_report_increment,
        body.status,
        body.exit_status,
        body.error_message,
        body.usage.record(),
    )


__all__ = ["HeartbeatCoalescer", "router"]
