"""What every benchmark shares: the environment (set before Airflow is imported), the machine description,
MariaDB scratch databases, counting Grid Engine commands, and writing results."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Results always go to the checkout the command was started from, also when the code under test is a pinned copy.
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or ROOT / "benchmarks" / "results")
PY = sys.executable
SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}
MARIADB = {"host": "127.0.0.1", "port": 3306, "login": "jobmon", "password": "jobmon"}
GE_COMMANDS = ("qsub", "qstat", "qacct", "qdel", "qconf", "qmod")


def prepare_environment(home: Path | None = None) -> Path:
    """Airflow reads its configuration at import: call this before anything imports airflow."""
    home = home or Path(tempfile.mkdtemp(prefix="jobmon-bench-"))
    for key, value in SGE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["AIRFLOW_HOME"] = str(home / "airflow")
    os.environ["JOBMON_AIRFLOW_HOME"] = str(home / "jobmon")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(home / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
    (home / "dags").mkdir(parents=True, exist_ok=True)
    return home


def mariadb_url(database: str) -> str:
    m = MARIADB
    return f"mysql+pymysql://{m['login']}:{m['password']}@{m['host']}:{m['port']}/{database}"


def fresh_database(name: str) -> str:
    """Drop and create ``name`` (must be ``jobmon_test_*``); its SQLAlchemy URL."""
    import sqlalchemy as sa

    assert re.fullmatch(r"jobmon_test_[a-z0-9_]+", name), name
    admin = sa.create_engine(mariadb_url(""))
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    admin.dispose()
    return mariadb_url(name)


def drop_database(name: str) -> None:
    import sqlalchemy as sa

    assert name.startswith("jobmon_test_"), name
    admin = sa.create_engine(mariadb_url(""))
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


def set_connections(database: str, log_dir: Path, poll_interval: float = 1.0) -> dict[str, str]:
    """The connections a deployment has (as the integration tests set them): jobmon → MySQL conn → MariaDB."""
    env = {
        "AIRFLOW_CONN_JOBMON_MARIADB": json.dumps({"conn_type": "mysql", **MARIADB, "schema": database}),
        "AIRFLOW_CONN_JOBMON_DEFAULT": json.dumps(
            {"conn_type": "jobmon", "extra": {"mysql_conn_id": "jobmon_mariadb", "cluster": "gridengine"}}
        ),
        "AIRFLOW_CONN_GRIDENGINE_DEFAULT": json.dumps(
            {"conn_type": "gridengine", "extra": {"log_dir": str(log_dir), "poll_interval": poll_interval}}
        ),
    }
    os.environ.update(env)
    return env


# -- machine ---------------------------------------------------------------------------------------------------


def _cmd(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
        return (proc.stdout or proc.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def sge_jobs_of_others() -> int:
    """Jobs in qstat (all users): other engineers' load on the shared cluster."""
    out = _cmd(["qstat", "-u", "*"])
    return max(0, len([line for line in out.splitlines()[2:] if line.strip()]))


def code_under_test() -> dict[str, Any]:
    """Which jobmon_airflow was measured: the pinned commit, or the checkout's HEAD plus its uncommitted files
    (others edit the library while benchmarks run)."""
    import jobmon_airflow

    tree = Path(jobmon_airflow.__file__).resolve().parents[1]
    pinned = os.environ.get("BENCH_CODE_COMMIT")
    if pinned:
        return {"jobmon_airflow_from": str(tree), "commit": pinned, "pinned_copy": True}
    head = _cmd(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"])
    dirty = _cmd(["git", "-C", str(tree), "status", "--porcelain", "--", "jobmon_airflow"]).splitlines()
    return {"jobmon_airflow_from": str(tree), "commit": head, "pinned_copy": False, "uncommitted": dirty}


def machine(code: dict[str, Any] | None = None) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line)
    try:
        import airflow

        airflow_version = airflow.__version__
    except Exception as exc:  # reported, not fatal
        airflow_version = f"unavailable ({exc})"
    import sqlalchemy

    sge = _cmd(["qstat", "-help"]).splitlines()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "cpu_model": cpu,
        "load_average": load_average(),
        "sge_version": sge[0] if sge else "unknown",
        "sge_slots": _cmd(["qconf", "-sq", "all.q"]).split("slots", 1)[-1].split("\n", 1)[0].strip(),
        "mariadb_version": _cmd(["mysql", "-N", "-ujobmon", "-pjobmon", "-h127.0.0.1", "-e", "SELECT VERSION()"]),
        "airflow_version": airflow_version,
        "sqlalchemy_version": sqlalchemy.__version__,
        "python": platform.python_version(),
        "sge_jobs_listed_at_start": sge_jobs_of_others(),
        "code": code or code_under_test(),
    }


# -- counting Grid Engine commands ---------------------------------------------------------------------------------


