"""One task instance's run, as a real subprocess against a stand-in State Manager: reports, kills, signals."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jobmon_airflow import worker_node
from jobmon_airflow.exit_codes import KILLED_BEFORE_START_EXIT
from jobmon_airflow.records import ExitRecord
from tests.unit.worker_node.helpers import ROOT, TI_ID, TOKEN, StateManagerStub, run_worker, running, wait_for


def test_short_command_sends_one_report_carrying_running_and_done(tmp_path: Path, server: StateManagerStub) -> None:
    run = run_worker(tmp_path, server.url, "echo hello", env={"JOB_ID": "4242", "SGE_TASK_ID": "3"})

    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == "hello\n"  # the command's stdout goes to the job's .o file untouched
    assert server.actions() == ["log_ran"]  # one HTTP request for the whole run
    (ran,) = server.calls
    assert ran.path == f"/jobmon/api/state/task_instance/{TI_ID}/log_ran"
    assert ran.headers["Authorization"] == f"Bearer {TOKEN}"
    assert ran.body["distributor_id"] == "4242.3" and ran.body["process_group_id"] > 0 and ran.body["nodename"]
    assert ran.body["next_report_increment"] == pytest.approx(30 * 3.1)
    assert (ran.body["status"], ran.body["exit_status"], ran.body["error_message"]) == ("D", 0, "")
    assert set(ran.body["usage"]) == {"maxrss_bytes", "wallclock_s", "cpu_s"}
    record = run.record
    assert record["status"] == "D" and record["reported"] is True and record["exit_status"] == 0
    assert "report_error" not in record


def test_running_report_before_the_start_when_asked(tmp_path: Path, server: StateManagerStub) -> None:
    run = run_worker(
        tmp_path,
        server.url,
        "echo hello",
        env={"JOB_ID": "4242", "SGE_TASK_ID": "3"},
        extra=["--running-report-delay", "0"],
    )

    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == "hello\n"
    assert server.actions() == ["log_running", "log_done"]
    running_call, done = server.calls
    assert running_call.path == f"/jobmon/api/state/task_instance/{TI_ID}/log_running"
    assert all(c.headers["Authorization"] == f"Bearer {TOKEN}" for c in server.calls)
    assert running_call.body["distributor_id"] == "4242.3"
    assert running_call.body["process_group_id"] > 0
    assert running_call.body["next_report_increment"] == pytest.approx(30 * 3.1)
    assert running_call.body["nodename"]
    assert done.body["exit_status"] == 0
    assert set(done.body["usage"]) == {"maxrss_bytes", "wallclock_s", "cpu_s"}
    record = run.record
    assert record["status"] == "D" and record["reported"] is True and record["exit_status"] == 0
    assert record["distributor_id"] == "4242.3" and record["task_instance_id"] == TI_ID
    assert record["started_at"] <= record["finished_at"]
    assert "jobmon-worker:" in run.proc.stderr and TOKEN not in run.proc.stderr


def test_exit_record_is_a_private_exit_record(tmp_path: Path, server: StateManagerStub) -> None:
    run = run_worker(tmp_path, server.url, "echo 'went wrong' >&2; exit 3")

    assert stat.S_IMODE(run.record_path.stat().st_mode) == 0o600
    record = ExitRecord.from_json(run.record_path.read_text(), task_instance_id=TI_ID)
    assert (record.status, record.exit_status, record.reported, record.report_error) == ("E", 3, True, None)
    assert "went wrong" in record.error_message
    assert record.usage.maxrss_bytes and record.usage.wallclock_s is not None and record.usage.cpu_s is not None
    assert list(json.loads(run.record_path.read_text())) == [
        "task_instance_id", "distributor_id", "status", "exit_status", "error_message", "nodename", "usage",
        "started_at", "finished_at", "reported",
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_non_zero_exit_reports_error_with_stderr_tail(tmp_path: Path, server: StateManagerStub) -> None:
    run = run_worker(tmp_path, server.url, "echo 'disk quota exceeded in /ihme/x' >&2; exit 3")

    assert run.proc.returncode == 3
    assert server.actions() == ["log_ran"]
    body = server.only("log_ran").body
    assert body["status"] == "E" and body["exit_status"] == 3 and "error_state" not in body
    assert "disk quota exceeded in /ihme/x" in body["error_message"]
    assert "disk quota exceeded in /ihme/x" in run.proc.stderr  # also passed through to the job's .e file
    assert run.record["status"] == "E" and run.record["reported"] is True


def test_sigkill_is_a_resource_error(tmp_path: Path, server: StateManagerStub) -> None:
    run = run_worker(tmp_path, server.url, "echo 'allocating' >&2; kill -9 $$")

    assert run.proc.returncode == 137
    body = server.only("log_ran").body
    assert body["status"] == "Z" and body["exit_status"] == -9
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
    assert not running(sleep_pid), "the command's grandchild survived the kill"


def test_kill_requested_at_the_running_report_interrupts_the_command(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_running"] = [(200, {"status": "K"})]
    marker = tmp_path / "finished"
    run = run_worker(tmp_path, server.url, f"sleep 60; touch {marker}", extra=["--running-report-delay", "0.3"])

    assert run.elapsed < 10 and not marker.exists()
    assert server.actions() == ["log_running", "log_error"]
    body = server.only("log_error").body
    assert body["error_state"] == "F" and body["error_message"].startswith("killed by request (KILL_SELF)")
    assert run.proc.returncode == 130  # sleep died of the SIGINT
    assert run.record["status"] == "F" and run.record["reported"] is True


def test_kill_before_start_does_not_run_the_command(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_running"] = [(200, {"status": "K"})]
    marker = tmp_path / "ran"
    run = run_worker(tmp_path, server.url, f"touch {marker}", extra=["--running-report-delay", "0"])

    assert not marker.exists()
    assert server.actions() == ["log_running", "log_error"]
    body = server.only("log_error").body
    assert body["error_state"] == "F" and body["error_message"] == "killed before start"
    assert run.record["status"] == "F" and run.record["reported"] is True
    assert run.proc.returncode == KILLED_BEFORE_START_EXIT


def test_state_manager_down_short_command_record_holds_outcome(tmp_path: Path, closed_port_url: str) -> None:
    marker = tmp_path / "ran"
    run = run_worker(tmp_path, closed_port_url, f"touch {marker}; echo boom >&2; exit 5")

    assert marker.exists()
    assert run.proc.returncode == 5
    assert run.elapsed < 10  # one retry budget of 1 s plus start-up
    record = run.record
    assert record["status"] == "E" and record["exit_status"] == 5 and "boom" in record["error_message"]
    assert record["reported"] is False and record["report_error"].startswith("log_ran: ConnectionRefusedError")


def test_state_manager_down_command_still_runs_and_record_holds_outcome(tmp_path: Path, closed_port_url: str) -> None:
    marker = tmp_path / "ran"
    run = run_worker(
        tmp_path,
        closed_port_url,
        f"sleep 0.5; touch {marker}; echo boom >&2; exit 5",
        extra=["--heartbeat-interval", "0.2"],
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
    run = run_worker(tmp_path, server.url, "true", extra=["--http-retry-seconds", "5", "--running-report-delay", "0"])

    assert server.actions() == ["log_running", "log_running", "log_done"]
    assert run.proc.returncode == 0
    assert run.record["reported"] is False and "409" in run.record["report_error"]


def test_one_report_is_retried_on_server_errors_not_on_client_errors(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_ran"] = [(503, {}), (502, {}), (200, {"status": "D"})]
    run = run_worker(tmp_path, server.url, "true", extra=["--http-retry-seconds", "5"])
    assert server.actions() == ["log_ran"] * 3
    assert run.record["reported"] is True

    server.calls.clear()
    server.script["log_ran"] = [(409, {"detail": "illegal transition"})]
    run = run_worker(tmp_path, server.url, "true", extra=["--http-retry-seconds", "5"])
    assert server.actions() == ["log_ran"]
    assert run.record["reported"] is False and run.record["report_error"].startswith("log_ran: HTTP 409")


def test_a_state_manager_without_the_one_report_gets_the_two(tmp_path: Path, server: StateManagerStub) -> None:
    """During an upgrade a new worker may meet an old State Manager: its 404 for the route (FastAPI's own "Not
    Found", not a missing instance) makes the worker send log_running then log_error."""
    server.script["log_ran"] = [(404, {"detail": "Not Found"})]
    run = run_worker(tmp_path, server.url, "echo oops >&2; exit 4")

    assert server.actions() == ["log_ran", "log_running", "log_error"]
    assert (
        server.only("log_error").body["error_state"] == "E" and "oops" in server.only("log_error").body["error_message"]
    )
    assert run.record["reported"] is True and run.proc.returncode == 4


def test_a_missing_instance_is_not_mistaken_for_an_old_server(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_ran"] = [(404, {"detail": "task instance 17"})]
    run = run_worker(tmp_path, server.url, "true")

    assert server.actions() == ["log_ran"]
    assert run.record["reported"] is False and "404" in run.record["report_error"]


def test_long_command_reports_running_first_then_heartbeats_then_done(tmp_path: Path, server: StateManagerStub) -> None:
    ended = tmp_path / "ended"
    command = f"sleep 1.2; touch {ended}"
    run = run_worker(
        tmp_path, server.url, command, extra=["--running-report-delay", "0.2", "--heartbeat-interval", "0.5"]
    )

    assert run.proc.returncode == 0, run.proc.stderr
    actions = server.actions()
    assert actions[0] == "log_running" and actions[-1] == "log_done" and "log_ran" not in actions
    assert set(actions[1:-1]) == {"log_report_by"} and len(actions[1:-1]) >= 1
    running_call = server.only("log_running")
    assert running_call.at < server.only("log_done").at - 0.5  # reported while the command still ran
    assert running_call.body["next_report_increment"] == pytest.approx(0.5 * 3.1)
    assert run.record["status"] == "D" and run.record["reported"] is True


def test_unauthorized_start_still_runs_the_command(tmp_path: Path, server: StateManagerStub) -> None:
    server.script["log_running"] = [(401, {"detail": "bad token"})]
    run = run_worker(tmp_path, server.url, "exit 0", extra=["--running-report-delay", "0"])

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
        wait_for(ready.exists)
        proc.send_signal(signal.SIGTERM)  # only the worker, as a `kill <pid>` would
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "received SIGTERM" in stderr
    assert json.loads(record.read_text())["status"] == "E"
    assert server.only("log_ran").body["exit_status"] == -15  # it ended before its running report was due


def test_jobs_start_the_worker_isolated_from_the_job_s_python_variables(
    tmp_path: Path, server: StateManagerStub
) -> None:
    """``python_argv()`` (what the job runs): from any directory, and a PYTHONPATH meant for the command (here one
    whose json.py would break the worker) neither shadows the worker's modules nor is lost to the command."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "json.py").write_text("raise SystemExit('shadowed json imported')\n")
    token_file, record, seen = tmp_path / "t.token", tmp_path / "ti.exit.json", tmp_path / "seen"
    token_file.write_text(TOKEN)
    argv = [
        *worker_node.python_argv(), "--task-instance-id", str(TI_ID), "--state-manager-url", server.url,
        "--token-file", str(token_file), "--exit-record", str(record), "--http-retry-seconds", "1",
        "--command-b64", base64.b64encode(f'echo "$PYTHONPATH" > {seen}'.encode()).decode(),
    ]  # fmt: skip
    assert argv[1:3] == ["-I", "-S"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.run(argv, cwd=tmp_path, env={**env, "PYTHONPATH": str(shadow)}, capture_output=True, text=True)

    assert proc.returncode == 0, proc.stderr
    assert server.actions() == ["log_ran"] and json.loads(record.read_text())["reported"] is True
    assert seen.read_text().strip() == str(shadow)  # the command's environment is untouched
