"""What a job's exit status means to Jobmon: one table for the worker node and the cluster backends.

Standard library only (the worker node imports it).
"""

from __future__ import annotations

#: Killed from outside, taken as out of memory (Jobmon's ERROR_CODE_SET_KILLED_FOR_INSUFFICIENT_RESOURCES):
#: 137 = 128 + SIGKILL (Grid Engine's h_vmem/h_rt kill, the kernel's OOM killer), 247 (exit -9 as a byte).
MEMORY_KILL_EXIT_STATUSES = frozenset({137, 247})
#: The same as Python's Popen reports a command killed by SIGKILL.
MEMORY_KILL_RETURNCODES = frozenset({-9})
WORKER_ENV_FAILURE = 198  # Jobmon's WORKER_NODE_ENV_FAILURE: the worker could not set up; fatal
WORKER_CLI_FAILURE = 199  # Jobmon's WORKER_NODE_CLI_FAILURE: bad worker arguments; fatal
FATAL_EXIT_STATUSES = frozenset({WORKER_ENV_FAILURE, WORKER_CLI_FAILURE})
KILLED_BEFORE_START_EXIT = 130  # 128 + SIGINT: "interrupted on request", no command ran


def is_memory_kill(exit_status: int) -> bool:
    """A command (or job) that ended with this status was killed for resources."""
    return exit_status in MEMORY_KILL_EXIT_STATUSES or exit_status in MEMORY_KILL_RETURNCODES


def shell_exit_code(returncode: int) -> int:
    """A Popen return code in shell convention: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode
