"""Properties of the Grid Engine parsers: ``qstat -xml``, task ranges, accounting lines, exit classification, qconf.

Generated documents and lines follow the recorded real outputs in ``tests/data/gridengine`` (see
``tests/unit/clusters/test_gridengine_parsers.py``): well-formed input must round-trip exactly, and anything else
must fail with the documented error (``ClusterError``; ``ValueError`` for :func:`expand_task_ranges`), never with
another exception.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from jobmon_airflow.clusters.base import ClusterError, ExitKind, JobState
from jobmon_airflow.clusters.gridengine import (
    ACCOUNTING_FIELDS,
    FAILED_TEXT,
    classify_exit,
    decode_state,
    expand_task_ranges,
    parse_accounting,
    parse_accounting_line,
    parse_qconf_object,
    parse_qstat_xml,
    parse_queue_limits,
)
from jobmon_airflow.exit_codes import MEMORY_KILL_EXIT_STATUSES, MEMORY_KILL_RETURNCODES
from jobmon_airflow.resources import format_memory, format_runtime, parse_memory

GIB = 1024**3
#: Every accepted task range expands to at most this many ids in the generated garbage: a range such as
#: "1-99999999999" is expanded in full (Grid Engine never prints one: an array has at most max_aj_tasks elements).
MAX_EXPANDED = 100_000

# --------------------------------------------------------------------------------------------------------------
# qstat -xml: generated documents

#: Letters of the qstat state string, by the state they mean (an oracle written apart from the parser's table).
ERROR_LETTERS, DELETING_LETTERS, SUSPENDED_LETTERS, RUNNING_LETTERS, PENDING_LETTERS = "E", "d", "sST", "rtR", "qwh"
KNOWN_LETTERS = ERROR_LETTERS + DELETING_LETTERS + SUSPENDED_LETTERS + RUNNING_LETTERS + PENDING_LETTERS
REAL_STATES = ["r", "t", "Rr", "Rt", "hr", "qw", "hqw", "Eqw", "Ehqw", "dr", "dt", "ds", "dqw", "s", "S", "T", "St"]


def expected_state(raw: str) -> JobState:
    """What a state string means: any unknown letter (or none) is UNKNOWN, else the most pressing letter wins."""
    letters = set(raw.strip())
    if not letters or any(letter not in KNOWN_LETTERS for letter in letters):
        return JobState.UNKNOWN
    for group, state in (
        (ERROR_LETTERS, JobState.ERROR),
        (DELETING_LETTERS, JobState.DELETING),
        (SUSPENDED_LETTERS, JobState.SUSPENDED),
        (RUNNING_LETTERS, JobState.RUNNING),
    ):
        if letters & set(group):
            return state
    return JobState.PENDING


def xml_chars(*, exclude: str = "") -> st.SearchStrategy[str]:
    """Characters XML 1.0 can carry (no control characters but tab and newline; \\r is normalised away)."""
    return st.characters(
        exclude_categories=["Cs", "Cc"],
        exclude_characters="\ufffe\uffff" + exclude,
        include_characters="\t\n",
    )


state_strings = st.one_of(
    st.sampled_from(REAL_STATES),
    st.text(st.sampled_from(KNOWN_LETTERS), min_size=1, max_size=5),
    st.text(xml_chars(), max_size=4),
)
#: Job names with odd characters: quotes, markup, ampersands, unicode, spaces at the ends.
job_names = st.one_of(
    st.text(xml_chars(), max_size=30),
    st.sampled_from(["arr", "eqw", "a&b", "<job>", "it's", 'say "hi"', "ünï", " pad ", "x]]>y", "$(id)"]),
)


@dataclass(frozen=True)
class Segment:
    """A piece of a task list as qstat prints it: "7", "3-5:1" (last may be past the final element)."""

    first: int
    last: int
    step: int
    as_range: bool

    def text(self) -> str:
        return f"{self.first}-{self.last}:{self.step}" if self.as_range else str(self.first)

    def tasks(self) -> list[int]:
        return list(range(self.first, self.last + 1, self.step))


@st.composite
def task_lists(draw: st.DrawFn, max_segments: int = 4) -> list[Segment]:
    """Disjoint, increasing segments, as qstat lists the pending elements of an array."""
    segments: list[Segment] = []
    cursor = draw(st.integers(1, 50))
    for _ in range(draw(st.integers(1, max_segments))):
        first = cursor + draw(st.integers(0, 5))
        if draw(st.booleans()):
            step = draw(st.integers(1, 4))
            count = draw(st.integers(1, 6))
            last = first + step * (count - 1) + draw(st.integers(0, step - 1))  # an unaligned end is allowed
            segments.append(Segment(first, last, step, True))
            cursor = last + 1
        else:
            segments.append(Segment(first, first, 1, False))
            cursor = first + 1
    return segments


@dataclass(frozen=True)
class Entry:
    """One ``job_list`` element: a job, a running array element, or a pending range of array elements."""

    number: int
    state: str
    name: str
    tasks: list[Segment] | None  # None: a single job (no <tasks>)
    running: bool

    def ids(self) -> list[str]:
        if self.tasks is None:
            return [str(self.number)]
        return [f"{self.number}.{t}" for segment in self.tasks for t in segment.tasks()]

    def xml(self, draw: st.DrawFn) -> str:
        def text(value: str) -> str:
            if value and "]]>" not in value and draw(st.booleans()):
                return f"<![CDATA[{value}]]>"
            return escape(value)

        pad = draw(st.sampled_from(["", " ", "\n      ", "\t"]))
        children = [
            f"<JB_job_number>{pad}{self.number}{pad}</JB_job_number>",
            "<JAT_prio>0.50000</JAT_prio>",
            f"<JB_name>{text(self.name)}</JB_name>",
            "<JB_owner>root</JB_owner>",
            f"<state>{pad}{text(self.state)}{pad}</state>",
            "<queue_name>all.q@vm</queue_name>" if self.running else "<queue_name></queue_name>",
            "<slots>1</slots>",
        ]
        if self.tasks is not None:
            children.append(f"<tasks>{pad}{','.join(s.text() for s in self.tasks)}{pad}</tasks>")
        children = draw(st.permutations(children))  # the parser finds children by name, not by position
        kind = "running" if self.running else "pending"
        return f'    <job_list state="{kind}">\n      ' + "\n      ".join(children) + "\n    </job_list>\n"


@st.composite
def qstat_documents(draw: st.DrawFn) -> tuple[str, list[Entry]]:
    """A ``qstat -u '*' -xml`` document of single jobs and arrays (running elements one by one, pending ranges)."""
    numbers = draw(st.lists(st.integers(1, 10**9), unique=True, max_size=8))
    entries: list[Entry] = []
    for number in numbers:
        name = draw(job_names)
        if draw(st.booleans()):  # a single job
            entries.append(Entry(number, draw(state_strings), name, None, draw(st.booleans())))
            continue
        # Some leading elements run, each its own job_list with one task; the rest are pending, listed with the
        # segments left whole and the remainder of a partly running segment as single tasks.
        segments = draw(task_lists())
        tasks = [t for s in segments for t in s.tasks()]
        n_running = draw(st.integers(0, min(3, len(tasks))))
        started = set(tasks[:n_running])
        for t in tasks[:n_running]:
            entries.append(Entry(number, draw(state_strings), name, [Segment(t, t, 1, False)], True))
        waiting: list[Segment] = []
        for segment in segments:
            if started.isdisjoint(segment.tasks()):
                waiting.append(segment)
            else:
                waiting += [Segment(t, t, 1, False) for t in segment.tasks() if t not in started]
        if waiting:
            entries.append(Entry(number, draw(state_strings), name, waiting, False))
    running = [e for e in entries if e.running]
    pending = [e for e in entries if not e.running]
    header = draw(st.sampled_from(["<?xml version='1.0'?>\n", '<?xml version="1.0" encoding="UTF-8"?>\n', ""]))
    ns = ' xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd"'
    queue_info = "".join(e.xml(draw) for e in running)
    job_info = "".join(e.xml(draw) for e in pending)
    document = (
        f"{header}<job_info {ns}>\n  <queue_info>\n{queue_info}  </queue_info>\n"
        f"  <job_info>\n{job_info}  </job_info>\n</job_info>\n"
    )
    return document, entries


@given(qstat_documents())
def test_qstat_xml_every_job_round_trips(doc: tuple[str, list[Entry]]) -> None:
    text, entries = doc
    statuses = parse_qstat_xml(text)
    expected = {}
    for entry in entries:
        for job_id in entry.ids():
            expected[job_id] = (expected_state(entry.state), entry.state.strip(), entry.name.strip())
    assert {k: (s.state, s.raw, s.name) for k, s in statuses.items()} == expected
    assert all(s.job_id == k and s.reason is None for k, s in statuses.items())


@given(st.text(st.sampled_from(KNOWN_LETTERS + "xz Ä\t"), max_size=6))
def test_decode_state_matches_the_letter_table(raw: str) -> None:
    assert decode_state(raw) is expected_state(raw)


# --------------------------------------------------------------------------------------------------------------
# qstat -xml: garbage


def _expansion_bounded(text: str) -> bool:
    """Every range in ``text`` is small (see :data:`MAX_EXPANDED`)."""
    for m in re.finditer(r"(\d+)\s*-\s*(\d+)(?:\s*:\s*(\d+))?", text):
        try:
            first, last, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        except ValueError:  # beyond Python's int digit limit: the parser rejects it too
            continue
        if last - first > MAX_EXPANDED * max(step, 1):
            return False
    return True


def assert_only_cluster_error(text: str) -> None:
    try:
        result = parse_qstat_xml(text)
    except ClusterError as exc:
        assert str(exc).startswith("qstat -xml: ")
        return
    assert isinstance(result, dict)
    for job_id, status in result.items():
        assert status.job_id == job_id
        assert isinstance(status.state, JobState)


@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))))
@example("")
@example("<job_info/>")
@example("<job_info><job_list><JB_job_number>1</JB_job_number><tasks>3-x</tasks></job_list></job_info>")
@example("<!DOCTYPE x [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]><job_info>&b;</job_info>")
def test_qstat_xml_arbitrary_text_raises_only_cluster_error(text: str) -> None:
    assume(_expansion_bounded(text))
    assert_only_cluster_error(text)


field_garbage = st.one_of(
    st.text(xml_chars(), max_size=12),
    st.integers(-(10**6), 10**400).map(str),
    st.text(st.sampled_from("0123456789-:,. "), max_size=12),
)


@st.composite
def mutated_documents(draw: st.DrawFn) -> str:
    """A well-formed document with its fields replaced by garbage, elements dropped, or characters cut out."""
    text, _ = draw(qstat_documents())
    for tag in ("JB_job_number", "tasks", "state", "JB_name"):
        if draw(st.booleans()):

            def garbage(_match: re.Match[str], tag: str = tag) -> str:
                return f"<{tag}>{escape(draw(field_garbage))}</{tag}>"

            text = re.sub(rf"<{tag}>.*?</{tag}>", garbage, text, count=draw(st.integers(0, 3)), flags=re.DOTALL)
    if draw(st.booleans()) and text:
        start = draw(st.integers(0, len(text) - 1))
        text = text[:start] + draw(st.text(max_size=5)) + text[start + draw(st.integers(0, 20)) :]
    return text


@given(mutated_documents())
def test_qstat_xml_mutated_documents_raise_only_cluster_error(text: str) -> None:
    assume(_expansion_bounded(text))
    assert_only_cluster_error(text)


# --------------------------------------------------------------------------------------------------------------
# expand_task_ranges


@given(task_lists(max_segments=6), st.sampled_from([",", ", ", " ,"]))
def test_expand_task_ranges_round_trips(segments: list[Segment], sep: str) -> None:
    text = sep.join(s.text() for s in segments)
    assert expand_task_ranges(text) == [t for s in segments for t in s.tasks()]


@given(st.integers(1, 10**12), st.integers(0, 50), st.integers(1, 10**6), st.integers(0, 10**6))
def test_expand_task_ranges_forms(first: int, extra: int, step: int, beyond: int) -> None:
    last = first + extra * step
    assert expand_task_ranges(f"{first}-{last}:{step}") == list(range(first, last + 1, step))
    assert expand_task_ranges(f"{first}-{last + min(beyond, step - 1)}:{step}") == list(range(first, last + 1, step))
    assert expand_task_ranges(f"{first}-{first + extra}") == list(range(first, first + extra + 1))
    assert expand_task_ranges(f" {first} ") == [first]


@given(st.one_of(st.text(max_size=20), st.text(st.sampled_from("0123456789-:, x"), max_size=15)))
@example("")
@example("5-3:1")
@example("1-5:0")
def test_expand_task_ranges_garbage_raises_only_value_error(text: str) -> None:
    assume(_expansion_bounded(text))
    try:
        tasks = expand_task_ranges(text)
    except ValueError:
        return
    assert tasks and all(isinstance(t, int) and t >= 0 for t in tasks)


# --------------------------------------------------------------------------------------------------------------
# Accounting lines

#: Text of the accounting file's free fields: anything but the separator and a newline.
plain_field = st.text(st.characters(exclude_characters=":\n\r", exclude_categories=["Cs"]), max_size=20)
seconds_f = st.floats(0, 10**7, allow_nan=False)
epoch = st.integers(1_000_000_000, 2_000_000_000)


def sge_float(x: float) -> str:
    return f"{x:.6f}"


@dataclass(frozen=True)
class Requests:
    """The hard requests written into an accounting ``category`` and what they mean."""

    category: str
    h_rt_s: float | None
    memory_text: str | None
    memory_resource: str


@st.composite
def categories(draw: st.DrawFn, memory_resource: str) -> Requests:
    h_rt_s = draw(st.none() | st.integers(1, 10**6))
    h_rt_text = None if h_rt_s is None else draw(st.sampled_from([str(h_rt_s), format_runtime(h_rt_s)]))
    memory = draw(
        st.none()
        | st.integers(1, 10**6).map(lambda n: f"{n}M")
        | st.integers(1, 4096).map(lambda n: f"{n}G")
        | st.floats(0.01, 1000, allow_nan=False).map(format_memory)
    )
    items = []
    if h_rt_text is not None:
        items.append(f"h_rt={h_rt_text}")
    if memory is not None:
        items.append(f"{memory_resource}={memory}")
    items += draw(st.lists(st.sampled_from(["arch=lx-amd64", "hostname=vm", "h_stack=8M"]), max_size=2))
    items = draw(st.permutations(items))
    words = []
    if draw(st.booleans()):
        words += ["-U", "users"]
    if items:
        words += ["-l", ",".join(items)]
    if draw(st.booleans()):  # soft requests never count as the job's limits
        words += ["-soft", "-l", f"h_rt=1,{memory_resource}=1M", "-hard"]
    if draw(st.booleans()):
        words += ["-pe", "smp", str(draw(st.integers(1, 64)))]
    if draw(st.booleans()):
        words += ["-q", "all.q"]
    category = " ".join(words) or "NONE"
    return Requests(category, None if h_rt_s is None else float(h_rt_s), memory, memory_resource)


@dataclass(frozen=True)
class AccountingCase:
    line: str
    values: dict[str, str]
    requests: Requests


@st.composite
def accounting_lines(draw: st.DrawFn) -> AccountingCase:
    """One raw accounting record: 45 ':'-separated fields from random values, shaped like SGE 8.1.9 writes them."""
    memory_resource = draw(st.sampled_from(["h_vmem", "m_mem_free"]))
    requests = draw(categories(memory_resource))
    submit = draw(epoch)
    started = draw(st.booleans())
    start = submit + draw(st.integers(0, 10**5)) if started else 0
    end = start + draw(st.integers(0, 10**6)) if started else 0
    failed = draw(st.sampled_from(sorted(FAILED_TEXT)) | st.integers(0, 200))
    values = {
        "qname": draw(st.sampled_from(["all.q", "long.q"]) | plain_field.filter(lambda q: not q.startswith("#"))),
        "hostname": draw(st.sampled_from(["vm", "node-1.cluster"]) | plain_field),
        "group": draw(plain_field),
        "owner": draw(plain_field),
        "job_name": draw(plain_field),
        "job_number": str(draw(st.integers(1, 10**9))),
        "account": "sge",
        "priority": str(draw(st.integers(-1023, 1024))),
        "submission_time": str(submit),
        "start_time": str(start),
        "end_time": str(end),
        "failed": str(failed),
        "exit_status": str(draw(st.sampled_from([0, 1, 3, 137, 247, 255]) | st.integers(0, 10**4))),
        "ru_wallclock": draw(st.integers(0, 10**6).map(str) | seconds_f.map(sge_float)),
        "ru_utime": sge_float(draw(seconds_f)),
        "ru_stime": sge_float(draw(seconds_f)),
        "ru_maxrss": sge_float(draw(st.floats(0, 10**9, allow_nan=False))),
        "project": draw(st.sampled_from(["NONE", "proj_a"])),
        "department": "defaultdepartment",
        "granted_pe": draw(st.sampled_from(["NONE", "smp", "mpi"])),
        "slots": str(draw(st.integers(1, 64))),
        "task_number": str(draw(st.sampled_from([0, 0, 1]) | st.integers(1, 75_000))),
        "cpu": sge_float(draw(seconds_f)),
        "mem": sge_float(draw(seconds_f)),
        "io": sge_float(draw(seconds_f)),
        "category": requests.category,
        "iow": sge_float(draw(seconds_f)),
        "pe_taskid": "NONE",
        "maxvmem": draw(st.integers(0, 10**13).map(str) | st.floats(0, 10**13, allow_nan=False).map(sge_float)),
        "arid": "0",
        "ar_submission_time": "0",
    }
    for name in ACCOUNTING_FIELDS:  # the ru_* counters nobody reads
        values.setdefault(name, str(draw(st.integers(0, 10**6))))
    line = ":".join(values[name] for name in ACCOUNTING_FIELDS)
    return AccountingCase(line + draw(st.sampled_from(["", "\n"])), values, requests)


@given(accounting_lines())
def test_accounting_line_recovers_its_fields(case: AccountingCase) -> None:
    v, req = case.values, case.requests
    info = parse_accounting_line(case.line, req.memory_resource)
    task = int(v["task_number"])
    assert info.job_id == (v["job_number"] if task == 0 else f"{v['job_number']}.{task}")
    assert info.exit_status == int(v["exit_status"])
    assert info.hostname == v["hostname"]
    assert info.maxrss_bytes == round(float(v["ru_maxrss"]) * 1024)  # KB in the file
    assert info.maxvmem_bytes == round(float(v["maxvmem"]))
    assert info.wallclock_s == float(v["ru_wallclock"])
    assert info.cpu_s == float(v["cpu"])
    assert info.start_time == (float(v["start_time"]) or None)
    assert info.end_time == (float(v["end_time"]) or None)
    assert info.slots == int(v["slots"])
    assert info.granted_pe == (None if v["granted_pe"] == "NONE" else v["granted_pe"])
    # The outcome is classify_exit's on the limits the category holds (h_vmem is per slot).
    per = int(v["slots"]) if req.memory_resource == "h_vmem" else 1
    limit = None if req.memory_text is None else parse_memory(req.memory_text) * GIB * per
    kind, resource, reason = classify_exit(
        int(v["failed"]),
        int(v["exit_status"]),
        wallclock_s=float(v["ru_wallclock"]),
        h_rt_s=req.h_rt_s,
        maxvmem_bytes=float(v["maxvmem"]),
        h_vmem_bytes=limit,
        memory_resource=req.memory_resource,
    )
    assert (info.kind, info.resource, info.reason) == (kind, resource, reason)
    # The whole-file parser agrees, keyed by job id (a free field may hold a Unicode line break: still one record).
    assert parse_accounting(f"# Version: 8.1.9\n{case.line}\n", req.memory_resource) == {info.job_id: info}
    assert parse_accounting(f"# Version: 8.1.9\r\n{case.line.rstrip(chr(10))}\r\n", req.memory_resource) == {
        info.job_id: info
    }


#: What str.splitlines() splits at besides "\n" and "\r".
UNICODE_LINE_BREAKS = "\v\f\x1c\x1d\x1e\x85\u2028\u2029"


@pytest.mark.parametrize("brk", list(UNICODE_LINE_BREAKS))
def test_parse_accounting_keeps_records_whole(brk: str) -> None:
    """Was cut in two: parse_accounting split with str.splitlines(), which also breaks at these; the file's records
    end at '\\n' only (AccountingReader splits on b'\\n')."""
    line = minimal_accounting_line(job_name=f"a{brk}b")
    assert parse_accounting_line(line).job_id == "1"
    assert set(parse_accounting(line + "\n")) == {"1"}


def minimal_accounting_line(**values: str) -> str:
    """A record of job 1 that ended with exit 0, with ``values`` put in their fields."""
    fields = dict.fromkeys(ACCOUNTING_FIELDS, "0")
    fields.update(job_number="1", category="NONE", granted_pe="NONE", slots="1", **values)
    return ":".join(fields[name] for name in ACCOUNTING_FIELDS)


#: Values that stop a field from being what its column promises.
bad_values = st.one_of(
    plain_field,
    st.sampled_from(["", "x", "-", "1e5", "0x10", " 1", "١٢", "²", "NONE", "1:2", "\t"]),
    st.integers(-(10**6), 10**6).map(str),
    st.integers(1, 5000).map(lambda n: "9" * n),  # past the float range, and past Python's int digit limit
)
#: Numbers no field may hold (see test_accounting_nonfinite_usage_is_a_cluster_error).
NONFINITE = ("nan", "inf", "infinity", "-inf", "-nan", "1e400", "-1e400", "1e300")


@st.composite
def damaged_lines(draw: st.DrawFn) -> str:
    """A record with fields replaced by garbage, fields dropped or added, or the line cut short."""
    case = draw(accounting_lines())
    values = dict(case.values)
    for name in draw(st.lists(st.sampled_from(ACCOUNTING_FIELDS), max_size=4)):
        values[name] = draw(bad_values | st.sampled_from(NONFINITE))
    fields = [values[name] for name in ACCOUNTING_FIELDS]
    how = draw(st.sampled_from(["fields", "drop", "add", "cut"]))
    if how == "drop":
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif how == "add":
        fields.insert(draw(st.integers(0, len(fields))), draw(plain_field))
    line = ":".join(fields)
    if how == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    return line


def assert_accounting_only_cluster_error(line: str) -> None:
    try:
        info = parse_accounting_line(line)
    except ClusterError as exc:
        assert str(exc).startswith("accounting: ")
        return
    assert isinstance(info.kind, ExitKind)
    assert info.job_id


@given(damaged_lines())
def test_accounting_damaged_lines_raise_only_cluster_error(line: str) -> None:
    assert_accounting_only_cluster_error(line)


@given(st.text(max_size=300))
@example(":" * 44)
@example(":" * 60)
@example(":".join(["0"] * 16 + ["nan"] + ["0"] * 28))
def test_accounting_arbitrary_text_raises_only_cluster_error(line: str) -> None:
    assert_accounting_only_cluster_error(line)


@pytest.mark.parametrize(("field", "value"), [("maxvmem", "nan"), ("maxvmem", "inf"), ("ru_maxrss", "1e400")])
def test_accounting_nonfinite_usage_is_a_cluster_error(field: str, value: str) -> None:
    """Was ValueError/OverflowError from round(): AccountingReader._scan catches only ClusterError, so one such line
    in the scanned window failed every lookup."""
    with pytest.raises(ClusterError, match=rf"^accounting: field {field} "):
        parse_accounting_line(minimal_accounting_line(**{field: value}))


@given(
    st.sampled_from(["ru_maxrss", "maxvmem", "ru_wallclock", "cpu", "start_time", "end_time"]),
    st.sampled_from(NONFINITE) | st.integers(2**63, 10**300).map(str),
)
def test_accounting_numbers_past_any_count_are_a_cluster_error_naming_the_field(field: str, value: str) -> None:
    line = minimal_accounting_line(**{field: value})
    try:
        info = parse_accounting_line(line)
    except ClusterError as exc:
        assert str(exc).startswith(f"accounting: field {field} "), str(exc)
        return
    # Only a time may be that large (seconds, as a float); a byte count must fit the database's BIGINT.
    assert field not in ("ru_maxrss", "maxvmem") and math.isfinite(float(value))
    assert info.maxrss_bytes is not None and abs(info.maxrss_bytes) < 2**63


# --------------------------------------------------------------------------------------------------------------
# classify_exit: total, and the documented table

optional_seconds = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(0, 10**7).map(float)
optional_bytes = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(0, 10**13).map(float)
failed_codes = st.sampled_from(sorted(FAILED_TEXT)) | st.integers(-(2**63), 2**63)
exit_statuses = st.sampled_from([0, 1, 137, 247, -9, 255]) | st.integers(-(2**31), 2**31)


@given(
    failed_codes,
    exit_statuses,
    optional_seconds,
    optional_seconds,
    optional_bytes,
    optional_bytes,
    st.sampled_from(["h_vmem", "m_mem_free"]),
    st.booleans(),
)
def test_classify_exit_is_total_and_follows_its_table(
    failed: int,
    exit_status: int,
    wallclock: float | None,
    h_rt: float | None,
    maxvmem: float | None,
    h_vmem: float | None,
    memory_resource: str,
    qacct_text: bool,
) -> None:
    evidence: dict[str, Any] = {
        "wallclock_s": wallclock,
        "h_rt_s": h_rt,
        "maxvmem_bytes": maxvmem,
        "h_vmem_bytes": h_vmem,
        "memory_resource": memory_resource,
    }
    code: int | str = f"{failed}  : {FAILED_TEXT.get(failed, 'x')}" if qacct_text else failed
    kind, resource, reason = classify_exit(code, exit_status, **evidence)
    assert (kind, resource, reason) == classify_exit(failed, exit_status, **evidence)  # qacct's "37  : text" form
    assert isinstance(kind, ExitKind) and isinstance(reason, str) and reason
    assert (resource is not None) == (kind is ExitKind.RESOURCE_KILL)
    runtime_hit = wallclock is not None and h_rt is not None and wallclock >= h_rt - 1
    memory_hit = maxvmem is not None and h_vmem is not None and maxvmem >= 0.95 * h_vmem
    if failed == 0:
        memory_killed = exit_status in MEMORY_KILL_EXIT_STATUSES | MEMORY_KILL_RETURNCODES
        expected = (
            (ExitKind.DONE, None)
            if exit_status == 0
            else (ExitKind.RESOURCE_KILL, "memory")
            if memory_killed
            else (ExitKind.ERROR, None)
        )
    elif failed == 37:
        expected = (ExitKind.RESOURCE_KILL, "runtime" if runtime_hit else "memory")
    elif failed == 100 and exit_status == 137:
        expected = (
            (ExitKind.RESOURCE_KILL, "runtime")
            if runtime_hit
            else (ExitKind.RESOURCE_KILL, "memory")
            if memory_hit
            else (ExitKind.DELETED, None)
        )
    else:
        expected = (ExitKind.ERROR, None)
        assert FAILED_TEXT.get(failed, "unknown failure code") in reason
    assert (kind, resource) == expected


@given(st.text(max_size=20))
def test_classify_exit_non_numeric_failed_is_a_cluster_error(failed: str) -> None:
    try:
        classify_exit(failed, 0)
    except ClusterError as exc:
        assert "numeric 'failed' code" in str(exc)


# --------------------------------------------------------------------------------------------------------------
# qconf

#: A qconf key: no whitespace (it ends at the first), not a comment.
qconf_keys = st.text(
    st.characters(exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"]),
    min_size=1,
    max_size=15,
).filter(lambda k: not k.startswith("#") and not any(c.isspace() for c in k))
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
qconf_values = st.text(st.characters(exclude_categories=["Cs"], exclude_characters=_LINE_BREAKS), max_size=40).filter(
    lambda v: not v.rstrip().endswith("\\")
)


@st.composite
def qconf_dumps(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """A ``qconf -s…`` dump: padded key/value lines, comments, blank lines, values continued with '\\'."""
    obj = draw(st.dictionaries(qconf_keys, qconf_values, max_size=8))
    lines = []
    for key, value in obj.items():
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "   ", "# a comment", "  # indented comment"])))
        text = value
        # Continue the value on the next line before a non-blank character (the join drops leading blanks).
        cuts = [i for i in range(1, len(text)) if not text[i].isspace() and text[i - 1] != "\\"]
        for i in sorted(draw(st.lists(st.sampled_from(cuts), unique=True, max_size=3)) if cuts else [], reverse=True):
            text = text[:i] + "\\\n" + " " * draw(st.integers(0, 22)) + text[i:]
        lines.append(f"{key}{' ' * draw(st.integers(1, 20))}{text}")
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"])), {k: v.strip() for k, v in obj.items()}


@given(qconf_dumps())
def test_qconf_object_round_trips(dump: tuple[str, dict[str, str]]) -> None:
    text, expected = dump
    assert parse_qconf_object(text) == expected


#: Queue attribute values: a default and per-host overrides "[host=value]", and what they are.
slot_counts = st.integers(1, 512)
runtimes_s = st.integers(1, 10**7)
memories = st.one_of(st.integers(1, 4096).map(lambda n: f"{n}G"), st.integers(1, 10**6).map(lambda n: f"{n}M"))


def draw_runtime(seconds: int) -> str:
    """h_rt as qconf shows it (H:MM:SS) or in seconds, picked by the value so the test stays deterministic."""
    return format_runtime(seconds) if seconds % 2 else str(seconds)


@st.composite
def queue_attribute(draw: st.DrawFn, values: st.SearchStrategy[Any], fmt: Any) -> tuple[str, list[Any] | None]:
    """(text, values): None when INFINITY (unlimited) is among them."""
    if draw(st.booleans()):
        return "INFINITY", None
    picked = draw(st.lists(values, min_size=1, max_size=4))
    hosts = [f"[{draw(st.sampled_from(['vm', '@big', 'node1']))}={fmt(v)}]" for v in picked[1:]]
    return ",".join([fmt(picked[0]), *hosts]), picked


@given(
    queue_attribute(slot_counts, str),
    queue_attribute(runtimes_s, draw_runtime),
    queue_attribute(memories, str),
    st.none() | slot_counts | st.just("INFINITY"),
    st.lists(st.none() | memories, max_size=3),
)
def test_queue_limits_follow_the_documented_rules(
    slots: tuple[str, list[int] | None],
    h_rt: tuple[str, list[int] | None],
    h_vmem: tuple[str, list[str] | None],
    pe_slots: int | str | None,
    host_memories: list[str | None],
) -> None:
    qconf = f"qname                 all.q\nslots                 {slots[0]}\nh_rt                  {h_rt[0]}\n"
    qconf += f"h_vmem                {h_vmem[0]}\n"
    pe_text = None if pe_slots is None else f"pe_name            smp\nslots              {pe_slots}\n"
    hosts = [
        f"hostname              vm\ncomplex_values        {'NONE' if m is None else f'h_vmem={m},slots=8'}\n"
        for m in host_memories
    ]
    limits = parse_queue_limits(qconf, pe_text=pe_text, exechost_texts=hosts)
    cores = None if slots[1] is None else max(slots[1])
    if isinstance(pe_slots, int):
        cores = pe_slots if cores is None else min(cores, pe_slots)
    per_slot = None if h_vmem[1] is None else max(parse_memory(m) for m in h_vmem[1])
    bounds = [per_slot * cores] if per_slot is not None and cores is not None else []
    host_values = [parse_memory(m) for m in host_memories if m is not None]
    if host_values:
        bounds.append(max(host_values))
    assert limits.name == "all.q"
    assert limits.max_cores == cores
    assert limits.max_runtime == (None if h_rt[1] is None else max(h_rt[1]))
    assert limits.max_memory == (min(bounds) if bounds else None)


qconf_garbage = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["INFINITY", "NONE", "1,[vm=2]", "1,[", "[vm=]", "2G", "48:00:00", "-1", "0", "1.5", "²"]),
    st.integers(-(10**6), 10**400).map(str),
)


@given(qconf_garbage, qconf_garbage, qconf_garbage, st.none() | qconf_garbage, st.lists(qconf_garbage, max_size=2))
def test_queue_limits_garbage_raises_only_cluster_error(
    slots: str, h_rt: str, h_vmem: str, pe_slots: str | None, host_memories: list[str]
) -> None:
    qconf = f"qname all.q\nslots {slots}\nh_rt {h_rt}\nh_vmem {h_vmem}\n"
    pe_text = None if pe_slots is None else f"slots {pe_slots}\n"
    hosts = [f"complex_values h_vmem={m}\n" for m in host_memories]
    try:
        limits = parse_queue_limits(qconf, pe_text=pe_text, exechost_texts=hosts)
    except ClusterError as exc:
        assert str(exc).startswith("qconf")
        return
    assert limits.name == "all.q"


@pytest.mark.parametrize(("attribute", "digits"), [("slots", 309), ("h_rt", 309), ("h_vmem", 400), ("h_rt", 5000)])
def test_queue_limits_huge_numbers_are_a_cluster_error(attribute: str, digits: int) -> None:
    """Was OverflowError: float(int(...)) of a whole number past the float range, which _largest did not turn into
    ClusterError (it caught ResourceError and ValueError only); parse_runtime raised it itself."""
    with pytest.raises(ClusterError, match=f"^qconf: unreadable {attribute} value"):
        parse_queue_limits(f"qname all.q\n{attribute} {'9' * digits}\n")
