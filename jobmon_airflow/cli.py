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

    try:
        tls = _tls_options(args.ssl_keyfile, args.ssl_certfile)
    except ValueError as exc:
        print(f"jobmon-airflow server: {exc}", file=sys.stderr)
        return 2
    # No access log by default: 100,000 running jobs make ~1,100 heartbeat requests a second.
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": "info",
        "access_log": args.access_log,
        **tls,
    }
    if args.workers == 1:
        uvicorn.run(create_standalone_app(_db_url(args.url)), **options)
        return 0
    if args.url:  # each worker process builds its own app: it can only learn the URL from its environment
        os.environ[SERVER_DB_URL_ENV] = args.url
    uvicorn.run("jobmon_airflow.cli:_server_app", factory=True, workers=args.workers, **options)
    return 0


def _tls_options(keyfile: str | None, certfile: str | None) -> dict[str, str]:
    """uvicorn's TLS options, checked before the server starts: both files or neither, readable, a certificate
    (chain) and its unencrypted private key; ValueError saying what is wrong otherwise."""
    if keyfile is None and certfile is None:
        return {}
    if keyfile is None or certfile is None:
        raise ValueError("--ssl-keyfile and --ssl-certfile go together: give both (TLS) or neither (plain HTTP)")
    for option, path in (("--ssl-keyfile", keyfile), ("--ssl-certfile", certfile)):
        if not Path(path).is_file():
            raise ValueError(f"{option} {path}: no such file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{option} {path}: not readable by this user")
    import ssl

    def no_password() -> str:
        raise ValueError("the key is encrypted; give an unencrypted key (protected by its file permissions)")

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile, password=no_password)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"cannot use {certfile} with {keyfile}: {exc}") from None
    return {"ssl_keyfile": keyfile, "ssl_certfile": certfile}


SERVER_DB_URL_ENV = "JOBMON_AIRFLOW_SERVER_DB_URL"

SERVER_HELP = """\
Run the Jobmon app (the State Manager) standalone, at the same paths as inside Airflow (/jobmon/api/...).

Every worker authenticates with a bearer token of its own task instance: on a network that is not trusted end to
end, the tokens must travel encrypted. Either
  * serve HTTPS here: --ssl-certfile CERT.pem --ssl-keyfile KEY.pem (both; the key unencrypted, readable only by
    the server's user), and give workers the https:// URL; or
  * keep the default --host 127.0.0.1 and put a TLS-terminating reverse proxy (nginx, Apache httpd, HAProxy) in
    front: it serves https://<host>/jobmon/ and forwards to http://127.0.0.1:<port>/jobmon/ unchanged (path,
    Authorization header) and allows request bodies of 256 KiB (the server refuses larger ones with 413).
Workers reach the URL in the jobmon_default connection's state_manager_url extra, and verify its certificate
against the system CA bundle, or the CA file named by SSL_CERT_FILE in the jobs' environment.
"""


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

    server = sub.add_parser(
        "server",
        help="run the Jobmon app (State Manager) standalone",
        description=SERVER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    server.add_argument("--port", type=int, default=8790)
    server.add_argument(
        "--workers", type=_positive_int, default=1, help="server processes (each batches its own heartbeats)"
    )
    server.add_argument("--access-log", action="store_true", help="log every request (off: heartbeats are many)")
    server.add_argument("--ssl-keyfile", metavar="PEM", help="serve HTTPS: the private key (unencrypted PEM)")
    server.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS: the certificate (chain), PEM")
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
