"""Measurement plumbing shared by every scenario: interleaved repetitions, medians, rows, output.

Every figure is a ratio against a reference that does the same work in the same process and the
same run. ckpt and reference repetitions alternate (ckpt, ref, ckpt, ref, ...), so a noisy
neighbour or a CPU frequency change hits both sides rather than one. A row keeps the medians, the
ratio of the medians and the spread (min and max of the per-repetition paired ratios).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: A measured side returns the seconds of the work it timed itself (so setup stays out).
Timed = Callable[[], float]


@dataclass
class Config:
    """How hard to push: ``quick`` shrinks sizes and repetitions (smoke test, fast look)."""

    quick: bool = False
    reps: int = 5
    workdir: Path = field(default_factory=lambda: Path(os.environ.get("TMPDIR", "/tmp")))

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


@dataclass
class Row:
    """One line of the table and of ``bench-results.json``.

    ``ckpt`` and ``reference`` are medians in ``unit``; ``ratio`` is ckpt / reference (for a
    throughput, ckpt's MB/s over the reference's). ``target`` is ``"<= 1.3"``, ``">= 0.9"`` or
    ``"report"`` (no target: the number is the finding); ``met`` is ``None`` for ``report``
    rows and for rows that could not be measured (``note`` says why).
    """

    scenario: str
    ckpt: float | None
    reference: float | None
    ratio: float | None
    target: str
    met: bool | None
    unit: str = "s"
    spread: tuple[float, float] | None = None
    reps: int = 0
    note: str = ""
    group: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def meets(ratio: float | None, target: str) -> bool | None:
    if ratio is None or target == "report" or target.startswith("ckpt"):
        return None  # "ckpt <= 1.1x" targets bound ckpt's own value; the caller decides
    op, _, bound = target.partition(" ")
    value = float(bound)
    return ratio <= value if op == "<=" else ratio >= value


def interleave(
    ckpt: Timed, reference: Timed, reps: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Run ``warmup`` untimed rounds, then ``reps`` alternating rounds; the side that goes first
    alternates too, so neither always runs on a warmer cache."""
    for _ in range(warmup):
        ckpt()
        reference()
    mine: list[float] = []
    theirs: list[float] = []
    for i in range(reps):
        if i % 2 == 0:
            mine.append(ckpt())
            theirs.append(reference())
        else:
            theirs.append(reference())
            mine.append(ckpt())
    return mine, theirs


def row_from_times(
    scenario: str,
    mine: Sequence[float],
    theirs: Sequence[float],
    target: str,
    *,
    per: int = 1,
    unit: str = "s",
    throughput_bytes: int | None = None,
    note: str = "",
    group: str = "",
    **extra: Any,
) -> Row:
    """A row from paired timings. ``per`` divides each timing (operations per repetition).
    With ``throughput_bytes`` the row is in MB/s and the ratio is ckpt's throughput over the
    reference's (higher is better)."""
    if throughput_bytes is not None:
        a = [throughput_bytes / t / 1e6 for t in mine]
        b = [throughput_bytes / t / 1e6 for t in theirs]
        unit = "MB/s"
    else:
        a = [t / per for t in mine]
        b = [t / per for t in theirs]
    ma, mb = statistics.median(a), statistics.median(b)
    paired = [x / y for x, y in zip(a, b, strict=True) if y > 0]
    ratio = ma / mb if mb > 0 else None
    return Row(
        scenario,
        ma,
        mb,
        ratio,
        target,
        meets(ratio, target),
        unit,
        (min(paired), max(paired)) if paired else None,
        len(a),
        note,
        group,
        dict(extra),
    )


def value_row(
    scenario: str,
    mine: float,
    theirs: float,
    target: str,
    *,
    unit: str,
    reps: int,
    spread: tuple[float, float] | None = None,
    note: str = "",
    group: str = "",
    **extra: Any,
) -> Row:
    ratio = mine / theirs if theirs else None
    return Row(
        scenario,
        mine,
        theirs,
        ratio,
        target,
        meets(ratio, target),
        unit,
        spread,
        reps,
        note,
        group,
        dict(extra),
    )


def not_run(scenario: str, target: str, reason: str, group: str = "") -> Row:
    """A row for a scenario that could not be measured: shown, never faked."""
    return Row(scenario, None, None, None, target, None, note=f"not run: {reason}", group=group)


def clock() -> float:
    return time.perf_counter()


def timed_each(op: Callable[[Any], object], items: Sequence[Any]) -> Callable[[], float]:
    """A repetition for :func:`interleave`: apply ``op`` to every item, return the seconds."""

    def repetition() -> float:
        t = clock()
        for item in items:
            op(item)
        return clock() - t

    return repetition


# -- output ------------------------------------------------------------------------------------
def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        if value >= 1:
            return f"{value:.2f} s"
        if value >= 1e-3:
            return f"{value * 1e3:.2f} ms"
        return f"{value * 1e6:.1f} us"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s" if value >= 10 else f"{value:.2f} MB/s"
    if unit == "x payload":
        return f"{value:.2f}x payload"
    return f"{value:.3g} {unit}"


def fmt_ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    text = f"{row.ratio:.3f}" if row.ratio < 10 else f"{row.ratio:.1f}"
    if row.spread:
        text += f" [{row.spread[0]:.2f}-{row.spread[1]:.2f}]"
    return text


def fmt_met(row: Row) -> str:
    if row.note.startswith("not run"):
        return "NOT RUN"
    return {True: "yes", False: "NO", None: "-"}[row.met]


def table(rows: Sequence[Row]) -> str:
    """A Markdown table: ``scenario | ckpt | reference | ratio | target | met``."""
    header = ["scenario", "ckpt", "reference", "ratio [min-max]", "target", "met"]
    lines = [header, ["---"] * len(header)]
    for r in rows:
        name = r.scenario + (f" ({r.note})" if r.note else "")
        lines.append(
            [
                name,
                fmt_value(r.ckpt, r.unit),
                fmt_value(r.reference, r.unit),
                fmt_ratio(r),
                r.target,
                fmt_met(r),
            ]
        )
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def machine() -> dict[str, Any]:
    import platform

    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mem_gib": mem,
        "processor": platform.processor() or platform.machine(),
    }


def to_json(rows: Sequence[Row], path: Path, seconds: float, quick: bool) -> None:
    doc = {
        "machine": machine(),
        "quick": quick,
        "seconds": round(seconds, 1),
        "argv": sys.argv[1:],
        "rows": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
