"""GridEngineCluster on the real one-host Grid Engine cluster (``scripts/setup_services.sh``; 2 slots in all.q).

Fails under CI=true and skips elsewhere when Grid Engine is missing (the ``gridengine`` fixture). Jobs are short;
every job a test submits is deleted at the end, whatever happens.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow.clusters.base import (
    ClusterUnavailable,
    ExitInfo,
    ExitKind,
    JobRequest,
    JobState,
    JobStatus,
    SubmissionError,
    UnknownQueue,
)
from jobmon_airflow.clusters.gridengine import GridEngineCluster, parse_qstat_xml
from jobmon_airflow.resources import Resources

pytestmark = pytest.mark.gridengine

PY = sys.executable
GIB = 1024**3

# Three children of 60 MiB each: every process stays far under RLIMIT_AS (200M), their sum (with the parent,
# ≈ 240 MiB of VmSize) goes over h_vmem, which only the execd's whole-job accounting catches.
THREE_CHILDREN = (
    "import subprocess, sys\n"
    "child = 'import time; b = bytearray(60 * 2**20); time.sleep(10)'\n"
    "ps = [subprocess.Popen([sys.executable, '-c', child]) for _ in range(3)]\n"
    "sys.exit(max(p.wait() for p in ps))\n"
)


class CountingCluster(GridEngineCluster):
    """The real backend, counting the Grid Engine commands it runs."""

    def __init__(self) -> None:
        super().__init__(command_timeout=30)
        self.commands: list[list[str]] = []
        self.submitted: list[str] = []

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        return super()._run(argv, stdin)

    def submit(self, job: JobRequest) -> str:
        job_id = super().submit(job)
        self.submitted.append(job_id)
        return job_id

    def qstat_xml_calls(self) -> int:
        return sum(1 for c in self.commands if c[:1] == ["qstat"] and "-xml" in c)


@pytest.fixture
def cluster(gridengine: dict[str, str]) -> Iterator[CountingCluster]:
    c = CountingCluster()
    yield c
    if c.submitted:
        c.kill(c.submitted)  # leave no job behind, whatever the test did


def job(tmp_path: Path, argv: list[str], **kwargs: Any) -> JobRequest:
    name = kwargs.pop("name", f"t_{uuid.uuid4().hex[:8]}")
    return JobRequest(
        name=name, argv=argv, log_dir=tmp_path / "logs", resources=kwargs.pop("resources", Resources()), **kwargs
    )


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def finish(cluster: GridEngineCluster, job_ids: Iterable[str], timeout: float = 60) -> dict[str, ExitInfo]:
    """Wait until the jobs leave qstat and their accounting records are there."""
    ids = list(job_ids)
    wait_until(lambda: all(s.state is JobState.GONE for s in cluster.statuses(ids).values()), timeout, f"{ids} gone")
    return wait_until(lambda: (r := cluster.exit_info(ids)) and len(r) == len(ids) and r, 15, f"accounting of {ids}")


# --------------------------------------------------------------------------------------------------------------


def test_success(cluster: CountingCluster, tmp_path: Path) -> None:
    request = job(tmp_path, [PY, "-c", "print('hello from grid engine')"])
    started = time.monotonic()
    job_id = cluster.submit(request)
    submit_s = time.monotonic() - started
    info = finish(cluster, [job_id])[job_id]
    assert (info.kind, info.exit_status, info.slots) == (ExitKind.DONE, 0, 1)
    assert info.maxrss_bytes and info.maxrss_bytes > 1024**2  # a python's RSS: several MiB, read in KB units
    stdout, stderr = cluster.log_paths(request, job_id)
    assert stdout.read_text() == "hello from grid engine\n"
    assert stderr.exists()
    assert submit_s < 5


def test_exit_3_is_an_error(cluster: CountingCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(job(tmp_path, [PY, "-c", "raise SystemExit(3)"]))
    info = finish(cluster, [job_id])[job_id]
    assert (info.kind, info.exit_status, info.resource) == (ExitKind.ERROR, 3, None)


def test_memory_over_h_vmem_across_processes_is_a_memory_kill(cluster: CountingCluster, tmp_path: Path) -> None:
    request = job(tmp_path, [PY, "-c", THREE_CHILDREN], resources=Resources(memory=200 / 1024, runtime=60))
    job_id = cluster.submit(request)
    info = finish(cluster, [job_id])[job_id]
    assert (info.kind, info.resource, info.exit_status) == (ExitKind.RESOURCE_KILL, "memory", 137)
    assert "failed 37" in info.reason and "h_vmem=200.0M" in info.reason
    assert info.wallclock_s is not None and info.wallclock_s < 9  # killed, not finished


def test_runtime_over_h_rt_is_a_runtime_kill(cluster: CountingCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(job(tmp_path, ["/bin/sleep", "30"], resources=Resources(runtime=2)))
    info = finish(cluster, [job_id])[job_id]
    assert (info.kind, info.resource, info.exit_status) == (ExitKind.RESOURCE_KILL, "runtime", 137)
    assert info.reason.startswith("exceeded runtime h_rt=2s")


def test_kill_of_a_running_job_is_deleted(cluster: CountingCluster, tmp_path: Path) -> None:
    job_id = cluster.submit(job(tmp_path, ["/bin/sleep", "60"]))
    wait_until(lambda: cluster.statuses([job_id])[job_id].state is JobState.RUNNING, 60, "running")
    cluster.kill([job_id])
    cluster.kill([job_id])  # again, or already gone: not an error
    info = finish(cluster, [job_id])[job_id]
    assert (info.kind, info.exit_status) == (ExitKind.DELETED, 137)
    assert cluster.statuses([job_id])[job_id].state is JobState.GONE
    assert job_id not in {i.split(".")[0] for i in parse_qstat_xml(qstat_xml())}


def qstat_xml() -> str:
    return subprocess.run(["qstat", "-u", "*", "-xml"], capture_output=True, text=True, check=True).stdout


def test_pe_smp_2_books_memory_per_slot(cluster: CountingCluster, tmp_path: Path) -> None:
    code = (
        "import json, os, resource\n"
        "print(json.dumps([os.environ.get('NSLOTS'), os.environ.get('PE'), resource.getrlimit(resource.RLIMIT_AS)[0]]))"
    )
    request = job(tmp_path, [PY, "-c", code], resources=Resources(cores=2, memory=2))
    job_id = cluster.submit(request)
    info = finish(cluster, [job_id])[job_id]
    assert (info.kind, info.slots, info.granted_pe) == (ExitKind.DONE, 2, "smp")
    nslots, pe, rlimit_as = json.loads(cluster.log_paths(request, job_id)[0].read_text())
    assert (nslots, pe, rlimit_as) == ("2", "smp", 2 * GIB)  # h_vmem=1024M per slot × 2 slots


def test_unsatisfiable_request_is_refused_with_grid_engine_reason(cluster: CountingCluster, tmp_path: Path) -> None:
    name = f"unsat_{uuid.uuid4().hex[:8]}"
    with pytest.raises(SubmissionError, match="no suitable queues"):
        cluster.submit(job(tmp_path, ["/bin/true"], name=name, resources=Resources(cores=64)))
    assert name not in subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, check=True).stdout


def test_argv_reaches_the_program_exactly_and_the_name_cannot_add_options(
    cluster: CountingCluster, tmp_path: Path
) -> None:
    out = tmp_path / "argv.json"
    args = [
        "-q",  # leading '-': would be a qsub option on qsub's command line
        "with space",
        "it's",
        'say "hi"',
        "a;b",
        f"$(touch {tmp_path}/pwned)",
        "`id`",
        "line1\nline2",
        "x\n#$ -l h_rt=0:0:1\n",  # a directive line inside the script: qsub must not read it
        "$HOME",
        "*",
        "",
        "ünï",
    ]
    code = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
    request = job(tmp_path, [PY, "-c", code, str(out), *args], name="-q nosuch.q -l h_rt=1 -N x", env={"A": "1,2 3"})
    job_id = cluster.submit(request)
    info = finish(cluster, [job_id])[job_id]
    assert info.kind is ExitKind.DONE  # neither an unknown queue nor h_rt=1 got in
    assert json.loads(out.read_text()) == args
    assert not (tmp_path / "pwned").exists()
    assert cluster.log_paths(request, job_id)[0].name == f"j-q_nosuch.q_-l_h_rt_1_-N_x.o{job_id}"


def test_array_of_5_with_2_at_a_time_maps_elements(cluster: CountingCluster, tmp_path: Path) -> None:
    code = "import os, time; time.sleep(0.5); print(os.environ['SGE_TASK_ID'])"
    request = job(tmp_path, [PY, "-c", code], array_length=5, max_concurrent=2)
    job_id = cluster.submit(request)
    elements = [f"{job_id}.{i}" for i in range(1, 6)]
    seen_running: set[str] = set()
    most_running = 0

    def all_gone() -> bool:
        nonlocal most_running
        statuses = cluster.statuses(elements)
        running = {i for i, s in statuses.items() if s.state is JobState.RUNNING}
        seen_running.update(running)
        most_running = max(most_running, len(running))
        return all(s.state is JobState.GONE for s in statuses.values())

    wait_until(all_gone, 60, "all array elements gone", interval=0.1)
    records = finish(cluster, elements)
    assert sorted(records) == elements
    assert {r.kind for r in records.values()} == {ExitKind.DONE}
    assert most_running <= 2
    assert seen_running  # the elements were seen running under their own ids
    for i in range(1, 6):
        assert cluster.log_paths(request, job_id, i)[0].read_text() == f"{i}\n"


def running_at(spans: dict[str, tuple[float, float]], t: float) -> int:
    """How many elements ran at instant ``t`` (accounting times: whole seconds; touching spans do not overlap)."""
    return sum(1 for s, e in spans.values() if s <= t < e)


def element_spans(cluster: GridEngineCluster, elements: list[str]) -> dict[str, tuple[float, float]]:
    records = finish(cluster, elements, timeout=120)
    assert {r.kind for r in records.values()} == {ExitKind.DONE}
    return {i: (r.start_time or 0.0, r.end_time or 0.0) for i, r in records.items()}


def test_qalter_tc_raises_and_lowers_a_running_arrays_concurrency(cluster: CountingCluster, tmp_path: Path) -> None:
    """``set_array_concurrency`` on arrays already running (the cluster has 2 slots): -tc 1 raised to 2, the
    elements not yet started run two at a time; -tc 2 lowered to 1, they run one at a time."""
    up = cluster.submit(job(tmp_path, ["sleep", "4"], array_length=4, max_concurrent=1))
    up_elements = [f"{up}.{i}" for i in range(1, 5)]
    wait_until(lambda: cluster.statuses([up_elements[0]])[up_elements[0]].state is JobState.RUNNING, 60, "1 runs")
    cluster.set_array_concurrency({up: 2})
    spans = element_spans(cluster, up_elements)
    assert max(running_at(spans, s) for s, _ in spans.values()) == 2

    down = cluster.submit(job(tmp_path, ["sleep", "3"], array_length=5, max_concurrent=2))
    down_elements = [f"{down}.{i}" for i in range(1, 6)]

    def two_running() -> bool:
        statuses = cluster.statuses(down_elements)
        return sum(1 for s in statuses.values() if s.state is JobState.RUNNING) == 2

    wait_until(two_running, 60, "two elements running")
    cluster.set_array_concurrency({down: 1, "999999": 1})  # a job that is gone is no error
    assert cluster.commands[-1] == ["qalter", "-tc", "1", down, "999999"]  # one call for every array job
    spans = element_spans(cluster, down_elements)
    later = [spans[i][0] for i in down_elements if spans[i][0] >= min(spans[j][1] for j in down_elements)]
    assert later and all(running_at(spans, s) == 1 for s in later)  # after the first end: one at a time


def test_eqw_job_is_an_error_with_its_reason(cluster: CountingCluster, tmp_path: Path) -> None:
    blocker = cluster.submit(job(tmp_path, ["/bin/sleep", "4"], resources=Resources(cores=2)))
    victim_request = job(tmp_path / "victim", ["/bin/true"])
    victim = cluster.submit(victim_request)  # pending behind the blocker, which holds both slots
    shutil.rmtree(victim_request.log_dir)  # at dispatch its working directory is gone: Eqw
    status: JobStatus = wait_until(
        lambda: (s := cluster.statuses([victim])[victim]).state is JobState.ERROR and s, 30, "Eqw"
    )
    assert status.raw == "Eqw"
    assert status.reason and "can't chdir to" in status.reason
    cluster.kill([victim, blocker])
    # The failed dispatch left an accounting record (failed 28), unlike a plain pending job deleted with qdel.
    info = finish(cluster, [victim])[victim]
    assert (info.kind, info.start_time) == (ExitKind.ERROR, None)
    assert "failed 28: changing into working directory" in info.reason


def qstat_j(job_id: str) -> dict[str, str]:
    """``qstat -j <id>`` as {field: value}."""
    out = subprocess.run(["qstat", "-j", job_id], capture_output=True, text=True, check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def test_site_options_reach_the_job(gridengine: dict[str, str], tmp_path: Path) -> None:
    """An extra -l resource and extra qsub arguments (priority, and a hold so the job waits to be looked at)."""
    cluster = GridEngineCluster(
        extra_resources={"s_rt": "0:10:0", "h_stack": "16M"}, extra_qsub_args=["-p", "-5", "-h"]
    )
    job_id = cluster.submit(job(tmp_path, ["/bin/true"], resources=Resources(memory=0.5, runtime=60)))
    try:
        assert cluster.statuses([job_id])[job_id].raw == "hqw"
        details = qstat_j(job_id)
        assert details["hard resource_list"] == "h_vmem=512M,h_rt=60,s_rt=600,h_stack=16M"
        assert details["priority"] == "-5"
    finally:
        cluster.kill([job_id])


def test_unreachable_qmaster_is_unavailable_and_submits_nothing(
    gridengine: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port no qmaster listens on (the real qmaster is not touched): qsub, qstat and qdel fail as in an outage."""
    name = f"outage_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SGE_QMASTER_PORT", "1")
    cluster = GridEngineCluster(submit_retry_seconds=1.5)
    cluster.RETRY_FIRST_DELAY_S = 0.2
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="unable to send message to qmaster") as exc:
        cluster.submit(job(tmp_path, ["/bin/true"], name=name))
    assert 1.5 <= time.monotonic() - started < 10
    assert f"job '{name}' was not submitted" in str(exc.value)
    with pytest.raises(ClusterUnavailable):
        cluster.statuses(["1"])
    with pytest.raises(ClusterUnavailable):
        cluster.kill(["999999"])
    with pytest.raises(ClusterUnavailable):
        cluster.queue_limits("all.q")
    monkeypatch.delenv("SGE_QMASTER_PORT")
    assert GridEngineCluster().find_jobs(name) == []


