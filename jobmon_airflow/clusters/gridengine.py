"""Grid Engine (Son of Grid Engine 8.1.9): every command line and parser, and the backend.

Read top to bottom: tables, then pure functions (no I/O; tested on recorded output in ``tests/data/gridengine/``),
then :class:`AccountingReader` and :class:`GridEngineCluster`, which run the commands. Sharing one ``qstat`` per
interval among every watched job of a process is :mod:`jobmon_airflow.watch`'s job (cluster-independent).
This module never imports Airflow: worker nodes and triggers stay light.

How a job is submitted, and why (checked on the real cluster, see ``tests/integration/test_gridengine_backend.py``):

* Not ``qsub -b y <argv>``: Grid Engine re-joins a binary job's arguments with spaces and hands them to the job
  shell, so ``'a b'`` arrives as two words, a quote ends the job with "unexpected EOF", ``$(...)`` is expanded, and
  a newline splits the shepherd's line-based config file.
* Instead a job script on qsub's standard input (``-b n``): ``#!/bin/sh``, one ``export`` per environment variable,
  and ``exec`` of the argv with every word ``shlex.quote``-d. No file is written, so concurrent submissions of the
  same task cannot race on one. ``-S /bin/sh`` keeps that shell even under ``shell_start_mode posix_compliant``.
* ``-C ''`` switches off qsub's scan of the script for ``#$`` directives: without it an argument containing
  ``"\\n#$ -l h_rt=0:0:1"`` would add qsub options (verified). The argv never appears on qsub's command line, so an
  element starting with ``-`` cannot be taken for an option, and the job name is reduced to ``[A-Za-z0-9_.-]``
  starting with a letter or ``_``.
* The environment goes into the script rather than ``-v``: ``-v A=x,y`` splits the value at the comma (verified).
* ``-wd <log_dir>`` rather than ``-cwd``: the submitting process's working directory (an Airflow worker's) means
  nothing on the execution host, while the log directory exists (submit creates it) and is where a job's stray files
  are easiest to find. Commands should use absolute paths.
* ``-w e`` makes qsub refuse, with Grid Engine's reason, a job that no queue can ever run (else it waits forever).
* Memory is booked per slot: ``-l h_vmem=<memory / cores>`` with ``-pe smp <cores>`` gives the job ``memory`` in
  all (RLIMIT_AS = h_vmem × slots).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import BinaryIO

from jobmon_airflow.clusters.base import (
    ClusterError,
    ExitInfo,
    ExitKind,
    JobRequest,
    JobState,
    JobStatus,
    SubmissionError,
)
from jobmon_airflow.resources import (
    QueueLimits,
    ResourceError,
    format_memory,
    format_runtime,
    parse_memory,
    parse_runtime,
)

log = logging.getLogger(__name__)


class CommandTimeout(ClusterError):
    """A Grid Engine command did not answer in time (for qsub: the job may or may not exist)."""


DEFAULT_SGE_ROOT = "/var/lib/gridengine"
DEFAULT_SGE_CELL = "default"
DEFAULT_QUEUE = "all.q"  # Grid Engine's stock queue: whose limits apply when neither job nor cluster names a queue
DEFAULT_PE = "smp"  # a $pe_slots parallel environment: all of a job's cores on one host
DEFAULT_COMMAND_TIMEOUT_S = 60.0
MAX_JOB_NAME = 64  # keeps "<name>.o<job id>.<task>" far below file-name limits

# --------------------------------------------------------------------------------------------------------------
# Tables

#: qstat state letters, checked in this order: the first group with a letter of the state wins ("Eqw" is an
#: error, "dr" a deletion, "hqw" pending). A letter in none of them makes the state UNKNOWN.
STATE_LETTERS: tuple[tuple[str, JobState], ...] = (
    ("E", JobState.ERROR),  # error: never runs until the error is cleared (qmod -cj) or the job deleted
    ("d", JobState.DELETING),  # qdel registered, the job not gone yet
    ("sST", JobState.SUSPENDED),  # suspended: by a user, by queue subordination, by a load threshold
    ("rtR", JobState.RUNNING),  # running, transferring to the execution host, restarted
    ("qwh", JobState.PENDING),  # queued and waiting, possibly held
)

#: When one id names a whole array, its elements' states in order of precedence.
ARRAY_STATE_PRECEDENCE: tuple[JobState, ...] = (
    JobState.ERROR,
    JobState.RUNNING,
    JobState.SUSPENDED,
    JobState.DELETING,
    JobState.PENDING,
    JobState.UNKNOWN,
)

#: Accounting ``failed`` codes with qacct 8.1.9's own texts (read off ``qacct -f`` on records with each code).
FAILED_TEXT: dict[int, str] = {
    0: "no failure",
    1: "assumedly before job",
    2: "on executing shepherd",
    3: "before writing config",
    4: "before writing pid",
    5: "on reading config file",
    6: "setting processor set",
    7: "before prolog",
    8: "in prolog",
    9: "before pestart",
    10: "in pestart",
    11: "before job",
    12: "before pestop",
    13: "in pestop",
    14: "before epilog",
    15: "in epilog",
    16: "releasing processor set",
    17: "through signal",
    18: "shepherd returned error",
    19: "before writing exit_status",
    20: "found unexpected error file",
    21: "in recognizing job",
    22: "removed manually",
    24: "migrating",
    25: "rescheduling",
    26: "opening input/output file",
    27: "searching requested shell",
    28: "changing into working directory",
    29: "AFS setup",
    30: "application error returned",
    31: "accessing sgepasswd file",
    32: "entry is missing in sgepasswd file",
    33: "wrong password",
    34: "communicating with Grid Engine Helper Service",
    35: "before job in Grid Engine Helper Service",
    36: "checking configured daemons",
    37: "qmaster enforced h_rt, h_cpu, or h_vmem limit",
    38: "adding supplementary group",
    100: "assumedly after job",
}
FAILED_LIMIT_ENFORCED = 37  # observed for both h_vmem and h_rt kills
FAILED_AFTER_JOB = 100  # observed for qdel of a running job; some sites see it for limit kills too
EXIT_SIGKILL = 137  # 128 + SIGKILL: how execd ends a job over h_rt or h_vmem, and how qdel ends a running one
#: Exit statuses that mean "killed for memory" even when Grid Engine did not do it (kernel OOM killer), as in
#: Jobmon's SGE executor: 137 (SIGKILL) and 247 (exit -9).
MEMORY_KILL_EXIT_STATUSES = frozenset({137, 247})
RUNTIME_SLACK_S = 1.0  # execd checks h_rt about once a second: a kill at h_rt - 1 s still counts as runtime
MEMORY_EVIDENCE_FRACTION = 0.95  # maxvmem is sampled: near the limit counts as having reached it

#: Raw accounting file fields (``man accounting``), in order; 1-based field 17 ru_maxrss is in KB, 43 maxvmem in
#: bytes. (qacct 8.1.9 prints ru_maxrss in the wrong unit, hence the raw file.)
ACCOUNTING_FIELDS: tuple[str, ...] = (
    "qname", "hostname", "group", "owner", "job_name", "job_number", "account", "priority",
    "submission_time", "start_time", "end_time", "failed", "exit_status", "ru_wallclock", "ru_utime",
    "ru_stime", "ru_maxrss", "ru_ixrss", "ru_ismrss", "ru_idrss", "ru_isrss", "ru_minflt", "ru_majflt",
    "ru_nswap", "ru_inblock", "ru_oublock", "ru_msgsnd", "ru_msgrcv", "ru_nsignals", "ru_nvcsw", "ru_nivcsw",
    "project", "department", "granted_pe", "slots", "task_number", "cpu", "mem", "io", "category", "iow",
    "pe_taskid", "maxvmem", "arid", "ar_submission_time",
)  # fmt: skip
_CATEGORY_INDEX = ACCOUNTING_FIELDS.index("category")
_FIELDS_AFTER_CATEGORY = len(ACCOUNTING_FIELDS) - _CATEGORY_INDEX - 1

_JOB_ID_RE = re.compile(r"^(\d+)(?:\.(\d+))?$")
_NAME_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]")
_PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTEXT_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_TERSE_RE = re.compile(r"^(\d+)(?:\.\d+-\d+:\d+)?$")
_TASK_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
_ERROR_REASON_RE = re.compile(r"^error reason\s+(\d+):\s*(.*)$")
# qdel lines that are no failure: deleted now, being deleted, or gone already (exit 1 all the same).
_QDEL_FINE_RE = re.compile(r"has (registered the job|deleted job)|is already in deletion|does not exist")

# --------------------------------------------------------------------------------------------------------------
# Command lines (pure)


def safe_job_name(name: str) -> str:
    """A Grid Engine job name for ``name``: only ``[A-Za-z0-9_.-]``, starting with a letter or ``_``, ≤ 64 chars.

    Grid Engine rejects names starting with a digit, and a leading ``-`` could pass for an option. The result is
    deterministic, so log file names can be derived again from the job's name.
    """
    safe = _NAME_UNSAFE_RE.sub("_", name)
    if not safe:
        return "job"
    if not (safe[0].isascii() and (safe[0].isalpha() or safe[0] == "_")):
        safe = "j" + safe
    return safe[:MAX_JOB_NAME]


def job_script(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The ``/bin/sh`` script that runs ``argv`` exactly as given (each word single-quoted) with ``env`` exported."""
    if not argv:
        raise SubmissionError("job argv: expected at least the program to run, got an empty argv")
    for i, word in enumerate(argv):
        if not isinstance(word, str) or "\0" in word:
            raise SubmissionError(f"job argv[{i}]: expected a string without NUL bytes, got {word!r}")
    lines = ["#!/bin/sh", "# Generated by jobmon-airflow: runs the command below exactly, every word single-quoted."]
    for key, value in (env or {}).items():
        if not _ENV_NAME_RE.match(key) or "\0" in value:
            raise SubmissionError(
                f"job env: expected NAME=value with NAME like [A-Za-z_][A-Za-z0-9_]* and no NUL, got {key!r}={value!r}"
            )
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append("exec " + " ".join(shlex.quote(word) for word in argv))
    return "\n".join(lines) + "\n"


