"""The worker node's command line: argument parsing, the two modes (one task, one array element), ``main``."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time
from types import SimpleNamespace

from jobmon_airflow.array_manifest import ManifestError, array_task_number, load_array_task
from jobmon_airflow.worker_node import logs
from jobmon_airflow.worker_node.logs import log
from jobmon_airflow.worker_node.node import (
    RUNNING_REPORT_DELAY,
    WorkerNode,
    exit_record_text,
    write_exit_record,
)
from jobmon_airflow.worker_node.outcome import SetupError, distributor_id_from_env, setup_failure

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy and ruff read the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import NoReturn


def _positive_float(text: str) -> float:
    value = float(text)
    if not (0 < value < math.inf):
        raise ValueError(f"must be > 0 and finite, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (0 <= value < math.inf):
        raise ValueError(f"must be >= 0 and finite, got {text}")
    return value


# The options: name -> (type, default, help). Single mode needs --task-instance-id, --token-file, --exit-record and
# --command-b64; array mode none of them (they come from the manifest). --state-manager-url is always required.
_OPTIONS: dict[str, tuple[Callable[[str], object], object, str | None]] = {
    "--array-manifest": (str, None, "array mode: the batch's JSON manifest; SGE_TASK_ID picks this job's element"),
    "--task-instance-id": (int, None, None),
    "--state-manager-url": (str, None, "e.g. http://host:8790/jobmon"),
    "--token-file": (str, None, "file holding the bearer token (never pass the token)"),
    "--exit-record": (str, None, "JSON file the outcome is written to"),
    "--command-b64": (str, None, "base64 of the UTF-8 shell command"),
    "--heartbeat-interval": (_positive_float, 90.0, "seconds (default 90)"),
    "--interrupt-timeout": (_positive_float, 10.0, "SIGINT to SIGKILL, seconds (default 10)"),
    "--http-timeout": (_positive_float, 10.0, "per request, seconds"),
    "--http-retry-seconds": (float, 30.0, "retry budget of start and final reports, seconds"),
    "--running-report-delay": (
        _non_negative_float,
        RUNNING_REPORT_DELAY,
        "seconds after the command's start before reporting running (at most the heartbeat interval); a command "
        f"that ends sooner sends one report, log_ran; 0: report before the start (default {RUNNING_REPORT_DELAY:g})",
    ),
}
_SINGLE_TASK_OPTIONS = ("--task-instance-id", "--token-file", "--exit-record", "--command-b64")


def build_parser() -> argparse.ArgumentParser:
    """The worker's argparse parser: help, and the messages that name what is wrong with an argv. Errors raise
    SetupError (argparse would exit 2, without an exit record)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise SetupError(message)

    def checked(convert: Callable[[str], object]) -> Callable[[str], object]:
        def parse(text: str) -> object:
            try:
                return convert(text)
            except ValueError as exc:  # argparse would say "invalid _positive_float value"
                raise argparse.ArgumentTypeError(str(exc)) from None

        return parse

    parser = Parser(
        prog="python -m jobmon_airflow.worker_node",
        description="Run one Jobmon task instance's command and report it to the State Manager.",
    )
    for option, (convert, default, text) in _OPTIONS.items():
        kind = checked(convert) if convert in (_positive_float, _non_negative_float) else convert
        required = option == "--state-manager-url"
        parser.add_argument(option, type=kind, default=default, required=required, help=text)
    return parser


def _parse_quickly(argv: Sequence[str]) -> SimpleNamespace | None:
    """The argv a job is started with, parsed without argparse (whose help formatter imports ``shutil``: ~3 ms of
    every job's start); None for anything else (help, an unknown or abbreviated option, a missing, bad or
    option-like value), which argparse then parses, naming what is wrong."""
    values = {option[2:].replace("-", "_"): default for option, (_, default, _) in _OPTIONS.items()}
    i = 0
    while i < len(argv):
        option, eq, value = argv[i].partition("=")
        spec = _OPTIONS.get(option)
        if spec is None or (not eq and i + 1 == len(argv)):
            return None
        if not eq:
            value = argv[i + 1]
            i += 1
        i += 1
        if value.startswith("-"):
            return None
        try:
            values[option[2:].replace("-", "_")] = spec[0](value)
        except ValueError:
            return None
    return SimpleNamespace(**values) if values["state_manager_url"] is not None else None


