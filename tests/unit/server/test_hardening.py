"""The State Manager under late, forged, malformed and oversized requests (issue "Reliability and security").

Each test names the defect it pins: a late report after triage (3), heartbeat increments (8), bad input (9), the
body cap (10), the job id (11), revoked tokens (14).
"""

from __future__ import annotations

import asyncio
import json
import math
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from jobmon_airflow import db
from jobmon_airflow.server.app import create_app, create_standalone_app, start_in_thread
from jobmon_airflow.service import Services
from jobmon_airflow.service.core import utcnow
from tests.unit.server.helpers import ERROR_LOG, auth, make_instances, report_by, rows

BASE = "/jobmon/api/state/task_instance"
RUNNING = {"nodename": "node1", "process_group_id": 42, "next_report_increment": 279}
CAP = 256 * 1024


@dataclass
class World:
    url: str
    svc: Services
    client: TestClient


@pytest.fixture
def world(tmp_path: Path) -> World:
    url = f"sqlite:///{tmp_path / 'jobmon.sqlite'}"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    return World(url, svc, TestClient(create_standalone_app(url), raise_server_exceptions=False))


def post(world: World, ti: int, action: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return world.client.post(
        f"{BASE}/{ti}/{action}", content=content, headers={"Content-Type": "application/json", **(headers or {})}
    )


async def concurrently(app: Any, *requests: tuple[str, Any, dict[str, str]]) -> list[httpx.Response]:
    """POST several requests at once (they share one heartbeat batch)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await asyncio.gather(
            *(client.post(path, content=json.dumps(body), headers=h) for path, body, h in requests)
        )


# -- 3: a worker's late report after triage is recorded


def test_late_done_after_triage_is_recorded_over_http(world: World) -> None:
    late_done, late_error = make_instances(world.svc, ["T", "T"])
    done = post(world, late_done, "log_done", {"nodename": "n", "exit_status": 0}, auth(late_done))
    assert (done.status_code, done.json()) == (200, {"status": "D"})
    error = {"error_state": "E", "exit_status": 1, "error_message": "late"}
    answer = post(world, late_error, "log_error", error, auth(late_error))
    assert (answer.status_code, answer.json()) == (200, {"status": "E"})
    assert world.svc.queries.error_logs(late_error)[-1] == "late"


# -- 8: a refused heartbeat moves no deadline; each caller's own increment


def test_forged_heartbeats_in_a_batch_move_no_deadline(world: World) -> None:
    """Observed: a forged request in the batch extended another instance's deadline by 24 h."""
    from jobmon_airflow.server.state import HeartbeatCoalescer
    from jobmon_airflow.service import Unauthorized

    a, b, c = make_instances(world.svc, ["R", "R", "R"])
    before_c = rows(world.svc)[c]
    coalescer = HeartbeatCoalescer(world.svc.reports, window=0.2)

    async def beats() -> list[str | BaseException]:
        return await asyncio.gather(  # type: ignore[return-value]
            coalescer.report(a, f"token-{a}", 100),
            coalescer.report(a, f"token-{b}", 86_400),  # forged, on a
            coalescer.report(b, f"token-{b}", 200),
            coalescer.report(b, f"token-{b}", 150),  # b's own two: the larger one counts
            coalescer.report(c, f"token-{a}", 86_400),  # forged, on c: c gets no heartbeat at all
            return_exceptions=True,
        )

    start = utcnow()
    answers = asyncio.run(beats())
    end = utcnow()
    assert answers[0] == answers[2] == answers[3] == "R"
    assert isinstance(answers[1], Unauthorized) and isinstance(answers[4], Unauthorized)
    for ti, increment in ((a, 100), (b, 200)):
        assert (
            start + timedelta(seconds=increment - 1)
            <= report_by(world.svc, ti)
            <= end + timedelta(seconds=increment + 1)
        ), ti
    assert rows(world.svc)[c] == before_c


def test_heartbeats_of_one_interval_are_one_update(world: World) -> None:
    """Set-based: one UPDATE per distinct increment, whatever the batch size (workers share one interval)."""
    ids = make_instances(world.svc, ["R"] * 5)
    (mount,) = world.client.app.routes  # type: ignore[attr-defined]  # the standalone app mounts the one Airflow mounts
    mount.app.state.heartbeats.window = 0.5  # however slow the machine, the five share one batch
    statements: list[str] = []
    sa.event.listen(world.svc.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    increments = [279, 279, 279, 90, 279]
    responses = asyncio.run(
        concurrently(
            world.client.app,
            *(
                (f"{BASE}/{ti}/log_report_by", {"next_report_increment": inc}, auth(ti))
                for ti, inc in zip(ids, increments, strict=True)
            ),
        )
    )
    assert [r.json() for r in responses] == [{"status": "R"}] * 5
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE TASK_INSTANCE SET REPORT_BY_DATE")]
    assert len(updates) == 2, updates


# -- 9: bad input is a 4xx that echoes nothing, and never touches the other callers of a batch

NAN_BODIES = {
    "log_running": '{"nodename": "n", "next_report_increment": NaN}',
    "log_report_by": '{"next_report_increment": Infinity}',
    "log_done": '{"exit_status": 0, "usage": {"wallclock_s": NaN, "cpu_s": -Infinity}}',
    "log_error": '{"error_state": "E", "exit_status": NaN}',
}


@pytest.mark.parametrize("action", sorted(NAN_BODIES))
@pytest.mark.parametrize("token", ["own", "bogus"])
def test_nan_and_infinity_are_422_not_500(world: World, action: str, token: str) -> None:
    (ti,) = make_instances(world.svc, ["R"])
    before = rows(world.svc)
    headers = auth(ti) if token == "own" else {"Authorization": "Bearer bogus"}
    response = post(world, ti, action, NAN_BODIES[action], headers)
    assert response.status_code in ((422,) if token == "own" else (403, 422)), response.text
    assert "NaN" not in response.text and "Infinity" not in response.text
    assert rows(world.svc) == before


@pytest.mark.parametrize("action", ["log_running", "log_report_by", "log_done", "log_error"])
@pytest.mark.parametrize("ti", [0, -1, 2**63, 2**64, 10**40, "abc"])
def test_ids_out_of_range_are_422(world: World, action: str, ti: Any) -> None:
    response = post(world, ti, action, {"next_report_increment": 1}, {"Authorization": "Bearer t"})
    assert response.status_code == 422, response.text
    assert "task_instance_id" in response.text


BAD_FIELDS = [
    ("log_running", {**RUNNING, "process_group_id": 2**63}, "process_group_id"),
    ("log_running", {**RUNNING, "process_group_id": -1}, "process_group_id"),
    ("log_running", {**RUNNING, "nodename": "n" * 151}, "nodename"),
    ("log_running", {**RUNNING, "distributor_id": "x" * 33}, "distributor_id"),
    ("log_running", {**RUNNING, "next_report_increment": 1e300}, "next_report_increment"),
    ("log_report_by", {"next_report_increment": 0}, "next_report_increment"),
    ("log_done", {"exit_status": 2**63}, "exit_status"),
    ("log_done", {"exit_status": 256}, "exit_status"),
    ("log_done", {"usage": {"maxrss_bytes": 2**64}}, "maxrss_bytes"),
    ("log_done", {"usage": {"maxrss_bytes": -1}}, "maxrss_bytes"),
    ("log_done", {"usage": {"wallclock_s": 1e12}}, "wallclock_s"),
    ("log_done", {"usage": {"cpu_s": -0.5}}, "cpu_s"),
    ("log_error", {"error_state": "E", "exit_status": -256}, "exit_status"),
    ("log_error", {"error_state": "D"}, "error_state"),
    ("log_error", {"error_state": "E\n"}, "error_state"),
    ("log_error", {"error_state": "E", "error_message": "x" * 20_001}, "error_message"),
    ("log_error", {"error_state": "E", "error_message": "\ud800"}, "error_message"),
]


@pytest.mark.parametrize(("action", "body", "field"), BAD_FIELDS)
def test_fields_out_of_range_are_422_naming_the_field(world: World, action: str, body: Any, field: str) -> None:
    (ti,) = make_instances(world.svc, ["R"])
    before = rows(world.svc)
    response = post(world, ti, action, body, auth(ti))
    assert response.status_code == 422, response.text
    assert field in response.text and "input" not in response.json()["detail"][0]
    assert rows(world.svc) == before


def test_validation_errors_do_not_echo_the_input(world: World) -> None:
    (ti,) = make_instances(world.svc, ["R"])
    secret = "s3cr3t-" + "y" * 200
    for action, body in (("log_running", {**RUNNING, "nodename": secret}), ("log_report_by", f'{{"x": "{secret}"')):
        response = post(world, ti, action, body, auth(ti))
        assert response.status_code == 422 and secret not in response.text, response.text


def test_a_bad_heartbeat_does_not_fail_its_batch(world: World) -> None:
    """Observed: an id ≥ 2^63 overflowed SQLite and failed the whole batch, real workers got 500 too."""
    (ti,) = make_instances(world.svc, ["R"])
    good = (f"{BASE}/{ti}/log_report_by", {"next_report_increment": 279}, auth(ti))
    bad = (f"{BASE}/{2**63}/log_report_by", {"next_report_increment": 279}, {"Authorization": "Bearer x"})
    nan = (f"{BASE}/{ti}/log_report_by", {"next_report_increment": math.nan}, auth(ti))
    answers = asyncio.run(concurrently(world.client.app, good, bad, nan, good))
    assert [r.status_code for r in answers] == [200, 422, 422, 200]
    assert answers[0].json() == answers[3].json() == {"status": "R"}


def test_a_batch_failing_on_one_instance_answers_the_others() -> None:
    """Whatever one instance's write trips on (not foreseen by validation) is its own error only."""
    from jobmon_airflow.server.state import HeartbeatCoalescer

    class Stub:
        def authorized(self, tokens: dict[int, list[str]]) -> dict[int, set[str]]:
            return {ti: set(presented) for ti, presented in tokens.items()}

        def log_report_by_many(self, increments: dict[int, float]) -> dict[int, str]:
            if 13 in increments:
                raise ValueError("instance 13 cannot be written")
            return dict.fromkeys(increments, "R")

    coalescer = HeartbeatCoalescer(Stub(), window=0.1)  # type: ignore[arg-type]

    async def beats() -> list[str | BaseException]:
        return await asyncio.gather(*(coalescer.report(i, "t", 90) for i in (12, 13, 14)), return_exceptions=True)

    first, poisoned, last = asyncio.run(beats())
    assert (first, last) == ("R", "R")
    assert isinstance(poisoned, ValueError)


# -- 10: request bodies are capped, and refused before they are read


def test_a_declared_content_length_over_the_cap_is_413_before_reading() -> None:
    from jobmon_airflow.server.limits import BodyLimit

    reads = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be called")

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"209715200")]}
    asyncio.run(BodyLimit(app, max_bytes=CAP)(scope, receive, send))
    assert sent[0]["status"] == 413 and reads == 0