def _sge_path(path: Path, what: str) -> str:
    """An absolute path that qsub takes literally: no ':' (host:path), ',' (path lists) or '$' (qsub variables)."""
    text = str(path.absolute())
    bad = sorted({c for c in text if c in ":,$\n"})
    if bad:
        raise SubmissionError(f"{what}: Grid Engine would misread {''.join(bad)!r} in the path {text!r}")
    return text


def _plain(value: str, what: str) -> str:
    if not _PLAIN_NAME_RE.match(value):
        raise SubmissionError(f"{what}: expected a plain name (letters, digits, _.@-), got {value!r}")
    return value


def context_option(context: Mapping[str, str]) -> str:
    """The ``-ac`` value for job context pairs; qsub splits at ',' so neither keys nor values may hold one."""
    pairs = []
    for key, value in context.items():
        if not _CONTEXT_KEY_RE.match(key):
            raise SubmissionError(f"job context: expected keys of [A-Za-z0-9_.-], got {key!r}")
        if any(c in value for c in ",\n\0"):
            raise SubmissionError(f"job context {key}: qsub -ac cannot carry ',' or newlines, got {value!r}")
        pairs.append(f"{key}={value}")
    return ",".join(pairs)


def qsub_argv(
    job: JobRequest, *, queue: str | None = None, project: str | None = None, pe: str = DEFAULT_PE
) -> list[str]:
    """The qsub command line for ``job``; the job script (:func:`job_script`) goes to its standard input.

    ``queue``/``project`` are defaults for a job whose resources name none.
    """
    res = job.resources
    log_dir = _sge_path(job.log_dir, "log_dir")
    argv = ["qsub", "-terse", "-b", "n", "-C", "", "-S", "/bin/sh", "-N", safe_job_name(job.name)]
    argv += ["-o", f"{log_dir}/", "-e", f"{log_dir}/", "-wd", log_dir, "-w", "e"]
    argv += ["-l", f"h_vmem={format_memory(res.memory / res.cores)}", "-l", f"h_rt={format_runtime(res.runtime)}"]
    if res.cores > 1:
        argv += ["-pe", _plain(pe, "parallel environment"), str(res.cores)]
    if chosen_queue := res.queue or queue:
        argv += ["-q", _plain(chosen_queue, "queue")]
    if chosen_project := res.project or project:
        argv += ["-P", _plain(chosen_project, "project")]
    if job.array_length is not None:
        if job.array_length < 1:
            raise SubmissionError(f"array_length: expected at least 1, got {job.array_length}")
        argv += ["-t", f"1-{job.array_length}"]
        if job.max_concurrent is not None:
            if job.max_concurrent < 1:
                raise SubmissionError(f"max_concurrent: expected at least 1, got {job.max_concurrent}")
            argv += ["-tc", str(job.max_concurrent)]
    elif job.max_concurrent is not None:
        raise SubmissionError("max_concurrent: only meaningful for an array (set array_length)")
    if job.context:
        argv += ["-ac", context_option(job.context)]
    return argv


