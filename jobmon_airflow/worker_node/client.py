"""The State Manager client of the worker node: JSON POSTs with a bearer token, retries with backoff.

A plain ``http://`` URL (the State Manager on the cluster's network, the usual case) is posted over one socket per
request with the few lines of HTTP/1.1 this needs (``Connection: close``, a ``Content-Length`` or chunked reply):
``http.client`` and ``urllib.request`` would cost every job 15-20 ms of start-up (their ``email`` header parser,
``ssl``). Anything else — ``https://``, a proxy variable set (``http_proxy``), credentials or a query in the URL —
goes through ``urllib.request`` (imported then), which handles TLS verification, proxies and ``no_proxy``.
Redirects are never followed: they would carry the token elsewhere (and turn the POST into a GET).
"""

from __future__ import annotations

import json
import os
import socket
import time

from jobmon_airflow.worker_node.logs import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy and ruff read the name)
if TYPE_CHECKING:
    from typing import Any

_MAX_REPLY_BYTES = 1024 * 1024  # State Manager replies are a few bytes of JSON; anything past this is not one


class Reply:
    """Result of one State Manager call, after retries: ``ok`` with the JSON reply, or the last error; ``code``:
    the last HTTP status (0 when no reply came)."""

    __slots__ = ("code", "data", "error", "ok")

    def __init__(self, ok: bool, data: dict[str, Any] | None = None, error: str = "", code: int = 0):
        self.ok = ok
        self.data: dict[str, Any] = {} if data is None else data
        self.error = error
        self.code = code

    def __repr__(self) -> str:
        return f"Reply(ok={self.ok!r}, data={self.data!r}, error={self.error!r}, code={self.code!r})"


class _TransportError(Exception):
    """No HTTP reply: refused, reset, timed out, unresolvable, or not HTTP. The message names the cause."""


