"""Set-up failures of the worker node: bad arguments, unreadable token file, undecodable command."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobmon_airflow.worker_node import cli
from jobmon_airflow.worker_node.outcome import SetupError
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


JOB_ARGV = [
    "--task-instance-id", "17", "--state-manager-url", "http://sm:8790/jobmon", "--token-file", "/l/t",
    "--exit-record", "/l/ti-17.exit.json", "--heartbeat-interval", "90", "--http-retry-seconds", "30",
    "--command-b64", "ZWNobyBoaQ==",
]  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        JOB_ARGV,
        [*JOB_ARGV, "--running-report-delay", "0", "--interrupt-timeout=2.5", "--http-timeout", "3"],
        [
            "--array-manifest",
            "/l/b.manifest.json",
            "--state-manager-url=http://sm/jobmon",
            "--heartbeat-interval",
            "1e1",
        ],
        [*JOB_ARGV, "--task-instance-id", "18"],  # the last one wins, as in argparse
    ],
)
def test_the_quick_parse_of_a_job_s_argv_is_argparse_s(argv: list[str]) -> None:
    quick = cli._parse_quickly(argv)
    assert quick is not None
    assert vars(quick) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        [*JOB_ARGV, "--help"],
        [*JOB_ARGV, "--task-inst", "3"],  # an abbreviation: argparse's to accept
        [*JOB_ARGV, "--heartbeat-interval", "-5"],  # a value like an option
        [*JOB_ARGV, "--heartbeat-interval", "0"],
        [*JOB_ARGV, "--running-report-delay", "nan"],
        [*JOB_ARGV, "--task-instance-id"],  # no value
        JOB_ARGV[:2],  # no --state-manager-url
        [*JOB_ARGV, "stray"],
    ],
)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert cli._parse_quickly(argv) is None


def test_argparse_names_what_is_wrong() -> None:
    with pytest.raises(SetupError, match="--running-report-delay: must be >= 0 and finite, got nan"):
        cli.parse_args([*JOB_ARGV, "--running-report-delay", "nan"])
    with pytest.raises(SetupError, match="unrecognized arguments: stray"):
        cli.parse_args([*JOB_ARGV, "stray"])
