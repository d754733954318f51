"""The service layer enforces Jobmon's state machines on real databases: SQLite (a temp file) and MariaDB.

Rows are put in a starting state with plain inserts, then moved with the service's transition functions:
``transition_task_instances`` (task instances, their tasks follow), ``transition_workflow_run`` (runs, their
workflows follow) and ``_transition`` (tasks and workflows: the one function every status write goes through).
Legal moves change the status and status_date; illegal ones raise and roll the whole transaction back; untimely
ones change nothing and raise nothing.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobmon_airflow import db, models, states
from jobmon_airflow.records import Usage
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.service import Services, TaskSpec, core
from jobmon_airflow.service.core import TASK, TI, WF, WFR
from jobmon_airflow.states import IllegalTransition
from tests.support.databases import drop_everything


def table_of(model: type[models.Base]) -> sa.Table:
    """A model's table, typed as a Table (``__table__`` is typed as a FromClause)."""
    return cast(sa.Table, model.__table__)


OLD = datetime(2000, 1, 1)  # status_date of every row set up here: any write moves it to now
TOOL_VERSION = table_of(models.ToolVersion)

# Jobmon: a workflow follows its run (reference §3.1): WFR enters L B A I O R D T S E → workflow G Q A I O R D H F F
FOLLOW_RUN = dict(zip("LBAIORDTSE", "GQAIORDHFF", strict=True))
# The workflow's status while its run is in a state (runs in C/H come from R here; from B they would be Q).
WORKFLOW_WHILE_RUN = {"G": "G", "L": "G", "B": "Q", "I": "I", "O": "O", "R": "R", "C": "R", "H": "R"}


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A freshly migrated database per backend (MariaDB: every table dropped first, then ``db.upgrade``)."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("fsm") / "jobmon.sqlite"
        eng = db.get_engine(f"sqlite:///{path}")
    else:
        eng = db.get_engine(request.getfixturevalue("mariadb_url"))
        drop_everything(eng)
    db.upgrade(eng)
    yield eng


class World:
    """Rows in chosen states, inserted directly; reads of status and status_date."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.svc = Services.for_engine(engine)
        self.cluster_id = self._cluster()

    def _cluster(self) -> int:
        """The tests' cluster row (inserted once per database; ``Services.cluster_id`` is tested on its own)."""
        table = table_of(models.Cluster)
        with db.session_scope(self.engine) as s:
            found = s.execute(sa.select(table.c.id).where(table.c.name == "fsm-tests")).scalar()
            if found is not None:
                return int(found)
            return int(s.execute(table.insert().values(name="fsm-tests", cluster_type_id=1)).inserted_primary_key[0])  # type: ignore[attr-defined]

    def _insert(self, table: sa.Table, **values: Any) -> int:
        with db.session_scope(self.engine) as s:
            return int(s.execute(table.insert().values(**values)).inserted_primary_key[0])  # type: ignore[attr-defined]

    def workflow(self, status: str = "R", dag_id: str | None = None, run_id: str = "run") -> int:
        key = uuid.uuid4().hex
        tool_id = self._insert(table_of(models.Tool), name=f"tool-{key}")
        tv_id = self._insert(TOOL_VERSION, tool_id=tool_id, version="1")
        return self._insert(
            WF,
            tool_version_id=tv_id,
            dag_id=dag_id or f"dag-{key}",
            run_id=run_id,
            name=f"wf-{key}",
            workflow_args=key,
            workflow_args_hash=key,
            max_concurrently_running=100,
            created_date=OLD,
            status=status,
            status_date=OLD,
        )

    def run(self, workflow_id: int, status: str = "R") -> int:
        return self._insert(
            WFR,
            workflow_id=workflow_id,
            jobmon_version="test",
            created_date=OLD,
            status=status,
            status_date=OLD,
            heartbeat_date=OLD,
        )

    def task(self, workflow_id: int, status: str = "R", num_attempts: int = 1, max_attempts: int = 3) -> int:
        return self._insert(
            TASK,
            workflow_id=workflow_id,
            airflow_task_id=f"t-{uuid.uuid4().hex}",
            map_index=-1,
            node_args_hash="",
            task_args_hash="",
            name="task",
            command="true",
            num_attempts=num_attempts,
            max_attempts=max_attempts,
            status=status,
            status_date=OLD,
        )

    def instance(self, task_id: int, wfr_id: int, status: str = "R", report_by: datetime | None = None) -> int:
        return self._insert(
            TI,
            workflow_run_id=wfr_id,
            task_id=task_id,
            cluster_id=self.cluster_id,
            status=status,
            status_date=OLD,
            report_by_date=report_by,
        )

    def chain(
        self, ti_status: str = "R", task_status: str = "R", num_attempts: int = 1, max_attempts: int = 3
    ) -> tuple[int, int, int]:
        """(workflow_run_id, task_id, task_instance_id) of a running workflow with one task and one instance."""
        wf = self.workflow("R")
        wfr = self.run(wf, "R")
        task = self.task(wf, task_status, num_attempts, max_attempts)
        return wfr, task, self.instance(task, wfr, ti_status)

    def row(self, table: sa.Table, row_id: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(table).where(table.c.id == row_id)).one()

    def status(self, table: sa.Table, row_id: int) -> str:
        return str(self.row(table, row_id).status)


@pytest.fixture
def world(engine: Engine) -> World:
    return World(engine)


def assert_moved(row: Any, new: str) -> None:
    assert row.status == new
    assert row.status_date > OLD, "status_date must be updated"
    assert abs(row.status_date - core.utcnow()) < timedelta(minutes=5)


def assert_untouched(row: Any, status: str) -> None:
    assert row.status == status
    assert row.status_date == OLD


def in_session(engine: Engine, fn: Any) -> Any:
    with db.session_scope(engine) as s:
        return fn(s)


# --------------------------------------------------------------------------------------------------------------
# Task instance machine (and the task following it)

TASK_WHILE_INSTANCE = {"Q": "Q", "I": "I", "O": "O", "R": "R", "T": "R", "X": "O", "K": "R"}


@pytest.mark.parametrize(("old", "new"), sorted(states.TASK_INSTANCE_FSM.valid))
def test_task_instance_every_legal_transition(world: World, old: str, new: str) -> None:
    _, _, ti = world.chain(old, TASK_WHILE_INSTANCE[old])
    changed = in_session(world.engine, lambda s: core.transition_task_instances(s, [ti], new))
    assert changed == [ti]
    assert_moved(world.row(TI, ti), new)


