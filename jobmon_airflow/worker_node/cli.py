"""The worker node's command line: argument parsing, the two modes (one task, one array element), ``main``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from jobmon_airflow.array_manifest import ManifestError, array_task_number, load_array_task
from jobmon_airflow.records import ExitRecord
from jobmon_airflow.worker_node.node import WorkerNode, write_exit_record
from jobmon_airflow.worker_node.outcome import SetupError, distributor_id_from_env, setup_failure

PACKAGE_LOGGER = "jobmon_airflow.worker_node"  # every module of the worker logs under it
log = logging.getLogger(PACKAGE_LOGGER)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2 without an exit record
        raise SetupError(message)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


# Single mode: all four; array mode: none of them (they come from the manifest).
_SINGLE_TASK_OPTIONS = ("--task-instance-id", "--token-file", "--exit-record", "--command-b64")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m jobmon_airflow.worker_node",
        description="Run one Jobmon task instance's command and report it to the State Manager.",
    )
    parser.add_argument(
        "--array-manifest", help="array mode: the batch's JSON manifest; SGE_TASK_ID picks this job's element"
    )
    parser.add_argument("--task-instance-id", type=int)
    parser.add_argument("--state-manager-url", required=True, help="e.g. http://host:8790/jobmon")
    parser.add_argument("--token-file", help="file holding the bearer token (never pass the token)")
    parser.add_argument("--exit-record", help="JSON file the outcome is written to")
    parser.add_argument("--command-b64", help="base64 of the UTF-8 shell command")
    parser.add_argument("--heartbeat-interval", type=_positive_float, default=90.0, help="seconds (default 90)")
    parser.add_argument(
        "--interrupt-timeout", type=_positive_float, default=10.0, help="SIGINT to SIGKILL, seconds (default 10)"
    )
    parser.add_argument("--http-timeout", type=_positive_float, default=10.0, help="per request, seconds")
    parser.add_argument(
        "--http-retry-seconds", type=float, default=30.0, help="retry budget of start and final reports, seconds"
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check that exactly one mode is given: SetupError otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = [opt for opt in _SINGLE_TASK_OPTIONS if getattr(args, opt[2:].replace("-", "_")) is not None]
    if args.array_manifest is not None:
        if given:
            parser.error(f"--array-manifest excludes {', '.join(given)}: give one task or one array manifest")
    elif not given:
        parser.error(f"give --array-manifest, or {', '.join(_SINGLE_TASK_OPTIONS)}")
    elif missing := [opt for opt in _SINGLE_TASK_OPTIONS if opt not in given]:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def _argv_value(argv: Sequence[str], option: str) -> str | None:
    """Best-effort lookup of ``option`` in an argv that argparse rejected."""
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def _configure_logging(context: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"jobmon-worker: %(asctime)s {context}: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _limit_virtual_memory() -> None:
    """Keep the wrapper's own virtual memory small: it counts against the job's h_vmem like the command's.

    Each thread would get a glibc malloc arena (64 MiB reserved) and an 8 MiB stack: ~150 MiB of VmSize for a
    process that uses ~20 MiB. One arena and small stacks bring the wrapper to ~26 MiB.
    """
    threading.stack_size(512 * 1024)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX = 1 (the command is a new process: not affected)


def _reset_peak_rss() -> None:
    """Make the current RSS the peak again (Linux >= 4.0), forgetting the manifest's transient memory.

    A child's max RSS starts from its parent's peak at fork/exec, so without this the manifest's text would be
    counted in the max RSS reported for the command.
    """
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def main(argv: Sequence[str] | None = None) -> int:
    _limit_virtual_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    host = socket.gethostname()
    job = distributor_id_from_env(os.environ)
    try:
        args = parse_args(argv)
    except SetupError as exc:
        return _bad_arguments(argv, str(exc), job, host)
    if args.array_manifest is not None:
        return _run_array_element(args, job, host)
    _configure_logging(f"ti={args.task_instance_id} job={job} host={host}")
    return WorkerNode(args).run()


def _run_array_element(args: argparse.Namespace, job: str | None, host: str) -> int:
    """Find this element's task instance in the manifest, then run it exactly as a single task.

    A missing, invalid or out-of-range ``SGE_TASK_ID``, or an unreadable manifest, is a set-up failure for which no
    exit record can be written (the element, hence its record, is unknown): it is logged to the job's .e file only.
    """
    _configure_logging(f"ti=? job={job} host={host}")
    try:
        task = load_array_task(args.array_manifest, array_task_number(os.environ))
    except ManifestError as exc:
        log.error("no exit record can be written: this job's array element is unknown")
        return setup_failure(str(exc)).worker_exit
    _reset_peak_rss()
    _configure_logging(f"ti={task.task_instance_id} job={job} host={host}")
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
    return WorkerNode(argparse.Namespace(**{**vars(args), **single})).run()


def _bad_arguments(argv: Sequence[str], message: str, job: str | None, host: str) -> int:
    """Set-up failure before parsing succeeded: exit record in ``--exit-record``, or else in the array element's."""
    ti: str | int | None = _argv_value(argv, "--task-instance-id")
    exit_record = _argv_value(argv, "--exit-record")
    manifest = _argv_value(argv, "--array-manifest")
    if not exit_record and manifest:
        with contextlib.suppress(ManifestError):
            task = load_array_task(manifest, array_task_number(os.environ))
            ti, exit_record = task.task_instance_id, task.exit_record
    _configure_logging(f"ti={ti} job={job} host={host}")
    outcome = setup_failure(f"bad arguments: {message}")
    if exit_record:
        ti_id = int(ti) if isinstance(ti, str) and ti.isascii() and ti.isdigit() else ti
        record = ExitRecord(
            # Not a number when --task-instance-id was garbled: kept as given, for whoever reads the file.
            task_instance_id=ti_id,  # type: ignore[arg-type]
            distributor_id=job,
            status=outcome.status,
            exit_status=outcome.exit_status,
            error_message=outcome.error_message,
            nodename=host,
            usage=outcome.usage,
            started_at=time.time(),
            finished_at=time.time(),
        )
        write_exit_record(exit_record, record)
    return outcome.worker_exit
