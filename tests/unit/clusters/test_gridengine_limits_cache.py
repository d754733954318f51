"""The queue limits cache file shared by a host's processes (each Airflow task runs in a process of its own).

Commands are answered from the recorded ``qconf`` outputs in ``tests/data/gridengine``; no Grid Engine is needed
except for the last test.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from jobmon_airflow.clusters.gridengine import GridEngineCluster
from jobmon_airflow.resources import QueueLimits

DATA = Path(__file__).resolve().parents[2] / "data" / "gridengine"
ANSWERS = {
    "qconf -sq": (DATA / "qconf_sq_all.q.txt").read_text(),
    "qconf -sp": (DATA / "qconf_sp_smp.txt").read_text(),
    "qconf -se": (DATA / "qconf_se_host.txt").read_text(),
}
QCONF_CALLS = [["qconf", "-sq", "all.q"], ["qconf", "-sp", "smp"], ["qconf", "-se", "vm"]]


class RecordedCluster(GridEngineCluster):
    """Answers qconf from recordings and remembers the commands it was asked to run."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.commands: list[list[str]] = []

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, ANSWERS[" ".join(argv[:2])], "")


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("queue-limits-*.json"))


def test_second_process_reads_the_file_instead_of_qconf(tmp_path: Path) -> None:
    cache_dir = tmp_path / "home" / "cache"
    first = RecordedCluster(limits_cache_dir=cache_dir)
    limits = first.queue_limits()
    assert first.commands == QCONF_CALLS
    assert limits.name == "all.q" and limits.max_cores == 2 and limits.max_memory is not None
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert len(cache_files(cache_dir)) == 1
    assert list(cache_dir.glob("*.tmp")) == []  # the temporary file was renamed into place

    second = RecordedCluster(limits_cache_dir=cache_dir)
    assert second.queue_limits("all.q") == limits  # exact round trip, float memory included
    assert second.commands == []


def test_file_round_trips_unlimited_values(tmp_path: Path) -> None:
    limits = QueueLimits(name="long.q", max_cores=None, max_memory=1.0 / 3, max_runtime=None)
    first = RecordedCluster(limits_cache_dir=tmp_path)
    first._write_limits_file(["/sge", "default", "long.q", "smp"], limits)
    second = RecordedCluster(sge_root="/sge", limits_cache_dir=tmp_path)
    assert second.queue_limits("long.q") == limits
    assert second.commands == []


def test_file_is_per_cell_queue_and_pe(tmp_path: Path) -> None:
    RecordedCluster(limits_cache_dir=tmp_path).queue_limits("all.q")
    for other in (
        RecordedCluster(sge_cell="other", limits_cache_dir=tmp_path),
        RecordedCluster(pe="mpi", limits_cache_dir=tmp_path),
    ):
        other.queue_limits("all.q")
        assert other.commands[0] == ["qconf", "-sq", "all.q"]
    assert len(cache_files(tmp_path)) == 3


def age_file(path: Path, seconds: float) -> None:
    data = json.loads(path.read_text())
    data["written"] -= seconds
    path.write_text(json.dumps(data))


def test_stale_file_is_read_again_from_qconf(tmp_path: Path) -> None:
    RecordedCluster(limits_cache_dir=tmp_path, limits_ttl=60).queue_limits()
    [path] = cache_files(tmp_path)
    age_file(path, 30)
    fresh = RecordedCluster(limits_cache_dir=tmp_path, limits_ttl=60)
    fresh.queue_limits()
    assert fresh.commands == []

    age_file(path, 31)  # now 61 s old
    stale = RecordedCluster(limits_cache_dir=tmp_path, limits_ttl=60)
    stale.queue_limits()
    assert stale.commands == QCONF_CALLS
    assert time.time() - json.loads(path.read_text())["written"] < 10  # rewritten with a new timestamp


def test_limits_from_the_file_expire_in_process_when_the_file_would(tmp_path: Path) -> None:
    RecordedCluster(limits_cache_dir=tmp_path, limits_ttl=60).queue_limits()
    [path] = cache_files(tmp_path)
    age_file(path, 59)
    cluster = RecordedCluster(limits_cache_dir=tmp_path, limits_ttl=60)
    cluster.queue_limits()
    assert cluster.commands == []
    cluster.limits_ttl = 2  # what is left of the file's age budget, not a fresh 60 s, governs the dict entry
    cluster.queue_limits()
    assert cluster.commands == QCONF_CALLS


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "\udcff",
        "[]",
        '{"key": 1}',
        '{"key": ["x"], "written": 1, "limits": {"name": "all.q"}}',
        "WRONG_KEY",
        "FROM_THE_FUTURE",
        "EXTRA_FIELD",
        "WRONG_TYPE",
    ],
)
def test_corrupt_file_is_ignored_and_rewritten(tmp_path: Path, text: str) -> None:
    RecordedCluster(limits_cache_dir=tmp_path).queue_limits()
    [path] = cache_files(tmp_path)
    good = json.loads(path.read_text())
    if text == "WRONG_KEY":
        text = json.dumps({**good, "key": ["/elsewhere", "default", "all.q", "smp"]})
    elif text == "FROM_THE_FUTURE":
        text = json.dumps({**good, "written": time.time() + 3600})
    elif text == "EXTRA_FIELD":
        text = json.dumps({**good, "limits": {**good["limits"], "max_gpus": 1}})
    elif text == "WRONG_TYPE":
        text = json.dumps({**good, "limits": {**good["limits"], "max_cores": "2"}})
    path.write_bytes(text.encode("utf-8", "surrogateescape"))

    cluster = RecordedCluster(limits_cache_dir=tmp_path)
    limits = cluster.queue_limits()
    assert cluster.commands == QCONF_CALLS
    assert limits.max_cores == 2
    rewritten = json.loads(path.read_text())
    assert rewritten["key"] == good["key"] and rewritten["limits"] == good["limits"]


def test_unwritable_cache_dir_does_not_fail(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cluster = RecordedCluster(limits_cache_dir=blocker / "cache")
    assert cluster.queue_limits().max_cores == 2
    assert cluster.commands == QCONF_CALLS


def test_without_cache_dir_each_process_asks_qconf_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        cluster = RecordedCluster()
        first = cluster.queue_limits()
        assert cluster.queue_limits() == first  # the in-process cache still works
        assert cluster.commands == QCONF_CALLS
    assert list(tmp_path.rglob("*")) == []


def test_hook_caches_under_jobmon_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobmon_airflow.hooks.gridengine import GridEngineHook

    monkeypatch.setenv("JOBMON_AIRFLOW_HOME", str(tmp_path / "jobmon"))
    hook = GridEngineHook()
    hook.__dict__["extras"] = {}  # no connection lookup
    assert hook.get_cluster().limits_cache_dir == tmp_path / "jobmon" / "cache"


@pytest.mark.gridengine
def test_real_cluster_second_instance_uses_the_file(gridengine: dict[str, str], tmp_path: Path) -> None:
    class Counting(GridEngineCluster):
        calls = 0

        def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            type(self).calls += 1
            return super()._run(argv, stdin)

    kwargs = {"sge_root": gridengine["SGE_ROOT"], "sge_cell": gridengine["SGE_CELL"], "limits_cache_dir": tmp_path}
    limits = Counting(**kwargs).queue_limits()  # type: ignore[arg-type]
    assert Counting.calls >= 1
    before = Counting.calls
    assert Counting(**kwargs).queue_limits() == limits  # type: ignore[arg-type]
    assert Counting.calls == before
    assert os.listdir(tmp_path) == [cache_files(tmp_path)[0].name]
