"""w. The worker node's cost per trivial element: CPU time and imports, side by side in one run.

Each job runs a fresh worker node (``true`` as the task's command, against a stand-in State Manager: a plain HTTP
server in a process of its own that answers every report). Measured for

* ``current``: the jobmon_airflow this benchmark imports (the working tree, or the ``--code`` pinned copy),
  started as its ``execution.jobs.worker_argv`` starts it;
* ``baseline``: the worker of another commit (``BENCH_WORKER_BASELINE``, default the checkout's ``HEAD``), from a
  ``git archive`` copy, started as that commit started it (``python -m jobmon_airflow.worker_node``; the copy
  comes first on ``PYTHONPATH``), with bytecode compiled ahead (``compileall``: its best case) and without
  (as jobs start it where ``PYTHONDONTWRITEBYTECODE`` is set, as on this machine);
* ``python -c pass`` and ``python -I -S -c pass``: the bare interpreter, the floor.

Figures: CPU time (user + sys of the job's process and its command, from ``wait4``) per element, median and
quartiles over ``RUNS`` runs taken in turn (A B C D, A B C D ...) so that a drift of the machine hits all alike;
the wall time; HTTP requests per element (the stand-in counts them); and the imports by ``-X importtime``: the
sum of the cumulative times of every module imported after the interpreter's own start-up (what ``python -c
pass`` with the same flags imports is not counted), median of the runs.
"""

from __future__ import annotations

import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PY, ROOT, log

RUNS = int(os.environ.get("BENCH_WORKER_RUNS", "60"))
_IMPORTS = "import jobmon_airflow.worker_node.cli"  # what a run imports (no ctypes since 085ffcb: no thread)
# Before 085ffcb: the package imported the whole worker, and ctypes to limit malloc arenas for its stderr thread.
_OLD_IMPORTS = "import jobmon_airflow.worker_node, ctypes"
IMPORT_RUNS = int(os.environ.get("BENCH_WORKER_IMPORT_RUNS", "25"))

STUB = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
counts = {}
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        action = self.path.rsplit("/", 1)[-1]
        counts[action] = counts.get(action, 0) + 1
        data = json.dumps({"status": "R" if action in ("log_running", "log_report_by") else "D"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):  # the counts so far
        data = json.dumps(counts).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _baseline_copy(commit: str, dest: Path, *, compiled: bool) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "jobmon_airflow"], capture_output=True)
    archive.check_returncode()
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    if compiled:
        subprocess.run([PY, "-m", "compileall", "-q", str(dest / "jobmon_airflow")], check=True)
    return dest


def _current_argv(url: str, token_file: Path, record: Path) -> list[str]:
    from jobmon_airflow.execution.jobs import JobSettings, worker_argv

    settings = JobSettings(log_dir=record.parent, state_manager_url=url)
    return worker_argv(1, "true", settings, token_file, record)


def _element_args(url: str, token_file: Path, record: Path) -> list[str]:
    return [
        "--task-instance-id", "1", "--state-manager-url", url, "--token-file", str(token_file),
        "--exit-record", str(record), "--command-b64", base64.b64encode(b"true").decode(),
    ]  # fmt: skip