@pytest.mark.parametrize(
    ("old", "new"),
    [("D", "R"), ("D", "E"), ("E", "D"), ("E", "R"), ("Q", "R"), ("Q", "D"), ("F", "Q"), ("Z", "R"), ("X", "R"),
     ("W", "I"), ("U", "R"), ("T", "D"), ("K", "R"), ("I", "D")],
)  # fmt: skip
def test_task_instance_illegal_transition_raises_and_rolls_back(world: World, old: str, new: str) -> None:
    wfr, task, ti = world.chain(old, TASK_WHILE_INSTANCE.get(old, "R"))
    other_task = world.task(world.row(WFR, wfr).workflow_id, "Q")
    other = world.instance(other_task, wfr, "Q")

    def both(s: Any) -> None:
        assert core.transition_task_instances(s, [other], "I") == [other]  # legal, then undone
        core.transition_task_instances(s, [ti], new)

    with pytest.raises(IllegalTransition, match=f"task_instance: illegal transition {old} → {new}"):
        in_session(world.engine, both)
    assert_untouched(world.row(TI, ti), old)
    assert_untouched(world.row(TI, other), "Q")
    assert_untouched(world.row(TASK, other_task), "Q")
    assert_untouched(world.row(TASK, task), TASK_WHILE_INSTANCE.get(old, "R"))


@pytest.mark.parametrize(("old", "new"), sorted(states.TASK_INSTANCE_FSM.untimely))
def test_task_instance_untimely_transition_is_ignored(world: World, old: str, new: str) -> None:
    _, task, ti = world.chain(old, "R")
    changed = in_session(world.engine, lambda s: core.transition_task_instances(s, [ti], new))
    assert changed == []
    assert_untouched(world.row(TI, ti), old)
    assert_untouched(world.row(TASK, task), "R")


@pytest.mark.parametrize("status", ["D", "E", "R", "Q"])
def test_task_instance_same_state_is_a_no_op(world: World, status: str) -> None:
    """A repeated report (retried HTTP call) changes nothing, even where X→X is not in the tables."""
    _, _, ti = world.chain(status, "R")
    assert in_session(world.engine, lambda s: core.transition_task_instances(s, [ti], status)) == []
    assert_untouched(world.row(TI, ti), status)


def test_transition_many_rows_one_call(world: World) -> None:
    wfr, _, first = world.chain("R", "R")
    wf = world.row(WFR, wfr).workflow_id
    running = [first] + [world.instance(world.task(wf, "R"), wfr, "R") for _ in range(4)]
    done_already = world.instance(world.task(wf, "D"), wfr, "D")
    changed = in_session(world.engine, lambda s: core.transition_task_instances(s, [*running, done_already], "D"))
    assert sorted(changed) == sorted(running)
    for ti in running:
        assert_moved(world.row(TI, ti), "D")
        assert_moved(world.row(TASK, world.row(TI, ti).task_id), "D")


def test_transition_unknown_id_raises_not_found(world: World) -> None:
    with pytest.raises(core.NotFound):
        in_session(world.engine, lambda s: core.transition_task_instances(s, [10**9], "D"))


# (TI old, TI new, task before, task after) with attempts 1 of 3: Jobmon's "task follows TI" and
# transition_after_task_instance_error (reference §3.3, §3.4).
FOLLOWS = [
    ("Q", "I", "Q", "I"),
    ("I", "O", "I", "O"),
    ("I", "R", "I", "R"),
    ("O", "R", "O", "R"),
    ("T", "R", "R", "R"),
    ("R", "D", "R", "D"),
    ("R", "T", "R", "R"),  # triage is the instance's business
    ("O", "X", "O", "O"),  # X (no heartbeat) is not an error state: the task waits for X→E
    ("X", "E", "O", "G"),
    ("I", "W", "I", "G"),
    ("R", "E", "R", "G"),
    ("R", "U", "R", "G"),
    ("O", "U", "O", "G"),
    ("T", "U", "R", "G"),
    ("R", "Z", "R", "A"),
    ("O", "Z", "O", "A"),
    ("T", "Z", "R", "A"),
    ("O", "F", "O", "F"),
    ("T", "F", "R", "F"),
    ("Q", "K", "Q", "Q"),  # K alone does not move the task (request_kill does that)
    ("R", "K", "R", "R"),
]


@pytest.mark.parametrize(("ti_old", "ti_new", "task_old", "task_new"), FOLLOWS)
def test_task_follows_its_instance(world: World, ti_old: str, ti_new: str, task_old: str, task_new: str) -> None:
    _, task, ti = world.chain(ti_old, task_old)
    in_session(world.engine, lambda s: core.transition_task_instances(s, [ti], ti_new))
    row = world.row(TASK, task)
    if task_new == task_old:
        assert_untouched(row, task_old)
    else:
        assert_moved(row, task_new)
    assert row.num_attempts == 1


@pytest.mark.parametrize("ti_new", ["E", "U", "Z"])
def test_task_fails_when_attempts_are_used_up(world: World, ti_new: str) -> None:
    _, task, ti = world.chain("R", "R", num_attempts=3, max_attempts=3)
    in_session(world.engine, lambda s: core.transition_task_instances(s, [ti], ti_new))
    assert_moved(world.row(TASK, task), "F")


def test_task_error_path_starts_from_e(world: World) -> None:
    """A task already in E (an earlier report) takes only the rest of the path: E→G."""
    _, task, ti = world.chain("R", "E")
    in_session(world.engine, lambda s: core.transition_task_instances(s, [ti], "U"))
    assert_moved(world.row(TASK, task), "G")


def test_late_report_does_not_move_a_finished_task(world: World) -> None:
    _, task, ti = world.chain("O", "D")
    in_session(world.engine, lambda s: core.transition_task_instances(s, [ti], "R"))
    assert_moved(world.row(TI, ti), "R")
    assert_untouched(world.row(TASK, task), "D")


# --------------------------------------------------------------------------------------------------------------
# Task machine


@pytest.mark.parametrize(("old", "new"), sorted(states.TASK_FSM.valid))
def test_task_every_legal_transition(world: World, old: str, new: str) -> None:
    task = world.task(world.workflow(), old)
    changed = in_session(world.engine, lambda s: core.transition(s, states.TASK_FSM, TASK, [task], new))
    assert changed == [task]
    assert_moved(world.row(TASK, task), new)


@pytest.mark.parametrize(("old", "new"), [("D", "Q"), ("F", "Q"), ("G", "R"), ("Q", "D"), ("R", "Q"), ("A", "R")])
def test_task_illegal_transition_raises_and_rolls_back(world: World, old: str, new: str) -> None:
    wf = world.workflow()
    task, other = world.task(wf, old), world.task(wf, "G")

    def both(s: Any) -> None:
        core.transition(s, states.TASK_FSM, TASK, [other], "Q")
        core.transition(s, states.TASK_FSM, TASK, [task], new)

    with pytest.raises(IllegalTransition, match=f"task: illegal transition {old} → {new}"):
        in_session(world.engine, both)
    assert_untouched(world.row(TASK, task), old)
    assert_untouched(world.row(TASK, other), "G")


