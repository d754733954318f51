"""Guards in front of every route: a cap on request bodies, and validation errors that never echo their input.

:class:`BodyLimit` is a pure ASGI middleware: a declared ``Content-Length`` over the cap is refused (413) before a
byte of the body is read; a body without one (chunked) is counted as it is read and refused as soon as it passes the
cap, so the rest is never read. The cap holds for every route, inside Airflow and standalone.

Validation errors (422) name the field and the rule, without the offending value: the value may be huge (a whole
malformed body), or not encodable as JSON at all (NaN, infinity, a lone surrogate), which would turn a 422 into a
500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobmon_airflow.server.schemas import MAX_BODY_BYTES


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes the cap: the route's read stops there and answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413) without reading them."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
        if declared:
            if len(set(declared)) != 1 or not declared[0].strip().isdigit():
                await _send_error(send, 400, "invalid Content-Length header")
                return
            if int(declared[0]) > self.max_bytes:
                await _send_error(send, 413, f"request body larger than {self.max_bytes} bytes")
                return
        received = 0
        started = exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if exceeded:  # the rest of the body is still coming: close rather than read it to reuse the line
                    message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge as exc:  # no exception handler turned it into a response on the way out
            if started:
                raise
            await _send_error(send, exc.status_code, str(exc.detail))


_CLOSE = (b"connection", b"close")


async def _send_error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    # The unread body is still on the wire: close the connection rather than read it all to reuse the line.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), _CLOSE]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------------------------
# Validation errors


def _plain(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int | str)


def _loc_part(part: Any) -> int | str:
    return part if isinstance(part, int) and not isinstance(part, bool) else str(part)


def safe_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors without ``input`` (and ``url``); what context they carry, as plain JSON values."""
    out: list[dict[str, Any]] = []
    for error in errors:
        item: dict[str, Any] = {
            "type": str(error.get("type", "")),
            "loc": [_loc_part(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
        }
        ctx = error.get("ctx")
        if isinstance(ctx, Mapping):
            item["ctx"] = {str(k): v if _plain(v) else str(v) for k, v in ctx.items()}
        out.append(item)
    return out


def error_response(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> Response:
    """JSON that always encodes: ASCII (a lone surrogate is escaped), no NaN (refused, never written)."""
    body = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return Response(body, status, headers=dict(headers or {}), media_type="application/json")


def validation_error_response(errors: Iterable[Mapping[str, Any]]) -> Response:
    return error_response(422, safe_errors(errors))


async def request_validation_handler(_request: Request, exc: Exception) -> Response:
    """FastAPI's 422, without the input values it would echo."""
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc.errors())
