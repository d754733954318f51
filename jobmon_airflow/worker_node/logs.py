"""The worker node's log: one line per event on stderr (the job's .e file), as ``logging`` would write it.

Not ``logging``: importing it costs every job ~4 ms of its start-up, and the worker needs one destination, one
format and three levels. A line: ``jobmon-worker: 2026-11-29 03:14:40,123 ti=17 job=4242 host=n1: message``.
"""

from __future__ import annotations

import sys
import time

_context = "ti=? job=? host=?"


def configure(context: str) -> None:
    """What every following line says about this run (task instance, job, host)."""
    global _context
    _context = context


def _write(message: str, args: tuple[object, ...]) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    text = message % args if args else message
    line = f"jobmon-worker: {stamp},{int(now * 1000) % 1000:03d} {_context}: {text}\n"
    # No lock: the worker has one thread, and a lock could deadlock a signal handler that logs while it is held.
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr is gone: the exit record and the reports still carry the outcome


class WorkerLog:
    """``info``/``warning``/``error`` with ``logging``'s %-style arguments; the line does not name the level (the
    worker's lines never did)."""

    def info(self, message: str, *args: object) -> None:
        _write(message, args)

    warning = error = info


log = WorkerLog()
