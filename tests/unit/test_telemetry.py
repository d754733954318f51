"""Telemetry: transitions are counted when their transaction commits (never when it rolls back); submissions and
resource kills follow the task instance's I→O and →Z; cluster commands are timed and their failures counted."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY, CollectorRegistry

from jobmon_airflow import db, telemetry
from jobmon_airflow.service import Services
from tests.unit.server.helpers import make_instances


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_transitions_count_at_commit_and_not_on_rollback(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 't.sqlite'}")
    before = value("jobmon_transitions_total", machine="m", status="X")
    with db.session_scope(engine) as s:
        telemetry.count_transitions(s, "m", "X", 3)
        assert value("jobmon_transitions_total", machine="m", status="X") == before  # not yet committed
    assert value("jobmon_transitions_total", machine="m", status="X") == before + 3
    with pytest.raises(RuntimeError), db.session_scope(engine) as s:
        telemetry.count_transitions(s, "m", "X", 5)
        raise RuntimeError("rolled back")
    assert value("jobmon_transitions_total", machine="m", status="X") == before + 3


def test_service_writes_count_submissions_transitions_and_resource_kills(tmp_path: Path) -> None:
    svc = Services.for_engine(db.get_engine(f"sqlite:///{tmp_path / 'state.sqlite'}"))
    db.ensure_schema(svc.engine)
    submitted = value("jobmon_submissions_total")
    done = value("jobmon_transitions_total", machine="task_instance", status="D")
    kills = value("jobmon_resource_kills_total")
    make_instances(svc, ["D", "D", "Z", "R"])
    assert value("jobmon_submissions_total") - submitted == 4  # one I→O each
    assert value("jobmon_transitions_total", machine="task_instance", status="D") - done == 2
    assert value("jobmon_resource_kills_total") - kills == 1


def test_cluster_commands_are_timed_and_failures_counted() -> None:
    ok = value("jobmon_cluster_command_seconds_count", cluster="c", command="true")
    errors = value("jobmon_cluster_command_errors_total", cluster="c", command="false")
    telemetry.timed_command("c", "true", subprocess.run, ["true"])
    telemetry.timed_command("c", "false", subprocess.run, ["false"])
    with pytest.raises(FileNotFoundError):
        telemetry.timed_command("c", "false", subprocess.run, ["/nonexistent/jobmon-cmd"])
    assert value("jobmon_cluster_command_seconds_count", cluster="c", command="true") == ok + 1
    assert value("jobmon_cluster_command_errors_total", cluster="c", command="false") == errors + 2


def test_queue_wait_takes_naive_times_as_utc() -> None:
    before = value("jobmon_queue_wait_seconds_sum")
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    telemetry.queue_wait((now - timedelta(seconds=90)).replace(tzinfo=None), now)
    telemetry.queue_wait(None, now)
    assert value("jobmon_queue_wait_seconds_sum") - before == pytest.approx(90)


# -- the StatsD bridge (Airflow's own metrics)


def bridged(*packets: bytes) -> tuple[telemetry.StatsdBridge, dict[str, float]]:
    bridge = telemetry.StatsdBridge()
    for packet in packets:
        bridge.ingest(packet)
    registry = CollectorRegistry()
    registry.register(bridge)
    samples = {s.name: s.value for m in registry.collect() for s in m.samples if not s.name.endswith("_created")}
    return bridge, samples


def test_statsd_counters_gauges_and_timers_become_prometheus_metrics() -> None:
    _, samples = bridged(
        b"airflow.scheduler_heartbeat:1|c\nairflow.scheduler_heartbeat:1|c",
        b"airflow.ti_successes:1|c|@0.5|#dag:x",
        b"airflow.executor.open_slots:16|g\nairflow.executor.open_slots:-4|g",
        b"airflow.dag.run.duration:1500|ms\nairflow.dag.run.duration:500|ms",
    )
    assert samples["airflow_scheduler_heartbeat_total"] == 2
    assert samples["airflow_ti_successes_total"] == 2  # sampled at 1/2
    assert samples["airflow_executor_open_slots"] == 12
    assert samples["airflow_dag_run_duration_count"] == 2 and samples["airflow_dag_run_duration_sum"] == 2.0
    assert samples["statsd_bridge_dropped_total"] == 0


def test_statsd_bad_lines_and_too_many_names_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "STATSD_MAX_NAMES", 2)
    bridge, samples = bridged(
        b"a:1|c\nb:1|g\n",  # the two names allowed
        b"c:1|c\n",  # a third name
        b"a:1|g\n",  # a counter used as a gauge
        b"d:x|c\n:1|c\n9x:1|c\ne:1|zz\nf:nan|g\ng:1|c|@0\nh\n",  # malformed
    )
    assert samples == {"a_total": 1, "b": 1, "statsd_bridge_dropped_total": 9}
    assert bridge.dropped == 9


def test_statsd_bridge_serves_what_airflows_client_sends_behind_a_token(tmp_path: Path) -> None:
    statsd = pytest.importorskip("statsd")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    bridge = telemetry.StatsdBridge()
    udp, http = telemetry.serve_statsd(("127.0.0.1", 0), ("127.0.0.1", 0), token, bridge)
    try:
        statsd.StatsClient("127.0.0.1", udp.getsockname()[1], prefix="airflow").incr("scheduler_heartbeat")
        deadline = time.monotonic() + 10
        while not bridge.received and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{http.server_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert "airflow_scheduler_heartbeat_total 1.0" in resp.read().decode()
    finally:
        http.shutdown()
        udp.close()


def test_a_transition_with_a_further_step_counts_both_statuses(tmp_path: Path) -> None:
    """Tasks queued and instantiated in one UPDATE (``transition(..., then=)``) went through Q and I: both count."""
    from jobmon_airflow import states
    from jobmon_airflow.service.binding import TaskSpec
    from jobmon_airflow.service.core import TASK, transition

    svc = Services.for_engine(db.get_engine(f"sqlite:///{tmp_path / 'state.sqlite'}"))
    db.ensure_schema(svc.engine)
    run = svc.binding.bind_workflow_run(dag_id="d", run_id="r")
    task_ids = svc.binding.bind_tasks(run.workflow_id, [TaskSpec(f"t{i}", f"t{i}", "true") for i in range(3)])
    queued = value("jobmon_transitions_total", machine="task", status="Q")
    instantiating = value("jobmon_transitions_total", machine="task", status="I")
    with db.session_scope(svc.engine) as s:
        changed = transition(s, states.TASK_FSM, TASK, task_ids, "Q", then="I")
    assert sorted(changed) == sorted(task_ids)
    assert value("jobmon_transitions_total", machine="task", status="Q") - queued == 3
    assert value("jobmon_transitions_total", machine="task", status="I") - instantiating == 3
