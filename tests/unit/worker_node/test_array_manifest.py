"""The array manifest: written by the operator side, read by each element of the array job."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow.array_manifest import (
    ArrayElement,
    ManifestError,
    array_task_number,
    load_array_task,
    write_array_manifest,
)


def test_write_array_manifest_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "batch.manifest.json"
    commands = ["echo 'a b' \"$HOME\"", "printf 'ünïcødé\\n'; exit 3", "multi\nline"]
    elements: list[tuple[int, str, str | os.PathLike[str]]] = [
        ArrayElement(7, commands[0], tmp_path / "ti-7.exit.json"),
        (9, commands[1], str(tmp_path / "ti-9.exit.json")),  # a plain tuple works too
        ArrayElement(8, commands[2], tmp_path / "ti-8.exit.json"),
    ]
    write_array_manifest(path, tmp_path / "batch.token", elements)

    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["token_file"] == str(tmp_path / "batch.token")
    assert [e["task_instance_id"] for e in data["elements"]] == [7, 9, 8]  # order as given, not sorted
    assert [base64.b64decode(e["command_b64"]).decode() for e in data["elements"]] == commands
    assert path.read_text().splitlines()[2].rstrip(",") == json.dumps(data["elements"][1])  # element i: line i + 1
    for number, (ti, command, exit_record) in enumerate(elements, start=1):
        task = load_array_task(str(path), number)
        assert (task.number, task.count, task.task_instance_id) == (number, 3, ti)
        assert base64.b64decode(task.command_b64).decode() == command and task.exit_record == str(exit_record)
        assert task.token_file == str(tmp_path / "batch.token")
    assert [p.name for p in tmp_path.iterdir()] == ["batch.manifest.json"]  # no temp file left behind

    write_array_manifest(path, tmp_path / "batch.token", elements[:1])  # rewriting replaces the file
    assert load_array_task(str(path), 1).count == 1


def test_write_array_manifest_is_private(tmp_path: Path) -> None:
    path = tmp_path / "batch.manifest.json"
    write_array_manifest(path, "/abs/b.token", [(1, "true", "/abs/ti-1.exit.json")])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("token_file", "elements", "complaint"),
    [
        ("relative.token", [(1, "true", "/abs/ti-1.exit.json")], "token_file must be an absolute path"),
        ("/abs/b.token", [(1, "true", "ti-1.exit.json")], "element 1: exit_record must be an absolute path"),
        (
            "/abs/b.token",
            [(1, "true", "/a/1"), (1, "true", "/a/2")],
            "element 2: task_instance_id must be a unique int",
        ),
        ("/abs/b.token", [("1", "true", "/a/1")], "element 1: task_instance_id must be a unique int"),
        ("/abs/b.token", [], "at least one element"),
    ],
)
def test_write_array_manifest_refuses_bad_input(
    tmp_path: Path, token_file: str, elements: list[tuple[Any, str, str]], complaint: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        write_array_manifest(tmp_path / "m.json", token_file, elements)
    assert not (tmp_path / "m.json").exists()


def test_large_manifest_keeps_only_its_own_element(tmp_path: Path) -> None:
    path = tmp_path / "big.manifest.json"
    elements = [(1000 + i, f"run_task --location {i}", f"/logs/ti-{1000 + i}.exit.json") for i in range(10_000)]
    write_array_manifest(path, "/logs/.tokens/b.token", elements)

    task = load_array_task(str(path), 9_999)
    assert task.task_instance_id == 10_998 and base64.b64decode(task.command_b64) == b"run_task --location 9998"
    with pytest.raises(ManifestError, match=r"out of range: .* has 10000 elements"):
        load_array_task(str(path), 10_001)


def test_malformed_manifest_never_yields_another_element(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    good = {"command_b64": "dHJ1ZQ==", "exit_record": "/x"}
    elements = [{"task_instance_id": 1, **good}, {"id": 2, **good}, {"task_instance_id": 3, **good}]
    path.write_text(json.dumps({"version": 1, "token_file": "/t", "elements": elements}))

    assert load_array_task(str(path), 1).task_instance_id == 1
    for number in (2, 3):  # element 2 lacks its id; element 3 must not be mistaken for it
        with pytest.raises(ManifestError, match="has no 'task_instance_id'"):
            load_array_task(str(path), number)
    path.write_text(json.dumps({"version": 2, "token_file": "/t", "elements": elements}))
    with pytest.raises(ManifestError, match="version 2, this worker reads 1"):
        load_array_task(str(path), 1)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read array manifest"):
        load_array_task(str(path), 1)


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"SGE_TASK_ID": "1"}, 1), ({"SGE_TASK_ID": " 12 "}, 12), ({"SGE_TASK_ID": "1_0"}, None), ({}, None)],
)
def test_array_task_number(env: dict[str, str], expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ManifestError, match="SGE_TASK_ID"):
            array_task_number(env)
    else:
        assert array_task_number(env) == expected
