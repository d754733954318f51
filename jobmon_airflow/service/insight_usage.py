"""Resource usage per template (the seed's ``task_template_resource_usage`` and ``resources yaml``), built to stay
fast for a workflow of 100,000 tasks with several instances each.

1. One GROUP BY over the workflow's ended array elements, in the order of the covering index
   ``task_instance(workflow_run_id, status, array_id, task_resources_id, maxrss, wallclock)``: MariaDB aggregates
   in one pass over the index, with no row read and no temporary table (an array has one template; the status is a
   group key, so no CASE per row). The few instances outside arrays are grouped by their task's template in a
   second, small statement. Counts, min, max and sums of used memory (max RSS) and runtime (wallclock); the
   figures of done instances are the used ones.
2. The resource sets' ``requested_resources`` JSON, parsed once per set (not per instance); requested statistics
   are weighted by the done instances of each set.
3. Scatter points: at most ``sample`` instances spread evenly over the workflow's instance ids, read by primary
   key (candidate ids computed from the id range, at most ``MAX_CANDIDATES_PER_POINT`` per point wanted), so no
   second scan. Percentiles come from the sample's done instances: exact when a template has no more done
   instances than the sample holds (``sampled`` says when not).

The suggested request is Jobmon's ``resources yaml`` default: the maximum used, memory rounded up to whole GiB
(at least 1), runtime to whole seconds (at least 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobmon_airflow.service.core import ARRAY, TASK, TASK_RESOURCES, TI, TT, TTV, chunks
from jobmon_airflow.service.insight_tasks import TEMPLATE_NAME, with_template
from jobmon_airflow.service.insight_types import Percentiles, TemplateUsage, UsagePoint

ENDED = ("D", "E", "F", "U", "Z")
GIB = 1024**3
MAX_CANDIDATES_PER_POINT = 20


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class _Stat:
    """Running count / min / max / weighted sum of one figure."""

    count: int = 0
    low: float | None = None
    high: float | None = None
    total: float = 0.0

    def add(self, n: int, low: Any, high: Any, total: Any) -> None:
        if not n or low is None:
            return
        self.count += n
        self.low = float(low) if self.low is None else min(self.low, float(low))
        self.high = float(high) if self.high is None else max(self.high, float(high))
        self.total += float(total)

    def result(self, sample: Sequence[float], scale: float = 1.0) -> Percentiles:
        values = sorted(v / scale for v in sample)

        def pick(p: float) -> float | None:
            return _percentile(values, p) if values else None

        return Percentiles(
            count=self.count,
            min=None if self.low is None else self.low / scale,
            max=None if self.high is None else self.high / scale,
            mean=self.total / self.count / scale if self.count else None,
            p50=pick(50),
            p90=pick(90),
            p95=pick(95),
            p99=pick(99),
        )


@dataclass
class _Template:
    measured: int = 0
    memory: _Stat = field(default_factory=_Stat)
    runtime: _Stat = field(default_factory=_Stat)
    req_memory: _Stat = field(default_factory=_Stat)
    req_runtime: _Stat = field(default_factory=_Stat)
    cores: int | None = None
    queue: str | None = None


def _single_template() -> Any:
    """The template of an instance outside arrays: its task's template, or its Airflow task id (looked up only
    for such instances: an array's elements share their array's template)."""
    name = with_template(sa.select(TEMPLATE_NAME).select_from(TASK)).where(TASK.c.id == TI.c.task_id).scalar_subquery()
    return sa.case((TI.c.array_id.is_(None), name))


def _requested(conn: Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for chunk in chunks(sorted(ids)):
        for r in conn.execute(
            sa.select(TASK_RESOURCES.c.id, TASK_RESOURCES.c.requested_resources).where(TASK_RESOURCES.c.id.in_(chunk))
        ):
            try:
                parsed = json.loads(r.requested_resources or "{}")
            except ValueError:
                parsed = {}
            out[r.id] = parsed if isinstance(parsed, dict) else {}
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _array_templates(conn: Connection, array_ids: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks(sorted(array_ids)):
        for r in conn.execute(
            sa.select(ARRAY.c.id, sa.func.coalesce(TT.c.name, ARRAY.c.name).label("name"))
            .select_from(ARRAY)
            .outerjoin(TTV, TTV.c.id == ARRAY.c.task_template_version_id)
            .outerjoin(TT, TT.c.id == TTV.c.task_template_id)
            .where(ARRAY.c.id.in_(chunk))
        ):
            out[r.id] = r.name
    return out


#: What is summed up per group. No CASE per row: the status is a group key (done or not is decided per group).
_FIGURES = (
    TI.c.status,
    TI.c.task_resources_id,
    sa.func.min(TI.c.id).label("lo"),
    sa.func.max(TI.c.id).label("hi"),
    sa.func.count().label("n"),
    sa.func.count(sa.func.coalesce(TI.c.maxrss, TI.c.wallclock)).label("measured"),
    sa.func.count(TI.c.maxrss).label("mem_n"),
    sa.func.min(TI.c.maxrss).label("mem_min"),
    sa.func.max(TI.c.maxrss).label("mem_max"),
    sa.func.sum(TI.c.maxrss).label("mem_sum"),
    sa.func.count(TI.c.wallclock).label("rt_n"),
    sa.func.min(TI.c.wallclock).label("rt_min"),
    sa.func.max(TI.c.wallclock).label("rt_max"),
    sa.func.sum(TI.c.wallclock).label("rt_sum"),
)


def _in_scope(run_ids: Sequence[int]) -> tuple[Any, ...]:
    return TI.c.workflow_run_id.in_(run_ids), TI.c.status.in_(ENDED)


def array_groups(run_ids: Sequence[int]) -> sa.Select[Any]:
    """The array elements' figures per (run, status, array, resource set), grouped in the order of
    ``ix_task_instance_workflow_run_id_status_usage``, which holds every column read: MariaDB aggregates in one pass
    over that index, with no row read and no temporary table."""
    return (
        sa.select(TI.c.array_id, sa.literal(None).label("single"), *_FIGURES)
        .where(*_in_scope(run_ids), TI.c.array_id.is_not(None))
        .group_by(TI.c.workflow_run_id, TI.c.status, TI.c.array_id, TI.c.task_resources_id)
    )


def resource_usage(
    conn: Connection, run_ids: Sequence[int], *, template: str | None, sample: int
) -> list[TemplateUsage]:
    if not run_ids:
        return []
    in_arrays = conn.execute(array_groups(run_ids)).all()
    # The few instances outside arrays: joined to their task for the template.
    singles = conn.execute(
        with_template(
            sa.select(sa.literal(None).label("array_id"), TEMPLATE_NAME.label("single"), *_FIGURES)
            .select_from(TI)
            .join(TASK, TASK.c.id == TI.c.task_id)
        )
        .where(*_in_scope(run_ids), TI.c.array_id.is_(None))
        .group_by(TEMPLATE_NAME, TI.c.status, TI.c.task_resources_id)
    ).all()
    groups = [*in_arrays, *singles]
    if not groups:
        return []
    arrays = _array_templates(conn, {g.array_id for g in groups if g.array_id is not None})
    requested = _requested(conn, {g.task_resources_id for g in groups if g.task_resources_id is not None})

    def name_of(array_id: int | None, single_name: str | None) -> str:
        return arrays.get(array_id, str(array_id)) if array_id is not None else str(single_name)

    templates: dict[str, _Template] = defaultdict(_Template)
    lo = hi = None
    for g in groups:
        name = name_of(g.array_id, g.single)
        if template is not None and name != template:
            continue
        t = templates[name]
        t.measured += int(g.measured or 0)
        n_done = int(g.n) if g.status == "D" else 0
        if n_done:  # used figures are those of done instances
            t.memory.add(int(g.mem_n or 0), g.mem_min, g.mem_max, g.mem_sum)
            t.runtime.add(int(g.rt_n or 0), g.rt_min, g.rt_max, g.rt_sum)
        req = requested.get(g.task_resources_id, {})
        for stat, key in ((t.req_memory, "memory"), (t.req_runtime, "runtime")):
            value = _number(req.get(key))
            if value is not None:
                stat.add(n_done, value, value, value * n_done)
        if n_done and isinstance(req.get("cores"), int):
            t.cores = max(t.cores or 0, req["cores"])
        if n_done and isinstance(req.get("queue"), str):
            t.queue = req["queue"]
        lo = g.lo if lo is None else min(lo, g.lo)
        hi = g.hi if hi is None else max(hi, g.hi)
    if not templates:
        return []
    points = _sample(conn, run_ids, lo, hi, sum(t.measured for t in templates.values()), sample, arrays, requested,
                     template)  # fmt: skip
    out = []
    for name in sorted(templates):
        t = templates[name]
        pts = points.get(name, [])
        done_pts = [p for p in pts if p.status == "D"]
        memory = t.memory.result([p.memory_gib for p in done_pts if p.memory_gib is not None])
        memory = dataclasses.replace(
            memory,
            min=None if memory.min is None else memory.min / GIB,
            max=None if memory.max is None else memory.max / GIB,
            mean=None if memory.mean is None else memory.mean / GIB,
        )
        runtime = t.runtime.result([p.runtime_s for p in done_pts if p.runtime_s is not None])
        req_memory = t.req_memory.result([p.requested_memory_gib for p in done_pts if p.requested_memory_gib])
        req_runtime = t.req_runtime.result([p.requested_runtime_s for p in done_pts if p.requested_runtime_s])
        suggested: dict[str, Any] = {k: v for k, v in (("cores", t.cores), ("queue", t.queue)) if v is not None}
        if memory.max is not None:
            suggested["memory"] = f"{max(1, math.ceil(memory.max))}G"
        if runtime.max is not None:
            suggested["runtime"] = max(1, math.ceil(runtime.max))
        out.append(
            TemplateUsage(
                template=name,
                instances=t.measured,
                memory_gib=memory,
                runtime_s=runtime,
                requested_memory_gib=req_memory,
                requested_runtime_s=req_runtime,
                suggested=suggested,
                points=tuple(pts),
                sampled=len(pts) < t.measured,
            )
        )
    return out


def _sample(
    conn: Connection, run_ids: Sequence[int], lo: int | None, hi: int | None, measured: int, sample: int,
    arrays: dict[int, str], requested: dict[int, dict[str, Any]], template: str | None,
) -> dict[str, list[UsagePoint]]:  # fmt: skip
    """At most ``sample`` measured instances, spread evenly over the id range, read by primary key."""
    if not sample or lo is None or hi is None or not measured:
        return {}
    span = hi - lo + 1
    if measured <= sample:
        candidates: Sequence[int] | range = range(lo, hi + 1) if span <= sample * MAX_CANDIDATES_PER_POINT else ()
    else:
        wanted = min(span, sample * MAX_CANDIDATES_PER_POINT, math.ceil(sample * span / measured))
        step = span / wanted
        candidates = sorted({lo + int(i * step) for i in range(wanted)})
    measured_cond = sa.or_(TI.c.maxrss.is_not(None), TI.c.wallclock.is_not(None))
    base = sa.select(
        TI.c.id, TI.c.task_id, TI.c.status, TI.c.maxrss, TI.c.wallclock, TI.c.array_id, TI.c.task_resources_id,
        _single_template().label("single"),
    ).where(TI.c.workflow_run_id.in_(run_ids), TI.c.status.in_(ENDED), measured_cond)  # fmt: skip
    rows: list[Any] = []
    if candidates:
        for chunk in chunks(list(candidates)):
            rows.extend(conn.execute(base.where(TI.c.id.in_(chunk))))
    else:  # few measured instances spread over a wide id range: read them all (at most `sample` of them)
        rows = list(conn.execute(base.order_by(TI.c.id).limit(sample)))
    if len(rows) > sample:
        stride = len(rows) / sample
        rows = [rows[int(i * stride)] for i in range(sample)]
    missing = {r.task_resources_id for r in rows if r.task_resources_id is not None} - set(requested)
    requested = {**requested, **_requested(conn, missing)} if missing else requested
    out: dict[str, list[UsagePoint]] = defaultdict(list)
    for r in rows:
        name = arrays.get(r.array_id, str(r.array_id)) if r.array_id is not None else str(r.single)
        if template is not None and name != template:
            continue
        req = requested.get(r.task_resources_id, {})
        out[name].append(
            UsagePoint(
                task_instance_id=r.id,
                task_id=r.task_id,
                status=r.status,
                memory_gib=None if r.maxrss is None else r.maxrss / GIB,
                runtime_s=r.wallclock,
                requested_memory_gib=_number(req.get("memory")),
                requested_runtime_s=_number(req.get("runtime")),
            )
        )
    return out