def parse_args(argv: Sequence[str]) -> SimpleNamespace:
    """Parse and check that exactly one mode is given: SetupError otherwise."""
    args = _parse_quickly(argv) or SimpleNamespace(**vars(build_parser().parse_args(argv)))
    given = [opt for opt in _SINGLE_TASK_OPTIONS if getattr(args, opt[2:].replace("-", "_")) is not None]
    if args.array_manifest is not None:
        if given:
            raise SetupError(f"--array-manifest excludes {', '.join(given)}: give one task or one array manifest")
    elif not given:
        raise SetupError(f"give --array-manifest, or {', '.join(_SINGLE_TASK_OPTIONS)}")
    elif missing := [opt for opt in _SINGLE_TASK_OPTIONS if opt not in given]:
        raise SetupError(f"the following arguments are required: {', '.join(missing)}")
    return args


def _argv_value(argv: Sequence[str], option: str) -> str | None:
    """Best-effort lookup of ``option`` in an argv that argparse rejected."""
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def _reset_peak_rss() -> None:
    """Make the current RSS the peak again (Linux >= 4.0), forgetting the manifest's transient memory.

    A child's max RSS starts from its parent's peak at fork/exec, so without this the manifest's text would be
    counted in the max RSS reported for the command.
    """
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    host = socket.gethostname()
    job = distributor_id_from_env(os.environ)
    try:
        args = parse_args(argv)
    except SetupError as exc:
        return _bad_arguments(argv, str(exc), job, host)
    if args.array_manifest is not None:
        return _run_array_element(args, job, host)
    logs.configure(f"ti={args.task_instance_id} job={job} host={host}")
    return WorkerNode(args).run()


def _run_array_element(args: SimpleNamespace, job: str | None, host: str) -> int:
    """Find this element's task instance in the manifest, then run it exactly as a single task.

    A missing, invalid or out-of-range ``SGE_TASK_ID``, or an unreadable manifest, is a set-up failure for which no
    exit record can be written (the element, hence its record, is unknown): it is logged to the job's .e file only.
    """
    logs.configure(f"ti=? job={job} host={host}")
    try:
        task = load_array_task(args.array_manifest, array_task_number(os.environ))
    except ManifestError as exc:
        log.error("no exit record can be written: this job's array element is unknown")
        return setup_failure(str(exc)).worker_exit
    _reset_peak_rss()
    logs.configure(f"ti={task.task_instance_id} job={job} host={host}")
    log.info("array element %d of %d in %s", task.number, task.count, args.array_manifest)
    last = os.environ.get("SGE_TASK_LAST", "")
    if last.isdigit() and int(last) != task.count:
        log.warning("the array job has %s elements, the manifest %d: wrong manifest?", last, task.count)
    single = {
        "task_instance_id": task.task_instance_id,
        "token_file": task.token_file,
        "exit_record": task.exit_record,
        "command_b64": task.command_b64,
    }
    return WorkerNode(SimpleNamespace(**{**vars(args), **single})).run()


def _bad_arguments(argv: Sequence[str], message: str, job: str | None, host: str) -> int:
    """Set-up failure before parsing succeeded: exit record in ``--exit-record``, or else in the array element's."""
    ti: str | int | None = _argv_value(argv, "--task-instance-id")
    exit_record = _argv_value(argv, "--exit-record")
    manifest = _argv_value(argv, "--array-manifest")
    if not exit_record and manifest:
        with contextlib.suppress(ManifestError):
            task = load_array_task(manifest, array_task_number(os.environ))
            ti, exit_record = task.task_instance_id, task.exit_record
    logs.configure(f"ti={ti} job={job} host={host}")
    outcome = setup_failure(f"bad arguments: {message}")
    if exit_record:
        # Not a number when --task-instance-id was garbled: kept as given, for whoever reads the file.
        ti_id = int(ti) if isinstance(ti, str) and ti.isascii() and ti.isdigit() else ti
        now = time.time()
        text = exit_record_text(ti_id, outcome, nodename=host, distributor_id=job, started_at=now, finished_at=now)
        write_exit_record(exit_record, text)
    return outcome.worker_exit
