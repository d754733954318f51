"""Task templates (reference §1, §10, §13): validation, rendering, quoting, cross product, identity hashes."""

from __future__ import annotations

import dataclasses
import itertools
import shlex

import pytest

from jobmon_airflow.resources import ResourceError, Resources
from jobmon_airflow.templates import TaskTemplate, TemplateTask

COMMAND = "python model.py --loc {location_id} --version {version} --log {log_level}"


def location_model(**overrides: object) -> TaskTemplate:
    kwargs: dict[str, object] = {
        "name": "location_model",
        "command_template": COMMAND,
        "node_args": ["location_id"],
        "task_args": ["version"],
        "op_args": ["log_level"],
    }
    kwargs.update(overrides)
    return TaskTemplate(**kwargs)  # type: ignore[arg-type]


def two_node_args() -> TaskTemplate:
    return TaskTemplate(
        name="by_sex",
        command_template="run --loc {location_id} --sex {sex_id} --v {version}",
        node_args=["location_id", "sex_id"],
        task_args=["version"],
    )


# --- render --------------------------------------------------------------------------------------------------------
def test_render_fills_every_placeholder() -> None:
    tt = location_model()
    assert tt.render(location_id=5, version=3, log_level="DEBUG") == "python model.py --loc 5 --version 3 --log DEBUG"


def test_render_rejects_a_missing_node_arg() -> None:
    with pytest.raises(ValueError, match=r"^missing argument\(s\) location_id for template location_model$"):
        location_model().render(version=3, log_level="DEBUG")


def test_render_rejects_an_unknown_arg() -> None:
    with pytest.raises(ValueError, match=r"unknown argument\(s\) verbose for template location_model"):
        location_model().render(location_id=5, version=3, log_level="DEBUG", verbose=True)


@pytest.mark.parametrize("value", ["a b; rm -rf /", "it's $(whoami) `id` > /etc/passwd", "", "line\nbreak"])
def test_render_quotes_a_value_as_exactly_one_shell_word(value: str) -> None:
    command = location_model().render(location_id=value, version=3, log_level="DEBUG")
    words = shlex.split(command)
    assert words == ["python", "model.py", "--loc", value, "--version", "3", "--log", "DEBUG"]
    if value == "a b; rm -rf /":
        assert "--loc 'a b; rm -rf /' --version" in command


def test_render_keeps_literal_braces() -> None:
    tt = TaskTemplate(name="awk", command_template="awk '{{print $1}}' {path}", op_args=["path"])
    assert tt.render(path="/tmp/x y") == "awk '{print $1}' '/tmp/x y'"


def test_render_rejects_none_but_str_s_bools_as_jobmon_does() -> None:
    tt = location_model()
    with pytest.raises(ValueError, match="argument version of template location_model is None"):
        tt.render(location_id=1, version=None, log_level="INFO")
    assert tt.render(location_id=1, version=True, log_level=False).endswith("--version True --log False")


def test_render_rejects_a_nul_character() -> None:
    with pytest.raises(ValueError, match=r"argument log_level of template location_model.*NUL"):
        location_model().render(location_id=1, version=1, log_level="a\x00b")


# --- create_tasks: Jobmon's cross product --------------------------------------------------------------------------
def test_create_tasks_is_the_cross_product_in_declaration_order() -> None:
    tasks = two_node_args().create_tasks(location_id=[1, 2], sex_id=[1, 2, 3], version=7)
    assert len(tasks) == 6
    expected = list(itertools.product([1, 2], [1, 2, 3]))  # the last node arg varies fastest
    assert [(t.node_args["location_id"], t.node_args["sex_id"]) for t in tasks] == expected
    assert tasks[1] == TemplateTask(
        node_args={"location_id": 1, "sex_id": 2},
        task_args={"version": 7},
        op_args={},
        command="run --loc 1 --sex 2 --v 7",
        node_args_hash=tasks[1].node_args_hash,
        task_args_hash=tasks[0].task_args_hash,
        name="by_sex:location_id=1,sex_id=2",
    )


def test_create_tasks_order_follows_node_args_not_the_command() -> None:
    tt = TaskTemplate(name="t", command_template="run {a} {b}", node_args=["b", "a"])
    tasks = tt.create_tasks(a=[1, 2], b=["x", "y"])
    assert [t.command for t in tasks] == ["run 1 x", "run 2 x", "run 1 y", "run 2 y"]
    assert tasks[0].name == "t:b=x,a=1"


