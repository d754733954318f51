"""The worker node: the wrapper every Jobmon job runs on the compute node.

Run as ``python -m jobmon_airflow.worker_node --task-instance-id 17 --state-manager-url URL --token-file F
--exit-record R --command-b64 B64``. It reports running to the State Manager, runs the task's shell command,
heartbeats while the command runs (obeying a kill request), classifies the exit and reports done or error with
the stderr tail and usage. Before reporting the outcome over HTTP it writes an exit record file
(:class:`jobmon_airflow.records.ExitRecord`), so that the outcome survives a State Manager outage.

Standard library only: this starts with every job, so start-up time and memory matter, and the compute node may
not have the server's dependencies. Besides the standard library it imports only the package's stdlib-only
modules: ``records``, ``files``, ``procfs``, ``exit_codes``, ``states`` and ``array_manifest``.

Array mode: ``python -m jobmon_airflow.worker_node --array-manifest /logs/batch-12.manifest.json
--state-manager-url URL --heartbeat-interval 90``. One Grid Engine array job (``qsub -t 1-N``) runs one batch of
N task instances; every element runs this same argv and picks its own task instance by its element number
``SGE_TASK_ID`` (1-based), then runs exactly as in single mode (distributor id ``JOB_ID.SGE_TASK_ID``).
``--array-manifest`` excludes ``--task-instance-id/--token-file/--exit-record/--command-b64``. The manifest's
format, its writer and its reader: :mod:`jobmon_airflow.array_manifest`.

Exit code of the worker: the command's (128 + N when it died of signal N) so cluster accounting shows it; 198 on
a set-up failure of the worker itself; 130 when the task was killed before the command started.

Modules: ``outcome`` (exit classes, error message, the outcome; pure), ``client`` (the State Manager client),
``process`` (the command's process tree, stderr tail, usage), ``node`` (``WorkerNode``: one run, the exit record
and the reports), ``cli`` (arguments, the two modes, ``main``).
"""

from jobmon_airflow.worker_node.cli import build_parser, main, parse_args
from jobmon_airflow.worker_node.client import Reply, StateManagerClient
from jobmon_airflow.worker_node.node import WorkerNode, write_exit_record
from jobmon_airflow.worker_node.outcome import (
    ERROR_MESSAGE_CHARS,
    EXIT_CLASSES,
    Outcome,
    SetupError,
    classify_exit,
    distributor_id_from_env,
    error_message,
)

__all__ = [
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
    "main",
    "parse_args",
    "write_exit_record",
]
