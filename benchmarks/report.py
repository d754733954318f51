"""Rows of RESULTS.md from each benchmark's JSON."""

from __future__ import annotations

from typing import Any


def _f(x: Any, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        x = f"{x:,.2f}"
    elif isinstance(x, int):
        x = f"{x:,}"
    return f"{x}{unit}"


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.items() if v) or "none"


def rows(name: str, doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    if name == "state_db":
        b, t, h = doc["bind"], doc["transitions"], doc["heartbeats"]
        out.append(
            (
                f"bind {b['tasks']:,} tasks (one bind_tasks call)",
                _f(b["bind_tasks_s"], " s"),
                f"target ≤ 10 s; plain INSERT {_f(b['plain_insert_floor_s'], ' s')}",
                f"{_f(b['ratio_bind_to_plain_insert'])}× plain",
            )
        )
        out.append(("re-bind the same tasks (idempotent)", _f(b["rebind_same_tasks_s"], " s"), "", ""))
        out.append(
            (
                f"instance transitions, {t['rows']:,} rows per bulk call (I, O, R, D)",
                f"{_f(t['instance_transitions_per_s'])} rows/s",
                f"plain UPDATE: 4 steps in {_f(t['plain_update_floor_4_steps_s'], ' s')}",
                f"{_f(t['ratio_transitions_to_plain_update'])}× plain",
            )
        )
        q = next(iter(t["rows_per_s_per_step"].items()))
        out.append((f"queue_task_instances {t['rows']:,} tasks (G→Q + new instances)", f"{_f(q[1])} rows/s", "", ""))
        out.append(
            (
                f"heartbeats, log_report_by, {doc['threads']} threads",
                f"{_f(h['per_s'])}/s",
                f"target ≥ 2,000/s; plain 1-row UPDATE {_f(h['plain_single_row_update_per_s'])}/s",
                f"{_f(h['ratio_to_plain_update'])}× plain",
            )
        )
        if h.get("log_report_by_many_50_per_call_rows_per_s"):
            out.append(
                (
                    f"heartbeats coalesced: log_report_by_many, 50 per call, {doc['threads']} threads",
                    f"{_f(h['log_report_by_many_50_per_call_rows_per_s'])}/s",
                    "target ≥ 2,000/s",
                    "",
                )
            )
        if "what_if_batched_100_per_statement_rows_per_s" in h:
            out.append(
                (
                    "what-if: heartbeats batched 100 per UPDATE (plain SQL, not a library API)",
                    f"{_f(h['what_if_batched_100_per_statement_rows_per_s'])} rows/s",
                    "target ≥ 2,000/s",
                    "",
                )
            )
        if "heartbeats_processes" in doc:
            hp = doc["heartbeats_processes"]
            out.append(
                (
                    f"heartbeats, log_report_by, {hp['processes']} processes × {hp['threads_each']} threads",
                    f"{_f(hp['per_s'])}/s",
                    "target ≥ 2,000/s",
                    f"{_f(hp['ratio_to_one_process'])}× one process",
                )
            )
        if "rebind_all_changed_s" in b:
            out.append(
                (
                    f"re-bind {b['tasks']:,} tasks, every command changed (upsert per 1,000 rows)",
                    _f(b["rebind_all_changed_s"], " s"),
                    f"one UPDATE per row: {_f(b['one_update_per_row_s'], ' s')}",
                    f"{_f(b['ratio_rebind_changed_to_update_per_row'])}×",
                )
            )
        for workers, hh in doc.get("heartbeats_http", {}).items():
            out.append(
                (
                    f"heartbeats over HTTP (standalone State Manager, {workers} server process(es), "
                    f"{hh['client_connections']} keep-alive connections)",
                    f"{_f(hh['per_s'])}/s",
                    "target ≥ 2,000/s",
                    f"{_f(hh['ratio_to_in_process'])}× in-process",
                )
            )
    elif name == "array_vs_qsub":
        for r in doc["runs"]:
            n = r["n"]
            out.append(
                (
                    f"N={n}: wall time, JobmonArrayOperator (dag.test) vs raw qsub -t + wait",
                    _f(r["jobmon"]["wall_s"], " s"),
                    f"{_f(r['raw']['wall_s'], ' s')}; target ratio ≤ 1.10",
                    f"{_f(r['ratio_wall'])}",
                )
            )
            out.append(
                (f"N={n}: Grid Engine commands", _counts(r["jobmon"]["commands"]), _counts(r["raw"]["commands"]), "")
            )
    elif name == "mapped_services":
        for r in doc["runs"]:
            n = r["n"]
            j, p = r["jobmon"], r["plain"]
            out.append(
                (
                    f"N={n}: wall time, mapped JobmonTaskOperator vs mapped BashOperator qsub -sync y "
                    "(real scheduler + triggerer)",
                    _f(j["wall_s"], " s"),
                    _f(p["wall_s"], " s"),
                    _f(r["ratio_wall"]),
                )
            )
            out.append((f"N={n}: Grid Engine commands (PATH shim)", _counts(j["commands"]), _counts(p["commands"]), ""))
    elif name == "shared_poll":
        out.append(
            (
                f"{doc['triggers']} deferred triggers: qstat calls per poll interval",
                _f(doc["qstat_per_interval"]),
                f"target 1; {doc['polls']} polls in {doc['window_s']} s",
                f"{_f(doc['qstat_calls'])} qstat / {_f(doc['intervals'])} intervals",
            )
        )
    elif name == "local_fork_join":
        for r in doc["runs"]:
            j, x = r["jobmon"], r["xargs"]
            goal = f"; goal ≤ {r['goal_s']:g} s" if r.get("goal_s") else ""
            out.append(
                (
                    f"N={r['n']}: fork-join (start, array of N, end) on the local cluster, dag.test, defaults",
                    f"{_f(j['wall_s'], ' s')} ({j['dag_run_state']})"
                    + (f" (median of {j['walls_s']})" if len(j.get("walls_s", [])) > 1 else ""),
                    f"xargs -P {x['slots']}: {_f(x['wall_s'], ' s')}{goal}",
                    f"{_f(r['ratio_wall'])}× xargs",
                )
            )
    elif name == "local_single_task":
        out.append(
            (
                "one trivial JobmonTaskOperator on the local cluster: execute → success (warm supervisor, median)",
                _f(doc["warm_median_s"], " s"),
                f"goal ≤ {doc['goal_s']:g} s; first run (starts the supervisor) "
                f"{_f(doc['first_run_cold_supervisor_s'], ' s')}",
                f"{doc['warm_median_s'] / doc['goal_s']:.2f}× goal",
            )
        )
    elif name == "query":
        scale = f"{doc['tasks']:,} tasks, {doc['instances']:,} instances, {doc['error_logs']:,} error logs"
        for route, r in doc["requests"].items():
            ratio = r["median_ms"] / doc["goal_ms"]
            out.append(
                (
                    f"query API: {route} ({scale})",
                    f"{_f(r['median_ms'], ' ms')} median (first {_f(r['first_ms'], ' ms')})",
                    f"goal ≤ {doc['goal_ms']} ms",
                    f"{ratio:.2f}× goal",
                )
            )
        for route, r in doc.get("requests_with_indexes_0002", {}).items():
            now = doc["requests"][route]["median_ms"]
            out.append(
                (
                    f"query API: {route}, with schema 0002's indexes instead of 0003's covering ones",
                    f"{_f(r['median_ms'], ' ms')} median",
                    f"with 0003's: {_f(now, ' ms')}",
                    f"{r['median_ms'] / now:.2f}× 0003's" if now else "",
                )
            )
        for write, ms in doc.get("writes_ms", {}).items():
            before = doc.get("writes_ms_with_indexes_0002", {}).get(write)
            out.append(
                (
                    f"write: {write}, with 0003's indexes",
                    _f(ms, " ms"),
                    f"with 0002's: {_f(before, ' ms')}" if before is not None else "",
                    f"{ms / before:.2f}× 0002's" if before else "",
                )
            )
        for how, c in doc["cli_workflow_status"].items():
            out.append(
                (
                    f"CLI workflow status, wall time ({how})",
                    _f(c["median_s"], " s") + " median",
                    f"goal ≤ {doc['cli_goal_s']} s",
                    f"{c['median_s'] / doc['cli_goal_s']:.2f}× goal",
                )
            )
    elif name == "pages":
        scale = f"{doc['tasks']:,} tasks, {doc['instances']:,} instances, {doc['error_logs']:,} error logs"
        for page, r in doc["pages"].items():
            out.append(
                (
                    f"page: {page} ({scale})",
                    f"{_f(r['median_ms'], ' ms')} median (first {_f(r['first_ms'], ' ms')}); its service calls "
                    f"alone {_f(r['service_ms'], ' ms')}, slowest {_f(r['service_slowest_ms'], ' ms')}",
                    f"goal ≤ {doc['goal_ms']} ms",
                    f"{r['median_ms'] / doc['goal_ms']:.2f}× goal",
                )
            )
    elif name == "array_10k":
        s = doc["submission"]
        out.append(
            (
                f"{doc['elements']:,}-element array: submission (bind + queue + {s['qsub_calls']} qsub -t)",
                _f(s["wall_s"], " s") + (f" (median of {s['walls_s']})" if s.get("walls_s") else ""),
                "Jobmon 3.1 published: 32.1 s (Slurm)" + (f"; goal ≤ {s['goal_s']:g} s" if s.get("goal_s") else ""),
                _f(s["ratio_to_published"]),
            )
        )
        t = doc.get("tracking")
        if isinstance(t, dict):
            jm, raw, q = t["jobmon"], t["raw_qsub_t"], t["queue"]
            done = f"{jm['tasks_done']:,} done"
            out.append(
                (
                    f"tracked end to end ({q['slots']} slots, poll {t['poll_interval_s']:g} s): wall time, {done}",
                    f"{_f(jm['wall_s'], ' s')} ({_counts(jm['commands'])})",
                    f"raw qsub -t 1-{doc['elements']} + qstat + qacct: {_f(raw['wall_s'], ' s')} "
                    f"({_counts(raw['commands'])})",
                    _f(t["ratio_wall"]),
                )
            )
        else:
            out.append(("tracking end to end", str(t or "not measured"), "", ""))
    elif name == "reaper":
        scale = f"{doc['task_instances']:,} task instances, {doc['workflow_runs']:,} runs"
        first, second = doc["passes"][0], doc["passes"][1]
        out.append(
            (
                f"reaper: one full pass ({scale})",
                _f(doc["pass_s"], " s") + f", {first['statements']} statements",
                f"goal ≤ {doc['goal_pass_s']} s",
                f"{doc['pass_s'] / doc['goal_pass_s']:.2f}× goal",
            )
        )
        out.append(
            (
                "reaper: slowest statement of the pass",
                _f(doc["max_statement_ms"], " ms"),
                f"goal ≤ {doc['goal_statement_ms']} ms",
                f"{doc['max_statement_ms'] / doc['goal_statement_ms']:.2f}× goal",
            )
        )
        out.append(
            (
                "reaper: second pass (must change nothing)",
                _f(second["seconds"], " s") + (", changed rows" if doc["second_pass_changed"] else ", no change"),
                "no change",
                "",
            )
        )
    elif name == "scale":
        out += _scale_rows(doc)
    elif name == "worker_node":
        out += _worker_node_rows(doc)
    elif name == "qpid_etl":
        out += _qpid_etl_rows(doc)
    return out


def _scale_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    capped = doc.get("capped", {})
    for client, label in (("python", "benchmark c's client"), ("wrk", "wrk")):
        if client not in capped.get("per_s", {}):
            continue
        p, last = capped["per_s"][client], capped["rounds"][-1][client]
        cores = last["nginx_1_replica"]["parts_busy_cores"]["replica 1"]
        busy = last["nginx_2_replicas"]["machine_busy_cores"]
        rows.append(
            (
                f"heartbeats through nginx, each replica capped at {capped['cpu_cap_per_replica']} CPU (cgroup), "
                f"2 replicas vs 1, {label}",
                f"{_f(p['nginx_2_replicas'])}/s",
                f"1 replica {_f(p['nginx_1_replica'])}/s (last round: it used {cores} core; "
                f"the machine with 2: {busy} of 2 busy); "
                "rounds " + " / ".join(f"{r:.2f}" for r in capped["ratio_per_round"][client]) + "; target ≥ 1.8×",
                f"{_f(capped['ratio_2_to_1_replica'][client])}× (median)",
            )
        )
    if "per_s" in doc:
        p = doc["per_s"]
        rows.append(
            (
                "heartbeats over HTTP through nginx, uncapped (2 replicas share the 2 cores): 2 replicas vs 1",
                f"{_f(p['nginx_2_replicas'])}/s",
                f"1 replica {_f(p['nginx_1_replica'])}/s (direct, no nginx: {_f(p['direct_1_replica'])}/s); "
                f"target ≥ {doc['target_ratio']}×",
                f"{_f(doc['ratio_2_to_1_replica'])}×",
            )
        )
    return rows


def _qpid_etl_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    etl, base, w = doc["etl"], doc["baseline"], doc["write_methods_rows_per_s"]
    return [
        (
            f"QPID max-RSS ETL, backlog of {doc['backlog']:,} candidates (+{doc['settled_rows']:,} settled rows)",
            f"{_f(etl['rows_per_s'])} rows/s ({_f(etl['rows'])} in {_f(etl['seconds'], ' s')})",
            f"target ≥ 5,000 rows/s; row at a time like Jobmon's integrator: {_f(base['rows_per_s'])} rows/s "
            f"on {_f(base['rows'])} rows (Jobmon's configured rate: {base['jobmon_configured_rate_per_s']}/s)",
            f"{_f(doc['ratio_etl_to_baseline'])}× row at a time",
        ),
        ("second pass over the settled backlog (nothing to do)", _f(etl["second_pass_s"], " s"), "", ""),
        (
            "write methods, rows/s (join / case / executemany)",
            "MariaDB " + " / ".join(_f(v) for v in w["mariadb"].values()),
            "SQLite " + " / ".join(_f(v) for v in w["sqlite"].values()),
            "",
        ),
    ]


def _worker_node_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    cpu, imp, icpu, req = (
        doc["cpu_ms_per_element"],
        doc["imports_ms"],
        doc["imports_cpu_ms"],
        doc["http_requests_per_element"],
    )
    base = f"{doc['baseline_commit']}"
    return [
        (
            f"CPU per trivial element (user+sys of worker and command, median of {doc['runs_per_variant']})",
            _f(cpu["current"]["median"], " ms"),
            f"target ≤ 40 ms; {base}: {_f(cpu['baseline_bytecode_cached']['median'], ' ms')} with bytecode cached, "
            f"{_f(cpu['baseline_as_launched_here']['median'], ' ms')} as launched here; "
            f"python -c pass {_f(cpu['python_c_pass']['median'], ' ms')}",
            f"{_f(doc['ratio_cpu_current_to_baseline_cached'])}× {base}",
        ),
        (
            f"imports, -X importtime cumulative after start-up (median of {doc['import_runs']})",
            _f(imp["current"]["median"], " ms"),
            f"target ≤ 20 ms; {base}: {_f(imp['baseline_bytecode_cached']['median'], ' ms')} cached, "
            f"{_f(imp['baseline_as_launched_here']['median'], ' ms')} as launched here",
            "",
        ),
        (
            "imports, CPU time (import-only process minus bare python, medians)",
            _f(icpu["current"], " ms"),
            f"{base}: {_f(icpu['baseline_bytecode_cached'], ' ms')} cached, "
            f"{_f(icpu['baseline_as_launched_here'], ' ms')} as launched here",
            "",
        ),
        (
            "HTTP requests per element",
            _counts(req["current"]),
            f"{base}: {_counts(req['baseline_bytecode_cached'])}",
            "",
        ),
    ]