def test_task_machine_has_no_untimely_moves() -> None:
    assert states.TASK_FSM.untimely == frozenset()


# --------------------------------------------------------------------------------------------------------------
# Workflow run machine (and the workflow following it)


@pytest.mark.parametrize(("old", "new"), sorted(states.WORKFLOW_RUN_FSM.valid))
def test_workflow_run_every_legal_transition(world: World, old: str, new: str) -> None:
    wf_before = WORKFLOW_WHILE_RUN[old]
    wf = world.workflow(wf_before)
    wfr = world.run(wf, old)
    assert in_session(world.engine, lambda s: core.transition_workflow_run(s, wfr, new)) is True
    assert_moved(world.row(WFR, wfr), new)
    wf_after = FOLLOW_RUN.get(new, wf_before)
    if wf_after == wf_before:
        assert_untouched(world.row(WF, wf), wf_before)
    else:
        assert_moved(world.row(WF, wf), wf_after)


@pytest.mark.parametrize(
    ("run_new", "wf_new"), [("L", "G"), ("B", "Q"), ("I", "I"), ("O", "O"), ("R", "R"), ("D", "D"), ("E", "F"),
                            ("T", "H"), ("A", "A"), ("S", "F")],
)  # fmt: skip
def test_workflow_follows_its_run(world: World, run_new: str, wf_new: str) -> None:
    """Drive a run from G along Jobmon's start-up path to ``run_new``; the workflow ends in ``wf_new``."""
    paths = {"L": "L", "B": "LB", "I": "LBI", "O": "LBIO", "R": "LBIOR", "D": "LBIORD", "E": "LBIORE",
             "T": "LBIORCT", "A": "LA", "S": "LBIORS"}  # fmt: skip
    wf = world.workflow("F")  # a failed workflow: the new run's L takes it back to G
    wfr = world.run(wf, "G")
    for step in paths[run_new]:
        assert in_session(world.engine, lambda s, step=step: core.transition_workflow_run(s, wfr, step))
    assert world.status(WFR, wfr) == run_new
    assert_moved(world.row(WF, wf), wf_new)


@pytest.mark.parametrize(("old", "new"), [("D", "R"), ("E", "R"), ("T", "R"), ("G", "R"), ("A", "L"), ("S", "D")])
def test_workflow_run_illegal_transition_raises_and_rolls_back(world: World, old: str, new: str) -> None:
    wf = world.workflow("D" if old == "D" else "F")
    wfr = world.run(wf, old)
    other_wf = world.workflow("G")
    other = world.run(other_wf, "G")

    def both(s: Any) -> None:
        assert core.transition_workflow_run(s, other, "L")
        core.transition_workflow_run(s, wfr, new)

    with pytest.raises(IllegalTransition, match=f"workflow_run: illegal transition {old} → {new}"):
        in_session(world.engine, both)
    assert_untouched(world.row(WFR, wfr), old)
    assert_untouched(world.row(WFR, other), "G")
    assert_untouched(world.row(WF, wf), "D" if old == "D" else "F")


@pytest.mark.parametrize(("old", "new"), sorted(states.WORKFLOW_RUN_FSM.untimely))
def test_workflow_run_untimely_transition_is_ignored(world: World, old: str, new: str) -> None:
    wf = world.workflow(WORKFLOW_WHILE_RUN[old])
    wfr = world.run(wf, old)
    assert in_session(world.engine, lambda s: core.transition_workflow_run(s, wfr, new)) is False
    assert_untouched(world.row(WFR, wfr), old)
    assert_untouched(world.row(WF, wf), WORKFLOW_WHILE_RUN[old])


def test_workflow_that_cannot_follow_rolls_back_the_run(world: World) -> None:
    """A DONE workflow cannot go back to G: the run's G→L is undone with it."""
    wf = world.workflow("D")
    wfr = world.run(wf, "G")
    with pytest.raises(IllegalTransition, match="workflow: illegal transition D → G"):
        in_session(world.engine, lambda s: core.transition_workflow_run(s, wfr, "L"))
    assert_untouched(world.row(WFR, wfr), "G")
    assert_untouched(world.row(WF, wf), "D")


# --------------------------------------------------------------------------------------------------------------
# Workflow machine


@pytest.mark.parametrize(("old", "new"), sorted(states.WORKFLOW_FSM.valid))
def test_workflow_every_legal_transition(world: World, old: str, new: str) -> None:
    wf = world.workflow(old)
    assert in_session(world.engine, lambda s: core.transition(s, states.WORKFLOW_FSM, WF, [wf], new)) == [wf]
    assert_moved(world.row(WF, wf), new)


@pytest.mark.parametrize(("old", "new"), [("D", "R"), ("D", "G"), ("F", "R"), ("G", "R"), ("A", "Q"), ("H", "R")])
def test_workflow_illegal_transition_raises_and_rolls_back(world: World, old: str, new: str) -> None:
    wf, other = world.workflow(old), world.workflow("G")

    def both(s: Any) -> None:
        core.transition(s, states.WORKFLOW_FSM, WF, [other], "Q")
        core.transition(s, states.WORKFLOW_FSM, WF, [wf], new)

    with pytest.raises(IllegalTransition, match=f"workflow: illegal transition {old} → {new}"):
        in_session(world.engine, both)
    assert_untouched(world.row(WF, wf), old)
    assert_untouched(world.row(WF, other), "G")


def test_workflow_untimely_transition_is_ignored(world: World) -> None:
    wf = world.workflow("G")
    assert in_session(world.engine, lambda s: core.transition(s, states.WORKFLOW_FSM, WF, [wf], "G")) == []
    assert_untouched(world.row(WF, wf), "G")


# --------------------------------------------------------------------------------------------------------------
# Binding


def test_bind_workflow_run_is_idempotent(world: World) -> None:
    dag_id = f"dag-{uuid.uuid4().hex}"
    first = world.svc.binding.bind_workflow_run(dag_id=dag_id, run_id="manual__1", user="me")
    second = world.svc.binding.bind_workflow_run(dag_id=dag_id, run_id="manual__1", user="me")
    assert (second.workflow_id, second.workflow_run_id) == (first.workflow_id, first.workflow_run_id)
    assert (first.new_run, second.new_run) == (True, False)
    assert world.status(WFR, first.workflow_run_id) == "R", "G→L→B→I→O→R at once"
    assert world.status(WF, first.workflow_id) == "R"
    other = world.svc.binding.bind_workflow_run(dag_id=dag_id, run_id="manual__2")
    assert other.workflow_id != first.workflow_id, "another DAG run is another workflow"
    with world.engine.connect() as conn:
        runs = conn.execute(sa.select(sa.func.count()).where(WFR.c.workflow_id == first.workflow_id)).scalar_one()
        assert runs == 1


