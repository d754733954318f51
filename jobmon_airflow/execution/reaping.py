"""The workflow reaper's actions that need the cluster: orphans triaged exactly as the trigger would, Grid Engine
error states (Eqw), the clean-up of halted runs, and the texts of its Slack messages.

Triage reuses the trigger's evidence path (:func:`jobmon_airflow.watch.outcome`, exit records, accounting, the
lost grace) and records through :func:`~jobmon_airflow.execution.outcomes.record_events`; a job the cluster still
holds for an instance nobody waits for is deleted first (K). One cluster status call and at most one accounting
call per cluster per call, whatever the number of instances. No Airflow here: the sensors decide which instances
are orphans (they ask Airflow) and pass them in.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from jobmon_airflow import __version__, states
from jobmon_airflow.clusters.base import Cluster, JobState, JobStatus, split_job_id
from jobmon_airflow.execution.outcomes import record_events
from jobmon_airflow.records import ExitRecord, WatchEvent
from jobmon_airflow.service import Services
from jobmon_airflow.service.core import utcnow
from jobmon_airflow.service.reaping import ORPHAN_STATUSES, ReapedRun, Reaping, RunDecision
from jobmon_airflow.watch import DEFAULT_LOST_GRACE_S, outcome, read_exit_record

log = logging.getLogger(__name__)
TIS = states.TaskInstanceStatus
WFRS = states.WorkflowRunStatus

#: Job states in which the cluster still holds the job: the reaper deletes it before it concludes the instance.
IN_QUEUE = frozenset(
    {JobState.PENDING, JobState.RUNNING, JobState.SUSPENDED, JobState.ERROR, JobState.DELETING, JobState.UNKNOWN}
)


@dataclass(frozen=True)
class TriageResult:
    """What the reaper did to one instance: old → new status, from which evidence, and why."""

    task_instance_id: int
    job_id: str | None
    old_status: str
    new_status: str
    source: str  # exit_record, accounting, lost, triage, killed, cluster (Eqw), closed
    message: str

    @property
    def resource_kill(self) -> bool:
        return self.new_status == TIS.RESOURCE_ERROR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TriageResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ErrorJob:
    """A live instance whose job sits in Grid Engine's error state (Eqw), with the reason Grid Engine gives."""

    task_instance_id: int
    job_id: str
    cluster: str
    raw: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorJob:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def _statuses(clusters: Mapping[str, Cluster], jobs_by_cluster: Mapping[str, Sequence[str]]) -> dict[str, JobStatus]:
    """One status call per cluster for all its jobs (keys: "<cluster>/<job id>")."""
    out: dict[str, JobStatus] = {}
    for name, job_ids in jobs_by_cluster.items():
        if job_ids:
            for job_id, status in clusters[name].statuses(job_ids).items():
                out[f"{name}/{job_id}"] = status
    return out


def _kill(services: Services, clusters: Mapping[str, Cluster], jobs: Mapping[int, tuple[str, str]], why: str) -> None:
    """K, delete the jobs (one delete call per cluster), fail the tasks, then close the instances (K → F): after the
    delete nobody is left to report."""
    ids = list(jobs)
    services.lifecycle.request_kill(ids, message=f"Reaper: {why}")
    by_cluster: dict[str, set[str]] = defaultdict(set)
    for cluster, job_id in jobs.values():
        by_cluster[cluster].add(split_job_id(job_id)[0])
    for cluster, job_ids in by_cluster.items():
        clusters[cluster].kill(sorted(job_ids))
    services.lifecycle.end_killed(ids)
    Reaping(services.engine).close_killed(ids, f"Reaper: job deleted ({why})")


