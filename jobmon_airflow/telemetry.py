"""Jobmon's metrics, through the Prometheus client (``prometheus_client``).

Every process that does Jobmon work counts here: the State Manager (reports, heartbeats), operators and triggers in
Airflow's workers and triggerers (submissions, cluster calls, transitions they write). Processes are many and short
lived (each Airflow task is one), so when ``PROMETHEUS_MULTIPROC_DIR`` is set the client keeps each process's values
in that directory and :func:`exposition` serves their sum, including processes that have ended or were killed;
without it each process exposes only its own values. The State Manager serves :func:`exposition` at
``/jobmon/metrics`` (bearer token, see ``server/metrics.py``).

Counts of database writes are taken when the transaction commits (:func:`count_transitions`): a write rolled back
(a lock timeout retried, an illegal transition) is not counted, so the counters agree with the state database.

Metric names (``_total`` is added to counters by the exposition format):

================================== ========= ==================================================================
``jobmon_submissions``             counter   task instances given a cluster job id (I→O; an array element is one)
``jobmon_transitions``             counter   committed state transitions, labels ``machine``, ``status`` (new)
``jobmon_resource_kills``          counter   task instances that ended killed for memory or runtime (→ Z)
``jobmon_heartbeats``              counter   heartbeats the State Manager answered 2xx (``log_report_by``)
``jobmon_report_seconds``          histogram State Manager request time, label ``route`` (ids replaced by ``{id}``)
``jobmon_cluster_command_seconds`` histogram cluster command time, labels ``cluster``, ``command`` (qsub, qstat...)
``jobmon_cluster_command_errors``  counter   cluster commands that raised or exited non-zero, same labels
``jobmon_queue_wait_seconds``      histogram submission to the worker's ``log_running``
================================== ========= ==================================================================

Airflow's own metrics go out as StatsD (UDP); :class:`StatsdBridge` turns them into Prometheus metrics beside
these (``python -m jobmon_airflow.telemetry --statsd HOST:PORT --listen HOST:PORT``, see :func:`main`).
"""

from __future__ import annotations

import argparse
import hmac
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlalchemy import event
from sqlalchemy.orm import Session

T = TypeVar("T")

# Status letters of the task instance machine this module names (kept here: telemetry sits below nothing but the
# standard library and the client; the letters are states.TaskInstanceStatus.LAUNCHED and RESOURCE_ERROR).
_TASK_INSTANCE = "task_instance"
_LAUNCHED = "O"
_RESOURCE_ERROR = "Z"
_PENDING_KEY = "jobmon_telemetry_pending"