@pytest.mark.parametrize(("success", "run_end", "wf_end"), [(True, "D", "D"), (False, "E", "F")])
def test_bind_after_the_run_ended_starts_a_new_run(world: World, success: bool, run_end: str, wf_end: str) -> None:
    dag_id = f"dag-{uuid.uuid4().hex}"
    first = world.svc.binding.bind_workflow_run(dag_id=dag_id, run_id="r")
    assert world.svc.binding.finish_workflow_run(dag_id, "r", success) == first.workflow_run_id
    assert (world.status(WFR, first.workflow_run_id), world.status(WF, first.workflow_id)) == (run_end, wf_end)
    again = world.svc.binding.bind_workflow_run(dag_id=dag_id, run_id="r")
    assert again.workflow_id == first.workflow_id
    assert again.new_run and again.workflow_run_id != first.workflow_run_id
    assert (world.status(WFR, again.workflow_run_id), world.status(WF, again.workflow_id)) == ("R", "R")
    assert world.status(WFR, first.workflow_run_id) == run_end


def test_bind_tasks_is_idempotent_and_updates_the_command(world: World) -> None:
    bound = world.svc.binding.bind_workflow_run(dag_id=f"dag-{uuid.uuid4().hex}", run_id="r")
    specs = [TaskSpec(airflow_task_id="a", name="a", command="echo 1"),
             TaskSpec(airflow_task_id="m", name="m[0]", command="echo m0", map_index=0),
             TaskSpec(airflow_task_id="m", name="m[1]", command="echo m1", map_index=1)]  # fmt: skip
    ids = world.svc.binding.bind_tasks(bound.workflow_id, specs)
    assert len(set(ids)) == 3
    # the first task moves on; re-binding must not touch its status
    world.svc.lifecycle.queue_task_instances(bound.workflow_run_id, world.cluster_id, [ids[0]], Resources(), "O",
                                   QueueLimits("all.q"))  # fmt: skip
    changed = [
        TaskSpec(airflow_task_id="a", name="a", command="echo 2", max_attempts=5, fallback_queues=["long.q"]),
        specs[1],
        specs[2],
    ]
    assert world.svc.binding.bind_tasks(bound.workflow_id, changed) == ids
    assert world.svc.binding.bind_tasks(bound.workflow_id, list(reversed(changed))) == list(reversed(ids))
    view = world.svc.queries.get_task(ids[0])
    assert (view.command, view.max_attempts, view.fallback_queues) == ("echo 2", 5, ["long.q"])
    assert (view.status, view.num_attempts) == ("Q", 1)
    assert world.svc.queries.get_task(ids[2]).command == "echo m1"
    with world.engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).where(TASK.c.workflow_id == bound.workflow_id)).scalar_one()
    assert n == 3


def test_cluster_and_queue_rows_are_reused(world: World) -> None:
    """Every process has its own Services (and cache): the rows are found again, never duplicated."""
    name = f"cluster-{uuid.uuid4().hex}"
    first = Services.for_engine(world.engine).binding.cluster_id(name, "gridengine")
    assert Services.for_engine(world.engine).binding.cluster_id(name, "gridengine") == first
    with db.session_scope(world.engine) as s:
        q1 = world.svc.lifecycle.queue_id(s, first, QueueLimits("all.q", max_cores=4))
    with db.session_scope(world.engine) as s:
        q2 = world.svc.lifecycle.queue_id(s, first, QueueLimits("all.q", max_cores=4))
        q3 = world.svc.lifecycle.queue_id(s, first, QueueLimits("long.q"))
    assert q1 == q2 != q3
    clusters, queues = table_of(models.Cluster), table_of(models.Queue)
    with world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(clusters.c.name == name)).scalar_one() == 1
        assert conn.execute(sa.select(sa.func.count()).where(queues.c.cluster_id == first)).scalar_one() == 2


# --------------------------------------------------------------------------------------------------------------
# Queueing and attempts


def test_queue_counts_attempts_and_retries_until_fatal(world: World) -> None:
    bound = world.svc.binding.bind_workflow_run(dag_id=f"dag-{uuid.uuid4().hex}", run_id="r")
    (task,) = world.svc.binding.bind_tasks(bound.workflow_id, [TaskSpec("t", "t", "false", max_attempts=3)])
    limits = QueueLimits("all.q")
    for attempt in (1, 2, 3):
        (ti,) = world.svc.lifecycle.queue_task_instances(
            bound.workflow_run_id, world.cluster_id, [task], Resources(), "O", limits, try_number=attempt
        )
        view = world.svc.queries.get_task(task)
        assert (view.status, view.num_attempts) == ("Q", attempt)
        assert world.svc.queries.task_instance(ti).status == "Q"
        for step in "IOR":
            in_session(world.engine, lambda s, step=step, ti=ti: core.transition_task_instances(s, [ti], step))
        assert world.svc.queries.get_task(task).status == "R"
        world.svc.reports.log_error(ti, "E", 1, "boom", "node1", None)
        assert world.svc.queries.get_task(task).status == ("G" if attempt < 3 else "F")
    assert world.svc.queries.error_logs(ti) == ["boom"]


def test_queue_from_adjusting_resources(world: World) -> None:
    bound = world.svc.binding.bind_workflow_run(dag_id=f"dag-{uuid.uuid4().hex}", run_id="r")
    (task,) = world.svc.binding.bind_tasks(bound.workflow_id, [TaskSpec("t", "t", "x")])
    (ti,) = world.svc.lifecycle.queue_task_instances(bound.workflow_run_id, world.cluster_id, [task], Resources(), "O",
                                           QueueLimits("all.q"))  # fmt: skip
    for step in "IOR":
        in_session(world.engine, lambda s, step=step: core.transition_task_instances(s, [ti], step))
    assert world.svc.reports.log_error(ti, "Z", 137, "killed: h_vmem", None, None) == "Z"
    assert world.svc.queries.get_task(task).status == "A"
    (ti2,) = world.svc.lifecycle.queue_task_instances(bound.workflow_run_id, world.cluster_id, [task], Resources(), "A",
                                            QueueLimits("all.q"))  # fmt: skip
    assert ti2 != ti
    view = world.svc.queries.get_task(task)
    assert (view.status, view.num_attempts) == ("Q", 2)


