"""c. The state database on MariaDB: bulk bind, bulk transitions, heartbeats (service calls, and over HTTP).

Each figure has a floor measured beside it in the same run: the same rows written with plain SQLAlchemy core
statements (no state machine, no row locks), so the ratio shows what Jobmon's own bookkeeping costs.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, fresh_database, log

DB = "jobmon_test_bench_db"


def _specs(n: int, prefix: str) -> list[Any]:
    from jobmon_airflow.service import TaskSpec

    return [
        TaskSpec(airflow_task_id=f"{prefix}", name=f"{prefix}[{i}]", command=f"echo {i}", map_index=i) for i in range(n)
    ]


def _profile(fn: Callable[[], Any], name: str, top: int = 30) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    path = RESULTS / f"profile_{name}.txt"
    path.write_text(buf.getvalue())
    return str(path.relative_to(RESULTS.parent.parent))


def _threads(n_threads: int, seconds: float, work: Callable[[int, int], None]) -> int:
    """Run ``work(thread, i)`` in ``n_threads`` threads for ``seconds``; total calls."""
    counts = [0] * n_threads
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def loop(t: int) -> None:
        i = 0
        try:
            while time.monotonic() < stop:
                work(t, i)
                i += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        counts[t] = i

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return sum(counts)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _hb_process(url: str, ids: Sequence[int], threads: int, start_at: float, seconds: float) -> int:
    """One process of a multi-process heartbeat run (spawned): waits for the common start, then calls the service
    in process from ``threads`` threads."""
    from jobmon_airflow import db
    from jobmon_airflow.service import Services

    per_thread = [ids[t::threads] for t in range(threads)]
    svc = Services.for_engine(db.get_engine(url))
    svc.reports.log_report_by_many({ids[0]: 270.0})  # connect before the clock starts

    def heartbeat(t: int, i: int) -> None:
        svc.reports.log_report_by_many({per_thread[t][i % len(per_thread[t])]: 270.0})

    time.sleep(max(0.0, start_at - time.time()))
    return _threads(threads, seconds, heartbeat)


def _hb_http_process(
    port: int, token: str, ids: Sequence[int], connections: int, start_at: float, seconds: float
) -> int:
    """One client process of the HTTP heartbeat run (spawned): ``connections`` keep-alive connections, each a
    worker node sending its next heartbeat as soon as the last one was answered (as many jobs heartbeating at
    once would). A bare asyncio HTTP/1.1 client, so the 2 cores go to the server, not to the client library."""
    import asyncio

    body = json.dumps({"next_report_increment": 270.0}).encode()

    def request(ti_id: int) -> bytes:
        return (
            f"POST /jobmon/api/state/task_instance/{ti_id}/log_report_by HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def connection(c: int, deadline: float) -> int:
        mine = ids[c::connections]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        calls = 0
        while time.time() < deadline:
            writer.write(request(mine[calls % len(mine)]))
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            data = await reader.readexactly(length)
            assert status == b"200", (status, data[:200])
            calls += 1
        writer.close()
        return calls

    async def main() -> int:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.time() + seconds
        return sum(await asyncio.gather(*(connection(c, deadline) for c in range(connections))))

    return asyncio.run(main())


def _processes(work: Callable[..., int], args_per_proc: list[tuple[Any, ...]]) -> int:
    """Run ``work(*args[:-1], start_at, seconds)`` (``seconds`` = ``args[-1]``) in one spawned process per entry,
    all starting at the same moment ``start_at``; the total of their counts."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 15  # spawned interpreters import SQLAlchemy first
    with ctx.Pool(len(args_per_proc)) as pool:
        results = [pool.apply_async(work, (*args[:-1], start_at, args[-1])) for args in args_per_proc]
        return sum(r.get(timeout=180) for r in results)


HTTP_SERVER_WORKERS = (1, 2)
HTTP_CLIENT_PROCESSES, HTTP_CONNECTIONS_EACH = 2, 256


