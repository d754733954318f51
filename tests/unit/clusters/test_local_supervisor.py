"""The local cluster's supervisor: one warm process per root that forks worker nodes, survives its submitters, can
be restarted without losing queued jobs, and enforces limits on forked workers as on any job."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobmon_airflow.clusters.base import ExitKind, JobRequest, JobState
from jobmon_airflow.clusters.local import LocalCluster
from jobmon_airflow.clusters.local_supervisor import INFO, is_running
from jobmon_airflow.execution.jobs import JobSettings, worker_argv, write_token
from jobmon_airflow.records import ExitRecord
from jobmon_airflow.resources import Resources
from tests.unit.clusters.test_local_cluster import process_gone, request, wait_exit, wait_file, wait_state

MIB = 2**20


@pytest.fixture(autouse=True)
def short_lived_supervisors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBMON_AIRFLOW_LOCAL_IDLE_S", "3")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "root", slots=2)
    yield c
    c.kill(sorted(p.name for p in c.jobs_dir.iterdir()))


def worker_job(tmp_path: Path, ti_id: int, command: str, resources: Resources | None = None) -> JobRequest:
    """A worker-node job as TaskRun submits it (the State Manager unreachable: the exit record tells the end)."""
    logs = tmp_path / "logs"
    settings = JobSettings(logs, "http://127.0.0.1:9/jobmon", heartbeat_interval=60, http_retry_seconds=0)
    _, token_file = write_token(logs, ti_id)
    argv = worker_argv(ti_id, command, settings, token_file, logs / f"ti-{ti_id}.exit.json")
    return JobRequest(f"ti{ti_id}", argv, resources or Resources(memory=1, runtime=60), log_dir=logs)


def exit_record(tmp_path: Path, ti_id: int) -> ExitRecord:
    path = tmp_path / "logs" / f"ti-{ti_id}.exit.json"  # written before the worker exits
    return ExitRecord.from_json(path.read_text(), task_instance_id=ti_id)


def supervisor_pid(cluster: LocalCluster) -> int:
    return int(json.loads((cluster.root / INFO).read_text())["pid"])


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_a_worker_node_is_forked_from_the_supervisor_not_started_anew(cluster: LocalCluster, tmp_path: Path) -> None:
    """The worker's process is a fork of the supervisor (its command line is the supervisor's), runs the command
    and leaves its exit record; the cluster's own record and the logs are as for any job."""
    job = worker_job(tmp_path, 1, "cat /proc/$PPID/cmdline | tr '\\0' ' ' > parent.txt; echo out")
    job_id = cluster.submit(job)
    info = wait_exit(cluster, [job_id])[job_id]

    assert (info.kind, info.exit_status) == (ExitKind.DONE, 0)
    record = exit_record(tmp_path, 1)
    assert record.status == "D" and record.exit_status == 0
    parent = (tmp_path / "logs" / "parent.txt").read_text()
    assert "jobmon_airflow.clusters.local_supervisor" in parent and "jobmon_airflow.worker_node" not in parent
    assert cluster.log_paths(job, job_id)[0].read_text() == "out\n"
    assert info.maxrss_bytes is not None and info.cpu_s is not None and info.wallclock_s is not None


def test_a_forked_worker_over_memory_is_killed(cluster: LocalCluster, tmp_path: Path) -> None:
    grow = f"{sys.executable} -c 'import time; b = bytearray(300 * 2**20); time.sleep(5)'"
    job_id = cluster.submit(worker_job(tmp_path, 2, grow, Resources.parse({"memory": "200M", "runtime": 60})))
    info = wait_exit(cluster, [job_id])[job_id]
    # RLIMIT_AS stops the allocation (the command fails) or the sampled tree goes over h_vmem (SIGKILL, 137).
    assert info.kind in (ExitKind.RESOURCE_KILL, ExitKind.ERROR) and info.exit_status != 0
    if info.kind == ExitKind.RESOURCE_KILL:
        assert (info.resource, info.exit_status) == ("memory", 137)