def test_queue_many_tasks_in_one_call(world: World) -> None:
    bound = world.svc.binding.bind_workflow_run(dag_id=f"dag-{uuid.uuid4().hex}", run_id="r")
    tasks = world.svc.binding.bind_tasks(bound.workflow_id, [TaskSpec(f"t{i}", f"t{i}", "x") for i in range(25)])
    tis = world.svc.lifecycle.queue_task_instances(bound.workflow_run_id, world.cluster_id, tasks, Resources(), "O",
                                         QueueLimits("all.q"), array_batch_num=1)  # fmt: skip
    assert len(set(tis)) == 25
    views = world.svc.queries.task_instances(tis)
    assert [views[ti].task_id for ti in tis] == tasks
    with world.engine.connect() as conn:
        rows = conn.execute(sa.select(TI.c.id, TI.c.array_step_id, TI.c.task_resources_id).where(TI.c.id.in_(tis)))
        by_id = {r.id: r for r in rows}
    assert [by_id[ti].array_step_id for ti in tis] == list(range(25))
    assert len({by_id[ti].task_resources_id for ti in tis}) == 1, "one resource set per batch"
    assert all(world.svc.queries.get_task(t).num_attempts == 1 for t in tasks)


def test_queue_a_running_task_is_illegal(world: World) -> None:
    wfr, task, _ = world.chain("R", "R")
    with pytest.raises(IllegalTransition, match="task: illegal transition R → Q"):
        world.svc.lifecycle.queue_task_instances(wfr, world.cluster_id, [task], Resources(), "O", QueueLimits("all.q"))
    row = world.row(TASK, task)
    assert_untouched(row, "R")
    assert row.num_attempts == 1
    with world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(TI.c.task_id == task)).scalar_one() == 1


# --------------------------------------------------------------------------------------------------------------
# Finishing a run


def _run_with_tasks(world: World, task_states: str) -> tuple[str, int, int]:
    dag_id = f"dag-{uuid.uuid4().hex}"
    bound = world.svc.binding.bind_workflow_run(dag_id=dag_id, run_id="r")
    for st in task_states:
        world.task(bound.workflow_id, st)
    return dag_id, bound.workflow_id, bound.workflow_run_id


@pytest.mark.parametrize(
    ("task_states", "success", "run_end", "wf_end"),
    [("DDD", True, "D", "D"), ("DDF", True, "E", "F"), ("DRD", True, "E", "F"), ("DDD", False, "E", "F"),
     ("", True, "D", "D")],
)  # fmt: skip
def test_finish_workflow_run(world: World, task_states: str, success: bool, run_end: str, wf_end: str) -> None:
    dag_id, wf, wfr = _run_with_tasks(world, task_states)
    assert world.svc.binding.finish_workflow_run(dag_id, "r", success) == wfr
    assert_moved(world.row(WFR, wfr), run_end)
    assert_moved(world.row(WF, wf), wf_end)
    assert world.svc.binding.finish_workflow_run(dag_id, "r", success) is None, "no alive run left"


def test_finish_without_a_run(world: World) -> None:
    assert world.svc.binding.finish_workflow_run(f"dag-{uuid.uuid4().hex}", "r", True) is None


# --------------------------------------------------------------------------------------------------------------
# Triage, heartbeats, kill


def test_set_status_for_triaging(world: World) -> None:
    past, future = core.utcnow() - timedelta(seconds=5), core.utcnow() + timedelta(hours=1)
    wf = world.workflow("R")
    wfr = world.run(wf, "R")
    r_late, r_ok = (world.instance(world.task(wf, "R"), wfr, "R", report_by=d) for d in (past, future))
    o_late, o_ok = (world.instance(world.task(wf, "O"), wfr, "O", report_by=d) for d in (past, future))
    d_late = world.instance(world.task(wf, "D"), wfr, "D", report_by=past)
    elsewhere_wfr = world.run(world.workflow("R"), "R")
    elsewhere = world.instance(world.task(world.row(WFR, elsewhere_wfr).workflow_id, "R"), elsewhere_wfr, "R", past)

    triaged, no_heartbeat = world.svc.lifecycle.set_status_for_triaging([wfr])
    assert (triaged, no_heartbeat) == ([r_late], [o_late])
    assert_moved(world.row(TI, r_late), "T")
    assert_moved(world.row(TI, o_late), "X")
    assert_untouched(world.row(TASK, world.row(TI, r_late).task_id), "R")
    for ti, st in ((r_ok, "R"), (o_ok, "O"), (d_late, "D"), (elsewhere, "R")):
        assert_untouched(world.row(TI, ti), st)
    # a second pass finds nothing new; without a filter it reaches the other run
    assert world.svc.lifecycle.set_status_for_triaging([wfr]) == ([], [])
    triaged_all, _ = world.svc.lifecycle.set_status_for_triaging()
    assert elsewhere in triaged_all


def test_log_report_by_brings_triaging_back_to_running(world: World) -> None:
    _, task, ti = world.chain("T", "R")
    before = core.utcnow()
    assert world.svc.reports.log_report_by_many({ti: 90})[ti] == "R"
    row = world.row(TI, ti)
    assert_moved(row, "R")
    assert row.report_by_date >= before + timedelta(seconds=89)
    assert_untouched(world.row(TASK, task), "R")


def test_log_report_by_on_running_pushes_the_deadline_only(world: World) -> None:
    _, _, ti = world.chain("R", "R")
    assert world.svc.reports.log_report_by_many({ti: 300})[ti] == "R"
    row = world.row(TI, ti)
    assert_untouched(row, "R")
    assert row.report_by_date > core.utcnow() + timedelta(seconds=250)


@pytest.mark.parametrize("status", ["D", "E", "K"])
def test_log_report_by_on_an_ended_instance_changes_nothing(world: World, status: str) -> None:
    _, _, ti = world.chain(status, "R")
    assert world.svc.reports.log_report_by_many({ti: 90})[ti] == status
    row = world.row(TI, ti)
    assert_untouched(row, status)
    assert row.report_by_date is None


def test_log_report_by_many_answers_every_kind_with_a_few_statements(world: World) -> None:
    """A batch of 60 heartbeats after a partition: 20 running, 30 late (triaging), 10 ended. The late ones come back
    to R together: the statements do not grow with the batch."""
    counts = [("R", 20), ("T", 30), ("D", 10)]
    wf = world.workflow("R")
    wfr = world.run(wf, "R")
    made = {status: [world.instance(world.task(wf, "R"), wfr, status) for _ in range(n)] for status, n in counts}
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(world.engine, "before_cursor_execute", record)
    try:
        answers = world.svc.reports.log_report_by_many(dict.fromkeys([i for ids in made.values() for i in ids], 90.0))
    finally:
        sa.event.remove(world.engine, "before_cursor_execute", record)
    assert answers == {**dict.fromkeys(made["R"] + made["T"], "R"), **dict.fromkeys(made["D"], "D")}
    for ti in made["T"]:
        assert_moved(world.row(TI, ti), "R")
    for ti in made["R"] + made["T"]:
        assert world.row(TI, ti).report_by_date > core.utcnow() + timedelta(seconds=60)
    assert world.row(TI, made["D"][0]).report_by_date is None
    writes = [st for st in statements if st.lstrip().upper().startswith(("UPDATE", "SELECT"))]
    assert len(writes) <= 12, writes  # one instance at a time: 90 or more