def _http_heartbeats(url: str, hb_ti: Sequence[int], token: str, workers: int, seconds: float) -> dict[str, Any]:
    from benchmarks.common import free_port
    from tests.support.airflow_services import wait_for

    port = free_port()
    # The database URL goes in the connection's environment variable, not on the command line (ps shows argv).
    env = {
        **os.environ,
        "AIRFLOW_CONN_JOBMON_DEFAULT": json.dumps({"conn_type": "jobmon", "extra": {"sql_alchemy_conn": url}}),
    }
    argv = [
        str(Path(sys.executable).with_name("jobmon-airflow")),
        "server",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    server = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: _port_open(port), 60, "the State Manager", 0.2)
        procs = HTTP_CLIENT_PROCESSES
        http_calls = _processes(
            _hb_http_process, [(port, token, hb_ti[p::procs], HTTP_CONNECTIONS_EACH, seconds) for p in range(procs)]
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    return {
        "path": "POST /jobmon/api/state/task_instance/{id}/log_report_by on the standalone State Manager "
        f"(jobmon-airflow server --workers {workers}: uvicorn; bearer-token check + heartbeat, both batched per "
        f"20 ms window), {procs} client processes × {HTTP_CONNECTIONS_EACH} keep-alive connections",
        "server_workers": workers,
        "client_connections": procs * HTTP_CONNECTIONS_EACH,
        "seconds": seconds,
        "calls": http_calls,
        "per_s": round(http_calls / seconds),
        "target_per_s": 2000,
        "meets_target": http_calls / seconds >= 2000,
    }


def run(
    bind_size: int = 100_000,
    transition_size: int = 20_000,
    threads: int = 8,
    seconds: float = 10.0,
    profile: bool = True,
) -> dict[str, Any]:
    import sqlalchemy as sa

    from jobmon_airflow import db
    from jobmon_airflow.hashing import hash_token
    from jobmon_airflow.resources import QueueLimits, Resources
    from jobmon_airflow.service import Services
    from jobmon_airflow.service.core import TASK, TI, transition_task_instances

    url = fresh_database(DB)
    engine = db.get_engine(url)
    db.ensure_schema(engine)
    svc = Services.for_engine(engine)
    out: dict[str, Any] = {"database": DB, "threads": threads}

    # -- bind -----------------------------------------------------------------------------------------------------
    wf = svc.binding.bind_workflow_run(dag_id="bench_bind", run_id="r1")
    specs = _specs(bind_size, "bind")
    t0 = time.perf_counter()
    ids = svc.binding.bind_tasks(wf.workflow_id, specs)
    bind_s = time.perf_counter() - t0
    assert len(set(ids)) == bind_size
    t0 = time.perf_counter()
    again = svc.binding.bind_tasks(wf.workflow_id, specs)  # idempotent re-bind (a DAG re-parse / retry of the operator)
    rebind_s = time.perf_counter() - t0
    assert again == ids
    # Floor: the same rows, one plain executemany INSERT in chunks of 1000, no read-back, no update pass.
    wf2 = svc.binding.bind_workflow_run(dag_id="bench_bind_floor", run_id="r1")
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "workflow_id": wf2.workflow_id,
            "airflow_task_id": "floor",
            "map_index": i,
            "node_args_hash": "",
            "task_args_hash": "",
            "name": f"floor[{i}]",
            "command": f"echo {i}",
            "max_attempts": 3,
            "fallback_queues": "[]",
            "num_attempts": 0,
            "status": "G",
            "status_date": now,
        }
        for i in range(bind_size)
    ]
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for i in range(0, len(rows), 1000):
            conn.execute(TASK.insert(), rows[i : i + 1000])
    floor_s = time.perf_counter() - t0
    # A DAG change that alters every task's command: bind_tasks' upsert of the changed rows, beside the same change
    # as one UPDATE per row (executemany of UPDATE ... WHERE id = :b_id, a round trip per row with pymysql; what
    # bind_tasks did before 2026-11-28).
    with engine.connect() as conn:
        floor_ids = list(conn.execute(sa.select(TASK.c.id).where(TASK.c.workflow_id == wf2.workflow_id)).scalars())
    mutable = ("command", "max_attempts", "resource_scales", "fallback_queues")
    stmt = TASK.update().where(TASK.c.id == sa.bindparam("b_id")).values({k: sa.bindparam(k) for k in mutable})
    updates = [
        {"b_id": i, "command": f"echo {i} v2", "max_attempts": 3, "resource_scales": None, "fallback_queues": "[]"}
        for i in floor_ids
    ]
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for i in range(0, len(updates), 1000):
            conn.execute(stmt, updates[i : i + 1000])
    update_pass_s = time.perf_counter() - t0
    changed_specs = [replace(spec, command=f"{spec.command} v2") for spec in specs]
    t0 = time.perf_counter()
    assert svc.binding.bind_tasks(wf.workflow_id, changed_specs) == ids
    rebind_changed_s = time.perf_counter() - t0
    out["bind"] = {
        "tasks": bind_size,
        "bind_tasks_s": round(bind_s, 2),
        "tasks_per_s": round(bind_size / bind_s),
        "rebind_same_tasks_s": round(rebind_s, 2),
        "plain_insert_floor_s": round(floor_s, 2),
        "ratio_bind_to_plain_insert": round(bind_s / floor_s, 2),
        "rebind_all_changed_s": round(rebind_changed_s, 2),
        "one_update_per_row_s": round(update_pass_s, 2),
        "ratio_rebind_changed_to_update_per_row": round(rebind_changed_s / update_pass_s, 2),
        "target_s": 10.0,
        "meets_target": bind_s <= 10.0,
    }
    log(f"bind {bind_size}: {bind_s:.2f}s (plain insert {floor_s:.2f}s, rebind {rebind_s:.2f}s)")
    if profile:
        wf3 = svc.binding.bind_workflow_run(dag_id="bench_bind_profiled", run_id="r1")
        specs3 = _specs(bind_size, "prof")
        out["bind"]["profile"] = _profile(lambda: svc.binding.bind_tasks(wf3.workflow_id, specs3), "bind_100k")

    # -- transitions ------------------------------------------------------------------------------------------------
    cluster_id = svc.binding.cluster_id("gridengine", "gridengine")
    queue = QueueLimits(name="all.q", max_cores=2, max_memory=4.0, max_runtime=86400)
    task_ids = ids[:transition_size]
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    ti_ids = svc.lifecycle.queue_task_instances(wf.workflow_run_id, cluster_id, task_ids, Resources(), "O", queue)
    steps["G->Q queue_task_instances (task + new instance)"] = time.perf_counter() - t0
    for new in "IORD":
        t0 = time.perf_counter()
        with db.session_scope(svc.engine) as s:
            changed = transition_task_instances(s, ti_ids, new)
        steps[f"->{new} transition_task_instances"] = time.perf_counter() - t0
        assert len(changed) == len(ti_ids), (new, len(changed))
    total = sum(steps.values())
    # Floor: the same number of rows, four plain UPDATE ... WHERE id IN (chunk) of the instance table's status.
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for status in "IORD":
            for i in range(0, len(ti_ids), 1000):
                conn.execute(TI.update().where(TI.c.id.in_(ti_ids[i : i + 1000])).values(status=status))
    floor_tr = time.perf_counter() - t0
    out["transitions"] = {
        "rows": transition_size,
        "steps_s": {k: round(v, 2) for k, v in steps.items()},
        "rows_per_s_per_step": {k: round(transition_size / v) for k, v in steps.items()},
        "instance_transitions_per_s": round(4 * transition_size / sum(v for k, v in steps.items() if "->" in k[:3])),
        "all_five_steps_s": round(total, 2),
        "plain_update_floor_4_steps_s": round(floor_tr, 2),
        "ratio_transitions_to_plain_update": round(
            sum(v for k, v in steps.items() if k.startswith("->")) / floor_tr, 2
        ),
    }
    log(f"transitions {transition_size} rows: {steps}")

    # -- heartbeats -------------------------------------------------------------------------------------------------
    hb_tasks = ids[transition_size : transition_size + 1000]
    hb_ti = svc.lifecycle.queue_task_instances(wf.workflow_run_id, cluster_id, hb_tasks, Resources(), "O", queue)
    token = "bench-token"
    svc.lifecycle.instantiate(hb_ti, dict.fromkeys(hb_ti, hash_token(token)), {})
    with db.session_scope(svc.engine) as s:
        for new in "OR":
            transition_task_instances(s, hb_ti, new)
    per_thread: list[Sequence[int]] = [hb_ti[t::threads] for t in range(threads)]

    def heartbeat(t: int, i: int) -> None:
        ids_t = per_thread[t]
        ti = ids_t[i % len(ids_t)]
        assert svc.reports.log_report_by_many({ti: 270.0})[ti] == "R"

    def floor_heartbeat(t: int, i: int) -> None:
        ids_t = per_thread[t]
        with engine.begin() as conn:
            conn.execute(TI.update().where(TI.c.id == ids_t[i % len(ids_t)]).values(report_by_date=sa.func.now()))

    def batched_floor(t: int, i: int) -> None:
        ids_t = list(per_thread[t])
        batch = [ids_t[(i * 100 + k) % len(ids_t)] for k in range(100)]
        with engine.begin() as conn:
            conn.execute(TI.update().where(TI.c.id.in_(batch)).values(report_by_date=sa.func.now()))

    calls = _threads(threads, seconds, heartbeat)
    floor_calls = _threads(threads, seconds, floor_heartbeat)
    batched_statements = _threads(threads, seconds, batched_floor)
    many_rows = 0
    if hasattr(svc.reports, "log_report_by_many"):  # the State Manager's coalesced path (library from ad769c0 on)

        def coalesced(t: int, i: int) -> None:
            ids_t = list(per_thread[t])
            batch = [ids_t[(i * 50 + k) % len(ids_t)] for k in range(50)]
            svc.reports.log_report_by_many(dict.fromkeys(batch, 270.0))

        many_rows = 50 * _threads(threads, seconds, coalesced)
    out["heartbeats"] = {
        "path": "Reports.log_report_by_many of one heartbeat (in process, one transaction per heartbeat)",
        "seconds": seconds,
        "calls": calls,
        "per_s": round(calls / seconds),
        "plain_single_row_update_per_s": round(floor_calls / seconds),
        "ratio_to_plain_update": round(calls / floor_calls, 2),
        "what_if_batched_100_per_statement_rows_per_s": round(batched_statements * 100 / seconds),
        "log_report_by_many_50_per_call_rows_per_s": round(many_rows / seconds) if many_rows else None,
        "note": "one transaction (one commit, fsync: innodb_flush_log_at_trx_commit=1) per heartbeat",
        "target_per_s": 2000,
        "meets_target": calls / seconds >= 2000,
    }
    log(f"heartbeats: {calls / seconds:.0f}/s (plain update {floor_calls / seconds:.0f}/s)")

    # -- heartbeats from several processes (as a State Manager with several workers would serve them) ---------------
    procs = 4
    per_proc: list[list[int]] = [hb_ti[p::procs] for p in range(procs)]
    mp_calls = _processes(_hb_process, [(url, ids, 4, seconds) for ids in per_proc])
    out["heartbeats_processes"] = {
        "path": "Services.log_report_by from 4 processes × 4 threads (separate interpreters: no shared GIL)",
        "processes": procs,
        "threads_each": 4,
        "seconds": seconds,
        "calls": mp_calls,
        "per_s": round(mp_calls / seconds),
        "ratio_to_one_process": round(mp_calls / calls, 2),
        "meets_target": mp_calls / seconds >= 2000,
    }
    log(f"heartbeats, {procs} processes: {mp_calls / seconds:.0f}/s")

    # -- heartbeats over HTTP: the standalone State Manager (``jobmon-airflow server``, its own processes) -----------
    out["heartbeats_http"] = {
        str(workers): _http_heartbeats(url, hb_ti, token, workers, seconds) for workers in HTTP_SERVER_WORKERS
    }
    for workers, r in out["heartbeats_http"].items():
        r["ratio_to_in_process"] = round(r["calls"] / calls, 2)
        log(f"heartbeats over HTTP, {workers} server process(es): {r['per_s']}/s")
    engine.dispose()
    return out
