"""f. Heartbeats through nginx to State Manager replicas: two replicas vs one, side by side (issue 13; benchmark c's
HTTP heartbeat run, behind the load balancer).

Each replica is its own ``jobmon-airflow server`` process (one uvicorn worker, its own heartbeat coalescer) on one
MariaDB database; nginx (Debian's, started here on loopback with a private configuration) listens on two ports:
one proxies to replica 1 only, the other to both replicas (round robin, keep-alive upstream connections). The same
client as benchmark c (2 processes × 256 keep-alive connections, each sending its next heartbeat as soon as the last
was answered, every answer checked 200) runs against: replica 1 directly, nginx → 1 replica, nginx → 2 replicas;
three times each, interleaved; the headline is the median of the rounds' 2-vs-1 ratios (the load of a shared 2-core
machine swings between rounds). Then the same with wrk (C, one thread) as the client, with the CPU each part used
per heartbeat (replicas, nginx, MariaDB, client; /proc) and the machine's busy cores: what bounds the ratio on a
shared 2-core machine (docs/scale.md).

Then the fair comparison, as deployments run replicas (containers with CPU limits): each replica gets the same fixed
CPU budget in its own cgroup (v1 ``cpu`` controller, CFS quota, ``BENCH_SCALE_CPU_CAP`` CPUs each, default 0.4;
benchmarks/cpu_caps.py), nginx, MariaDB and the client stay outside the caps, and nginx → 1 replica vs nginx → 2
replicas run side by side in interleaved rounds (``BENCH_SCALE_CAPPED_ROUNDS``, default 3; the order alternating),
with both clients, recording each part's CPU and the groups' throttling. ``BENCH_SCALE_UNCAPPED=0`` runs only
these, keeping the last full run's uncapped figures (named as such). Also measured: rows and bytes per table for
20,000 tasks (docs/scale.md). Needs nginx, wrk and MariaDB (scripts/setup_services.sh,
scripts/services/scale.packages); root for the cgroups.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, drop_database, free_port, fresh_database, load_average, log
from benchmarks.cpu_caps import PERIOD_US, CpuCaps, Throttling, available, busy_s, children, cpu_s
from benchmarks.state_db import HTTP_CLIENT_PROCESSES, HTTP_CONNECTIONS_EACH, _hb_http_process, _port_open, _processes

DB = "jobmon_test_bench_scale"
INSTANCES = 1000
ROUNDS = 3
CAPPED_ROUNDS = int(os.environ.get("BENCH_SCALE_CAPPED_ROUNDS", "3"))
UNCAPPED = os.environ.get("BENCH_SCALE_UNCAPPED", "1") != "0"  # 0: only the capped rounds
CPU_CAP = float(os.environ.get("BENCH_SCALE_CPU_CAP", "0.4"))  # CPUs per replica in the capped rounds

NGINX_CONF = """
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_processes {workers};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream one {{ server 127.0.0.1:{r1}; keepalive 64; }}
    upstream two {{ server 127.0.0.1:{r1}; server 127.0.0.1:{r2}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{one};
        location /jobmon/ {{ proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
    server {{
        listen 127.0.0.1:{two};
        location /jobmon/ {{ proxy_pass http://two; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"""


def _instances(url: str, token: str) -> list[int]:
    """``INSTANCES`` running task instances, all with the bearer token ``token``."""
    from jobmon_airflow import db
    from jobmon_airflow.hashing import hash_token
    from jobmon_airflow.resources import QueueLimits, Resources
    from jobmon_airflow.service import Services, TaskSpec
    from jobmon_airflow.service.core import transition_task_instances

    engine = db.get_engine(url)
    db.ensure_schema(engine)
    svc = Services.for_engine(engine)
    run = svc.binding.bind_workflow_run(dag_id="bench_scale", run_id="r1")
    tasks = svc.binding.bind_tasks(run.workflow_id, [TaskSpec(f"t{i}", f"t{i}", "true") for i in range(INSTANCES)])
    cluster_id = svc.binding.cluster_id("local", "local")
    ti_ids = svc.lifecycle.queue_task_instances(
        run.workflow_run_id, cluster_id, tasks, Resources(), "O", QueueLimits("local")
    )
    svc.lifecycle.instantiate(ti_ids, dict.fromkeys(ti_ids, hash_token(token)), {})
    with db.session_scope(engine) as s:
        for new in "OR":
            transition_task_instances(s, ti_ids, new)
    engine.dispose()
    return list(ti_ids)


STORAGE_TASKS = 20_000


def _storage(url: str) -> dict[str, Any]:
    """Rows and bytes (data + indexes, InnoDB after ANALYZE TABLE) per table for ``STORAGE_TASKS`` tasks, each with
    one instance that has its job id and log paths: the per-task cost behind docs/scale.md's table sizes."""
    import sqlalchemy as sa

    from jobmon_airflow import db
    from jobmon_airflow.resources import QueueLimits, Resources
    from jobmon_airflow.service import Services, TaskSpec

    engine = db.get_engine(url)
    svc = Services.for_engine(engine)
    run = svc.binding.bind_workflow_run(dag_id="bench_storage", run_id="r1")
    specs = [
        TaskSpec(f"model_location[{i}]", f"model_location[{i}]", f"python model.py --location {i} --version 7")
        for i in range(STORAGE_TASKS)
    ]
    tasks = svc.binding.bind_tasks(run.workflow_id, specs)
    cluster_id = svc.binding.cluster_id("local", "local")
    ti_ids = svc.lifecycle.queue_task_instances(
        run.workflow_run_id, cluster_id, tasks, Resources(), "O", QueueLimits("local")
    )
    svc.lifecycle.instantiate(ti_ids, dict.fromkeys(ti_ids, "0" * 64), {})
    logs = "/ihme/scratch/users/someone/jobmon/logs/model_location"
    svc.lifecycle.log_distributor_ids(
        {ti: f"{1_000_000 + ti}" for ti in ti_ids},
        {ti: {"stdout": f"{logs}.o{1_000_000 + ti}", "stderr": f"{logs}.e{1_000_000 + ti}"} for ti in ti_ids},
    )
    out: dict[str, Any] = {"tasks": STORAGE_TASKS}
    with engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE TABLE `{table}`").all()
        sizes = conn.execute(
            sa.text(
                "SELECT table_name, data_length + index_length FROM information_schema.tables"
                " WHERE table_schema = DATABASE()"
            )
        ).all()
        for table, size in sizes:
            rows = conn.execute(sa.text(f"SELECT COUNT(*) FROM `{table}`")).scalar_one()
            if rows >= STORAGE_TASKS // 2:  # the per-task tables; the others are constant
                out[table] = {"rows": rows, "bytes": int(size), "bytes_per_row": round(int(size) / rows)}
    engine.dispose()
    return out


def _heartbeats(port: int, ti_ids: list[int], token: str, seconds: float) -> float:
    procs = HTTP_CLIENT_PROCESSES
    calls = _processes(
        _hb_http_process, [(port, token, ti_ids[p::procs], HTTP_CONNECTIONS_EACH, seconds) for p in range(procs)]
    )
    return calls / seconds


# -- where the CPU goes: what bounds the 2-vs-1 ratio on this machine

WRK_CONNECTIONS = 128
WRK_LUA = """
local ids = {{{ids}}}
local n, i = #ids, 0
local body = '{{"next_report_increment": 270.0}}'
local headers = {{["Authorization"] = "Bearer {token}", ["Content-Type"] = "application/json"}}
request = function()
    i = i + 1
    return wrk.format("POST", "/jobmon/api/state/task_instance/" .. ids[(i % n) + 1] .. "/log_report_by", headers, body)
end
"""


def _wrk(port: int, script: Path, seconds: float) -> tuple[float, float]:
    """Heartbeats per second with wrk (C, one thread, ``WRK_CONNECTIONS`` keep-alive connections) and wrk's own
    CPU seconds; every answer must be 2xx."""
    before = os.times()
    proc = subprocess.run(
        ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds:g}s", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    after = os.times()
    if "Non-2xx" in proc.stdout:
        raise RuntimeError(f"wrk got errors:\n{proc.stdout}")
    rate = float(proc.stdout.split("Requests/sec:", 1)[1].split()[0])
    return rate, (after.children_user - before.children_user) + (after.children_system - before.children_system)


@dataclass(frozen=True)
class _Snapshot:
    cpu_s: dict[str, float]  # per part, /proc
    busy_s: float  # the whole machine, /proc/stat
    throttling: dict[str, Throttling]  # per capped group, cpu.stat


def _snapshot(parts: dict[str, list[int]], caps: CpuCaps | None = None) -> _Snapshot:
    return _Snapshot(
        {k: cpu_s(v) for k, v in parts.items()},
        busy_s(),
        {m: caps.throttling(m) for m in caps.groups} if caps else {},
    )


def _window(rate: float, seconds: float, before: _Snapshot, after: _Snapshot) -> dict[str, Any]:
    """Heartbeats/s with the CPU milliseconds per heartbeat and the cores busy of each part and of the machine as a
    whole (other users included), and each capped group's throttling, between two snapshots."""
    calls, cpu = rate * seconds, {k: after.cpu_s[k] - before.cpu_s[k] for k in before.cpu_s}
    out: dict[str, Any] = {
        "per_s": round(rate),
        "cpu_ms_per_heartbeat": {k: round(1000 * v / calls, 3) for k, v in cpu.items()},
        "parts_busy_cores": {k: round(v / seconds, 2) for k, v in cpu.items()},
        "machine_busy_cores": round((after.busy_s - before.busy_s) / seconds, 2),
    }
    if before.throttling:
        out["throttling"] = {
            m: {"periods": d.periods, "throttled": d.throttled, "throttled_ms": round(d.throttled_ms)}
            for m, d in ((m, after.throttling[m] - before.throttling[m]) for m in before.throttling)
        }
    return out


def _wrk_window(
    port: int, script: Path, parts: dict[str, list[int]], seconds: float, caps: CpuCaps | None = None
) -> dict[str, Any]:
    before = _snapshot(parts, caps)
    rate, client_s = _wrk(port, script, seconds)
    out = _window(rate, seconds, before, _snapshot(parts, caps))
    out["cpu_ms_per_heartbeat"]["client (wrk)"] = round(1000 * client_s / (rate * seconds), 3)
    out["parts_busy_cores"]["client (wrk)"] = round(client_s / seconds, 2)
    return out


def _client_process(queue: Any, *args: Any) -> None:
    """One spawned process of benchmark c's client; its count goes back through ``queue``."""
    queue.put(_hb_http_process(*args))


def _python_window(
    port: int, ti_ids: list[int], token: str, parts: dict[str, list[int]], seconds: float, caps: CpuCaps
) -> dict[str, Any]:
    """Benchmark c's client, with the CPU of each part and of the client's processes over its measured window only
    (the spawned interpreters' start-up is before it)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue, procs, start_at = ctx.Queue(), HTTP_CLIENT_PROCESSES, time.time() + 15
    clients = [
        ctx.Process(
            target=_client_process,
            args=(queue, port, token, ti_ids[p::procs], HTTP_CONNECTIONS_EACH, start_at, seconds),
        )
        for p in range(procs)
    ]
    for c in clients:
        c.start()
    try:
        every = {**parts, "client (python)": [c.pid for c in clients if c.pid]}
        time.sleep(max(0.0, start_at - time.time()))
        before = _snapshot(every, caps)
        time.sleep(seconds)
        after = _snapshot(every, caps)
        calls = sum(queue.get(timeout=120) for _ in clients)
    finally:
        for c in clients:
            c.join(60)
    return _window(calls / seconds, seconds, before, after)


def _cpu_split(
    variants: dict[str, int], parts: dict[str, list[int]], script: Path, seconds: float
) -> dict[str, dict[str, Any]]:
    """Per variant, uncapped, with wrk as the client: where the CPU goes."""
    out: dict[str, dict[str, Any]] = {}
    for name, port in variants.items():
        out[name] = _wrk_window(port, script, parts, seconds)
        log(f"wrk {name}: {out[name]['per_s']}/s, CPU ms per heartbeat {out[name]['cpu_ms_per_heartbeat']}")
    return out


# -- the fair comparison: each replica with the same CPU budget of its own, as containers with CPU limits


def _capped(
    variants: dict[str, int],
    parts: dict[str, list[int]],
    script: Path,
    ti_ids: list[int],
    token: str,
    seconds: float,
) -> dict[str, Any]:
    """nginx → 1 replica vs nginx → 2 replicas, each replica capped at ``CPU_CAP`` CPUs in its own cgroup, in
    ``CAPPED_ROUNDS`` interleaved rounds (the order alternating), with benchmark c's client and with wrk."""
    why_not = available()
    if why_not:
        return {"skipped": why_not}
    caps = CpuCaps("jobmon-bench", ["replica-1", "replica-2"])
    out: dict[str, Any] = {
        "cpu_cap_per_replica": CPU_CAP,
        "cfs_period_us": PERIOD_US,
        "cfs_quota_us": round(CPU_CAP * PERIOD_US),
        "cgroups": "cgroup v1 cpu controller, /sys/fs/cgroup/cpu/jobmon-bench/replica-{1,2} (removed afterwards); "
        "nginx, MariaDB and the client uncapped",
        "load_before": load_average(),
    }
    try:
        threads = {}
        for member, part in (("replica-1", "replica 1"), ("replica-2", "replica 2")):
            in_group = caps.add(member, parts[part])
            own = {int(t.name) for pid in parts[part] for t in Path(f"/proc/{pid}/task").iterdir()}
            if own - set(in_group):
                raise RuntimeError(f"threads of {part} outside its cgroup: {sorted(own - set(in_group))}")
            threads[member] = len(in_group)
        out["threads_in_group"] = threads
        caps.set_cores(CPU_CAP)
        rounds: list[dict[str, dict[str, Any]]] = []
        for r in range(CAPPED_ROUNDS):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            one: dict[str, dict[str, Any]] = {"python": {}, "wrk": {}}
            for client in one:
                for name in order:
                    port = variants[name]
                    one[client][name] = (
                        _wrk_window(port, script, parts, seconds, caps)
                        if client == "wrk"
                        else _python_window(port, ti_ids, token, parts, seconds, caps)
                    )
                    w = one[client][name]
                    log(f"capped {CPU_CAP} CPU, {client} {name}: {w['per_s']}/s, cores {w['parts_busy_cores']}")
            rounds.append(one)
    finally:
        caps.close()
    ratios = {
        c: [x[c]["nginx_2_replicas"]["per_s"] / x[c]["nginx_1_replica"]["per_s"] for x in rounds]
        for c in ("python", "wrk")
    }
    out.update(
        {
            "load_after": load_average(),
            "order": "odd rounds 1 then 2 replicas, even rounds 2 then 1; each round benchmark c's client, then wrk",
            "rounds": rounds,
            "per_s": {
                c: {v: round(statistics.mean(x[c][v]["per_s"] for x in rounds)) for v in variants} for c in ratios
            },
            "ratio_per_round": {c: [round(r, 2) for r in v] for c, v in ratios.items()},
            "ratio_2_to_1_replica": {c: round(statistics.median(v), 2) for c, v in ratios.items()},
            "meets_target": {c: statistics.median(v) >= 1.8 for c, v in ratios.items()},
        }
    )
    log(f"capped at {CPU_CAP} CPU per replica: two replicas / one through nginx: {out['ratio_2_to_1_replica']}")
    return out


def _uncapped(variants: dict[str, int], ti_ids: list[int], token: str, seconds: float) -> dict[str, Any]:
    """The three variants with benchmark c's client, no CPU caps: what the shared 2-core machine gives."""
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(ROUNDS):
        for name, port in variants.items():
            rates[name].append(_heartbeats(port, ti_ids, token, seconds))
            log(f"heartbeats {name}: {rates[name][-1]:.0f}/s")
    per_s = {k: round(sum(v) / len(v)) for k, v in rates.items()}
    # Each round's variants ran back to back: the ratio within a round is the side-by-side figure; the median
    # of the rounds' ratios is the headline (the machine's load swings between rounds).
    round_ratios = sorted(a / b for a, b in zip(rates["nginx_2_replicas"], rates["nginx_1_replica"], strict=True))
    median_ratio = round_ratios[len(round_ratios) // 2]
    log(f"uncapped: two replicas / one through nginx: {median_ratio:.2f}")
    return {
        "per_s": per_s,
        "per_round": {k: [round(x) for x in v] for k, v in rates.items()},
        "ratio_2_to_1_replica": round(median_ratio, 2),
        "ratio_per_round": [round(r, 2) for r in round_ratios],
        "ratio_of_means": round(per_s["nginx_2_replicas"] / per_s["nginx_1_replica"], 2),
        "ratio_nginx_to_direct": round(per_s["nginx_1_replica"] / per_s["direct_1_replica"], 2),
        "target_ratio": 1.8,
        "meets_target": median_ratio >= 1.8,
        "load_after": load_average(),
        "cores": os.cpu_count(),
    }


UNCAPPED_KEYS = (
    *("per_s", "per_round", "ratio_2_to_1_replica", "ratio_per_round", "ratio_of_means"),
    *("ratio_nginx_to_direct", "target_ratio", "meets_target", "cores", "wrk"),
)


def _previous_uncapped() -> dict[str, Any]:
    """The uncapped figures of the last full run, kept beside a capped-only run, and named as such."""
    path = RESULTS / "scale.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    keys = UNCAPPED_KEYS
    run = old.get("uncapped_from_run") or {
        "date": old["date"],
        "commit": old["machine"]["code"]["commit"],
        "load_before": old.get("load_before"),
    }
    return {**{k: old[k] for k in keys if k in old}, "uncapped_from_run": run}


def run(seconds: float = 10.0, nginx_workers: int = 1) -> dict[str, Any]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("nginx missing: install scripts/services/scale.packages (scripts/setup_services.sh)")
    url = fresh_database(DB)
    token = "bench-token"
    ti_ids = _instances(url, token)
    storage = _storage(url)
    log(f"storage per task: {storage}")
    work = Path(tempfile.mkdtemp(prefix="jobmon-bench-scale-"))
    env = {
        **os.environ,
        "AIRFLOW_CONN_JOBMON_DEFAULT": json.dumps({"conn_type": "jobmon", "extra": {"sql_alchemy_conn": url}}),
    }
    cli = str(Path(sys.executable).with_name("jobmon-airflow"))
    r1, r2, one, two = free_port(), free_port(), free_port(), free_port()
    replicas = [
        subprocess.Popen(
            [cli, "server", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for port in (r1, r2)
    ]
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, workers=nginx_workers, r1=r1, r2=r2, one=one, two=two))
    out: dict[str, Any] = {
        "storage": storage,
        "instances": INSTANCES,
        "seconds_each": seconds,
        "rounds": ROUNDS,
        "load_before": load_average(),
    }
    try:
        subprocess.run([nginx, "-c", str(conf)], check=True, capture_output=True)
        deadline = time.monotonic() + 90
        while not all(_port_open(p) for p in (r1, r2, one, two)):
            if time.monotonic() > deadline:
                raise RuntimeError("the replicas or nginx did not start")
            time.sleep(0.2)
        variants = {"direct_1_replica": r1, "nginx_1_replica": one, "nginx_2_replicas": two}
        out["path"] = (
            "POST /jobmon/api/state/task_instance/{id}/log_report_by; client as benchmark c "
            f"({HTTP_CLIENT_PROCESSES} processes × {HTTP_CONNECTIONS_EACH} keep-alive connections); "
            f"nginx {nginx_workers} worker process(es), keep-alive upstreams; replicas: jobmon-airflow server "
            "(1 uvicorn worker each) on one MariaDB database"
        )
        out.update(_uncapped(variants, ti_ids, token, seconds) if UNCAPPED else _previous_uncapped())
        if not shutil.which("wrk"):
            raise RuntimeError("wrk missing: install scripts/services/scale.packages (scripts/setup_services.sh)")
        script = work / "heartbeat.lua"
        script.write_text(WRK_LUA.format(ids=", ".join(map(str, ti_ids)), token=token))
        mariadb = subprocess.run(["pidof", "mariadbd"], capture_output=True, text=True).stdout.split()
        master = int((work / "nginx.pid").read_text())
        parts = {
            "replica 1": [replicas[0].pid, *children(replicas[0].pid)],
            "replica 2": [replicas[1].pid, *children(replicas[1].pid)],
            "nginx": [master, *children(master)],
            "mariadb": [int(p) for p in mariadb],
        }
        if UNCAPPED:
            splits = [_cpu_split(variants, parts, script, seconds) for _ in range(ROUNDS)]
            wrk_ratios = sorted(r["nginx_2_replicas"]["per_s"] / r["nginx_1_replica"]["per_s"] for r in splits)
            out["wrk"] = {
                "client": f"wrk -t1 -c{WRK_CONNECTIONS} (Debian's wrk 4.1), same heartbeat route and ids",
                "rounds": splits,
                "ratio_2_to_1_replica": round(wrk_ratios[len(wrk_ratios) // 2], 2),
                "ratio_per_round": [round(r, 2) for r in wrk_ratios],
            }
            log(f"wrk: two replicas / one through nginx: {out['wrk']['ratio_2_to_1_replica']}")
        behind_nginx = {k: v for k, v in variants.items() if k != "direct_1_replica"}
        out["capped"] = _capped(behind_nginx, parts, script, ti_ids, token, seconds)
    finally:
        pid_file = work / "nginx.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGQUIT)
        for p in replicas:
            os.killpg(p.pid, signal.SIGTERM)
        for p in replicas:
            p.wait(30)
        shutil.rmtree(work, ignore_errors=True)
        drop_database(DB)
    return out