@pytest.mark.parametrize(("ti_old", "task_old"), [("Q", "Q"), ("I", "I"), ("O", "O"), ("R", "R")])
def test_request_kill_then_end_killed(world: World, ti_old: str, task_old: str) -> None:
    """Q/I/O/R → K, the task untouched while a worker may still report; once the job is deleted, ``end_killed``
    fails the task without retry (its docstring: "tasks of instances still in K fail without retry")."""
    _, task, ti = world.chain(ti_old, task_old)
    assert world.svc.lifecycle.request_kill([ti], "killed by test") == [ti]
    assert_moved(world.row(TI, ti), "K")
    assert world.svc.queries.error_logs(ti) == ["killed by test"]
    assert_untouched(world.row(TASK, task), task_old)
    world.svc.lifecycle.end_killed([ti])
    assert_moved(world.row(TASK, task), "F")
    assert world.status(TI, ti) in ("K", "F"), "killed: it stays K or ends K→F"


@pytest.mark.parametrize("status", ["D", "E", "F", "K", "Z"])
def test_request_kill_ended_instance_is_a_no_op(world: World, status: str) -> None:
    task_status = {"D": "D", "E": "G", "F": "F", "K": "R", "Z": "A"}[status]
    _, task, ti = world.chain(status, task_status)
    assert world.svc.lifecycle.request_kill([ti]) == []
    assert_untouched(world.row(TI, ti), status)
    assert world.svc.queries.error_logs(ti) == []
    if status != "K":
        world.svc.lifecycle.end_killed([ti])  # only instances still in K fail their task
        assert_untouched(world.row(TASK, task), task_status)


def test_worker_after_kill(world: World) -> None:
    """The worker sees K: log_running answers K; a late error is untimely (K→E); its F ends instance and task."""
    _, task, ti = world.chain("R", "R")
    world.svc.lifecycle.request_kill([ti])
    assert world.svc.reports.log_running(ti, "node1", 123, "42", 90) == "K"
    assert world.svc.reports.log_error(ti, "E", 1, "late", None, None) == "K"
    assert world.svc.reports.log_error(ti, "F", -15, "killed", None, None) == "F"
    assert world.status(TASK, task) == "F"
    world.svc.lifecycle.end_killed([ti])
    assert world.status(TASK, task) == "F"


def test_job_finishing_after_kill_leaves_instance_and_task_agreeing(world: World) -> None:
    """K→D ("the job finished anyway") is legal: then the task is D too."""
    _, task, ti = world.chain("R", "R")
    world.svc.lifecycle.request_kill([ti])
    assert world.svc.reports.log_done(ti, "node1", None) == "D"
    assert world.status(TASK, task) == "D"
    world.svc.lifecycle.end_killed([ti])  # the operator's clean-up after deleting the job: nothing left to fail
    assert (world.status(TI, ti), world.status(TASK, task)) == ("D", "D")


@pytest.mark.parametrize("task_old", ["Q", "I", "O"])
@pytest.mark.parametrize("end", ["log_done", "apply_outcome_D", "log_error_F", "apply_outcome_F"])
def test_a_killed_instance_that_ends_before_it_ran_moves_its_task(world: World, task_old: str, end: str) -> None:
    """Killed (→ K) before it reported running, the instance still ends K → D (it ran anyway: the State Manager
    missed log_running) or K → F. Its task was left in Q/I/O (D follows only from R, the error path only from
    I/O/R/E); it now catches up through legal steps (Q → I → O → R → D; Q → I → E → F)."""
    _, task, ti = world.chain(task_old, task_old)
    world.svc.lifecycle.request_kill([ti])
    expected = "F" if end.endswith("F") else "D"
    if end == "log_done":
        world.svc.reports.log_done(ti, "node1", None)
    elif end == "log_error_F":
        world.svc.reports.log_error(ti, "F", 130, "killed before start", "node1", None)
    else:
        world.svc.lifecycle.apply_outcome(ti, expected, exit_status=0 if expected == "D" else 1)
    assert world.status(TI, ti) == expected
    assert_moved(world.row(TASK, task), expected)
    world.svc.lifecycle.end_killed([ti])  # the operator's clean-up after deleting the job: nothing left to do
    assert (world.status(TI, ti), world.status(TASK, task)) == (expected, expected)


def test_killed_instances_that_end_move_their_tasks_with_a_few_statements(world: World) -> None:
    """Set-based, as every write: 30 lagging tasks (Q, I and O) catch up with a constant number of statements."""
    wf = world.workflow("R")
    wfr = world.run(wf, "R")
    tis = {status: [world.instance(world.task(wf, status), wfr, "K") for _ in range(10)] for status in "QIO"}
    everyone = [ti for ids in tis.values() for ti in ids]
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(world.engine, "before_cursor_execute", record)
    try:
        changed = in_session(world.engine, lambda s: core.transition_task_instances(s, everyone, "D"))
    finally:
        sa.event.remove(world.engine, "before_cursor_execute", record)
    assert sorted(changed) == sorted(everyone)
    assert {world.status(TASK, world.row(TI, ti).task_id) for ti in everyone} == {"D"}
    writes = [st for st in statements if st.lstrip().upper().startswith(("UPDATE", "SELECT"))]
    assert len(writes) <= 10, writes  # one per task would be 30 or more


def test_end_killed_fails_a_task_killed_before_it_was_submitted_through_legal_steps(world: World) -> None:
    """Q → I → E → F, as the instance's own K → F takes it (it was a Q → F write that bypassed the task FSM)."""
    _, task, ti = world.chain("Q", "Q")
    world.svc.lifecycle.request_kill([ti])
    written: list[str] = []  # the status each task UPDATE sets, in order

    def record(_conn: Any, clause: Any, *_: Any) -> None:
        if isinstance(clause, sa.Update) and clause.table is TASK:
            written.append(clause.compile().params["status"])

    sa.event.listen(world.engine, "before_execute", record)
    try:
        world.svc.lifecycle.end_killed([ti])
    finally:
        sa.event.remove(world.engine, "before_execute", record)
    assert_moved(world.row(TASK, task), "F")
    assert world.status(TI, ti) == "K"
    assert written == ["I", "E", "F"]