def test_a_forked_worker_over_its_runtime_is_killed_with_its_process_group(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    job_id = cluster.submit(
        worker_job(tmp_path, 3, "sleep 30 & echo $! > bg.pid; wait", Resources.parse({"runtime": 2, "memory": 1}))
    )
    background = int(wait_file(tmp_path / "logs" / "bg.pid"))
    info = wait_exit(cluster, [job_id], timeout=15)[job_id]

    assert (info.kind, info.resource, info.exit_status) == (ExitKind.RESOURCE_KILL, "runtime", 137)
    assert process_gone(background)  # the whole session went, not only the worker


def test_kill_of_a_forked_worker_ends_its_processes(cluster: LocalCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(worker_job(tmp_path, 4, "sleep 30 & echo $! > bg4.pid; wait"))
    background = int(wait_file(tmp_path / "logs" / "bg4.pid"))
    cluster.kill([job_id])
    info = wait_exit(cluster, [job_id], timeout=10)[job_id]

    assert (info.kind, info.exit_status) == (ExitKind.DELETED, 137)
    assert process_gone(background)


def test_usage_of_a_forked_worker_counts_its_command(cluster: LocalCluster, tmp_path: Path) -> None:
    big = f"{sys.executable} -c 'import time; b = b\"x\" * (100 * 2**20); time.sleep(0.6)'"
    job_id = cluster.submit(worker_job(tmp_path, 5, big))
    info = wait_exit(cluster, [job_id])[job_id]

    assert info.kind == ExitKind.DONE
    assert info.maxrss_bytes is not None and 100 * MIB <= info.maxrss_bytes < 200 * MIB
    assert info.cpu_s is not None and info.cpu_s > 0


def test_one_supervisor_runs_every_waiting_job(tmp_path: Path) -> None:
    """Five jobs wait for the one slot: one supervisor process holds them all (no process per waiting job)."""
    cluster = LocalCluster(tmp_path / "root", slots=1)
    try:
        ids = [cluster.submit(request(tmp_path, ["sleep", "0.3"])) for _ in range(5)]
        wait_state(cluster, ids[0], JobState.RUNNING)
        claims = [wait_file_json(cluster.jobs_dir / i / "shepherd.json")["pid"] for i in ids]
        assert set(claims) == {supervisor_pid(cluster)}
        ours = [
            pid
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
            if str(cluster.root) in " ".join(_safe_cmdline(pid))
        ]
        assert ours == [supervisor_pid(cluster)]
        infos = wait_exit(cluster, ids)
        assert {i.kind for i in infos.values()} == {ExitKind.DONE}
    finally:
        cluster.kill(sorted(p.name for p in cluster.jobs_dir.iterdir()))


def wait_file_json(path: Path, timeout: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def _safe_cmdline(pid: int) -> list[str]:
    try:
        return cmdline(pid)
    except OSError:
        return []


def test_a_killed_supervisor_loses_no_queued_job(tmp_path: Path) -> None:
    """SIGKILL the supervisor while one job runs and others wait: the running one is LOST (as under a dead execd),
    the waiting ones stay PENDING, and the next look at the cluster starts a supervisor that runs them."""
    cluster = LocalCluster(tmp_path / "root", slots=1)
    try:
        running = cluster.submit(request(tmp_path, ["sleep", "30"]))
        wait_state(cluster, running, JobState.RUNNING)
        waiting = cluster.submit(request(tmp_path, ["sh", "-c", "echo ran"], name="waiting"))
        array = cluster.submit(request(tmp_path, ["true"], name="arr", array_length=2))
        first = supervisor_pid(cluster)
        os.kill(first, signal.SIGKILL)
        assert process_gone(first)
        assert not is_running(cluster.root)

        states = cluster.statuses([running, waiting, f"{array}.1", f"{array}.2"])  # starts a new supervisor
        assert states[running].state == JobState.GONE
        assert {states[j].state for j in (waiting, f"{array}.1", f"{array}.2")} == {JobState.PENDING}

        infos = wait_exit(cluster, [running, waiting, f"{array}.1", f"{array}.2"])
        assert infos[running].kind == ExitKind.LOST and "without an exit record" in infos[running].reason
        assert infos[waiting].kind == infos[f"{array}.1"].kind == infos[f"{array}.2"].kind == ExitKind.DONE
        assert (tmp_path / "logs" / f"waiting.o{waiting}").read_text() == "ran\n"
        assert supervisor_pid(cluster) != first
    finally:
        cluster.kill(sorted(p.name for p in cluster.jobs_dir.iterdir()))


def test_an_idle_supervisor_exits_and_the_next_submit_starts_one(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "root", slots=1)
    job = cluster.submit(request(tmp_path, ["true"]))
    wait_exit(cluster, [job])
    first = supervisor_pid(cluster)
    assert process_gone(first, timeout=15)  # idle for 3 s: exits
    assert not is_running(cluster.root)

    again = cluster.submit(request(tmp_path, ["true"]))
    assert wait_exit(cluster, [again])[again].kind == ExitKind.DONE
    assert supervisor_pid(cluster) != first


def test_concurrent_first_submitters_start_one_supervisor(tmp_path: Path) -> None:
    """Four processes submit to a root with no supervisor at the same instant: one supervisor starts (the others
    wait on supervisor.start and find it running), and it claims every job."""
    import subprocess
    import textwrap

    root, go = tmp_path / "root", tmp_path / "go"
    submitter = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from jobmon_airflow.clusters.base import JobRequest
        from jobmon_airflow.clusters.local import LocalCluster
        from jobmon_airflow.resources import Resources
        cluster = LocalCluster(Path({str(root)!r}), slots=2)
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        job = JobRequest("racer", ["sleep", "1"], Resources(memory=1, runtime=60), Path({str(tmp_path / "logs")!r}))
        print(cluster.submit(job))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", submitter], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.0)  # every submitter imported and waiting
    go.touch()
    ids = [p.communicate(timeout=60)[0].strip() for p in procs]
    cluster = LocalCluster(root, slots=2)
    try:
        claims = {wait_file_json(cluster.jobs_dir / i / "shepherd.json")["pid"] for i in ids}
        assert claims == {supervisor_pid(cluster)}
        ours = [
            pid
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
            if str(root) in " ".join(_safe_cmdline(pid))
        ]
        assert ours == [supervisor_pid(cluster)]  # no second supervisor, not even one giving up
        assert {i.kind for i in wait_exit(cluster, ids).values()} == {ExitKind.DONE}
    finally:
        cluster.kill(ids)
