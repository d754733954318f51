"""One task instance's run on this node: the command, its reports to the State Manager, the exit record.

Reports. The command starts at once and the first report goes out ``--running-report-delay`` seconds later (at
most one heartbeat interval):

* a command that ended before then sends ONE report, ``log_ran``: the running report's fields with the outcome,
  both transitions (O → R → D, or → E, Z, F) made by the State Manager in one transaction;
* a command still running reports ``log_running`` (a reply K interrupts it), heartbeats (``log_report_by``) every
  interval after that, and ends with ``log_done`` or ``log_error``.

With a delay of 0 the worker reports running before it starts the command (Jobmon's order): a kill requested
before the start then means the command never runs. Before any final report the outcome is written to the exit
record, so it survives a State Manager outage.
"""

from __future__ import annotations

import binascii
import json
import os
import signal
import socket
import subprocess
import sys
import time

from jobmon_airflow.exit_codes import KILLED_BEFORE_START_EXIT, shell_exit_code
from jobmon_airflow.files import write_atomically
from jobmon_airflow.worker_node.client import Reply, StateManagerClient
from jobmon_airflow.worker_node.logs import log
from jobmon_airflow.worker_node.outcome import (
    DONE,
    ERROR,
    ERROR_FATAL,
    KILL_SELF,
    Outcome,
    SetupError,
    classify_exit,
    distributor_id_from_env,
    error_message,
    setup_failure,
    signal_name,
)
from jobmon_airflow.worker_node.process import CommandTree, RunningCommand, child_usage

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy and ruff read the name)
if TYPE_CHECKING:
    from types import SimpleNamespace
    from typing import Any

REPORT_BY_BUFFER = 3.1  # next report-by deadline = interval * 3.1 (Jobmon's report_by_buffer)
RUNNING_REPORT_DELAY = 5.0  # seconds: a command that ends sooner sends one report (log_ran) instead of two
_READER_JOIN_S = 2.0  # a background process may keep stderr open after the command exits; do not wait on it

