"""How the pages render: one Jinja2 environment with autoescaping on for every template (a value can only reach
HTML escaped), the filters the templates use (sizes, durations, dates), the security headers every page answers
with, and the static files (ours, and plotly.js from the plotly package: no CDN, no network at run time)."""

from __future__ import annotations

import importlib.resources
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2

from jobmon_airflow import __version__, states

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
GIB = 1024**3

#: Framing by Airflow only (same origin: the UI and the plugin share the API server), scripts from here only, no
#: inline script or style (plotly.js sets styles through the DOM, which CSP allows); data travels as JSON blocks.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "frame-ancestors 'self'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "SAMEORIGIN",  # browsers without frame-ancestors
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _plotly_js() -> Path:
    return Path(str(importlib.resources.files("plotly").joinpath("package_data", "plotly.min.js")))


#: The only files the static route serves: {name: (path, media type)}.
STATIC_FILES: Mapping[str, tuple[Path, str]] = {
    "jobmon.css": (STATIC / "jobmon.css", "text/css"),
    "resources.js": (STATIC / "resources.js", "text/javascript"),
    "plotly.min.js": (_plotly_js(), "text/javascript"),
}


# -- filters ----------------------------------------------------------------------------------------------------------
def fmt_bytes(value: float | None) -> str:
    if value is None:
        return ""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:.2f} {unit}" if unit == "GiB" else f"{value / size:.0f} {unit}"
    return f"{int(value)} B"


def fmt_gib(value: float | None) -> str:
    return "" if value is None else fmt_bytes(value * GIB)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def fmt_when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def fmt_yaml(suggested: Mapping[str, Any]) -> str:
    """The suggested request as the lines of Jobmon's ``resources yaml`` (values JSON-quoted where needed)."""
    return "\n".join(f"{k}: {v if isinstance(v, int | float) else json.dumps(v)}" for k, v in suggested.items())


@dataclass(frozen=True)
class Segment:
    bucket: str
    count: int
    x: float
    width: float


def segments(buckets: Mapping[str, int], total: int) -> list[Segment]:
    """The bar's segments in Jobmon's bucket order, on a 0..1000 scale."""
    out, x = [], 0.0
    for bucket in states.TASK_BUCKETS:
        count = int(buckets.get(bucket, 0))
        if count and total:
            width = 1000 * count / total
            out.append(Segment(bucket, count, round(x, 2), round(width, 2)))
            x += width
    return out


# -- environment ------------------------------------------------------------------------------------------------------
def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(bytes=fmt_bytes, gib=fmt_gib, duration=fmt_duration, when=fmt_when, yaml=fmt_yaml)
    env.globals.update(
        BUCKETS=list(states.TASK_BUCKETS),
        WORKFLOW_STATUSES=list(states.WorkflowStatus),
        segments=segments,
    )
    return env


class Urls:
    """Links between the pages, under the path the app is mounted at (``/jobmon`` inside Airflow)."""

    PATHS = {
        "workflows": "/ui/workflows",
        "workflow": "/ui/workflows/{workflow_id}",
        "resources": "/ui/workflows/{workflow_id}/resources",
        "task": "/ui/tasks/{task_id}",
    }

    def __init__(self, root_path: str):
        self.root = root_path.rstrip("/")

    def page(self, name: str, **params: Any) -> str:
        path = self.PATHS[name]
        path_params = {k: int(params.pop(k)) for k in ("workflow_id", "task_id") if "{" + k + "}" in path}
        query = {k: v for k, v in params.items() if v is not None and v != ""}
        return self.root + path.format(**path_params) + (f"?{urlencode(query)}" if query else "")

    def static(self, name: str) -> str:
        return f"{self.root}/ui/static/{name}?v={__version__}"
