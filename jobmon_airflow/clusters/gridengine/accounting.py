"""Grid Engine's accounting file: its record format, how a record's outcome is classified, and a reader that finds
jobs' records in a large, growing file.

The parsers and :func:`classify_exit` are pure (tested on recorded lines in ``tests/data/gridengine/``);
:class:`AccountingReader` reads the file. Raw file rather than ``qacct``: qacct 8.1.9 prints ru_maxrss in the wrong
unit (``reference/gridengine.md`` §5.3), and one read serves many jobs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from jobmon_airflow.clusters.base import ClusterError, ExitInfo, ExitKind
from jobmon_airflow.exit_codes import is_memory_kill
from jobmon_airflow.resources import ResourceError, parse_memory, parse_runtime

log = logging.getLogger(__name__)

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
    memory_resource: str = "h_vmem",
) -> tuple[ExitKind, str | None, str]:
    """How a job ended, from accounting: (kind, resource for RESOURCE_KILL, human-readable reason).

    ``failed`` is the accounting code (37, or qacct's "37  : qmaster enforced …"); ``h_vmem_bytes`` is the job's
    whole memory limit (for h_vmem the per-slot request × slots), named ``memory_resource`` in the reason. Rules,
    as observed on SGE 8.1.9 (``reference/gridengine.md`` §6):

    ======================  ============  =====================================================================
    failed                  exit_status   outcome
    ======================  ============  =====================================================================
    0                       0             DONE
    0                       137, 247      RESOURCE_KILL memory (killed from outside, e.g. the OOM killer; Jobmon's
                                          :data:`~jobmon_airflow.exit_codes.MEMORY_KILL_EXIT_STATUSES`)
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
        f"exceeded memory {memory_resource}={_fmt_bytes(h_vmem_bytes)} "
        f"(maxvmem {_fmt_bytes(maxvmem_bytes)}; {failed_text})"
        if h_vmem_bytes is not None and maxvmem_bytes is not None
        else f"killed for memory ({failed_text}, exit status {exit_status})",
    )
    if code == 0:
        if exit_status == 0:
            return ExitKind.DONE, None, "exit status 0"
        if is_memory_kill(exit_status):
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


#: Byte counts are stored in BIGINT columns (task_instance.maxrss): a larger one is no count Grid Engine wrote.
MAX_BYTES = 2**63 - 1


def _float(fields: Mapping[str, str], key: str) -> float:
    """A numeric field; ClusterError naming it when it is not a finite number ('nan', 'inf', '1e400')."""
    try:
        value = float(fields[key])
    except ValueError:
        raise ClusterError(f"accounting: field {key} is not a number: {fields[key][:200]!r}") from None
    if not math.isfinite(value):
        raise ClusterError(f"accounting: field {key} is not a finite number: {fields[key][:200]!r}")
    return value


def _bytes(fields: Mapping[str, str], key: str, value: float) -> int:
    """Field ``key``'s ``value`` in bytes as a whole number that fits a BIGINT column, or ClusterError naming it."""
    if abs(value) > MAX_BYTES:
        raise ClusterError(f"accounting: field {key} is too large for a byte count: {fields[key][:200]!r}")
    return round(value)


def parse_accounting_line(line: str, memory_resource: str = "h_vmem") -> ExitInfo:
    """One line of the raw accounting file (45 ':'-separated fields) → :class:`ExitInfo` with the outcome.

    ``memory_resource`` is the ``-l`` request that carries the job's memory: h_vmem per slot, m_mem_free per job.
    """
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
        # What the job asked for, as Grid Engine enforced it: not held to the bounds of a Jobmon request.
        h_rt_s = float(parse_runtime(requests["h_rt"], bounded=False)) if "h_rt" in requests else None
        # h_vmem is requested per slot; the job's limit (its RLIMIT_AS) is that times its slots.
        per = slots if memory_resource == "h_vmem" else 1
        memory = requests.get(memory_resource)
        memory_limit = parse_memory(memory, bounded=False) * 1024**3 * per if memory is not None else None
    except ResourceError as exc:
        raise ClusterError(
            f"accounting: job {job_id}: unreadable request in category {fields['category']!r}: {exc}"
        ) from None
    wallclock = _float(fields, "ru_wallclock")
    maxvmem = _float(fields, "maxvmem")
    maxvmem_bytes = _bytes(fields, "maxvmem", maxvmem)
    maxrss_bytes = _bytes(fields, "ru_maxrss", _float(fields, "ru_maxrss") * 1024)  # KB in the file
    kind, resource, reason = classify_exit(
        fields["failed"],
        exit_status,
        wallclock_s=wallclock,
        h_rt_s=h_rt_s,
        maxvmem_bytes=maxvmem,
        h_vmem_bytes=memory_limit,
        memory_resource=memory_resource,
    )
    start, end = _float(fields, "start_time"), _float(fields, "end_time")
    return ExitInfo(
        job_id=job_id,
        kind=kind,
        exit_status=exit_status,
        reason=reason,
        resource=resource,
        hostname=fields["hostname"],
        maxrss_bytes=maxrss_bytes,
        maxvmem_bytes=maxvmem_bytes,
        wallclock_s=wallclock,
        cpu_s=_float(fields, "cpu"),
        start_time=start or None,  # 0 when the job never started
        end_time=end or None,
        slots=slots,
        granted_pe=None if fields["granted_pe"] == "NONE" else fields["granted_pe"],
    )


def parse_accounting(text: str, memory_resource: str = "h_vmem") -> dict[str, ExitInfo]:
    """All records of raw accounting text by job id; a later record of the same id wins; '#' lines are skipped.

    Records end at '\\n' only (as :class:`AccountingReader` reads them), a trailing '\\r' dropped: a free field
    (a job name) may hold any other line break str.splitlines() would split at ('\\f', '\\x85', '\\u2028', …).
    """
    out: dict[str, ExitInfo] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        if not line.strip() or line.startswith("#"):
            continue
        try:
            info = parse_accounting_line(line, memory_resource)
        except ClusterError as exc:
            raise ClusterError(f"accounting line {number}: {exc}") from None
        out[info.job_id] = info
    return out


# -- the file ---------------------------------------------------------------------------------------------------


class AccountingReader:
    """Finds jobs' newest records in the raw accounting file without reading a large file again and again.

    The file only grows (until rotated). An id asked about for the first time is looked for backwards from the
    end, up to ``max_scan_bytes`` (the record of a job that just left qstat is near the end); an id asked about
    before is only looked for in the bytes added since. Found records are kept. The line being written (no
    newline yet) is left for the next call. Safe to call from several threads (pollers run in threads).
    """

    CHUNK = 1 << 20
    MAX_REMEMBERED = 100_000

    def __init__(self, path: Path, max_scan_bytes: int = 256 << 20, memory_resource: str = "h_vmem") -> None:
        self.path = path
        self.max_scan_bytes = max_scan_bytes
        self.memory_resource = memory_resource
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
                info = parse_accounting_line(line.decode("utf-8", errors="replace"), self.memory_resource)
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