@pytest.mark.parametrize(
    "call",
    [
        lambda svc: svc.reports.log_done(10**9, "node", None),
        lambda svc: svc.reports.log_error(10**9, "F", 1, "x", "node", None),
        lambda svc: svc.lifecycle.apply_outcome(10**9, "D"),
        lambda svc: svc.lifecycle.apply_outcome(10**9, "X"),
    ],
    ids=["log_done", "log_error_F", "apply_outcome_D", "apply_outcome_X"],
)
def test_an_unknown_instance_is_not_found(world: World, call: Any) -> None:
    """Were sqlalchemy.exc.NoResultFound (scalar_one / one()), which the State Manager does not map to 404."""
    with pytest.raises(core.NotFound, match="task instance 1000000000"):
        call(world.svc)


def test_done_arriving_after_end_killed_leaves_instance_and_task_agreeing(world: World) -> None:
    """The worker's log_done was in flight (HTTP retries) while the job was deleted and the task failed.

    Whatever the service does with the late report (refuse it, or accept it and finish the task), the instance and
    its task must not end up disagreeing: task D iff instance D.
    """
    _, task, ti = world.chain("R", "R")
    world.svc.lifecycle.request_kill([ti])
    world.svc.lifecycle.end_killed([ti])
    assert world.status(TASK, task) == "F"
    with contextlib.suppress(IllegalTransition):  # a refused late report is fine
        world.svc.reports.log_done(ti, "node1", None)
    ti_status, task_status = world.status(TI, ti), world.status(TASK, task)
    assert (ti_status == "D") == (task_status == "D"), f"instance {ti_status}, task {task_status}"


@pytest.mark.parametrize(
    ("old_ti_state", "late_report", "late_status"),
    [("K", "log_error_F", "F"), ("K", "log_done", "D"), ("X", "apply_outcome_E", "E")],
)
def test_late_report_of_a_superseded_instance_leaves_the_new_attempt_alone(
    world: World, old_ti_state: str, late_report: str, late_status: str
) -> None:
    """Attempt 1 was killed (K) or lost its heartbeat (X); the task was reset and attempt 2 is running.

    A late report of attempt 1 (its worker logs F/D after the kill, or the distributor fails X→E) must not move the
    task, which belongs to attempt 2 now (Jobmon: "the task may already be running again").
    """
    bound = world.svc.binding.bind_workflow_run(dag_id=f"dag-{uuid.uuid4().hex}", run_id="r")
    (task,) = world.svc.binding.bind_tasks(bound.workflow_id, [TaskSpec("t", "t", "x", max_attempts=3)])
    limits = QueueLimits("all.q")
    (ti1,) = world.svc.lifecycle.queue_task_instances(
        bound.workflow_run_id, world.cluster_id, [task], Resources(), "O", limits
    )
    for step in "IO" + ("R" if old_ti_state == "K" else ""):
        in_session(world.engine, lambda s, step=step: core.transition_task_instances(s, [ti1], step))
    in_session(world.engine, lambda s: core.transition_task_instances(s, [ti1], old_ti_state))
    if world.svc.queries.get_task(task).status not in ("G", "A"):
        world.svc.binding.reset_tasks([task])  # the operator's new pass
    (ti2,) = world.svc.lifecycle.queue_task_instances(
        bound.workflow_run_id, world.cluster_id, [task], Resources(), "O", limits
    )
    for step in "IOR":
        in_session(world.engine, lambda s, step=step: core.transition_task_instances(s, [ti2], step))
    assert world.svc.queries.get_task(task).status == "R"

    if late_report == "log_error_F":
        world.svc.reports.log_error(ti1, "F", -9, "killed", None, None)
    elif late_report == "log_done":
        world.svc.reports.log_done(ti1, None, None)
    else:
        world.svc.lifecycle.apply_outcome(ti1, "E", message="no heartbeat")
    assert world.svc.queries.task_instance(ti1).status == late_status
    assert world.svc.queries.get_task(task).status == "R", "attempt 2 is still running"
    world.svc.reports.log_done(ti2, "node2", None)
    assert world.svc.queries.get_task(task).status == "D"


# --------------------------------------------------------------------------------------------------------------
# The worker's reports


def test_worker_reports_happy_path(world: World) -> None:
    _, task, ti = world.chain("O", "O")
    assert world.svc.reports.log_running(ti, "node1", 4242, "77", 90) == "R"
    row = world.row(TI, ti)
    assert (row.nodename, row.process_group_id, row.distributor_id) == ("node1", 4242, "77")
    usage = Usage(maxrss_bytes=2**30, wallclock_s=12.5, cpu_s=3.0)
    assert world.svc.reports.log_done(ti, "node1", usage) == "D"
    row = world.row(TI, ti)
    assert (row.status, row.exit_status, row.maxrss, row.wallclock, row.cpu) == ("D", 0, 2**30, 12.5, 3.0)
    assert world.status(TASK, task) == "D"
    assert world.svc.queries.error_logs(ti) == []


def test_log_error_rejects_non_error_states(world: World) -> None:
    _, _, ti = world.chain("R", "R")
    for bad in ("D", "R", "K", "X"):
        with pytest.raises(IllegalTransition):
            world.svc.reports.log_error(ti, bad, 1, "", None, None)
    assert_untouched(world.row(TI, ti), "R")


def test_log_error_after_done_is_illegal(world: World) -> None:
    _, task, ti = world.chain("D", "D")
    with pytest.raises(IllegalTransition, match="D → E"):
        world.svc.reports.log_error(ti, "E", 1, "late", None, None)
    assert_untouched(world.row(TI, ti), "D")
    assert_untouched(world.row(TASK, task), "D")
    assert world.svc.queries.error_logs(ti) == [], "the error log insert is rolled back with the transition"


@pytest.mark.parametrize(("ti_old", "outcome", "ti_end", "task_end"),
                         [("O", "D", "D", "D"), ("I", "E", "E", "G"), ("O", "Z", "Z", "A"), ("R", "U", "U", "G"),
                          ("O", "F", "F", "F")])  # fmt: skip
def test_apply_outcome(world: World, ti_old: str, outcome: str, ti_end: str, task_end: str) -> None:
    _, task, ti = world.chain(ti_old, ti_old)
    assert (
        world.svc.lifecycle.apply_outcome(
            ti, outcome, exit_status=0 if outcome == "D" else 1, message="m", nodename="n"
        )
        == ti_end
    )
    assert world.status(TASK, task) == task_end
    assert world.row(TI, ti).nodename == "n"


# --------------------------------------------------------------------------------------------------------------
# Resources of the next attempt

QUEUES = {
    "all.q": QueueLimits("all.q", max_cores=20, max_memory=2.5, max_runtime=86400),
    "tiny.q": QueueLimits("tiny.q", max_cores=20, max_memory=1, max_runtime=86400),
    "mid.q": QueueLimits("mid.q", max_cores=20, max_memory=4, max_runtime=3600),
    "big.q": QueueLimits("big.q", max_cores=20, max_memory=64, max_runtime=86400),
}


