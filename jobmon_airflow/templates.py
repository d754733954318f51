"""Jobmon's task templates: a command template whose named args are node, task or op args (reference §1, §10, §13).

``node_args`` make a task unique within a workflow (what one fans out over, e.g. ``location_id``); ``task_args``
make it unique across workflows (e.g. a data version); ``op_args`` change the command but not the task's identity
(e.g. a log level). Only node and task args are hashed.

Values are rendered with ``str()`` and then ``shlex.quote``: a value is always exactly one shell word, whatever it
contains. Decisions beyond Jobmon's behaviour:

- ``None`` is rejected: Jobmon would render the word ``None``, which is nearly always a value someone forgot to set.
  ``True``/``False`` are rendered ``True``/``False`` as Jobmon does.
- A value containing NUL (which no command line can carry) or the unit separator ``\\x1f`` (the separator of the
  identity hashes, so rejecting it keeps the hashes unambiguous) is rejected.
- Node-arg collections must be ordered (list, tuple, range, generator, array): a ``set`` or ``dict`` is rejected
  because its order, and with it each task's position (Airflow's map index), could differ between DAG parses.
- An empty node-arg list gives no tasks, as the cross product of an empty set is empty.

Pure Python: no database and no Airflow, so a DAG file can build thousands of tasks at parse time.
"""

from __future__ import annotations

import hashlib
import itertools
import shlex
import string
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from jobmon_airflow.hashing import sha256
from jobmon_airflow.resources import Resources

ARG_KINDS = ("node_args", "task_args", "op_args")
MAX_NAME = 255  # Jobmon's task.name column


@dataclass(frozen=True, slots=True)
class TemplateTask:
    """One task made from a template: its args by kind, the rendered command and its identity hashes."""

    # Dicts are left out of __hash__ (unhashable); equal tasks still hash equally through the other fields.
    node_args: dict[str, Any] = field(hash=False)
    task_args: dict[str, Any] = field(hash=False)
    op_args: dict[str, Any] = field(hash=False)
    command: str
    node_args_hash: str
    task_args_hash: str
    name: str


