"""Faults for the chaos suite: stopping and starting this host's Grid Engine daemons and MariaDB server (as
``scripts/setup_services.sh`` starts them: root, no systemd), and reading what Grid Engine's accounting says a job
did. Every ``stop_*`` has its ``start_*``, which waits until the service answers again; :func:`restore_services`
brings everything back (call it in ``finally``).

Facts behind each step: ``shared/reference/gridengine.md`` §3 (daemons, pidfiles, zombies) and
``scripts/setup_services.sh`` (how the daemons and MariaDB are started).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.airflow_services import wait_for

SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}
SGE_SPOOL = Path("/var/spool/gridengine")
QMASTER_PIDFILE = SGE_SPOOL / "qmaster" / "qmaster.pid"
QUEUE = "all.q"
DAEMON_LOG = Path("/var/log/jobmon-chaos-daemons.log")


def _env() -> dict[str, str]:
    return {**os.environ, **SGE_ENV}


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env(), stdin=subprocess.DEVNULL)


def _ok(argv: list[str], timeout: float = 20) -> bool:
    try:
        return _run(argv, timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# -- daemons ---------------------------------------------------------------------------------------------------------


def pid_alive(pidfile: Path, comm: str) -> int | None:
    """The daemon's pid when its pidfile names a live, non-zombie process called ``comm`` (PID 1 here may not
    reap orphans: a stopped daemon can linger as <defunct>)."""
    try:
        pid = int(pidfile.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() != comm:
            return None
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return None
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return None if state == "Z" else pid


def execd_pidfile() -> Path:
    """``<spool>/execd/<host>/execd.pid`` (the execd's spool directory is named after the host)."""
    candidates = [SGE_SPOOL / "execd" / socket.gethostname() / "execd.pid", *SGE_SPOOL.glob("execd/*/execd.pid")]
    return next((p for p in candidates if p.exists()), candidates[0])


def _stop(pidfile: Path, comm: str, sig: signal.Signals, timeout: float = 30) -> int:
    pid = pid_alive(pidfile, comm)
    assert pid is not None, f"{comm} is not running (pidfile {pidfile})"
    os.kill(pid, sig)
    wait_for(lambda: pid_alive(pidfile, comm) != pid, timeout, f"{comm} (pid {pid}) to stop", interval=0.1)
    return pid


def _start_daemon(binary: str) -> None:
    DAEMON_LOG.parent.mkdir(parents=True, exist_ok=True)
    with DAEMON_LOG.open("a") as out:  # the daemon detaches; its early complaints land here
        subprocess.run([binary], env=_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60)


def qmaster_answers() -> bool:
    return _ok(["qconf", "-sss"])


def stop_qmaster() -> int:
    """SIGTERM to sge_qmaster (a clean shutdown, as ``qconf -km``: a SIGKILL could leave the Berkeley DB spool to
    recover); returns once the process is gone and clients get "unable to contact qmaster"."""
    pid = _stop(QMASTER_PIDFILE, "sge_qmaster", signal.SIGTERM)
    wait_for(lambda: not qmaster_answers(), 30, "qconf -sss to fail", interval=0.2)
    return pid


def start_qmaster(timeout: float = 60) -> None:
    """``/usr/sbin/sge_qmaster`` (it daemonises and becomes sgeadmin), then wait until ``qconf -sss`` answers."""
    if pid_alive(QMASTER_PIDFILE, "sge_qmaster") is None:
        _start_daemon("/usr/sbin/sge_qmaster")
    wait_for(qmaster_answers, timeout, "sge_qmaster to answer qconf -sss", interval=0.25)


def stop_execd(sig: signal.Signals = signal.SIGKILL) -> int:
    """Kill sge_execd (default SIGKILL: a crash). Its shepherds, and the jobs under them, keep running."""
    return _stop(execd_pidfile(), "sge_execd", sig)


def start_execd(timeout: float = 60) -> None:
    """``/usr/sbin/sge_execd``; it re-attaches to the shepherds of the jobs in its spool."""
    if pid_alive(execd_pidfile(), "sge_execd") is None:
        _start_daemon("/usr/sbin/sge_execd")
    wait_for(lambda: pid_alive(execd_pidfile(), "sge_execd") is not None, timeout, "sge_execd pidfile", interval=0.25)


def queue_usable(queue: str = QUEUE) -> bool:
    """The queue instance on this host is listed by ``qstat -f`` with an empty states column (not u, a, E, d)."""
    try:
        proc = _run(["qstat", "-f", "-q", f"{queue}@{socket.gethostname()}"])
    except subprocess.TimeoutExpired:
        return False
    name = f"{queue}@{socket.gethostname()}"
    return proc.returncode == 0 and any(
        line.split()[0] == name and len(line.split()) == 5 for line in proc.stdout.splitlines() if line.strip()
    )


def wait_queue_usable(timeout: float = 90) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        _run(["qmod", "-c", f"{QUEUE}@{socket.gethostname()}"])  # clear an error state a fault may leave
    wait_for(queue_usable, timeout, f"queue {QUEUE} to become usable (qstat -f shows no state)", interval=0.5)


def mariadb_answers() -> bool:
    return _ok(["mariadb-admin", "ping"], timeout=10)


def stop_mariadb(timeout: float = 60) -> None:
    """``mariadb-admin shutdown`` (mysqld_safe does not restart a server shut down this way)."""
    proc = _run(["mariadb-admin", "shutdown"], timeout=timeout)
    assert proc.returncode == 0, f"mariadb-admin shutdown: {proc.stderr.strip()}"
    wait_for(lambda: not mariadb_answers(), timeout, "mariadb to stop answering ping", interval=0.2)


def start_mariadb(timeout: float = 90) -> None:
    """Start the server as setup_services.sh does (mysqld_safe, detached), then wait for ``mariadb-admin ping``."""
    if not mariadb_answers():
        Path("/run/mysqld").mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "mysql:mysql", "/run/mysqld"], check=True)
        subprocess.run(
            [
                "bash",
                "-c",
                "setsid nohup mysqld_safe --user=mysql --datadir=/var/lib/mysql --pid-file=/run/mysqld/mysqld.pid "
                "--bind-address=127.0.0.1 --port=3306 >>/var/log/mysqld_safe.out 2>&1 </dev/null &",
            ],
            check=True,
            timeout=30,
        )
    wait_for(mariadb_answers, timeout, "mariadb to answer mariadb-admin ping", interval=0.25)


