"""The state-machine tables of ``jobmon_airflow.states`` against Jobmon's, as written in the domain reference (§3).

The expected sets are typed in here from the reference text, independently of the module's own ``_pairs`` parser,
so a typo in either shows up as a difference.
"""

from __future__ import annotations

import itertools

import pytest

from jobmon_airflow import states
from jobmon_airflow.states import IllegalTransition, StateMachine


def pairs(spec: str) -> frozenset[tuple[str, str]]:
    """pairs("GQ GA") → {("G", "Q"), ("G", "A")}."""
    codes = spec.split()
    assert all(len(c) == 2 for c in codes), codes
    return frozenset((c[0], c[1]) for c in codes)


# --- Jobmon's tables, from shared/reference/jobmon-domain.md §3 -------------------------------------------------
REF_CODES = {
    "workflow": set("GQIORDFHA"),
    "workflow_run": set("GLBIORDESCHTA"),
    "task": set("GQIORDEAF"),
    "task_instance": set("QIORDEFKTUWXZ"),  # B (SUBMITTED_TO_BATCH_DISTRIBUTOR) is legacy only
}
REF_VALID = {
    # §3.1: G→Q, G→A, A→G, F→G, H→G, Q→I, Q→F, I→O, I→F, O→F, O→R, R→H, Q→H, R→D, R→F
    "workflow": pairs("GQ GA AG FG HG QI QF IO IF OF OR RH QH RD RF"),
    # §3.2 table: G→L, L→B, L→A, B→I→O, O→R, B→E, I→E, O→E, R→D/E/S, B→C, R→C, B→H, R→H, C→T, H→T
    "workflow_run": pairs("GL LB LA BI IO OR BE IE OE RD RE RS BC RC BH RH CT HT"),
    # §3.3: G→Q, A→Q, Q→I, I→O, I→E, O→R, O→E, I→R, R→D, R→E, E→A, E→Q, E→F, E→G
    "task": pairs("GQ AQ QI IO IE OR OE IR RD RE EA EQ EF EG"),
    # §3.4 table: Q→I, Q/I/O/R→K, I→O, I→W, I/O→R, O→X/U/Z/F, R→D/E/Z/U/T, T→R/Z/U/F, K→F/D, X→E
    "task_instance": pairs("QI QK IK OK RK IO IW IR OR OX OU OZ OF RD RE RZ RU RT TR TZ TU TF KF KD XE"),
}
REF_UNTIMELY = {
    "workflow": pairs("GG"),
    "workflow_run": pairs("RR LL"),
    "task": frozenset(),
    "task_instance": pairs("RO EO EU EE UD UE UZ ZU DU KE KZ KU"),
}
# §3.1: WFR enters L B A I O R D T S|E → workflow becomes G Q A I O R D H F
REF_WORKFLOW_FOLLOWS_RUN = dict(zip("LBAIORDTSE", "GQAIORDHFF", strict=True))
# §3.3: task follows TI Q/I/O/R/D
REF_TASK_FOLLOWS_INSTANCE = {"Q": "Q", "I": "I", "O": "O", "R": "R", "D": "D"}
# §3.4: "W, E, U, Z feed task retries; F is fatal."
REF_TASK_INSTANCE_RETRYABLE = set("WEUZ")
# §3.2: alive = {L,B,R,C,H}
REF_WORKFLOW_RUN_ALIVE = set("LBRCH")

MACHINES: dict[str, StateMachine] = {
    "workflow": states.WORKFLOW_FSM,
    "workflow_run": states.WORKFLOW_RUN_FSM,
    "task": states.TASK_FSM,
    "task_instance": states.TASK_INSTANCE_FSM,
}
ENUMS = {
    "workflow": states.WorkflowStatus,
    "workflow_run": states.WorkflowRunStatus,
    "task": states.TaskStatus,
    "task_instance": states.TaskInstanceStatus,
}
NAMES = sorted(MACHINES)


def illegal_pairs(name: str) -> list[tuple[str, str]]:
    """Every pair of codes (self-transitions included) that is neither valid nor untimely in the reference."""
    codes = sorted(REF_CODES[name])
    return [
        (a, b)
        for a, b in itertools.product(codes, codes)
        if (a, b) not in REF_VALID[name] and (a, b) not in REF_UNTIMELY[name]
    ]


