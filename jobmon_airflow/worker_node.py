"""The worker node: the wrapper every Jobmon job runs on the compute node.

Run as ``python -m jobmon_airflow.worker_node --task-instance-id 17 --state-manager-url URL --token-file F
--exit-record R --command-b64 B64``. It reports running to the State Manager, runs the task's shell command,
heartbeats while the command runs (obeying a kill request), classifies the exit and reports done or error with
the stderr tail and usage. Before reporting the outcome over HTTP it writes an exit record file, so that the
outcome survives a State Manager outage.

Standard library only and no other ``jobmon_airflow`` module: this starts with every job, so start-up time and
memory matter, and the compute node may not have the server's dependencies.

Process model. The command runs as ``/bin/bash -c <command>`` in the worker's own process group, which is the
job's: Grid Engine's ``qdel`` and ``h_rt`` kills signal the job's process group (the addgrp kill that would
catch other groups is off by default), so a command in a group of its own would survive them as an orphan. To
interrupt the command alone (kill request), the worker signals the command's process tree, found through
``/proc``, never the whole group (that holds the job script and the worker too).

Array mode: ``python -m jobmon_airflow.worker_node --array-manifest /logs/batch-12.manifest.json
--state-manager-url URL --heartbeat-interval 90``. One Grid Engine array job (``qsub -t 1-N``) runs one batch of
N task instances; every element runs this same argv and picks its own task instance by its element number
``SGE_TASK_ID`` (1-based), then runs exactly as in single mode (distributor id ``JOB_ID.SGE_TASK_ID``).
``--array-manifest`` excludes ``--task-instance-id/--token-file/--exit-record/--command-b64``. The manifest,
written by the operator with ``write_array_manifest``, is JSON::

    {"version": 1, "token_file": "/logs/.tokens/batch-12.token", "elements": [
    {"task_instance_id": 101, "command_b64": "ZWNobyBoaQ==", "exit_record": "/logs/ti-101.exit.json"},
    {"task_instance_id": 102, "command_b64": "ZXhpdCAz", "exit_record": "/logs/ti-102.exit.json"}
    ]}

Element i (``SGE_TASK_ID`` i) is ``elements[i-1]``; the token file holds one bearer token shared by the batch's
instances (the manifest itself holds no secret). The writer puts element i on line i + 1, for people reading it; the
worker parses JSON and does not rely on the layout. Every element reads the whole manifest, once, with one
``json.load`` that keeps only its own element (a 10,000-element manifest: ~3.6 MB, parsed in ~11 ms). A missing,
invalid or out-of-range ``SGE_TASK_ID``, or an unreadable manifest, is a set-up failure for which no exit record can
be written (the element, hence its record, is unknown): it is logged to the job's .e file only.

Exit code of the worker: the command's (128 + N when it died of signal N) so cluster accounting shows it; 198 on
a set-up failure of the worker itself; 130 when the task was killed before the command started.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import http.client
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

log = logging.getLogger("jobmon_airflow.worker_node")

# TaskInstance status codes this module sends or reads. The canonical table is the package's state-machine
# module; it is not imported here because the worker must stay light (see the module docstring).
TI_DONE = "D"
TI_ERROR = "E"
TI_ERROR_FATAL = "F"
TI_KILL_SELF = "K"
TI_RESOURCE_ERROR = "Z"

# Exit status of the command (as Popen reports it: negative for a signal) -> (TI error state, message).
# 137/247/-9 are Grid Engine's kills for exceeding memory or runtime (Jobmon's
# ERROR_CODE_SET_KILLED_FOR_INSUFFICIENT_RESOURCES); 198/199 are Jobmon's worker env / CLI failures.
# Anything not listed and non-zero is a plain error, E.
EXIT_CLASSES: dict[int, tuple[str, str]] = {
    137: (TI_RESOURCE_ERROR, "Insufficient resources requested (exit 137)"),
    247: (TI_RESOURCE_ERROR, "Insufficient resources requested (exit 247)"),
    -9: (TI_RESOURCE_ERROR, "Insufficient resources requested (killed by SIGKILL, exit -9)"),
    198: (TI_ERROR_FATAL, "Fatal error: worker node environment failure (exit 198)"),
    199: (TI_ERROR_FATAL, "Fatal error: worker node command-line failure (exit 199)"),
}

SETUP_FAILURE_EXIT = 198  # Jobmon's WORKER_NODE_ENV_FAILURE
ARRAY_MANIFEST_VERSION = 1
KILLED_BEFORE_START_EXIT = 130  # 128 + SIGINT: "interrupted on request", no command ran
ERROR_MESSAGE_CHARS = 10_000  # stderr tail kept for the error message
_TAIL_BYTES = 4 * ERROR_MESSAGE_CHARS  # enough bytes for 10,000 characters of any UTF-8 text
REPORT_BY_BUFFER = 3.1  # next report-by deadline = interval * 3.1 (Jobmon's report_by_buffer)
_READER_JOIN_S = 2.0  # a background process may keep stderr open after the command exits; do not wait on it

# Signals the worker passes on to the command. A group-wide signal reaches the command anyway, so it gets
# these twice; harmless for termination signals. SIGINT/SIGUSR1/SIGUSR2 (Grid Engine's -notify warnings) are
# only logged: they arrive group-wide, and the worker must survive them to report the outcome.
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_SURVIVED_SIGNALS = (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class SetupError(Exception):
    """The worker cannot do its job: bad arguments, unreadable token file, undecodable command."""


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers


def distributor_id_from_env(env: Mapping[str, str]) -> str | None:
    """Grid Engine job id, with ``.task`` for an array element (SGE sets SGE_TASK_ID=undefined otherwise)."""
    job_id = env.get("JOB_ID", "").strip()
    if not job_id:
        return None
    task_id = env.get("SGE_TASK_ID", "").strip()
    if task_id and task_id != "undefined":
        return f"{job_id}.{task_id}"
    return job_id


def classify_exit(exit_status: int) -> tuple[str, str]:
    """TaskInstance state and message for the command's exit status (negative: killed by that signal)."""
    if exit_status == 0:
        return TI_DONE, ""
    if exit_status in EXIT_CLASSES:
        return EXIT_CLASSES[exit_status]
    if exit_status < 0:
        return TI_ERROR, f"Command killed by signal {_signal_name(-exit_status)} (exit {exit_status})"
    return TI_ERROR, f"Command exited with status {exit_status}"


