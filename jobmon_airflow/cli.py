"""``jobmon-airflow``: database migrations, the standalone State Manager, status tables, and the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _db_url(url: str | None) -> str:
    """``--url``, else the ``jobmon_default`` connection's database (or the embedded SQLite file)."""
    if url is not None:
        return url
    # Airflow logs to stdout; keep stdout for the command's own output (tables, JSON).
    with contextlib.redirect_stdout(sys.stderr):
        from jobmon_airflow.hooks.jobmon import JobmonHook

        return JobmonHook().get_db_url()


def _services(url: str | None) -> Any:
    from jobmon_airflow import db
    from jobmon_airflow.service import Services

    engine = db.get_engine(_db_url(url))
    db.ensure_schema(engine)
    return Services.for_engine(engine)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from jobmon_airflow import db

    engine = _services(args.url).engine
    print(f"Jobmon state database at revision {db.current_revision(engine)} ({engine.url!r})")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    import uvicorn

    from jobmon_airflow.server.app import create_standalone_app

    # No access log by default: 100,000 running jobs make ~1,100 heartbeat requests a second.
    options: dict[str, Any] = {"host": args.host, "port": args.port, "log_level": "info", "access_log": args.access_log}
    if args.workers == 1:
        uvicorn.run(create_standalone_app(_db_url(args.url)), **options)
        return 0
    if args.url:  # each worker process builds its own app: it can only learn the URL from its environment
        os.environ[SERVER_DB_URL_ENV] = args.url
    uvicorn.run("jobmon_airflow.cli:_server_app", factory=True, workers=args.workers, **options)
    return 0


SERVER_DB_URL_ENV = "JOBMON_AIRFLOW_SERVER_DB_URL"


def _server_app() -> Any:
    """The app of one ``server --workers N`` process."""
    from jobmon_airflow.server.app import create_standalone_app

    return create_standalone_app(_db_url(os.environ.get(SERVER_DB_URL_ENV)))


def cmd_workflow_status(args: argparse.Namespace) -> int:
    from jobmon_airflow.service.queries import format_table, status_rows_for_display

    rows = _services(args.url).queries.workflow_status(args.workflow_id, args.dag_id, args.run_id, args.limit)
    print(json.dumps(rows, default=str) if args.json else format_table(status_rows_for_display(rows)))
    return 0


def cmd_workflow_tasks(args: argparse.Namespace) -> int:
    from jobmon_airflow.service.queries import format_table

    rows = _services(args.url).queries.workflow_tasks(args.workflow_id)
    print(json.dumps(rows, default=str) if args.json else format_table(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jobmon_airflow import demo

    return demo.run(Path(args.home).resolve(), tasks=args.tasks)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobmon-airflow", description=__doc__)
    parser.add_argument(
        "--url",
        help="state database URL (default: the jobmon_default connection or SQLite); a password in it shows in ps, "
        "so prefer the connection (AIRFLOW_CONN_JOBMON_DEFAULT or Airflow's secrets backend)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    db_parser = sub.add_parser("db", help="state database")
    db_sub = db_parser.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)

    server = sub.add_parser("server", help="run the Jobmon app (State Manager) standalone")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8790)
    server.add_argument(
        "--workers", type=_positive_int, default=1, help="server processes (each batches its own heartbeats)"
    )
    server.add_argument("--access-log", action="store_true", help="log every request (off: heartbeats are many)")
    server.set_defaults(func=cmd_server)

    wf = sub.add_parser("workflow", help="workflow status").add_subparsers(dest="wf_command", required=True)
    status = wf.add_parser("status", help="task counts per status bucket")
    status.add_argument("-w", "--workflow-id", type=int, nargs="*")
    status.add_argument("--dag-id")
    status.add_argument("--run-id")
    status.add_argument("-l", "--limit", type=int, default=5)
    status.add_argument("-n", "--json", action="store_true")
    status.set_defaults(func=cmd_workflow_status)
    tasks = wf.add_parser("tasks", help="tasks of one workflow with their newest instance")
    tasks.add_argument("-w", "--workflow-id", type=int, required=True)
    tasks.add_argument("-n", "--json", action="store_true")
    tasks.set_defaults(func=cmd_workflow_tasks)

    demo = sub.add_parser("demo", help="run the example workflow on SQLite + the local cluster")
    demo.add_argument("--home", default=os.environ.get("JOBMON_DEMO_HOME", "var/demo"))
    demo.add_argument("--tasks", type=int, default=4, help="parallel tasks in the example workflow")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
