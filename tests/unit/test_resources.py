"""Compute resources in Jobmon's keys and units (reference §7): parsing, scaling on retry, fitting to queues."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from fractions import Fraction

import pytest

from jobmon_airflow.resources import (
    DEFAULT_RESOURCE_SCALES,
    MAX_CORES,
    MAX_MEMORY_GIB,
    MAX_RUNTIME_S,
    QueueLimits,
    ResourceError,
    Resources,
    fit_queue,
    format_memory,
    format_runtime,
    parse_cores,
    parse_memory,
    parse_runtime,
    scale_resources,
    validate_resource_scales,
)

DAY = 86400


# --- memory (GiB) ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "gib"),
    [
        (2, 2.0),
        (2.5, 2.5),
        ("8G", 8.0),
        ("8g", 8.0),
        (" 8G ", 8.0),
        ("8", 8.0),  # a bare number is GiB, as Jobmon's int
        ("2GB", 2.0),
        ("2GiB", 2.0),
        ("500M", 500 / 1024),
        ("1024M", 1.0),
        ("1048576K", 1.0),
        ("1.5T", 1536.0),
        ("1.5G", 1.5),
    ],
)
def test_parse_memory(value: object, gib: float) -> None:
    assert parse_memory(value) == pytest.approx(gib)


@pytest.mark.parametrize(
    "value", ["lots", "", "G", "2X", "-2G", None, True, [2], 0, "0G", -1, float("nan"), float("inf")]
)
def test_parse_memory_rejects(value: object) -> None:
    with pytest.raises(ResourceError, match=r"^compute_resources\.memory: "):
        parse_memory(value, "compute_resources.memory")


# --- runtime (seconds) ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (600, 600),
        (600.2, 601),  # whole seconds, rounded up
        ("90", 90),
        ("10s", 10),
        ("10m", 600),
        ("30M", 1800),
        ("2h", 7200),
        ("1.5h", 5400),
        ("1d", DAY),
        ("01:00:00", 3600),
        ("72:00:00", 3 * DAY),
        ("1:02:03", 3723),
        ("10:30", 630),  # MM:SS
    ],
)
def test_parse_runtime(value: object, seconds: int) -> None:
    assert parse_runtime(value) == seconds
    assert isinstance(parse_runtime(value), int)


@pytest.mark.parametrize(
    "value", ["abc", "", "10x", "1:60:00", "1:00:60", "0", "0s", 0, -5, None, True, float("inf"), "1:2:3:4"]
)
def test_parse_runtime_rejects(value: object) -> None:
    with pytest.raises(ResourceError, match=r"^compute_resources\.runtime: "):
        parse_runtime(value, "compute_resources.runtime")


# --- cores ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "cores"), [(1, 1), (16, 16), ("4", 4), (" 2 ", 2)])
def test_parse_cores(value: object, cores: int) -> None:
    assert parse_cores(value) == cores


@pytest.mark.parametrize("value", [0, -1, "1.5", 1.5, "two", None, True, "0"])
def test_parse_cores_rejects(value: object) -> None:
    with pytest.raises(ResourceError, match=r"^compute_resources\.cores: "):
        parse_cores(value, "compute_resources.cores")


# --- huge and odd numbers, and the bounds of a request ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("parse", "value"),
    [
        (parse_runtime, "²"),  # str.isdigit() takes it, int() does not
        (parse_runtime, "9" * 400),  # past the float range
        (parse_runtime, "9" * 5000),  # past int()'s 4300 digits
        (parse_runtime, "9" * 5000 + ":00:00"),
        (parse_runtime, "9" * 400 + "h"),
        (parse_runtime, 10**400),
        (parse_memory, 10**400),
        (parse_memory, "9" * 5000 + "G"),
        (parse_cores, "9" * 5000),
        (parse_cores, 10**400),
    ],
)
def test_huge_or_odd_numbers_are_a_resource_error_naming_the_field(parse: Callable[..., object], value: object) -> None:
    """Were OverflowError or a bare ValueError from float()/int(), not ResourceError naming the field."""
    with pytest.raises(ResourceError, match=r"^compute_resources\.x: "):
        parse(value, "compute_resources.x")


def test_resources_parse_of_a_huge_int_names_the_field() -> None:
    with pytest.raises(ResourceError, match=r"^compute_resources\.memory: at most 1 PiB"):
        Resources.parse({"memory": 10**400})


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ({"memory": "1025T"}, r"^compute_resources\.memory: at most 1 PiB \(1,048,576 GiB\), got '1025T'"),
        ({"memory": MAX_MEMORY_GIB * 2}, r"^compute_resources\.memory: at most 1 PiB"),
        ({"runtime": "3651d"}, r"^compute_resources\.runtime: at most 10 years \(315,360,000 seconds\)"),
        ({"runtime": MAX_RUNTIME_S + 1}, r"^compute_resources\.runtime: at most 10 years"),
        ({"runtime": "87601:00:00"}, r"^compute_resources\.runtime: at most 10 years"),
        ({"cores": MAX_CORES + 1}, r"^compute_resources\.cores: at most 1,000,000 cores"),
        ({"cores": "1000001"}, r"^compute_resources\.cores: at most 1,000,000 cores"),
    ],
)
def test_requests_past_the_bounds_are_refused_saying_so(requested: dict[str, object], message: str) -> None:
    with pytest.raises(ResourceError, match=message):
        Resources.parse(requested)


def test_the_bounds_themselves_are_accepted() -> None:
    r = Resources.parse({"memory": "1024T", "runtime": "3650d", "cores": MAX_CORES})
    assert (r.memory, r.runtime, r.cores) == (MAX_MEMORY_GIB, MAX_RUNTIME_S, MAX_CORES)
    assert parse_runtime("١٢") == 12  # digits of other scripts are still digits


def test_a_cluster_limit_is_not_held_to_the_bounds() -> None:
    assert parse_runtime("1000000:00:00", bounded=False) == 3_600_000_000
    assert parse_memory("2000000G", bounded=False) == 2_000_000
    with pytest.raises(ResourceError, match=r"^h_rt: too large to be a number"):
        parse_runtime("9" * 400, "h_rt", bounded=False)


# --- Resources.parse ------------------------------------------------------------------------------------------------
def test_resources_parse_normalises_units() -> None:
    r = Resources.parse({"cores": "2", "memory": "500M", "runtime": "01:30:00", "queue": "all.q", "project": "proj_x"})
    assert r == Resources(cores=2, memory=500 / 1024, runtime=5400, queue="all.q", project="proj_x")
    assert r.memory_bytes == 500 * 2**20


def test_resources_parse_defaults() -> None:
    # IHME defaults: 1 core, 1 GB, 10 min; no queue or project unless given.
    assert Resources.parse(None) == Resources(cores=1, memory=1.0, runtime=600, queue=None, project=None)
    assert Resources.parse({}).to_dict() == {"cores": 1, "memory": 1.0, "runtime": 600}


@pytest.mark.parametrize(
    ("requested", "field"),
    [
        ({"memory": "lots"}, "compute_resources.memory"),
        ({"memory": 0}, "compute_resources.memory"),
        ({"runtime": "forever"}, "compute_resources.runtime"),
        ({"runtime": "25:61:00"}, "compute_resources.runtime"),
        ({"cores": 0}, "compute_resources.cores"),
        ({"cores": 2.5}, "compute_resources.cores"),
        ({"queue": "all.q; rm -rf /"}, "compute_resources.queue"),
        ({"queue": 3}, "compute_resources.queue"),
        ({"project": "a b"}, "compute_resources.project"),
    ],
)
def test_resources_parse_names_the_bad_field(requested: dict[str, object], field: str) -> None:
    with pytest.raises(ResourceError) as exc:
        Resources.parse(requested)
    assert str(exc.value).startswith(f"{field}: ")


def test_resources_parse_uses_the_given_field_prefix() -> None:
    with pytest.raises(ResourceError, match=r"^tasks\[3\]\.compute_resources\.memory: "):
        Resources.parse({"memory": "x"}, field="tasks[3].compute_resources")


def test_resources_parse_names_unknown_keys() -> None:
    with pytest.raises(ResourceError) as exc:
        Resources.parse({"memory": "1G", "mem": 2, "gpus": 1})
    msg = str(exc.value)
    assert msg.startswith("compute_resources: unknown key(s) gpus, mem")
    for known in ("cores", "memory", "runtime", "queue", "project"):
        assert known in msg


def test_to_dict_leaves_out_none() -> None:
    assert Resources(cores=2, memory=3.0, runtime=60).to_dict() == {"cores": 2, "memory": 3.0, "runtime": 60}
    assert Resources(queue="all.q", project="p").to_dict()["queue"] == "all.q"
    assert Resources.parse(Resources(memory=2.5, runtime=90, queue="all.q").to_dict()) == Resources(
        memory=2.5, runtime=90, queue="all.q"
    )


# --- scale_resources ------------------------------------------------------------------------------------------------
def test_default_scales_are_jobmons() -> None:
    assert DEFAULT_RESOURCE_SCALES == {"memory": 0.5, "runtime": 0.5}


def test_scale_default_is_ceil_old_times_1_5() -> None:
    r = Resources(cores=2, memory=2.0, runtime=600, queue="all.q")
    scaled = scale_resources(r, None)
    assert scaled == Resources(cores=2, memory=3.0, runtime=900, queue="all.q")  # only memory and runtime scale


def test_scale_chain_8_12_18() -> None:
    """§7: ``ceil(old × (1+s))`` (8G → 12G → 18G)."""
    r = Resources(memory=8.0, runtime=1000)
    r1 = scale_resources(r, {"memory": 0.5})
    r2 = scale_resources(r1, {"memory": 0.5})
    assert (r1.memory, r2.memory) == (12.0, 18.0)
    assert r2.runtime == 1000, "only requested keys scale"


@pytest.mark.parametrize(("old", "scale"), [(601, 0.5), (333, 0.5), (7, 0.25), (1000, 1.0), (3, 0.1)])
def test_scale_runtime_rounds_up_to_whole_seconds(old: int, scale: float) -> None:
    assert scale_resources(Resources(runtime=old), {"runtime": scale}).runtime == math.ceil(old * (1 + scale))


@pytest.mark.parametrize(("old", "scale"), [(3, 0.5), (1, 0.5), (5, 0.1)])
def test_scale_cores_rounds_up(old: int, scale: float) -> None:
    assert scale_resources(Resources(cores=old), {"cores": scale}).cores == math.ceil(old * (1 + scale))


def test_scale_fractional_memory_rounds_up_to_whole_mib() -> None:
    # Fractional GiB is allowed here (Jobmon's are integers): rounded up to whole MiB, never down.
    new = scale_resources(Resources(memory=1.3), {"memory": 0.5}).memory
    assert 1.3 * 1.5 <= new < 1.3 * 1.5 + 1 / 1024
    assert (new * 1024).is_integer()


def test_scale_zero_keeps_value() -> None:
    assert scale_resources(Resources(memory=2.0, runtime=60), {"memory": 0, "runtime": 0}) == Resources(
        memory=2.0, runtime=60
    )


@pytest.mark.parametrize(
    ("scales", "field"),
    [
        ({"queue": 0.5}, "resource_scales"),
        ({"project": 0.5}, "resource_scales"),
        ({"memory": -0.5}, "resource_scales.memory"),
        ({"memory": True}, "resource_scales.memory"),
        ({"memory": "0.5"}, "resource_scales.memory"),
        ({"runtime": float("nan")}, "resource_scales.runtime"),
        ({"cores": float("inf")}, "resource_scales.cores"),
    ],
)
def test_scale_rejects(scales: dict[str, object], field: str) -> None:
    with pytest.raises(ResourceError) as exc:
        scale_resources(Resources(), scales)  # type: ignore[arg-type]
    assert str(exc.value).startswith(f"{field}:")


# --- resource_scales as lists: the k-th factor for the k-th retry after a resource kill ------------------------------
def test_scale_list_picks_the_factor_of_the_retry_and_repeats_the_last() -> None:
    scales = {"memory": [0.5, 1.0]}
    r1 = scale_resources(Resources(memory=2.0), scales, retry=1)
    r2 = scale_resources(r1, scales, retry=2)
    r3 = scale_resources(r2, scales, retry=3)  # past the end of the list: the last factor again
    assert (r1.memory, r2.memory, r3.memory) == (3.0, 6.0, 12.0)


def test_scale_list_default_retry_is_the_first_and_numbers_repeat() -> None:
    assert scale_resources(Resources(runtime=600), {"runtime": (1.0, 0.0)}).runtime == 1200  # a tuple is a list too
    assert [scale_resources(Resources(memory=2.0), {"memory": 0.5}, retry=k).memory for k in (1, 2, 9)] == [3.0] * 3


@pytest.mark.parametrize("retry", [0, -1, True, 1.0, None])
def test_scale_retry_counts_from_one(retry: object) -> None:
    with pytest.raises(ValueError, match=r"^retry: "):
        scale_resources(Resources(), {"memory": [0.5]}, retry=retry)  # type: ignore[arg-type]


def test_validate_resource_scales_normalises_to_json() -> None:
    scales = {"memory": 1, "runtime": (0.5, 1, 2.0), "cores": [0]}
    validated = validate_resource_scales(scales)
    assert validated == {"memory": 1.0, "runtime": [0.5, 1.0, 2.0], "cores": [0.0]}
    restored = json.loads(json.dumps(validated))  # the task row stores resource_scales as JSON
    assert restored == validated
    assert validate_resource_scales(restored) == validated
    assert scale_resources(Resources(runtime=100), restored, retry=2) == scale_resources(
        Resources(runtime=100),
        scales,  # type: ignore[arg-type]
        retry=2,
    )


def test_validate_resource_scales_none_means_jobmons_default_and_empty_scales_nothing() -> None:
    assert validate_resource_scales(None) is None
    assert validate_resource_scales({}) == {}
    assert scale_resources(Resources(memory=2.0, runtime=60), {}) == Resources(memory=2.0, runtime=60)


def test_validate_resource_scales_consumes_nothing_and_is_repeatable() -> None:
    factors = [0.5, 1.0]
    scales: dict[str, object] = {"memory": factors, "runtime": 0.25}
    first = validate_resource_scales(scales)
    assert validate_resource_scales(scales) == first == {"memory": [0.5, 1.0], "runtime": 0.25}
    assert scales == {"memory": [0.5, 1.0], "runtime": 0.25} and factors == [0.5, 1.0], "the input is unchanged"
    assert first is not None and first["memory"] is not factors, "a copy, not the caller's list"
    # The operator checks the scales when the DAG is parsed; that must not change what the first retry gets.
    scale_resources(Resources(), scales)  # type: ignore[arg-type]
    assert scale_resources(Resources(memory=2.0), scales, retry=1).memory == 3.0  # type: ignore[arg-type]
    it = iter([5.0, 7.0])
    with pytest.raises(ResourceError):
        validate_resource_scales({"memory": it})
    assert next(it) == 5.0, "a refused iterator is not advanced"


def _generator() -> Iterator[float]:
    yield 0.5


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(lambda old: old * 4, id="lambda"),
        pytest.param(math.sqrt, id="builtin"),
        pytest.param(iter([5.0, 7.0]), id="iterator"),
        pytest.param(_generator(), id="generator"),
    ],
)
@pytest.mark.parametrize("check", ["validate", "scale"])
def test_callables_and_iterators_are_refused_naming_the_field(spec: object, check: str) -> None:
    with pytest.raises(ResourceError) as exc:
        if check == "validate":
            validate_resource_scales({"runtime": 0.5, "memory": spec})
        else:
            scale_resources(Resources(), {"memory": spec})  # type: ignore[dict-item]
    message = str(exc.value)
    assert message.startswith("resource_scales.memory: ")
    assert "a number" in message and "list of numbers" in message


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (-0.5, "resource_scales.memory"),
        (True, "resource_scales.memory"),
        (False, "resource_scales.memory"),
        (float("nan"), "resource_scales.memory"),
        (float("inf"), "resource_scales.memory"),
        ("0.5", "resource_scales.memory"),
        (None, "resource_scales.memory"),
        ({"factor": 0.5}, "resource_scales.memory"),
        ([], "resource_scales.memory"),
        ((), "resource_scales.memory"),
        ([0.5, -1], "resource_scales.memory[1]"),
        ([0.5, True], "resource_scales.memory[1]"),
        ([float("nan")], "resource_scales.memory[0]"),
        ([float("inf")], "resource_scales.memory[0]"),
        ([[0.5]], "resource_scales.memory[0]"),
    ],
)
def test_validate_resource_scales_rejects_naming_the_field(spec: object, field: str) -> None:
    with pytest.raises(ResourceError) as exc:
        validate_resource_scales({"memory": spec})
    assert str(exc.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (100.5, "resource_scales.memory"),
        (1e308, "resource_scales.memory"),
        (10**400, "resource_scales.memory"),  # float() of it: OverflowError
        (Fraction(10**400), "resource_scales.memory"),
        ([0.5, 1e308], "resource_scales.memory[1]"),
    ],
)
def test_validate_resource_scales_refuses_factors_that_cannot_be_meant(spec: object, field: str) -> None:
    """A factor above 100 (+10,000 % per retry) was accepted, then overflowed at retry time (math.ceil(inf)), or
    float() raised OverflowError; now refused when the DAG is parsed."""
    with pytest.raises(ResourceError, match=rf"^{re.escape(field)}: at most 100 "):
        validate_resource_scales({"memory": spec})
    with pytest.raises(ResourceError, match=rf"^{re.escape(field)}: "):
        scale_resources(Resources(), {"memory": spec}, retry=2)  # type: ignore[dict-item]
    assert validate_resource_scales({"memory": 100}) == {"memory": 100.0}  # +10,000 % is still allowed


def test_scaling_stops_at_the_bounds_of_a_request() -> None:
    huge = Resources(cores=MAX_CORES // 2, memory=MAX_MEMORY_GIB / 2, runtime=MAX_RUNTIME_S // 2)
    scaled = scale_resources(huge, {"cores": 100, "memory": 100, "runtime": 100})
    assert (scaled.cores, scaled.memory, scaled.runtime) == (MAX_CORES, MAX_MEMORY_GIB, MAX_RUNTIME_S)
    assert Resources.parse(scaled.to_dict()) == scaled  # the next retry parses the stored request
    # A Resources built without parsing (past the bounds, even past the float range after scaling) never overflows.
    scaled = scale_resources(Resources(memory=1e308, runtime=10**400), {"memory": 100, "runtime": 100})
    assert (scaled.memory, scaled.runtime) == (1e308, 10**400)


@pytest.mark.parametrize("scales", [[0.5], "memory", 0.5])
def test_validate_resource_scales_needs_a_dict(scales: object) -> None:
    with pytest.raises(ResourceError, match=r"^resource_scales: "):
        validate_resource_scales(scales)  # type: ignore[arg-type]


# --- queues ---------------------------------------------------------------------------------------------------------
# IHME's Slurm queues (§7): all.q 3 d / 750 GB, long.q 16 d / 750 GB, d.q 24 h / 1 TB.
QUEUES = {
    "all.q": QueueLimits("all.q", max_cores=100, max_memory=750, max_runtime=3 * DAY),
    "long.q": QueueLimits("long.q", max_cores=100, max_memory=750, max_runtime=16 * DAY),
    "d.q": QueueLimits("d.q", max_cores=100, max_memory=1024, max_runtime=DAY),
    "small.q": QueueLimits("small.q", max_cores=2, max_memory=4, max_runtime=3600),
}


def limits_of(calls: list[str | None] | None = None) -> Callable[[str | None], QueueLimits]:
    def get(queue: str | None) -> QueueLimits:
        if calls is not None:
            calls.append(queue)
        return QUEUES[queue or "all.q"]

    return get


def test_queue_limits_problems_and_unlimited() -> None:
    q = QUEUES["small.q"]
    assert q.problems(Resources(cores=2, memory=4, runtime=3600)) == []
    problems = q.problems(Resources(cores=3, memory=5, runtime=3601))
    assert problems == [
        "cores 3 exceeds queue small.q limit 2",
        "memory 5G exceeds queue small.q limit 4G",
        "runtime 3601s exceeds queue small.q limit 3600s",
    ]
    assert QueueLimits("any.q").problems(Resources(cores=10_000, memory=1e6, runtime=10**9)) == []


def test_queue_limits_coerce() -> None:
    r = QUEUES["small.q"].coerce(Resources(cores=8, memory=1.0, runtime=7200, queue="all.q"))
    assert r == Resources(cores=2, memory=1.0, runtime=3600, queue="small.q")
    assert QueueLimits("any.q").coerce(Resources(cores=8)) == Resources(cores=8, queue="any.q")


def test_fit_queue_first_fit_is_the_requested_queue() -> None:
    calls: list[str | None] = []
    fitted, warnings = fit_queue(Resources(memory=10, runtime=3600, queue="long.q"), limits_of(calls), ["all.q"])
    assert fitted.queue == "long.q" and warnings == []
    assert calls == ["long.q"], "stops at the first queue that fits"


def test_fit_queue_without_queue_uses_the_default() -> None:
    fitted, warnings = fit_queue(Resources(memory=10), limits_of())
    assert fitted == Resources(memory=10, queue="all.q") and warnings == []


def test_fit_queue_falls_back_in_order() -> None:
    calls: list[str | None] = []
    five_days = Resources(memory=100, runtime=5 * DAY, queue="all.q")
    fitted, warnings = fit_queue(five_days, limits_of(calls), ["d.q", "long.q"])
    assert fitted == Resources(memory=100, runtime=5 * DAY, queue="long.q")
    assert warnings == []
    assert calls == ["all.q", "d.q", "long.q"]


def test_fit_queue_skips_requested_queue_in_fallbacks() -> None:
    calls: list[str | None] = []
    fit_queue(Resources(memory=900, runtime=3600, queue="all.q"), limits_of(calls), ["all.q", "d.q"])
    assert calls == ["all.q", "d.q"]


def test_fit_queue_coerces_to_last_fallback_when_nothing_fits() -> None:
    huge = Resources(cores=4, memory=2000, runtime=20 * DAY, queue="all.q")
    fitted, warnings = fit_queue(huge, limits_of(), ["long.q", "d.q"])
    assert fitted == Resources(cores=4, memory=1024, runtime=DAY, queue="d.q")
    assert any("memory 2000G exceeds queue all.q limit 750G" in w for w in warnings)
    assert any("exceeds queue long.q" in w for w in warnings)
    assert warnings[-1].startswith("coerced to the limits of queue d.q")


def test_fit_queue_without_fallbacks_raises() -> None:
    with pytest.raises(ResourceError, match=r"^compute_resources: memory 800G exceeds queue all.q limit 750G"):
        fit_queue(Resources(memory=800, queue="all.q"), limits_of())


# --- formatting -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gib", "text"), [(1.5, "1536M"), (2, "2048M"), (2.0, "2048M"), (0.001, "2M"), (500 / 1024, "500M")]
)
def test_format_memory(gib: float, text: str) -> None:
    assert format_memory(gib) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(59, "0:00:59"), (600, "0:10:00"), (3661, "1:01:01"), (90000, "25:00:00"), (3 * DAY, "72:00:00")],
)
def test_format_runtime(seconds: int, text: str) -> None:
    assert format_runtime(seconds) == text
    assert parse_runtime(text) == seconds, "round trip through Grid Engine's h_rt format"


def test_format_memory_round_trip() -> None:
    for gib in (1.0, 1.5, 3.0, 12.0, 500 / 1024):
        assert parse_memory(format_memory(gib)) == pytest.approx(gib)
