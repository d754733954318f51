"""Property-based tests (Hypothesis) of the parsers, resources, templates, records and state machines.

Profiles live in ``conftest.py``: the default one keeps the suite fast; ``JOBMON_PROPERTY_EXAMPLES=<n>`` selects the
fuzz profile with ``max_examples=n`` for every test, e.g. ``JOBMON_PROPERTY_EXAMPLES=10000 pytest tests/property``.
"""

from __future__ import annotations

import os

#: The environment variable that selects the fuzz profile and its number of examples per test.
EXAMPLES_ENV = "JOBMON_PROPERTY_EXAMPLES"


def fuzz_examples() -> int | None:
    """The examples per test asked for through :data:`EXAMPLES_ENV`, or None (the default profile)."""
    raw = os.environ.get(EXAMPLES_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdecimal() or int(raw) < 1:
        raise ValueError(f"{EXAMPLES_ENV}: expected a whole number of examples ≥ 1, got {raw!r}")
    return int(raw)