# Signals the worker passes on to the command. A group-wide signal reaches the command anyway, so it gets
# these twice; harmless for termination signals. SIGINT/SIGUSR1/SIGUSR2 (Grid Engine's -notify warnings) are
# only logged: they arrive group-wide, and the worker must survive them to report the outcome.
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_SURVIVED_SIGNALS = (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def exit_record_text(
    task_instance_id: int | str | None,
    outcome: Outcome,
    *,
    nodename: str | None,
    distributor_id: str | None,
    started_at: float | None,
    finished_at: float | None,
    reported: bool = False,
    report_error: str | None = None,
) -> str:
    """The exit record as :meth:`jobmon_airflow.records.ExitRecord.to_json` writes it, which is what the watchers
    read (``records`` itself is not imported: its dataclasses cost every job ~6 ms; the tests check they agree).
    ``task_instance_id`` is not a number only when ``--task-instance-id`` was garbled: kept as given."""
    usage = outcome.usage
    data: dict[str, Any] = {
        "task_instance_id": task_instance_id,
        "distributor_id": distributor_id,
        "status": outcome.status,
        "exit_status": outcome.exit_status,
        "error_message": outcome.error_message,
        "nodename": nodename,
        "usage": {"maxrss_bytes": usage["maxrss_bytes"], "wallclock_s": usage["wallclock_s"], "cpu_s": usage["cpu_s"]},
        "started_at": started_at,
        "finished_at": finished_at,
        "reported": reported,
    }
    if report_error is not None:
        data["report_error"] = report_error
    return json.dumps(data, indent=1)


def write_exit_record(path: str, text: str) -> bool:
    """Write the record atomically and durably (it must survive a crash of the node); False on failure."""
    try:
        write_atomically(path, text, durable=True)
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
    if not all("!" <= c <= "~" for c in token):
        raise SetupError(f"token file {path} holds characters a bearer token cannot have")
    return token


def decode_command(command_b64: str) -> str:
    """``base64.b64decode(command_b64, validate=True)`` as text, without importing ``base64``."""
    try:
        return binascii.a2b_base64(command_b64.encode("ascii"), strict_mode=True).decode("utf-8")
    except (binascii.Error, UnicodeError) as exc:
        raise SetupError(f"--command-b64 is not base64 of UTF-8 text: {exc}") from exc


def fqdn() -> str:
    """``socket.getfqdn()``, asking with the host name as bytes: as text, Python encodes it with the ``idna``
    codec, whose import costs ~8 ms of every job's start."""
    name = socket.gethostname()
    try:
        hostname, aliases, _ = socket.gethostbyaddr(name.encode() if name.isascii() else name)  # type: ignore[arg-type]
    except OSError:
        return name
    return next((n for n in (hostname, *aliases) if "." in n), hostname) or name


class WorkerNode:
    """One task instance's run on this node, from the start to the final report."""

    def __init__(self, args: SimpleNamespace):
        self.args = args
        self.ti_id: int = args.task_instance_id
        self.nodename = fqdn()
        self.distributor_id = distributor_id_from_env(os.environ)
        self.started_at = time.time()
        self.client: StateManagerClient | None = None
        self.tree: CommandTree | None = None
        self.running_reported = False  # log_running was sent (whatever its reply)
        self.command_started = False

    @property
    def running_body(self) -> dict[str, Any]:
        return {
            "nodename": self.nodename,
            "process_group_id": os.getpgid(0),
            "distributor_id": self.distributor_id,
            "next_report_increment": self.args.heartbeat_interval * REPORT_BY_BUFFER,
        }

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

        delay = getattr(self.args, "running_report_delay", RUNNING_REPORT_DELAY)
        delay = min(max(delay, 0.0), self.args.heartbeat_interval)
        if delay == 0 and self.report_running().data.get("status") == KILL_SELF:
            log.info("kill requested before start; the command is not run")
            return self.finish(Outcome(ERROR_FATAL, None, "killed before start", KILLED_BEFORE_START_EXIT))
        return self.finish(self.run_command(command, token, delay))

    def report_running(self) -> Reply:
        assert self.client is not None
        self.running_reported = True
        reply = self.client.post("log_running", self.running_body, retry=True)
        if reply.ok:
            log.info("log_running: status %s", reply.data.get("status"))
        else:  # the State Manager may be down; the exit record will carry the result
            log.warning("log_running not reported (%s); running the command anyway", reply.error)
        return reply

    def run_command(self, command: str, token: str, first_report_in: float) -> Outcome:
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
        self.command_started = True
        command_run = RunningCommand(proc)
        self.tree = command_run.tree
        self._install_signal_handlers()
        shown = command if len(command) <= 2000 else command[:2000] + "..."
        log.info("command started: pid %d: %r", proc.pid, shown)  # repr keeps a multi-line command on one line

        killed = self._wait_reporting(command_run, first_report_in)
        exit_status = proc.returncode
        wallclock = time.monotonic() - wall_start
        stderr_tail = command_run.finish(_READER_JOIN_S)

        status: str
        if killed:
            status, header = ERROR_FATAL, "killed by request (KILL_SELF)"
        else:
            status, header = classify_exit(exit_status)
            if status == ERROR and stderr_tail:
                header = ""  # a plain error explains itself through stderr
        return Outcome(
            status=status,
            exit_status=exit_status,
            error_message="" if status == DONE else error_message(header, stderr_tail),
            worker_exit=shell_exit_code(exit_status),
            usage=child_usage(wallclock),
        )

    def _wait_reporting(self, command: RunningCommand, first_report_in: float) -> bool:
        """Wait for the command: the running report when it is due (unless already sent), then a heartbeat every
        interval; True when it was killed on request."""
        assert self.client is not None
        interval = self.args.heartbeat_interval
        body = {"next_report_increment": interval * REPORT_BY_BUFFER}
        next_report = time.monotonic() + (interval if self.running_reported else first_report_in)
        while True:
            if command.wait(next_report):
                return False
            if self.running_reported:
                action = "log_report_by"
                # One attempt only: a server outage must neither kill nor delay the command; the next beat retries.
                reply = self.client.post(action, body, retry=False)
            else:
                action, reply = "log_running", self.report_running()
            next_report = time.monotonic() + interval
            if reply.ok and reply.data.get("status") == KILL_SELF:
                log.info("%s reply: kill requested; interrupting the command", action)
                self._interrupt(command)
                return True

    def _interrupt(self, command: RunningCommand) -> None:
        """SIGINT to the command tree; SIGKILL to whatever is left after the interrupt timeout."""
        deadline = time.monotonic() + self.args.interrupt_timeout
        command.tree.signal(signal.SIGINT)
        if not command.tree.wait_gone(deadline, pause=command.pump):
            log.info("command still running %.0f s after SIGINT; sending SIGKILL", self.args.interrupt_timeout)
            command.tree.signal(signal.SIGKILL)
        command.wait(time.monotonic() + 86_400.0)  # SIGKILL cannot be caught: this ends at once

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
        finished_at = time.time()

        def record(reported: bool = False, report_error: str | None = None) -> str:
            return exit_record_text(
                self.ti_id,
                outcome,
                nodename=self.nodename,
                distributor_id=self.distributor_id,
                started_at=self.started_at,
                finished_at=finished_at,
                reported=reported,
                report_error=report_error,
            )

        log.info(
            "outcome %s, exit status %s, wallclock %.1f s, max RSS %d bytes",
            outcome.status,
            outcome.exit_status,
            outcome.usage["wallclock_s"] or 0.0,
            outcome.usage["maxrss_bytes"] or 0,
        )
        record_path = self.args.exit_record
        write_exit_record(record_path, record())
        if self.client is None:
            log.error("no token, so the outcome is not reported; it is in %s", record_path)
            return outcome.worker_exit

        action, reply = self._report_end(outcome)
        if reply.ok:
            log.info("%s reported", action)
            write_exit_record(record_path, record(reported=True))
        else:
            log.error("%s not reported; the outcome is in %s", action, record_path)
            write_exit_record(record_path, record(report_error=f"{action}: {reply.error}"))
        return outcome.worker_exit

    def _report_end(self, outcome: Outcome) -> tuple[str, Reply]:
        """The final report: ``log_ran`` (running and the end in one) when the command ran before its running
        report was due, else ``log_done`` / ``log_error``. Returns the action and its reply."""
        assert self.client is not None
        final: dict[str, Any] = {"nodename": self.nodename, "exit_status": outcome.exit_status, "usage": outcome.usage}
        if outcome.status == DONE:
            action = "log_done"
        else:
            action = "log_error"
            final.update(error_state=outcome.status, error_message=outcome.error_message)
        if self.command_started and not self.running_reported:
            body = {**self.running_body, **final, "status": outcome.status}
            body.pop("error_state", None)
            body.setdefault("error_message", "")
            reply = self.client.post("log_ran", body, retry=True)
            if reply.ok or not _route_unknown(reply):
                return "log_ran", reply
            # A State Manager older than log_ran (during an upgrade): the two reports it knows.
            log.warning("log_ran is not known to the State Manager; reporting running, then the end")
            self.report_running()
        return action, self.client.post(action, final, retry=True)


def _route_unknown(reply: Reply) -> bool:
    """The server has no such route: 405, or 404 with the framework's own "Not Found" (a missing task instance
    is also a 404, but names the instance)."""
    return reply.code == 405 or (reply.code == 404 and '"Not Found"' in reply.error)