def triage(
    services: Services,
    clusters: Mapping[str, Cluster],
    ti_ids: Iterable[int],
    *,
    why: str,
    spare_running: bool = False,
    lost_grace_s: float = DEFAULT_LOST_GRACE_S,
) -> list[TriageResult]:
    """Conclude instances nobody waits for any more, each from the strongest evidence, as the trigger would.

    A job the cluster still holds is deleted first (K, then F); ``spare_running``: a running job is left to
    finish (Jobmon's hot resume). A gone job: its exit record, else accounting; with neither, overdue instances
    go R → T / O → X and are failed after the lost grace (counted from the deadline they missed). A kill nobody
    closed (K, job gone) and an instance never submitted (Q, or I without a job) end F: no worker to clean up.
    """
    reaping = Reaping(services.engine)
    before = {i: v for i, v in services.queries.task_instances(ti_ids).items() if v.status in ORPHAN_STATUSES}
    if not before:
        return []
    facts = reaping.instance_facts(before)
    jobs: dict[str, list[str]] = defaultdict(list)
    for i, v in before.items():
        if v.distributor_id:
            jobs[facts[i][0]].append(v.distributor_id)
    statuses = _statuses(clusters, jobs)

    def job_of(i: int) -> JobStatus | None:
        v = before[i]
        return statuses.get(f"{facts[i][0]}/{v.distributor_id}") if v.distributor_id else None

    to_kill: dict[int, tuple[str, str]] = {}
    never_ran: list[int] = []
    gone: list[int] = []
    for i, v in before.items():
        job = job_of(i)
        if job is None:
            never_ran.append(i)  # Q, or I before its job id was stored: nothing in the cluster
        elif job.state in IN_QUEUE:
            if spare_running and job.state == JobState.RUNNING and v.status in (TIS.RUNNING, TIS.TRIAGING):
                continue
            assert v.distributor_id is not None
            to_kill[i] = (facts[i][0], v.distributor_id)
        elif v.status == TIS.KILL_SELF:
            never_ran.append(i)  # killed earlier and the job is gone: nobody will report
        else:
            gone.append(i)
    if to_kill:
        held = [job for i in to_kill if (job := job_of(i)) is not None]
        log.warning(
            "Reaper: deleting %d jobs still in the cluster (%s), e.g. %s",
            len(to_kill), why, ", ".join(f"{j.job_id} ({j.raw or j.state.value})" for j in held[:5]),
        )  # fmt: skip
        _kill(services, clusters, to_kill, f"{why}; its job was still in the cluster")
        for i in to_kill:  # an error state's reason is worth its own row (one per such job: few)
            job = job_of(i)
            if job is not None and job.state == JobState.ERROR:
                reaping.log([i], f"Reaper: job {job.job_id} was in {job.raw}: {job.reason or 'no reason given'}")
    if never_ran:
        reaping.close_killed(never_ran, f"Reaper: {why}; no job left, no worker to clean up")
    events = _gone_events(services, clusters, reaping, before, facts, gone, statuses, why, lost_grace_s)
    by_cluster: dict[str, list[WatchEvent]] = defaultdict(list)
    for ev in events:
        by_cluster[facts[ev.task_instance_id][0]].append(ev)
    for cluster, evs in by_cluster.items():
        record_events(services, clusters[cluster], evs)
    done = [e.task_instance_id for e in events if e.status == TIS.DONE]
    if done:
        reaping.log(done, f"Reaper: {why}; the job had ended DONE")  # D itself writes no error log
    after = services.queries.task_instances(before)
    source = {e.task_instance_id: (e.source.value, e.message) for e in events}
    source.update({i: ("killed", f"job deleted: {why}") for i in to_kill})
    source.update({i: ("closed", "no job left") for i in never_ran})
    return [
        TriageResult(i, v.distributor_id, v.status, after[i].status, *source.get(i, ("triage", "")))
        for i, v in before.items()
        if after[i].status != v.status
    ]