def test_a_chunked_body_over_the_cap_is_413_and_read_no_further(world: World) -> None:
    """A generator body (no Content-Length): the app stops reading it just past the cap."""
    app = create_app(world.url)
    consumed = 0

    def body() -> Iterator[bytes]:
        nonlocal consumed
        for _ in range(200 * 16):  # 200 MB in 64 KiB chunks
            consumed += 65536
            yield b"x" * 65536

    sent: list[dict[str, Any]] = []
    chunks = body()

    async def receive() -> dict[str, Any]:
        chunk = next(chunks, b"")
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

    async def send(message: Any) -> None:
        sent.append(message)

    for action in ("log_done", "log_report_by"):
        consumed, sent[:] = 0, []
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": f"/api/state/task_instance/1/{action}", "raw_path": b"", "root_path": "", "query_string": b"",
            "headers": [(b"authorization", b"Bearer t"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 413, (action, sent)
        assert (b"connection", b"close") in sent[0]["headers"]
        assert consumed <= CAP + 65536, consumed


def _raw_upload(port: int, path: str, declared: int | None, offered: int) -> tuple[int | None, int]:
    """POST ``offered`` bytes (chunked, or with a declared Content-Length) over a raw socket, stopping as soon as
    the server answers; (status or None, body bytes the client got rid of)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {declared}\r\n" if declared is not None else "Transfer-Encoding: chunked\r\n"
    chunk = b"x" * 65536
    framed = chunk if declared is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent, pending, reply = 0, b"", b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall((head + "\r\n").encode())
        sock.setblocking(False)
        while True:
            readable, writable, _ = select.select([sock], [sock] if sent < offered or pending else [], [], 30)
            if not readable and not writable:
                break  # neither: the server stopped reading and did not answer
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                reply += data
                if not data or b"\r\n\r\n" in reply:
                    break
                continue
            if not pending:
                pending, sent = framed, sent + len(chunk)
            try:
                pending = pending[sock.send(pending) :]
            except (BrokenPipeError, ConnectionResetError):
                break
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
    return status, sent


def test_oversized_bodies_over_http_are_refused_unread(world: World) -> None:
    """A real server: 200 MB without a token used to be read whole (the process grew by ~550 MB) before the 401."""
    from tests.conftest import free_port

    port = free_port()
    server = start_in_thread(port, world.url)
    try:
        path = f"{BASE}/1/log_done"
        status, sent = _raw_upload(port, path, declared=200 * 2**20, offered=0)
        assert (status, sent) == (413, 0)
        status, sent = _raw_upload(port, path, declared=None, offered=200 * 2**20)
        assert status == 413
        assert sent < 16 * 2**20, f"the client sent {sent} bytes before the server refused"
    finally:
        server.should_exit = True


def test_the_largest_legitimate_body_fits_under_the_cap(world: World) -> None:
    """log_error at its limits, JSON-escaped by the worker (12 bytes per astral character): under the cap."""
    (ti,) = make_instances(world.svc, ["R"])
    body = {
        "error_state": "E",
        "exit_status": -255,
        "error_message": "\U0001f600" * 20_000,
        "nodename": "\U0001f600" * 150,
        "usage": {"maxrss_bytes": 2**62, "wallclock_s": 1.0e8, "cpu_s": 1.0e8},
    }
    raw = json.dumps(body)
    assert CAP * 0.9 < len(raw) < CAP
    response = post(world, ti, "log_error", raw, auth(ti))
    assert (response.status_code, response.json()) == (200, {"status": "E"})
    too_big = post(world, ti, "log_error", raw + " " * (CAP - len(raw) + 1), auth(ti))
    assert too_big.status_code == 413


def test_airflow_app_caps_bodies_too(world: World) -> None:
    client = TestClient(create_app(world.url))
    response = client.post("/api/state/task_instance/1/log_done", content=b"x" * (CAP + 1))
    assert response.status_code == 413


# -- 11: the job id recorded at submission is authoritative


def test_worker_cannot_rewrite_its_job_id(world: World) -> None:
    (ti,) = make_instances(world.svc, ["O"])
    response = post(world, ti, "log_running", {**RUNNING, "distributor_id": "4242"}, auth(ti))
    assert (response.status_code, response.json()) == (200, {"status": "R"})
    assert world.svc.queries.task_instance(ti).distributor_id == f"job-{ti}"
    (logged,) = world.svc.queries.error_logs(ti)
    assert "4242" in logged


# -- 14: a token is revoked when its instance ends; a repeated final report still gets its answer


@pytest.mark.parametrize("status", ["D", "E", "Z", "U", "F", "X"])
def test_heartbeat_of_an_ended_instance_is_403_revoked(world: World, status: str) -> None:
    (ti,) = make_instances(world.svc, [status])
    before = rows(world.svc), rows(world.svc, ERROR_LOG)
    response = post(world, ti, "log_report_by", {"next_report_increment": 279}, auth(ti))
    assert (response.status_code, response.json()) == (403, {"detail": "token revoked: task instance ended"})
    assert (rows(world.svc), rows(world.svc, ERROR_LOG)) == before


def test_repeated_final_reports_are_answered_idempotently(world: World) -> None:
    done, error = make_instances(world.svc, ["R", "R"])
    for _ in range(2):
        answer = post(world, done, "log_done", {"nodename": "n"}, auth(done))
        assert (answer.status_code, answer.json()) == (200, {"status": "D"})
        answer = post(world, error, "log_error", {"error_state": "Z", "exit_status": 137}, auth(error))
        assert (answer.status_code, answer.json()) == (200, {"status": "Z"})
    assert post(world, done, "log_report_by", {"next_report_increment": 9}, auth(done)).status_code == 403
    live = make_instances(world.svc, ["K"], run_id="r2")[0]  # killed, not ended: the heartbeat answers K
    answer = post(world, live, "log_report_by", {"next_report_increment": 9}, auth(live))
    assert (answer.status_code, answer.json()) == (200, {"status": "K"})