def test_unknown_queue_lists_the_queues(gridengine: dict[str, str]) -> None:
    with pytest.raises(
        UnknownQueue, match=r"compute_resources.queue: Grid Engine has no queue 'nosuch.q'; its queues: .*all\.q"
    ):
        GridEngineCluster().queue_limits("nosuch.q")


def test_job_logs_are_private_and_a_jobs_exit_record_is_trusted(cluster: CountingCluster, tmp_path: Path) -> None:
    """Issue 13: the shepherd creates the .o/.e files with execd's umask (0644) before the job script runs; the
    script makes them 0600 before anything is written to them. Issue 12: an exit record written inside the job, as
    the worker node writes it, is this user's and private, so the watcher trusts it."""
    from jobmon_airflow.records import ExitRecord
    from jobmon_airflow.watch import read_exit_record

    record_path = tmp_path / "logs" / "ti-9.exit.json"
    record = ExitRecord(9, "D", exit_status=0, nodename="n")
    writes_record = (
        "import sys\n"
        "from jobmon_airflow.files import write_atomically\n"
        f"write_atomically(sys.argv[1], {record.to_json()!r}, durable=True)\n"
        "print('out'); print('err', file=sys.stderr)\n"
    )
    single = job(tmp_path, [PY, "-c", writes_record, str(record_path)])
    array = job(tmp_path, [PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"], array_length=2)
    single_id, array_id = cluster.submit(single), cluster.submit(array)
    records = finish(cluster, [single_id, f"{array_id}.1", f"{array_id}.2"])
    assert {r.kind for r in records.values()} == {ExitKind.DONE}
    logs = [*cluster.log_paths(single, single_id), *(p for i in (1, 2) for p in cluster.log_paths(array, array_id, i))]
    assert [p.read_text() for p in logs] == ["out\n", "err\n"] * 3
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in logs} == {p.name: "0o600" for p in logs}
    assert oct(record_path.stat().st_mode & 0o777) == "0o600"
    assert read_exit_record(str(record_path), 9) == record
