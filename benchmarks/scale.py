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
shared 2-core machine (docs/scale.md). Also measured: rows and bytes per table for 20,000 tasks (docs/scale.md).
Needs nginx and MariaDB (scripts/setup_services.sh, scripts/services/scale.packages).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import drop_database, free_port, fresh_database, load_average, log
from benchmarks.state_db import HTTP_CLIENT_PROCESSES, HTTP_CONNECTIONS_EACH, _hb_http_process, _port_open, _processes

DB = "jobmon_test_bench_scale"
INSTANCES = 1000
ROUNDS = 3

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


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (/proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds the whole machine spent busy (every process, other users' too), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


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


def _cpu_split(
    variants: dict[str, int], parts: dict[str, list[int]], script: Path, seconds: float
) -> dict[str, dict[str, Any]]:
    """Per variant, with wrk as the client: heartbeats/s and CPU milliseconds per heartbeat of each part (the
    replicas, nginx, MariaDB, the client) and of the machine as a whole (other users included)."""
    out: dict[str, dict[str, Any]] = {}
    for name, port in variants.items():
        cpu0, busy0 = {k: _cpu_s(v) for k, v in parts.items()}, _busy_s()
        rate, client_s = _wrk(port, script, seconds)
        cpu1, busy1 = {k: _cpu_s(v) for k, v in parts.items()}, _busy_s()
        calls = rate * seconds
        ms = {k: round(1000 * (cpu1[k] - cpu0[k]) / calls, 3) for k in parts}
        out[name] = {
            "per_s": round(rate),
            "cpu_ms_per_heartbeat": {**ms, "client (wrk)": round(1000 * client_s / calls, 3)},
            "machine_busy_cores": round((busy1 - busy0) / seconds, 2),
            "parts_busy_cores": {k: round((cpu1[k] - cpu0[k]) / seconds, 2) for k in parts},
        }
        log(f"wrk {name}: {rate:.0f}/s, CPU ms per heartbeat {out[name]['cpu_ms_per_heartbeat']}")
    return out


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
        out.update(
            {
                "path": "POST /jobmon/api/state/task_instance/{id}/log_report_by; client as benchmark c "
                f"({HTTP_CLIENT_PROCESSES} processes × {HTTP_CONNECTIONS_EACH} keep-alive connections); "
                f"nginx {nginx_workers} worker process(es), keep-alive upstreams; replicas: jobmon-airflow server "
                "(1 uvicorn worker each) on one MariaDB database",
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
        )
        log(f"two replicas / one through nginx: {out['ratio_2_to_1_replica']}")
        if shutil.which("wrk"):
            script = work / "heartbeat.lua"
            script.write_text(WRK_LUA.format(ids=", ".join(map(str, ti_ids)), token=token))
            mariadb = subprocess.run(["pidof", "mariadbd"], capture_output=True, text=True).stdout.split()
            master = int((work / "nginx.pid").read_text())
            parts = {
                "replica 1": [replicas[0].pid, *_children(replicas[0].pid)],
                "replica 2": [replicas[1].pid, *_children(replicas[1].pid)],
                "nginx": [master, *_children(master)],
                "mariadb": [int(p) for p in mariadb],
            }
            splits = [_cpu_split(variants, parts, script, seconds) for _ in range(ROUNDS)]
            wrk_ratios = sorted(r["nginx_2_replicas"]["per_s"] / r["nginx_1_replica"]["per_s"] for r in splits)
            out["wrk"] = {
                "client": f"wrk -t1 -c{WRK_CONNECTIONS} (Debian's wrk 4.1), same heartbeat route and ids",
                "rounds": splits,
                "ratio_2_to_1_replica": round(wrk_ratios[len(wrk_ratios) // 2], 2),
                "ratio_per_round": [round(r, 2) for r in wrk_ratios],
            }
            log(f"wrk: two replicas / one through nginx: {out['wrk']['ratio_2_to_1_replica']}")
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
