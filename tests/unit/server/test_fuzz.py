"""Fuzzing every State Manager route: generated requests (valid, forged and missing tokens; ids in and out of
range; bodies valid, mutated, malformed, huge) against the app Airflow mounts, 1 to 3 at once (heartbeats then share
a batch).

Checked on every example: no 500 and no exception; only the statuses the contract allows for that token; a row of
``task_instance`` / ``task`` / ``task_instance_error_log`` changes only for an instance that got a request with
its own token; a heartbeat moves its instance's deadline by its own increment, never a forged one; a 403 to the
instance's own token is a revoked token of an ended instance.

Examples per route: ``JOBMON_FUZZ_EXAMPLES`` (default 200, the normal suite); the figures are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from jobmon_airflow import db, models
from jobmon_airflow.server.app import create_app
from jobmon_airflow.service import Services
from jobmon_airflow.service.core import utcnow
from jobmon_airflow.states import TASK_INSTANCE_FINAL
from tests.unit.server.helpers import ERROR_LOG, TI, make_instances, rows, token

EXAMPLES = int(os.environ.get("JOBMON_FUZZ_EXAMPLES", "200"))
ROUTES = ("log_running", "log_report_by", "log_done", "log_error", "log_ran")
POOL = ["O", "R", "R", "T", "K", "X", "D", "E", "Z", "U", "F"]
TASK = cast(sa.Table, models.Task.__table__)
CAP = 256 * 1024
ROOT = Path(__file__).resolve().parents[3]

# -- strategies

NASTY_NUMBERS = [
    math.nan, math.inf, -math.inf, 2**31, 2**62 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1, 1e308, -1e-300,
    0, -1, 256, -256, 86_400, 86_400.0001, 1e-320, True, False,
]  # fmt: skip
LONG_LENGTHS = [0, 1, 32, 33, 150, 151, 10_000, 20_000, 20_001, 300_000]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20) | st.sampled_from(
    ["\ud800", "\udfff", "E", "Z", "F", "U", "D", "E\n", "\x00", "\u202e", "NaN", "null"]
)
NASTY_VALUES = st.one_of(
    st.sampled_from(NASTY_NUMBERS),
    st.integers(),
    st.floats(),
    TEXT,
    st.builds(lambda n, c: c * n, st.sampled_from(LONG_LENGTHS), st.sampled_from(["x", "\U0001f600", "\ud800"])),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(TEXT, st.integers(), max_size=3),
)
INCREMENT = st.floats(min_value=1e-3, max_value=86_400, allow_nan=False) | st.sampled_from([90.0, 279.0, 86_400])
USAGE = st.fixed_dictionaries(
    {},
    optional={
        "maxrss_bytes": st.integers(0, 2**62) | st.none(),
        "wallclock_s": st.floats(0, 1e8) | st.none(),
        "cpu_s": st.floats(0, 1e8) | st.none(),
    },
)
NODENAME = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=150)
VALID_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "log_running": st.fixed_dictionaries(
        {"nodename": NODENAME, "next_report_increment": INCREMENT},
        optional={
            "process_group_id": st.integers(0, 2**31 - 1) | st.none(),
            "distributor_id": st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=32) | st.none(),
        },
    ),
    "log_report_by": st.fixed_dictionaries({"next_report_increment": INCREMENT}),
    "log_done": st.fixed_dictionaries(
        {}, optional={"nodename": NODENAME | st.none(), "exit_status": st.integers(-255, 255), "usage": USAGE}
    ),
    "log_error": st.fixed_dictionaries(
        {"error_state": st.sampled_from("EZFU")},
        optional={
            "exit_status": st.integers(-255, 255) | st.none(),
            "error_message": st.text(max_size=300),
            "nodename": NODENAME | st.none(),
            "usage": USAGE,
        },
    ),
    "log_ran": st.fixed_dictionaries(
        {"nodename": NODENAME, "next_report_increment": INCREMENT, "status": st.sampled_from("DEZFU")},
        optional={
            "process_group_id": st.integers(0, 2**31 - 1) | st.none(),
            "distributor_id": st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=32) | st.none(),
            "exit_status": st.integers(-255, 255) | st.none(),
            "error_message": st.text(max_size=300),
            "usage": USAGE,
        },
    ),
}
FIELDS = [
    "nodename", "process_group_id", "distributor_id", "next_report_increment", "exit_status", "error_state",
    "error_message", "usage", "maxrss_bytes", "wallclock_s", "cpu_s", "extra", "status",
]  # fmt: skip
RAW_BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [b"", b"NaN", b"Infinity", b"null", b"[]", b"{}", b'"x"', b"1e999", b"{", b'{"a":', b"\xff\xfe", b"[" * 50_000,
         b'{"next_report_increment": 1' + b"0" * 5000 + b"}", b'{"error_state": "\\ud800"}', b"{" * 10_000]
    ),
    st.builds(lambda n: b" " * n + b"{}", st.sampled_from([CAP - 2, CAP - 1, CAP, CAP + 1])),
)  # fmt: skip


def _mutate(body: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(FIELDS))
        action = data.draw(st.sampled_from(["set", "set", "drop", "nest"]))
        if action == "drop":
            body.pop(name, None)
        elif action == "nest":
            body["usage"] = {name: data.draw(NASTY_VALUES)}
        else:
            body[name] = data.draw(NASTY_VALUES)
    return body


@dataclass(frozen=True)
class Req:
    route: str
    path_id: str  # as in the URL
    ti: int | None  # the instance it names, when the id is a whole number
    header: str | None  # Authorization
    valid: bool  # the instance's own token, for an instance that exists
    body: bytes
    content_type: str | None


def requests_for(route: str, pool: list[int]) -> st.SearchStrategy[Req]:
    @st.composite
    def build(draw: st.DrawFn) -> Req:
        id_kind = draw(st.sampled_from(["pool"] * 6 + ["int", "edge", "text"]))
        if id_kind == "pool":
            ti: int | None = draw(st.sampled_from(pool))
        elif id_kind == "int":
            ti = draw(st.integers())
        elif id_kind == "edge":
            ti = draw(st.sampled_from([0, -1, 999_999, 2**63 - 1, 2**63, 2**64, 10**40]))
        else:
            ti = None
        path_id = str(ti) if ti is not None else quote(draw(TEXT.filter(bool)), safe="", errors="surrogatepass")
        who = draw(st.sampled_from(["own"] * 4 + ["other", "garbage", "missing", "malformed"]))
        if who == "own":
            header: str | None = f"Bearer {token(ti)}" if ti is not None else "Bearer x"
        elif who == "other":
            header = f"Bearer {token(draw(st.sampled_from(pool)))}"
        elif who == "garbage":
            header = "Bearer " + draw(st.text(st.characters(min_codepoint=33, max_codepoint=255), min_size=1))
        elif who == "missing":
            header = None
        else:
            header = draw(st.sampled_from(["Bearer", "Bearer ", "Basic dG9rZW4=", "bearer  token", "token-1"]))
        valid = ti in pool and header == f"Bearer {token(ti)}"
        shape = draw(st.sampled_from(["valid"] * 4 + ["mutated"] * 4 + ["raw"]))
        if shape == "raw":
            body = draw(RAW_BODIES)
        else:
            obj: dict[str, Any] = draw(VALID_BODIES[route])
            if shape == "mutated":
                obj = _mutate(obj, draw(st.data()))
            body = json.dumps(obj, allow_nan=True).encode()
        content_type = draw(st.sampled_from(["application/json"] * 8 + [None, "text/plain"]))
        return Req(route, path_id, ti, header, valid, body, content_type)

    return build()


# -- the harness


@dataclass
class Fuzz:
    svc: Services
    app: Any
    pool: list[int]
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    initial: dict[str, dict[int, tuple[Any, ...]]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    requests: int = 0
    valid_requests: int = 0

    def snapshot(self) -> dict[str, dict[int, tuple[Any, ...]]]:
        return {"ti": rows(self.svc, TI), "task": rows(self.svc, TASK), "log": rows(self.svc, ERROR_LOG)}

    def restore(self) -> None:
        """Back to the initial rows, so that every example starts from the same mix of statuses."""
        with self.svc.engine.begin() as conn:
            for name, tbl in (("ti", TI), ("task", TASK)):
                for row_id, values in self.initial[name].items():
                    conn.execute(
                        tbl.update().where(tbl.c.id == row_id).values(dict(zip(tbl.c.keys(), values, strict=True)))
                    )
            conn.execute(ERROR_LOG.delete().where(ERROR_LOG.c.id.not_in(list(self.initial["log"]) or [0])))

    async def send(self, reqs: list[Req]) -> list[httpx.Response]:
        def one(r: Req) -> Any:
            pairs = (("Authorization", r.header), ("Content-Type", r.content_type))
            headers = {k.encode(): v.encode("latin-1") for k, v in pairs if v is not None}
            url = f"/api/state/task_instance/{r.path_id}/{r.route}"
            return self.client.post(url, content=r.body, headers=headers)

        # Every request runs to its end before an error is raised: none is left to run into the next example.
        answers = await asyncio.gather(*(one(r) for r in reqs), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return [a for a in answers if isinstance(a, httpx.Response)]

    def check(self, reqs: list[Req]) -> None:
        before = self.snapshot()
        start = utcnow()
        responses = self.loop.run_until_complete(self.send(reqs))
        end = utcnow()
        after = self.snapshot()
        self.requests += len(reqs)
        self.valid_requests += sum(r.valid for r in reqs)
        touched = {r.ti for r in reqs if r.valid and r.ti is not None}
        for r, response in zip(reqs, responses, strict=True):
            self.statuses[response.status_code] += 1
            check_status(r, response, before["ti"])
        tasks_touched = {before["ti"][ti][TI.c.keys().index("task_id")] for ti in touched}
        for name, allowed in (("ti", touched), ("task", tasks_touched)):
            changed = {i for i in before[name].keys() | after[name].keys() if before[name].get(i) != after[name].get(i)}
            assert changed <= allowed, f"{name} rows {sorted(changed - allowed)} changed without their token: {reqs}"
        new_logs = {after["log"][i][1] for i in after["log"].keys() - before["log"].keys()}
        assert new_logs <= touched, f"error logs of {sorted(new_logs - touched)} written without their token"
        check_deadlines(reqs, responses, after["ti"], start, end)
        if after != self.initial:
            self.restore()


def check_status(r: Req, response: httpx.Response, ti_rows: dict[int, tuple[Any, ...]]) -> None:
    code, text = response.status_code, response.text
    assert code != 500 and code in (200, 400, 401, 403, 404, 409, 413, 422), (code, text, r)
    if code == 404:  # no route: only a path segment that is not a whole number can miss every route
        assert r.ti is None, (code, text, r)
    if code == 422:
        for error in response.json()["detail"]:
            assert "input" not in error, text
    if not r.valid:
        assert code in (400, 401, 403, 404, 413, 422), (code, text, r)
        return
    assert r.ti is not None
    status = ti_rows[r.ti][TI.c.keys().index("status")]
    if code == 403:  # the instance's own token: revoked, only for heartbeats of ended instances
        assert r.route == "log_report_by" and status in TASK_INSTANCE_FINAL, (code, text, r, status)
        assert response.json() == {"detail": "token revoked: task instance ended"}
    else:
        assert code in (200, 400, 409, 413, 422), (code, text, r)
    if code == 200 and r.route == "log_report_by":
        assert response.json()["status"] not in TASK_INSTANCE_FINAL


def check_deadlines(
    reqs: list[Req], responses: list[httpx.Response], ti_rows: dict[int, tuple[Any, ...]], start: Any, end: Any
) -> None:
    """Each instance that got an accepted heartbeat and is running: deadline = now + its own largest increment."""
    own: dict[int, float] = {}
    for r, response in zip(reqs, responses, strict=True):
        if r.route == "log_report_by" and r.valid and response.status_code == 200 and r.ti is not None:
            increment = float(json.loads(r.body)["next_report_increment"])
            own[r.ti] = max(own.get(r.ti, 0.0), increment)
    keys = TI.c.keys()
    for ti, increment in own.items():
        row = ti_rows[ti]
        if row[keys.index("status")] != "R":
            continue
        deadline = row[keys.index("report_by_date")]
        low, high = start + timedelta(seconds=increment - 1), end + timedelta(seconds=increment + 1)
        assert low <= deadline <= high, f"instance {ti}: deadline {deadline} not now + {increment} s"


@pytest.fixture
def fuzz(tmp_path: Path) -> Iterator[Fuzz]:
    url = f"sqlite:///{tmp_path / 'fuzz.sqlite'}"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    pool = make_instances(svc, POOL)
    with svc.engine.begin() as conn:  # deadlines in the past: any heartbeat moves them
        conn.execute(TI.update().values(report_by_date=utcnow() - timedelta(hours=1)))
    app = create_app(url, heartbeat_window=0.002)
    loop = asyncio.new_event_loop()
    transport = httpx.ASGITransport(app=app)  # an exception in the app fails the test
    client = httpx.AsyncClient(transport=transport, base_url="http://jobmon", timeout=60)
    harness = Fuzz(svc, app, pool, loop, client)
    harness.initial = harness.snapshot()
    try:
        yield harness
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


@pytest.mark.parametrize("route", ROUTES)
def test_fuzz_state_manager_route(fuzz: Fuzz, route: str) -> None:
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        print_blob=True,
        database=DirectoryBasedExampleDatabase(str(ROOT / "var" / "hypothesis")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(st.lists(requests_for(route, fuzz.pool), min_size=1, max_size=3))
    def examples(reqs: list[Req]) -> None:
        fuzz.check(reqs)

    examples()
    seconds = time.monotonic() - started
    print(
        f"\nfuzz {route}: {fuzz.requests} requests ({fuzz.valid_requests} with the instance's own token) in "
        f"{seconds:.1f} s; statuses {dict(sorted(fuzz.statuses.items()))}"
    )
    assert fuzz.requests >= EXAMPLES
    with db.session_scope(fuzz.svc.engine) as s:  # the database is whole: the pool is as it started
        assert s.execute(sa.select(sa.func.count()).select_from(TI)).scalar() == len(POOL)
