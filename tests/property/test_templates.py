"""Properties of task templates: every value is exactly one shell word, identity hashes follow node and task args
only, and duplicate elements are refused.

Templates are generated too: literal words (with escaped braces), placeholders standing alone or glued to a
``--name=`` prefix, each arg declared as a node, task or op arg.
"""

from __future__ import annotations

import itertools
import keyword
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobmon_airflow.templates import MAX_NAME, TaskTemplate

#: Text a value may hold: anything but NUL and \x1f (refused), with the shell's special characters likely.
value_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00\x1f")
shell_text = st.one_of(
    st.text(value_chars, max_size=15),
    st.text(st.sampled_from("'\"$()`;&|<>*?[]{}~#!\\ \t\n-=%,.é中🙂"), max_size=12),
    st.sampled_from(["", "$(touch pwned)", "`id`", "a;b", "it's", 'say "hi"', "line1\nline2", "-x", "*", "$HOME"]),
)
values = st.one_of(
    shell_text,
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
arg_names = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True).filter(lambda n: not keyword.iskeyword(n))
literal_words = st.one_of(
    st.from_regex(r"[A-Za-z0-9_./=+-]{1,10}", fullmatch=True),
    st.sampled_from(["python", "model.py", "--loc", "{{print}}", "x{{y}}z", "--flag"]),
)


@dataclass(frozen=True)
class Shape:
    """A generated template: its words (a literal, or an arg with a glued prefix) and each arg's kind."""

    words: tuple[tuple[str, str | None], ...]  # (literal text or prefix, arg name or None)
    kinds: dict[str, str]  # arg → "node_args" | "task_args" | "op_args"

    def template(self, name: str = "t") -> TaskTemplate:
        command = " ".join(text if arg is None else f"{text}{{{arg}}}" for text, arg in self.words)
        return TaskTemplate(
            name=name,
            command_template=command,
            node_args=self.of_kind("node_args"),
            task_args=self.of_kind("task_args"),
            op_args=self.of_kind("op_args"),
        )

    def expected_words(self, given: dict[str, Any]) -> list[str]:
        """What the shell must see: literal words as written (braces unescaped), prefix + str(value) per arg."""
        return [
            text.replace("{{", "{").replace("}}", "}") if arg is None else text + str(given[arg])
            for text, arg in self.words
        ]

    def of_kind(self, kind: str) -> list[str]:
        return [a for a, k in self.kinds.items() if k == kind]


@st.composite
def shapes(draw: st.DrawFn, min_args: int = 1) -> Shape:
    args = draw(st.lists(arg_names, min_size=min_args, max_size=4, unique=True))
    kinds = {a: draw(st.sampled_from(["node_args", "task_args", "op_args"])) for a in args}
    uses = args + draw(st.lists(st.sampled_from(args), max_size=2)) if args else []  # an arg may appear twice
    words: list[tuple[str, str | None]] = [(draw(st.sampled_from(["run", "python", "bash"])), None)]
    for arg in draw(st.permutations(uses)):
        words += [(w, None) for w in draw(st.lists(literal_words, max_size=2))]
        words.append((draw(st.sampled_from(["", "", f"--{arg}=", "x"])), arg))
    words += [(w, None) for w in draw(st.lists(literal_words, max_size=2))]
    return Shape(tuple(words), kinds)


@given(shapes(min_args=0), st.data())
def test_render_gives_one_shell_word_per_value(shape: Shape, data: st.DataObject) -> None:
    template = shape.template()
    given_values = {arg: data.draw(values, label=arg) for arg in shape.kinds}
    command = template.render(**given_values)
    assert shlex.split(command) == shape.expected_words(given_values)


@given(shapes(), st.data())
def test_render_through_a_real_shell(shape: Shape, data: st.DataObject) -> None:
    """/bin/sh, not only shlex: the words it passes on are the values exactly (no expansion, no splitting)."""
    given_values = {arg: data.draw(shell_text, label=arg) for arg in shape.kinds}
    command = shape.template().render(**given_values)
    script = 'f() { for a in "$@"; do printf \'%s\\000\' "$a"; done; }; f ' + command.split(" ", 1)[1]
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True, timeout=30).stdout
    assert out.decode().split("\0")[:-1] == shape.expected_words(given_values)[1:]


