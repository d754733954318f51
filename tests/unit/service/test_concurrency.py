"""Concurrent writers on one state database must leave legal, consistent states.

SQLite: several OS processes (multiprocessing, spawn), each with its own engine from ``db.get_engine(url)``, the
way Airflow workers, the triggerer and the State Manager share the embedded database. MariaDB: threads sharing one
engine (a connection each). Writers start each round together at a barrier.

Every transaction on one instance is serialised (SQLite: ``BEGIN IMMEDIATE``; MariaDB: ``SELECT … FOR UPDATE``),
so the observed outcomes must match *some* serial order of the same calls run against the state machine: each
call's return value or IllegalTransition is the one the FSM gives in that order, and the final status is that
order's. Any other exception (locks, deadlocks, driver errors) is a failure.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobmon_airflow import db, models, states
from jobmon_airflow.records import Usage
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.service.core import TASK, TI, WF, WFR, utcnow
from tests.support.databases import drop_everything


def table_of(model: type[models.Base]) -> sa.Table:
    """A model's table, typed as a Table (``__table__`` is typed as a FromClause)."""
    return cast(sa.Table, model.__table__)


SPAWN = multiprocessing.get_context("spawn")
OLD = datetime(2000, 1, 1)
BARRIER_TIMEOUT = 60.0
Outcome = tuple[Any, ...]  # ("ok", value) or ("raise", exception class name, message)


# --------------------------------------------------------------------------------------------------------------
# Databases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'race.sqlite'}"
    db.upgrade(db.get_engine(url))
    yield url
    db.get_engine(url).dispose()


@pytest.fixture(scope="module")
def mariadb(mariadb_url: str) -> str:
    """The MariaDB URL, on a fresh set of tables for this module."""
    engine = db.get_engine(mariadb_url)
    drop_everything(engine)
    db.upgrade(engine)
    return mariadb_url


def _insert(engine: Engine, table: sa.Table, **values: Any) -> int:
    with db.session_scope(engine) as s:
        return int(s.execute(table.insert().values(**values)).inserted_primary_key[0])  # type: ignore[attr-defined]


def running_instances(url: str, n: int, max_attempts: int = 3) -> list[int]:
    """n task instances in R, each of its own task in R (attempt 1 of ``max_attempts``), in one running workflow."""
    engine = db.get_engine(url)
    key = uuid.uuid4().hex
    tool = _insert(engine, table_of(models.Tool), name=f"tool-{key}")
    tv = _insert(engine, table_of(models.ToolVersion), tool_id=tool, version="1")
    wf = _insert(engine, WF, tool_version_id=tv, dag_id=f"dag-{key}", run_id="r", name="wf", workflow_args=key,
                 workflow_args_hash=key, max_concurrently_running=100, created_date=OLD, status="R",
                 status_date=OLD)  # fmt: skip
    wfr = _insert(engine, WFR, workflow_id=wf, jobmon_version="t", created_date=OLD, status="R", status_date=OLD,
                  heartbeat_date=OLD)  # fmt: skip
    cluster = _insert(engine, table_of(models.Cluster), name=f"cluster-{key}", cluster_type_id=1)
    out = []
    for i in range(n):
        task = _insert(engine, TASK, workflow_id=wf, airflow_task_id=f"t{i}", map_index=-1, node_args_hash="",
                       task_args_hash="", name=f"t{i}", command="true", num_attempts=1, max_attempts=max_attempts,
                       status="R", status_date=OLD)  # fmt: skip
        out.append(_insert(engine, TI, workflow_run_id=wfr, task_id=task, cluster_id=cluster, status="R",
                           status_date=OLD, report_by_date=utcnow() + timedelta(hours=1)))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------------------------
# Workers: module-level so that spawned processes can import them


