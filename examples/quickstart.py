"""A small nightly pipeline that crashes at step 3 and resumes on the next attempt.

    python examples/quickstart.py --fresh --fail-at aggregate   # attempt 1: fails in aggregate
    python examples/quickstart.py                                # attempt 2: resumes

Both attempts use the correlation id ``quickstart-2026-11-22``: the second attempt loads
``extract`` and ``clean`` from their checkpoints (in ``./.ckpt`` by default) and computes only
``aggregate`` and ``report``. After the successful attempt, the correlation's checkpoints are
deleted (default retention).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass

import ckpt_core as ckpt

CORRELATION = "quickstart-2026-11-22"
#: Simulated work per step, in seconds, so the resume is visible.
COST = {"extract": 0.6, "clean": 0.5, "aggregate": 0.4, "report": 0.2}
FAIL_AT: str | None = None


@dataclass
class Summary:
    city: str
    orders: int
    revenue: float


def _work(step: str) -> None:
    time.sleep(COST[step])
    if step == FAIL_AT:
        raise RuntimeError(f"simulated crash in {step} (the warehouse connection dropped)")


@ckpt.checkpointed
def extract(day: str) -> list[dict[str, object]]:
    _work("extract")
    rng = random.Random(day)
    cities = ["Lyon", "Porto", "Gdansk", "Turku"]
    return [
        {"order": i, "city": rng.choice(cities), "amount": round(rng.uniform(5, 120), 2)}
        for i in range(2_000)
    ]


@ckpt.checkpointed
def clean(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    _work("clean")
    return [r for r in rows if float(r["amount"]) >= 10]  # type: ignore[arg-type]


@ckpt.checkpointed
def aggregate(rows: list[dict[str, object]]) -> list[Summary]:
    _work("aggregate")
    totals: dict[str, Summary] = {}
    for r in rows:
        s = totals.setdefault(str(r["city"]), Summary(str(r["city"]), 0, 0.0))
        s.orders += 1
        s.revenue = round(s.revenue + float(r["amount"]), 2)  # type: ignore[arg-type]
    return sorted(totals.values(), key=lambda s: -s.revenue)


@ckpt.checkpointed
def report(summaries: list[Summary]) -> str:
    _work("report")
    lines = [f"  {s.city:<8} {s.orders:>5} orders  {s.revenue:>10.2f} EUR" for s in summaries]
    return "\n".join(lines)


def main() -> int:
    global FAIL_AT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="./.ckpt", help="store URL (default ./.ckpt)")
    parser.add_argument("--fail-at", choices=sorted(COST), help="simulate a crash in this step")
    parser.add_argument("--fresh", action="store_true", help="forget earlier attempts first")
    args = parser.parse_args()
    FAIL_AT = args.fail_at

    if args.fresh:
        ckpt.CheckpointManager(args.store, "quickstart").cleanup_correlation(CORRELATION)

    started = time.perf_counter()
    run = ckpt.run(CORRELATION, store=args.store, namespace="quickstart")
    failed: BaseException | None = None
    try:
        with run as active:
            text = report(aggregate(clean(extract("2026-11-22"))))
    except RuntimeError as exc:
        failed = exc
    elapsed = time.perf_counter() - started

    saved = 0.0
    for event in active.events:
        step = event.node.split(".")[-1].split(":")[0]
        if event.status == "loaded":
            saved += COST[step] - event.seconds
        print(f"  {step:<10} {event.status:<9} {event.seconds * 1000:7.1f} ms")
    if failed is not None:
        print(f"  FAILED: {failed}")
        print(f"attempt failed after {elapsed:.2f}s; finished steps are kept in {args.store}")
        return 1
    print(text)
    print(f"done in {elapsed:.2f}s; checkpoints saved {saved:.2f}s of recomputation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