def restore_services() -> None:
    """Whatever a fault stopped, started again and answering: qmaster, execd, the queue usable, MariaDB."""
    problems = []
    for name, step in (
        ("qmaster", start_qmaster),
        ("execd", start_execd),
        ("queue", wait_queue_usable),
        ("mariadb", start_mariadb),
    ):
        try:
            step()
        except Exception as exc:  # try every service, then report all that failed
            problems.append(f"{name}: {exc}")
    assert not problems, f"could not restore the services: {problems}"


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """Run a fault and bring every service back afterwards, whatever happened."""
    try:
        yield
    finally:
        restore_services()


class Background(threading.Thread):
    """A fault run beside the real run: ``fn`` in a daemon thread; ``join_checked`` re-raises its failure."""

    def __init__(self, fn: Callable[[], object], name: str = "chaos-fault"):
        super().__init__(daemon=True, name=name)
        self.fn = fn
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # handed to the test thread by join_checked
            self.error = exc

    def join_checked(self, timeout: float = 180) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running after {timeout:.0f}s"
        if self.error is not None:
            raise self.error


# -- accounting -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountingRecord:
    job_number: str
    task_id: str  # "undefined" for a plain job
    job_name: str
    failed: str  # "0", or "100 : assumedly after job" ...
    exit_status: int


def accounting_records(job: str) -> list[AccountingRecord]:
    """Every ``qacct -j <job>`` record (a job number, or a job name: every job that had it); [] when none."""
    proc = _run(["qacct", "-j", job], timeout=60)
    if proc.returncode != 0:
        return []
    records = []
    for block in proc.stdout.split("=" * 62):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.strip().partition(" ")
            if key:
                fields[key] = value.strip()
        if "jobnumber" in fields:
            records.append(
                AccountingRecord(
                    job_number=fields["jobnumber"].strip(),
                    task_id=fields.get("taskid", "undefined").strip(),
                    job_name=fields.get("jobname", "").strip(),
                    failed=fields.get("failed", "").strip(),
                    exit_status=int(fields.get("exit_status", "-1").split()[0]),
                )
            )
    return records


def records_by_element(distributor_ids: list[str], timeout: float = 30) -> dict[str, list[AccountingRecord]]:
    """{distributor id ("J" or "J.i"): its accounting records}, waiting (accounting is flushed a moment after a job
    ends) until each id has at least one or ``timeout`` passes."""
    jobs = sorted({i.partition(".")[0] for i in distributor_ids})

    def read() -> dict[str, list[AccountingRecord]]:
        out: dict[str, list[AccountingRecord]] = {i: [] for i in distributor_ids}
        for job in jobs:
            for r in accounting_records(job):
                key = r.job_number if r.task_id == "undefined" else f"{r.job_number}.{r.task_id}"
                if key in out:
                    out[key].append(r)
        return out

    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if all(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def qstat_job_ids() -> set[str]:
    out = _run(["qstat", "-u", "*"]).stdout
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}
