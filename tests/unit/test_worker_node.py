"""The worker node, run as a real subprocess against a real local HTTP server standing in for the State Manager."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow import worker_node
from jobmon_airflow.worker_node import (
    ArrayElement,
    SetupError,
    array_task_number,
    classify_exit,
    distributor_id_from_env,
    error_message,
    load_array_task,
    worker_exit_code,
    write_array_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t-token-for-tests-7f1c"
TI_ID = 17


@dataclass
class Call:
    action: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


@dataclass
class StateManagerStub:
    """Records every POST; replies from a per-action script (the last reply repeats), default 200 {"status": R}."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, action: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            replies = self.script.get(action)
            if not replies:
                return 200, {"status": "R"}
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def actions(self) -> list[str]:
        return [c.action for c in self.calls]

    def only(self, action: str) -> Call:
        matching = [c for c in self.calls if c.action == action]
        assert len(matching) == 1, f"expected one {action}, got {self.actions()}"
        return matching[0]


@pytest.fixture
def server() -> Iterator[StateManagerStub]:
    stub = StateManagerStub()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            action = self.path.rsplit("/", 1)[-1]
            with stub.lock:
                stub.calls.append(Call(action, self.path, dict(self.headers), body, time.monotonic()))
            code, reply = stub.reply(action)
            data = json.dumps(reply).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{httpd.server_address[1]}/jobmon"
    yield stub
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on which nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/jobmon"


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    record_path: Path
    elapsed: float

    @property
    def record(self) -> dict[str, Any]:
        return json.loads(self.record_path.read_text())


def run_worker(
    tmp_path: Path,
    url: str,
    command: str,
    *,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20,
) -> Run:
    token_file = tmp_path / "ti.token"
    if not token_file.exists():
        token_file.write_text(f"  {TOKEN}\n")
    record = tmp_path / "ti.exit.json"
    child_env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("JOB_ID", "SGE_TASK_ID")}
    child_env.update(env or {})
    argv = [
        sys.executable,
        "-m",
        "jobmon_airflow.worker_node",
        "--task-instance-id",
        str(TI_ID),
        "--state-manager-url",
        url,
        "--token-file",
        str(token_file),
        "--exit-record",
        str(record),
        "--heartbeat-interval",
        "30",
        "--http-timeout",
        "2",
        "--http-retry-seconds",
        "1",
        "--command-b64",
        base64.b64encode(command.encode()).decode(),
        *(extra or []),
    ]
    start = time.monotonic()
    proc = subprocess.run(argv, env=child_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return Run(proc, record, time.monotonic() - start)


# ---------------------------------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.parametrize(
    ("exit_status", "state"),
    [(0, "D"), (1, "E"), (3, "E"), (137, "Z"), (247, "Z"), (-9, "Z"), (198, "F"), (199, "F"), (-15, "E")],
)
def test_classify_exit(exit_status: int, state: str) -> None:
    assert classify_exit(exit_status)[0] == state


def test_classify_exit_messages() -> None:
    assert classify_exit(137)[1] == "Insufficient resources requested (exit 137)"
    assert "SIGTERM" in classify_exit(-15)[1]


def test_worker_exit_code_follows_shell_convention() -> None:
    assert [worker_exit_code(c) for c in (0, 3, -9, -2)] == [0, 3, 137, 130]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"JOB_ID": "4242"}, "4242"),
        ({"JOB_ID": "4242", "SGE_TASK_ID": "7"}, "4242.7"),
        ({"JOB_ID": "4242", "SGE_TASK_ID": "undefined"}, "4242"),
        ({}, None),
    ],
)
def test_distributor_id_from_env(env: dict[str, str], expected: str | None) -> None:
    assert distributor_id_from_env(env) == expected


def test_error_message_keeps_the_end_within_the_limit() -> None:
    tail = "x" * 20_000 + "THE END"
    message = error_message("Insufficient resources requested (exit 137)", tail)
    assert len(message) == worker_node.ERROR_MESSAGE_CHARS
    assert message.startswith("Insufficient resources requested") and message.endswith("THE END")


