"""One task instance's run on this node: log_running, the command with heartbeats, the exit record, the report."""

from __future__ import annotations

import argparse
import base64
import binascii
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from jobmon_airflow.exit_codes import KILLED_BEFORE_START_EXIT, shell_exit_code
from jobmon_airflow.files import write_atomically
from jobmon_airflow.records import ExitRecord
from jobmon_airflow.states import TaskInstanceStatus
from jobmon_airflow.worker_node.client import StateManagerClient
from jobmon_airflow.worker_node.outcome import (
    Outcome,
    SetupError,
    classify_exit,
    distributor_id_from_env,
    error_message,
    setup_failure,
    signal_name,
)
from jobmon_airflow.worker_node.process import CommandTree, StderrTail, child_usage

log = logging.getLogger(__name__)

REPORT_BY_BUFFER = 3.1  # next report-by deadline = interval * 3.1 (Jobmon's report_by_buffer)
_READER_JOIN_S = 2.0  # a background process may keep stderr open after the command exits; do not wait on it

# Signals the worker passes on to the command. A group-wide signal reaches the command anyway, so it gets
# these twice; harmless for termination signals. SIGINT/SIGUSR1/SIGUSR2 (Grid Engine's -notify warnings) are
# only logged: they arrive group-wide, and the worker must survive them to report the outcome.
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_SURVIVED_SIGNALS = (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def write_exit_record(path: str, record: ExitRecord) -> bool:
    """Write ``record`` atomically and durably (it must survive a crash of the node); False on failure."""
    try:
        write_atomically(path, record.to_json(), durable=True)
    except OSError as exc:
        log.error("cannot write exit record %s: %s", path, exc)
        return False
    return True


def read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"cannot read token file {path}: {exc}") from exc
    if not token:
        raise SetupError(f"token file {path} is empty")
    return token