def test_create_tasks_takes_a_scalar_node_arg_as_one_value() -> None:
    tasks = two_node_args().create_tasks(location_id=101, sex_id=(1, 2), version=1)
    assert [t.command for t in tasks] == ["run --loc 101 --sex 1 --v 1", "run --loc 101 --sex 2 --v 1"]


def test_create_tasks_with_only_scalars_gives_one_task() -> None:
    [task] = location_model().create_tasks(location_id=6, version=3, log_level="INFO")
    assert task.command == "python model.py --loc 6 --version 3 --log INFO"
    assert task.name == "location_model:location_id=6"


def test_create_tasks_expands_ranges_and_generators() -> None:
    tt = location_model()
    from_range = tt.create_tasks(location_id=range(3), version=1, log_level="INFO")
    from_generator = tt.create_tasks(location_id=(i for i in range(3)), version=1, log_level="INFO")
    assert [t.command for t in from_range] == [t.command for t in from_generator]
    assert [t.node_args["location_id"] for t in from_range] == [0, 1, 2]


def test_create_tasks_with_an_empty_node_list_gives_no_tasks() -> None:
    assert location_model().create_tasks(location_id=[], version=1, log_level="INFO") == []


def test_create_tasks_rejects_a_list_for_a_task_arg() -> None:
    with pytest.raises(ValueError, match="task arg version of template location_model must be a single value"):
        location_model().create_tasks(location_id=[1, 2], version=[3, 4], log_level="INFO")


def test_create_tasks_rejects_a_list_for_an_op_arg() -> None:
    with pytest.raises(ValueError, match="op arg log_level of template location_model must be a single value"):
        location_model().create_tasks(location_id=[1, 2], version=3, log_level=["INFO", "DEBUG"])


def test_create_tasks_rejects_an_unordered_node_collection() -> None:
    # A set of strings iterates in a hash-seed dependent order: each task's map index would move between parses.
    with pytest.raises(ValueError, match="node arg location_id of template location_model: got a set"):
        location_model().create_tasks(location_id={"a", "b"}, version=3, log_level="INFO")


@pytest.mark.parametrize("values", [[1, 2, 1], [1, "1"]])
def test_create_tasks_rejects_duplicate_node_args(values: list[object]) -> None:
    # 1 and "1" are the same node: Jobmon stores and hashes node arg values as strings.
    with pytest.raises(ValueError, match="node args location_id=1 given more than once"):
        location_model().create_tasks(location_id=values, version=3, log_level="INFO")


def test_create_tasks_rejects_missing_and_unknown_args() -> None:
    with pytest.raises(ValueError, match=r"missing argument\(s\) log_level .*unknown argument\(s\) loglevel"):
        location_model().create_tasks(location_id=[1], version=3, loglevel="INFO")


def test_template_tasks_are_frozen_and_hashable() -> None:
    a, b = (location_model().create_tasks(location_id=1, version=3, log_level="INFO")[0] for _ in range(2))
    assert a == b and len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.command = "rm -rf /"  # type: ignore[misc]


def test_create_tasks_copes_with_100_000_elements() -> None:
    tasks = location_model().create_tasks(location_id=range(100_000), version=3, log_level="INFO")
    assert len(tasks) == 100_000
    assert len({t.node_args_hash for t in tasks}) == 100_000
    assert tasks[-1].command == "python model.py --loc 99999 --version 3 --log INFO"


# --- identity hashes -----------------------------------------------------------------------------------------------
def one(tt: TaskTemplate, **values: object) -> TemplateTask:
    [task] = tt.create_tasks(**values)
    return task


def test_op_args_change_the_command_but_neither_hash() -> None:
    tt = location_model()
    info, debug = (
        one(tt, location_id=1, version=3, log_level="INFO"),
        one(tt, location_id=1, version=3, log_level="DEBUG"),
    )
    assert info.command != debug.command
    assert (info.node_args_hash, info.task_args_hash) == (debug.node_args_hash, debug.task_args_hash)


def test_a_node_arg_changes_only_the_node_args_hash() -> None:
    tt = location_model()
    first, second = (
        one(tt, location_id=1, version=3, log_level="INFO"),
        one(tt, location_id=2, version=3, log_level="INFO"),
    )
    assert first.node_args_hash != second.node_args_hash
    assert first.task_args_hash == second.task_args_hash


