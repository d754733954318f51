"""Parsers of Grid Engine's answers (pure, no I/O; tested on recorded output in ``tests/data/gridengine/``):
``qsub -terse``, ``qstat -xml``, ``qstat -j``, ``qconf``, and the messages that mean the qmaster is unreachable.
The accounting file has its own module, :mod:`jobmon_airflow.clusters.gridengine.accounting`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence

from jobmon_airflow.clusters.base import ClusterError, JobState, JobStatus
from jobmon_airflow.resources import QueueLimits, ResourceError, parse_memory, parse_runtime

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

#: Messages of a client that could not talk to the qmaster (recorded in ``tests/data/gridengine``: a refused
#: connection, an unresolvable or refusing master host, access denied at connect).
_COMMUNICATION_RE = re.compile(
    r"commlib error|unable to (?:send message to|contact) qmaster|failed receiving gdi request response"
)
#: ... of those, the ones that prove the request never reached the qmaster,
_NOT_SENT_RE = re.compile(r"unable to (?:send message to|contact) qmaster")
#: ... unless its answer was lost instead: then a qsub may have created the job.
_NO_ANSWER_RE = re.compile(r"failed receiving gdi request response")
_TERSE_RE = re.compile(r"^(\d+)(?:\.\d+-\d+:\d+)?$")
_TASK_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
_ERROR_REASON_RE = re.compile(r"^error reason\s+(\d+):\s*(.*)$")
# qdel lines that are no failure: deleted now, being deleted, or gone already (exit 1 all the same).
_QDEL_FINE_RE = re.compile(r"has (registered the job|deleted job)|is already in deletion|does not exist")
# qalter -tc lines that are no failure: changed, or the job is gone already (exit 1 all the same).
_QALTER_FINE_RE = re.compile(r"modified task concurrency of job|does not exist")


def communication_failed(output: str) -> bool:
    """Whether a failed command's output says it could not talk to the qmaster (a transient outage)."""
    return bool(_COMMUNICATION_RE.search(output))


def request_not_sent(output: str) -> bool:
    """Whether a failed command's output proves its request never reached the qmaster: nothing was done, so even a
    qsub can be run again without submitting twice."""
    return bool(_NOT_SENT_RE.search(output)) and not _NO_ANSWER_RE.search(output)


def qdel_problems(output: str) -> list[str]:
    """Lines of qdel's output that are real failures (jobs already gone or being deleted are fine)."""
    return [line for line in output.splitlines() if line.strip() and not _QDEL_FINE_RE.search(line)]


def qalter_problems(output: str) -> list[str]:
    """Lines of ``qalter -tc``'s output that are real failures (jobs that ended meanwhile are fine)."""
    return [line for line in output.splitlines() if line.strip() and not _QALTER_FINE_RE.search(line)]


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


def array_status(job_id: str, elements: Sequence[JobStatus]) -> JobStatus:
    """The status of "J" when only its elements "J.N" are listed: the most pressing one; GONE when none is."""
    if not elements:
        return JobStatus(job_id, JobState.GONE)
    states = {s.state for s in elements}
    state = next(s for s in ARRAY_STATE_PRECEDENCE if s in states)
    return JobStatus(job_id, state, ",".join(sorted({s.raw for s in elements})))


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


# -- qconf ----------------------------------------------------------------------------------------------------


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


def parse_queue_list(text: str) -> list[str]:
    """The cluster queues of ``qconf -sql``, one per line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _queue_values(value: str) -> list[str]:
    """A queue attribute's default and per-host values: "1,[vm=2],[@big=8]" → ["1", "2", "8"]."""
    default, *overrides = re.split(r",\s*(?=\[)", value)
    return [default.strip()] + [o.strip("[] ").partition("=")[2] for o in overrides]


def _largest(values: Iterable[str], parse: Callable[[str], float], what: str) -> float | None:
    """The largest of limit values; None (unlimited) when any is INFINITY; ClusterError for a value that is not
    a number, or one too large to be one (a whole number past the float range)."""
    parsed = []
    for value in values:
        if value.upper() == "INFINITY":
            return None
        try:
            parsed.append(float(parse(value)))
        except (ResourceError, ValueError, OverflowError):
            raise ClusterError(f"qconf: unreadable {what} value {value[:200]!r}") from None
    return max(parsed) if parsed else None


def _memory_limit(value: str) -> float:
    """A memory limit as the cluster states it: any finite amount (a job's request is bounded, a queue's not)."""
    return parse_memory(value, bounded=False)


def _runtime_limit(value: str) -> float:
    """A runtime limit as the cluster states it: any finite time."""
    return parse_runtime(value, bounded=False)


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
    runtime = _largest(_queue_values(queue.get("h_rt", "INFINITY")), _runtime_limit, "h_rt")
    memory_bounds: list[float] = []
    per_slot = _largest(_queue_values(queue.get("h_vmem", "INFINITY")), _memory_limit, "h_vmem")
    if per_slot is not None and cores is not None:
        memory_bounds.append(per_slot * cores)
    host_memory = []
    for text in exechost_texts:
        for item in parse_qconf_object(text).get("complex_values", "NONE").split(","):
            key, _, value = item.strip().partition("=")
            if key == "h_vmem":
                host_memory.append(value)
    if host_memory:
        largest_host = _largest(host_memory, _memory_limit, "host h_vmem")
        if largest_host is not None:
            memory_bounds.append(largest_host)
    return QueueLimits(
        name=queue["qname"],
        max_cores=int(cores) if cores is not None else None,
        max_memory=min(memory_bounds) if memory_bounds else None,
        max_runtime=int(runtime) if runtime is not None else None,
    )