@given(shapes(), st.data())
def test_create_tasks_is_the_cross_product_rendered(shape: Shape, data: st.DataObject) -> None:
    template = shape.template()
    node, fixed = shape.of_kind("node_args"), shape.of_kind("task_args") + shape.of_kind("op_args")
    columns = {a: data.draw(st.lists(values, max_size=3), label=a) for a in node}
    twin = data.draw(st.sampled_from([None, *node]), label="twin")
    if twin is not None and columns[twin]:  # the same node again, maybe as another type with the same str()
        original = data.draw(st.sampled_from(columns[twin]), label="original")
        columns[twin].insert(
            data.draw(st.integers(0, len(columns[twin]))), data.draw(st.sampled_from([original, str(original)]))
        )
    given_fixed = {a: data.draw(values, label=a) for a in fixed}
    combos = [dict(zip(node, combo, strict=True)) for combo in itertools.product(*(columns[a] for a in node))]
    duplicate = any(len({str(v) for v in column}) < len(column) for column in columns.values())
    too_long = any(len("t:" + ",".join(f"{a}={c[a]}" for a in node)) > MAX_NAME for c in combos)
    if combos and (duplicate or too_long):
        with pytest.raises(ValueError, match=r"given more than once|characters; Jobmon keeps at most"):
            template.create_tasks(**columns, **given_fixed)
        return
    tasks = template.create_tasks(**columns, **given_fixed)
    assert len(tasks) == len(combos)
    for task, combo in zip(tasks, combos, strict=True):  # declaration order, the last node arg fastest
        assert task.node_args == combo
        assert task.command == template.render(**combo, **given_fixed)
        assert shlex.split(task.command) == shape.expected_words({**combo, **given_fixed})
        assert task.name == ("t:" if node else "t") + ",".join(f"{a}={combo[a]}" for a in node)
    assert len({t.node_args_hash for t in tasks}) == len(tasks)
    assert len({t.task_args_hash for t in tasks}) <= 1


@given(shapes(), st.data())
def test_identity_hashes_depend_on_node_and_task_args_only(shape: Shape, data: st.DataObject) -> None:
    template = shape.template()

    def draw_args() -> dict[str, Any]:
        return {a: data.draw(values, label=a) for a in shape.kinds}

    first, second = draw_args(), draw_args()
    node, task, op = shape.of_kind("node_args"), shape.of_kind("task_args"), shape.of_kind("op_args")
    # Mix: the second set's op args over the first set's node and task args.
    mixed = {**first, **{a: second[a] for a in op}}
    (a,) = template.create_tasks(**first)
    (b,) = template.create_tasks(**second)
    (m,) = template.create_tasks(**mixed)
    assert (m.node_args_hash, m.task_args_hash, m.name) == (a.node_args_hash, a.task_args_hash, a.name)
    same_node = all(str(first[x]) == str(second[x]) for x in node)
    same_task = all(str(first[x]) == str(second[x]) for x in task)
    assert (a.node_args_hash == b.node_args_hash) == same_node
    assert (a.task_args_hash == b.task_args_hash) == same_task
    if any(str(first[x]) != str(second[x]) for x in op):
        assert m.command != a.command  # op args do change the command


@given(shapes(min_args=2), st.data())
def test_node_args_hash_ignores_declaration_order(drawn: Shape, data: st.DataObject) -> None:
    first_two = list(drawn.kinds)[:2]
    shape = Shape(drawn.words, {a: "node_args" if a in first_two else k for a, k in drawn.kinds.items()})
    given_values = {a: data.draw(values, label=a) for a in shape.kinds}
    reordered = Shape(shape.words, {a: shape.kinds[a] for a in reversed(list(shape.kinds))})
    (a,) = shape.template().create_tasks(**given_values)
    (b,) = reordered.template().create_tasks(**given_values)
    assert (a.node_args_hash, a.task_args_hash) == (b.node_args_hash, b.task_args_hash)
    assert a.command == b.command


@given(shapes(), st.data(), st.sampled_from(["\x00", "\x1f"]))
def test_unrepresentable_values_are_refused_naming_the_arg(shape: Shape, data: st.DataObject, bad: str) -> None:
    given_values: dict[str, Any] = {a: data.draw(shell_text, label=a) for a in shape.kinds}
    victim = data.draw(st.sampled_from(sorted(shape.kinds)), label="victim")
    given_values[victim] = given_values[victim] + bad
    with pytest.raises(ValueError, match=f"argument {victim} of template t"):
        shape.template().render(**given_values)
    with pytest.raises(ValueError, match=f"argument {victim} of template t"):
        shape.template().create_tasks(**given_values)
    given_values[victim] = None
    with pytest.raises(ValueError, match=f"argument {victim} of template t is None"):
        shape.template().render(**given_values)
