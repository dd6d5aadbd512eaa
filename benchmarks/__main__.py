"""``python -m benchmarks [--quick] [--only local,redis] [--json bench-results.json]``.

Each scenario group runs in a fresh child process (``--group NAME``), so one group's imports,
allocations and settings (Prefect's test server, Dagster's instance) cannot skew another's, and
a group that crashes is reported as not run instead of taking the others down.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ._harness import Config, Row, not_run, table, to_json

GROUPS = ["local", "redis", "s3", "scaling", "resume", "prefect", "dagster"]
#: Seconds a group may take before it is stopped and reported as not run.
GROUP_TIMEOUT = {"quick": 300, "full": 600}


def run_group(name: str, cfg: Config) -> list[Row]:
    module = importlib.import_module(f"benchmarks.{name}")
    rows: list[Row] = module.run(cfg)
    for row in rows:
        row.group = name
    return rows


def _child(name: str, args: argparse.Namespace) -> list[Row]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", "benchmarks", "--group", name, "--rows-out", str(out)]
    if args.quick:
        cmd.append("--quick")
    if args.reps:
        cmd += ["--reps", str(args.reps)]
    limit = GROUP_TIMEOUT["quick" if args.quick else "full"]
    # Write back the previous group's dirty pages (1 GiB records) now, not as kernel work that
    # lands on this group's first measurements.
    os.sync()
    try:
        proc = subprocess.run(cmd, timeout=limit, stdout=sys.stderr, stderr=sys.stderr)
        if proc.returncode != 0 or not out.stat().st_size:
            return [not_run(f"{name} (all scenarios)", "-", f"group exited {proc.returncode}")]
        return [
            Row(**{**r, "spread": tuple(r["spread"]) if r["spread"] else None})
            for r in json.loads(out.read_text())
        ]
    except subprocess.TimeoutExpired:
        return [not_run(f"{name} (all scenarios)", "-", f"group exceeded {limit} s")]
    finally:
        out.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument("--only", default="", help=f"comma-separated groups of {GROUPS}")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 5, quick 3)")
    parser.add_argument("--json", default="bench-results.json", help="where to write the rows")
    parser.add_argument("--plots", default="", help="directory for PNG plots (needs matplotlib)")
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--rows-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.group:  # child mode: one group, rows to a file
        cfg = Config(quick=args.quick, reps=args.reps or (3 if args.quick else 5))
        rows = run_group(args.group, cfg)
        Path(args.rows_out).write_text(json.dumps([asdict(r) for r in rows]))
        return 0

    groups = [g for g in (args.only.split(",") if args.only else GROUPS) if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {GROUPS}")
    started = time.perf_counter()
    rows: list[Row] = []
    for name in groups:
        t0 = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        rows.extend(_child(name, args))
        print(f"== {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    print(table(rows))
    missed = [r.scenario for r in rows if r.met is False]
    print(f"\n{len(rows)} rows in {seconds:.0f} s; targets missed: {len(missed)}")
    if args.json:
        to_json(rows, Path(args.json), seconds, args.quick)
        print(f"rows written to {args.json}")
    if args.plots:
        from .plots import plot_all

        for path in plot_all(rows, Path(args.plots)):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
