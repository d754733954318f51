"""What every command shares: the state database, the requesting user, output (rich tables or JSON) and errors
as one line."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A failure worth one line on stderr and exit status 1."""


def db_url(url: str | None) -> str:
    """``--url``, else the ``jobmon_default`` connection's database (or the embedded SQLite file): read from
    ``AIRFLOW_CONN_JOBMON_DEFAULT`` without importing Airflow (over a second) when Airflow could not find anything
    else (no custom secrets backend), else through Airflow."""
    if url is not None:
        return url
    from jobmon_airflow.hooks.jobmon_url import resolve_without_airflow

    if (found := resolve_without_airflow("jobmon_default")) is not None:
        return found
    # Airflow logs to stdout; keep stdout for the command's own output (tables, JSON).
    with contextlib.redirect_stdout(sys.stderr):
        from jobmon_airflow.hooks.jobmon import JobmonHook

        return JobmonHook().get_db_url()


def services(ctx: click.Context, *, migrate: bool = False) -> Any:
    """The service layer of the state database (built once per command). Only ``migrate`` checks the schema
    revision: the other commands skip loading the migrations (a status table should come back in well under a
    second)."""
    root = ctx.find_root()
    cached = root.meta.get("jobmon.services")
    if cached is None:
        from jobmon_airflow import db
        from jobmon_airflow.service import Services

        engine = db.get_engine(db_url(root.params.get("url")))
        if migrate:
            db.ensure_schema(engine)
        cached = root.meta["jobmon.services"] = Services.for_engine(engine)
    return cached


def requesting_user() -> str:
    """Who runs the command (Jobmon's owner checks compare it with the workflow run's user)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise CliError("cannot tell which user you are (set USER)") from None


def ids(values: Iterable[str], name: str, limit: int = 1000) -> list[int]:
    """``-w 1 -w 2`` or ``-w 1,2``: whole numbers ≥ 1, at most ``limit``."""
    out: list[int] = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            if not part.isdigit() or int(part) < 1 or int(part) > 2**63 - 1:
                raise click.BadParameter(f"expected whole numbers ≥ 1, got {part[:40]!r}", param_hint=name)
            out.append(int(part))
    if len(out) > limit:
        raise click.BadParameter(f"at most {limit} ids, got {len(out)}", param_hint=name)
    return out


json_option = click.option("-n", "--json", "as_json", is_flag=True, help="JSON for scripts instead of a table")


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return value


def emit_json(data: Any) -> None:
    click.echo(json.dumps(_plain(data), default=str))


def _console() -> Any:
    from rich.console import Console

    # Piped output (a file, a test) is not squeezed into 80 columns: tables keep one row per line.
    return Console(width=None if sys.stdout.isatty() else 400, soft_wrap=False, highlight=False)


def emit_table(rows: Sequence[dict[str, Any]], title: str | None = None, empty: str = "(no rows)") -> None:
    """Rows as a terminal table, columns in the rows' key order."""
    if not rows:
        click.echo(empty)
        return
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for header in rows[0]:
        table.add_column(str(header), no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else _cell(v) for v in row.values()))
    _console().print(table)


def _cell(value: Any) -> str:
    from rich.markup import escape

    if isinstance(value, datetime):
        value = value.isoformat(sep=" ", timespec="seconds")
    elif isinstance(value, dict):
        value = json.dumps(value, sort_keys=True)
    return str(escape(str(value)))


def output(rows: Sequence[dict[str, Any]], as_json: bool, title: str | None = None) -> None:
    emit_json(list(rows)) if as_json else emit_table(rows, title)


def debug() -> bool:
    return os.environ.get("JOBMON_AIRFLOW_CLI_DEBUG", "") not in ("", "0")
