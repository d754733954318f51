"""The worker node: the wrapper every Jobmon job runs on the compute node.

Run as ``python -S <package dir>/worker_node/__main__.py --task-instance-id 17 --state-manager-url URL
--token-file F --exit-record R --command-b64 B64`` (or ``python -m jobmon_airflow.worker_node ...``: the same).
It runs the task's shell command, reports to the State Manager (running, heartbeats obeying a kill request, the
end with the stderr tail and usage; a command that ends within ``--running-report-delay`` sends the running and
the final report as one, ``log_ran``: :mod:`.node`), and classifies the exit. Before reporting the outcome over
HTTP it writes an exit record file (the JSON of :class:`jobmon_airflow.records.ExitRecord`), so that the outcome
survives a State Manager outage.

Standard library only, and only what a run needs: this starts with every job, so start-up time and memory
matter, and the compute node may not have the server's dependencies. Started with ``-S`` (no ``site``: the venv's
packages are not needed, and ``site`` with an editable install's finder costs ~13 ms); ``__main__`` puts the
package's directory on ``sys.path``. Besides the standard library it imports only the package's stdlib-only
modules ``exit_codes``, ``files`` and ``array_manifest`` (and ``procfs`` when it signals the command); not
``logging``, ``http.client``, ``urllib``, ``dataclasses`` or ``typing`` (docs/performance.md, "Worker node").

Array mode: ``... --array-manifest /logs/batch-12.manifest.json --state-manager-url URL --heartbeat-interval 90``.
One Grid Engine array job (``qsub -t 1-N``) runs one batch of N task instances; every element runs this same argv
and picks its own task instance by its element number ``SGE_TASK_ID`` (1-based), then runs exactly as in single
mode (distributor id ``JOB_ID.SGE_TASK_ID``). ``--array-manifest`` excludes
``--task-instance-id/--token-file/--exit-record/--command-b64``. The manifest's format, its writer and its
reader: :mod:`jobmon_airflow.array_manifest`.

Exit code of the worker: the command's (128 + N when it died of signal N) so cluster accounting shows it; 198 on
a set-up failure of the worker itself; 130 when the task was killed before the command started.

Modules: ``outcome`` (exit classes, error message, the outcome; pure), ``logs`` (its stderr lines), ``client``
(the State Manager client), ``process`` (the command's process tree, stderr tail, usage), ``node``
(``WorkerNode``: one run, the exit record and the reports), ``cli`` (arguments, the two modes, ``main``).
"""

# The names below are imported on first use (PEP 562): ``python -m jobmon_airflow.worker_node`` imports this package
# first, and its __main__ imports only what a run needs.
_EXPORTS = {
    "build_parser": "cli",
    "main": "cli",
    "parse_args": "cli",
    "Reply": "client",
    "StateManagerClient": "client",
    "WorkerNode": "node",
    "exit_record_text": "node",
    "write_exit_record": "node",
    "ERROR_MESSAGE_CHARS": "outcome",
    "EXIT_CLASSES": "outcome",
    "Outcome": "outcome",
    "SetupError": "outcome",
    "classify_exit": "outcome",
    "distributor_id_from_env": "outcome",
    "error_message": "outcome",
}

__all__ = [  # and python_argv
    "ERROR_MESSAGE_CHARS",
    "EXIT_CLASSES",
    "Outcome",
    "Reply",
    "SetupError",
    "StateManagerClient",
    "WorkerNode",
    "build_parser",
    "classify_exit",
    "distributor_id_from_env",
    "error_message",
    "exit_record_text",
    "main",
    "parse_args",
    "write_exit_record",
]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy and ruff read the name)
if TYPE_CHECKING:
    from jobmon_airflow.worker_node.cli import build_parser, main, parse_args
    from jobmon_airflow.worker_node.client import Reply, StateManagerClient
    from jobmon_airflow.worker_node.node import WorkerNode, exit_record_text, write_exit_record
    from jobmon_airflow.worker_node.outcome import (
        ERROR_MESSAGE_CHARS,
        EXIT_CLASSES,
        Outcome,
        SetupError,
        classify_exit,
        distributor_id_from_env,
        error_message,
    )


def python_argv() -> list[str]:
    """How a job starts the worker node (its options follow): this interpreter on the package's ``__main__.py``,
    isolated (``-I``: the job's ``PYTHON*`` variables are its command's, and a ``PYTHONPATH`` there must not shadow
    the worker's modules) and without ``site`` (``-S``: the worker needs no installed package; ``site`` costs every
    job ~13 ms of CPU). ``-I`` also lets Python cache the worker's bytecode where ``PYTHONDONTWRITEBYTECODE`` is set."""
    import os
    import sys

    return [sys.executable, "-I", "-S", os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
