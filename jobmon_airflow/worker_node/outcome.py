"""How a task instance ended on the node: exit classes, error messages, the outcome. Pure, no I/O.

The statuses are :class:`jobmon_airflow.states.TaskInstanceStatus` values as plain strings, and the usage is the
JSON object of :class:`jobmon_airflow.records.Usage`: those modules are built on ``dataclasses`` (with ``inspect``,
~6 ms of every job's start-up); the worker's tests check that both stay the same.
"""

from __future__ import annotations

import signal

from jobmon_airflow.exit_codes import (
    MEMORY_KILL_EXIT_STATUSES,
    MEMORY_KILL_RETURNCODES,
    WORKER_CLI_FAILURE,
    WORKER_ENV_FAILURE,
)
from jobmon_airflow.worker_node.logs import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy and ruff read the name)
if TYPE_CHECKING:
    from collections.abc import Mapping

# TaskInstanceStatus values the worker reports or receives.
RUNNING = "R"
DONE = "D"
ERROR = "E"
RESOURCE_ERROR = "Z"
ERROR_FATAL = "F"
KILL_SELF = "K"

ERROR_MESSAGE_CHARS = 10_000  # stderr tail kept for the error message
#: A command's usage as ``records.Usage.to_dict`` gives it: maxrss_bytes, wallclock_s, cpu_s.
UsageDict = dict[str, int | float | None]
NO_USAGE: UsageDict = {"maxrss_bytes": 0, "wallclock_s": 0.0, "cpu_s": 0.0}  # no command ran


class SetupError(Exception):
    """The worker cannot do its job: bad arguments, unreadable token file, undecodable command."""


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


_RESOURCES = "Insufficient resources requested"

# Exit status of the command (as Popen reports it: negative for a signal) -> (TI error state, message), from the
# shared table in exit_codes: Grid Engine's kills for exceeding memory or runtime (137, 247; -9 from Popen) and
# Jobmon's worker env / CLI failures (198, 199). Anything not listed and non-zero is a plain error, E.
EXIT_CLASSES: dict[int, tuple[str, str]] = {
    **{status: (RESOURCE_ERROR, f"{_RESOURCES} (exit {status})") for status in sorted(MEMORY_KILL_EXIT_STATUSES)},
    **{
        code: (RESOURCE_ERROR, f"{_RESOURCES} (killed by {signal_name(-code)}, exit {code})")
        for code in sorted(MEMORY_KILL_RETURNCODES)
    },
    WORKER_ENV_FAILURE: (
        ERROR_FATAL,
        f"Fatal error: worker node environment failure (exit {WORKER_ENV_FAILURE})",
    ),
    WORKER_CLI_FAILURE: (
        ERROR_FATAL,
        f"Fatal error: worker node command-line failure (exit {WORKER_CLI_FAILURE})",
    ),
}


def classify_exit(exit_status: int) -> tuple[str, str]:
    """TaskInstance state and message for the command's exit status (negative: killed by that signal)."""
    if exit_status == 0:
        return DONE, ""
    if exit_status in EXIT_CLASSES:
        return EXIT_CLASSES[exit_status]
    if exit_status < 0:
        return ERROR, f"Command killed by signal {signal_name(-exit_status)} (exit {exit_status})"
    return ERROR, f"Command exited with status {exit_status}"


def error_message(header: str, stderr_tail: str) -> str:
    """``header`` then the end of stderr, at most ERROR_MESSAGE_CHARS in all (the end is what explains)."""
    if not stderr_tail:
        return header
    if not header:
        return stderr_tail[-ERROR_MESSAGE_CHARS:]
    room = max(ERROR_MESSAGE_CHARS - len(header) - 1, 0)
    return f"{header}\n{stderr_tail[-room:]}" if room else header


def distributor_id_from_env(env: Mapping[str, str]) -> str | None:
    """Grid Engine job id, with ``.task`` for an array element (SGE sets SGE_TASK_ID=undefined otherwise)."""
    job_id = env.get("JOB_ID", "").strip()
    if not job_id:
        return None
    task_id = env.get("SGE_TASK_ID", "").strip()
    if task_id and task_id != "undefined":
        return f"{job_id}.{task_id}"
    return job_id


class Outcome:
    """How the task instance ended on this node: what goes into the exit record and the final report."""

    __slots__ = ("error_message", "exit_status", "status", "usage", "worker_exit")

    def __init__(
        self,
        status: str,
        exit_status: int | None,
        error_message: str,
        worker_exit: int,
        usage: UsageDict | None = None,
    ):
        self.status = status
        self.exit_status = exit_status
        self.error_message = error_message
        self.worker_exit = worker_exit
        self.usage: UsageDict = dict(NO_USAGE if usage is None else usage)

    def __repr__(self) -> str:
        return f"Outcome({self.status!r}, {self.exit_status!r}, {self.error_message!r:.80}, {self.worker_exit!r})"


def setup_failure(message: str) -> Outcome:
    log.error("set-up failure: %s", message)
    return Outcome(
        ERROR_FATAL,
        WORKER_ENV_FAILURE,
        f"worker node set-up failure: {message}",
        WORKER_ENV_FAILURE,
    )
