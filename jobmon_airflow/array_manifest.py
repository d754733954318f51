"""The array manifest: which task instance each element of one array batch runs. Standard library only.

One Grid Engine array job (``qsub -t 1-N``) runs one batch of N task instances. The operator side writes the
batch's manifest with :func:`write_array_manifest`; every element of the job runs the same worker argv
(``--array-manifest``) and finds its own task instance with :func:`array_task_number` and :func:`load_array_task`.
The format, JSON::

    {"version": 1, "token_file": "/logs/.tokens/batch-12.token", "elements": [
    {"task_instance_id": 101, "command_b64": "ZWNobyBoaQ==", "exit_record": "/logs/ti-101.exit.json"},
    {"task_instance_id": 102, "command_b64": "ZXhpdCAz", "exit_record": "/logs/ti-102.exit.json"}
    ]}

Element i (``SGE_TASK_ID`` i) is ``elements[i-1]``; the token file holds one bearer token shared by the batch's
instances (the manifest itself holds no secret). The writer puts element i on line i + 1, for people reading it; the
reader parses JSON and does not rely on the layout. Every element reads the whole manifest, once, with one
``json.load`` that keeps only its own element (a 10,000-element manifest: ~3.6 MB, parsed in ~11 ms).

Every array element imports this module when it starts: it does without ``typing`` and ``dataclasses`` at run
time (~8 ms of start-up), and imports ``base64`` in the writer only.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple

from jobmon_airflow.files import write_atomically

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy and ruff read the name)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, NamedTuple

ARRAY_MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """This element's task instance cannot be found: not an array element, or an unreadable manifest."""


# ---------------------------------------------------------------------------------------------------------------
# Writer (the operator side)


if TYPE_CHECKING:

    class ArrayElement(NamedTuple):
        """One task instance of an array batch, as the operator gives it to ``write_array_manifest``."""

        task_instance_id: int
        command: str  # the shell command in clear; the manifest stores it base64-encoded
        exit_record: str | os.PathLike[str]

else:  # the same tuple at run time, without typing.NamedTuple
    ArrayElement = namedtuple("ArrayElement", ["task_instance_id", "command", "exit_record"])
    ArrayElement.__doc__ = "One task instance of an array batch, as the operator gives it to ``write_array_manifest``."


def write_array_manifest(
    path: str | os.PathLike[str],
    token_file: str | os.PathLike[str],
    elements: Iterable[tuple[int, str, str | os.PathLike[str]]],
) -> None:
    """Write the manifest of one array batch atomically; ``elements`` in order, the first is ``SGE_TASK_ID`` 1.

    Each element is an ``ArrayElement`` or a plain ``(task_instance_id, command, exit_record)`` tuple. Paths
    must be absolute: the job does not start in the operator's directory. The file is private (0600) and
    fsynced before it is renamed into place. ValueError on a bad element, OSError when the file cannot be written.
    """
    import base64

    token_path = os.fspath(token_file)
    if not os.path.isabs(token_path):
        raise ValueError(f"token_file must be an absolute path, got {token_path!r}")
    lines: list[str] = []
    seen: set[int] = set()
    for number, (ti_id, command, exit_record) in enumerate(elements, start=1):
        record_path = os.fspath(exit_record)
        if not isinstance(ti_id, int) or isinstance(ti_id, bool) or ti_id in seen:
            raise ValueError(f"element {number}: task_instance_id must be a unique int, got {ti_id!r}")
        if not isinstance(command, str):
            raise ValueError(f"element {number}: command must be a str, got {type(command).__name__}")
        if not os.path.isabs(record_path):
            raise ValueError(f"element {number}: exit_record must be an absolute path, got {record_path!r}")
        seen.add(ti_id)
        command_b64 = base64.b64encode(command.encode()).decode()
        lines.append(json.dumps({"task_instance_id": ti_id, "command_b64": command_b64, "exit_record": record_path}))
    if not lines:
        raise ValueError("an array manifest needs at least one element")
    header = f'{{"version": {ARRAY_MANIFEST_VERSION}, "token_file": {json.dumps(token_path)}, "elements": [\n'
    write_atomically(path, header + ",\n".join(lines) + "\n]}\n", durable=True)


