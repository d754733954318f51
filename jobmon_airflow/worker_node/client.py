"""The State Manager client of the worker node: urllib, a bearer token, retries with backoff."""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """Result of one State Manager call, after retries: ``ok`` with the JSON reply, or the last error."""

    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would resend the Authorization header to wherever a redirect points, and turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class StateManagerClient:
    """POSTs to ``{url}/api/state/task_instance/{id}/{action}`` with the bearer token."""

    def __init__(self, url: str, token: str, task_instance_id: int, timeout: float, retry_seconds: float):
        self._base = f"{url.rstrip('/')}/api/state/task_instance/{task_instance_id}"
        self._token = token
        self._timeout = timeout
        self._retry_seconds = retry_seconds
        self._opener = urllib.request.build_opener(_NoRedirect)

    def post(self, action: str, body: dict[str, Any], *, retry: bool) -> Reply:
        """One call; with ``retry``, connection failures, timeouts, 429 and 5xx are retried with backoff.

        Worst case duration: retry_seconds + timeout. Other 4xx are final: the server understood and refused.
        """
        request = urllib.request.Request(
            f"{self._base}/{action}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
        )
        deadline = time.monotonic() + (self._retry_seconds if retry else 0.0)
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._opener.open(request, timeout=self._timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code} {exc.reason}: {_body_excerpt(exc)}"
                if 300 <= exc.code < 500 and exc.code != 429:
                    log.warning("%s failed, not retried: %s", action, error)
                    return Reply(ok=False, error=error)
            except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout, bad reply
                cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                error = f"{type(cause).__name__}: {cause}"
            except ValueError as exc:  # a malformed URL: retrying cannot help
                log.warning("%s failed, not retried: %s", action, exc)
                return Reply(ok=False, error=f"{type(exc).__name__}: {exc}")
            else:
                return Reply(ok=True, data=_json_object(raw, action))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("%s failed after %d attempt(s), giving up: %s", action, attempt, error)
                return Reply(ok=False, error=error)
            log.warning("%s attempt %d failed (%s); retrying", action, attempt, error)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 8.0)


def _body_excerpt(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read(300).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _json_object(raw: bytes, action: str) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("%s: reply is not a JSON object: %r", action, raw[:200])
        return {}
    return data
