"""Errors of a workflow grouped by similar message (the seed's ClusteredErrors): the ends of the error logs of its
failed instances, read in SQL through ``task_instance(workflow_run_id, status)`` (at most ERROR_SCAN of them, the
newest; only ERROR_TAIL characters of each travel), grouped by :func:`error_signature`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobmon_airflow.service.core import ERROR_LOG, TASK, TI
from jobmon_airflow.service.insight_tasks import TEMPLATE_NAME, with_template
from jobmon_airflow.service.insight_types import ErrorGroup

#: Instances whose error text is worth grouping.
ERROR_INSTANCE_STATUSES = tuple(sorted("EFKTUWXZ"))
#: At most this many error log rows are read to group errors (the newest ones); totals are still exact.
ERROR_SCAN = 5000
#: Characters of an error text kept for grouping and as the sample (the end of a stderr tail says most).
ERROR_TAIL = 400
MAX_TASK_IDS_PER_GROUP = 100


def _tail(expr: Any, dialect: str) -> Any:
    """The last ERROR_TAIL characters of a text column, in SQL (only those travel)."""
    if dialect in ("mysql", "mariadb"):
        return sa.func.right(expr, ERROR_TAIL)
    return sa.func.substr(expr, -ERROR_TAIL)


_VOLATILE = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x#"),
    (re.compile(r"\b[0-9a-fA-F]{8,}\b"), "#"),
    (re.compile(r"\d+(\.\d+)?"), "#"),
    (re.compile(r"(/[\w.\-#]+)+"), "/…"),
    (re.compile(r"\s+"), " "),
]


def error_signature(text: str) -> str:
    """The key errors are grouped by: the last non-empty lines with numbers, hex ids and paths masked, so that
    messages differing only in a job id, a size or a file name fall together (Jobmon clusters by TF-IDF; this is
    the deterministic, explainable cousin)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    key = " | ".join(lines[-2:]) if lines else ""
    for pattern, replacement in _VOLATILE:
        key = pattern.sub(replacement, key)
    return key.strip()[:300]


def error_groups(conn: Connection, runs: Sequence[int], *, limit: int, template: str | None) -> list[ErrorGroup]:
    """Errors of the instances of these workflow runs, largest group first (at most ``limit`` groups)."""
    if not runs:
        return []
    failed = (
        sa.select(TI.c.id, TI.c.task_id)
        .where(TI.c.workflow_run_id.in_(runs), TI.c.status.in_(ERROR_INSTANCE_STATUSES))
        .subquery("failed")
    )
    query = sa.select(
        ERROR_LOG.c.id, failed.c.task_id, _tail(ERROR_LOG.c.description, conn.dialect.name).label("tail")
    ).join(failed, failed.c.id == ERROR_LOG.c.task_instance_id)
    if template:
        query = with_template(query.join(TASK, TASK.c.id == failed.c.task_id)).where(TEMPLATE_NAME.in_([template]))
    total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = conn.execute(query.order_by(ERROR_LOG.c.id.desc()).limit(ERROR_SCAN)).all()
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = error_signature(r.tail or "")
        g = groups.setdefault(key, {"count": 0, "tasks": set(), "sample": r.tail or "", "newest": r.id})
        g["count"] += 1
        g["tasks"].add(r.task_id)
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1]["count"], -kv[1]["newest"]))[:limit]
    return [
        ErrorGroup(
            signature=key,
            count=g["count"],
            task_count=len(g["tasks"]),
            task_ids=tuple(sorted(g["tasks"])[:MAX_TASK_IDS_PER_GROUP]),
            sample=g["sample"],
            scanned=len(rows),
            total=int(total),
        )
        for key, g in ranked
    ]