# --- the tables ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_codes_match_reference(name: str) -> None:
    assert {s.value for s in ENUMS[name]} == REF_CODES[name]
    assert set(states.DESCRIPTIONS[ENUMS[name]]) == REF_CODES[name], "every code has a description"


@pytest.mark.parametrize("name", NAMES)
def test_valid_transitions_match_reference(name: str) -> None:
    fsm = MACHINES[name]
    assert fsm.valid - REF_VALID[name] == set(), "valid in the module, not in Jobmon"
    assert REF_VALID[name] - fsm.valid == set(), "valid in Jobmon, missing from the module"


@pytest.mark.parametrize("name", NAMES)
def test_untimely_transitions_match_reference(name: str) -> None:
    fsm = MACHINES[name]
    assert fsm.untimely == REF_UNTIMELY[name]
    assert not fsm.valid & fsm.untimely, "a pair cannot be both valid and untimely"


@pytest.mark.parametrize("name", NAMES)
def test_tables_only_use_known_codes(name: str) -> None:
    fsm = MACHINES[name]
    used = {c for pair in fsm.valid | fsm.untimely for c in pair}
    assert used <= REF_CODES[name]
    assert states.MACHINES[name] is fsm


# --- check() --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_check_true_for_every_valid_pair(name: str) -> None:
    fsm = MACHINES[name]
    for old, new in sorted(REF_VALID[name]):
        assert fsm.check(old, new) is True, (old, new)


@pytest.mark.parametrize("name", NAMES)
def test_check_false_for_every_untimely_pair(name: str) -> None:
    fsm = MACHINES[name]
    for old, new in sorted(REF_UNTIMELY[name]):
        assert fsm.check(old, new) is False, (old, new)


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("task_instance", "D", "R"),
        ("task_instance", "D", "E"),
        ("task_instance", "E", "D"),
        ("task_instance", "Q", "R"),
        ("task_instance", "F", "Q"),
        ("task_instance", "Z", "R"),
        ("task_instance", "X", "R"),
        ("task", "D", "Q"),
        ("task", "F", "Q"),
        ("task", "G", "R"),
        ("task", "Q", "D"),
        ("task", "R", "Q"),
        ("workflow_run", "D", "R"),
        ("workflow_run", "E", "R"),
        ("workflow_run", "T", "R"),
        ("workflow_run", "G", "R"),
        ("workflow", "D", "R"),
        ("workflow", "D", "G"),
        ("workflow", "F", "R"),
        ("workflow", "G", "R"),
    ],
)
def test_check_raises_for_illegal_pairs(name: str, old: str, new: str) -> None:
    assert (old, new) in illegal_pairs(name), "the sample itself must be illegal in the reference"
    with pytest.raises(IllegalTransition, match=f"{name}: illegal transition {old} → {new}"):
        MACHINES[name].check(old, new)


@pytest.mark.parametrize("name", NAMES)
def test_check_raises_for_every_other_pair(name: str) -> None:
    fsm = MACHINES[name]
    for old, new in illegal_pairs(name):
        with pytest.raises(IllegalTransition):
            fsm.check(old, new)


def test_illegal_transition_is_a_value_error() -> None:
    assert issubclass(IllegalTransition, ValueError)


# --- sources() ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_sources_are_the_valid_predecessors(name: str) -> None:
    fsm = MACHINES[name]
    for new in sorted(REF_CODES[name]):
        expected = {old for old, target in REF_VALID[name] if target == new}
        assert fsm.sources(new) == expected, new


@pytest.mark.parametrize(
    ("name", "new", "expected"),
    [
        ("task_instance", "K", "QIOR"),
        ("task_instance", "R", "IOT"),
        ("task_instance", "D", "RK"),
        ("task_instance", "Q", ""),  # instances are created in Q, never moved back
        ("task", "Q", "GAE"),
        ("task", "E", "IOR"),
        ("task", "D", "R"),
        ("workflow_run", "T", "CH"),
        ("workflow", "G", "AFH"),
        ("workflow", "H", "RQ"),
    ],
)
def test_sources_examples(name: str, new: str, expected: str) -> None:
    assert MACHINES[name].sources(new) == frozenset(expected)


