"""The worker's State Manager client: its own plain HTTP/1.1 against servers that reply in every legal way."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from jobmon_airflow.worker_node.client import StateManagerClient, _plain_http
from jobmon_airflow.worker_node.node import read_token
from jobmon_airflow.worker_node.outcome import SetupError
from tests.unit.worker_node.helpers import StateManagerStub


class RawServer:
    """Answers each connection with the next canned reply (bytes, sent in pieces), recording each request."""

    def __init__(self, replies: list[list[bytes]]):
        self.replies = replies
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/jobmon"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        for pieces in self.replies:
            conn, _ = self.sock.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                sizes = [h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
                length = int(sizes[0])
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                for piece in pieces:
                    conn.sendall(piece)


def client(url: str, retry: float = 0.0) -> StateManagerClient:
    return StateManagerClient(url, "tok-123", 17, timeout=5, retry_seconds=retry)


def test_request_is_a_plain_post_with_the_bearer_token() -> None:
    server = RawServer([[b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status": "R"}']])
    reply = client(server.url).post("log_running", {"nodename": "n1"}, retry=False)

    assert (reply.ok, reply.data, reply.code) == (True, {"status": "R"}, 200)
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /jobmon/api/state/task_instance/17/log_running HTTP/1.1"
    assert "Authorization: Bearer tok-123" in lines and "Content-Type: application/json" in lines
    assert json.loads(body) == {"nodename": "n1"}


@pytest.mark.parametrize(
    "pieces",
    [
        [b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n", b"\r\n", b'{"status": ', b'"K"}'],  # split anywhere
        [b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"sta\r\n', b'a\r\ntus": "K"}\r\n0\r\n\r\n'],
        [b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"status": "K"}'],  # ends at the close
    ],
    ids=["content-length", "chunked", "until-close"],
)
def test_every_way_of_delimiting_a_reply(pieces: list[bytes]) -> None:
    server = RawServer([pieces])
    reply = client(server.url).post("log_report_by", {}, retry=False)
    assert (reply.ok, reply.data) == (True, {"status": "K"})


def test_a_redirect_is_not_followed() -> None:
    server = RawServer([[b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://evil/\r\nContent-Length: 0\r\n\r\n"]])
    reply = client(server.url, retry=5).post("log_done", {}, retry=True)
    assert (reply.ok, reply.code) == (False, 307) and len(server.requests) == 1


def test_garbage_and_a_cut_reply_are_retried_then_reported() -> None:
    server = RawServer(
        [
            [b"SSH-2.0-OpenSSH\r\n\r\n"],
            [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"],
            [b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status": "D"}'],
        ]
    )
    reply = client(server.url, retry=10).post("log_done", {}, retry=True)
    assert (reply.ok, reply.data) == (True, {"status": "D"}) and len(server.requests) == 3

    server = RawServer([[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"]])
    reply = client(server.url).post("log_done", {}, retry=False)
    assert not reply.ok and reply.error.startswith("IncompleteRead")


def test_against_the_stand_in_state_manager(server: StateManagerStub) -> None:
    """Python's own HTTP server (HTTP/1.0 replies, closed after each) as in the node tests."""
    server.script["log_error"] = [(503, {}), (200, {"status": "E"})]
    reply = client(server.url, retry=5).post("log_error", {"error_state": "E"}, retry=True)
    assert (reply.ok, reply.data) == (True, {"status": "E"})
    assert server.actions() == ["log_error", "log_error"]


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("http://sm.example:8790/jobmon", ("sm.example", 8790, "sm.example:8790", "/jobmon")),
        ("http://10.0.0.5/jobmon/", ("10.0.0.5", 80, "10.0.0.5", "/jobmon/")),
        ("http://[::1]:8790/x", ("::1", 8790, "[::1]:8790", "/x")),
        ("https://sm.example/jobmon", None),  # TLS: urllib
        ("http://user:pw@sm.example/jobmon", None),
        ("http://sm.example/jobmon?x=1", None),
        ("http://sm.example:99999/jobmon", None),
        ("http://sm.example:x/jobmon", None),
        ("sm.example/jobmon", None),
    ],
)
def test_which_urls_the_client_posts_to_itself(url: str, plain: object, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert _plain_http(url) == plain


def test_a_proxy_variable_leaves_the_request_to_urllib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    assert _plain_http("http://sm.example:8790/jobmon") is None


def test_https_goes_through_urllib(monkeypatch: pytest.MonkeyPatch, closed_port_url: str) -> None:
    url = closed_port_url.replace("http://", "https://")
    reply = client(url).post("log_done", {}, retry=False)
    assert not reply.ok and "ConnectionRefusedError" in reply.error


def test_a_token_that_could_split_the_request_is_a_setup_error(tmp_path: Path) -> None:
    path = tmp_path / "t.token"
    path.write_text("abc\r\nX-Injected: 1\n")
    with pytest.raises(SetupError, match="characters a bearer token cannot have"):
        read_token(str(path))
    path.write_text("  abc-DEF_123.~+/=  \n")
    assert read_token(str(path)) == "abc-DEF_123.~+/="
