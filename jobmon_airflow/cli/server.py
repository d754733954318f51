"""``db upgrade``, ``server`` (the State Manager standalone) and ``demo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from jobmon_airflow.cli.common import db_url, services

SERVER_DB_URL_ENV = "JOBMON_AIRFLOW_SERVER_DB_URL"

SERVER_HELP = """\
Run the Jobmon app (the State Manager) standalone, at the same paths as inside Airflow (/jobmon/api/...).

\b
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


@click.group("db", help="the state database")
def db_group() -> None:
    pass


@db_group.command("upgrade", help="apply the state database's migrations")
@click.pass_context
def db_upgrade(ctx: click.Context) -> int:
    from jobmon_airflow import db

    engine = services(ctx, migrate=True).engine
    click.echo(f"Jobmon state database at revision {db.current_revision(engine)} ({engine.url!r})")
    return 0


def tls_options(keyfile: str | None, certfile: str | None) -> dict[str, str]:
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


@click.command("server", help=SERVER_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (default: loopback only)")
@click.option("--port", type=click.IntRange(1, 65535), default=8790, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, help="server processes (each batches heartbeats)")
@click.option("--access-log", is_flag=True, help="log every request (off: heartbeats are many)")
@click.option("--ssl-keyfile", metavar="PEM", help="serve HTTPS: the private key (unencrypted PEM)")
@click.option("--ssl-certfile", metavar="PEM", help="serve HTTPS: the certificate (chain), PEM")
@click.pass_context
def server(
    ctx: click.Context, host: str, port: int, workers: int, access_log: bool, ssl_keyfile: str | None,
    ssl_certfile: str | None,
) -> int:  # fmt: skip
    import uvicorn

    from jobmon_airflow.server.app import create_standalone_app

    try:
        tls = tls_options(ssl_keyfile, ssl_certfile)
    except ValueError as exc:
        click.echo(f"jobmon-airflow server: {exc}", err=True)
        return 2
    url = ctx.find_root().params.get("url")
    # No access log by default: 100,000 running jobs make ~1,100 heartbeat requests a second.
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "info", "access_log": access_log, **tls}
    if workers == 1:
        uvicorn.run(create_standalone_app(db_url(url)), **options)
        return 0
    if url:  # each worker process builds its own app: it can only learn the URL from its environment
        os.environ[SERVER_DB_URL_ENV] = url
    uvicorn.run("jobmon_airflow.cli:_server_app", factory=True, workers=workers, **options)
    return 0


def server_app() -> Any:
    """The app of one ``server --workers N`` process."""
    from jobmon_airflow.server.app import create_standalone_app

    return create_standalone_app(db_url(os.environ.get(SERVER_DB_URL_ENV)))


@click.command("demo", help="run the example workflow on SQLite + the local cluster")
@click.option("--home", default=lambda: os.environ.get("JOBMON_DEMO_HOME", "var/demo"), show_default="var/demo")
@click.option("--tasks", type=click.IntRange(1, 1000), default=4, help="parallel tasks in the example workflow")
@click.option("-v", "--verbose", is_flag=True, help="Airflow's log on the terminal too")
def demo(home: str, tasks: int, verbose: bool) -> int:
    from jobmon_airflow import demo as demo_module

    return int(demo_module.run(Path(home).resolve(), tasks=tasks, verbose=verbose))
