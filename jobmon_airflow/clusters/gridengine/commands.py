"""Grid Engine command lines (pure): the qsub argv, the job script on its standard input, job names and ids, and the
site options of a ``gridengine`` connection (memory resource, extra ``-l`` resources, extra qsub arguments).

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
* The script's first act is ``chmod 600`` of the job's ``.o``/``.e`` files (``$SGE_STDOUT_PATH``,
  ``$SGE_STDERR_PATH``): the shepherd creates them before the script runs, with execd's umask (0644, verified), so
  a ``umask`` in the script would come too late for them.
* The environment goes into the script rather than ``-v``: ``-v A=x,y`` splits the value at the comma (verified).
* ``-wd <log_dir>`` rather than ``-cwd``: the submitting process's working directory (an Airflow worker's) means
  nothing on the execution host, while the log directory exists (submit creates it) and is where a job's stray files
  are easiest to find. Commands should use absolute paths.
* ``-w e`` makes qsub refuse, with Grid Engine's reason, a job that no queue can ever run (else it waits forever).
* Memory, with the default ``memory_resource="h_vmem"``, is booked per slot: ``-l h_vmem=<memory / cores>`` with
  ``-pe smp <cores>`` gives the job ``memory`` in all (RLIMIT_AS = h_vmem × slots). With ``"m_mem_free"`` (Univa
  Grid Engine, as at IHME) the whole job's memory is asked for: ``-l m_mem_free=<memory>``, as Jobmon's own SGE
  executor did (``-l m_mem_free=<mem>G`` next to ``-l fthread=<cores>``; ``reference/jobmon-domain.md`` §7), which
  is right where m_mem_free is a per-job consumable. Where a site makes it per slot, a multi-core job gets
  ``memory × cores``: more than asked, never less.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobmon_airflow.clusters.base import JobRequest, SubmissionError, split_job_id
from jobmon_airflow.resources import Resources, format_memory, format_runtime

DEFAULT_SGE_ROOT = "/var/lib/gridengine"
DEFAULT_SGE_CELL = "default"
DEFAULT_QUEUE = "all.q"  # Grid Engine's stock queue: whose limits apply when neither job nor cluster names a queue
DEFAULT_PE = "smp"  # a $pe_slots parallel environment: all of a job's cores on one host
DEFAULT_COMMAND_TIMEOUT_S = 60.0
DEFAULT_MEMORY_RESOURCE = "h_vmem"
MEMORY_RESOURCES = ("h_vmem", "m_mem_free")  # per slot / per job (see the module docstring)
MAX_JOB_NAME = 64  # keeps "<name>.o<job id>.<task>" far below file-name limits

_NAME_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]")
_PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESOURCE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_BAD_RESOURCE_VALUE_RE = re.compile(r"[\s,\x00-\x1f\x7f]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

#: qsub options the backend sets itself (or that would break how it submits), with the reason given on refusal.
BACKEND_QSUB_OPTIONS: dict[str, str] = {
    "-terse": "the job id is read from qsub -terse",
    "-b": "the job is a script on qsub's standard input (-b n)",
    "-S": "the job script runs under /bin/sh",
    "-C": "qsub must not read directives from the job script",
    "-N": "the job name is derived from the task (re-attach finds jobs by name)",
    "-o": "logs go to the job's log directory",
    "-e": "logs go to the job's log directory",
    "-j": "stdout and stderr go to separate files in the log directory",
    "-wd": "the working directory is the job's log directory",
    "-cwd": "the working directory is the job's log directory",
    "-t": "arrays are set by the array operator (array_length)",
    "-tc": "arrays are set by the array operator (max_concurrent)",
    "-V": "the job's environment goes into its script",
    "-v": "the job's environment goes into its script",
    "-w": "qsub -w e refuses jobs that can never run",
    "-pe": "cores come from compute_resources.cores (the parallel environment from the connection's pe extra)",
    "-q": "the queue comes from compute_resources.queue or the connection's queue extra",
    "-P": "the project comes from compute_resources.project or the connection's project extra",
    "-sync": "qsub must return as soon as the job is submitted",
    "-clear": "it would drop the options the backend set",
    "-@": "an options file could hold any option",
    "-verify": "qsub would not submit the job",
    "-help": "qsub would not submit the job",
}
#: qsub options without a value (every other option takes exactly one).
QSUB_FLAGS = frozenset({"-h", "-hard", "-soft", "-notify", "-cwd", "-terse", "-V", "-clear", "-verify", "-help"})


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


def check_job_id(job_id: str) -> tuple[str, int | None]:
    """:func:`~jobmon_airflow.clusters.base.split_job_id` for Grid Engine's numeric ids: ValueError for others
    (an id like "-u" must never reach qdel's command line)."""
    try:
        number, element = split_job_id(job_id)
    except ValueError:
        number = ""
    if not number.isdigit():
        raise ValueError(f"not a Grid Engine job id (expected '123' or '123.4'): {job_id!r}")
    return number, element


def job_script(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The ``/bin/sh`` script that runs ``argv`` exactly as given (each word single-quoted) with ``env`` exported."""
    if not argv:
        raise SubmissionError("job argv: expected at least the program to run, got an empty argv")
    for i, word in enumerate(argv):
        if not isinstance(word, str) or "\0" in word:
            raise SubmissionError(f"job argv[{i}]: expected a string without NUL bytes, got {word!r}")
    lines = [
        "#!/bin/sh",
        "# Generated by jobmon-airflow: runs the command below exactly, every word single-quoted.",
        # The shepherd created the job's .o/.e files before this script, with execd's umask (readable by every
        # local user, whatever the job's umask): make them this user's only before anything is written to them.
        'for f in "${SGE_STDOUT_PATH-}" "${SGE_STDERR_PATH-}"; do',
        '  [ -f "$f" ] && [ ! -L "$f" ] && chmod 600 -- "$f" 2>/dev/null',
        "done",
    ]
    for key, value in (env or {}).items():
        if not _ENV_NAME_RE.match(key) or "\0" in value:
            raise SubmissionError(
                f"job env: expected NAME=value with NAME like [A-Za-z_][A-Za-z0-9_]* and no NUL, got {key!r}={value!r}"
            )
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append("exec " + " ".join(shlex.quote(word) for word in argv))
    return "\n".join(lines) + "\n"


# -- site options ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteOptions:
    """A site's additions to every qsub, validated by :func:`site_options`."""

    memory_resource: str = DEFAULT_MEMORY_RESOURCE
    extra_resources: tuple[tuple[str, str], ...] = ()  # appended as -l name=value
    extra_qsub_args: tuple[str, ...] = ()  # appended as they are, one argv element each


def _backend_resources(memory_resource: str) -> dict[str, str]:
    """``-l`` resources the backend requests itself (lower case), with the reason given on refusal."""
    return {
        "h_rt": "runtime comes from compute_resources.runtime",
        "h_vmem": "memory comes from compute_resources.memory",
        memory_resource.lower(): "memory comes from compute_resources.memory",
        "qname": "the queue comes from compute_resources.queue",
        "q": "the queue comes from compute_resources.queue",
    }


def _resource(name: object, value: object, what: str, refused: Mapping[str, str]) -> tuple[str, str]:
    """One checked ``-l`` request; ValueError naming ``what`` (the extra and its element) otherwise."""
    if not isinstance(name, str) or not _RESOURCE_NAME_RE.match(name):
        raise ValueError(f"{what}: expected a resource name like [A-Za-z_][A-Za-z0-9_.-]*, got {name!r}")
    if name.lower() in refused:
        raise ValueError(f"{what}: {name} is requested by the backend itself ({refused[name.lower()]})")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what}: expected a string or number as the value of {name}, got {value!r}")
    text = str(value)
    if not text or _BAD_RESOURCE_VALUE_RE.search(text):
        raise ValueError(f"{what}: the value of {name} must be non-empty without spaces, commas or control characters")
    return name, text


def _extra_resources(extra: object, refused: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    if extra is None:
        return ()
    if isinstance(extra, Mapping):
        return tuple(_resource(k, v, f"extra_resources {k!r}", refused) for k, v in extra.items())
    if isinstance(extra, str) or not isinstance(extra, Sequence):
        raise ValueError(
            f"extra_resources: expected a mapping {{name: value}} or a list of 'name=value', got {extra!r}"
        )
    out = []
    for item in extra:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"extra_resources: expected 'name=value' items, got {item!r}")
        name, _, value = item.partition("=")
        out.append(_resource(name, value, f"extra_resources {item!r}", refused))
    return tuple(out)


def _extra_qsub_args(extra: object, refused: Mapping[str, str]) -> tuple[str, ...]:
    """Every element an option (starting with '-') or the one value of the option before it: a stray word would be
    taken by qsub for the job script."""
    if extra is None:
        return ()
    if isinstance(extra, str) or not isinstance(extra, Sequence):
        raise ValueError(f"extra_qsub_args: expected a list of strings (one qsub argument each), got {extra!r}")
    args = list(extra)
    for arg in args:
        if not isinstance(arg, str) or _CONTROL_RE.search(arg):
            raise ValueError(f"extra_qsub_args: expected strings without control characters, got {arg!r}")
    i = 0
    while i < len(args):
        option = args[i]
        if option in BACKEND_QSUB_OPTIONS:
            raise ValueError(f"extra_qsub_args: {option!r} is set by the backend ({BACKEND_QSUB_OPTIONS[option]})")
        if not option.startswith("-") or option == "-":
            raise ValueError(
                f"extra_qsub_args: expected an option starting with '-' at position {i}, got {option!r} "
                "(qsub would take it for the job script)"
            )
        if option in QSUB_FLAGS:
            i += 1
            continue
        if i + 1 >= len(args):
            raise ValueError(f"extra_qsub_args: {option!r} needs a value")
        if option == "-l":
            for item in args[i + 1].split(","):
                name, _, value = item.partition("=")
                _resource(name, value, f"extra_qsub_args '-l {args[i + 1]}'", refused)
        i += 2
    return tuple(args)


def site_options(
    memory_resource: str = DEFAULT_MEMORY_RESOURCE,
    extra_resources: Mapping[str, str | int | float] | Sequence[str] | None = None,
    extra_qsub_args: Sequence[str] | None = None,
) -> SiteOptions:
    """Checked site options; ValueError naming the option and the offending element otherwise."""
    if memory_resource not in MEMORY_RESOURCES:
        raise ValueError(f"memory_resource: expected one of {', '.join(MEMORY_RESOURCES)}, got {memory_resource!r}")
    refused = _backend_resources(memory_resource)
    return SiteOptions(
        memory_resource, _extra_resources(extra_resources, refused), _extra_qsub_args(extra_qsub_args, refused)
    )


def memory_request(resources: Resources, memory_resource: str = DEFAULT_MEMORY_RESOURCE) -> str:
    """The ``-l`` memory request: h_vmem per slot (memory / cores), m_mem_free for the whole job."""
    if memory_resource == "h_vmem":
        return f"h_vmem={format_memory(resources.memory / resources.cores)}"
    return f"{memory_resource}={format_memory(resources.memory)}"


# -- qsub -----------------------------------------------------------------------------------------------------


def _sge_path(path: Path, what: str) -> str:
    """An absolute path that qsub takes literally: no ':' (host:path), ',' (path lists) or '$' (qsub variables)."""
    text = str(path.absolute())
    bad = sorted({c for c in text if c in ":,$\n"})
    if bad:
        raise SubmissionError(f"{what}: Grid Engine would misread {''.join(bad)!r} in the path {text!r}")
    return text


def plain_name(value: str, what: str) -> str:
    """A queue, project or PE name that cannot pass for an option or carry anything else."""
    if not _PLAIN_NAME_RE.match(value):
        raise SubmissionError(f"{what}: expected a plain name (letters, digits, _.@-), got {value!r}")
    return value


def qsub_argv(
    job: JobRequest,
    *,
    queue: str | None = None,
    project: str | None = None,
    pe: str = DEFAULT_PE,
    site: SiteOptions | None = None,
) -> list[str]:
    """The qsub command line for ``job``; the job script (:func:`job_script`) goes to its standard input.

    ``queue``/``project`` are defaults for a job whose resources name none; ``site`` adds the connection's extras
    last (checked by :func:`site_options`).
    """
    res, site = job.resources, site or SiteOptions()
    log_dir = _sge_path(job.log_dir, "log_dir")
    argv = ["qsub", "-terse", "-b", "n", "-C", "", "-S", "/bin/sh", "-N", safe_job_name(job.name)]
    argv += ["-o", f"{log_dir}/", "-e", f"{log_dir}/", "-wd", log_dir, "-w", "e"]
    argv += ["-l", memory_request(res, site.memory_resource), "-l", f"h_rt={format_runtime(res.runtime)}"]
    if res.cores > 1:
        argv += ["-pe", plain_name(pe, "parallel environment"), str(res.cores)]
    if chosen_queue := res.queue or queue:
        argv += ["-q", plain_name(chosen_queue, "queue")]
    if chosen_project := res.project or project:
        argv += ["-P", plain_name(chosen_project, "project")]
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
    for name, value in site.extra_resources:
        argv += ["-l", f"{name}={value}"]
    argv += site.extra_qsub_args
    return argv
