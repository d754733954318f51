"""Set-up failures of the worker node: bad arguments, unreadable token file, undecodable command."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from tests.unit.worker_node.helpers import ROOT, TI_ID, TOKEN, StateManagerStub


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