class TaskTemplate:
    """A command template with declared node, task and op args, as Jobmon's ``tool.get_task_template``.

    The template is parsed and validated once here; :meth:`render` and :meth:`create_tasks` only join pre-split
    literal text with quoted values, so expanding 100,000 tasks does not re-parse anything.
    """

    def __init__(
        self,
        name: str,
        command_template: str,
        node_args: Sequence[str] = (),
        task_args: Sequence[str] = (),
        op_args: Sequence[str] = (),
        default_resources: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"task template name must be a non-empty string, got {name!r}")
        if not isinstance(command_template, str):
            raise ValueError(
                f"template {name}: command_template must be a string, got {type(command_template).__name__}"
            )
        self.name = name
        self.command_template = command_template
        self._literals, self._fields = _parse_command_template(name, command_template)
        # For render: the command's pieces with an empty slot per placeholder, and the arg that fills each slot.
        self._parts = [piece for literal in self._literals[:-1] for piece in (literal, "")] + [self._literals[-1]]
        self._slots = [(2 * i + 1, arg) for i, arg in enumerate(self._fields)]
        declared = {
            "node_args": _arg_names(name, "node_args", node_args),
            "task_args": _arg_names(name, "task_args", task_args),
            "op_args": _arg_names(name, "op_args", op_args),
        }
        self.node_args: tuple[str, ...] = declared["node_args"]
        self.task_args: tuple[str, ...] = declared["task_args"]
        self.op_args: tuple[str, ...] = declared["op_args"]
        self.args: tuple[str, ...] = self.node_args + self.task_args + self.op_args
        self._check_declarations(declared)
        self._arg_set = frozenset(self.args)

        # Validated now so a typo fails at DAG parse, not when the first job is submitted.
        self.default_resources: Resources | None = (
            None if default_resources is None else Resources.parse(default_resources, f"{name}.default_resources")
        )
        # The keys as given, for merging over workflow defaults key by key (the parsed form fills in every key).
        self.default_resources_requested: Mapping[str, Any] = MappingProxyType(dict(default_resources or {}))

        self.command_template_hash = sha256(command_template)
        # Which name has which kind is part of the version: moving an arg from task_args to op_args is a new version.
        self.arg_mapping_hash = sha256(*(f"{kind}={','.join(sorted(declared[kind]))}" for kind in ARG_KINDS))

    def __repr__(self) -> str:
        return (
            f"TaskTemplate(name={self.name!r}, command_template={self.command_template!r}, "
            f"node_args={list(self.node_args)}, task_args={list(self.task_args)}, op_args={list(self.op_args)})"
        )

    def _check_declarations(self, declared: Mapping[str, tuple[str, ...]]) -> None:
        kinds_of: dict[str, list[str]] = {}
        for kind in ARG_KINDS:
            for arg in declared[kind]:
                kinds_of.setdefault(arg, []).append(kind)
        clashes = [f"{arg} ({' and '.join(kinds)})" for arg, kinds in kinds_of.items() if len(kinds) > 1]
        if clashes:
            raise ValueError(
                f"template {self.name}: argument(s) declared as more than one kind: {', '.join(clashes)}; "
                "each arg is exactly one of node_args, task_args, op_args"
            )
        used = set(self._fields)
        undeclared = sorted(used - kinds_of.keys())
        if undeclared:
            raise ValueError(
                f"template {self.name}: placeholder(s) {', '.join('{' + a + '}' for a in undeclared)} in "
                "command_template not declared in node_args, task_args or op_args"
            )
        unused = [arg for arg in self.args if arg not in used]
        if unused:
            raise ValueError(
                f"template {self.name}: declared argument(s) {', '.join(unused)} do not appear in command_template "
                f"{self.command_template!r}"
            )

    def _check_arg_names(self, given: Mapping[str, Any]) -> None:
        if given.keys() == self._arg_set:
            return
        problems = []
        missing = [arg for arg in self.args if arg not in given]
        if missing:
            problems.append(f"missing argument(s) {', '.join(missing)} for template {self.name}")
        unknown = sorted(given.keys() - self._arg_set)
        if unknown:
            problems.append(
                f"unknown argument(s) {', '.join(unknown)} for template {self.name}; "
                f"it takes {', '.join(self.args) or 'no arguments'}"
            )
        raise ValueError("; ".join(problems))

    def render(self, **values: Any) -> str:
        """The command for one set of values, each ``str()``-ed and shell-quoted; every arg is required."""
        self._check_arg_names(values)
        parts = self._parts.copy()
        for pos, arg in self._slots:
            parts[pos] = shlex.quote(_text(self.name, arg, values[arg]))
        return "".join(parts)

    def create_tasks(self, **args: Any) -> list[TemplateTask]:
        """Tasks for the cross product of the node-arg values, as Jobmon's ``TaskTemplate.create_tasks``.

        A node arg may be one value or an ordered collection of values; the product runs over ``node_args`` in
        declaration order (the last varies fastest), so the order is stable across DAG parses. Task and op args
        must be single values. Two elements with the same node args raise, as adding a task twice does in Jobmon.
        """
        self._check_arg_names(args)

        # Task and op args are the same for every element: convert, quote and hash them once.
        fixed_text: dict[str, str] = {}
        for kind, names in (("task arg", self.task_args), ("op arg", self.op_args)):
            for arg in names:
                value = args[arg]
                if _is_collection(value):
                    raise ValueError(
                        f"{kind} {arg} of template {self.name} must be a single value, got {type(value).__name__} "
                        f"{_short(value)}; only node args expand into a cross product"
                    )
                fixed_text[arg] = _text(self.name, arg, value)
        task_args = {arg: args[arg] for arg in self.task_args}
        op_args = {arg: args[arg] for arg in self.op_args}
        task_args_hash = sha256(*(f"{arg}={fixed_text[arg]}" for arg in sorted(self.task_args)))

        # Each distinct node value is converted and quoted once, not once per element of the product:
        # a column holds (value as given, quoted text for the command, "name=text" for the hash and the name).
        columns: list[list[tuple[Any, str, str]]] = []
        for arg in self.node_args:
            column = []
            for value in _node_values(self.name, arg, args[arg]):
                text = _text(self.name, arg, value)
                column.append((value, shlex.quote(text), f"{arg}={text}"))
            columns.append(column)

        parts, slots = self._partial(fixed_text)
        names = self.node_args
        hash_order = sorted(range(len(names)), key=names.__getitem__)
        prefix = f"{self.name}:" if names else self.name
        seen: set[str] = set()
        tasks: list[TemplateTask] = []
        digest = hashlib.sha256
        for combo in itertools.product(*columns):
            # hashing.sha256 inlined: this loop runs once per task, 100,000s of times.
            node_args_hash = digest("\x1f".join([combo[i][2] for i in hash_order]).encode()).hexdigest()
            if node_args_hash in seen:
                raise ValueError(
                    f"template {self.name}: node args {', '.join(v[2] for v in combo)} given more than once; "
                    "each task of a template needs distinct node args"
                )
            seen.add(node_args_hash)
            command = parts.copy()
            for pos, i in slots:
                command[pos] = combo[i][1]
            name = prefix + ",".join([v[2] for v in combo])
            if len(name) > MAX_NAME:
                raise ValueError(
                    f"node_args: the task name {name[:80]!r}… is {len(name)} characters; Jobmon keeps at most "
                    f"{MAX_NAME}: shorten the node arg values or the template name"
                )
            tasks.append(
                TemplateTask(
                    node_args={arg: v[0] for arg, v in zip(names, combo, strict=True)},
                    task_args=dict(task_args),
                    op_args=dict(op_args),
                    command="".join(command),
                    node_args_hash=node_args_hash,
                    task_args_hash=task_args_hash,
                    name=name,
                )
            )
        return tasks

    def _partial(self, fixed_text: Mapping[str, str]) -> tuple[list[str], list[tuple[int, int]]]:
        """Fold the quoted task and op values into the literal text, leaving a slot per node-arg placeholder.

        Returns the command's pieces (slots empty) and, per slot, its position and the index of its node arg.
        """
        node_index = {arg: i for i, arg in enumerate(self.node_args)}
        parts = [self._literals[0]]
        slots: list[tuple[int, int]] = []
        for field_name, literal in zip(self._fields, self._literals[1:], strict=True):
            if field_name in node_index:
                slots.append((len(parts), node_index[field_name]))
                parts.extend(("", literal))
            else:
                parts[-1] += shlex.quote(fixed_text[field_name]) + literal
        return parts, slots


