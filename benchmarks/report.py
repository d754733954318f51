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
    elif name == "array_10k":
        s = doc["submission"]
        out.append(
            (
                f"{doc['elements']:,}-element array: submission (bind + queue + {s['qsub_calls']} qsub -t)",
                _f(s["wall_s"], " s"),
                "Jobmon 3.1 published: 32.1 s (Slurm)",
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
    return out
