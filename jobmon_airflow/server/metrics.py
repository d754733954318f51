"""``GET /jobmon/metrics`` (Prometheus' text format) and the timing of every State Manager request.

The route answers only a bearer token equal to the contents of the file named by ``$JOBMON_AIRFLOW_METRICS_TOKEN_FILE``
(Prometheus: ``authorization: {type: Bearer, credentials_file: ...}``); without that variable metrics are switched
off (404): the State Manager may listen on a network, and its metrics name hosts, queues and load. The token file is
read on each scrape (a few bytes, every few seconds), so it can be replaced without a restart.

:class:`RequestTimer` is a pure ASGI middleware: it times each request and records it by route, ids replaced by
``{id}`` so that the label set stays small; paths no route knows (404) are recorded as ``other``.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobmon_airflow import telemetry

TOKEN_FILE_ENV = "JOBMON_AIRFLOW_METRICS_TOKEN_FILE"
MAX_TOKEN_BYTES = 4096

router = APIRouter(tags=["metrics"])

_ID = re.compile(r"/\d+(?=/|$)")


def _expected_token() -> str | None:
    name = os.environ.get(TOKEN_FILE_ENV)
    if not name:
        return None
    try:
        with Path(name).open("rb") as f:
            token = f.read(MAX_TOKEN_BYTES).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return token or None


@router.get("/metrics")
def metrics(request: Request) -> Response:
    expected = _expected_token()
    if expected is None:
        raise HTTPException(404, "metrics are off: no token file ($JOBMON_AIRFLOW_METRICS_TOKEN_FILE)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise HTTPException(403, "wrong metrics token")
    body, content_type = telemetry.exposition()
    return Response(body, media_type=content_type)


def route_label(path: str, status_code: int) -> str:
    """The request's route as a metric label: numeric path segments become ``{id}``; unknown paths ``other``."""
    return "other" if status_code == 404 else _ID.sub("/{id}", path)[:200]


class RequestTimer:
    """Record every HTTP request's time and status through :func:`telemetry.report_done`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").endswith("/metrics"):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            telemetry.report_done(route_label(scope.get("path", ""), status), status, time.monotonic() - started)
