"""The reporters that race in real life, as a Hypothesis state machine over the service layer on a SQLite file.

A few tasks of one workflow run, each with instances created the way ``TaskRun`` creates them (plan, queue,
instantiate, store the job id); then any interleaving of what reports on them:

* the worker node, through the State Manager: ``log_running``, ``log_report_by`` (single and coalesced,
  ``log_report_by_many``), ``log_done``, ``log_error`` (E/Z/F/U);
* the watchers: ``apply_outcome`` (D/E/Z/U/X, and F from an exit record), triage (``set_status_for_triaging``
  once an instance's deadline has passed), ``log_launched_report_by``;
* the submitter: ``instantiate`` and ``log_distributor_ids`` arriving late, a new attempt once the task is
  ready for one (G or A);
* a kill: ``request_kill``, then ``end_killed`` after the job was deleted.

Any call may be refused with :class:`IllegalTransition` (or :class:`NotFound`); a refused call changes nothing.
After every call: every status write that happened (recorded by SQLite triggers, not only the statuses before and
after) is a transition of Jobmon's state machines, with no exception (``end_killed`` included), an ended instance
stays ended, and each task follows its newest instance. Any other exception fails the test.

A killed instance that ends D or F while its task lags behind (Q/I/O) once left the task there; that is pinned by
``test_a_killed_instance_that_ends_moves_its_task`` below, and the machine takes those ends like any other.
Calls made are printed per call, ok/refused (``pytest -rP``).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from jobmon_airflow import db, states
from jobmon_airflow.records import Usage
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.service import NotFound, Services, TaskSpec
from jobmon_airflow.service.core import TASK, TI
from jobmon_airflow.states import IllegalTransition, TaskInstanceStatus, TaskStatus
from tests.property import fuzz_examples

TIS, TS = TaskInstanceStatus, TaskStatus
TI_VALID = states.TASK_INSTANCE_FSM.valid
TASK_VALID = states.TASK_FSM.valid
#: Instances that have ended: nothing moves them again but X → E (Jobmon's no-heartbeat error).
ENDED = frozenset("DEFUXZ")
#: Statuses a single call may pass through on its way (apply_outcome O→R→D, X→E; a fatal end R→T→F; T→R→D).
PASS_THROUGH = frozenset("RTX")
#: The task while its newest instance is in one of these.
TASK_WHILE = {"Q": "Q", "I": "I", "O": "O", "R": "R", "T": "R", "X": "O"}
LIMITS = {"all.q": QueueLimits("all.q"), "long.q": QueueLimits("long.q")}

AUDIT_DDL = [
    "CREATE TABLE IF NOT EXISTS prop_audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT, row_id INTEGER, "
    "old TEXT, new TEXT)",
    "CREATE TRIGGER IF NOT EXISTS prop_audit_ti AFTER UPDATE OF status ON task_instance "
    "WHEN OLD.status IS NOT NEW.status BEGIN "
    "INSERT INTO prop_audit (tbl, row_id, old, new) VALUES ('task_instance', NEW.id, OLD.status, NEW.status); END",
    "CREATE TRIGGER IF NOT EXISTS prop_audit_task AFTER UPDATE OF status ON task "
    "WHEN OLD.status IS NOT NEW.status BEGIN "
    "INSERT INTO prop_audit (tbl, row_id, old, new) VALUES ('task', NEW.id, OLD.status, NEW.status); END",
]


@dataclass(frozen=True)
class Snapshot:
    instances: dict[int, tuple[str, int]]  # instance → (status, task)
    tasks: dict[int, tuple[str, int, int]]  # task → (status, num_attempts, max_attempts)

    def newest(self, task_id: int) -> int | None:
        own = [ti for ti, (_, task) in self.instances.items() if task == task_id]
        return max(own) if own else None


#: Calls made, by (call, "ok" | "refused"), over every program of the session: printed by the test (pytest -rP).
STATS: Counter[tuple[str, str]] = Counter()
PROGRAMS: Counter[str] = Counter()


class ReporterRace(RuleBasedStateMachine):
    """One workflow run per program; the database (one per test) is shared by the programs."""

    svc: ClassVar[Services]
    cluster_id: ClassVar[int]
    instances = Bundle("instances")

    def __init__(self) -> None:
        super().__init__()
        self.wfr = 0
        self.task_ids: list[int] = []
        self.snapshot = Snapshot({}, {})
        self.audit_seen = 0
        self.kill_ended: set[int] = set()  # tasks end_killed was called for while their newest instance was K

    # -- set-up ----------------------------------------------------------------------------------------------------
    @initialize(
        target=instances,
        max_attempts=st.lists(st.integers(1, 3), min_size=1, max_size=3),
        stages=st.lists(st.sampled_from("QIOOOO"), min_size=3, max_size=3),
    )
    def start(self, max_attempts: list[int], stages: list[str]) -> Any:
        PROGRAMS["programs"] += 1
        bound = self.svc.binding.bind_workflow_run(dag_id=f"prop-{uuid.uuid4().hex}", run_id="r")
        self.wfr = bound.workflow_run_id
        specs = [
            TaskSpec(airflow_task_id=f"t{i}", name=f"t{i}", command="true", max_attempts=m)
            for i, m in enumerate(max_attempts)
        ]
        self.task_ids = self.svc.binding.bind_tasks(bound.workflow_id, specs)
        with self.svc.engine.connect() as conn:
            self.audit_seen = int(conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM prop_audit")).scalar_one())
        created: list[int] = []
        self._step(
            "set-up",
            "set-up",
            lambda: created.extend(self._new_attempt(t, s) for t, s in zip(self.task_ids, stages, strict=False)),
        )
        return multiple(*created)

    def _new_attempt(self, task_id: int, stage: str) -> int:
        """A new instance as TaskRun.start makes it: plan (scaled after Z), queue, then maybe instantiate, launch."""
        lifecycle = self.svc.lifecycle
        (plan,) = lifecycle.plan_resources([task_id], Resources(queue="all.q"), LIMITS, None, ["long.q"])
        queue = LIMITS[str(plan.resources.queue)]
        (ti,) = lifecycle.queue_task_instances(self.wfr, self.cluster_id, [task_id], plan.resources, plan.kind, queue)
        if stage in "IO":
            lifecycle.instantiate([ti], {}, {})
        if stage == "O":
            lifecycle.log_distributor_ids({ti: str(ti)})
        return ti

    # -- reads and checks ------------------------------------------------------------------------------------------
    def _read(self) -> Snapshot:
        with self.svc.engine.connect() as conn:
            instances = {
                r.id: (str(r.status), int(r.task_id))
                for r in conn.execute(
                    sa.select(TI.c.id, TI.c.status, TI.c.task_id).where(TI.c.workflow_run_id == self.wfr)
                )
            }
            tasks = {
                r.id: (str(r.status), int(r.num_attempts), int(r.max_attempts))
                for r in conn.execute(
                    sa.select(TASK.c.id, TASK.c.status, TASK.c.num_attempts, TASK.c.max_attempts).where(
                        TASK.c.id.in_(self.task_ids)
                    )
                )
            }
        return Snapshot(instances, tasks)

    def _audit(self, snap: Snapshot) -> list[tuple[str, int, str, str]]:
        """Status writes since the last look, of this program's rows."""
        with self.svc.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT seq, tbl, row_id, old, new FROM prop_audit WHERE seq > :seen ORDER BY seq"),
                {"seen": self.audit_seen},
            ).all()
        if rows:
            self.audit_seen = int(rows[-1].seq)
        mine = {"task_instance": set(snap.instances), "task": set(self.task_ids)}
        return [(r.tbl, int(r.row_id), str(r.old), str(r.new)) for r in rows if r.row_id in mine[r.tbl]]

    def _step(self, kind: str, what: str, call: Any) -> None:
        """Run one reporter's call (``kind``: the call's name, for the statistics); check what it wrote."""
        before = self.snapshot
        try:
            call()
            refused = None
        except (IllegalTransition, NotFound) as exc:
            refused = exc
        STATS[(kind, "refused" if refused else "ok")] += 1
        after = self._read()
        writes = self._audit(after)
        if refused is not None:
            assert after == before, f"{what} was refused ({refused}) but changed {before} → {after}"
            assert not writes, f"{what} was refused ({refused}) but wrote {writes}"
        for tbl, row, old, new in writes:
            if tbl == "task_instance":
                assert (old, new) in TI_VALID, f"{what}: instance {row} moved {old} → {new}, not in the FSM"
            else:
                assert (old, new) in TASK_VALID, f"{what}: task {row} moved {old} → {new}"
        for ti, (now, _) in after.instances.items():
            if ti not in before.instances or before.instances[ti][0] == now:
                continue
            was = before.instances[ti][0]
            if was in ENDED:
                assert (was, now) in TI_VALID, f"{what}: ended instance {ti} changed {was} → {now}"
            one_hop = (was, now) in TI_VALID
            two_hops = any((was, mid) in TI_VALID and (mid, now) in TI_VALID for mid in PASS_THROUGH)
            assert one_hop or two_hops, f"{what}: instance {ti} observed {was} → {now}"
        self.snapshot = after
        self._check_invariants(after)

    def _check_invariants(self, snap: Snapshot) -> None:
        for ti, (status, _) in snap.instances.items():
            assert status in set(TIS), f"instance {ti} has status {status!r}"
        for task_id, (status, attempts, max_attempts) in snap.tasks.items():
            assert status in set(TS), f"task {task_id} has status {status!r}"
            own = [ti for ti, (_, task) in snap.instances.items() if task == task_id]
            assert attempts == len(own), f"task {task_id}: {attempts} attempts counted, {len(own)} instances"
            newest = snap.newest(task_id)
            if newest is None:
                assert status == TS.REGISTERING
                continue
            ti_status = snap.instances[newest][0]
            used_up = attempts >= max_attempts
            where = (
                f"task {task_id} ({status}, attempt {attempts}/{max_attempts}), newest instance {newest} {ti_status}"
            )
            if ti_status in TASK_WHILE:
                assert status == TASK_WHILE[ti_status], where
            elif ti_status == TIS.DONE:
                assert status == TS.DONE, where
            elif ti_status == TIS.ERROR_FATAL:
                assert status == TS.ERROR_FATAL, where
            elif ti_status == TIS.KILL_SELF:
                expected = {TS.QUEUED, TS.INSTANTIATING, TS.LAUNCHED, TS.RUNNING}
                if task_id in self.kill_ended:
                    expected = {TS.ERROR_FATAL}
                assert status in expected, where
            else:  # E, U, W, Z: Jobmon's retry path
                expected_status = (
                    TS.ERROR_FATAL
                    if used_up
                    else TS.ADJUSTING_RESOURCES
                    if ti_status == TIS.RESOURCE_ERROR
                    else TS.REGISTERING
                )
                assert status == expected_status, where
            if status == TS.ERROR_FATAL:  # F only when attempts are used up, a fatal instance, or a kill
                assert used_up or ti_status == TIS.ERROR_FATAL or task_id in self.kill_ended, where
            if status == TS.DONE:
                assert ti_status == TIS.DONE, where

    # -- the worker node (through the State Manager) -----------------------------------------------------------
    @rule(ti=instances)
    def log_running(self, ti: int) -> None:
        self._step(
            "log_running", f"log_running({ti})", lambda: self.svc.reports.log_running(ti, "node", 4242, None, 90)
        )

    @rule(ti=instances)
    def log_report_by(self, ti: int) -> None:
        self._step("log_report_by", f"log_report_by({ti})", lambda: self.svc.reports.log_report_by_many({ti: 90})[ti])

    @rule(tis=st.lists(instances, min_size=1, max_size=4, unique=True))
    def log_report_by_many(self, tis: list[int]) -> None:
        """The State Manager's coalesced heartbeats of several workers."""
        self._step(
            "log_report_by_many",
            f"log_report_by_many({tis})",
            lambda: self.svc.reports.log_report_by_many(dict.fromkeys(tis, 90.0)),
        )

    @rule(ti=instances)
    def log_done(self, ti: int) -> None:
        self._step("log_done", f"log_done({ti})", lambda: self.svc.reports.log_done(ti, "node", Usage(wallclock_s=1.0)))

    @rule(ti=instances, state=st.sampled_from("EZFU"), exit_status=st.sampled_from([1, 137, 198, None]))
    def log_error(self, ti: int, state: str, exit_status: int | None) -> None:
        self._step(
            "log_error",
            f"log_error({ti}, {state})",
            lambda: self.svc.reports.log_error(ti, state, exit_status, f"error {state}", "node", None),
        )

    # -- the watchers ------------------------------------------------------------------------------------------
    @rule(ti=instances, status=st.sampled_from("DEZUXF"))
    def apply_outcome(self, ti: int, status: str) -> None:
        self._step(
            "apply_outcome",
            f"apply_outcome({ti}, {status})",
            lambda: self.svc.lifecycle.apply_outcome(ti, status, exit_status=0 if status == "D" else 1, message="x"),
        )

    @rule(ti=instances)
    def overdue_then_triage(self, ti: int) -> None:
        with db.session_scope(self.svc.engine) as s:
            s.execute(TI.update().where(TI.c.id == ti).values(report_by_date=datetime(2000, 1, 1)))
        self._step(
            "set_status_for_triaging",
            f"triage after {ti} overdue",
            lambda: self.svc.lifecycle.set_status_for_triaging([self.wfr]),
        )

    @rule(ti=instances)
    def log_launched_report_by(self, ti: int) -> None:
        self._step(
            "log_launched_report_by",
            f"log_launched_report_by({ti})",
            lambda: self.svc.lifecycle.log_launched_report_by([ti]),
        )

    # -- the submitter, late -----------------------------------------------------------------------------------
    @rule(ti=instances)
    def instantiate(self, ti: int) -> None:
        self._step("instantiate", f"instantiate({ti})", lambda: self.svc.lifecycle.instantiate([ti], {}, {}))

    @rule(ti=instances)
    def log_distributor_id(self, ti: int) -> None:
        self._step(
            "log_distributor_ids",
            f"log_distributor_ids({ti})",
            lambda: self.svc.lifecycle.log_distributor_ids({ti: str(ti)}),
        )

    def _ready_for_an_attempt(self) -> list[int]:
        return [
            t for t, (status, _, _) in self.snapshot.tasks.items() if status in (TS.REGISTERING, TS.ADJUSTING_RESOURCES)
        ]

    @precondition(lambda self: bool(self._ready_for_an_attempt()))
    @rule(target=instances, data=st.data(), stage=st.sampled_from("QIOOO"))
    def new_attempt(self, data: st.DataObject, stage: str) -> Any:
        task_id = data.draw(st.sampled_from(self._ready_for_an_attempt()), label="task")
        created: list[int] = []
        self._step(
            "new_attempt", f"new attempt of task {task_id}", lambda: created.append(self._new_attempt(task_id, stage))
        )
        return multiple(*created)

    # -- a kill --------------------------------------------------------------------------------------------------
    @rule(ti=instances)
    def request_kill(self, ti: int) -> None:
        self._step(
            "request_kill", f"request_kill({ti})", lambda: self.svc.lifecycle.request_kill([ti], "killed by test")
        )

    @rule(ti=instances)
    def end_killed(self, ti: int) -> None:
        status, task_id = self.snapshot.instances[ti]
        if status == TIS.KILL_SELF and self.snapshot.newest(task_id) == ti:
            self.kill_ended.add(task_id)
        self._step("end_killed", f"end_killed({ti})", lambda: self.svc.lifecycle.end_killed([ti]))


