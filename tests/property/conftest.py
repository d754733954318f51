"""Hypothesis profiles of the property tests.

* ``jobmon-default`` (the normal suite): 100 examples per test, no deadline (CI machines are slow and
  shared); the database state machine runs fewer, shorter programs (see ``test_state_machines.py``).
* ``jobmon-fuzz``: selected by ``JOBMON_PROPERTY_EXAMPLES=<n>``, ``max_examples=n`` for every test, the database
  state machine included.

Failing examples are kept in ``var/hypothesis`` (git-ignored) and replayed first on the next run; every failure
also prints a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.property import fuzz_examples

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MAX_EXAMPLES = 100

_common = settings(
    deadline=None,
    print_blob=True,
    database=DirectoryBasedExampleDatabase(str(ROOT / "var" / "hypothesis")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("jobmon-default", _common, max_examples=DEFAULT_MAX_EXAMPLES)
_fuzz = fuzz_examples()
if _fuzz is not None:
    settings.register_profile("jobmon-fuzz", _common, max_examples=_fuzz)
settings.load_profile("jobmon-default" if _fuzz is None else "jobmon-fuzz")