def limits_of(queue: str | None) -> QueueLimits:
    return QUEUES[queue or "all.q"]


def next_resources(
    world: World, task: int, requested: Resources, scales: Any = None, fallbacks: Sequence[str] = ()
) -> tuple[Resources, str, list[str]]:
    """The plan of one task's next attempt: (resources, task_resources type, warnings)."""
    (plan,) = world.svc.lifecycle.plan_resources([task], requested, QUEUES, scales, fallbacks)
    return plan.resources, plan.kind, plan.warnings


def _attempt(world: World, task_id: int | None, end: str, resources: Resources) -> int:
    """Queue one attempt of a task with these resources and end its instance in ``end``."""
    if task_id is None:
        bound = world.svc.binding.bind_workflow_run(dag_id=f"dag-{uuid.uuid4().hex}", run_id="r")
        (task_id,) = world.svc.binding.bind_tasks(bound.workflow_id, [TaskSpec("t", "t", "x", max_attempts=5)])
    with world.engine.connect() as conn:
        wf_id = conn.execute(sa.select(TASK.c.workflow_id).where(TASK.c.id == task_id)).scalar_one()
        wfr_id = conn.execute(sa.select(sa.func.max(WFR.c.id)).where(WFR.c.workflow_id == wf_id)).scalar_one()
    (ti,) = world.svc.lifecycle.queue_task_instances(wfr_id, world.cluster_id, [task_id], resources, "O",
                                           limits_of(resources.queue))  # fmt: skip
    for step in ("I", "O", "R", end):
        in_session(world.engine, lambda s, step=step: core.transition_task_instances(s, [ti], step))
    return task_id


def test_resources_after_resource_kill_scale_by_half(world: World) -> None:
    first = Resources(cores=1, memory=2.0, runtime=600, queue="big.q")
    task = _attempt(world, None, "Z", first)
    assert world.svc.queries.get_task(task).status == "A"
    fitted, kind, warnings = next_resources(world, task, first)
    assert fitted == Resources(cores=1, memory=3.0, runtime=900, queue="big.q")
    assert (kind, warnings) == ("A", [])


def test_resources_scale_from_the_last_attempt_not_the_request(world: World) -> None:
    """Scaling compounds: 2G → 3G → 4.5G, whatever the operator's static request says."""
    request = Resources(memory=2.0, runtime=600, queue="big.q")
    task = _attempt(world, None, "Z", request)
    second, _, _ = next_resources(world, task, request)
    _attempt(world, task, "Z", second)
    third, kind, _ = next_resources(world, task, request)
    assert (second.memory, third.memory, third.runtime, kind) == (3.0, 4.5, 1350, "A")


def test_resources_after_resource_kill_use_fallback_queue(world: World) -> None:
    first = Resources(memory=2.0, runtime=600, queue="all.q")  # all.q allows 2.5G: 3G no longer fits
    task = _attempt(world, None, "Z", first)
    fallbacks = ["tiny.q", "mid.q", "big.q"]  # tiny.q is too small: the first that fits wins
    fitted, kind, warnings = next_resources(world, task, first, None, fallbacks)
    assert fitted == Resources(memory=3.0, runtime=900, queue="mid.q")
    assert (kind, warnings) == ("A", [])


def test_resources_after_resource_kill_coerced_when_nothing_fits(world: World) -> None:
    first = Resources(memory=2.0, runtime=600, queue="all.q")
    task = _attempt(world, None, "Z", first)
    fitted, kind, warnings = next_resources(world, task, first, {"memory": 2.0}, ["all.q"])
    assert fitted == Resources(memory=2.5, runtime=600, queue="all.q")  # 6G coerced to all.q's 2.5G
    assert kind == "A"
    assert warnings and warnings[-1].startswith("coerced to the limits of queue all.q")


def test_resources_list_of_scales_gives_the_kth_retry_its_factor(world: World) -> None:
    """resource_scales as a list: the k-th retry after a resource kill scales by the k-th factor, the last repeats
    (2G → 3G → 6G → 12G); stored as JSON on the task, nothing is consumed in between."""
    request = Resources(memory=2.0, runtime=600, queue="big.q")
    scales = {"memory": [0.5, 1.0]}
    task = _attempt(world, None, "Z", request)
    memories = []
    for _ in range(3):
        resources, kind, _ = next_resources(world, task, request, scales)
        assert kind == "A"
        memories.append(resources.memory)
        _attempt(world, task, "Z", resources)
    assert memories == [3.0, 6.0, 12.0]


def test_resources_custom_scales(world: World) -> None:
    first = Resources(memory=2.0, runtime=600, queue="big.q")
    task = _attempt(world, None, "Z", first)
    fitted, _, _ = next_resources(world, task, first, {"memory": 1.0})
    assert (fitted.memory, fitted.runtime) == (4.0, 600), "only the keys given scale"


def test_resources_after_other_errors_are_the_request(world: World) -> None:
    first = Resources(memory=2.0, runtime=600, queue="big.q")
    task = _attempt(world, None, "E", first)
    requested = Resources(memory=1.0, runtime=60, queue="big.q")
    assert next_resources(world, task, requested) == (requested, "O", [])


def test_resources_first_attempt_validated_when_coerced(world: World) -> None:
    bound = world.svc.binding.bind_workflow_run(dag_id=f"dag-{uuid.uuid4().hex}", run_id="r")
    (task,) = world.svc.binding.bind_tasks(bound.workflow_id, [TaskSpec("t", "t", "x")])
    fits = Resources(memory=2.0, queue="all.q")
    assert next_resources(world, task, fits) == (fits, "O", [])
    too_big = Resources(memory=8.0, queue="all.q")
    fitted, kind, warnings = next_resources(world, task, too_big, None, ["all.q"])
    assert (fitted.memory, fitted.queue, kind) == (2.5, "all.q", "V")
    assert warnings


def test_task_resources_rows_record_what_each_attempt_ran_with(world: World) -> None:
    first = Resources(memory=2.0, runtime=600, queue="big.q")
    task = _attempt(world, None, "Z", first)
    second, kind, _ = next_resources(world, task, first)
    assert kind == "A"
    _attempt(world, task, "D", second)
    tr = table_of(models.TaskResources)
    with world.engine.connect() as conn:
        rows = conn.execute(
            sa.select(TI.c.status, tr.c.requested_resources)
            .join(tr, tr.c.id == TI.c.task_resources_id)
            .where(TI.c.task_id == task)
            .order_by(TI.c.id)
        ).all()
    assert [(r.status, json.loads(r.requested_resources)["memory"]) for r in rows] == [("Z", 2.0), ("D", 3.0)]
    assert world.svc.queries.get_task(task).status == "D"
