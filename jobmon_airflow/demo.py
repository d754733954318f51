"""The main job: run the example workflow on the embedded defaults (SQLite + the local cluster), no service to
install, with a live view of its tasks in Jobmon's buckets; then Jobmon's status table and where its page is.
``jobmon-airflow demo`` (``scripts/demo.sh``).

Airflow's own log (``dag.test()`` is chatty) goes to ``<home>/demo.log``; ``-v`` shows it on the terminal instead of
the live view. The DAG's independent tasks are one array (``JobmonArrayOperator``): one submission whose elements
the local cluster runs side by side, while ``dag.test()`` itself runs one Airflow task at a time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

DAG_ID = "example_jobmon_workflow"
REFRESH_S = 0.25
BUCKET_STYLES = {"PENDING": "grey50", "SCHEDULED": "bright_blue", "RUNNING": "cyan", "DONE": "green", "FATAL": "red"}
BAR_WIDTH = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the live view ----------------------------------------------------------------------------------------------------
def bucket_cells(buckets: dict[str, int], total: int, width: int = BAR_WIDTH) -> dict[str, int]:
    """How many of ``width`` cells each of Jobmon's buckets gets (largest remainder: they add up to ``width``)."""
    if total <= 0:
        return dict.fromkeys(BUCKET_STYLES, 0)
    exact = {b: width * buckets.get(b, 0) / total for b in BUCKET_STYLES}
    cells = {b: int(x) for b, x in exact.items()}
    for b in sorted(exact, key=lambda b: exact[b] - cells[b], reverse=True)[: width - sum(cells.values())]:
        cells[b] += 1
    return cells


def bucket_bar(buckets: dict[str, int], total: int, width: int = BAR_WIDTH) -> Any:
    """A bar of Jobmon's buckets (a rich ``Text``), each bucket in its colour."""
    from rich.text import Text

    bar = Text()
    for bucket, n in bucket_cells(buckets, total, width).items():
        bar.append("█" * n, style=BUCKET_STYLES[bucket])
    bar.append("░" * (width - len(bar.plain)), style="grey23")
    return bar