def test_sources_excludes_untimely() -> None:
    # E→E and K→E are untimely: a conditional UPDATE to E must not match rows in E or K.
    assert states.TASK_INSTANCE_FSM.sources("E") == frozenset("RX")


# --- task after an instance error -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ti_status", "num_attempts", "max_attempts", "expected"),
    [
        ("E", 1, 3, ["E", "G"]),
        ("U", 1, 3, ["E", "G"]),
        ("W", 2, 3, ["E", "G"]),
        ("X", 1, 3, ["E", "G"]),
        ("Z", 1, 3, ["E", "A"]),
        ("Z", 2, 3, ["E", "A"]),
        ("F", 1, 3, ["E", "F"]),  # a fatal instance fails the task whatever attempts are left
        ("E", 3, 3, ["E", "F"]),  # attempts used up
        ("E", 5, 3, ["E", "F"]),
        ("Z", 3, 3, ["E", "F"]),  # attempts used up wins over resource scaling
        ("U", 1, 1, ["E", "F"]),  # Jobmon's DB default max_attempts=1
    ],
)
def test_task_after_instance_error(ti_status: str, num_attempts: int, max_attempts: int, expected: list[str]) -> None:
    assert states.task_after_instance_error(ti_status, num_attempts, max_attempts) == expected


@pytest.mark.parametrize("ti_status", ["E", "U", "W", "X", "Z", "F"])
@pytest.mark.parametrize("task_status", ["I", "O", "R"])
@pytest.mark.parametrize(("num", "max_"), [(1, 3), (3, 3)])
def test_task_after_instance_error_paths_are_legal(ti_status: str, task_status: str, num: int, max_: int) -> None:
    """From every state a task can hold while its instance runs, the path is a chain of valid task moves."""
    path = states.task_after_instance_error(ti_status, num, max_)
    current = task_status
    for step in path:
        assert states.TASK_FSM.check(current, step) is True, (current, step)
        current = step


def test_task_instance_retryable_states_match_reference() -> None:
    """§3.4: W, E, U, Z feed task retries (Jobmon's ``TaskInstance.error_states``); F is fatal; X is not an error.

    X (NO_HEARTBEAT) is a triage state: the task is failed only when the distributor moves X→E.
    """
    assert set(states.TASK_INSTANCE_RETRYABLE) == REF_TASK_INSTANCE_RETRYABLE


# --- followers ------------------------------------------------------------------------------------------------------
def test_workflow_follows_run_matches_reference() -> None:
    assert dict(states.WORKFLOW_FOLLOWS_RUN) == REF_WORKFLOW_FOLLOWS_RUN


def test_workflow_follows_run_targets_are_reachable() -> None:
    """Every target of a run state is entered by some valid workflow move (or is G, reached by the untimely G→G)."""
    for run_state, wf_state in states.WORKFLOW_FOLLOWS_RUN.items():
        assert run_state in REF_CODES["workflow_run"]
        assert states.WORKFLOW_FSM.sources(wf_state), (run_state, wf_state)


def test_task_follows_instance_matches_reference() -> None:
    assert dict(states.TASK_FOLLOWS_INSTANCE) == REF_TASK_FOLLOWS_INSTANCE


def test_workflow_run_alive_matches_reference() -> None:
    assert set(states.WORKFLOW_RUN_ALIVE) == REF_WORKFLOW_RUN_ALIVE


def test_bucket_of() -> None:
    assert states.bucket_of(states.TASK_BUCKETS, "E") == "PENDING"
    assert states.bucket_of(states.TASK_BUCKETS, "O") == "SCHEDULED"
    assert states.bucket_of(states.TASK_BUCKETS, "F") == "FATAL"
    assert states.bucket_of(states.TASK_BUCKETS, "?") == "UNKNOWN"
    # every task code falls in exactly one bucket
    for code in REF_CODES["task"]:
        assert sum(code in members for members in states.TASK_BUCKETS.values()) == 1, code