SUBMISSIONS = Counter("jobmon_submissions", "Task instances given a cluster job id (an array element counts one)")
TRANSITIONS = Counter("jobmon_transitions", "Committed state transitions", ["machine", "status"])
RESOURCE_KILLS = Counter("jobmon_resource_kills", "Task instances that ended killed for memory or runtime")
HEARTBEATS = Counter("jobmon_heartbeats", "Heartbeats the State Manager accepted")
REPORT_SECONDS = Histogram(
    "jobmon_report_seconds",
    "State Manager request handling time",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CLUSTER_SECONDS = Histogram(
    "jobmon_cluster_command_seconds",
    "Cluster command time",
    ["cluster", "command"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CLUSTER_ERRORS = Counter(
    "jobmon_cluster_command_errors", "Cluster commands that raised or exited non-zero", ["cluster", "command"]
)
QUEUE_WAIT = Histogram(
    "jobmon_queue_wait_seconds",
    "Submission to running",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)


def multiprocess_dir() -> str | None:
    """The directory the values of every process go to, when the deployment set one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format and its content type: the sum over every process writing to the
    multiprocess directory when there is one, else this process's own."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# -- counts taken at commit


def _pending(session: Session) -> dict[tuple[str, str], int]:
    pending: dict[tuple[str, str], int] | None = session.info.get(_PENDING_KEY)
    if pending is None:  # first count in this session: listen to its transactions' ends (for its lifetime)
        pending = session.info[_PENDING_KEY] = {}
        event.listen(session, "after_commit", _flush)
        event.listen(session, "after_rollback", _discard)
    return pending


def _flush(session: Session) -> None:
    pending: dict[tuple[str, str], int] = session.info.get(_PENDING_KEY) or {}
    for (machine, status), n in pending.items():
        record_transitions(machine, status, n)
    pending.clear()


def _discard(session: Session) -> None:
    pending: dict[tuple[str, str], int] = session.info.get(_PENDING_KEY) or {}
    pending.clear()


def count_transitions(session: Session, machine: str, status: str, n: int) -> None:
    """``n`` rows of ``machine`` moved to ``status`` in ``session``'s transaction: counted when it commits."""
    if n > 0:
        key = (machine, status)
        pending = _pending(session)
        pending[key] = pending.get(key, 0) + n


def record_transitions(machine: str, status: str, n: int) -> None:
    """Committed transitions; submissions and resource kills are the task instance's I→O and →Z."""
    TRANSITIONS.labels(machine=machine, status=status).inc(n)
    if machine == _TASK_INSTANCE and status == _LAUNCHED:
        SUBMISSIONS.inc(n)
    elif machine == _TASK_INSTANCE and status == _RESOURCE_ERROR:
        RESOURCE_KILLS.inc(n)


def queue_wait(submitted: datetime | None, now: datetime | None = None) -> None:
    """A worker started: the time since its submission (naive datetimes are UTC, as the state database keeps)."""
    if submitted is None:
        return
    now = now or datetime.now(UTC)
    if submitted.tzinfo is None:
        submitted = submitted.replace(tzinfo=UTC)
    QUEUE_WAIT.observe(max(0.0, (now - submitted).total_seconds()))


# -- timings


def timed_command(cluster: str, command: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` (a cluster command), timed; an exception or a non-zero ``returncode`` counts as
    an error of ``command``."""
    started = time.monotonic()
    failed = True
    try:
        result = call(*args, **kwargs)
        failed = getattr(result, "returncode", 0) != 0
        return result
    finally:
        CLUSTER_SECONDS.labels(cluster=cluster, command=command).observe(time.monotonic() - started)
        if failed:
            CLUSTER_ERRORS.labels(cluster=cluster, command=command).inc()


def report_done(route: str, status_code: int, seconds: float) -> None:
    """A State Manager request ended; a 2xx heartbeat counts as a heartbeat."""
    REPORT_SECONDS.labels(route=route).observe(seconds)
    if route.endswith("/log_report_by") and 200 <= status_code < 300:
        HEARTBEATS.inc()


# -- Airflow's StatsD metrics, bridged to Prometheus

STATSD_MAX_NAMES = 5000  # Airflow names metrics after DAGs and tasks: bounded, the rest dropped and counted
STATSD_MAX_PACKET = 65535
_STATSD_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_STATSD_TIMERS = ("ms", "h", "d")


class StatsdBridge:
    """StatsD lines (``name:value|type[|@rate][|#tags]``) as a Prometheus collector.

    Counters (``c``, scaled by the sample rate) become counters (``<name>_total``), gauges (``g``; ``+n``/``-n``
    change the value) gauges, timers (``ms``, ``h``, ``d``) summaries in seconds (``_count``, ``_sum``). Names:
    every character Prometheus does not allow becomes ``_`` (``airflow.scheduler_heartbeat`` →
    ``airflow_scheduler_heartbeat``); tags are ignored. A malformed line, a name used with two types and any name
    beyond :data:`STATSD_MAX_NAMES` are dropped and counted in ``statsd_bridge_dropped_total``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, float, float]] = {}  # name -> (type, value or count, timer sum)
        self.dropped = 0
        self.received = 0  # packets

    def ingest(self, packet: bytes) -> None:
        for line in packet[:STATSD_MAX_PACKET].decode("utf-8", "replace").splitlines():
            if line.strip() and not self._line(line.strip()):
                with self._lock:
                    self.dropped += 1
        with self._lock:
            self.received += 1

    def _line(self, line: str) -> bool:
        name, _, rest = line.partition(":")
        fields = rest.split("|")
        key = _STATSD_BAD.sub("_", name)
        if not key or key[0].isdigit() or len(fields) < 2 or not fields[0]:
            return False
        raw, kind = fields[0], "t" if fields[1] in _STATSD_TIMERS else fields[1]
        try:
            number = float(raw)
            rate = next((float(f[1:]) for f in fields[2:] if f.startswith("@")), 1.0)
        except ValueError:
            return False
        if kind not in ("c", "g", "t") or not (math.isfinite(number) and 0 < rate <= 1):
            return False
        with self._lock:
            old = self._values.get(key)
            if (old is None and len(self._values) >= STATSD_MAX_NAMES) or (old is not None and old[0] != kind):
                return False
            _, value, total = old or (kind, 0.0, 0.0)
            if kind == "c":
                value += number / rate
            elif kind == "g":
                value = value + number if raw[0] in "+-" else number
            else:
                value, total = value + 1 / rate, total + number / 1000 / rate
            self._values[key] = (kind, value, total)
        return True

    def describe(self) -> Iterable[Metric]:
        return []  # names come and go with Airflow's DAGs: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            values, dropped = dict(self._values), self.dropped
        for name, (kind, value, total) in sorted(values.items()):
            if kind == "c":
                yield CounterMetricFamily(name, "StatsD counter", value=value)
            elif kind == "g":
                yield GaugeMetricFamily(name, "StatsD gauge", value=value)
            else:
                yield SummaryMetricFamily(name, "StatsD timer (seconds)", count_value=round(value), sum_value=total)
        yield CounterMetricFamily("statsd_bridge_dropped", "StatsD lines dropped (malformed, too many names)", dropped)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape every few seconds would drown the log."""


def _bearer(app: Callable[..., Iterable[bytes]], token_file: Path) -> Callable[..., Iterable[bytes]]:
    """``app`` behind a bearer token read from ``token_file`` on each request (as the State Manager's route)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            token = token_file.read_text(errors="replace")[:4096].strip()
        except OSError:
            token = ""
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if not token or not hmac.compare_digest(given, f"Bearer {token}".encode()):
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"a bearer token is needed\n"]
        return app(environ, start_response)

    return guarded


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def serve_statsd(
    statsd: tuple[str, int], listen: tuple[str, int], token_file: Path, bridge: StatsdBridge | None = None
) -> tuple[socket.socket, Any]:
    """Listen for StatsD on UDP ``statsd`` and serve the metrics on HTTP ``listen`` (bearer token), each in a
    daemon thread; the bound socket and HTTP server (for their ports, and to close them)."""
    bridge = bridge or StatsdBridge()
    registry = CollectorRegistry()
    registry.register(bridge)
    http = make_server(*listen, _bearer(make_wsgi_app(registry), token_file), handler_class=_QuietHandler)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(statsd)

    def receive() -> None:
        while True:
            try:
                bridge.ingest(udp.recv(STATSD_MAX_PACKET))
            except OSError:  # closed
                return

    threading.Thread(target=receive, name="statsd-udp", daemon=True).start()
    threading.Thread(target=http.serve_forever, name="statsd-http", daemon=True).start()
    return udp, http


def main(argv: list[str] | None = None) -> int:
    """The StatsD bridge as a process: ``--statsd`` (UDP) in, ``--listen`` (HTTP, bearer token from
    ``--token-file`` or ``$JOBMON_AIRFLOW_METRICS_TOKEN_FILE``) out."""
    parser = argparse.ArgumentParser(prog="python -m jobmon_airflow.telemetry", description=main.__doc__)
    parser.add_argument("--statsd", type=_address, default=("127.0.0.1", 8125))
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 9102))
    parser.add_argument("--token-file", type=Path, default=os.environ.get("JOBMON_AIRFLOW_METRICS_TOKEN_FILE"))
    args = parser.parse_args(argv)
    if args.token_file is None:
        parser.error("--token-file or $JOBMON_AIRFLOW_METRICS_TOKEN_FILE is needed")
    serve_statsd(args.statsd, args.listen, args.token_file)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