def worker_exit_code(exit_status: int) -> int:
    """The command's exit status in shell convention: 128 + N for death by signal N."""
    return 128 - exit_status if exit_status < 0 else exit_status


def error_message(header: str, stderr_tail: str) -> str:
    """``header`` then the end of stderr, at most ERROR_MESSAGE_CHARS in all (the end is what explains)."""
    if not stderr_tail:
        return header
    if not header:
        return stderr_tail[-ERROR_MESSAGE_CHARS:]
    room = max(ERROR_MESSAGE_CHARS - len(header) - 1, 0)
    return f"{header}\n{stderr_tail[-room:]}" if room else header


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ---------------------------------------------------------------------------------------------------------------
# The State Manager client


@dataclass
class Reply:
    """Result of one State Manager call, after retries: ``ok`` with the JSON reply, or the last error."""

    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would resend the Authorization header to wherever a redirect points, and turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class StateManagerClient:
    """POSTs to ``{url}/api/state/task_instance/{id}/{action}`` with the bearer token."""

    def __init__(self, url: str, token: str, task_instance_id: int, timeout: float, retry_seconds: float):
        self._base = f"{url.rstrip('/')}/api/state/task_instance/{task_instance_id}"
        self._token = token
        self._timeout = timeout
        self._retry_seconds = retry_seconds
        self._opener = urllib.request.build_opener(_NoRedirect)

    def post(self, action: str, body: dict[str, Any], *, retry: bool) -> Reply:
        """One call; with ``retry``, connection failures, timeouts, 429 and 5xx are retried with backoff.

        Worst case duration: retry_seconds + timeout. Other 4xx are final: the server understood and refused.
        """
        request = urllib.request.Request(
            f"{self._base}/{action}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
        )
        deadline = time.monotonic() + (self._retry_seconds if retry else 0.0)
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._opener.open(request, timeout=self._timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code} {exc.reason}: {_body_excerpt(exc)}"
                if 300 <= exc.code < 500 and exc.code != 429:
                    log.warning("%s failed, not retried: %s", action, error)
                    return Reply(ok=False, error=error)
            except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout, bad reply
                cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                error = f"{type(cause).__name__}: {cause}"
            except ValueError as exc:  # a malformed URL: retrying cannot help
                log.warning("%s failed, not retried: %s", action, exc)
                return Reply(ok=False, error=f"{type(exc).__name__}: {exc}")
            else:
                return Reply(ok=True, data=_json_object(raw, action))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("%s failed after %d attempt(s), giving up: %s", action, attempt, error)
                return Reply(ok=False, error=error)
            log.warning("%s attempt %d failed (%s); retrying", action, attempt, error)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 8.0)