# ---------------------------------------------------------------------------------------------------------------
# Reader (the worker node, one element)


class ArrayTask:
    """This array element's task instance, read from the manifest (a plain class: ``dataclasses`` costs ~6 ms)."""

    __slots__ = ("command_b64", "count", "exit_record", "number", "task_instance_id", "token_file")

    def __init__(
        self, number: int, count: int, task_instance_id: int, token_file: str, exit_record: str, command_b64: str
    ):
        self.number = number  # SGE_TASK_ID, 1-based
        self.count = count  # elements in the manifest
        self.task_instance_id = task_instance_id
        self.token_file = token_file
        self.exit_record = exit_record
        self.command_b64 = command_b64

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in ArrayTask.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArrayTask) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"ArrayTask(number={self.number}, count={self.count}, task_instance_id={self.task_instance_id}, "
            f"token_file={self.token_file!r}, exit_record={self.exit_record!r}, command_b64={self.command_b64!r})"
        )


def array_task_number(env: Mapping[str, str]) -> int:
    """This element's 1-based number from ``SGE_TASK_ID``; ManifestError when the job is not an array element."""
    text = env.get("SGE_TASK_ID")
    if text is None:
        raise ManifestError("SGE_TASK_ID is not set: --array-manifest needs an array job (qsub -t 1-N)")
    text = text.strip()
    if text == "undefined":
        raise ManifestError("SGE_TASK_ID is 'undefined': --array-manifest needs an array job (qsub -t 1-N)")
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ManifestError(f"SGE_TASK_ID must be a positive integer, got {text!r}")
    return int(text)


def load_array_task(path: str, element: int) -> ArrayTask:
    """Element ``element`` (1-based) of the manifest at ``path``; ManifestError naming what is wrong.

    One ``json.load`` whose hook drops every element but this one as soon as it is decoded, so memory stays at
    the file's text plus one element. The hook only decides what is kept: the element is then taken by its
    position in the list, so a miscount (a malformed element) gives an error, never another element.
    """
    decoded = 0
    kept: dict[str, Any] | None = None

    def keep_only_ours(obj: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal decoded, kept
        if "task_instance_id" not in obj:
            return obj  # the top-level object, or a malformed element (then caught below by its position)
        decoded += 1
        if decoded != element:
            return None
        kept = obj
        return obj

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh, object_hook=keep_only_ours)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ManifestError(f"cannot read array manifest {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != ARRAY_MANIFEST_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise ManifestError(f"array manifest {path}: version {version!r}, this worker reads {ARRAY_MANIFEST_VERSION}")
    elements, token_file = data.get("elements"), data.get("token_file")
    if not isinstance(elements, list) or not isinstance(token_file, str) or not token_file:
        raise ManifestError(f"array manifest {path}: needs a list 'elements' and a string 'token_file'")
    if element > len(elements):
        raise ManifestError(
            f"SGE_TASK_ID {element} is out of range: array manifest {path} has {len(elements)} elements"
        )
    entry = kept
    if entry is None or elements[element - 1] is not entry:
        raise ManifestError(f"array manifest {path}: element {element}, or one before it, has no 'task_instance_id'")
    ti_id, command_b64, exit_record = entry.get("task_instance_id"), entry.get("command_b64"), entry.get("exit_record")
    if not (type(ti_id) is int and isinstance(command_b64, str) and isinstance(exit_record, str) and exit_record):
        raise ManifestError(
            f"array manifest {path}: element {element} needs an int 'task_instance_id' and strings 'command_b64' "
            f"and 'exit_record', got {entry!r:.300}"
        )
    return ArrayTask(element, len(elements), ti_id, token_file, exit_record, command_b64)
