"""Site options of a ``gridengine`` connection in the qsub argv: the memory resource, extra ``-l`` resources and
extra qsub arguments, and every refusal (options and resources the backend sets itself, words qsub would misread)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow.clusters.base import ExitKind, JobRequest
from jobmon_airflow.clusters.gridengine import (
    BACKEND_QSUB_OPTIONS,
    GridEngineCluster,
    parse_accounting_line,
    qsub_argv,
    site_options,
)
from jobmon_airflow.hooks.gridengine import GridEngineHook
from jobmon_airflow.resources import Resources

DATA = Path(__file__).resolve().parents[2] / "data" / "gridengine"


def request(tmp_path: Path, **resources: Any) -> JobRequest:
    return JobRequest("task", ["/bin/true"], Resources(**resources), tmp_path)


def option(argv: Sequence[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


# -- memory_resource


def test_h_vmem_is_the_default_and_per_slot(tmp_path: Path) -> None:
    argv = qsub_argv(request(tmp_path, cores=2, memory=4, runtime=60), site=site_options())
    assert option(argv, "-l") == ["h_vmem=2048M", "h_rt=0:01:00"]
    assert argv == qsub_argv(request(tmp_path, cores=2, memory=4, runtime=60))


def test_m_mem_free_is_asked_for_the_whole_job(tmp_path: Path) -> None:
    argv = qsub_argv(request(tmp_path, cores=2, memory=4, runtime=60), site=site_options("m_mem_free"))
    assert option(argv, "-l") == ["m_mem_free=4096M", "h_rt=0:01:00"]
    assert option(argv, "-pe") == ["smp"]
    assert not any(word.startswith("h_vmem") for word in argv)


@pytest.mark.parametrize("resource", ["mem_free", "H_VMEM", "", "h_rt"])
def test_other_memory_resources_are_refused(resource: str) -> None:
    with pytest.raises(ValueError, match=f"^memory_resource: expected one of h_vmem, m_mem_free, got '{resource}'"):
        site_options(resource)


def accounting_line(category: str, slots: int) -> str:
    """The recorded qdel of a running job (failed 100, exit 137, maxvmem ≈ 1.77 MiB) with another request."""
    fields = (DATA / "accounting_qdel_running.txt").read_text().strip().split(":")
    fields[34], fields[39] = str(slots), category
    return ":".join(fields)


def test_accounting_reads_the_configured_memory_resource() -> None:
    # m_mem_free=1M for the whole job: maxvmem 1.77 MiB reached it, so the kill was for memory.
    line = accounting_line("-l m_mem_free=1M,h_rt=60", slots=2)
    info = parse_accounting_line(line, "m_mem_free")
    assert (info.kind, info.resource) == (ExitKind.RESOURCE_KILL, "memory")
    assert info.reason.startswith("exceeded memory m_mem_free=1.0M")
    assert parse_accounting_line(line).kind is ExitKind.DELETED  # h_vmem (the default) was not requested
    # h_vmem=1M per slot × 2 slots: 2 MiB not reached, so a plain deletion.
    assert parse_accounting_line(accounting_line("-l h_vmem=1M,h_rt=60", slots=2)).kind is ExitKind.DELETED


# -- extra_resources


@pytest.mark.parametrize(
    "extra",
    [
        {"h_stack": "32M", "s_rt": "0:10:0", "arch": "lx-amd64"},
        ["h_stack=32M", "s_rt=0:10:0", "arch=lx-amd64"],
        ("h_stack=32M", "s_rt=0:10:0", "arch=lx-amd64"),
    ],
)
def test_extra_resources_are_added_as_l_options(tmp_path: Path, extra: Any) -> None:
    argv = qsub_argv(request(tmp_path, runtime=60), site=site_options(extra_resources=extra))
    assert option(argv, "-l") == ["h_vmem=1024M", "h_rt=0:01:00", "h_stack=32M", "s_rt=0:10:0", "arch=lx-amd64"]


def test_extra_resource_numbers_are_written_plainly(tmp_path: Path) -> None:
    argv = qsub_argv(request(tmp_path), site=site_options(extra_resources={"gpu": 1, "x.y-z_1": 0.5}))
    assert option(argv, "-l")[2:] == ["gpu=1", "x.y-z_1=0.5"]


@pytest.mark.parametrize(
    ("memory_resource", "extra", "message"),
    [
        ("h_vmem", {"h_rt": "1:00:00"}, "extra_resources 'h_rt': h_rt is requested by the backend itself"),
        ("h_vmem", {"H_RT": "60"}, "extra_resources 'H_RT': H_RT is requested by the backend"),
        ("h_vmem", {"h_vmem": "2G"}, "extra_resources 'h_vmem': h_vmem is requested by the backend"),
        ("m_mem_free", {"h_vmem": "2G"}, "extra_resources 'h_vmem': h_vmem is requested by the backend"),
        ("m_mem_free", {"m_mem_free": "2G"}, "extra_resources 'm_mem_free': m_mem_free is requested by the backend"),
        ("h_vmem", {"qname": "long.q"}, "extra_resources 'qname': qname is requested by the backend"),
        ("h_vmem", {"1gpu": "1"}, "extra_resources '1gpu': expected a resource name like"),
        ("h_vmem", {"a b": "1"}, "extra_resources 'a b': expected a resource name"),
        ("h_vmem", {"-l": "1"}, "extra_resources '-l': expected a resource name"),
        ("h_vmem", {"s_rt": "1 0"}, "extra_resources 's_rt': the value of s_rt must be non-empty without spaces"),
        ("h_vmem", {"s_rt": "60,h_rt=1"}, "extra_resources 's_rt': the value of s_rt must be non-empty"),
        ("h_vmem", {"s_rt": ""}, "extra_resources 's_rt': the value of s_rt must be non-empty"),
        ("h_vmem", {"s_rt": "60\n"}, "extra_resources 's_rt': the value of s_rt must be"),
        ("h_vmem", {"s_rt": True}, "extra_resources 's_rt': expected a string or number"),
        ("h_vmem", ["s_rt"], "extra_resources: expected 'name=value' items, got 's_rt'"),
        ("h_vmem", ["h_rt=60"], "extra_resources 'h_rt=60': h_rt is requested by the backend"),
        ("h_vmem", "s_rt=60", "extra_resources: expected a mapping"),
        ("h_vmem", 5, "extra_resources: expected a mapping"),
    ],
)
def test_extra_resources_refused_with_the_offending_one(memory_resource: str, extra: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        site_options(memory_resource, extra_resources=extra)


# -- extra_qsub_args


def test_extra_qsub_args_are_appended_as_argv_elements(tmp_path: Path) -> None:
    extra = ["-p", "-5", "-A", "team a", "-h", "-soft", "-l", "s_rt=0:10:0,h_stack=8M", "-m", "n"]
    argv = qsub_argv(request(tmp_path), site=site_options(extra_qsub_args=extra))
    assert argv[-len(extra) :] == extra  # last, each word one element: "team a" is not split
    assert argv[:2] == ["qsub", "-terse"]


@pytest.mark.parametrize("backend_option", sorted(BACKEND_QSUB_OPTIONS))
def test_every_backend_option_is_refused(backend_option: str) -> None:
    with pytest.raises(ValueError, match=f"^extra_qsub_args: '{backend_option}' is set by the backend"):
        site_options(extra_qsub_args=["-p", "-5", backend_option, "x"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-l", "h_rt=1:00:00"], "extra_qsub_args '-l h_rt=1:00:00': h_rt is requested by the backend itself"),
        (["-l", "s_rt=60,h_vmem=1G"], "extra_qsub_args '-l s_rt=60,h_vmem=1G': h_vmem is requested by the backend"),
        (["-hard", "-l", "q=all.q"], "extra_qsub_args '-l q=all.q': q is requested by the backend"),
        (["-l", "s_rt"], "extra_qsub_args '-l s_rt': the value of s_rt must be non-empty"),
        (["-l"], "extra_qsub_args: '-l' needs a value"),
        (["-p"], "extra_qsub_args: '-p' needs a value"),
        (["script.sh"], "extra_qsub_args: expected an option starting with '-' at position 0, got 'script.sh'"),
        (["-p", "5", "10"], "extra_qsub_args: expected an option starting with '-' at position 2, got '10'"),
        (["-"], "extra_qsub_args: expected an option starting with '-' at position 0"),
        (["-A", "a\nb"], "extra_qsub_args: expected strings without control characters"),
        (["-A", 5], "extra_qsub_args: expected strings without control characters, got 5"),
        ("-p -5", "extra_qsub_args: expected a list of strings"),
        ({"-p": "-5"}, "extra_qsub_args: expected a list of strings"),
    ],
)
def test_extra_qsub_args_refused_with_the_offending_element(extra: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        site_options(extra_qsub_args=extra)


# -- the cluster and the hook


class RecordedCluster(GridEngineCluster):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands: list[list[str]] = []

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, "77\n", "")


def test_cluster_submits_with_its_site_options(tmp_path: Path) -> None:
    cluster = RecordedCluster(
        memory_resource="m_mem_free", extra_resources={"h_stack": "32M"}, extra_qsub_args=["-p", "-5"]
    )
    assert cluster.submit(request(tmp_path, memory=2)) == "77"
    [argv] = cluster.commands
    assert option(argv, "-l") == ["m_mem_free=2048M", "h_rt=0:10:00", "h_stack=32M"]
    assert argv[-2:] == ["-p", "-5"]


def test_cluster_refuses_bad_site_options_when_built() -> None:
    with pytest.raises(ValueError, match=r"^extra_qsub_args: '-N' is set by the backend"):
        GridEngineCluster(extra_qsub_args=["-N", "x"])


def test_hook_placeholder_is_json_with_valid_site_options() -> None:
    extra = json.loads(GridEngineHook.get_ui_field_behaviour()["placeholders"]["extra"])
    site_options(extra["memory_resource"], extra["extra_resources"], extra["extra_qsub_args"])
