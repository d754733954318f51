"""Steps of the example workflow, run as cluster jobs: prepare inputs, sum squares of one part, aggregate."""

from __future__ import annotations

import sys
from pathlib import Path


def prepare(data: Path, parts: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    for i in range(parts):
        (data / f"input_{i}.txt").write_text("\n".join(str(n) for n in range(i * 1000, (i + 1) * 1000)))


def squares(data: Path, part: int) -> None:
    total = sum(int(line) ** 2 for line in (data / f"input_{part}.txt").read_text().split())
    (data / f"squares_{part}.txt").write_text(str(total))


def aggregate(data: Path, parts: int) -> None:
    found = sorted(data.glob("squares_*.txt"))
    if len(found) != parts:
        sys.exit(f"expected {parts} partial results, found {len(found)}: {[p.name for p in found]}")
    total = sum(int(p.read_text()) for p in found)
    (data / "total.txt").write_text(str(total))
    print("sum of squares:", total)


if __name__ == "__main__":
    step, data_dir, number = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    {"prepare": prepare, "squares": squares, "aggregate": aggregate}[step](data_dir, number)