def _call(fn: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", fn())
    except Exception as exc:  # every exception is an outcome to check, never a crash of the worker
        return ("raise", type(exc).__name__, str(exc)[:500])


def report(svc: Services, op: str, ti: int) -> Outcome:
    """One writer's call on one instance, as the worker node, the triggerer or a user would make it."""
    if op == "done":
        return _call(lambda: svc.reports.log_done(ti, "node", Usage(wallclock_s=1.0)))
    if op.startswith("error_"):
        return _call(lambda: svc.reports.log_error(ti, op[-1], 1, f"error {op[-1]}", "node", None))
    if op == "running":
        return _call(lambda: svc.reports.log_running(ti, "node", 4242, None, 90))
    if op == "kill":
        return _call(lambda: svc.lifecycle.request_kill([ti], "killed by test"))
    if op == "report_by":
        return _call(lambda: svc.reports.log_report_by_many({ti: 90})[ti])
    raise AssertionError(op)


def race_worker(url: str, barrier: Any, plan: Sequence[tuple[int, str]], results: Any, worker: int) -> None:
    """Run ``plan`` [(task instance, op)], waiting at the barrier before each call; put [(ti, op, outcome)]."""
    out: list[tuple[int, str, Outcome]] = []
    try:
        svc = Services.for_engine(db.get_engine(url))
        for ti, op in plan:
            barrier.wait(BARRIER_TIMEOUT)
            out.append((ti, op, report(svc, op, ti)))
    except Exception as exc:  # e.g. a broken barrier: report it, the parent fails the test
        barrier.abort()  # the others must not wait for this one
        out.append((-1, "worker", ("raise", type(exc).__name__, str(exc)[:500])))
    results.put((worker, out))


def bind_worker(url: str, barrier: Any, plan: tuple[str, str, int], results: Any, worker: int) -> None:
    """Bind the same DAG run and the same tasks at once: Airflow starting many tasks of one run."""
    dag_id, run_id, n_tasks = plan
    out: list[tuple[str, Outcome]] = []
    try:
        svc = Services.for_engine(db.get_engine(url))
        barrier.wait(BARRIER_TIMEOUT)
        bound = _call(lambda: svc.binding.bind_workflow_run(dag_id=dag_id, run_id=run_id))
        out.append(("bind_workflow_run", bound))
        barrier.wait(BARRIER_TIMEOUT)
        if bound[0] == "ok":
            specs = [TaskSpec(airflow_task_id=f"t{i}", name=f"t{i}", command=f"echo {i}") for i in range(n_tasks)]
            out.append(("bind_tasks", _call(lambda: svc.binding.bind_tasks(bound[1].workflow_id, specs))))
    except Exception as exc:
        barrier.abort()
        out.append(("worker", ("raise", type(exc).__name__, str(exc)[:500])))
    results.put((worker, out))


def queue_worker(url: str, barrier: Any, plan: tuple[int, int, Sequence[int], int], results: Any, worker: int) -> None:
    """Cycles of queue → I → O → R → E on this worker's own tasks, in step with the other workers."""
    wfr, cluster, task_ids, cycles = plan
    out: list[tuple[str, Outcome]] = []
    try:
        svc = Services.for_engine(db.get_engine(url))
        for _ in range(cycles):
            barrier.wait(BARRIER_TIMEOUT)
            for task in task_ids:
                q = _call(
                    partial(
                        svc.lifecycle.queue_task_instances, wfr, cluster, [task], Resources(), "O", QueueLimits("all.q")
                    )
                )
                out.append(("queue", q))
                if q[0] != "ok":
                    continue
                (ti,) = q[1]
                out.append(("instantiate", _call(partial(svc.lifecycle.instantiate, [ti], {}, {}))))
                out.append(("launched", _call(partial(svc.lifecycle.log_distributor_ids, {ti: f"job{ti}"}))))
                out.append(("running", _call(partial(svc.reports.log_running, ti, "node", 1, None, 90))))
                out.append(("error", _call(partial(svc.reports.log_error, ti, "E", 1, "boom", "node", None))))
    except Exception as exc:
        barrier.abort()
        out.append(("worker", ("raise", type(exc).__name__, str(exc)[:500])))
    results.put((worker, out))


def cluster_worker(url: str, barrier: Any, plan: str, results: Any, worker: int) -> None:
    """The first use of a cluster name in many processes at once (each process caches the id afterwards)."""
    out: list[tuple[str, Outcome]] = []
    try:
        svc = Services.for_engine(db.get_engine(url))
        barrier.wait(BARRIER_TIMEOUT)
        out.append(("cluster_id", _call(lambda: svc.binding.cluster_id(plan, "local"))))
    except Exception as exc:
        barrier.abort()
        out.append(("worker", ("raise", type(exc).__name__, str(exc)[:500])))
    results.put((worker, out))


def run_in_processes(url: str, target: Callable[..., None], plans: Sequence[Any]) -> dict[int, Any]:
    """One spawned process per plan, all sharing a barrier; returns {worker: results}."""
    barrier = SPAWN.Barrier(len(plans))
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(url, barrier, plan, results, i)) for i, plan in enumerate(plans)]
    for p in procs:
        p.start()
    try:
        out = dict(results.get(timeout=300) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return out


def run_in_threads(url: str, target: Callable[..., None], plans: Sequence[Any]) -> dict[int, Any]:
    """One thread per plan sharing the process's engine (a pooled connection each) and a barrier."""
    barrier = threading.Barrier(len(plans))
    results: Any = _ListQueue()
    threads = [threading.Thread(target=target, args=(url, barrier, plan, results, i)) for i, plan in enumerate(plans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    return dict(results.items)


class _ListQueue:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lock = threading.Lock()

    def put(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)


RUNNERS = {"sqlite": run_in_processes, "mariadb": run_in_threads}


@pytest.fixture(params=["sqlite", "mariadb"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[..., dict[int, Any]]]]:
    """(url, runner): SQLite with spawned processes, MariaDB with threads."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url"), run_in_processes
    else:
        yield request.getfixturevalue("mariadb"), run_in_threads


# --------------------------------------------------------------------------------------------------------------
# The serial model: what one call does to an instance in a given state (from the FSM tables and the service's
# documented contracts). Returns (outcome, next state, error-log message written or None).

FSM = states.TASK_INSTANCE_FSM


def _move(state: str, new: str, result: Callable[[str], Any]) -> tuple[Outcome, str, bool]:
    """A conditional transition: same state or untimely → nothing; valid → new; illegal → IllegalTransition."""
    if state == new:
        return ("ok", result(state)), state, False
    if (state, new) in FSM.valid:
        return ("ok", result(new)), new, True
    if (state, new) in FSM.untimely:
        return ("ok", result(state)), state, False
    return ("raise", "IllegalTransition"), state, False


def model(op: str, state: str, ti: int) -> tuple[Outcome, str, str | None]:
    if op == "done":
        outcome, new, _ = _move(state, "D", lambda s: s)
        return outcome, new, None
    if op.startswith("error_"):
        outcome, new, changed = _move(state, op[-1], lambda s: s)
        return outcome, new, f"error {op[-1]}" if changed else None
    if op == "running":
        if state == "K":  # log_running answers K: the worker must kill its command
            return ("ok", "K"), "K", None
        outcome, new, _ = _move(state, "R", lambda s: s)
        return outcome, new, None
    if op == "kill":
        if state in "QIOR":  # request_kill touches live instances only and returns the ids it moved
            return ("ok", [ti]), "K", "killed by test"
        return ("ok", []), state, None
    if op == "report_by":
        if state == "T":
            return ("ok", "R"), "R", None
        return ("ok", state), state, None
    raise AssertionError(op)


def serial_orders(
    ti: int, start: str, observed: Sequence[tuple[str, Outcome]], final: str
) -> list[list[tuple[str, str | None]]]:
    """The serial orders of ``observed`` calls that reproduce every outcome and the final state.

    Each order is returned as [(op, error-log message or None)] so callers can check the side effects too.
    """
    n = len(observed)
    found: list[list[tuple[str, str | None]]] = []

    @cache
    def search(state: str, remaining: frozenset[int]) -> tuple[tuple[tuple[str, str | None], ...], ...]:
        if not remaining:
            return ((),) if state == final else ()
        orders: list[tuple[tuple[str, str | None], ...]] = []
        for i in sorted(remaining):
            op, seen = observed[i]
            expected, new_state, log = model(op, state, ti)
            if _same(expected, seen):
                orders.extend(((op, log), *rest) for rest in search(new_state, remaining - {i}))
        return tuple(orders)

    found.extend(list(order) for order in search(start, frozenset(range(n))))
    return found


def _same(expected: Outcome, seen: Outcome) -> bool:
    if expected[0] == "raise":
        return seen[0] == "raise" and seen[1] == expected[1]
    return seen[0] == "ok" and seen[1] == expected[1]


# The task a final instance state leaves behind (attempt 1 of 3): Jobmon's task follows its instance; a task whose
# instance stayed in K is failed by ``end_killed``.
TASK_AFTER = {"D": "D", "E": "G", "U": "G", "Z": "A", "F": "F", "K": "F", "R": "R"}


def check_race(url: str, results: dict[int, Any], start: str = "R") -> list[str]:
    """Problems found: outcomes no serial order explains, unexpected exceptions, task/instance disagreement."""
    engine = db.get_engine(url)
    by_ti: dict[int, list[tuple[str, Outcome]]] = {}
    problems: list[str] = []
    for worker, out in sorted(results.items()):
        for ti, op, outcome in out:
            if ti < 0:
                problems.append(f"worker {worker} failed: {outcome}")
                continue
            by_ti.setdefault(ti, []).append((op, outcome))
    el = table_of(models.TaskInstanceErrorLog)
    with engine.connect() as conn:
        final = {r.id: r.status for r in conn.execute(sa.select(TI.c.id, TI.c.status).where(TI.c.id.in_(list(by_ti))))}
        logs = {ti: sorted(conn.execute(sa.select(el.c.description).where(el.c.task_instance_id == ti)).scalars())
                for ti in by_ti}  # fmt: skip
    # The operator's clean-up after a kill, once the jobs are deleted: instances still in K end, their tasks fail.
    Services.for_engine(engine).lifecycle.end_killed(sorted(by_ti))
    with engine.connect() as conn:
        for ti, observed in sorted(by_ti.items()):
            row = conn.execute(sa.select(TI.c.status, TI.c.task_id).where(TI.c.id == ti)).one()
            task = conn.execute(sa.select(TASK.c.status, TASK.c.num_attempts).where(TASK.c.id == row.task_id)).one()
            unexpected = [o for _, o in observed if o[0] == "raise" and o[1] != "IllegalTransition"]
            if unexpected:
                problems.append(f"ti {ti}: unexpected exceptions {unexpected}")
                continue
            orders = serial_orders(ti, start, observed, final[ti])
            if not orders:
                problems.append(f"ti {ti}: final {final[ti]}, outcomes {observed}: no serial order explains them")
                continue
            if not any(sorted(m for _, m in order if m) == logs[ti] for order in orders):
                problems.append(f"ti {ti}: error logs {logs[ti]} match no serial order {orders[:3]}")
            if row.status != final[ti] and (final[ti], row.status) != ("K", "F"):
                problems.append(f"ti {ti}: end_killed moved {final[ti]} to {row.status}")
            if task.status != TASK_AFTER[final[ti]] or task.num_attempts != 1:
                problems.append(
                    f"ti {ti}: instance ended {final[ti]} but its task is {task.status} "
                    f"(expected {TASK_AFTER[final[ti]]}); serial order {[op for op, _ in orders[0]]}"
                )
    return problems


def race_plans(tis: Sequence[int], mix: Sequence[str]) -> list[list[tuple[int, str]]]:
    """One plan per writer: in round k every writer calls on ``tis[k]``, the ops of ``mix`` rotated per round."""
    return [[(ti, mix[(w + k) % len(mix)]) for k, ti in enumerate(tis)] for w in range(len(mix))]


# --------------------------------------------------------------------------------------------------------------
# The model itself


def test_model_finds_the_serial_order() -> None:
    done_first = [("done", ("ok", "D")), ("error_E", ("raise", "IllegalTransition"))]
    assert [[op for op, _ in o] for o in serial_orders(1, "R", done_first, "D")] == [["done", "error_E"]]
    assert serial_orders(1, "R", done_first, "E") == []
    kill_then_done = [("kill", ("ok", [1])), ("done", ("ok", "D")), ("error_E", ("ok", "K"))]
    orders = serial_orders(1, "R", kill_then_done, "D")
    assert [[op for op, _ in o] for o in orders] == [["kill", "error_E", "done"]]
    assert [m for _, m in orders[0] if m] == ["killed by test"]
    # an outcome no order gives: a kill that raised
    assert serial_orders(1, "R", [("kill", ("raise", "IllegalTransition")), ("done", ("ok", "D"))], "D") == []


# --------------------------------------------------------------------------------------------------------------
# Races on one instance


def test_two_writers_done_vs_error(backend: tuple[str, Callable[..., dict[int, Any]]]) -> None:
    """The worker's log_done races the triggerer's error: exactly one wins; the loser gets IllegalTransition."""
    url, runner = backend
    tis = running_instances(url, 12)
    results = runner(url, race_worker, race_plans(tis, ["done", "error_E"]))
    assert check_race(url, results) == []
    # precisely: in every round one call succeeded and the other raised IllegalTransition (D→E or E→D)
    for ti in tis:
        outcomes = sorted(o[0] for out in results.values() for t, _, o in out if t == ti)
        assert outcomes == ["ok", "raise"], (ti, outcomes)


def test_many_writers_on_one_running_instance(backend: tuple[str, Callable[..., dict[int, Any]]]) -> None:
    """log_done vs log_error(E) vs log_error(Z) vs log_running vs request_kill vs a heartbeat, all at once."""
    url, runner = backend
    tis = running_instances(url, 12)
    mix = ["done", "error_E", "running", "kill", "error_Z", "report_by"]
    results = runner(url, race_worker, race_plans(tis, mix))
    problems = check_race(url, results)
    assert problems == [], "\n".join(problems)
    engine = db.get_engine(url)
    with engine.connect() as conn:
        finals = set(conn.execute(sa.select(TI.c.status).where(TI.c.id.in_(tis))).scalars())
    # done after a kill is K→D ("finished anyway"), so K is never final while a done is in the mix
    assert finals <= {"D", "E", "Z"}


def test_many_writers_without_done(backend: tuple[str, Callable[..., dict[int, Any]]]) -> None:
    """Without a done in the mix a kill can be final: K, E or Z, and the task fails or retries accordingly."""
    url, runner = backend
    tis = running_instances(url, 10)
    results = runner(url, race_worker, race_plans(tis, ["error_E", "kill", "running", "report_by"]))
    problems = check_race(url, results)
    assert problems == [], "\n".join(problems)


# --------------------------------------------------------------------------------------------------------------
# Lost updates and idempotent binding


def test_concurrent_queueing_counts_every_attempt(backend: tuple[str, Callable[..., dict[int, Any]]]) -> None:
    """Writers queue their own tasks at once, three cycles each: every attempt is counted exactly once."""
    url, runner = backend
    engine = db.get_engine(url)
    svc = Services.for_engine(engine)
    bound = svc.binding.bind_workflow_run(dag_id=f"dag-{uuid.uuid4().hex}", run_id="r")
    writers, per_writer, cycles = 4, 3, 3
    tasks = svc.binding.bind_tasks(
        bound.workflow_id, [TaskSpec(f"t{i}", f"t{i}", "x", max_attempts=10) for i in range(writers * per_writer)]
    )
    cluster = svc.binding.cluster_id(f"cluster-{uuid.uuid4().hex}", "local")
    plans = [(bound.workflow_run_id, cluster, tasks[w::writers], cycles) for w in range(writers)]
    results = runner(url, queue_worker, plans)
    failures = [(w, step, o) for w, out in results.items() for step, o in out if o[0] != "ok"]
    assert failures == []
    with engine.connect() as conn:
        rows = conn.execute(sa.select(TASK.c.id, TASK.c.status, TASK.c.num_attempts).where(TASK.c.id.in_(tasks)))
        assert {(r.status, r.num_attempts) for r in rows} == {("G", cycles)}
        per_task = conn.execute(
            sa.select(TI.c.task_id, sa.func.count(), sa.func.min(TI.c.status), sa.func.max(TI.c.status))
            .where(TI.c.task_id.in_(tasks))
            .group_by(TI.c.task_id)
        ).all()
    assert len(per_task) == len(tasks)
    assert {tuple(r)[1:] for r in per_task} == {(cycles, "E", "E")}


def test_concurrent_bind_of_one_dag_run(backend: tuple[str, Callable[..., dict[int, Any]]]) -> None:
    """N first tasks of one DAG run bind at once: one workflow, one alive run, one set of tasks."""
    url, runner = backend
    dag_id, run_id, n_tasks, writers = f"dag-{uuid.uuid4().hex}", "scheduled__1", 3, 5
    results = runner(url, bind_worker, [(dag_id, run_id, n_tasks)] * writers)
    failures = [(w, step, o) for w, out in results.items() for step, o in out if o[0] != "ok"]
    assert failures == []
    bound = [o[1] for out in results.values() for step, o in out if step == "bind_workflow_run"]
    task_ids = [o[1] for out in results.values() for step, o in out if step == "bind_tasks"]
    assert len(bound) == len(task_ids) == writers
    assert len({(b.workflow_id, b.workflow_run_id) for b in bound}) == 1
    assert sum(b.new_run for b in bound) == 1, "exactly one caller started the run"
    assert len({tuple(ids) for ids in task_ids}) == 1
    engine = db.get_engine(url)
    with engine.connect() as conn:
        workflows = conn.execute(sa.select(WF.c.id, WF.c.status).where(WF.c.dag_id == dag_id)).all()
        assert [w.status for w in workflows] == ["R"]
        runs = conn.execute(sa.select(WFR.c.status).where(WFR.c.workflow_id == workflows[0].id)).scalars().all()
        assert runs == ["R"]
        n = conn.execute(sa.select(sa.func.count()).where(TASK.c.workflow_id == workflows[0].id)).scalar_one()
        assert n == n_tasks
        tools = conn.execute(sa.select(sa.func.count()).where(table_of(models.Tool).c.name == dag_id)).scalar_one()
        assert tools == 1


def test_concurrent_first_use_of_a_cluster(backend: tuple[str, Callable[..., dict[int, Any]]]) -> None:
    """Workers register the same new cluster at once: one row, and every worker gets its id."""
    url, runner = backend
    name, writers = f"cluster-{uuid.uuid4().hex}", 5
    results = runner(url, cluster_worker, [name] * writers)
    outcomes = [o for out in results.values() for _, o in out]
    assert [o for o in outcomes if o[0] != "ok"] == []
    table = table_of(models.Cluster)
    with db.get_engine(url).connect() as conn:
        ids = conn.execute(sa.select(table.c.id).where(table.c.name == name)).scalars().all()
    assert len(ids) == 1
    assert {o[1] for o in outcomes} == {ids[0]}