def _gone_events(
    services: Services,
    clusters: Mapping[str, Cluster],
    reaping: Reaping,
    before: Mapping[int, Any],
    facts: Mapping[int, tuple[str, Any]],
    gone: Sequence[int],
    statuses: Mapping[str, JobStatus],
    why: str,
    lost_grace_s: float,
) -> list[WatchEvent]:
    """The trigger's evidence path for jobs that left the queue: records, then accounting, then deadlines."""
    if not gone:
        return []
    records: dict[int, ExitRecord | None] = {i: read_exit_record(before[i].exit_record, i) for i in gone}
    need: dict[str, list[str]] = defaultdict(list)
    for i in gone:
        if records[i] is None:
            need[facts[i][0]].append(before[i].distributor_id)
    exit_infos = {
        f"{name}/{job_id}": info
        for name, job_ids in need.items()
        for job_id, info in clusters[name].exit_info(job_ids).items()
    }
    key = {i: f"{facts[i][0]}/{before[i].distributor_id}" for i in gone}
    no_evidence = [i for i in gone if records[i] is None and key[i] not in exit_infos]
    if no_evidence:
        reaping.mark_overdue(no_evidence)
    views = services.queries.task_instances(gone)
    now = utcnow()
    events: list[WatchEvent] = []
    for i in gone:
        deadline = facts[i][1]
        gone_for = max(0.0, (now - deadline).total_seconds()) if deadline is not None else 0.0
        ev = outcome(views[i], statuses.get(key[i]), exit_infos.get(key[i]), records[i], gone_for, lost_grace_s)
        if ev is not None and not ev.recorded:
            events.append(replace(ev, message=f"Reaper: {why}; {ev.message}".rstrip("; ")))
    return events


def find_error_jobs(services: Services, clusters: Mapping[str, Cluster]) -> list[ErrorJob]:
    """Live instances whose job is in an error state (Grid Engine's Eqw): one status call per cluster."""
    live = Reaping(services.engine).live_instances(with_job=True)
    jobs: dict[str, list[str]] = defaultdict(list)
    for inst in live:
        if inst.cluster in clusters and inst.distributor_id:
            jobs[inst.cluster].append(inst.distributor_id)
    statuses = _statuses(clusters, jobs)
    out = []
    for inst in live:
        st = statuses.get(f"{inst.cluster}/{inst.distributor_id}")
        if st is not None and st.state == JobState.ERROR and inst.distributor_id:
            out.append(ErrorJob(inst.task_instance_id, inst.distributor_id, inst.cluster, st.raw, st.reason or ""))
    return out


def handle_error_jobs(
    services: Services, clusters: Mapping[str, Cluster], error_jobs: Sequence[ErrorJob]
) -> list[TriageResult]:
    """Eqw jobs: the reason into the error log, the job deleted, the instance closed as Jobmon does: W when it
    was never launched (I), else U (the task may retry). One delete call per cluster."""
    views = services.queries.task_instances(e.task_instance_id for e in error_jobs)
    by_cluster: dict[str, list[ErrorJob]] = defaultdict(list)
    for e in error_jobs:
        if e.task_instance_id in views and views[e.task_instance_id].status not in states.TASK_INSTANCE_FINAL:
            by_cluster[e.cluster].append(e)
    results: list[TriageResult] = []
    for cluster, errs in by_cluster.items():
        clusters[cluster].kill(sorted({split_job_id(e.job_id)[0] for e in errs}))
        events = []
        for e in errs:
            view = views[e.task_instance_id]
            ev = outcome(view, JobStatus(e.job_id, JobState.ERROR, e.raw, e.reason), None, None, 0.0, 0.0)
            if ev is None or ev.recorded:
                continue
            status = TIS.NO_DISTRIBUTOR_ID if view.status == TIS.INSTANTIATED else ev.status
            events.append(replace(ev, status=status, message=f"Reaper: {ev.message}", kill_job=False))
        record_events(services, clusters[cluster], events)
    after = services.queries.task_instances(views)
    for errs in by_cluster.values():
        for e in errs:
            old, new = views[e.task_instance_id].status, after[e.task_instance_id].status
            if old != new:
                results.append(TriageResult(e.task_instance_id, e.job_id, old, new, "cluster", f"{e.raw}: {e.reason}"))
    return results