def decode_command(command_b64: str) -> str:
    try:
        return base64.b64decode(command_b64, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise SetupError(f"--command-b64 is not base64 of UTF-8 text: {exc}") from exc


class WorkerNode:
    """One task instance's run on this node, from log_running to the final report."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ti_id: int = args.task_instance_id
        self.nodename = socket.getfqdn() or socket.gethostname()
        self.distributor_id = distributor_id_from_env(os.environ)
        self.started_at = time.time()
        self.client: StateManagerClient | None = None
        self.tree: CommandTree | None = None

    # -- the steps, top to bottom

    def run(self) -> int:
        log.info("start: pid %d, process group %d, python %s", os.getpid(), os.getpgid(0), sys.version.split()[0])
        try:
            token = read_token(self.args.token_file)
            self.client = StateManagerClient(
                self.args.state_manager_url, token, self.ti_id, self.args.http_timeout, self.args.http_retry_seconds
            )
            command = decode_command(self.args.command_b64)
        except SetupError as exc:
            return self.finish(setup_failure(str(exc)))

        increment = self.args.heartbeat_interval * REPORT_BY_BUFFER
        reply = self.client.post(
            "log_running",
            {
                "nodename": self.nodename,
                "process_group_id": os.getpgid(0),
                "distributor_id": self.distributor_id,
                "next_report_increment": increment,
            },
            retry=True,
        )
        if reply.ok:
            log.info("log_running: status %s", reply.data.get("status"))
        else:  # the State Manager may be down; the exit record will carry the result
            log.warning("log_running not reported (%s); running the command anyway", reply.error)
        if reply.data.get("status") == TaskInstanceStatus.KILL_SELF:
            log.info("kill requested before start; the command is not run")
            killed = Outcome(TaskInstanceStatus.ERROR_FATAL, None, "killed before start", KILLED_BEFORE_START_EXIT)
            return self.finish(killed)

        return self.finish(self.run_command(command, token))

    def run_command(self, command: str, token: str) -> Outcome:
        # The token must not reach the command: drop any variable that carries it.
        env = {k: v for k, v in os.environ.items() if token not in v}
        for name in sorted(os.environ.keys() - env.keys()):
            log.warning("environment variable %s holds the token; not passed to the command", name)
        env["JOBMON_TASK_INSTANCE_ID"] = str(self.ti_id)

        wall_start = time.monotonic()
        try:
            proc = subprocess.Popen(["/bin/bash", "-c", command], env=env, stderr=subprocess.PIPE)
        except OSError as exc:
            return setup_failure(f"cannot start /bin/bash: {exc}")
        assert proc.stderr is not None
        self.tree = CommandTree(proc)
        tail = StderrTail(proc.stderr.fileno())
        tail.start()
        self._install_signal_handlers()
        shown = command if len(command) <= 2000 else command[:2000] + "..."
        log.info("command started: pid %d: %r", proc.pid, shown)  # repr keeps a multi-line command on one line

        killed = self._wait_heartbeating(proc)
        exit_status = proc.returncode
        wallclock = time.monotonic() - wall_start
        tail.join(_READER_JOIN_S)
        stderr_tail = tail.text()

        status: str
        if killed:
            status, header = TaskInstanceStatus.ERROR_FATAL, "killed by request (KILL_SELF)"
        else:
            status, header = classify_exit(exit_status)
            if status == TaskInstanceStatus.ERROR and stderr_tail:
                header = ""  # a plain error explains itself through stderr
        return Outcome(
            status=status,
            exit_status=exit_status,
            error_message="" if status == TaskInstanceStatus.DONE else error_message(header, stderr_tail),
            worker_exit=shell_exit_code(exit_status),
            usage=child_usage(wallclock),
        )

    def _wait_heartbeating(self, proc: subprocess.Popen[bytes]) -> bool:
        """Wait for the command, heartbeating every interval; True when it was killed on request."""
        assert self.client is not None
        interval = self.args.heartbeat_interval
        body = {"next_report_increment": interval * REPORT_BY_BUFFER}
        next_beat = time.monotonic() + interval
        while True:
            try:
                proc.wait(timeout=max(next_beat - time.monotonic(), 0.0))
                return False
            except subprocess.TimeoutExpired:
                pass
            # One attempt only: a server outage must neither kill nor delay the command; the next beat retries.
            reply = self.client.post("log_report_by", body, retry=False)
            next_beat = time.monotonic() + interval
            if reply.ok and reply.data.get("status") == TaskInstanceStatus.KILL_SELF:
                log.info("heartbeat reply: kill requested; interrupting the command")
                self._interrupt(proc)
                return True

    def _interrupt(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGINT to the command tree; SIGKILL to whatever is left after the interrupt timeout."""
        assert self.tree is not None
        deadline = time.monotonic() + self.args.interrupt_timeout
        self.tree.signal(signal.SIGINT)
        if not self.tree.wait_gone(deadline):
            log.info("command still running %.0f s after SIGINT; sending SIGKILL", self.args.interrupt_timeout)
            self.tree.signal(signal.SIGKILL)
        proc.wait()

    def _install_signal_handlers(self) -> None:
        def forward(signum: int, _frame: object) -> None:
            log.info("received %s; passing it to the command", signal_name(signum))
            if self.tree is not None:
                self.tree.signal(signum)

        def survive(signum: int, _frame: object) -> None:
            log.info("received %s; still waiting for the command", signal_name(signum))

        for signum in _FORWARDED_SIGNALS:
            signal.signal(signum, forward)
        for signum in _SURVIVED_SIGNALS:
            signal.signal(signum, survive)

    def finish(self, outcome: Outcome) -> int:
        """Exit record first (it must exist even if reporting fails), then the report, then the record again."""
        record = ExitRecord(
            task_instance_id=self.ti_id,
            distributor_id=self.distributor_id,
            status=outcome.status,
            exit_status=outcome.exit_status,
            error_message=outcome.error_message,
            nodename=self.nodename,
            usage=outcome.usage,
            started_at=self.started_at,
            finished_at=time.time(),
        )
        log.info(
            "outcome %s, exit status %s, wallclock %.1f s, max RSS %d bytes",
            outcome.status,
            outcome.exit_status,
            outcome.usage.wallclock_s,
            outcome.usage.maxrss_bytes,
        )
        write_exit_record(self.args.exit_record, record)
        if self.client is None:
            log.error("no token, so the outcome is not reported; it is in %s", self.args.exit_record)
            return outcome.worker_exit

        body: dict[str, Any] = {
            "nodename": self.nodename,
            "exit_status": outcome.exit_status,
            "usage": outcome.usage.to_dict(),
        }
        if outcome.status == TaskInstanceStatus.DONE:
            action = "log_done"
        else:
            action = "log_error"
            body.update(error_state=outcome.status, error_message=outcome.error_message)
        reply = self.client.post(action, body, retry=True)
        if reply.ok:
            log.info("%s reported", action)
            write_exit_record(self.args.exit_record, record.reported_as(None))
        else:
            log.error("%s not reported; the outcome is in %s", action, self.args.exit_record)
            write_exit_record(self.args.exit_record, record.reported_as(f"{action}: {reply.error}"))
        return outcome.worker_exit
