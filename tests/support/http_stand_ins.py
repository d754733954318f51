"""Small real HTTP servers on 127.0.0.1 standing in for Slack (a webhook that records what it was sent) and for the
parts of Airflow's REST API the reaper reads (task instances and DAG runs held in dicts). Standard library only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class SlackSink(ThreadingHTTPServer):
    """A Slack incoming webhook: every POST body is kept in ``payloads``; answers 200 "ok" as Slack does."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        sink = self

        class Handler(_Quiet):
            def do_POST(self) -> None:
                sink.payloads.append({"path": self.path, **(self._body() or {})})
                self._send(200, b"ok")

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def texts(self) -> list[str]:
        return [str(p.get("text", "")) for p in self.payloads]


class FakeAirflowApi(ThreadingHTTPServer):
    """``POST /auth/token``, the batch listings of task instances and DAG runs and ``GET`` of one DAG run, from
    ``task_instances`` ({(dag_id, run_id, task_id, map_index): state}) and ``dag_runs`` ({(dag_id, run_id): state}).
    With ``password`` set every other call needs the bearer token it issues."""

    def __init__(self, password: str | None = None, page_limit_cap: int = 2) -> None:
        self.task_instances: dict[tuple[str, str, str, int], str | None] = {}
        self.dag_runs: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str]] = []
        api = self

        class Handler(_Quiet):
            def _authorised(self) -> bool:
                return password is None or self.headers.get("Authorization") == "Bearer token-1"

            def do_POST(self) -> None:
                body = self._body() or {}
                api.requests.append(("POST", self.path))
                if self.path == "/auth/token":
                    ok = body.get("username") == "admin" and body.get("password") == password
                    return self._send(201 if ok else 401, {"access_token": "token-1"} if ok else {"detail": "no"})
                if not self._authorised():
                    return self._send(401, {"detail": "Not authenticated"})
                offset, limit = int(body.get("page_offset", 0)), min(int(body.get("page_limit", 100)), page_limit_cap)
                if self.path == "/api/v2/dags/~/dagRuns/list":
                    runs = [
                        {"dag_id": d, "dag_run_id": r, "state": s}
                        for (d, r), s in sorted(api.dag_runs.items())
                        if d in (body.get("dag_ids") or [d]) and s in (body.get("states") or [s])
                    ]
                    return self._send(200, {"dag_runs": runs[offset : offset + limit], "total_entries": len(runs)})
                if self.path != "/api/v2/dags/~/dagRuns/~/taskInstances/list":
                    return self._send(404, {"detail": "not found"})
                rows = [
                    {"dag_id": d, "dag_run_id": r, "task_id": t, "map_index": m, "state": s}
                    for (d, r, t, m), s in sorted(api.task_instances.items())
                    if d in (body.get("dag_ids") or [d]) and r in (body.get("dag_run_ids") or [r])
                ]
                self._send(200, {"task_instances": rows[offset : offset + limit], "total_entries": len(rows)})

            def do_GET(self) -> None:
                api.requests.append(("GET", self.path))
                if not self._authorised():
                    return self._send(401, {"detail": "Not authenticated"})
                parts = [unquote(p) for p in self.path.split("/")]
                if len(parts) == 7 and parts[1:4] == ["api", "v2", "dags"] and parts[5] == "dagRuns":
                    state = api.dag_runs.get((parts[4], parts[6]))
                    if state is not None:
                        return self._send(200, {"dag_id": parts[4], "dag_run_id": parts[6], "state": state})
                self._send(404, {"detail": "not found"})

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[Any]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