def log_file_paths(log_dir: Path, name: str, job_id: str, element: int | None = None) -> tuple[Path, Path]:
    """Where Grid Engine writes a job's stdout/stderr for ``-o <dir>/``: ``<name>.o<id>``, arrays ``.o<id>.<task>``."""
    suffix = job_id if element is None else f"{job_id}.{element}"
    safe = safe_job_name(name)
    return log_dir.absolute() / f"{safe}.o{suffix}", log_dir.absolute() / f"{safe}.e{suffix}"


def split_job_id(job_id: str) -> tuple[str, int | None]:
    """'123' → ('123', None); '123.4' → ('123', 4); anything else is not a Grid Engine id (ValueError)."""
    m = _JOB_ID_RE.match(job_id)
    if not m:
        raise ValueError(f"not a Grid Engine job id (expected '123' or '123.4'): {job_id!r}")
    return m.group(1), int(m.group(2)) if m.group(2) else None


# --------------------------------------------------------------------------------------------------------------
# Parsers (pure)


def parse_qsub_output(text: str) -> str:
    """The job id from ``qsub -terse``: "123" → "123"; an array's "123.1-10:1" → "123"."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    m = _TERSE_RE.match(lines[-1]) if lines else None
    if not m:
        raise ClusterError(f"qsub -terse: expected a job id like '123' or '123.1-10:1', got {text!r}")
    return m.group(1)


def decode_state(raw: str) -> JobState:
    """A qstat state string ("r", "Eqw", "hqw", "dr" …) decoded letter by letter; unknown letters → UNKNOWN."""
    letters = set(raw.strip())
    known = "".join(group for group, _ in STATE_LETTERS)
    if not letters or not letters <= set(known):
        return JobState.UNKNOWN
    return next(state for group, state in STATE_LETTERS if letters & set(group))


def expand_task_ranges(text: str) -> list[int]:
    """qstat's array task list: "3-5:1" → [3, 4, 5]; "1-5:2" → [1, 3, 5]; "1,3" → [1, 3]; "7" → [7]."""
    tasks: list[int] = []
    for part in text.split(","):
        m = _TASK_RANGE_RE.match(part.strip())
        if not m:
            raise ValueError(f"expected task ranges like '3-5:1' or '1,3', got {text!r}")
        first = int(m.group(1))
        last = int(m.group(2) or first)
        step = int(m.group(3) or 1)
        if step < 1 or last < first:
            raise ValueError(f"expected first ≤ last and a step ≥ 1 in {text!r}")
        tasks.extend(range(first, last + 1, step))
    return tasks