def clean_up_halted(
    services: Services, clusters: Mapping[str, Cluster], lost_grace_s: float = DEFAULT_LOST_GRACE_S
) -> tuple[list[TriageResult], list[ReapedRun]]:
    """Jobmon's ``_halted_state``: live instances of lost C/H runs are killed (cold; hot: running jobs may finish)
    or concluded; a run with none left goes to T (workflow H), the others wait for the next pass."""
    reaping = Reaping(services.engine)
    runs = reaping.halted_runs()
    if not runs:
        return [], []
    results: list[TriageResult] = []
    live = reaping.live_instances(list(runs))
    for mode in (WFRS.COLD_RESUME, WFRS.HOT_RESUME):
        ids = [inst.task_instance_id for inst in live if runs[inst.workflow_run_id] == mode]
        if ids:
            results += triage(
                services,
                clusters,
                ids,
                why=f"workflow run halted ({'cold' if mode == WFRS.COLD_RESUME else 'hot'} resume)",
                spare_running=mode == WFRS.HOT_RESUME,
                lost_grace_s=lost_grace_s,
            )
    return results, reaping.terminate_halted(list(runs))


def reap_lost_runs(
    services: Services,
    clusters: Mapping[str, Cluster],
    decisions: Sequence[RunDecision],
    lost_grace_s: float = DEFAULT_LOST_GRACE_S,
) -> tuple[list[TriageResult], list[ReapedRun]]:
    """Lost runs to their end states (:meth:`Reaping.reap_runs`), then the halted clean-up (runs whose DAG run
    is gone became C there: their jobs are deleted and they terminate in the same pass when nothing is left)."""
    reaped = Reaping(services.engine).reap_runs(decisions)
    results, terminated = clean_up_halted(services, clusters, lost_grace_s)
    return results, reaped + terminated


# -- Slack texts ----------------------------------------------------------------------------------------------------


def _name(enum: type[StrEnum], code: str) -> str:
    try:
        return enum(code).name
    except ValueError:
        return code


def run_message(run: ReapedRun) -> str:
    """Jobmon's reaper message for one run, old → new status of the workflow and its run."""
    wfs = states.WorkflowStatus
    wf = f"{_name(wfs, run.old_workflow_status)} → {_name(wfs, run.new_workflow_status)}"
    wfr = f"{_name(WFRS, run.old_run_status)} → {_name(WFRS, run.new_run_status)}"
    return (
        f"jobmon-airflow {__version__} Workflow Reaper transitioned a Workflow {wf} and its Workflow Run {wfr}.\n"
        f"Workflow ID: {run.workflow_id}\n"
        f"Workflow Name: {run.workflow_name}\n"
        f"Workflow Args: {run.workflow_args}\n"
        f"WorkflowRun ID: {run.workflow_run_id}\n"
        f"Reason: {run.reason}"
    )


def summary_message(results: Sequence[TriageResult], error_jobs: Sequence[TriageResult]) -> str | None:
    """One summary per pass when triage found resource kills or Eqw jobs; None otherwise."""
    kills = [r for r in results if r.resource_kill]
    if not kills and not error_jobs:
        return None
    lines = [
        f"jobmon-airflow {__version__} Workflow Reaper: {len(results)} orphaned task instances triaged, "
        f"{len(kills)} resource kills, {len(error_jobs)} jobs in error state (Eqw)."
    ]
    lines += [f"Resource kill: task instance {r.task_instance_id} job {r.job_id}: {r.message}" for r in kills[:20]]
    lines += [f"Eqw: task instance {r.task_instance_id} job {r.job_id}: {r.message}" for r in error_jobs[:20]]
    return "\n".join(lines)
