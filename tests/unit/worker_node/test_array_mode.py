"""Array mode: one array job, one manifest, SGE_TASK_ID picks the element."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.worker_node.helpers import (
    ROOT,
    TI_ID,
    TOKEN,
    StateManagerStub,
    exit_records,
    run_array_element,
    write_batch,
)


def test_array_element_runs_its_own_task_instance(tmp_path: Path, server: StateManagerStub) -> None:
    manifest = write_batch(
        tmp_path, ["echo one", "echo two as $JOBMON_TASK_INSTANCE_ID", f"touch {tmp_path / 'three-ran'}"]
    )
    proc = run_array_element(manifest, server.url, "2")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "two as 102\n"
    assert not (tmp_path / "three-ran").exists()
    assert server.actions() == ["log_ran"]
    assert all(c.path.startswith("/jobmon/api/state/task_instance/102/") for c in server.calls)
    assert all(c.headers["Authorization"] == f"Bearer {TOKEN}" for c in server.calls)  # the batch's shared token
    assert server.only("log_ran").body["distributor_id"] == "4242.2"
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
    assert server.actions() == ["log_ran"]
    error = server.only("log_ran")
    assert error.path == "/jobmon/api/state/task_instance/103/log_ran"
    assert error.body["status"] == "E" and error.body["exit_status"] == 4
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
