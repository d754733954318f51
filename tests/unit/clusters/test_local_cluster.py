"""The ``local`` cluster with real shepherds and real jobs: outcomes must look as Grid Engine reports them (§6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow.clusters.base import ExitInfo, ExitKind, JobRequest, JobState, SubmissionError
from jobmon_airflow.clusters.local import LocalCluster
from jobmon_airflow.procfs import proc_stat
from jobmon_airflow.resources import Resources

PY = sys.executable
MIB = 2**20

# Memory: a plain python has VmSize ≈ 14 MiB here; with a 60 MiB bytearray ≈ 74 MiB. A parent (≈ 21 MiB, it
# imports subprocess) with three such children sums to ≈ 236 MiB (measured by the shepherd: 247169024 bytes).
# Each process stays far below RLIMIT_AS = 200M, the sum is over 200M and well under 1.5 × 200M = 300M.
CHILD = "import time; b = bytearray(60 * 2**20); time.sleep(1.5)"
THREE_CHILDREN = (
    "import subprocess, sys\n"
    f"ps = [subprocess.Popen([sys.executable, '-c', {CHILD!r}]) for _ in range(3)]\n"
    "sys.exit(max(p.wait() for p in ps))\n"
)


@pytest.fixture(autouse=True)
def short_lived_supervisors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Supervisors started here (inheriting this environment) exit 3 s after their root's last job, not 30 s."""
    monkeypatch.setenv("JOBMON_AIRFLOW_LOCAL_IDLE_S", "3")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "local-cluster", slots=4)
    yield c
    c.kill(sorted(p.name for p in c.jobs_dir.iterdir()))  # leave no job behind


def request(
    tmp_path: Path,
    argv: list[str],
    name: str = "job",
    resources: Resources | None = None,
    **array_and_env: Any,
) -> JobRequest:
    resources = resources or Resources(memory=1, runtime=60)
    return JobRequest(name, argv, resources, log_dir=tmp_path / "logs", **array_and_env)


def wait_exit(cluster: LocalCluster, job_ids: list[str], timeout: float = 20) -> dict[str, ExitInfo]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = cluster.exit_info(job_ids)
        if len(infos) == len(job_ids):
            return infos
        time.sleep(0.05)
    raise AssertionError(f"no exit record for {job_ids} after {timeout}s: {cluster.statuses(job_ids)}")


def wait_state(cluster: LocalCluster, job_id: str, state: JobState, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (current := cluster.statuses([job_id])[job_id].state) != state:
        assert time.monotonic() < deadline, f"job {job_id} still {current}, expected {state}"
        time.sleep(0.05)


def wait_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.05)
    return path.read_text()


def process_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def max_overlap(infos: list[ExitInfo]) -> int:
    """Most intervals [start, end) running at one instant."""
    edges = sorted(
        [(i.start_time, 1) for i in infos if i.start_time is not None]
        + [(i.end_time, -1) for i in infos if i.end_time is not None]
    )
    running = peak = 0
    for _, step in edges:  # at equal times the end (-1) sorts first: touching intervals do not overlap
        running += step
        peak = max(peak, running)
    return peak


def test_success_captures_stdout_and_sets_grid_engine_environment(cluster: LocalCluster, tmp_path: Path) -> None:
    code = (
        "import os; "
        "print('hello', *(os.environ[k] for k in ('JOB_ID', 'JOB_NAME', 'SGE_TASK_ID', 'NSLOTS', 'MY_VAR')), "
        "os.environ['HOSTNAME'] != '', os.getcwd())"
    )
    job = request(tmp_path, [PY, "-c", code], name="greet", env={"MY_VAR": "v1"})
    job_id = cluster.submit(job)
    info = wait_exit(cluster, [job_id])[job_id]

    assert (info.kind, info.exit_status, info.resource) == (ExitKind.DONE, 0, None)
    out, err = cluster.log_paths(job, job_id)
    assert out == tmp_path / "logs" / f"greet.o{job_id}" and err == tmp_path / "logs" / f"greet.e{job_id}"
    assert out.read_text() == f"hello {job_id} greet undefined 1 v1 True {tmp_path / 'logs'}\n"
    assert info.hostname and info.slots == 1
    assert info.start_time is not None and info.end_time is not None and info.start_time <= info.end_time
    assert info.wallclock_s is not None and 0 <= info.wallclock_s < 10
    assert cluster.statuses([job_id])[job_id].state == JobState.GONE