def install_audit(engine: sa.Engine) -> None:
    with db.session_scope(engine) as s:
        for statement in AUDIT_DDL:
            s.execute(sa.text(statement))


def race_settings() -> settings:
    """Fewer, shorter programs in the default profile (each step is a few SQLite transactions); the fuzz profile's
    examples otherwise."""
    n = fuzz_examples()
    return settings(
        settings.default,
        max_examples=n if n is not None else 40,
        stateful_step_count=30 if n is not None else 25,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_reporters_race_on_task_instances(tmp_path: Path) -> None:
    engine = db.get_engine(f"sqlite:///{tmp_path / 'jobmon.sqlite'}")
    db.upgrade(engine)
    install_audit(engine)
    svc = Services.for_engine(engine)
    machine = type(
        "ReporterRaceOnSQLite",
        (ReporterRace,),
        {"svc": svc, "cluster_id": svc.binding.cluster_id(f"prop-{next(_COUNTER)}", "local")},
    )
    started, programs, calls = time.monotonic(), PROGRAMS["programs"], sum(STATS.values())
    run_state_machine_as_test(machine, settings=race_settings())
    print(
        f"reporter race: {PROGRAMS['programs'] - programs} programs, {sum(STATS.values()) - calls} calls in "
        f"{time.monotonic() - started:.1f} s; by call (ok/refused): "
        + ", ".join(f"{c} {STATS[(c, 'ok')]}/{STATS[(c, 'refused')]}" for c in sorted({c for c, _ in STATS}))
    )


_COUNTER = itertools.count()


# --------------------------------------------------------------------------------------------------------------
# Bugs the machine above found, pinned with their minimal sequences


def one_task(svc: Services, stage: str, max_attempts: int = 3) -> tuple[int, int]:
    """(task, instance): a task of a fresh DAG run with one instance taken to ``stage`` (Q, I or O)."""
    bound = svc.binding.bind_workflow_run(dag_id=f"pin-{uuid.uuid4().hex}", run_id="r")
    (task,) = svc.binding.bind_tasks(bound.workflow_id, [TaskSpec("t", "t", "true", max_attempts=max_attempts)])
    cluster = svc.binding.cluster_id("pin", "local")
    (ti,) = svc.lifecycle.queue_task_instances(
        bound.workflow_run_id, cluster, [task], Resources(), "O", LIMITS["all.q"]
    )
    if stage in "IO":
        svc.lifecycle.instantiate([ti], {}, {})
    if stage == "O":
        svc.lifecycle.log_distributor_ids({ti: str(ti)})
    return task, ti


@pytest.fixture
def services(tmp_path: Path) -> Services:
    engine = db.get_engine(f"sqlite:///{tmp_path / 'jobmon.sqlite'}")
    db.upgrade(engine)
    return Services.for_engine(engine)


@pytest.mark.parametrize(
    ("stage", "end"),
    [("O", "D"), ("I", "D"), ("Q", "D"), ("Q", "F"), ("I", "F"), ("O", "F")],
    ids=["launched-done", "instantiated-done", "queued-done", "queued-fatal", "instantiated-fatal", "launched-fatal"],
)
def test_a_killed_instance_that_ends_moves_its_task(services: Services, stage: str, end: str) -> None:
    """An instance killed (→ K) before it reported running ends K → D or K → F, both legal; its task was left
    behind: D followed only from a task in R, the error path only from I/O/R/E. E.g. the State Manager missed
    log_running (the worker runs the command anyway), a kill arrives (O → K), the worker's log_done lands before
    end_killed: instance D, task stuck in O, the run ended FAILED with the task SCHEDULED. The task now catches up
    through legal steps (the audit of the machine above checks every write)."""
    task, ti = one_task(services, stage)
    services.lifecycle.request_kill([ti])
    if end == "D":
        services.reports.log_done(ti, "node", None)
    else:
        services.reports.log_error(ti, end, 130, "killed before start", "node", None)
    services.lifecycle.end_killed([ti])
    assert services.queries.task_instance(ti).status == end
    assert services.queries.get_task(task).status == {"D": TS.DONE, "F": TS.ERROR_FATAL}[end]


UNKNOWN = 10**9
UNKNOWN_INSTANCE_CALLS = {
    "log_running": lambda svc: svc.reports.log_running(UNKNOWN, "node", 1, None, 90),
    "log_error": lambda svc: svc.reports.log_error(UNKNOWN, "E", 1, "x", "node", None),
    "instantiate": lambda svc: svc.lifecycle.instantiate([UNKNOWN], {}, {}),
    "log_distributor_ids": lambda svc: svc.lifecycle.log_distributor_ids({UNKNOWN: "1"}),
    "status_of": lambda svc: svc.queries.task_instance(UNKNOWN).status,
}
UNKNOWN_INSTANCE_BUGS = {
    "log_done": lambda svc: svc.reports.log_done(UNKNOWN, "node", None),
    "apply_outcome": lambda svc: svc.lifecycle.apply_outcome(UNKNOWN, "D"),
}


@pytest.mark.parametrize("call", sorted(UNKNOWN_INSTANCE_CALLS))
def test_an_unknown_instance_is_not_found(services: Services, call: str) -> None:
    with pytest.raises(NotFound):
        UNKNOWN_INSTANCE_CALLS[call](services)


@pytest.mark.parametrize("call", sorted(UNKNOWN_INSTANCE_BUGS))
def test_an_unknown_instance_is_not_found_everywhere(services: Services, call: str) -> None:
    """Were sqlalchemy.exc.NoResultFound (scalar_one, finish_instance's .one(), status_of's scalar_one), not
    NotFound as log_running, log_error and the transitions raise (the State Manager maps NotFound to 404)."""
    with pytest.raises(NotFound):
        UNKNOWN_INSTANCE_BUGS[call](services)
