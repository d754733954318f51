"""Compute resources in Jobmon's keys and units: parsing, validation against queue limits, scaling on retry.

Keys (Jobmon's ``client/task_resources.py``): ``cores``; ``memory`` in GiB (a number, or "2G"/"500M"/"1.5T");
``runtime`` in seconds (a number, "HH:MM:SS", or "2h"/"30m"/"10s"); ``queue``; ``project``.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

DEFAULT_CORES = 1
DEFAULT_MEMORY_GIB = 1.0
DEFAULT_RUNTIME_S = 600
#: Jobmon's default retry scaling: +50 % memory and runtime after a resource kill.
DEFAULT_RESOURCE_SCALES: dict[str, float] = {"memory": 0.5, "runtime": 0.5}

KNOWN_KEYS = frozenset({"cores", "memory", "runtime", "queue", "project"})
SCALABLE_KEYS = frozenset({"cores", "memory", "runtime"})

_MEMORY_UNITS_GIB = {"": 1.0, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_RUNTIME_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RUNTIME_SUFFIX_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.IGNORECASE)
_RUNTIME_CLOCK_RE = re.compile(r"^\s*(?:(\d+):)?(\d+):(\d+)\s*$")


class ResourceError(ValueError):
    """A resource value is malformed or does not fit any queue; the message names the field."""


def parse_memory(value: Any, field: str = "memory") -> float:
    """Return memory in GiB from a GiB number or a string with a K/M/G/T suffix (1024-based)."""
    if isinstance(value, bool):
        raise ResourceError(f"{field}: expected GiB as a number or a string like '2G' or '500M', got {value!r}")
    if isinstance(value, int | float):
        gib = float(value)
    elif isinstance(value, str) and (m := _MEMORY_RE.match(value)):
        gib = float(m.group(1)) * _MEMORY_UNITS_GIB[m.group(2).upper()]
    else:
        raise ResourceError(f"{field}: expected GiB as a number or a string like '2G' or '500M', got {value!r}")
    if not math.isfinite(gib) or gib <= 0:
        raise ResourceError(f"{field}: must be greater than zero, got {value!r}")
    return gib


def parse_runtime(value: Any, field: str = "runtime") -> int:
    """Return runtime in whole seconds from seconds, "HH:MM:SS"/"MM:SS", or "2h"/"30m"/"10s"/"1d"."""
    seconds: float
    if isinstance(value, bool):
        raise ResourceError(f"{field}: expected seconds, 'HH:MM:SS' or a string like '10m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _RUNTIME_SUFFIX_RE.match(value)):
        seconds = float(m.group(1)) * _RUNTIME_UNITS_S[m.group(2).lower()]
    elif isinstance(value, str) and (m := _RUNTIME_CLOCK_RE.match(value)):
        hours, minutes, secs = int(m.group(1) or 0), int(m.group(2)), int(m.group(3))
        if minutes >= 60 or secs >= 60:
            raise ResourceError(f"{field}: minutes and seconds must be below 60 in {value!r}")
        seconds = hours * 3600 + minutes * 60 + secs
    elif isinstance(value, str) and value.strip().isdigit():
        seconds = int(value.strip())
    else:
        raise ResourceError(f"{field}: expected seconds, 'HH:MM:SS' or a string like '10m', got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ResourceError(f"{field}: must be greater than zero, got {value!r}")
    return math.ceil(seconds)


def parse_cores(value: Any, field: str = "cores") -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ResourceError(f"{field}: expected a whole number of cores, got {value!r}")
    try:
        cores = int(value)
    except ValueError:
        raise ResourceError(f"{field}: expected a whole number of cores, got {value!r}") from None
    if cores < 1:
        raise ResourceError(f"{field}: must be at least 1, got {value!r}")
    return cores


def format_memory(gib: float) -> str:
    """Grid Engine style memory string in whole MiB (``h_vmem`` accepts ``M``): 1.5 → '1536M'."""
    return f"{math.ceil(gib * 1024)}M"


def format_runtime(seconds: int) -> str:
    """HH:MM:SS, as Grid Engine's ``h_rt`` takes it."""
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class Resources:
    """Requested resources of one job, normalised to Jobmon's units."""

    cores: int = DEFAULT_CORES
    memory: float = DEFAULT_MEMORY_GIB  # GiB
    runtime: int = DEFAULT_RUNTIME_S  # seconds
    queue: str | None = None
    project: str | None = None

    @classmethod
    def parse(cls, requested: Mapping[str, Any] | None, field: str = "compute_resources") -> Resources:
        """Validate a user's resource dict; raises :class:`ResourceError` naming the bad field."""
        requested = dict(requested or {})
        unknown = sorted(set(requested) - KNOWN_KEYS)
        if unknown:
            raise ResourceError(
                f"{field}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(KNOWN_KEYS))}"
            )
        for key in ("queue", "project"):
            val = requested.get(key)
            if val is not None and (not isinstance(val, str) or not re.fullmatch(r"[A-Za-z0-9_.@-]+", val)):
                raise ResourceError(f"{field}.{key}: expected a plain name (letters, digits, _.@-), got {val!r}")
        return cls(
            cores=parse_cores(requested.get("cores", DEFAULT_CORES), f"{field}.cores"),
            memory=parse_memory(requested.get("memory", DEFAULT_MEMORY_GIB), f"{field}.memory"),
            runtime=parse_runtime(requested.get("runtime", DEFAULT_RUNTIME_S), f"{field}.runtime"),
            queue=requested.get("queue"),
            project=requested.get("project"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Jobmon's ``requested_resources`` dict (memory GiB, runtime s); None values left out."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def memory_bytes(self) -> int:
        return math.ceil(self.memory * 1024**3)


#: One resource's growth after a resource kill: a number ``s ≥ 0`` (every retry ``× (1 + s)``), or a non-empty
#: list of them, the k-th (k from 1) for the k-th retry after a resource kill, the last repeating after the list.
ScaleSpec = float | int | list[float | int] | tuple[float | int, ...]

_SCALE_HINT = "use a number ≥ 0 or a non-empty list of numbers ≥ 0 (the factor for the k-th retry)"


def validate_resource_scales(scales: Mapping[str, Any] | None) -> dict[str, float | list[float]] | None:
    """Check ``resource_scales``; return a normalised, JSON-able copy or raise :class:`ResourceError` naming the field.

    Pure: nothing given is consumed or changed, so it may run at DAG parse and again in every try. ``None`` stays
    ``None`` (Jobmon's default, :data:`DEFAULT_RESOURCE_SCALES`); ``{}`` means nothing scales. Callables and
    iterators are refused: each Airflow try is a new process (an iterator cannot carry its position) and the task
    row stores the scales as JSON (a callable cannot be stored).
    """
    if scales is None:
        return None
    if not isinstance(scales, Mapping):
        raise ResourceError(f"resource_scales: expected a dict of resource to scale, got {scales!r}")
    out: dict[str, float | list[float]] = {}
    for key, spec in scales.items():
        if key not in SCALABLE_KEYS:
            raise ResourceError(f"resource_scales: cannot scale {key!r}; scalable: {', '.join(sorted(SCALABLE_KEYS))}")
        field = f"resource_scales.{key}"
        if isinstance(spec, list | tuple):
            if not spec:
                raise ResourceError(f"{field}: the list of factors is empty; {_SCALE_HINT}")
            out[key] = [_scale_factor(item, f"{field}[{i}]") for i, item in enumerate(spec)]
        elif isinstance(spec, Iterator):
            raise ResourceError(
                f"{field}: an iterator is not accepted (every Airflow try is a new process, so it cannot carry its "
                f"position, and it cannot be stored as JSON); {_SCALE_HINT}"
            )
        elif callable(spec):
            raise ResourceError(
                f"{field}: a callable is not accepted (the task row stores resource_scales as JSON); {_SCALE_HINT}"
            )
        else:
            out[key] = _scale_factor(spec, field)
    return out


def _scale_factor(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ResourceError(f"{field}: expected a number, got {value!r}; {_SCALE_HINT}")
    factor = float(value)
    if not math.isfinite(factor) or factor < 0:
        raise ResourceError(f"{field}: must be a finite number ≥ 0, got {value!r}")
    return factor


def scale_resources(resources: Resources, scales: Mapping[str, ScaleSpec] | None, retry: int = 1) -> Resources:
    """Scale after a resource kill, as Jobmon's ``TaskResources.adjust_resources``.

    ``retry`` counts the retries after a resource kill from 1 and picks a list's factor (``retry - 1``, capped at
    its last); a number is the same on every retry. A factor ``s`` gives ``ceil(old × (1 + s))`` (memory rounded
    up to whole MiB, runtime to whole seconds, cores to whole cores). ``scales`` is checked by
    :func:`validate_resource_scales`; ``None`` means :data:`DEFAULT_RESOURCE_SCALES`.
    """
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 1:
        raise ValueError(f"retry: expected a whole number ≥ 1, got {retry!r}")
    validated = validate_resource_scales(scales)
    changes: dict[str, Any] = {}
    for key, spec in (DEFAULT_RESOURCE_SCALES if validated is None else validated).items():
        factor = spec[min(retry, len(spec)) - 1] if isinstance(spec, list) else spec
        changes[key] = _normalise_scaled(key, getattr(resources, key) * (1 + factor))
    return replace(resources, **changes)


def _normalise_scaled(key: str, value: float) -> float | int:
    """Round a scaled value up: memory to whole MiB, runtime to whole seconds, cores to whole cores."""
    if key == "memory":
        return math.ceil(value * 1024) / 1024
    return math.ceil(value)


@dataclass(frozen=True)
class QueueLimits:
    """What one queue allows; None means unlimited."""

    name: str
    max_cores: int | None = None
    max_memory: float | None = None  # GiB
    max_runtime: int | None = None  # seconds

    def problems(self, resources: Resources) -> list[str]:
        out = []
        if self.max_cores is not None and resources.cores > self.max_cores:
            out.append(f"cores {resources.cores} exceeds queue {self.name} limit {self.max_cores}")
        if self.max_memory is not None and resources.memory > self.max_memory:
            out.append(f"memory {resources.memory:g}G exceeds queue {self.name} limit {self.max_memory:g}G")
        if self.max_runtime is not None and resources.runtime > self.max_runtime:
            out.append(f"runtime {resources.runtime}s exceeds queue {self.name} limit {self.max_runtime}s")
        return out

    def coerce(self, resources: Resources) -> Resources:
        return replace(
            resources,
            queue=self.name,
            cores=min(resources.cores, self.max_cores or resources.cores),
            memory=min(resources.memory, self.max_memory or resources.memory),
            runtime=min(resources.runtime, self.max_runtime or resources.runtime),
        )


def fit_queue(
    resources: Resources,
    limits_of: Callable[[str | None], QueueLimits],
    fallback_queues: Sequence[str] = (),
) -> tuple[Resources, list[str]]:
    """Place resources on the first queue of ``[requested] + fallback_queues`` that fits, as Jobmon does.

    Returns the resources (queue filled in) and warnings. When no queue fits and there are fallback queues, the
    last one is used with values coerced to its limits (Jobmon's ``coerce_resources``); with no fallback queues
    a misfit raises :class:`ResourceError`.
    """
    candidates: list[str | None] = [resources.queue, *[q for q in fallback_queues if q != resources.queue]]
    all_problems: list[str] = []
    last: QueueLimits | None = None
    for queue in candidates:
        last = limits_of(queue)
        problems = last.problems(resources)
        if not problems:
            return replace(resources, queue=last.name), []
        all_problems.extend(problems)
    assert last is not None
    if not fallback_queues:
        raise ResourceError("compute_resources: " + "; ".join(all_problems))
    coerced = last.coerce(resources)
    return coerced, [*all_problems, f"coerced to the limits of queue {last.name}: {coerced.to_dict()}"]
