"""Compute resources in Jobmon's keys and units: parsing, validation against queue limits, scaling on retry.

Keys (Jobmon's ``client/task_resources.py``): ``cores``; ``memory`` in GiB (a number, or "2G"/"500M"/"1.5T");
``runtime`` in seconds (a number, "HH:MM:SS", or "2h"/"30m"/"10s"); ``queue``; ``project``.

A request is bounded (:data:`MAX_CORES`, :data:`MAX_MEMORY_GIB`, :data:`MAX_RUNTIME_S`): no job needs more, so a
larger value is a mistake (a unit or a digit too many), and a bounded value keeps the arithmetic of scaling finite.
A retry's growth factor is bounded too (:data:`MAX_SCALE_FACTOR`), and scaled values stop at the same bounds.
"""

from __future__ import annotations

import math
import numbers
import re
import reprlib
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

#: The largest requests accepted (see :func:`parse_cores`, :func:`parse_memory`, :func:`parse_runtime`).
MAX_CORES = 1_000_000
MAX_MEMORY_GIB = float(1024**2)  # 1 PiB
MAX_RUNTIME_S = 3650 * 86400  # 10 years
#: The largest growth factor of a retry: × (1 + 100), i.e. +10,000 %.
MAX_SCALE_FACTOR = 100.0
_MAXIMA: dict[str, float] = {"cores": MAX_CORES, "memory": MAX_MEMORY_GIB, "runtime": MAX_RUNTIME_S}
_BOUND_TEXT = {
    "cores": f"{MAX_CORES:,} cores",
    "memory": f"1 PiB ({MAX_MEMORY_GIB:,.0f} GiB)",
    "runtime": f"10 years ({MAX_RUNTIME_S:,} seconds)",
}

_MEMORY_UNITS_GIB = {"": 1.0, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_RUNTIME_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RUNTIME_SUFFIX_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.IGNORECASE)
_RUNTIME_CLOCK_RE = re.compile(r"^\s*(?:(\d+):)?(\d+):(\d+)\s*$")
_RUNTIME_SECONDS_RE = re.compile(r"^\s*(\d+)\s*$")


class ResourceError(ValueError):
    """A resource value is malformed or does not fit any queue; the message names the field."""


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


def _show(value: Any) -> str:
    """A value for an error message, shortened (Python cannot even print an integer of more than 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        return _SHORT.repr(value)
    except Exception:  # a repr of some odd object failed: its type is enough
        return f"a value of type {type(value).__name__}"


def _as_float(value: int | float) -> float:
    """``float(value)``; an integer past the float range is infinitely large (and so refused as too large)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _check_amount(amount: float, value: Any, field: str, key: str, bounded: bool) -> None:
    """Greater than zero, and at most the bound of ``key`` (or, not ``bounded``, finite)."""
    if math.isnan(amount) or amount <= 0:
        raise ResourceError(f"{field}: must be greater than zero, got {_show(value)}")
    if bounded and amount > _MAXIMA[key]:
        raise ResourceError(f"{field}: at most {_BOUND_TEXT[key]}, got {_show(value)}")
    if math.isinf(amount):
        raise ResourceError(f"{field}: too large to be a number, got {_show(value)}")


def parse_memory(value: Any, field: str = "memory", *, bounded: bool = True) -> float:
    """Return memory in GiB from a GiB number or a string with a K/M/G/T suffix (1024-based).

    At most :data:`MAX_MEMORY_GIB` (1 PiB); ``bounded=False`` (what a cluster states, not what a job asks for)
    takes any finite amount."""
    if isinstance(value, bool):
        raise ResourceError(f"{field}: expected GiB as a number or a string like '2G' or '500M', got {value!r}")
    if isinstance(value, int | float):
        gib = _as_float(value)
    elif isinstance(value, str) and (m := _MEMORY_RE.match(value)):
        gib = float(m.group(1)) * _MEMORY_UNITS_GIB[m.group(2).upper()]  # float() of digits: inf, never an error
    else:
        raise ResourceError(f"{field}: expected GiB as a number or a string like '2G' or '500M', got {_show(value)}")
    _check_amount(gib, value, field, "memory", bounded)
    return gib


def parse_runtime(value: Any, field: str = "runtime", *, bounded: bool = True) -> int:
    """Return runtime in whole seconds from seconds, "HH:MM:SS"/"MM:SS", or "2h"/"30m"/"10s"/"1d".

    At most :data:`MAX_RUNTIME_S` (10 years); ``bounded=False`` (what a cluster states, not what a job asks for)
    takes any finite time."""
    seconds: float
    if isinstance(value, bool):
        raise ResourceError(f"{field}: expected seconds, 'HH:MM:SS' or a string like '10m', got {value!r}")
    # Digits are read with float(): int() refuses more than 4300 digits, and a str.isdigit() digit such as '²'.
    if isinstance(value, int | float):
        seconds = _as_float(value)
    elif isinstance(value, str) and (m := _RUNTIME_SUFFIX_RE.match(value)):
        seconds = float(m.group(1)) * _RUNTIME_UNITS_S[m.group(2).lower()]
    elif isinstance(value, str) and (m := _RUNTIME_CLOCK_RE.match(value)):
        hours, minutes, secs = float(m.group(1) or 0), float(m.group(2)), float(m.group(3))
        if minutes >= 60 or secs >= 60:
            raise ResourceError(f"{field}: minutes and seconds must be below 60 in {_show(value)}")
        seconds = hours * 3600 + minutes * 60 + secs
    elif isinstance(value, str) and (m := _RUNTIME_SECONDS_RE.match(value)):
        seconds = float(m.group(1))
    else:
        raise ResourceError(f"{field}: expected seconds, 'HH:MM:SS' or a string like '10m', got {_show(value)}")
    _check_amount(seconds, value, field, "runtime", bounded)
    return math.ceil(seconds)