def parse_qstat_xml(text: str) -> dict[str, JobStatus]:
    """Every job in ``qstat -xml`` output by id: running ones under ``queue_info``, pending ones under ``job_info``.

    Array elements are "J.N": each running element is its own ``job_list`` with ``<tasks>N</tasks>``; pending
    elements share one with a range ("3-5:1"), expanded here.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ClusterError(f"qstat -xml: unparsable XML ({exc}); output began {text[:200]!r}") from None
    if root.tag != "job_info":
        raise ClusterError(f"qstat -xml: expected a <job_info> document, got <{root.tag}> (qstat -j output?)")
    out: dict[str, JobStatus] = {}
    for entry in root.iter("job_list"):
        number = (entry.findtext("JB_job_number") or "").strip()
        if not number.isdigit():
            raise ClusterError(f"qstat -xml: job_list without a numeric JB_job_number: {ET.tostring(entry)[:200]!r}")
        raw = (entry.findtext("state") or "").strip()
        state = decode_state(raw)
        tasks = (entry.findtext("tasks") or "").strip()
        try:
            ids = [f"{number}.{t}" for t in expand_task_ranges(tasks)] if tasks else [number]
        except ValueError as exc:
            raise ClusterError(f"qstat -xml: job {number}: {exc}") from None
        name = (entry.findtext("JB_name") or "").strip()
        for job_id in ids:
            out[job_id] = JobStatus(job_id, state, raw, name=name)
    return out


def parse_qstat_j_error_reason(text: str) -> dict[str, str]:
    """Error reasons from ``qstat -j <ids>`` (Eqw jobs): {"12": reason} and, for array tasks, {"13.2": reason}."""
    reasons: dict[str, str] = {}
    for block in re.split(r"^=+\s*$", text, flags=re.MULTILINE):
        number = re.search(r"^job_number:\s*(\d+)\s*$", block, flags=re.MULTILINE)
        if not number:
            continue
        is_array = re.search(r"^job-array tasks:", block, flags=re.MULTILINE) is not None
        for line in block.splitlines():
            if m := _ERROR_REASON_RE.match(line.strip()):
                job_id = f"{number.group(1)}.{m.group(1)}" if is_array else number.group(1)
                reasons[job_id] = m.group(2).strip()
    return reasons


def parse_category(category: str) -> dict[str, str]:
    """Hard ``-l`` requests of an accounting ``category`` ("-l h_rt=3,h_vmem=200M -pe smp 2" → {h_rt: 3, …})."""
    requests: dict[str, str] = {}
    words = category.split()
    soft = False
    for i, word in enumerate(words):
        if word in ("-soft", "-hard"):
            soft = word == "-soft"
        elif word == "-l" and i + 1 < len(words) and not soft:
            for item in words[i + 1].split(","):
                key, sep, value = item.partition("=")
                if sep:
                    requests[key] = value
    return requests


def _fmt_bytes(n: float) -> str:
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}B"


def classify_exit(
    failed: int | str,
    exit_status: int,
    *,
    wallclock_s: float | None = None,
    h_rt_s: float | None = None,
    maxvmem_bytes: float | None = None,
    h_vmem_bytes: float | None = None,
) -> tuple[ExitKind, str | None, str]:
    """How a job ended, from accounting: (kind, resource for RESOURCE_KILL, human-readable reason).

    ``failed`` is the accounting code (37, or qacct's "37  : qmaster enforced …"); ``h_vmem_bytes`` is the job's
    whole limit (per-slot request × slots). Rules, as observed on SGE 8.1.9 (``reference/gridengine.md`` §6):

    ======================  ============  =====================================================================
    failed                  exit_status   outcome
    ======================  ============  =====================================================================
    0                       0             DONE
    0                       137 or 247    RESOURCE_KILL memory (killed from outside, e.g. the OOM killer; Jobmon)
    0                       other         ERROR
    37 (limit enforced)     any           RESOURCE_KILL: runtime if wallclock ≥ h_rt − 1 s, else memory
    100 (after job)         137           RESOURCE_KILL if a limit was reached (runtime, then memory), else DELETED
    other                   any           ERROR with Grid Engine's text for the code
    ======================  ============  =====================================================================
    """
    try:
        code = int(str(failed).split(":")[0].strip())
    except ValueError:
        raise ClusterError(f"accounting: expected a numeric 'failed' code, got {failed!r}") from None
    failed_text = f"failed {code}: {FAILED_TEXT.get(code, 'unknown failure code')}"
    runtime_hit = wallclock_s is not None and h_rt_s is not None and wallclock_s >= h_rt_s - RUNTIME_SLACK_S
    memory_hit = (
        maxvmem_bytes is not None
        and h_vmem_bytes is not None
        and maxvmem_bytes >= MEMORY_EVIDENCE_FRACTION * h_vmem_bytes
    )
    runtime_kill = (
        ExitKind.RESOURCE_KILL,
        "runtime",
        f"exceeded runtime h_rt={h_rt_s:g}s (wallclock {wallclock_s:g}s; {failed_text})"
        if h_rt_s is not None and wallclock_s is not None
        else f"killed for runtime ({failed_text})",
    )
    memory_kill = (
        ExitKind.RESOURCE_KILL,
        "memory",
        f"exceeded memory h_vmem={_fmt_bytes(h_vmem_bytes)} (maxvmem {_fmt_bytes(maxvmem_bytes)}; {failed_text})"
        if h_vmem_bytes is not None and maxvmem_bytes is not None
        else f"killed for memory ({failed_text}, exit status {exit_status})",
    )
    if code == 0:
        if exit_status == 0:
            return ExitKind.DONE, None, "exit status 0"
        if exit_status in MEMORY_KILL_EXIT_STATUSES:
            return ExitKind.RESOURCE_KILL, "memory", f"exit status {exit_status}: killed, taken as out of memory"
        return ExitKind.ERROR, None, f"exit status {exit_status}"
    if code == FAILED_LIMIT_ENFORCED:
        return runtime_kill if runtime_hit else memory_kill
    if code == FAILED_AFTER_JOB and exit_status == EXIT_SIGKILL:
        if runtime_hit:
            return runtime_kill
        if memory_hit:
            return memory_kill
        return ExitKind.DELETED, None, f"killed after start with no limit reached: deleted (qdel) ({failed_text})"
    return ExitKind.ERROR, None, f"Grid Engine {failed_text} (exit status {exit_status})"


def _float(fields: Mapping[str, str], key: str) -> float:
    try:
        return float(fields[key])
    except ValueError:
        raise ClusterError(f"accounting: field {key} is not a number: {fields[key]!r}") from None


def parse_accounting_line(line: str) -> ExitInfo:
    """One line of the raw accounting file (45 ':'-separated fields) → :class:`ExitInfo` with the outcome."""
    parts = line.rstrip("\n").split(":")
    if len(parts) < len(ACCOUNTING_FIELDS):
        raise ClusterError(
            f"accounting: expected {len(ACCOUNTING_FIELDS)} ':'-separated fields, got {len(parts)} in {line[:200]!r}"
        )
    # Only the category may contain ':' (it holds request text): take the fields after it from the right.
    values = [
        *parts[:_CATEGORY_INDEX],
        ":".join(parts[_CATEGORY_INDEX : len(parts) - _FIELDS_AFTER_CATEGORY]),
        *parts[len(parts) - _FIELDS_AFTER_CATEGORY :],
    ]
    fields = dict(zip(ACCOUNTING_FIELDS, values, strict=True))
    number, task = fields["job_number"], fields["task_number"]
    if not number.isdigit() or not task.isdigit():
        raise ClusterError(f"accounting: expected numeric job_number and task_number in {line[:200]!r}")
    job_id = number if task == "0" else f"{number}.{task}"
    try:
        exit_status = int(fields["exit_status"])
        slots = int(fields["slots"])
    except ValueError:
        raise ClusterError(f"accounting: expected numeric exit_status and slots in {line[:200]!r}") from None

    requests = parse_category(fields["category"])
    try:
        h_rt_s = float(parse_runtime(requests["h_rt"])) if "h_rt" in requests else None
        # h_vmem is requested per slot; the job's limit (its RLIMIT_AS) is that times its slots.
        h_vmem = parse_memory(requests["h_vmem"]) * 1024**3 * slots if "h_vmem" in requests else None
    except ResourceError as exc:
        raise ClusterError(
            f"accounting: job {job_id}: unreadable request in category {fields['category']!r}: {exc}"
        ) from None
    wallclock = _float(fields, "ru_wallclock")
    maxvmem = _float(fields, "maxvmem")
    kind, resource, reason = classify_exit(
        fields["failed"], exit_status, wallclock_s=wallclock, h_rt_s=h_rt_s, maxvmem_bytes=maxvmem, h_vmem_bytes=h_vmem
    )
    start, end = _float(fields, "start_time"), _float(fields, "end_time")
    return ExitInfo(
        job_id=job_id,
        kind=kind,
        exit_status=exit_status,
        reason=reason,
        resource=resource,
        hostname=fields["hostname"],
        maxrss_bytes=round(_float(fields, "ru_maxrss") * 1024),
        maxvmem_bytes=round(maxvmem),
        wallclock_s=wallclock,
        cpu_s=_float(fields, "cpu"),
        start_time=start or None,  # 0 when the job never started
        end_time=end or None,
        slots=slots,
        granted_pe=None if fields["granted_pe"] == "NONE" else fields["granted_pe"],
    )


def parse_accounting(text: str) -> dict[str, ExitInfo]:
    """All records of raw accounting text by job id; a later record of the same id wins; '#' lines are skipped."""
    out: dict[str, ExitInfo] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            info = parse_accounting_line(line)
        except ClusterError as exc:
            raise ClusterError(f"accounting line {number}: {exc}") from None
        out[info.job_id] = info
    return out


def parse_qconf_object(text: str) -> dict[str, str]:
    """A ``qconf -s…`` dump as {key: value}: continuation lines ('\\' at the end) joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", "", text)
    out: dict[str, str] = {}
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, *value = line.split(maxsplit=1)
        out[key] = value[0].strip() if value else ""
    return out


def _queue_values(value: str) -> list[str]:
    """A queue attribute's default and per-host values: "1,[vm=2],[@big=8]" → ["1", "2", "8"]."""
    default, *overrides = re.split(r",\s*(?=\[)", value)
    return [default.strip()] + [o.strip("[] ").partition("=")[2] for o in overrides]


def _largest(values: Iterable[str], parse: Callable[[str], float], what: str) -> float | None:
    """The largest of limit values; None (unlimited) when any is INFINITY."""
    parsed = []
    for value in values:
        if value.upper() == "INFINITY":
            return None
        try:
            parsed.append(float(parse(value)))
        except (ResourceError, ValueError):
            raise ClusterError(f"qconf: unreadable {what} value {value!r}") from None
    return max(parsed) if parsed else None


def parse_queue_limits(
    qconf_sq_text: str, *, pe_text: str | None = None, exechost_texts: Sequence[str] = ()
) -> QueueLimits:
    """What one queue allows, from ``qconf -sq`` (+ ``qconf -sp <pe>`` and ``qconf -se <host>`` when given).

    * cores: the queue's slots per host (a $pe_slots job runs on one host), capped by the PE's slots;
    * memory: the smallest of the hosts' ``h_vmem`` capacity (the consumable's ``complex_values``, largest over
      the hosts) and the queue's per-slot ``h_vmem`` limit × its slots — an upper bound: a job with fewer cores
      gets the per-slot limit × its cores;
    * runtime: the queue's ``h_rt``.
    INFINITY, or nothing known, means unlimited (None).
    """
    queue = parse_qconf_object(qconf_sq_text)
    if "qname" not in queue:
        raise ClusterError(f"qconf -sq: expected a queue with a qname line, got {qconf_sq_text[:200]!r}")
    cores = _largest(_queue_values(queue.get("slots", "INFINITY")), int, "slots")
    if pe_text is not None:
        pe_slots = _largest([parse_qconf_object(pe_text).get("slots", "INFINITY")], int, "pe slots")
        if pe_slots is not None:
            cores = pe_slots if cores is None else min(cores, pe_slots)
    runtime = _largest(_queue_values(queue.get("h_rt", "INFINITY")), parse_runtime, "h_rt")
    memory_bounds: list[float] = []
    per_slot = _largest(_queue_values(queue.get("h_vmem", "INFINITY")), parse_memory, "h_vmem")
    if per_slot is not None and cores is not None:
        memory_bounds.append(per_slot * cores)
    host_memory = []
    for text in exechost_texts:
        for item in parse_qconf_object(text).get("complex_values", "NONE").split(","):
            key, _, value = item.strip().partition("=")
            if key == "h_vmem":
                host_memory.append(value)
    if host_memory:
        largest_host = _largest(host_memory, parse_memory, "host h_vmem")
        if largest_host is not None:
            memory_bounds.append(largest_host)
    return QueueLimits(
        name=queue["qname"],
        max_cores=int(cores) if cores is not None else None,
        max_memory=min(memory_bounds) if memory_bounds else None,
        max_runtime=int(runtime) if runtime is not None else None,
    )


# --------------------------------------------------------------------------------------------------------------
# Accounting file reader (I/O)


class AccountingReader:
    """Finds jobs' newest records in the raw accounting file without reading a large file again and again.

    The file only grows (until rotated). An id asked about for the first time is looked for backwards from the
    end, up to ``max_scan_bytes`` (the record of a job that just left qstat is near the end); an id asked about
    before is only looked for in the bytes added since. Found records are kept. The line being written (no
    newline yet) is left for the next call. Safe to call from several threads (pollers run in threads).
    """

    CHUNK = 1 << 20
    MAX_REMEMBERED = 100_000

    def __init__(self, path: Path, max_scan_bytes: int = 256 << 20) -> None:
        self.path = path
        self.max_scan_bytes = max_scan_bytes
        self._checked_to = 0  # ids in _asked have been looked for in every complete line before this offset
        self._asked: set[str] = set()
        self._found: dict[str, ExitInfo] = {}
        self._lock = threading.Lock()

    def lookup(self, job_ids: Iterable[str]) -> dict[str, ExitInfo]:
        """The newest record of each id that has one; ids without a record (yet) are left out."""
        wanted = set(job_ids)
        with self._lock:
            return self._lookup(wanted)

    def _lookup(self, wanted: set[str]) -> dict[str, ExitInfo]:
        result = {i: self._found[i] for i in wanted if i in self._found}
        missing = wanted - result.keys()
        if not missing:
            return result
        try:
            with open(self.path, "rb") as f:
                end = _complete_end(f)
                if end < self._checked_to:  # rotated or truncated: start over
                    self._checked_to, self._asked = 0, set()
                # New ids: the last max_scan_bytes; ids asked before: what was added since the last look.
                floors = [max(0, end - self.max_scan_bytes)] if missing - self._asked else []
                floors += [self._checked_to] if missing & self._asked else []
                result.update(self._scan(f, end, min(floors), missing))
        except FileNotFoundError:
            return result  # no job has finished since accounting started
        except OSError as exc:
            raise ClusterError(f"cannot read the accounting file {self.path}: {exc}") from None
        self._checked_to = end
        self._asked |= missing - result.keys()
        self._remember(result)
        return result

    def _scan(self, f: BinaryIO, end: int, floor: int, missing: set[str]) -> dict[str, ExitInfo]:
        numbers = {i.partition(".")[0].encode() for i in missing}
        found: dict[str, ExitInfo] = {}
        remaining = set(missing)
        for start, line in _lines_backward(f, end, self.CHUNK):
            if start < floor or not remaining:
                break
            fields = line.split(b":", 6)
            if line.startswith(b"#") or len(fields) < 7 or fields[5] not in numbers:
                continue
            try:
                info = parse_accounting_line(line.decode("utf-8", errors="replace"))
            except ClusterError as exc:
                log.warning("%s: skipping an unreadable line at byte %d: %s", self.path, start, exc)
                continue
            if info.job_id in remaining:  # backwards: the first record seen is the newest
                found[info.job_id] = info
                remaining.discard(info.job_id)
        return found

    def _remember(self, found: Mapping[str, ExitInfo]) -> None:
        self._found.update(found)
        self._asked -= found.keys()
        # Bounded memory in a long-lived process: forget the oldest half (a forgotten id is simply looked up again).
        if len(self._found) > self.MAX_REMEMBERED:
            for key in list(self._found)[: len(self._found) // 2]:
                del self._found[key]
        if len(self._asked) > self.MAX_REMEMBERED:
            self._asked.clear()


def _complete_end(f: BinaryIO) -> int:
    """Offset just past the last newline of the file (a half-written last line is not read)."""
    size = f.seek(0, os.SEEK_END)
    pos = size
    while pos > 0:
        step = min(1 << 16, pos)
        f.seek(pos - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def _lines_backward(f: BinaryIO, end: int, chunk: int) -> Iterator[tuple[int, bytes]]:
    """(start offset, line) for every non-empty line before ``end``, last line first."""
    pos, tail = end, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + tail).split(b"\n")
        tail = parts[0]  # may be the end of a line that starts in the previous chunk
        starts = [pos]
        for part in parts[:-1]:
            starts.append(starts[-1] + len(part) + 1)
        for start, line in reversed(list(zip(starts[1:], parts[1:], strict=True))):
            if line:
                yield start, line
    if tail:
        yield 0, tail


# --------------------------------------------------------------------------------------------------------------
# The backend (I/O)


class GridEngineCluster:
    """The Grid Engine backend: qsub, qstat, qdel, qconf and the accounting file, each called once per request."""

    name = "gridengine"

    def __init__(
        self,
        *,
        sge_root: str = DEFAULT_SGE_ROOT,
        sge_cell: str = DEFAULT_SGE_CELL,
        queue: str | None = None,
        project: str | None = None,
        pe: str = DEFAULT_PE,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        limits_ttl: float = 300.0,
        limits_cache_dir: Path | None = None,
    ) -> None:
        self.sge_root, self.sge_cell = sge_root, sge_cell
        self.queue, self.project, self.pe = queue, project, pe
        self.command_timeout = command_timeout
        self.limits_ttl = limits_ttl
        self.limits_cache_dir = limits_cache_dir
        self.accounting = AccountingReader(Path(sge_root) / sge_cell / "common" / "accounting")
        self._limits: dict[str, tuple[float, QueueLimits]] = {}

    def __repr__(self) -> str:
        return f"GridEngineCluster(sge_root={self.sge_root!r}, sge_cell={self.sge_cell!r}, queue={self.queue!r})"

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SGE_ROOT": self.sge_root, "SGE_CELL": self.sge_cell}
        try:
            return subprocess.run(
                list(argv), input=stdin, capture_output=True, text=True, timeout=self.command_timeout, env=env
            )
        except FileNotFoundError:
            raise ClusterError(f"{argv[0]}: not found on PATH; is the Grid Engine client installed?") from None
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"{' '.join(argv[:2])}: no answer within {self.command_timeout:g}s") from None

    @staticmethod
    def _output(proc: subprocess.CompletedProcess[str]) -> str:
        text = (proc.stderr.strip() + "\n" + proc.stdout.strip()).strip()
        return re.sub(r"\s*\n?Exiting\.\s*$", "", text) or "(no output)"

    # -- submit

    def submit(self, job: JobRequest) -> str:
        """qsub the job; SubmissionError carries Grid Engine's reason when it refuses."""
        argv = qsub_argv(job, queue=self.queue, project=self.project, pe=self.pe)
        script = job_script(job.argv, job.env)
        try:
            job.log_dir.absolute().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SubmissionError(f"gridengine: cannot create log directory {job.log_dir}: {exc}") from exc
        try:
            proc = self._run(argv, stdin=script)
        except CommandTimeout as exc:
            # Unknown whether the job was created: the caller can look for it by its context.
            raise CommandTimeout(f"{exc} (job {job.name!r} may or may not have been submitted)") from None
        if proc.returncode != 0:
            raise SubmissionError(f"qsub refused job {job.name!r} (exit {proc.returncode}): {self._output(proc)}")
        return parse_qsub_output(proc.stdout)

    # -- status

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """One ``qstat -u '*' -xml`` for all ids (+ one ``qstat -j`` for Eqw reasons); unlisted ids are GONE."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        proc = self._run(["qstat", "-u", "*", "-xml"])
        if proc.returncode != 0:
            raise ClusterError(f"qstat -xml failed (exit {proc.returncode}): {self._output(proc)}")
        listed = parse_qstat_xml(proc.stdout)
        elements: dict[str, list[JobStatus]] = {}
        for job_id, status in listed.items():
            if "." in job_id:
                elements.setdefault(job_id.partition(".")[0], []).append(status)
        out = {i: listed.get(i) or _array_status(i, elements.get(i, [])) for i in ids}
        errored = [i for i, s in out.items() if s.state is JobState.ERROR]
        if errored:
            reasons = self._error_reasons(errored)
            for i in errored:
                reason = reasons.get(i) or next((r for k, r in reasons.items() if k.startswith(f"{i}.")), None)
                out[i] = replace(out[i], reason=reason)
        return out

    def find_jobs(self, name: str) -> list[str]:
        """Jobs in the queue named ``name`` (as :func:`safe_job_name` makes it), from one ``qstat -xml``."""
        proc = self._run(["qstat", "-u", "*", "-xml"])
        if proc.returncode != 0:
            raise ClusterError(f"qstat -xml failed (exit {proc.returncode}): {self._output(proc)}")
        wanted = safe_job_name(name)
        return sorted({i.partition(".")[0] for i, st in parse_qstat_xml(proc.stdout).items() if st.name == wanted})

    def _error_reasons(self, job_ids: Sequence[str]) -> dict[str, str]:
        numbers = sorted({i.partition(".")[0] for i in job_ids}, key=int)
        try:
            proc = self._run(["qstat", "-j", ",".join(numbers)])
        except ClusterError as exc:
            log.warning("could not read the error reason of jobs %s: %s", ",".join(numbers), exc)
            return {}
        return parse_qstat_j_error_reason(proc.stdout)  # exit 1 when one of them just vanished: still parse

    # -- exit

    def exit_info(self, job_ids: Iterable[str]) -> dict[str, ExitInfo]:
        """Accounting records of finished jobs; ids without one are left out.

        A job deleted while pending never gets one; an Eqw job already has one (failed 28, never started) while
        it is still listed. Ask once the job has left qstat, and allow for the flush delay.
        """
        valid = []
        for job_id in job_ids:
            with contextlib.suppress(ValueError):
                split_job_id(job_id)
                valid.append(job_id)
        return self.accounting.lookup(valid) if valid else {}

    # -- kill

    def kill(self, job_ids: Sequence[str]) -> None:
        """One ``qdel`` for all ids ("12" or the array element "12.3"); jobs that are already gone are fine."""
        ids = list(dict.fromkeys(job_ids))
        for job_id in ids:
            split_job_id(job_id)  # an id like "-u" must not become a qdel option
        if not ids:
            return
        proc = self._run(["qdel", *ids])
        if proc.returncode == 0:
            return
        lines = [line for line in (proc.stdout + "\n" + proc.stderr).splitlines() if line.strip()]
        problems = [line for line in lines if not _QDEL_FINE_RE.search(line)]
        if problems or not lines:
            raise ClusterError(f"qdel {' '.join(ids)} failed (exit {proc.returncode}): {self._output(proc)}")

    # -- queues and logs

    def queue_limits(self, queue: str | None = None) -> QueueLimits:
        """Limits of a queue (see :func:`parse_queue_limits`), cached for ``limits_ttl`` seconds.

        Cached in this process and, given ``limits_cache_dir``, in a file shared with the host's other processes:
        every Airflow task runs in a process of its own, and the qconf calls would cost each one as much as its qsub.
        """
        name = queue or self.queue or DEFAULT_QUEUE
        cached = self._limits.get(name)
        if cached and time.monotonic() - cached[0] < self.limits_ttl:
            return cached[1]
        key = [self.sge_root, self.sge_cell, name, self.pe]  # the pe's slots cap max_cores
        found = self._read_limits_file(key)
        if found:
            age, limits = found
        else:
            age, limits = 0.0, self._query_limits(name)
            self._write_limits_file(key, limits)
        self._limits[name] = (time.monotonic() - age, limits)
        return limits

    def _query_limits(self, name: str) -> QueueLimits:
        proc = self._run(["qconf", "-sq", _plain(name, "queue")])
        if proc.returncode != 0:
            raise ClusterError(f"queue {name!r}: qconf -sq failed: {self._output(proc)}")
        queue_conf = parse_qconf_object(proc.stdout)
        pe_text = None
        if self.pe in re.split(r"[\s,]+", queue_conf.get("pe_list", "")):
            pe_proc = self._run(["qconf", "-sp", self.pe])
            pe_text = pe_proc.stdout if pe_proc.returncode == 0 else None
        return parse_queue_limits(proc.stdout, pe_text=pe_text, exechost_texts=self._exechost_texts(queue_conf))

    def _limits_file(self, key: list[str]) -> Path | None:
        if self.limits_cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
        return self.limits_cache_dir / f"queue-limits-{digest}.json"

    def _read_limits_file(self, key: list[str]) -> tuple[float, QueueLimits] | None:
        """(age in seconds, limits) from the cache file, or None when it is missing, stale or unreadable."""
        path = self._limits_file(key)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
            age = time.time() - float(data["written"])
            limits = QueueLimits(**data["limits"])
            if data["key"] != key or asdict(limits) != data["limits"] or not _plausible(limits):
                raise ValueError("not a cache entry for this queue")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.debug("ignoring queue limits cache %s: %s", path, exc)
            return None
        return (age, limits) if 0 <= age < self.limits_ttl else None

    def _write_limits_file(self, key: list[str], limits: QueueLimits) -> None:
        """Replace the cache file atomically; a failure is only logged (it must not fail a submission)."""
        path = self._limits_file(key)
        if path is None:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"key": key, "written": time.time(), "limits": asdict(limits)}, f)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except (OSError, ValueError, TypeError) as exc:
            log.debug("could not write queue limits cache %s: %s", path, exc)

    def _exechost_texts(self, queue_conf: Mapping[str, str], max_hosts: int = 32) -> list[str]:
        """``qconf -se`` of the queue's hosts (host groups resolved), or none for a queue of many hosts."""
        hosts: list[str] = []
        for entry in re.split(r"[\s,]+", queue_conf.get("hostlist", "")):
            if entry.startswith("@"):
                proc = self._run(["qconf", "-shgrp_resolved", entry])
                hosts += proc.stdout.split() if proc.returncode == 0 else []
            elif entry and entry != "NONE":
                hosts.append(entry)
        if len(hosts) > max_hosts:
            log.debug("queue has %d hosts: not reading their h_vmem capacity", len(hosts))
            return []
        texts = []
        for host in hosts:
            proc = self._run(["qconf", "-se", host])
            if proc.returncode == 0:
                texts.append(proc.stdout)
        return texts

    def log_paths(self, job: JobRequest, job_id: str, element: int | None = None) -> tuple[Path, Path]:
        return log_file_paths(job.log_dir, job.name, job_id, element)


def _plausible(limits: QueueLimits) -> bool:
    """Whether limits read back from JSON have the types :func:`parse_queue_limits` gives them."""
    numbers = [(limits.max_cores, int), (limits.max_memory, float), (limits.max_runtime, int)]
    return isinstance(limits.name, str) and all(v is None or type(v) is t for v, t in numbers)


def _array_status(job_id: str, elements: Sequence[JobStatus]) -> JobStatus:
    """The status of "J" when only its elements "J.N" are listed: the most pressing one; GONE when none is."""
    if not elements:
        return JobStatus(job_id, JobState.GONE)
    states = {s.state for s in elements}
    state = next(s for s in ARRAY_STATE_PRECEDENCE if s in states)
    return JobStatus(job_id, state, ",".join(sorted({s.raw for s in elements})))


# --------------------------------------------------------------------------------------------------------------
# One qstat per interval for every watcher in the process
