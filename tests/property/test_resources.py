"""Properties of compute resources: parsing and formatting round trips, errors that name their field, scaling.

Whatever a DAG author writes must either parse or raise :class:`ResourceError` (a ``ValueError``) whose message
starts with the field; a request is at most the module's bounds (1 PiB, 10 years, 1,000,000 cores); resource scales
are checked without being consumed, and scaling never shrinks a request nor grows it past those bounds.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from jobmon_airflow.resources import (
    DEFAULT_RESOURCE_SCALES,
    KNOWN_KEYS,
    MAX_CORES,
    MAX_MEMORY_GIB,
    MAX_RUNTIME_S,
    MAX_SCALE_FACTOR,
    SCALABLE_KEYS,
    ResourceError,
    Resources,
    format_memory,
    format_runtime,
    parse_cores,
    parse_memory,
    parse_runtime,
    scale_resources,
    validate_resource_scales,
)

MIB = 1 / 1024
UNIT_GIB = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

gib_values = st.floats(min_value=MIB / 4, max_value=1e6, allow_nan=False, allow_infinity=False)
seconds = st.integers(1, MAX_RUNTIME_S)
names = st.from_regex(r"[A-Za-z0-9_.@-]{1,20}", fullmatch=True)
BOUNDS: dict[str, float] = {"cores": MAX_CORES, "memory": MAX_MEMORY_GIB, "runtime": MAX_RUNTIME_S}
field_names = st.sampled_from(["memory", "compute_resources.memory", "tasks[3].compute_resources.runtime", "x"])


# --------------------------------------------------------------------------------------------------------------
# Round trips


@given(gib_values)
def test_memory_format_parse_round_trip_rounds_up_to_whole_mib(gib: float) -> None:
    text = format_memory(gib)
    assert re.fullmatch(r"[1-9]\d*M", text)
    back = parse_memory(text)
    assert gib <= back < gib + MIB
    assert format_memory(back) == text  # formatting a formatted value changes nothing


@given(
    st.integers(1, 10**6) | st.decimals(min_value="0.001", max_value="100000", places=3).map(str),
    st.sampled_from(sorted(UNIT_GIB)),
    st.sampled_from(["", "B", "iB"]),
    st.booleans(),
    st.sampled_from(["", " ", "  "]),
)
def test_memory_units(number: int | str, unit: str, suffix: str, lower: bool, pad: str) -> None:
    text = f"{pad}{number}{pad}{unit.lower() if lower else unit}{suffix}{pad}"
    gib = float(number) * UNIT_GIB[unit]
    assume(gib > 0)
    if gib > MAX_MEMORY_GIB:  # more than 1 PiB: refused, saying so
        with pytest.raises(ResourceError, match=r"^memory: at most 1 PiB"):
            parse_memory(text)
        return
    assert parse_memory(text) == pytest.approx(gib, rel=1e-12)
    assert parse_memory(str(number)) == pytest.approx(float(number))  # a bare number is GiB
    assert parse_memory(gib) == gib


@given(seconds)
def test_runtime_format_parse_round_trip(s: int) -> None:
    text = format_runtime(s)
    assert re.fullmatch(r"\d+:[0-5]\d:[0-5]\d", text)
    assert parse_runtime(text) == s
    assert parse_runtime(str(s)) == s == parse_runtime(s) == parse_runtime(float(s))


@given(st.integers(1, 10**6), st.sampled_from(sorted(UNIT_S)), st.booleans(), st.integers(0, 59), st.integers(0, 59))
def test_runtime_units_and_clock_forms(n: int, unit: str, upper: bool, minutes: int, secs: int) -> None:
    for text, expected in [
        (f"{n}{unit.upper() if upper else unit}", n * UNIT_S[unit]),
        (f" {n}.5{unit} ", math.ceil(n * UNIT_S[unit] + 0.5 * UNIT_S[unit])),
        (f"{n}:{minutes:02d}:{secs:02d}", n * 3600 + minutes * 60 + secs),
    ]:
        if expected > MAX_RUNTIME_S:  # more than 10 years: refused, saying so
            with pytest.raises(ResourceError, match=r"^runtime: at most 10 years"):
                parse_runtime(text)
        else:
            assert parse_runtime(text) == expected
    if minutes or secs:
        assert parse_runtime(f"{minutes}:{secs:02d}") == minutes * 60 + secs  # MM:SS


@given(st.floats(min_value=1e-9, max_value=MAX_RUNTIME_S))
def test_runtime_rounds_numbers_up_to_whole_seconds(value: float) -> None:
    parsed = parse_runtime(value)
    assert isinstance(parsed, int)
    assert parsed == math.ceil(value)


resources = st.builds(
    Resources,
    cores=st.integers(1, 10**4),
    memory=gib_values,
    runtime=seconds,
    queue=st.none() | names,
    project=st.none() | names,
)


@given(resources)
def test_resources_parse_round_trips(r: Resources) -> None:
    assert Resources.parse(r.to_dict()) == r
    assert Resources.parse(json.loads(json.dumps(r.to_dict()))) == r  # as stored in task_resources
    as_text = {**r.to_dict(), "memory": format_memory(r.memory), "runtime": format_runtime(r.runtime)}
    as_text["cores"] = str(r.cores)
    parsed = Resources.parse(as_text)
    assert (parsed.cores, parsed.runtime, parsed.queue, parsed.project) == (r.cores, r.runtime, r.queue, r.project)
    assert r.memory <= parsed.memory < r.memory + MIB


# --------------------------------------------------------------------------------------------------------------
# Anything else: ResourceError naming the field

resource_texts = st.text(st.sampled_from("0123456789.:smhdKMGTBi -+e,²١"), max_size=12)
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.floats(),
    st.fractions(),
    st.text(max_size=20),
    resource_texts,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()),
)


def assert_resource_error_or(fn: Any, value: Any, field: str) -> Any:
    """Call ``fn(value, field)``: a result, or a ResourceError whose message starts with the field."""
    try:
        return fn(value, field)
    except ResourceError as exc:
        assert str(exc).startswith(f"{field}: "), str(exc)
        return None


@given(anything, field_names)
@example("", "memory")
@example("1e3G", "memory")
def test_parse_memory_anything_is_gib_or_resource_error(value: Any, field: str) -> None:
    gib = assert_resource_error_or(parse_memory, value, field)
    assert gib is None or (isinstance(gib, float) and 0 < gib <= MAX_MEMORY_GIB)


@given(anything, field_names)
@example("1:60:00", "runtime")
@example("0", "runtime")
def test_parse_runtime_anything_is_seconds_or_resource_error(value: Any, field: str) -> None:
    s = assert_resource_error_or(parse_runtime, value, field)
    assert s is None or (isinstance(s, int) and 1 <= s <= MAX_RUNTIME_S)


@given(anything, field_names)
def test_parse_cores_anything_is_cores_or_resource_error(value: Any, field: str) -> None:
    cores = assert_resource_error_or(parse_cores, value, field)
    assert cores is None or (isinstance(cores, int) and 1 <= cores <= MAX_CORES)


@given(st.sampled_from(sorted(KNOWN_KEYS)), anything, st.sampled_from(["compute_resources", "t.default_resources"]))
def test_resources_parse_names_the_bad_key(key: str, value: Any, field: str) -> None:
    try:
        parsed = Resources.parse({key: value}, field)
    except ResourceError as exc:
        assert str(exc).startswith(f"{field}.{key}: "), str(exc)
        return
    assert isinstance(parsed, Resources)


@given(
    st.dictionaries(st.sampled_from(sorted(KNOWN_KEYS)) | st.text(max_size=8), anything, max_size=6),
)
def test_resources_parse_anything_is_resources_or_resource_error(requested: dict[str, Any]) -> None:
    try:
        parsed = Resources.parse(requested)
    except ResourceError as exc:
        message = str(exc)
        named = re.match(r"compute_resources(?:\.(\w+))?: ", message)
        assert named, message
        assert named.group(1) is None or named.group(1) in requested  # a key that was given
        return
    assert parsed == Resources.parse(parsed.to_dict())


@pytest.mark.parametrize(
    ("fn", "value"),
    [
        ("runtime", "²"),
        ("runtime", "9" * 400),
        ("runtime", "9" * 5000),
        ("runtime", 10**400),
        ("memory", "9" * 5000),
        ("memory", 10**400),
        ("resources", 10**400),
    ],
    ids=[
        "superscript",
        "400-digits",
        "5000-digits",
        "runtime-int",
        "memory-5000-digits",
        "memory-int",
        "Resources-memory-int",
    ],
)
def test_huge_or_odd_numbers_raise_resource_error(fn: str, value: Any) -> None:
    """Were OverflowError (numbers past the float range: an int ≥ 2**1024, more than 308 digits) and a bare
    ValueError from int() ('²', which str.isdigit() takes; more than 4300 digits), not ResourceError naming the
    field."""
    with pytest.raises(ResourceError, match=r"^compute_resources\.(runtime|memory): "):
        if fn == "runtime":
            parse_runtime(value, "compute_resources.runtime")
        elif fn == "memory":
            parse_memory(value, "compute_resources.memory")
        else:
            Resources.parse({"memory": value})


@given(
    st.sampled_from(["cores", "memory", "runtime"]), st.integers(1, 10**400), st.sampled_from(["int", "str", "float"])
)
@example("runtime", 1, "str")
@example("memory", 10**400, "int")
def test_values_past_the_bounds_raise_resource_error_saying_so(key: str, excess: int, form: str) -> None:
    bound = BOUNDS[key]
    value: Any = int(bound) + excess
    if form == "str":
        value = str(value)
    elif form == "float" and key != "cores":  # a float is no number of cores at all
        value = float(min(value, 10**300))
    with pytest.raises(ResourceError, match=rf"^compute_resources\.{key}: at most "):
        Resources.parse({key: value})
    assert Resources.parse({key: bound}).to_dict()[key] == bound  # the bound itself is accepted


# --------------------------------------------------------------------------------------------------------------
# Scaling

factors = st.floats(min_value=0, max_value=MAX_SCALE_FACTOR) | st.integers(0, int(MAX_SCALE_FACTOR))
scale_specs = factors | st.lists(factors, min_size=1, max_size=5) | st.lists(factors, min_size=1, max_size=5).map(tuple)
scales_maps = st.dictionaries(st.sampled_from(sorted(SCALABLE_KEYS)), scale_specs)
small_resources = st.builds(
    Resources,
    cores=st.integers(1, 1000),
    memory=st.floats(min_value=MIB / 4, max_value=1e5),
    runtime=st.integers(1, 10**8),
    queue=st.none() | names,
)


def factor_for(spec: Any, retry: int) -> float:
    return float(spec[min(retry, len(spec)) - 1]) if isinstance(spec, list | tuple) else float(spec)


@given(small_resources, st.none() | scales_maps, st.integers(1, 12))
def test_scaling_never_shrinks_and_follows_the_formula(r: Resources, scales: dict[str, Any] | None, retry: int) -> None:
    scaled = scale_resources(r, scales, retry)
    effective = DEFAULT_RESOURCE_SCALES if scales is None else scales
    assert (scaled.queue, scaled.project) == (r.queue, r.project)
    for key in SCALABLE_KEYS:
        old, new = getattr(r, key), getattr(scaled, key)
        assert new >= old
        if key not in effective:
            assert new == old
            continue
        grown = old * (1 + factor_for(effective[key], retry))
        if grown >= BOUNDS[key]:  # capped at what a request may ask for
            assert new == BOUNDS[key]
            continue
        if key == "memory":
            assert new == math.ceil(grown * 1024) / 1024 and (new * 1024).is_integer()
            assert grown <= new < grown + MIB
        else:
            assert new == math.ceil(grown) and isinstance(new, int)


@given(small_resources, scales_maps, st.integers(1, 8))
def test_scaling_retries_is_a_non_decreasing_chain(r: Resources, scales: dict[str, Any], retries: int) -> None:
    chain = [r]
    for retry in range(1, retries + 1):
        chain.append(scale_resources(chain[-1], scales, retry))
    for before, after in itertools.pairwise(chain):
        assert (after.cores, after.memory, after.runtime) >= (before.cores, before.memory, before.runtime)
        assert after.cores >= before.cores and after.memory >= before.memory and after.runtime >= before.runtime


@given(scales_maps, small_resources, st.integers(1, 5))
def test_scales_are_never_consumed_and_validate_to_json(scales: dict[str, Any], r: Resources, retry: int) -> None:
    before = copy.deepcopy(scales)
    validated = validate_resource_scales(scales)
    first = scale_resources(r, scales, retry)
    again = scale_resources(r, scales, retry)
    assert scales == before  # nothing given is changed
    assert first == again  # and using them twice gives the same (nothing was used up)
    assert validated is not None
    for key, spec in validated.items():
        if isinstance(spec, list):
            assert spec is not scales[key]
            spec.append(123.0)  # the normalised copy is the caller's own
    assert scales == before
    clean = validate_resource_scales(before)
    assert clean == validate_resource_scales(json.loads(json.dumps(clean)))  # the task row stores it as JSON
    assert scale_resources(r, json.loads(json.dumps(clean)), retry) == first


def _iterator() -> Iterator[float]:
    return iter([0.5])


bad_specs = st.one_of(
    anything,
    st.lists(anything, max_size=3),
    st.tuples(anything),
    st.sampled_from([float("nan"), float("inf"), -0.5, -1, True, "0.5", [], (), set(), {0.5}, {"memory": 0.5}]),
    st.builds(_iterator),
    st.just(lambda retry: 0.5),
)
any_scales = st.one_of(
    st.dictionaries(st.sampled_from(sorted(SCALABLE_KEYS)) | st.text(max_size=8), bad_specs | scale_specs, max_size=4),
    anything,
)


@given(any_scales, st.integers(1, 3))
def test_bad_scales_raise_only_resource_error_naming_the_field(scales: Any, retry: int) -> None:
    try:
        validated = validate_resource_scales(scales)
    except ResourceError as exc:
        assert str(exc).startswith("resource_scales"), str(exc)
        with pytest.raises(ResourceError):
            scale_resources(Resources(), scales, retry)
        return
    assert validated is None or json.loads(json.dumps(validated)) == validated
    scaled = scale_resources(Resources(), scales, retry)  # what validates also scales (factors 0 to 100)
    assert scaled.memory >= Resources().memory
    assert Resources.parse(scaled.to_dict()) == scaled  # and the result is a request that parses again


@pytest.mark.parametrize(
    "scales",
    [{"memory": [0.5, 1e308]}, {"memory": 10**400}, {"runtime": Fraction(10**400)}, {"runtime": 100.5}],
    ids=["finite-factor", "huge-int", "huge-fraction", "over-100"],
)
def test_overflowing_scales_raise_resource_error(scales: dict[str, Any]) -> None:
    """Were accepted at DAG parse and overflowed at retry time (math.ceil(inf): OverflowError), or raised
    OverflowError from float() (10**400); a factor above 100 (+10,000 % per retry) cannot be meant."""
    with pytest.raises(ResourceError, match=r"^resource_scales\.(memory|runtime)"):
        validate_resource_scales(scales)
    with pytest.raises(ResourceError, match=r"^resource_scales\.(memory|runtime)"):
        scale_resources(Resources(), scales, retry=2)


@given(
    st.builds(
        Resources,
        cores=st.integers(1, MAX_CORES),
        memory=st.floats(min_value=MIB / 4, max_value=MAX_MEMORY_GIB),
        runtime=st.integers(1, MAX_RUNTIME_S),
    ),
    scales_maps,
    st.integers(1, 12),
)
def test_scaling_stays_within_the_bounds(r: Resources, scales: dict[str, Any], retry: int) -> None:
    """Any request and any accepted factor: never an OverflowError, at most the bounds, parseable again (the next
    retry parses the stored request before scaling it)."""
    scaled = scale_resources(r, scales, retry)
    assert scaled.cores <= MAX_CORES and scaled.memory <= MAX_MEMORY_GIB and scaled.runtime <= MAX_RUNTIME_S
    assert Resources.parse(scaled.to_dict()) == scaled