def parse_cores(value: Any, field: str = "cores") -> int:
    """Return a whole number of cores, 1 to :data:`MAX_CORES`."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ResourceError(f"{field}: expected a whole number of cores, got {_show(value)}")
    try:
        cores = int(value)
    except ValueError:
        if not (isinstance(value, str) and value.strip().isdecimal()):
            raise ResourceError(f"{field}: expected a whole number of cores, got {_show(value)}") from None
        cores = MAX_CORES + 1  # more digits than int() reads (4300): far past the bound
    if cores < 1:
        raise ResourceError(f"{field}: must be at least 1, got {_show(value)}")
    if cores > MAX_CORES:
        raise ResourceError(f"{field}: at most {_BOUND_TEXT['cores']}, got {_show(value)}")
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


#: One resource's growth after a resource kill: a number ``0 ≤ s ≤ 100`` (every retry ``× (1 + s)``), or a
#: non-empty list of them, the k-th (k from 1) for the k-th retry after a resource kill, the last repeating after
#: the list.
ScaleSpec = float | int | list[float | int] | tuple[float | int, ...]

_SCALE_HINT = (
    f"use a number from 0 to {MAX_SCALE_FACTOR:g} or a non-empty list of numbers from 0 to {MAX_SCALE_FACTOR:g} "
    "(the factor for the k-th retry)"
)


def validate_resource_scales(scales: Mapping[str, Any] | None) -> dict[str, float | list[float]] | None:
    """Check ``resource_scales``; return a normalised, JSON-able copy or raise :class:`ResourceError` naming the field.

    Pure: nothing given is consumed or changed, so it may run at DAG parse and again in every try. ``None`` stays
    ``None`` (Jobmon's default, :data:`DEFAULT_RESOURCE_SCALES`); ``{}`` means nothing scales. A factor above
    :data:`MAX_SCALE_FACTOR` (+10,000 % per retry) cannot be meant and is refused. Callables and iterators are
    refused: each Airflow try is a new process (an iterator cannot carry its position) and the task
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
        raise ResourceError(f"{field}: expected a number, got {_show(value)}; {_SCALE_HINT}")
    try:
        factor = float(value)
    except OverflowError:  # an integer or a fraction past the float range
        factor = math.inf
    except (TypeError, ValueError):
        raise ResourceError(f"{field}: expected a number, got {_show(value)}; {_SCALE_HINT}") from None
    if math.isnan(factor) or factor < 0:
        raise ResourceError(f"{field}: must be a finite number ≥ 0, got {_show(value)}")
    if factor > MAX_SCALE_FACTOR:
        raise ResourceError(
            f"{field}: at most {MAX_SCALE_FACTOR:g} (× {1 + MAX_SCALE_FACTOR:g}, +10,000 % per retry), "
            f"got {_show(value)}"
        )
    return factor


def scale_resources(resources: Resources, scales: Mapping[str, ScaleSpec] | None, retry: int = 1) -> Resources:
    """Scale after a resource kill, as Jobmon's ``TaskResources.adjust_resources``.

    ``retry`` counts the retries after a resource kill from 1 and picks a list's factor (``retry - 1``, capped at
    its last); a number is the same on every retry. A factor ``s`` gives ``ceil(old × (1 + s))`` (memory rounded
    up to whole MiB, runtime to whole seconds, cores to whole cores), at most the bound a request may ask for
    (:data:`MAX_MEMORY_GIB`, :data:`MAX_RUNTIME_S`, :data:`MAX_CORES`; never less than ``old``), so the result
    parses again. ``scales`` is checked by :func:`validate_resource_scales`; ``None`` means
    :data:`DEFAULT_RESOURCE_SCALES`.
    """
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 1:
        raise ValueError(f"retry: expected a whole number ≥ 1, got {retry!r}")
    validated = validate_resource_scales(scales)
    changes: dict[str, Any] = {}
    for key, spec in (DEFAULT_RESOURCE_SCALES if validated is None else validated).items():
        factor = spec[min(retry, len(spec)) - 1] if isinstance(spec, list) else spec
        changes[key] = _normalise_scaled(key, getattr(resources, key), factor)
    return replace(resources, **changes)


def _normalise_scaled(key: str, old: float, factor: float) -> float | int:
    """``old × (1 + factor)`` rounded up (memory to whole MiB, runtime to whole seconds, cores to whole cores) and
    capped at the bound of ``key``; an ``old`` past the bound (a Resources built without parsing) stays as it is."""
    try:
        grown = old * (1 + factor)
    except OverflowError:  # an int old past the float range
        grown = math.inf
    if math.isnan(grown):
        raise ResourceError(f"compute_resources.{key}: cannot scale {_show(old)}")
    cap = _MAXIMA[key]
    if grown >= cap:  # an infinite product too: a huge old value times a factor
        bound = cap if key == "memory" else int(cap)
        return old if old > bound else bound
    if key == "memory":
        return math.ceil(grown * 1024) / 1024
    return math.ceil(grown)


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