def test_worker_imports_only_the_standard_library() -> None:
    code = (
        "import sys, jobmon_airflow.worker_node; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('airflow', 'requests', 'sqlalchemy', 'fastapi', 'pydantic') or "
        "(m.startswith('jobmon_airflow.') and m != 'jobmon_airflow.worker_node')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------
# The worker as a process


def test_success_reports_running_then_done(tmp_path: Path, server: StateManagerStub) -> None:
    run = run_worker(tmp_path, server.url, "echo hello", env={"JOB_ID": "4242", "SGE_TASK_ID": "3"})

    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == "hello\n"  # the command's stdout goes to the job's .o file untouched
    assert server.actions() == ["log_running", "log_done"]
    running, done = server.calls
    assert running.path == f"/jobmon/api/state/task_instance/{TI_ID}/log_running"
    assert all(c.headers["Authorization"] == f"Bearer {TOKEN}" for c in server.calls)
    assert running.body["distributor_id"] == "4242.3"
    assert running.body["process_group_id"] > 0
    assert running.body["next_report_increment"] == pytest.approx(30 * 3.1)
    assert running.body["nodename"]
    assert done.body["exit_status"] == 0
    assert set(done.body["usage"]) == {"maxrss_bytes", "wallclock_s", "cpu_s"}
    record = run.record
    assert record["status"] == "D" and record["reported"] is True and record["exit_status"] == 0
    assert record["distributor_id"] == "4242.3" and record["task_instance_id"] == TI_ID
    assert record["started_at"] <= record["finished_at"]
    assert "jobmon-worker:" in run.proc.stderr and TOKEN not in run.proc.stderr


def test_non_zero_exit_reports_error_with_stderr_tail(tmp_path: Path, server: StateManagerStub) -> None:
    run = run_worker(tmp_path, server.url, "echo 'disk quota exceeded in /ihme/x' >&2; exit 3")

    assert run.proc.returncode == 3
    assert server.actions() == ["log_running", "log_error"]
    body = server.only("log_error").body
    assert body["error_state"] == "E" and body["exit_status"] == 3
    assert "disk quota exceeded in /ihme/x" in body["error_message"]
    assert "disk quota exceeded in /ihme/x" in run.proc.stderr  # also passed through to the job's .e file
    assert run.record["status"] == "E" and run.record["reported"] is True


def test_sigkill_is_a_resource_error(tmp_path: Path, server: StateManagerStub) -> None:
    run = run_worker(tmp_path, server.url, "echo 'allocating' >&2; kill -9 $$")

    assert run.proc.returncode == 137
    body = server.only("log_error").body
    assert body["error_state"] == "Z" and body["exit_status"] == -9
    assert body["error_message"].startswith("Insufficient resources requested")
    assert "allocating" in body["error_message"]


def test_kill_self_in_heartbeat_interrupts_the_command(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_report_by"] = [(200, {"status": "R"}), (200, {"status": "K"})]
    run = run_worker(tmp_path, server.url, "sleep 60", extra=["--heartbeat-interval", "0.3"])

    assert run.elapsed < 10
    assert server.actions() == ["log_running", "log_report_by", "log_report_by", "log_error"]
    assert server.calls[1].body == {"next_report_increment": pytest.approx(0.3 * 3.1)}
    body = server.only("log_error").body
    assert body["error_state"] == "F" and body["error_message"].startswith("killed by request (KILL_SELF)")
    assert run.proc.returncode == 130  # sleep died of the SIGINT
    assert run.record["status"] == "F"


def test_kill_self_escalates_to_sigkill_for_the_whole_tree(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_report_by"] = [(200, {"status": "K"})]
    pid_file = tmp_path / "sleep.pid"
    # SIGINT is ignored by bash and by its background child, so only SIGKILL stops them.
    command = f"trap '' INT; sleep 60 & echo $! > {pid_file}; wait"
    run = run_worker(tmp_path, server.url, command, extra=["--heartbeat-interval", "0.3", "--interrupt-timeout", "1"])

    assert run.elapsed < 10
    assert server.only("log_error").body["error_state"] == "F"
    assert run.proc.returncode == 137
    sleep_pid = int(pid_file.read_text())
    assert not _running(sleep_pid), "the command's grandchild survived the kill"


def test_kill_before_start_does_not_run_the_command(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_running"] = [(200, {"status": "K"})]
    marker = tmp_path / "ran"
    run = run_worker(tmp_path, server.url, f"touch {marker}")

    assert not marker.exists()
    assert server.actions() == ["log_running", "log_error"]
    body = server.only("log_error").body
    assert body["error_state"] == "F" and body["error_message"] == "killed before start"
    assert run.record["status"] == "F" and run.record["reported"] is True
    assert run.proc.returncode == worker_node.KILLED_BEFORE_START_EXIT


def test_state_manager_down_command_still_runs_and_record_holds_outcome(tmp_path: Path, closed_port_url: str) -> None:
    marker = tmp_path / "ran"
    run = run_worker(
        tmp_path, closed_port_url, f"touch {marker}; echo boom >&2; exit 5", extra=["--heartbeat-interval", "0.2"]
    )

    assert marker.exists()
    assert run.proc.returncode == 5
    assert run.elapsed < 10  # two retry budgets of 1 s plus start-up, never the command's life
    record = run.record
    assert record["status"] == "E" and record["exit_status"] == 5 and "boom" in record["error_message"]
    assert record["reported"] is False and "log_error" in record["report_error"]
    assert "ConnectionRefusedError" in run.proc.stderr


def test_server_error_is_retried_client_error_is_not(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_running"] = [(503, {}), (200, {"status": "R"})]
    server.script["log_done"] = [(409, {"detail": "illegal transition"})]
    run = run_worker(tmp_path, server.url, "true", extra=["--http-retry-seconds", "5"])

    assert server.actions() == ["log_running", "log_running", "log_done"]
    assert run.proc.returncode == 0
    assert run.record["reported"] is False and "409" in run.record["report_error"]


def test_unauthorized_start_still_runs_the_command(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_running"] = [(401, {"detail": "bad token"})]
    run = run_worker(tmp_path, server.url, "exit 0")

    assert server.actions() == ["log_running", "log_done"]
    assert run.proc.returncode == 0 and run.record["status"] == "D"


def test_token_not_in_argv_nor_in_the_command_environment(tmp_path: Path, server: StateManagerStub) -> None:
    env_dump, argv_dump = tmp_path / "env.txt", tmp_path / "argv.txt"
    # The worker is the command's parent ($PPID): its argv is what `ps` shows on the node.
    run = run_worker(
        tmp_path,
        server.url,
        f"env > {env_dump}; cat /proc/$PPID/cmdline > {argv_dump}",
        env={"LEAKY_TOKEN_VAR": TOKEN, "OTHER": "kept"},
    )

    assert run.proc.returncode == 0, run.proc.stderr
    env_text, argv_text = env_dump.read_text(), argv_dump.read_bytes().decode()
    assert "jobmon_airflow.worker_node" in argv_text and "--token-file" in argv_text
    assert TOKEN not in argv_text
    assert TOKEN not in env_text and "LEAKY_TOKEN_VAR" not in env_text
    assert f"JOBMON_TASK_INSTANCE_ID={TI_ID}" in env_text and "OTHER=kept" in env_text
    assert "LEAKY_TOKEN_VAR holds the token" in run.proc.stderr and TOKEN not in run.proc.stderr


def test_command_string_runs_exactly_as_bash_runs_it(tmp_path: Path, server: StateManagerStub) -> None:
    command = (
        "printf '%s|' \"double 'quoted'\" 'single \"quoted\"' $(echo sub shell) \"$((6 * 7))\"; echo\n"
        "x=1; echo \"x=$x\" ; echo 'a;b' # comment\n"
        'for i in 1 2; do echo "line $i"; done\n'
        'echo "tab:\t" back\\\\slash ünïcødé'
    )
    expected = subprocess.run(["/bin/bash", "-c", command], capture_output=True, text=True, check=True).stdout
    run = run_worker(tmp_path, server.url, command)

    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == expected
    assert "double 'quoted'|single \"quoted\"|sub|shell|42|" in expected


def test_sigterm_to_the_worker_is_passed_to_the_command(tmp_path: Path, server: StateManagerStub) -> None:
    ready = tmp_path / "ready"
    token_file = tmp_path / "ti.token"
    token_file.write_text(TOKEN)
    record = tmp_path / "ti.exit.json"
    argv = [
        sys.executable, "-m", "jobmon_airflow.worker_node", "--task-instance-id", str(TI_ID),
        "--state-manager-url", server.url, "--token-file", str(token_file), "--exit-record", str(record),
        "--http-retry-seconds", "1",
        "--command-b64", base64.b64encode(f"touch {ready}; sleep 60".encode()).decode(),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready.exists)
        proc.send_signal(signal.SIGTERM)  # only the worker, as a `kill <pid>` would
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "received SIGTERM" in stderr
    assert json.loads(record.read_text())["status"] == "E"
    assert server.only("log_error").body["exit_status"] == -15


def test_unreadable_token_file_is_a_setup_failure(tmp_path: Path, server: StateManagerStub) -> None:
    record = tmp_path / "ti.exit.json"
    argv = [
        sys.executable, "-m", "jobmon_airflow.worker_node", "--task-instance-id", str(TI_ID),
        "--state-manager-url", server.url, "--token-file", str(tmp_path / "missing.token"),
        "--exit-record", str(record), "--command-b64", base64.b64encode(b"true").decode(),
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=20)

    assert proc.returncode == 198
    assert server.calls == []  # no token, no report
    data = json.loads(record.read_text())
    assert data["status"] == "F" and "missing.token" in data["error_message"] and data["reported"] is False


def test_bad_arguments_are_a_setup_failure_with_a_record(tmp_path: Path) -> None:
    record = tmp_path / "ti.exit.json"
    argv = [
        sys.executable,
        "-m",
        "jobmon_airflow.worker_node",
        "--task-instance-id",
        "17",
        "--exit-record",
        str(record),
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=20)

    assert proc.returncode == 198
    data = json.loads(record.read_text())
    assert data["status"] == "F" and data["task_instance_id"] == 17
    assert "--state-manager-url" in data["error_message"]


def test_undecodable_command_is_reported_fatal(tmp_path: Path, server: StateManagerStub) -> None:
    token_file = tmp_path / "ti.token"
    token_file.write_text(TOKEN)
    argv = [
        sys.executable, "-m", "jobmon_airflow.worker_node", "--task-instance-id", str(TI_ID),
        "--state-manager-url", server.url, "--token-file", str(token_file),
        "--exit-record", str(tmp_path / "ti.exit.json"), "--command-b64", "not base64!",
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=20)

    assert proc.returncode == 198
    assert server.actions() == ["log_error"]
    assert server.only("log_error").body["error_state"] == "F"


# ---------------------------------------------------------------------------------------------------------------
# Array mode: one array job, one manifest, SGE_TASK_ID picks the element

ARRAY_TI_IDS = (101, 102, 103)


def write_batch(tmp_path: Path, commands: list[str]) -> Path:
    """Token file and manifest of a batch of task instances 101, 102, ...; exit records ti-<id>.exit.json."""
    token_file = tmp_path / "batch.token"
    token_file.write_text(TOKEN)
    manifest = tmp_path / "batch.manifest.json"
    elements = [
        ArrayElement(ti, command, tmp_path / f"ti-{ti}.exit.json")
        for ti, command in zip(ARRAY_TI_IDS, commands, strict=False)
    ]
    write_array_manifest(manifest, token_file, elements)
    return manifest


def run_array_element(
    manifest: Path, url: str | None, task_id: str | None, *, extra: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("SGE_TASK_")}
    env.update(JOB_ID="4242", SGE_TASK_LAST="3")
    if task_id is not None:
        env["SGE_TASK_ID"] = task_id
    argv = [sys.executable, "-m", "jobmon_airflow.worker_node", "--array-manifest", str(manifest)]
    argv += ["--state-manager-url", url] if url else []
    argv += ["--heartbeat-interval", "30", "--http-timeout", "2", "--http-retry-seconds", "1", *(extra or [])]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=20)


def exit_records(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.exit.json")}


def test_array_element_runs_its_own_task_instance(tmp_path: Path, server: StateManagerStub) -> None:
    manifest = write_batch(
        tmp_path, ["echo one", "echo two as $JOBMON_TASK_INSTANCE_ID", f"touch {tmp_path / 'three-ran'}"]
    )
    proc = run_array_element(manifest, server.url, "2")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "two as 102\n"
    assert not (tmp_path / "three-ran").exists()
    assert server.actions() == ["log_running", "log_done"]
    assert all(c.path.startswith("/jobmon/api/state/task_instance/102/") for c in server.calls)
    assert all(c.headers["Authorization"] == f"Bearer {TOKEN}" for c in server.calls)  # the batch's shared token
    assert server.only("log_running").body["distributor_id"] == "4242.2"
    assert list(exit_records(tmp_path)) == ["ti-102.exit.json"]
    record = exit_records(tmp_path)["ti-102.exit.json"]
    assert record["task_instance_id"] == 102 and record["distributor_id"] == "4242.2"
    assert record["status"] == "D" and record["reported"] is True
    assert "array element 2 of 3" in proc.stderr and "ti=102 job=4242.2" in proc.stderr
    assert "wrong manifest" not in proc.stderr and TOKEN not in proc.stderr


def test_array_element_whose_command_fails_reports_its_own_error(tmp_path: Path, server: StateManagerStub) -> None:
    manifest = write_batch(tmp_path, ["true", "true", "echo 'element three failed' >&2; exit 4"])
    proc = run_array_element(manifest, server.url, "3")

    assert proc.returncode == 4
    assert server.actions() == ["log_running", "log_error"]
    error = server.only("log_error")
    assert error.path == "/jobmon/api/state/task_instance/103/log_error"
    assert error.body["error_state"] == "E" and error.body["exit_status"] == 4
    assert "element three failed" in error.body["error_message"]
    records = exit_records(tmp_path)
    assert list(records) == ["ti-103.exit.json"]
    assert records["ti-103.exit.json"]["status"] == "E" and records["ti-103.exit.json"]["exit_status"] == 4
    assert records["ti-103.exit.json"]["distributor_id"] == "4242.3"


@pytest.mark.parametrize("task_id", ["4", "0", "undefined", "2x", None])
def test_array_element_unknown_is_a_setup_failure_without_record(
    tmp_path: Path, server: StateManagerStub, task_id: str | None
) -> None:
    manifest = write_batch(tmp_path, [f"touch {tmp_path / 'ran'}"] * 3)
    proc = run_array_element(manifest, server.url, task_id)

    assert proc.returncode == 198
    assert server.calls == [] and not (tmp_path / "ran").exists()
    assert exit_records(tmp_path) == {}
    assert "SGE_TASK_ID" in proc.stderr and "no exit record can be written" in proc.stderr
    if task_id == "4":
        assert "out of range" in proc.stderr and "has 3 elements" in proc.stderr


@pytest.mark.parametrize("both", [True, False], ids=["both-modes", "no-mode"])
def test_exactly_one_mode_or_setup_failure(tmp_path: Path, server: StateManagerStub, both: bool) -> None:
    manifest = write_batch(tmp_path, [f"touch {tmp_path / 'ran'}"] * 3)
    record = tmp_path / "single.exit.json"
    single = ["--task-instance-id", str(TI_ID), "--exit-record", str(record)]
    if both:
        extra = ["--token-file", str(tmp_path / "batch.token"), "--command-b64", base64.b64encode(b"true").decode()]
        proc = run_array_element(manifest, server.url, "1", extra=single + extra)
    else:
        argv = [sys.executable, "-m", "jobmon_airflow.worker_node", "--state-manager-url", server.url]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=20)

    assert proc.returncode == 198
    assert server.calls == [] and not (tmp_path / "ran").exists()
    if both:
        data = json.loads(record.read_text())  # --exit-record given: the failure is recorded there
        assert data["status"] == "F" and data["task_instance_id"] == TI_ID
        assert "--array-manifest excludes --task-instance-id" in data["error_message"]
    else:
        assert "give --array-manifest, or --task-instance-id" in proc.stderr


def test_array_bad_arguments_are_recorded_in_the_elements_record(tmp_path: Path) -> None:
    manifest = write_batch(tmp_path, ["true"] * 3)
    proc = run_array_element(manifest, None, "3")  # no --state-manager-url

    assert proc.returncode == 198
    records = exit_records(tmp_path)
    assert list(records) == ["ti-103.exit.json"]
    data = records["ti-103.exit.json"]
    assert data["status"] == "F" and data["task_instance_id"] == 103 and "--state-manager-url" in data["error_message"]


def test_array_element_with_unreadable_token_file_records_the_failure(tmp_path: Path, server: StateManagerStub) -> None:
    manifest = write_batch(tmp_path, ["true"] * 3)
    (tmp_path / "batch.token").unlink()
    proc = run_array_element(manifest, server.url, "1")

    assert proc.returncode == 198
    assert server.calls == []
    data = exit_records(tmp_path)["ti-101.exit.json"]
    assert data["status"] == "F" and "batch.token" in data["error_message"]


def test_write_array_manifest_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "batch.manifest.json"
    commands = ["echo 'a b' \"$HOME\"", "printf 'ünïcødé\\n'; exit 3", "multi\nline"]
    elements: list[tuple[int, str, str | os.PathLike[str]]] = [
        ArrayElement(7, commands[0], tmp_path / "ti-7.exit.json"),
        (9, commands[1], str(tmp_path / "ti-9.exit.json")),  # a plain tuple works too
        ArrayElement(8, commands[2], tmp_path / "ti-8.exit.json"),
    ]
    write_array_manifest(path, tmp_path / "batch.token", elements)

    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["token_file"] == str(tmp_path / "batch.token")
    assert [e["task_instance_id"] for e in data["elements"]] == [7, 9, 8]  # order as given, not sorted
    assert [base64.b64decode(e["command_b64"]).decode() for e in data["elements"]] == commands
    assert path.read_text().splitlines()[2].rstrip(",") == json.dumps(data["elements"][1])  # element i: line i + 1
    for number, (ti, command, exit_record) in enumerate(elements, start=1):
        task = load_array_task(str(path), number)
        assert (task.number, task.count, task.task_instance_id) == (number, 3, ti)
        assert base64.b64decode(task.command_b64).decode() == command and task.exit_record == str(exit_record)
        assert task.token_file == str(tmp_path / "batch.token")
    assert [p.name for p in tmp_path.iterdir()] == ["batch.manifest.json"]  # no temp file left behind

    write_array_manifest(path, tmp_path / "batch.token", elements[:1])  # rewriting replaces the file
    assert load_array_task(str(path), 1).count == 1


@pytest.mark.parametrize(
    ("token_file", "elements", "complaint"),
    [
        ("relative.token", [(1, "true", "/abs/ti-1.exit.json")], "token_file must be an absolute path"),
        ("/abs/b.token", [(1, "true", "ti-1.exit.json")], "element 1: exit_record must be an absolute path"),
        (
            "/abs/b.token",
            [(1, "true", "/a/1"), (1, "true", "/a/2")],
            "element 2: task_instance_id must be a unique int",
        ),
        ("/abs/b.token", [("1", "true", "/a/1")], "element 1: task_instance_id must be a unique int"),
        ("/abs/b.token", [], "at least one element"),
    ],
)
def test_write_array_manifest_refuses_bad_input(
    tmp_path: Path, token_file: str, elements: list[tuple[Any, str, str]], complaint: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        write_array_manifest(tmp_path / "m.json", token_file, elements)
    assert not (tmp_path / "m.json").exists()


def test_large_manifest_keeps_only_its_own_element(tmp_path: Path) -> None:
    path = tmp_path / "big.manifest.json"
    elements = [(1000 + i, f"run_task --location {i}", f"/logs/ti-{1000 + i}.exit.json") for i in range(10_000)]
    write_array_manifest(path, "/logs/.tokens/b.token", elements)

    task = load_array_task(str(path), 9_999)
    assert task.task_instance_id == 10_998 and base64.b64decode(task.command_b64) == b"run_task --location 9998"
    with pytest.raises(SetupError, match=r"out of range: .* has 10000 elements"):
        load_array_task(str(path), 10_001)


def test_malformed_manifest_never_yields_another_element(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    good = {"command_b64": "dHJ1ZQ==", "exit_record": "/x"}
    elements = [{"task_instance_id": 1, **good}, {"id": 2, **good}, {"task_instance_id": 3, **good}]
    path.write_text(json.dumps({"version": 1, "token_file": "/t", "elements": elements}))

    assert load_array_task(str(path), 1).task_instance_id == 1
    for number in (2, 3):  # element 2 lacks its id; element 3 must not be mistaken for it
        with pytest.raises(SetupError, match="has no 'task_instance_id'"):
            load_array_task(str(path), number)
    path.write_text(json.dumps({"version": 2, "token_file": "/t", "elements": elements}))
    with pytest.raises(SetupError, match="version 2, this worker reads 1"):
        load_array_task(str(path), 1)
    path.write_text("{not json")
    with pytest.raises(SetupError, match="cannot read array manifest"):
        load_array_task(str(path), 1)


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"SGE_TASK_ID": "1"}, 1), ({"SGE_TASK_ID": " 12 "}, 12), ({"SGE_TASK_ID": "1_0"}, None), ({}, None)],
)
def test_array_task_number(env: dict[str, str], expected: int | None) -> None:
    if expected is None:
        with pytest.raises(SetupError, match="SGE_TASK_ID"):
            array_task_number(env)
    else:
        assert array_task_number(env) == expected


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a container's pid 1 may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