def test_nonzero_exit_is_error_with_stderr(cluster: LocalCluster, tmp_path: Path) -> None:
    job = request(tmp_path, [PY, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"])
    job_id = cluster.submit(job)
    info = wait_exit(cluster, [job_id])[job_id]

    assert (info.kind, info.exit_status) == (ExitKind.ERROR, 3)
    assert "exit status 3" in info.reason
    assert cluster.log_paths(job, job_id)[1].read_text() == "boom\n"


def test_program_that_cannot_start_is_an_error(cluster: LocalCluster, tmp_path: Path) -> None:
    job = request(tmp_path, ["/nonexistent/program", "arg"])
    job_id = cluster.submit(job)
    info = wait_exit(cluster, [job_id])[job_id]

    assert (info.kind, info.exit_status) == (ExitKind.ERROR, None)
    assert "could not start '/nonexistent/program'" in info.reason
    assert "No such file or directory" in cluster.log_paths(job, job_id)[1].read_text()


def test_process_tree_over_memory_is_killed_and_the_same_tree_fits_with_more(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    small = cluster.submit(request(tmp_path, [PY, "-c", THREE_CHILDREN], resources=Resources.parse({"memory": "200M"})))
    roomy = cluster.submit(request(tmp_path, [PY, "-c", THREE_CHILDREN], resources=Resources.parse({"memory": "300M"})))
    infos = wait_exit(cluster, [small, roomy])

    killed = infos[small]
    assert (killed.kind, killed.resource, killed.exit_status) == (ExitKind.RESOURCE_KILL, "memory", 137)
    assert f'job {small} exceeds job hard limit "h_vmem"' in killed.reason
    assert "> limit:209715200" in killed.reason and "sending SIGKILL" in killed.reason

    fits = infos[roomy]
    assert (fits.kind, fits.exit_status) == (ExitKind.DONE, 0)
    # The premise of the pair: the tree's peak is over 200M yet under 300M.
    assert fits.maxvmem_bytes is not None and 200 * MIB < fits.maxvmem_bytes < 300 * MIB


def test_runtime_over_is_killed_within_seconds(cluster: LocalCluster, tmp_path: Path) -> None:
    submitted = time.monotonic()
    job_id = cluster.submit(request(tmp_path, ["sleep", "30"], resources=Resources(runtime=2)))
    info = wait_exit(cluster, [job_id], timeout=10)[job_id]

    assert time.monotonic() - submitted < 5
    assert (info.kind, info.resource, info.exit_status) == (ExitKind.RESOURCE_KILL, "runtime", 137)
    assert "exceeded hard wallclock time" in info.reason
    assert info.wallclock_s is not None and 2 <= info.wallclock_s < 4


def test_kill_of_running_job_is_deleted_and_its_processes_are_gone(cluster: LocalCluster, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "30"])
        with open("pids.txt", "w") as f:
            f.write(f"{os.getpid()} {child.pid}\\n")
        time.sleep(30)
        """
    )
    job_id = cluster.submit(request(tmp_path, [PY, "-c", script]))
    pids = [int(p) for p in wait_file(tmp_path / "logs" / "pids.txt").split()]
    assert cluster.statuses([job_id])[job_id].state == JobState.RUNNING

    cluster.kill([job_id])
    assert cluster.statuses([job_id])[job_id].state in (JobState.DELETING, JobState.GONE)
    info = wait_exit(cluster, [job_id], timeout=5)[job_id]

    assert (info.kind, info.exit_status) == (ExitKind.DELETED, 137)
    assert all(process_gone(pid) for pid in pids)
    cluster.kill([job_id, "987654"])  # already gone, unknown: not an error


def test_slot_limit_serialises_jobs_and_pending_jobs_can_be_deleted(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "one-slot", slots=1)
    first = cluster.submit(request(tmp_path, ["sleep", "0.7"]))
    wait_state(cluster, first, JobState.RUNNING)
    second = cluster.submit(request(tmp_path, ["sleep", "0.7"]))
    doomed = cluster.submit(request(tmp_path, ["sh", "-c", "echo should not run"], name="doomed"))
    time.sleep(0.3)  # a few shepherd polls: none of them may find a slot
    status = cluster.statuses([second, doomed])
    assert (status[second].state, status[second].raw) == (JobState.PENDING, "qw")
    assert status[doomed].state == JobState.PENDING

    cluster.kill([doomed])
    infos = wait_exit(cluster, [first, second, doomed])

    assert infos[first].kind == infos[second].kind == ExitKind.DONE
    assert max_overlap([infos[first], infos[second]]) == 1
    deleted = infos[doomed]
    assert (deleted.kind, deleted.exit_status, deleted.start_time) == (ExitKind.DELETED, None, None)
    assert not (tmp_path / "logs" / f"doomed.o{doomed}").exists()


def test_multi_core_job_takes_all_its_slots_at_once(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "two-slots", slots=2)
    wide = cluster.submit(request(tmp_path, ["sh", "-c", "echo $NSLOTS; sleep 0.5"], "wide", Resources(cores=2)))
    wait_state(cluster, wide, JobState.RUNNING)
    narrow = cluster.submit(request(tmp_path, ["sleep", "0.1"]))
    infos = wait_exit(cluster, [wide, narrow])

    assert max_overlap(list(infos.values())) == 1  # the 1-core job found no free slot while the 2-core job ran
    assert infos[wide].slots == 2 and (tmp_path / "logs" / f"wide.o{wide}").read_text() == "2\n"


def test_terminated_shepherd_deletes_its_job_and_says_so(cluster: LocalCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(request(tmp_path, ["sleep", "30"]))
    wait_state(cluster, job_id, JobState.RUNNING)
    os.kill(json.loads((cluster.jobs_dir / job_id / "shepherd.json").read_text())["pid"], signal.SIGTERM)
    info = wait_exit(cluster, [job_id], timeout=5)[job_id]

    assert (info.kind, info.exit_status) == (ExitKind.DELETED, 137)
    assert "SIGTERM" in info.reason


def test_submission_that_can_never_run_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match="cores 5 exceeds queue local limit 4"):
        cluster.submit(request(tmp_path, ["true"], resources=Resources(cores=5)))
    with pytest.raises(SubmissionError, match=r"memory \S+ exceeds queue local limit"):
        cluster.submit(request(tmp_path, ["true"], resources=Resources(memory=1e6)))
    with pytest.raises(SubmissionError, match="argv must be a non-empty list"):
        cluster.submit(request(tmp_path, []))
    assert list(cluster.jobs_dir.iterdir()) == []  # nothing was created for refused jobs
    assert cluster.queue_limits(None).max_cores == 4 and cluster.queue_limits("local").name == "local"


def test_every_queue_name_is_the_local_queue(cluster: LocalCluster, tmp_path: Path) -> None:
    """A DAG written for Grid Engine (all.q, fallback long.q) runs on the laptop cluster unchanged."""
    assert cluster.queue_limits("all.q").name == "local" and cluster.queue_limits("long.q").name == "local"


def test_job_survives_the_submitting_process(cluster: LocalCluster, tmp_path: Path) -> None:
    submitter = textwrap.dedent(
        f"""
        from pathlib import Path
        from jobmon_airflow.clusters.base import JobRequest
        from jobmon_airflow.clusters.local import LocalCluster
        from jobmon_airflow.resources import ResourceError, Resources
        argv = ["sh", "-c", "sleep 1; echo survived"]
        job = JobRequest("orphan", argv, Resources(), Path({str(tmp_path / "logs")!r}))
        print(LocalCluster(Path({str(cluster.root)!r}), slots=4).submit(job))
        """
    )
    proc = subprocess.run([PY, "-c", submitter], capture_output=True, text=True, timeout=30, check=True)
    job_id = proc.stdout.strip()

    assert cluster.statuses([job_id])[job_id].state in (JobState.PENDING, JobState.RUNNING)
    info = wait_exit(cluster, [job_id])[job_id]
    assert info.kind == ExitKind.DONE
    assert (tmp_path / "logs" / f"orphan.o{job_id}").read_text() == "survived\n"


def test_concurrent_submitters_get_distinct_increasing_ids(cluster: LocalCluster, tmp_path: Path) -> None:
    submitter = textwrap.dedent(
        f"""
        from pathlib import Path
        from jobmon_airflow.clusters.base import JobRequest
        from jobmon_airflow.clusters.local import LocalCluster
        from jobmon_airflow.resources import ResourceError, Resources
        cluster = LocalCluster(Path({str(cluster.root)!r}), slots=4)
        job = JobRequest("many", ["true"], Resources(), Path({str(tmp_path / "logs")!r}))
        print(*(cluster.submit(job) for _ in range(5)))
        """
    )
    procs = [subprocess.Popen([PY, "-c", submitter], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=30)[0].split() for p in procs]

    assert all(ids == sorted(ids, key=int) for ids in outputs)  # increasing within each submitter
    job_ids = [job_id for ids in outputs for job_id in ids]
    assert sorted(map(int, job_ids)) == list(range(1, 21))
    assert {i.kind for i in wait_exit(cluster, job_ids).values()} == {ExitKind.DONE}


def test_argv_reaches_the_program_exactly(cluster: LocalCluster, tmp_path: Path) -> None:
    args = ["a b", "'single'", '"double"', "x; rm -rf /", "$(echo hi)", "`id`", "line1\nline2", "", "*", "\\"]
    dump = "import json, sys; json.dump(sys.argv[1:], open('argv.json', 'w'))"
    job_id = cluster.submit(request(tmp_path, [PY, "-c", dump, *args]))

    assert wait_exit(cluster, [job_id])[job_id].kind == ExitKind.DONE
    assert json.loads((tmp_path / "logs" / "argv.json").read_text()) == args


def test_array_elements_respect_max_concurrent(cluster: LocalCluster, tmp_path: Path) -> None:
    job = request(
        tmp_path, ["sh", "-c", "echo task $SGE_TASK_ID of $JOB_ID; sleep 0.6"], name="arr", array_length=4,
        max_concurrent=2,
    )  # fmt: skip
    job_id = cluster.submit(job)
    elements = [f"{job_id}.{i}" for i in range(1, 5)]
    wait_state(cluster, elements[0], JobState.RUNNING)
    assert cluster.statuses([job_id])[job_id].state == JobState.RUNNING
    assert cluster.statuses([elements[3]])[elements[3]].state == JobState.PENDING

    infos = wait_exit(cluster, elements)

    assert all(i.kind == ExitKind.DONE for i in infos.values())
    assert max_overlap(list(infos.values())) == 2  # 4 slots free, yet never more than 2 elements at once
    for i in range(1, 5):
        out = cluster.log_paths(job, job_id, i)[0]
        assert out.name == f"arr.o{job_id}.{i}" and out.read_text() == f"task {i} of {job_id}\n"
    assert cluster.statuses([job_id])[job_id].state == JobState.GONE
    assert job_id not in cluster.exit_info([job_id])  # records are per element


def test_the_limit_of_a_submitted_array_can_be_raised_and_lowered(cluster: LocalCluster, tmp_path: Path) -> None:
    """As ``qalter -tc``: raised while element 1 runs alone, the next elements run three at a time; lowered, the
    elements not yet started run one at a time. Running elements are never stopped."""
    raised = cluster.submit(request(tmp_path, ["sleep", "1.5"], name="up", array_length=7, max_concurrent=1))
    wait_state(cluster, f"{raised}.1", JobState.RUNNING)
    assert cluster.statuses([f"{raised}.2"])[f"{raised}.2"].state == JobState.PENDING
    cluster.set_array_concurrency({raised: 3})
    up = wait_exit(cluster, [f"{raised}.{i}" for i in range(1, 8)], timeout=60)
    assert max_overlap(list(up.values())) == 3  # 4 slots free: the new limit, not the slots, holds

    lowered = cluster.submit(request(tmp_path, ["sleep", "1"], name="down", array_length=6, max_concurrent=3))
    cluster.set_array_concurrency({lowered: 1, "999999": 2})  # an unknown job is no error, as with qalter
    down = wait_exit(cluster, [f"{lowered}.{i}" for i in range(1, 7)], timeout=60)
    assert max_overlap([down[f"{lowered}.{i}"] for i in range(4, 7)]) == 1
    cluster.set_array_concurrency({lowered: 2})  # ended: nothing to do
    with pytest.raises(ValueError, match="array job id"):
        cluster.set_array_concurrency({f"{lowered}.1": 2})


def test_unknown_ids_and_a_killed_shepherd_are_gone(cluster: LocalCluster, tmp_path: Path) -> None:
    status = cluster.statuses(["424242", "424242.1", "not-a-job"])
    assert {s.state for s in status.values()} == {JobState.GONE}

    job_id = cluster.submit(request(tmp_path, ["sleep", "30"]))
    wait_state(cluster, job_id, JobState.RUNNING)
    job_dir = cluster.jobs_dir / job_id
    shepherd_pid = json.loads((job_dir / "shepherd.json").read_text())["pid"]
    leader_pid = json.loads((job_dir / "started.json").read_text())["pid"]
    os.kill(shepherd_pid, signal.SIGKILL)
    assert process_gone(shepherd_pid)

    assert cluster.statuses([job_id])[job_id].state == JobState.GONE
    info = cluster.exit_info([job_id])[job_id]
    assert info.kind == ExitKind.LOST and "without an exit record" in info.reason
    assert info.start_time is not None  # it did start
    assert process_gone(leader_pid)  # the job does not outlive its shepherd


def test_max_rss_of_a_100_mib_job(cluster: LocalCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(request(tmp_path, [PY, "-c", "import time; b = b'x' * (100 * 2**20); time.sleep(0.6)"]))
    info = wait_exit(cluster, [job_id])[job_id]

    assert info.kind == ExitKind.DONE
    assert info.maxrss_bytes is not None and 100 * MIB <= info.maxrss_bytes < 160 * MIB
    assert info.cpu_s is not None and info.cpu_s >= 0


def test_max_rss_of_a_small_job_is_not_the_shepherds(cluster: LocalCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(request(tmp_path, ["sleep", "0.5"]))
    info = wait_exit(cluster, [job_id])[job_id]

    assert info.maxrss_bytes is not None and info.maxvmem_bytes is not None
    assert 0 < info.maxrss_bytes <= info.maxvmem_bytes < 20 * MIB  # sleep: ~1 MB resident, a few MB virtual


def test_every_file_and_directory_of_a_job_is_private_under_umask_022(tmp_path: Path) -> None:
    """Specs (commands, environments), logs, records, counters, slots, kill marks: this user's only (issue 13)."""
    old_umask = os.umask(0o022)  # the usual default; the shepherd and its jobs inherit it
    cluster = LocalCluster(tmp_path / "local-cluster", slots=2)
    try:
        code = "import sys; print('out'); print('err', file=sys.stderr)"
        array = request(tmp_path, [PY, "-c", code], name="arr", array_length=2, env={"SECRET_ISH": "x"})
        array_id = cluster.submit(array)
        cant_start = request(tmp_path, ["/nonexistent/program"], name="nostart")
        cant_start_id = cluster.submit(cant_start)
        killed_id = cluster.submit(request(tmp_path, ["sleep", "30"], name="killed"))
        wait_state(cluster, killed_id, JobState.RUNNING)
        cluster.kill([killed_id])
        ids = [f"{array_id}.1", f"{array_id}.2", cant_start_id, killed_id]
        assert {i.kind for i in wait_exit(cluster, ids).values()} == {ExitKind.DONE, ExitKind.ERROR, ExitKind.DELETED}
    finally:
        os.umask(old_umask)
        cluster.kill(sorted(p.name for p in cluster.jobs_dir.iterdir()))
    logs = [*cluster.log_paths(array, array_id, 1), *cluster.log_paths(array, array_id, 2)]
    assert [p.read_text() for p in logs] == ["out\n", "err\n", "out\n", "err\n"]
    assert "could not start" in cluster.log_paths(cant_start, cant_start_id)[1].read_text()
    checked = [p for top in (cluster.root, tmp_path / "logs") for p in [top, *top.rglob("*")]]
    names = {p.name for p in checked}
    assert {"spec.json", "shepherd.log", "exit.1.json", "started.1.json", "kill", "next_job_id", "0"} <= names
    loose = [
        f"{p.relative_to(tmp_path)} {oct(p.lstat().st_mode & 0o777)}" for p in checked if p.lstat().st_mode & 0o077
    ]
    assert loose == []
