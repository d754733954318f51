"""What both backends share (``clusters/base.py``), and the rule that nothing under ``clusters`` imports Airflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobmon_airflow.clusters.base import ClusterError, ClusterUnavailable, UnknownQueue, log_file_paths, split_job_id
from jobmon_airflow.clusters.gridengine import check_job_id
from jobmon_airflow.resources import ResourceError


@pytest.mark.parametrize(
    ("job_id", "split"),
    [("12", ("12", None)), ("12.3", ("12", 3)), ("0.1", ("0", 1)), ("local-7", ("local-7", None))],
)
def test_split_job_id(job_id: str, split: tuple[str, int | None]) -> None:
    assert split_job_id(job_id) == split


@pytest.mark.parametrize("job_id", ["", "12.", ".3", "12.x", "12.3.4", "1 2", "12.-1", " 12"])
def test_split_job_id_refuses_what_is_no_job_id(job_id: str) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        split_job_id(job_id)


@pytest.mark.parametrize("job_id", ["-u", "abc", "abc.1", ""])
def test_grid_engine_ids_are_numbers(job_id: str) -> None:
    with pytest.raises(ValueError, match="not a Grid Engine job id"):
        check_job_id(job_id)
    assert check_job_id("12.3") == ("12", 3)


def test_log_file_paths_are_grid_engines_default_names(tmp_path: Path) -> None:
    assert log_file_paths(tmp_path, "job", "12") == (tmp_path / "job.o12", tmp_path / "job.e12")
    assert log_file_paths(tmp_path, "arr", "12", 3) == (tmp_path / "arr.o12.3", tmp_path / "arr.e12.3")


def test_error_classes() -> None:
    assert issubclass(ClusterUnavailable, ClusterError)  # transient: existing `except ClusterError` still catch it
    assert issubclass(UnknownQueue, ResourceError)  # configuration: operators fail without retry


def test_the_clusters_import_no_airflow_and_no_adapter() -> None:
    code = (
        "import sys\n"
        "import jobmon_airflow.clusters, jobmon_airflow.clusters.gridengine, jobmon_airflow.clusters.local\n"
        "import jobmon_airflow.clusters.local_shepherd, jobmon_airflow.clusters.local_supervisor\n"
        "import jobmon_airflow.clusters.local_procs\n"
        "bad = ('airflow', 'jobmon_airflow.hooks', 'jobmon_airflow.service', 'jobmon_airflow.operators')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
