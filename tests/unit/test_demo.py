"""The demo's live view: bars of Jobmon's buckets that fill their width in proportion, and the frame it draws."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from jobmon_airflow.demo import BAR_WIDTH, BUCKET_STYLES, Watcher, bucket_bar, bucket_cells


def test_bucket_cells_fill_the_width_in_proportion() -> None:
    assert bucket_cells({"DONE": 3, "PENDING": 1}, 4, width=8) == {
        "PENDING": 2, "SCHEDULED": 0, "RUNNING": 0, "DONE": 6, "FATAL": 0,
    }  # fmt: skip
    thirds = bucket_cells({"PENDING": 1, "RUNNING": 1, "DONE": 1}, 3, width=10)
    assert sum(thirds.values()) == 10 and sorted(thirds.values()) == [0, 0, 3, 3, 4]
    assert sum(bucket_cells({"DONE": 1, "FATAL": 99_999}, 100_000).values()) == BAR_WIDTH
    assert bucket_cells({}, 0) == dict.fromkeys(BUCKET_STYLES, 0)


def test_bar_is_coloured_by_bucket() -> None:
    bar = bucket_bar({"DONE": 1, "FATAL": 1}, 2, width=4)
    assert bar.plain == "████"
    assert [(s.start, s.end, s.style) for s in bar.spans] == [(0, 2, "green"), (2, 4, "red")]
    assert bucket_bar({}, 0, width=3).plain == "░░░"


def test_the_live_view_shows_every_template_and_the_total() -> None:
    buckets = {"PENDING": 1, "SCHEDULED": 0, "RUNNING": 2, "DONE": 3, "FATAL": 0}
    summary = SimpleNamespace(id=7, name="example", status_name="RUNNING", tasks=6, buckets=buckets)
    detail = SimpleNamespace(
        summary=summary, templates=[SimpleNamespace(name="sum_of_squares", tasks=6, buckets=buckets)]
    )
    watcher = Watcher(insights=None, after_workflow_id=0)
    assert "Starting Airflow" in _text(watcher.render())
    watcher.detail = detail
    frame = _text(watcher.render())
    assert "Jobmon workflow 7 (example): RUNNING" in frame
    rows = {line.split()[0]: line.split()[1:] for line in frame.splitlines() if line.startswith(("sum_", "all"))}
    assert rows["sum_of_squares"][0] == "6" and rows["sum_of_squares"][-5:] == ["1", "0", "2", "3", "0"]
    assert rows["all"][0] == "6"


def _text(renderable: object) -> str:
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()