def test_a_task_arg_changes_only_the_task_args_hash() -> None:
    tt = location_model()
    v3, v4 = one(tt, location_id=1, version=3, log_level="INFO"), one(tt, location_id=1, version=4, log_level="INFO")
    assert v3.task_args_hash != v4.task_args_hash
    assert v3.node_args_hash == v4.node_args_hash


def test_hashes_are_sha256_hex_and_do_not_depend_on_declaration_order() -> None:
    ab = TaskTemplate(name="t", command_template="{a} {b}", node_args=["a", "b"])
    ba = TaskTemplate(name="t", command_template="{a} {b}", node_args=["b", "a"])
    task_ab, task_ba = one(ab, a=1, b=2), one(ba, a=1, b=2)
    assert task_ab.node_args_hash == task_ba.node_args_hash
    assert len(task_ab.node_args_hash) == 64 and int(task_ab.node_args_hash, 16) >= 0
    assert ab.arg_mapping_hash == ba.arg_mapping_hash


def test_template_version_hashes() -> None:
    base = location_model()
    assert location_model().arg_mapping_hash == base.arg_mapping_hash
    assert location_model().command_template_hash == base.command_template_hash
    # The same names with another kind are another template version.
    moved = location_model(task_args=[], op_args=["log_level", "version"])
    assert moved.arg_mapping_hash != base.arg_mapping_hash
    assert moved.command_template_hash == base.command_template_hash
    reworded = location_model(command_template=COMMAND.replace("--log", "--log-level"))
    assert reworded.command_template_hash != base.command_template_hash
    assert reworded.arg_mapping_hash == base.arg_mapping_hash


# --- template validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"op_args": []}, r"placeholder\(s\) \{log_level\} in command_template not declared"),
        ({"task_args": ["version", "draws"]}, r"declared argument\(s\) draws do not appear in command_template"),
        ({"op_args": ["log_level", "version"]}, r"declared as more than one kind: version \(task_args and op_args\)"),
        ({"command_template": "python model.py {} {location_id}"}, r"positional placeholder \{\}"),
        ({"command_template": "python model.py {0} {location_id}"}, r"positional placeholder \{0\}"),
        ({"command_template": "python {location_id:>3} {version} {log_level}"}, r"\{location_id:>3\} has a conversion"),
        ({"command_template": "python {location_id!r} {version} {log_level}"}, r"\{location_id!r\} has a conversion"),
        ({"command_template": "python {location_id.real} {version} {log_level}"}, "is not a plain name"),
        ({"command_template": "python {location_id"}, "malformed command_template"),
        ({"node_args": ["location-id"]}, "node_args must be Python identifiers, got 'location-id'"),
        ({"node_args": "location_id"}, "node_args must be a list of names, got the string"),
        ({"node_args": ["location_id", "location_id"]}, "node_args lists location_id more than once"),
        ({"name": ""}, "task template name must be a non-empty string"),
    ],
)
def test_template_validation_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        location_model(**overrides)


def test_default_resources_are_parsed() -> None:
    tt = location_model(default_resources={"memory": "2G", "runtime": "10m"})
    assert tt.default_resources == Resources(memory=2.0, runtime=600)
    assert dict(tt.default_resources_requested) == {"memory": "2G", "runtime": "10m"}
    assert location_model().default_resources is None


@pytest.mark.parametrize(
    ("resources", "field"),
    [({"memory": "lots"}, "memory"), ({"runtime": "-1m"}, "runtime"), ({"cpus": 2}, "unknown key")],
)
def test_default_resources_error_names_the_field(resources: dict[str, object], field: str) -> None:
    with pytest.raises(ResourceError, match=rf"^location_model\.default_resources(\.{field}|: {field})"):
        location_model(default_resources=resources)


def test_an_element_name_longer_than_jobmon_keeps_is_refused_naming_node_args() -> None:
    """Names were cut to 255 characters when bound: two elements could then share one name."""
    template = TaskTemplate(name="t", command_template="run {loc}", node_args=["loc"])
    with pytest.raises(ValueError, match=r"^node_args: the task name .* is 30\d characters"):
        template.create_tasks(loc=["x" * 300])
    assert len(template.create_tasks(loc=["x" * 240])[0].name) <= 255