def _parse_command_template(name: str, command_template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a command template into literal text and placeholder names: ``literals[i]`` precedes ``fields[i]``.

    Only plain named placeholders are allowed: positional ``{}``/``{0}``, attribute or index access, conversions
    and format specs would make the rendered text depend on more than ``str(value)``.
    """
    try:
        parsed = list(string.Formatter().parse(command_template))
    except ValueError as e:
        raise ValueError(f"template {name}: malformed command_template {command_template!r}: {e}") from None
    literals: list[str] = []
    fields: list[str] = []
    pending = ""
    for literal, field_name, format_spec, conversion in parsed:
        pending += literal  # parse() has already turned {{ and }} into single braces
        if field_name is None:
            continue
        if field_name == "" or field_name.isdigit():
            raise ValueError(
                f"template {name}: positional placeholder {{{field_name}}} in command_template; "
                "use named placeholders like {location_id}"
            )
        if not field_name.isidentifier():
            raise ValueError(
                f"template {name}: placeholder {{{field_name}}} is not a plain name (no attribute or index access); "
                "use named placeholders like {location_id}"
            )
        if conversion is not None or format_spec:
            shown = field_name + (f"!{conversion}" if conversion else "") + (f":{format_spec}" if format_spec else "")
            raise ValueError(
                f"template {name}: placeholder {{{shown}}} has a conversion or format spec; values are rendered "
                f"with str() and shell-quoted, so write {{{field_name}}} and format the value before passing it"
            )
        literals.append(pending)
        fields.append(field_name)
        pending = ""
    literals.append(pending)
    return tuple(literals), tuple(fields)


def _arg_names(template: str, kind: str, names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise ValueError(f"template {template}: {kind} must be a list of names, got the string {names!r}")
    out = tuple(names)
    bad = [repr(n) for n in out if not isinstance(n, str) or not n.isidentifier()]
    if bad:
        raise ValueError(f"template {template}: {kind} must be Python identifiers, got {', '.join(bad)}")
    repeated = sorted({n for n in out if out.count(n) > 1})
    if repeated:
        raise ValueError(f"template {template}: {kind} lists {', '.join(repeated)} more than once")
    return out


def _text(template: str, arg: str, value: Any) -> str:
    if value is None:
        raise ValueError(
            f"argument {arg} of template {template} is None; pass a value (the string 'None' if that is meant)"
        )
    text = str(value)
    if "\x00" in text or "\x1f" in text:
        raise ValueError(
            f"argument {arg} of template {template}: value {text!r} contains a NUL or \\x1f control character"
        )
    return text


def _is_collection(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, str | bytes)


def _node_values(template: str, arg: str, value: Any) -> list[Any]:
    if not _is_collection(value):
        return [value]
    if isinstance(value, AbstractSet | Mapping):
        raise ValueError(
            f"node arg {arg} of template {template}: got a {type(value).__name__}, whose order may change between "
            "DAG parses; pass a list (e.g. sorted(...)) so each task keeps its position"
        )
    return list(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
