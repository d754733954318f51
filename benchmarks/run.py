"""``python -m benchmarks.run [--only a,c] [--sizes 200,1000]``: run the benchmarks, write
``benchmarks/results/<name>.json`` and regenerate ``benchmarks/results/RESULTS.md``.

Each benchmark runs in its own child process (its own Airflow home, connections and watchers).

- a  ``array_vs_qsub``      N trivial elements: JobmonArrayOperator (dag.test) vs raw ``qsub -t 1-N``
- b  ``mapped_services``    N mapped JobmonTaskOperator vs mapped BashOperator ``qsub -sync y``, real services
- c  ``state_db``           MariaDB: bind 100k tasks, bulk transitions, heartbeats (in process and HTTP)
- d  ``shared_poll``        qstat calls per poll interval with 500 deferred task triggers in one process
- e  ``array_10k``          a 10,000-element array: submission (bind + queue + qsub -t batches), then tracked
                            end to end vs a raw ``qsub -t 1-10000`` (``--elements`` to change the size)
- s  ``scale``              heartbeats through nginx: two State Manager replicas vs one, side by side
- g  ``query``              query API routes and the CLI's ``workflow status`` on a 100,000-task workflow (MariaDB)
- p  ``pages``              the pages in Airflow's UI (server time) on a 100,000-task workflow (MariaDB)
- r  ``reaper``             one full workflow-reaper pass over 1,000,000 task instances and 10,000 runs (MariaDB;
                            ``BENCH_REAPER_INSTANCES`` / ``BENCH_REAPER_RUNS`` to change the size)
- q  ``qpid_etl``           the QPID max-RSS ETL on a 200,000-candidate backlog (MariaDB) vs a row-at-a-time
                            integrator like Jobmon's, on a sample; write methods on MariaDB and SQLite
- w  ``worker_node``        a trivial element's worker node: CPU time, imports and HTTP requests per element, vs
                            another commit's worker (``BENCH_WORKER_BASELINE``, default HEAD) and a bare python
- l  ``local_fork_join``    start, N trivial tasks as one array, end on the local cluster (dag.test, defaults) vs
                            ``xargs -P <slots>`` of the same commands (``--sizes``)
- t  ``local_single_task``  one trivial JobmonTaskOperator on the local cluster, execute → success
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PY, RESULTS, ROOT, log

BENCHMARKS = {
    "a": "array_vs_qsub",
    "b": "mapped_services",
    "c": "state_db",
    "d": "shared_poll",
    "e": "array_10k",
    "s": "scale",
    "g": "query",
    "p": "pages",
    "w": "worker_node",
    "r": "reaper",
    "q": "qpid_etl",
    "l": "local_fork_join",
    "t": "local_single_task",
}


def run_one(key: str, sizes: list[int], elements: int) -> int:
    """In the child: prepare the environment first (Airflow reads it at import), then run and write."""
    from benchmarks.common import code_under_test, prepare_environment, write_result

    prepare_environment()
    started, code = time.monotonic(), code_under_test()  # the code as it is now, not when the run ends
    name = BENCHMARKS[key]
    module = __import__(f"benchmarks.{name}", fromlist=["run"])
    kwargs: dict[str, Any] = (
        {"sizes": sizes} if key in ("a", "b", "l") else {"elements": elements} if key == "e" else {}
    )
    result = module.run(**kwargs)
    if "runs" in result:
        result = merge_runs(name, result, code)
    path = write_result(name, result, started, code)
    log(f"{name}: wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated letters (default: all)")
    parser.add_argument("--sizes", default="200", help="N for a, b and l, comma-separated (default 200)")
    parser.add_argument("--elements", type=int, default=10_000, help="array size for e (default 10000)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--table-only", action="store_true", help="only regenerate RESULTS.md")
    parser.add_argument(
        "--code",
        help="measure jobmon_airflow at this git commit (a pinned copy from git archive) instead of the working tree",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.child:
        return run_one(args.child, sizes, args.elements)
    failed = []
    cwd, env = ROOT, dict(os.environ)
    if args.code and not args.table_only:
        cwd = pinned_copy(args.code)
        env.update(PYTHONPATH=str(cwd), BENCH_RESULTS_DIR=str(RESULTS), BENCH_CODE_COMMIT=args.code)
        log(f"measuring jobmon_airflow at {args.code} from {cwd}")
    if not args.table_only:
        for key in [k.strip() for k in args.only.split(",") if k.strip()]:
            if key not in BENCHMARKS:
                parser.error(f"unknown benchmark {key!r}: choose from {','.join(BENCHMARKS)}")
            log(f"== {key}: {BENCHMARKS[key]} (sizes {sizes})")
            cmd = [PY, "-m", "benchmarks.run", "--child", key, "--sizes", ",".join(map(str, sizes))]
            cmd += ["--elements", str(args.elements)]
            rc = subprocess.run(cmd, cwd=cwd, env=env).returncode
            if rc != 0:
                failed.append(key)
                log(f"{key}: exit {rc}")
    (RESULTS / "RESULTS.md").write_text(render_table())
    log(f"wrote {RESULTS / 'RESULTS.md'}")
    return 1 if failed else 0


def merge_runs(name: str, result: dict[str, Any], code: dict[str, Any]) -> dict[str, Any]:
    """Keep the earlier runs of other sizes (a run of N=1000 must not erase the N=200 one); each run is stamped
    with its date and the code it measured."""
    from datetime import UTC, datetime

    stamp = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "code": code}
    new = [{**stamp, **r} for r in result["runs"]]
    sizes = {r["n"] for r in new}
    old_doc = _load(name) or {}
    old_stamp = {"date": old_doc.get("date"), "code": old_doc.get("machine", {}).get("code", "not recorded")}
    kept = [{**old_stamp, **r} for r in old_doc.get("runs", []) if r["n"] not in sizes]
    return {**result, "runs": sorted(kept + new, key=lambda r: r["n"])}


def pinned_copy(commit: str) -> Path:
    """``git archive`` of ``commit`` with this checkout's benchmarks/ and tests/support/ on top: the library stays
    as it was at that commit while others keep editing the working tree. (Cluster jobs started without this
    environment, e.g. the worker node, still import the working tree's package.)"""
    dest = Path(tempfile.mkdtemp(prefix=f"jobmon-code-{commit[:10]}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    shutil.rmtree(dest / "benchmarks", ignore_errors=True)
    shutil.copytree(ROOT / "benchmarks", dest / "benchmarks", ignore=shutil.ignore_patterns("results", "__pycache__"))
    # The benchmarks' own helpers shared with the tests (Airflow's services), also as they are now.
    shutil.copytree(ROOT / "tests" / "support", dest / "tests" / "support", dirs_exist_ok=True)
    (dest / "tests" / "__init__.py").touch()
    return dest


# -- RESULTS.md -----------------------------------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _rows() -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, Jobmon, baseline / target, ratio) rows from every result present."""
    from benchmarks import report

    rows: list[tuple[str, str, str, str, str]] = []
    for key, name in BENCHMARKS.items():
        doc = _load(name)
        if doc is None:
            rows.append((f"{key}. {name}", "not measured (no result file)", "", "", ""))
            continue
        rows += [(f"{key}. {name}", *r) for r in report.rows(name, doc)]
    return rows


def render_table() -> str:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks.run` from the JSON files beside this one (each has the date, the",
        "machine and the load average). Ratios and counts were measured side by side in one run.",
        "",
        "| benchmark | figure | Jobmon | baseline / target | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in _rows()]
    lines.append("")
    for name in BENCHMARKS.values():
        doc = _load(name)
        if doc:
            m = doc["machine"]
            lines.append(
                f"- `{name}`: {doc['date']}, {doc['duration_s']} s, library {m.get('code', {}).get('commit', '?')}; "
                f"load average at the end {m['load_average']} (per-run loads in the JSON); "
                f"{m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
                f"kernel {m['kernel']}, {m['sge_version']} ({m['sge_slots']} slots), MariaDB "
                f"{m['mariadb_version']}, Airflow {m['airflow_version']}, SQLAlchemy {m['sqlalchemy_version']}"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
