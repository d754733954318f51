"""The read-only insights (workflows, tasks, grouped errors, resource usage) on a known workflow."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobmon_airflow.service import NotFound, Services
from jobmon_airflow.service.core import utcnow
from jobmon_airflow.service.insight_types import PageRequest
from jobmon_airflow.service.insights import error_signature
from tests.support.insights import KnownWorkflow, build_known_workflow


@pytest.fixture
def known(services: Services) -> KnownWorkflow:
    return build_known_workflow(services)


def test_workflow_list_counts_buckets_and_filters(services: Services, known: KnownWorkflow) -> None:
    other = services.binding.bind_workflow_run(dag_id="other_dag", run_id="r", user="bob")
    ins = services.insights
    page = ins.workflows(page=PageRequest(0, 10))
    assert page.total == 2 and [w.id for w in page.items] == [other.workflow_id, known.workflow_id]
    (wf,) = ins.workflows(dag_ids=["known_dag"], page=PageRequest()).items
    # prep + model_0..4 + model_7 done; model_5, model_6 pending (E → G after errors); agg registered
    assert wf.tasks == 10 and wf.buckets == {"PENDING": 3, "SCHEDULED": 0, "RUNNING": 0, "DONE": 7, "FATAL": 0}
    assert (wf.user, wf.status_name, wf.runs, wf.retries) == ("alice", "RUNNING", 1, 3)
    assert [w.dag_id for w in ins.workflows(user="bob", page=PageRequest()).items] == ["other_dag"]
    assert ins.workflows(dag_ids=[], page=PageRequest()).total == 0
    assert ins.workflows(status="done", page=PageRequest()).total == 0
    assert ins.workflows(status="R", page=PageRequest()).total == 2
    assert ins.workflows(since=utcnow() + timedelta(days=1), page=PageRequest()).total == 0
    assert ins.workflows(until=utcnow() + timedelta(days=1), page=PageRequest()).total == 2
    second = ins.workflows(page=PageRequest(1, 1))
    assert [w.id for w in second.items] == [known.workflow_id] and second.next_offset is None
    with pytest.raises(ValueError, match="status: unknown status 'nope'"):
        ins.workflows(status="nope", page=PageRequest())
    with pytest.raises(ValueError, match="limit"):
        PageRequest(0, 0)


def test_workflow_detail_has_runs_and_per_template_progress(services: Services, known: KnownWorkflow) -> None:
    detail = services.insights.workflow(known.workflow_id)
    assert detail.summary.dag_id == "known_dag" and len(detail.runs) == 1 and detail.runs[0].user == "alice"
    progress = {t.name: (t.tasks, t.buckets["DONE"], t.buckets["PENDING"]) for t in detail.templates}
    assert progress == {"agg": (1, 0, 1), "model": (8, 6, 2), "prep": (1, 1, 0)}
    with pytest.raises(NotFound):
        services.insights.workflow(10_000)


def test_tasks_page_with_bucket_and_template_filters(services: Services, known: KnownWorkflow) -> None:
    ins = services.insights
    everything = ins.tasks(known.workflow_id, page=PageRequest(0, 4))
    assert everything.total == 10 and len(everything.items) == 4 and everything.next_offset == 4
    pending = ins.tasks(known.workflow_id, bucket="PENDING", page=PageRequest())
    assert {t.name for t in pending.items} == {"model_5", "model_6", "agg"}
    models = ins.tasks(known.workflow_id, template="model", bucket="DONE", page=PageRequest())
    assert models.total == 6 and all(t.template == "model" for t in models.items)
    m7 = next(t for t in models.items if t.name == "model_7")
    assert (m7.num_attempts, m7.retries, m7.task_instance_status, m7.maxrss) == (2, 1, "D", int(2.5 * 1024**3))
    with pytest.raises(ValueError, match="bucket"):
        ins.tasks(known.workflow_id, bucket="LATE", page=PageRequest())
    with pytest.raises(NotFound):
        ins.tasks(10_000, page=PageRequest())


def test_task_detail_lists_every_instance(services: Services, known: KnownWorkflow) -> None:
    detail = services.insights.task(known.models[7])
    assert [i.status for i in detail.instances] == ["D", "Z"]  # newest first
    done, killed = detail.instances
    assert killed.requested_resources["memory"] == 2 and done.requested_resources["memory"] == 3
    assert (done.resources_type, killed.exit_status, killed.queue) == ("A", 137, "all.q")
    assert killed.errors and "killed: memory" in killed.errors[0].description
    assert done.stderr and done.stderr.endswith(".e") and done.distributor_id
    assert detail.template == "model" and detail.dag_id == "known_dag"


def test_errors_group_by_masked_message(services: Services, known: KnownWorkflow) -> None:
    groups = services.insights.error_groups(known.workflow_id)
    by_sig = {g.signature: g for g in groups}
    memory = next(g for s, g in by_sig.items() if s.startswith("Traceback"))
    assert memory.count == 2 and set(memory.task_ids) == {known.models[5], known.models[6]}
    missing = next(g for s, g in by_sig.items() if s.startswith("FileNotFoundError"))
    assert missing.count == 2 and missing.task_count == 2
    assert sum(g.count for g in groups) == 5 and all(g.total == 5 for g in groups)
    assert len(services.insights.error_groups(known.workflow_id, limit=1)) == 1
    assert error_signature("MemoryError: job 12 at 0x7fab") == error_signature("MemoryError: job 99 at 0x1")


def test_resource_usage_per_template(services: Services, known: KnownWorkflow) -> None:
    usage = {u.template: u for u in services.insights.resource_usage(known.workflow_id)}
    model = usage["model"]
    # done instances of model: 1..5 GiB and 2.5 GiB; requested 2 GiB ×5 and 3 GiB ×1
    assert model.memory_gib.count == 6 and model.memory_gib.max == pytest.approx(5.0)
    assert model.memory_gib.p50 == pytest.approx(2.5) and model.runtime_s.max == pytest.approx(500)
    assert model.requested_memory_gib.max == pytest.approx(3) and model.requested_memory_gib.min == pytest.approx(2)
    assert model.suggested["memory"] == "5G" and model.suggested["runtime"] == 500
    assert model.instances == 11 and len(model.points) == 11 and not model.sampled
    sampled = {u.template: u for u in services.insights.resource_usage(known.workflow_id, sample=4)}
    assert sum(len(u.points) for u in sampled.values()) <= 4 and sampled["model"].sampled
    only = services.insights.resource_usage(known.workflow_id, template="prep")
    assert [u.template for u in only] == ["prep"] and only[0].suggested["memory"] == "1G"


@pytest.mark.mariadb
def test_usage_aggregate_is_one_pass_over_the_covering_index(mariadb_url: str) -> None:
    """The statement that reads every ended instance of a workflow is grouped in the order of
    ``ix_task_instance_workflow_run_id_status_usage`` and reads nothing else: MariaDB's plan is that index alone,
    with no row read and no temporary table (benchmark g times it; this keeps the plan)."""
    import sqlalchemy as sa

    from jobmon_airflow import db
    from jobmon_airflow.service.insight_usage import array_groups
    from tests.support.databases import drop_everything

    engine = db.get_engine(mariadb_url)
    drop_everything(engine)
    db.upgrade(engine)
    svc = Services.for_engine(engine)
    known = build_known_workflow(svc)
    statement = array_groups([known.workflow_run_id]).compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        (plan,) = conn.execute(sa.text(f"EXPLAIN {statement}")).mappings().all()
    assert plan["key"] == "ix_task_instance_workflow_run_id_status_usage", plan
    assert "Using index" in plan["Extra"] and "temporary" not in plan["Extra"] and "filesort" not in plan["Extra"]
    drop_everything(engine)