class StateManagerClient:
    """POSTs to ``{url}/api/state/task_instance/{id}/{action}`` with the bearer token."""

    def __init__(self, url: str, token: str, task_instance_id: int, timeout: float, retry_seconds: float):
        self._url = f"{url.rstrip('/')}/api/state/task_instance/{task_instance_id}"
        self._token = token
        self._timeout = timeout
        self._retry_seconds = retry_seconds
        self._plain = _plain_http(self._url)  # (host, port, Host header, path), or None: urllib
        self._opener: Any = None

    def post(self, action: str, body: dict[str, Any], *, retry: bool) -> Reply:
        """One call; with ``retry``, connection failures, timeouts, 429 and 5xx are retried with backoff.

        Worst case duration: retry_seconds + timeout. Other 4xx are final: the server understood and refused.
        """
        data = json.dumps(body).encode()
        deadline = time.monotonic() + (self._retry_seconds if retry else 0.0)
        delay = 0.5
        attempt = 0
        code = 0
        while True:
            attempt += 1
            try:
                code, reason, raw = self._send(action, data)
            except _TransportError as exc:
                code, error = 0, str(exc)
            except ValueError as exc:  # a malformed URL or token: retrying cannot help
                log.warning("%s failed, not retried: %s", action, exc)
                return Reply(ok=False, error=f"{type(exc).__name__}: {exc}")
            else:
                if 200 <= code < 300:
                    return Reply(ok=True, data=_json_object(raw, action), code=code)
                error = f"HTTP {code} {reason}: {raw[:300].decode('utf-8', 'replace').strip()}"
                if 300 <= code < 500 and code != 429:
                    log.warning("%s failed, not retried: %s", action, error)
                    return Reply(ok=False, error=error, code=code)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("%s failed after %d attempt(s), giving up: %s", action, attempt, error)
                return Reply(ok=False, error=error, code=code)
            log.warning("%s attempt %d failed (%s); retrying", action, attempt, error)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 8.0)

    def _send(self, action: str, data: bytes) -> tuple[int, str, bytes]:
        """(status, reason, body) of any HTTP reply; _TransportError when none came."""
        if self._plain is None:
            return self._send_urllib(f"{self._url}/{action}", data)
        host, port, host_header, path = self._plain
        head = (
            f"POST {path}/{action} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nAuthorization: Bearer {self._token}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        if not head.isascii() or not _printable(self._token) or not _printable(path + action):
            raise ValueError("the URL or the token holds characters an HTTP request cannot carry")
        try:
            # The host as bytes: as text, Python would import the idna codec (~8 ms) to encode it.
            with socket.create_connection((host.encode(), port), self._timeout) as sock:  # type: ignore[arg-type]
                sock.sendall(head.encode("ascii") + data)
                return _read_reply(sock)
        except OSError as exc:  # refused, reset, timed out (TimeoutError), unresolvable (gaierror)
            raise _TransportError(f"{type(exc).__name__}: {exc}") from None

    def _send_urllib(self, url: str, data: bytes) -> tuple[int, str, bytes]:
        import http.client
        import urllib.error
        import urllib.request

        if self._opener is None:
            self._opener = urllib.request.build_opener(_no_redirect_handler())
        request = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return int(response.status), str(response.reason), bytes(response.read(_MAX_REPLY_BYTES))
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read(300)
            except OSError:
                body = b""
            return exc.code, str(exc.reason), body
        except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout, bad reply
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _TransportError(f"{type(cause).__name__}: {cause}") from None


def _no_redirect_handler() -> Any:
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return NoRedirect


def _printable(text: str) -> bool:
    """Visible ASCII only: no space, no control character (a CR or LF would start another header)."""
    return all("!" <= c <= "~" for c in text)


def _plain_http(url: str) -> tuple[str, int, str, str] | None:
    """(host, port, Host header, path) for a URL this module posts to itself; None for urllib's cases."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "http" or not sep or any(c in rest for c in "@?#"):
        return None
    if os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY"):
        return None  # urllib applies the proxy and no_proxy
    netloc, _, path = rest.partition("/")
    if netloc.startswith("["):  # an IPv6 literal: [::1]:8790
        host, _, after = netloc[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = netloc.partition(":")
    if not host.isascii() or not host or (port_text and not (port_text.isascii() and port_text.isdigit())):
        return None  # let urllib name the problem
    port = int(port_text) if port_text else 80
    if not 0 < port < 65536:
        return None
    return host, port, netloc, "/" + path


def _read_reply(sock: socket.socket) -> tuple[int, str, bytes]:
    """Status, reason and body of the reply on ``sock``: up to its Content-Length, its last chunk, or the close."""
    buf = b""
    header_end = -1
    status, reason = 0, ""
    length: int | None = None
    chunked = False
    while True:
        piece = sock.recv(65536)
        buf += piece
        if len(buf) > _MAX_REPLY_BYTES:
            raise _TransportError(f"ReplyTooLarge: more than {_MAX_REPLY_BYTES} bytes")
        if header_end < 0 and (header_end := buf.find(b"\r\n\r\n")) >= 0:
            status, reason, length, chunked = _parse_head(buf[:header_end])
        if header_end >= 0:
            body = buf[header_end + 4 :]
            if length is not None and len(body) >= length:
                return status, reason, body[:length]
            if chunked and (decoded := _dechunk(body)) is not None:
                return status, reason, decoded
        if not piece:  # closed by the server
            if header_end < 0:
                raise _TransportError(f"BadReply: no HTTP reply head in {buf[:80]!r}")
            if length is not None or chunked:
                raise _TransportError("IncompleteRead: the connection closed inside the reply")
            return status, reason, buf[header_end + 4 :]


def _parse_head(head: bytes) -> tuple[int, str, int | None, bool]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (parts[1].isascii() and parts[1].isdigit()):
        raise _TransportError(f"BadStatusLine: {lines[0][:80]!r}")
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            if not (value.isascii() and value.isdigit()):
                raise _TransportError(f"BadReply: Content-Length {value[:40]!r}")
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", None if chunked else length, chunked


def _dechunk(body: bytes) -> bytes | None:
    """The body of a complete chunked reply; None while its last chunk has not arrived."""
    out = b""
    pos = 0
    while True:
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size_text = body[pos:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _TransportError(f"BadReply: chunk size {size_text[:20]!r}") from None
        if size == 0:
            return out
        start = line_end + 2
        if len(body) < start + size + 2:
            return None
        out += body[start : start + size]
        pos = start + size + 2


def _json_object(raw: bytes, action: str) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("%s: reply is not a JSON object: %r", action, raw[:200])
        return {}
    return data
