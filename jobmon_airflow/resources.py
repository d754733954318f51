"""Compute resources in Jobmon's keys and units: parsing, validation against queue limits, scaling on retry.

Keys (Jobmon's ``client/task_resources.py``): ``cores``; ``memory`` in GiB (a number, or "2G"/"500M"/"1.5T");
``runtime`` in seconds (a number, "HH:MM:SS", or "2h"/"30m"/"10s"); ``queue``; ``project``.
"""

from __future__ import annotations

import math
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


ScaleSpec = float | int | Callable[[Any], Any] | Iterator[Any]


def scale_resources(resources: Resources, scales: Mapping[str, ScaleSpec] | None) -> Resources:
    """Scale after a resource kill, as Jobmon's ``TaskResources.adjust_resources``.

    A number ``s`` gives ``ceil(old × (1 + s))`` (memory rounded up to whole MiB, runtime to whole seconds);
    a callable gives ``f(old)``; an iterator gives its next value, keeping the old one when exhausted.
    """
    scales = DEFAULT_RESOURCE_SCALES if scales is None else scales
    changes: dict[str, Any] = {}
    for key, spec in scales.items():
        if key not in SCALABLE_KEYS:
            raise ResourceError(f"resource_scales: cannot scale {key!r}; scalable: {', '.join(sorted(SCALABLE_KEYS))}")
        old = getattr(resources, key)
        if isinstance(spec, bool):
            raise ResourceError(f"resource_scales.{key}: expected a number, callable or iterator, got {spec!r}")
        if isinstance(spec, int | float):
            if spec < 0:
                raise ResourceError(f"resource_scales.{key}: must not be negative, got {spec!r}")
            new: Any = old * (1 + spec)
        elif callable(spec):
            new = spec(old)
        else:
            new = next(spec, old)
        changes[key] = _normalise_scaled(key, new)
    return replace(resources, **changes)


def _normalise_scaled(key: str, value: Any) -> Any:
    field = f"resource_scales.{key}"
    if key == "memory":
        return math.ceil(parse_memory(value, field) * 1024) / 1024  # whole MiB
    whole = math.ceil(value) if isinstance(value, float) else value
    return parse_runtime(whole, field) if key == "runtime" else parse_cores(whole, field)


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