def _cpu(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(CPU seconds of the process and its waited-for descendants, wall seconds, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, wall, proc.returncode


def _import_us(argv: list[str], env: dict[str, str], floor: set[str]) -> int:
    """Sum of the cumulative import times (µs) of the top-level imports not in ``floor`` (the interpreter's)."""
    flags = 1
    while argv[flags] in ("-I", "-S", "-E", "-s"):
        flags += 1
    err = subprocess.run(
        [*argv[:flags], "-X", "importtime", *argv[flags:]], env=env, capture_output=True, text=True, cwd="/"
    ).stderr
    total = 0
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith("  ") or not cumulative.strip().isdigit():
            continue  # nested: counted in its parent
        if name.strip() not in floor:
            total += int(cumulative)
    return total


def _startup_modules(python_flags: list[str], env: dict[str, str]) -> set[str]:
    err = subprocess.run([PY, *python_flags, "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True)
    return {line.split("|")[2].strip() for line in err.stderr.splitlines() if line.count("|") == 2}


def _summary(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {
        "median": round(statistics.median(values) * scale, 2),
        "q1": round(q[0] * scale, 2),
        "q3": round(q[2] * scale, 2),
        "min": round(min(values) * scale, 2),
    }


def run() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="jobmon-bench-worker-"))
    load_start = [round(x, 2) for x in os.getloadavg()]
    baseline_commit = (
        os.environ.get("BENCH_WORKER_BASELINE")
        or subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    stub = subprocess.Popen([PY, "-c", STUB], stdout=subprocess.PIPE, text=True)
    try:
        assert stub.stdout is not None
        url = f"http://127.0.0.1:{stub.stdout.readline().strip()}/jobmon"
        token_file = work / "ti.token"
        token_file.write_text("bench-token\n")
        token_file.chmod(0o600)
        record = work / "logs" / "ti-1.exit.json"
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        cold = _baseline_copy(baseline_commit, work / "baseline-cold", compiled=False)
        warm = _baseline_copy(baseline_commit, work / "baseline-cached", compiled=True)
        old_argv = [PY, "-m", "jobmon_airflow.worker_node", *_element_args(url, token_file, record)]
        warm_env, cold_env = {**env, "PYTHONPATH": str(warm)}, {**env, "PYTHONPATH": str(cold)}
        current = _current_argv(url, token_file, record)
        import jobmon_airflow

        root = str(Path(jobmon_airflow.__file__).resolve().parents[1])
        variants: dict[str, tuple[list[str], dict[str, str]]] = {
            "current": (current, env),
            "baseline_bytecode_cached": (old_argv, warm_env),
            "baseline_as_launched_here": (old_argv, cold_env),
            "python_c_pass": ([PY, "-c", "pass"], env),
            "python_I_S_c_pass": ([PY, "-I", "-S", "-c", "pass"], env),
            # The imports alone, in CPU time (robust to a loaded machine, unlike -X importtime's clock).
            "current_imports_only": (
                [*current[:3], "-c", f"import sys; sys.path.insert(0, {root!r}); {_IMPORTS}"],
                env,
            ),
            "baseline_imports_only_cached": ([PY, "-c", _OLD_IMPORTS], warm_env),
            "baseline_imports_only_as_launched_here": ([PY, "-c", _OLD_IMPORTS], cold_env),
        }
        log(f"worker node: current {variants['current'][0][:4]}, baseline {baseline_commit}; {RUNS} runs each")
        for argv, venv in variants.values():  # warm-up: page cache, and the current worker's bytecode cache
            _cpu(argv, venv)
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        wall: dict[str, list[float]] = {k: [] for k in variants}
        requests: dict[str, dict[str, int]] = {}
        for i in range(RUNS):
            for name, (argv, venv) in variants.items():
                before = _counts(url) if i == 0 else None
                seconds, elapsed, code = _cpu(argv, venv)
                if code != 0:
                    raise RuntimeError(f"{name}: exit {code}: {argv}")
                cpu[name].append(seconds)
                wall[name].append(elapsed)
                if before is not None:
                    after = _counts(url)
                    requests[name] = {k: after.get(k, 0) - before.get(k, 0) for k in after if after[k] != before.get(k)}
        floor_plain = _startup_modules([], env)
        floor_isolated = _startup_modules(["-I", "-S"], env)
        imports: dict[str, list[int]] = {"current": [], "baseline_bytecode_cached": [], "baseline_as_launched_here": []}
        for _ in range(IMPORT_RUNS):
            for name in imports:
                argv, venv = variants[name]
                floor = floor_isolated if "-S" in argv[:3] else floor_plain
                imports[name].append(_import_us(argv, venv, floor))
    finally:
        stub.terminate()
        stub.wait()
        shutil.rmtree(work, ignore_errors=True)

    cpu_ms = {k: _summary(v) for k, v in cpu.items()}
    median = {k: statistics.median(v) for k, v in cpu.items()}
    imports_cpu_ms = {
        "current": round((median["current_imports_only"] - median["python_I_S_c_pass"]) * 1000, 2),
        "baseline_bytecode_cached": round((median["baseline_imports_only_cached"] - median["python_c_pass"]) * 1000, 2),
        "baseline_as_launched_here": round(
            (median["baseline_imports_only_as_launched_here"] - median["python_c_pass"]) * 1000, 2
        ),
    }
    imports_ms = {k: _summary([x / 1e6 for x in v]) for k, v in imports.items()}
    return {
        "runs_per_variant": RUNS,
        "import_runs": IMPORT_RUNS,
        "baseline_commit": baseline_commit,
        "command": "true",
        "launch": {"current": variants["current"][0][:4], "baseline": [PY, "-m", "jobmon_airflow.worker_node"]},
        "cpu_ms_per_element": cpu_ms,
        "wall_ms_per_element": {k: _summary(v) for k, v in wall.items()},
        "http_requests_per_element": requests,
        "imports_ms": imports_ms,
        "imports_cpu_ms": imports_cpu_ms,
        "load_average_start": load_start,
        "ratio_cpu_current_to_baseline_cached": round(median["current"] / median["baseline_bytecode_cached"], 3),
        "ratio_cpu_current_to_baseline_as_launched": round(median["current"] / median["baseline_as_launched_here"], 3),
        "ratio_cpu_current_to_python_c_pass": round(median["current"] / median["python_c_pass"], 3),
        "targets": {"cpu_ms_per_element": 40, "imports_ms": 20},
        "pythondontwritebytecode_set": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "python": sys.version.split()[0],
    }


def _counts(url: str) -> dict[str, int]:
    import json
    import urllib.request

    with urllib.request.urlopen(url.rsplit("/jobmon", 1)[0] + "/counts", timeout=10) as response:
        data: dict[str, int] = json.loads(response.read())
    return data


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
