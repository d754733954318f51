"""The cluster adapter (``hooks/cluster.py``): the spec a trigger carries and the cluster built from it, and the
Grid Engine connection's extras as GridEngineHook reads and checks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow.clusters.gridengine import GridEngineCluster
from jobmon_airflow.clusters.local import LocalCluster
from jobmon_airflow.hooks.cluster import cluster_spec, get_cluster
from jobmon_airflow.hooks.gridengine import GridEngineHook


@pytest.fixture
def extras(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The extras of every GridEngineHook in the test (no connection lookup)."""
    values: dict[str, Any] = {}
    monkeypatch.setattr(GridEngineHook, "extras", property(lambda self: values))
    return values


def test_local_spec_lives_under_jobmon_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBMON_AIRFLOW_HOME", str(tmp_path / "home"))
    spec = cluster_spec("local")
    assert spec == {"type": "local", "root": str(tmp_path / "home" / "local-cluster")}
    cluster = get_cluster({**spec, "slots": 3})
    assert (
        isinstance(cluster, LocalCluster) and cluster.slots == 3 and cluster.root == tmp_path / "home" / "local-cluster"
    )


def test_gridengine_spec_names_the_connection(extras: dict[str, Any]) -> None:
    assert cluster_spec("gridengine", gridengine_conn_id="ge_site") == {"type": "gridengine", "conn_id": "ge_site"}
    extras.update(queue="long.q", pe="mpi")
    cluster = get_cluster(cluster_spec("gridengine"))
    assert isinstance(cluster, GridEngineCluster) and (cluster.queue, cluster.pe) == ("long.q", "mpi")


@pytest.mark.parametrize("spec", [{"type": "slurm"}, {"type": ""}])
def test_unknown_cluster_types(spec: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cluster: expected one of local, gridengine, got 'slurm'"):
        cluster_spec("slurm")
    with pytest.raises(ValueError, match="cluster spec: unknown type"):
        get_cluster(spec)


def test_hook_passes_site_options(extras: dict[str, Any]) -> None:
    extras.update(
        memory_resource="m_mem_free",
        extra_resources={"h_stack": "32M"},
        extra_qsub_args=["-p", "-100"],
        submit_retry_seconds=0,
    )
    cluster = GridEngineHook().get_cluster()
    assert cluster.site.memory_resource == "m_mem_free"
    assert cluster.site.extra_resources == (("h_stack", "32M"),)
    assert cluster.site.extra_qsub_args == ("-p", "-100")
    assert cluster.submit_retry_seconds == 0
    assert cluster.accounting.memory_resource == "m_mem_free"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"extra_qsub_args": ["-t", "1-3"]}, "extra extra_qsub_args: '-t' is set by the backend"),
        ({"extra_qsub_args": "-p -5"}, "extra extra_qsub_args: expected a list of strings"),
        ({"extra_resources": {"h_rt": "1:00:00"}}, "extra extra_resources 'h_rt': h_rt is requested by the backend"),
        ({"extra_resources": ["s_rt 60"]}, "extra extra_resources: expected 'name=value' items"),
        ({"memory_resource": "mem_free"}, "extra memory_resource: expected one of h_vmem, m_mem_free"),
        ({"submit_retry_seconds": -1}, "extra submit_retry_seconds: expected seconds ≥ 0"),
    ],
)
def test_hook_refuses_bad_extras_naming_connection_and_extra(
    extras: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    extras.update(extra)
    with pytest.raises(ValueError, match=f"^connection 'gridengine_default' {message}"):
        GridEngineHook().get_cluster()


def test_ui_placeholder_shows_the_site_options() -> None:
    placeholder = GridEngineHook.get_ui_field_behaviour()["placeholders"]["extra"]
    for key in ("memory_resource", "extra_resources", "extra_qsub_args", "submit_retry_seconds"):
        assert key in placeholder