class Watcher:
    """Samples the demo's workflow from the state database (a read-only query per refresh) for the live view."""

    def __init__(self, insights: Any, after_workflow_id: int):
        self.insights = insights
        self.after = after_workflow_id
        self.workflow_id: int | None = None
        self.detail: Any = None
        self.started = time.monotonic()

    def sample(self) -> None:
        from jobmon_airflow.service.insight_types import PageRequest

        if self.workflow_id is None:
            newest = self.insights.workflows(dag_ids=[DAG_ID], page=PageRequest(0, 1)).items
            if newest and newest[0].id > self.after:
                self.workflow_id = newest[0].id
        if self.workflow_id is not None:
            self.detail = self.insights.workflow(self.workflow_id)

    def render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        elapsed = time.monotonic() - self.started
        if self.detail is None:
            return Text(f"Starting Airflow and binding the workflow... {elapsed:4.0f}s", style="grey62")
        s = self.detail.summary
        table = Table(
            title=f"Jobmon workflow {s.id} ({s.name}): {s.status_name}, {elapsed:.0f}s",
            title_justify="left",
            box=None,
            pad_edge=False,
        )
        table.add_column("template")
        table.add_column("tasks", justify="right")
        table.add_column("progress", no_wrap=True)
        for bucket, style in BUCKET_STYLES.items():
            table.add_column(bucket, justify="right", style=style)
        rows = [(t.name, t.tasks, t.buckets) for t in self.detail.templates]
        for name, tasks, buckets in [*rows, ("all", s.tasks, s.buckets)]:
            table.add_row(
                name, str(tasks), bucket_bar(buckets, tasks), *(str(buckets.get(b, 0)) for b in BUCKET_STYLES)
            )
        return table


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[IO[str]]:
    """Send this process's stdout and stderr (Airflow's log, the tasks' output) to ``path``; yield the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    saved_err = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(terminal.fileno(), 1)
            os.dup2(saved_err, 2)
            os.close(saved_err)
            terminal.close()


def _run_with_live_view(dag: Any, watcher: Watcher, terminal: IO[str]) -> Any:
    from rich.console import Console
    from rich.live import Live

    # A terminal's own width; a pipe or file gets a wide one (Rich's default there is 80 columns).
    console = Console(file=terminal, width=None if terminal.isatty() else 120)
    done = threading.Event()

    def refresh(live: Live) -> None:
        while not done.wait(REFRESH_S):
            with contextlib.suppress(Exception):  # a sample racing the run's writes is taken again next time
                watcher.sample()
                live.update(watcher.render())

    # Not Rich's own redirection of sys.stdout/stderr onto the terminal: they stay with the log file.
    with Live(watcher.render(), console=console, refresh_per_second=8, redirect_stdout=False,
              redirect_stderr=False) as live:  # fmt: skip
        sampler = threading.Thread(target=refresh, args=(live,), name="demo-live-view", daemon=True)
        sampler.start()
        try:
            return dag.test()
        finally:
            done.set()
            sampler.join(5)
            with contextlib.suppress(Exception):
                watcher.sample()
            live.update(watcher.render())


# -- the demo ----------------------------------------------------------------------------------------------------------
def run(home: Path, tasks: int = 4, verbose: bool = False) -> int:
    # Airflow reads its configuration when first imported: set everything before that.
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))
    os.environ.setdefault("JOBMON_AIRFLOW_HOME", str(home / "jobmon"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
    os.environ["JOBMON_EXAMPLE_TASKS"] = str(tasks)
    port = _free_port()
    os.environ["JOBMON_AIRFLOW_STATE_MANAGER_URL"] = f"http://127.0.0.1:{port}/jobmon"
    log_path = home / "demo.log"

    print(f"Airflow home {os.environ['AIRFLOW_HOME']}; Jobmon home {os.environ['JOBMON_AIRFLOW_HOME']}", flush=True)
    if not verbose:
        print(f"Airflow's log: {log_path} (-v shows it here instead)", flush=True)
    quiet: contextlib.AbstractContextManager[Any] = contextlib.nullcontext(None) if verbose else _log_to(log_path)
    with quiet as terminal:
        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils import db as airflow_db

        from jobmon_airflow.hooks.jobmon import JobmonHook
        from jobmon_airflow.server.app import start_in_thread
        from jobmon_airflow.service.insight_types import PageRequest

        airflow_db.initdb()
        hook = JobmonHook()
        start_in_thread(port, hook.get_db_url())
        bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        if bag.import_errors:
            raise SystemExit(f"DAG import errors: {bag.import_errors}")
        dag = bag.get_dag(DAG_ID)
        if dag is None:
            raise SystemExit(f"DAG {DAG_ID} not found in {os.environ['AIRFLOW__CORE__DAGS_FOLDER']}")
        services = hook.get_services()
        before = services.insights.workflows(dag_ids=[DAG_ID], page=PageRequest(0, 1)).items
        watcher = Watcher(services.insights, before[0].id if before else 0)
        dag_run = dag.test() if terminal is None else _run_with_live_view(dag, watcher, terminal)
        success = str(dag_run.state) == "success"
        services.binding.finish_workflow_run(dag_run.dag_id, dag_run.run_id, success)  # if no listener ran
    return _report(services, dag_run)


def _array_jobs(tasks: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Tasks that ran as elements of one array job (job ids ``<job>.<element>``): {job: task names}."""
    jobs: dict[str, list[str]] = {}
    for t in tasks:
        job, dot, _ = str(t["DISTRIBUTOR_ID"] or "").partition(".")
        if dot:
            jobs.setdefault(job, []).append(str(t["TASK_NAME"]))
    return {job: names for job, names in jobs.items() if len(names) > 1}


def _report(services: Any, dag_run: Any) -> int:
    from jobmon_airflow.service.queries import format_table, status_rows_for_display

    rows = services.queries.workflow_status(dag_id=dag_run.dag_id, run_id=dag_run.run_id)
    print(f"\nDAG run {dag_run.run_id}: {dag_run.state}\n")
    print(format_table(status_rows_for_display(rows)))
    if rows:
        workflow_id = rows[0]["WF_ID"]
        tasks = services.queries.workflow_tasks(workflow_id)
        print()
        print(format_table(tasks))
        for job, names in _array_jobs(tasks).items():
            print(f"\n{len(names)} tasks ({names[0]} ... {names[-1]}) ran as elements of one array job, {job}:")
            print("  submitted once, run side by side by the cluster (as many at once as it has slots).")
        base = os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080").rstrip("/")
        print(f"\nThe workflow's page: {base}/plugin/jobmon/jobmon/ui/workflows/{workflow_id}")
        print(
            "  (Airflow's UI, \"Jobmon\" in its navigation; to browse it, start Airflow on this demo's homes:\n"
            f"   AIRFLOW_HOME={os.environ['AIRFLOW_HOME']} JOBMON_AIRFLOW_HOME={os.environ['JOBMON_AIRFLOW_HOME']}"
            " airflow standalone)"
        )
    all_done = bool(rows) and all(r["DONE"] == r["TASKS"] for r in rows)
    return 0 if all_done and str(dag_run.state) == "success" else 1