def _body_excerpt(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read(300).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _json_object(raw: bytes, action: str) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("%s: reply is not a JSON object: %r", action, raw[:200])
        return {}
    return data


# ---------------------------------------------------------------------------------------------------------------
# Exit record


def write_exit_record(path: str, record: dict[str, Any]) -> bool:
    """Write ``record`` as JSON atomically (temp file in the same directory, fsync, rename); False on failure."""
    try:
        _write_atomically(path, json.dumps(record, indent=1))
    except OSError as exc:
        log.error("cannot write exit record %s: %s", path, exc)
        return False
    return True


def _write_atomically(path: str, text: str) -> None:
    """Temp file in the same directory, fsync, rename, fsync of the directory; OSError when it cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; not every file system lets a directory be opened
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------------------
# Array manifest (format in the module docstring)


class ArrayElement(NamedTuple):
    """One task instance of an array batch, as the operator gives it to ``write_array_manifest``."""

    task_instance_id: int
    command: str  # the shell command in clear; the manifest stores it base64-encoded
    exit_record: str | os.PathLike[str]


def write_array_manifest(
    path: str | os.PathLike[str],
    token_file: str | os.PathLike[str],
    elements: Iterable[tuple[int, str, str | os.PathLike[str]]],
) -> None:
    """Write the manifest of one array batch atomically; ``elements`` in order, the first is ``SGE_TASK_ID`` 1.

    Each element is an ``ArrayElement`` or a plain ``(task_instance_id, command, exit_record)`` tuple. Paths
    must be absolute: the job does not start in the operator's directory. ValueError on a bad element, OSError
    when the file cannot be written.
    """
    token_path = os.fspath(token_file)
    if not os.path.isabs(token_path):
        raise ValueError(f"token_file must be an absolute path, got {token_path!r}")
    lines: list[str] = []
    seen: set[int] = set()
    for number, (ti_id, command, exit_record) in enumerate(elements, start=1):
        record_path = os.fspath(exit_record)
        if not isinstance(ti_id, int) or isinstance(ti_id, bool) or ti_id in seen:
            raise ValueError(f"element {number}: task_instance_id must be a unique int, got {ti_id!r}")
        if not isinstance(command, str):
            raise ValueError(f"element {number}: command must be a str, got {type(command).__name__}")
        if not os.path.isabs(record_path):
            raise ValueError(f"element {number}: exit_record must be an absolute path, got {record_path!r}")
        seen.add(ti_id)
        command_b64 = base64.b64encode(command.encode()).decode()
        lines.append(json.dumps({"task_instance_id": ti_id, "command_b64": command_b64, "exit_record": record_path}))
    if not lines:
        raise ValueError("an array manifest needs at least one element")
    header = f'{{"version": {ARRAY_MANIFEST_VERSION}, "token_file": {json.dumps(token_path)}, "elements": [\n'
    _write_atomically(os.fspath(path), header + ",\n".join(lines) + "\n]}\n")


@dataclass(frozen=True)
class ArrayTask:
    """This array element's task instance, read from the manifest."""

    number: int  # SGE_TASK_ID, 1-based
    count: int  # elements in the manifest
    task_instance_id: int
    token_file: str
    exit_record: str
    command_b64: str


def array_task_number(env: Mapping[str, str]) -> int:
    """This element's 1-based number from ``SGE_TASK_ID``; SetupError when the job is not an array element."""
    text = env.get("SGE_TASK_ID")
    if text is None:
        raise SetupError("SGE_TASK_ID is not set: --array-manifest needs an array job (qsub -t 1-N)")
    text = text.strip()
    if text == "undefined":
        raise SetupError("SGE_TASK_ID is 'undefined': --array-manifest needs an array job (qsub -t 1-N)")
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise SetupError(f"SGE_TASK_ID must be a positive integer, got {text!r}")
    return int(text)


def load_array_task(path: str, element: int) -> ArrayTask:
    """Element ``element`` (1-based) of the manifest at ``path``; SetupError naming what is wrong.

    One ``json.load`` whose hook drops every element but this one as soon as it is decoded, so memory stays at
    the file's text plus one element. The hook only decides what is kept: the element is then taken by its
    position in the list, so a miscount (a malformed element) gives an error, never another element.
    """
    decoded = 0
    kept: dict[str, Any] | None = None

    def keep_only_ours(obj: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal decoded, kept
        if "task_instance_id" not in obj:
            return obj  # the top-level object, or a malformed element (then caught below by its position)
        decoded += 1
        if decoded != element:
            return None
        kept = obj
        return obj

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh, object_hook=keep_only_ours)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SetupError(f"cannot read array manifest {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != ARRAY_MANIFEST_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise SetupError(f"array manifest {path}: version {version!r}, this worker reads {ARRAY_MANIFEST_VERSION}")
    elements, token_file = data.get("elements"), data.get("token_file")
    if not isinstance(elements, list) or not isinstance(token_file, str) or not token_file:
        raise SetupError(f"array manifest {path}: needs a list 'elements' and a string 'token_file'")
    if element > len(elements):
        raise SetupError(f"SGE_TASK_ID {element} is out of range: array manifest {path} has {len(elements)} elements")
    entry = kept
    if entry is None or elements[element - 1] is not entry:
        raise SetupError(f"array manifest {path}: element {element}, or one before it, has no 'task_instance_id'")
    ti_id, command_b64, exit_record = entry.get("task_instance_id"), entry.get("command_b64"), entry.get("exit_record")
    if not (type(ti_id) is int and isinstance(command_b64, str) and isinstance(exit_record, str) and exit_record):
        raise SetupError(
            f"array manifest {path}: element {element} needs an int 'task_instance_id' and strings 'command_b64' "
            f"and 'exit_record', got {entry!r:.300}"
        )
    return ArrayTask(element, len(elements), ti_id, token_file, exit_record, command_b64)


def _reset_peak_rss() -> None:
    """Make the current RSS the peak again (Linux >= 4.0), forgetting the manifest's transient memory.

    A child's max RSS starts from its parent's peak at fork/exec, so without this the manifest's text would be
    counted in the max RSS reported for the command.
    """
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


# ---------------------------------------------------------------------------------------------------------------
# The command's process tree


def _proc_table() -> dict[int, tuple[int, str]] | None:
    """pid -> (ppid, start time) of live processes from /proc (zombies left out); None without /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    table: dict[int, tuple[int, str]] = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
        except OSError:
            continue  # exited meanwhile
        # The command name (field 2) may hold spaces and parentheses; the fields after its last ")" are fixed.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 19 and fields[0] not in ("Z", "X"):
            table[int(name)] = (int(fields[1]), fields[19])
    return table


class CommandTree:
    """Signals a command and all its descendants, including ones orphaned since they were first seen."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self._proc = proc
        self._seen: dict[int, str] = {}  # pid -> start time, so a reused pid is never signalled

    def alive(self) -> dict[int, str]:
        table = _proc_table()
        if table is None:
            return {}
        found = {pid: start for pid, start in self._seen.items() if table.get(pid, (0, ""))[1] == start}
        if self._proc.poll() is None and self._proc.pid in table:
            children: dict[int, list[int]] = {}
            for pid, (ppid, _) in table.items():
                children.setdefault(ppid, []).append(pid)
            stack = [self._proc.pid]
            while stack:
                pid = stack.pop()
                found[pid] = table[pid][1]
                stack.extend(children.get(pid, ()))
        self._seen.update(found)
        return found

    def signal(self, signum: int) -> None:
        pids = self.alive()
        if not pids and self._proc.poll() is None:  # no /proc: the command's shell is all we can reach
            pids = {self._proc.pid: ""}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def wait_gone(self, deadline: float) -> bool:
        """Wait until the command and every descendant have exited, or ``deadline`` (monotonic) passes."""
        while True:
            if self._proc.poll() is not None and not self.alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


class StderrTail(threading.Thread):
    """Copies the command's stderr to the worker's (the job's .e file) and keeps its last bytes."""

    def __init__(self, fd: int):
        super().__init__(name="stderr-tail", daemon=True)
        self._fd = fd
        self._buf = bytearray()
        self._lock = threading.Lock()

    def run(self) -> None:
        while chunk := os.read(self._fd, 65536):
            try:
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
            except (OSError, ValueError):
                pass  # our own stderr is gone; keep collecting the tail anyway
            with self._lock:
                self._buf += chunk
                del self._buf[:-_TAIL_BYTES]

    def text(self) -> str:
        with self._lock:
            data = bytes(self._buf)
        return data.decode("utf-8", "replace")[-ERROR_MESSAGE_CHARS:]


# ---------------------------------------------------------------------------------------------------------------
# The worker


@dataclass
class Outcome:
    """How the task instance ended on this node: what goes into the exit record and the final report."""

    status: str
    exit_status: int | None
    error_message: str
    worker_exit: int
    usage: dict[str, float | int] = field(default_factory=lambda: _child_usage(None))


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
        if reply.data.get("status") == TI_KILL_SELF:
            log.info("kill requested before start; the command is not run")
            return self.finish(Outcome(TI_ERROR_FATAL, None, "killed before start", KILLED_BEFORE_START_EXIT))

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

        if killed:
            status, header = TI_ERROR_FATAL, "killed by request (KILL_SELF)"
        else:
            status, header = classify_exit(exit_status)
            if status == TI_ERROR and stderr_tail:
                header = ""  # a plain error explains itself through stderr
        return Outcome(
            status=status,
            exit_status=exit_status,
            error_message="" if status == TI_DONE else error_message(header, stderr_tail),
            worker_exit=worker_exit_code(exit_status),
            usage=_child_usage(wallclock),
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
            if reply.ok and reply.data.get("status") == TI_KILL_SELF:
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
            log.info("received %s; passing it to the command", _signal_name(signum))
            if self.tree is not None:
                self.tree.signal(signum)

        def survive(signum: int, _frame: object) -> None:
            log.info("received %s; still waiting for the command", _signal_name(signum))

        for signum in _FORWARDED_SIGNALS:
            signal.signal(signum, forward)
        for signum in _SURVIVED_SIGNALS:
            signal.signal(signum, survive)

    def finish(self, outcome: Outcome) -> int:
        """Exit record first (it must exist even if reporting fails), then the report, then the record again."""
        record: dict[str, Any] = {
            "task_instance_id": self.ti_id,
            "distributor_id": self.distributor_id,
            "status": outcome.status,
            "exit_status": outcome.exit_status,
            "error_message": outcome.error_message,
            "nodename": self.nodename,
            "usage": outcome.usage,
            "started_at": self.started_at,
            "finished_at": time.time(),
            "reported": False,
        }
        log.info(
            "outcome %s, exit status %s, wallclock %.1f s, max RSS %d bytes",
            outcome.status,
            outcome.exit_status,
            outcome.usage["wallclock_s"],
            outcome.usage["maxrss_bytes"],
        )
        write_exit_record(self.args.exit_record, record)
        if self.client is None:
            log.error("no token, so the outcome is not reported; it is in %s", self.args.exit_record)
            return outcome.worker_exit

        body: dict[str, Any] = {"nodename": self.nodename, "exit_status": outcome.exit_status, "usage": outcome.usage}
        if outcome.status == TI_DONE:
            action = "log_done"
        else:
            action = "log_error"
            body.update(error_state=outcome.status, error_message=outcome.error_message)
        reply = self.client.post(action, body, retry=True)
        if reply.ok:
            record["reported"] = True
            log.info("%s reported", action)
        else:
            record["report_error"] = f"{action}: {reply.error}"
            log.error("%s not reported; the outcome is in %s", action, self.args.exit_record)
        write_exit_record(self.args.exit_record, record)
        return outcome.worker_exit


def setup_failure(message: str) -> Outcome:
    log.error("set-up failure: %s", message)
    return Outcome(TI_ERROR_FATAL, SETUP_FAILURE_EXIT, f"worker node set-up failure: {message}", SETUP_FAILURE_EXIT)


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


def _child_usage(wallclock: float | None) -> dict[str, float | int]:
    """Usage of the command, once waited for; zeros (``wallclock`` None) when no command ran.

    Linux counts the RSS of the worker at the command's fork/exec in the children's max RSS, so a tiny command
    shows the worker's RSS (about 20 MB); for real tasks the command's own peak dominates.
    """
    if wallclock is None:
        return {"maxrss_bytes": 0, "wallclock_s": 0.0, "cpu_s": 0.0}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "maxrss_bytes": usage.ru_maxrss * 1024,  # Linux reports kilobytes
        "wallclock_s": round(wallclock, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


# ---------------------------------------------------------------------------------------------------------------
# Command line


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
    """Find this element's task instance in the manifest, then run it exactly as a single task."""
    _configure_logging(f"ti=? job={job} host={host}")
    try:
        task = load_array_task(args.array_manifest, array_task_number(os.environ))
    except SetupError as exc:
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
        with contextlib.suppress(SetupError):
            task = load_array_task(manifest, array_task_number(os.environ))
            ti, exit_record = task.task_instance_id, task.exit_record
    _configure_logging(f"ti={ti} job={job} host={host}")
    outcome = setup_failure(f"bad arguments: {message}")
    if exit_record:
        write_exit_record(
            exit_record,
            {
                "task_instance_id": int(ti) if isinstance(ti, str) and ti.isdigit() else ti,
                "distributor_id": job,
                "status": outcome.status,
                "exit_status": outcome.exit_status,
                "error_message": outcome.error_message,
                "nodename": host,
                "usage": outcome.usage,
                "started_at": time.time(),
                "finished_at": time.time(),
                "reported": False,
            },
        )
    return outcome.worker_exit


if __name__ == "__main__":
    sys.exit(main())
