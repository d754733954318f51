"""``jobmon-airflow``: Jobmon's command line (click + rich): workflow and task status, logs, resources,
concurrency, reset and manual task status; the state database's migrations, the standalone State Manager and the
demo. Tables for terminals, ``--json`` for scripts; an error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from jobmon_airflow.cli.common import CliError, debug
from jobmon_airflow.cli.server import SERVER_DB_URL_ENV, db_group, demo, server, server_app, tls_options
from jobmon_airflow.cli.task import task
from jobmon_airflow.cli.workflow import workflow

PROG = "jobmon-airflow"


@click.group(help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="JOBMON_AIRFLOW_DB_URL",
    help="state database URL (default: $JOBMON_AIRFLOW_DB_URL, else the jobmon_default connection or SQLite); a "
    "password in --url shows in ps, so prefer the environment variable or the connection "
    "(AIRFLOW_CONN_JOBMON_DEFAULT, read without importing Airflow; with a custom secrets backend Airflow resolves "
    "it, which takes over a second)",
)
def cli(url: str | None) -> None:
    pass


for command in (db_group, server, workflow, task, demo):
    cli.add_command(command)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())[:2000]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. Usage errors exit 2 (SystemExit), other errors return 1."""
    import sqlalchemy.exc

    from jobmon_airflow.service import NotFound, Unauthorized
    from jobmon_airflow.service.admin import NotAllowed
    from jobmon_airflow.states import IllegalTransition

    try:
        result: Any = cli.main(args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False)
    except click.UsageError as exc:  # includes bad parameters
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"{PROG}: error: {_one_line(exc.format_message())}{hint}", err=True)
        raise SystemExit(2) from None
    except click.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        return 130
    except (CliError, click.ClickException) as exc:
        click.echo(f"{PROG}: error: {_one_line(exc.format_message())}", err=True)
        return 1
    except NotFound as exc:
        click.echo(f"{PROG}: error: no {_one_line(str(exc))}", err=True)
        return 1
    except (Unauthorized, NotAllowed, ValueError, IllegalTransition) as exc:
        if debug():
            raise
        click.echo(f"{PROG}: error: {_one_line(str(exc))}", err=True)
        return 1
    except sqlalchemy.exc.SQLAlchemyError as exc:
        if debug():
            raise
        message = _one_line(str(getattr(exc, "orig", None) or exc))
        hint = " (run jobmon-airflow db upgrade)" if "no such table" in message or "doesn't exist" in message else ""
        click.echo(f"{PROG}: error: state database: {message}{hint}", err=True)
        return 1
    return int(result or 0)


def _server_app() -> Any:
    """The app of one ``server --workers N`` process (uvicorn's factory ``jobmon_airflow.cli:_server_app``)."""
    return server_app()


__all__ = ["SERVER_DB_URL_ENV", "cli", "main", "tls_options"]

if __name__ == "__main__":
    sys.exit(main())