class CommandCounter:
    """Counts the commands ``GridEngineCluster._run`` issues (patched on the class: every instance counts)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._real: Any = None

    def __enter__(self) -> CommandCounter:
        from jobmon_airflow.clusters.gridengine import GridEngineCluster

        self._real = GridEngineCluster._run
        real, counter = self._real, self

        def counting_run(cluster: Any, argv: Sequence[str], *args: Any, **kwargs: Any) -> Any:
            name = os.path.basename(argv[0])
            with counter._lock:
                counter.counts[name] += 1
                counter.times.setdefault(name, []).append(time.monotonic())
            t = time.perf_counter()
            try:
                return real(cluster, argv, *args, **kwargs)
            finally:
                with counter._lock:
                    counter.seconds[name] = counter.seconds.get(name, 0.0) + time.perf_counter() - t

        GridEngineCluster._run = counting_run  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        from jobmon_airflow.clusters.gridengine import GridEngineCluster

        GridEngineCluster._run = self._real  # type: ignore[method-assign]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: self.counts.get(k, 0) for k in GE_COMMANDS}

    def seconds_snapshot(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 2) for k, v in self.seconds.items()}


class RawCommands:
    """Runs Grid Engine commands for a baseline and counts them the same way."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def run(self, argv: Sequence[str], check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.counts[os.path.basename(argv[0])] += 1
        return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kwargs)

    def snapshot(self) -> dict[str, int]:
        return {k: self.counts.get(k, 0) for k in GE_COMMANDS}


SHIM = """#!/bin/sh
echo "{name} $$ $(date +%s.%N)" >> {log}
exec {real} "$@"
"""


def make_shim(directory: Path, log: Path) -> Path:
    """A PATH shim: qsub/qstat/qacct/qdel/qconf/qmod wrappers that append a line to ``log`` and exec the real one."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in GE_COMMANDS:
        real = shutil.which(name)
        if real is None:
            continue
        path = directory / name
        path.write_text(SHIM.format(name=name, log=log, real=real))
        path.chmod(0o755)
    log.touch()
    return directory


def shim_counts(log: Path, start_line: int = 0) -> tuple[dict[str, int], int]:
    lines = log.read_text().splitlines()
    c = Counter(line.split()[0] for line in lines[start_line:] if line.strip())
    return {k: c.get(k, 0) for k in GE_COMMANDS}, len(lines)


# -- cluster helpers ----------------------------------------------------------------------------------------------


def listed_job_ids(raw: RawCommands | None = None) -> set[str]:
    argv = ["qstat", "-u", "*"]
    out = raw.run(argv).stdout if raw else _cmd(argv)
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


@contextmanager
def queue_disabled(queue: str = "all.q") -> Iterator[None]:
    subprocess.run(["qmod", "-d", queue], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["qmod", "-e", queue], check=True, capture_output=True)


@contextmanager
def bench_queue(name: str, slots: int, like: str = "all.q") -> Iterator[str]:
    """A cluster queue for one benchmark, on the same hosts as ``like`` but with ``slots`` slots and no parallel
    environment; deleted afterwards. Oversubscribing a 2-core host is what makes 10,000 trivial jobs feasible: Grid
    Engine starts a job ~2 s after the previous one in that slot ended, whatever the job does."""
    conf = subprocess.run(["qconf", "-sq", like], capture_output=True, text=True, check=True).stdout
    lines = []
    for line in conf.replace("\\\n", " ").splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() else ""
        value = {"qname": name, "slots": str(slots), "pe_list": "NONE"}.get(key)
        lines.append(f"{key} {value}" if value is not None else line)
    subprocess.run(["qconf", "-dq", name], capture_output=True)  # left over from an interrupted run
    with tempfile.NamedTemporaryFile("w", suffix=".q") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        subprocess.run(["qconf", "-Aq", f.name], capture_output=True, text=True, check=True)
    try:
        yield name
    finally:
        subprocess.run(["qconf", "-dq", name], capture_output=True)


# -- results ------------------------------------------------------------------------------------------------------


def write_result(name: str, result: dict[str, Any], started: float, code: dict[str, Any] | None = None) -> Path:
    """``code``: what :func:`code_under_test` said when the run started (a long run outlives commits)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(code),
        "load_average_end": load_average(),
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_jobs_named(prefix: str) -> int:
    """qdel every listed job whose name starts with ``prefix`` (clean-up after an interrupted run)."""
    out = _cmd(["qstat", "-u", "*"])
    ids = sorted(
        {
            line.split()[0]
            for line in out.splitlines()[2:]
            if len(line.split()) > 2 and line.split()[2].startswith(prefix[:10])
        }
    )
    if ids:
        subprocess.run(["qdel", *ids], capture_output=True)
    return len(ids)


def init_airflow_db() -> None:
    from airflow.utils import db as airflow_db

    airflow_db.initdb()


def run_dag(dag: Any) -> Any:
    """``dag.test()`` for a DAG built in this process (serialised to the metadata DB first), as the tests do."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()


@contextmanager
def state_manager(db_url: str) -> Iterator[str]:
    """The standalone Jobmon State Manager in a thread of this process; its URL exported to the operators."""
    from jobmon_airflow.server.app import start_in_thread

    port = free_port()
    server = start_in_thread(port, db_url)
    url = f"http://127.0.0.1:{port}/jobmon"
    os.environ["JOBMON_AIRFLOW_STATE_MANAGER_URL"] = url
    try:
        yield url
    finally:
        server.should_exit = True
