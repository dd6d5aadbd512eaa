"""The benchmark harness runs and emits rows (``make bench`` itself is not part of the suite).

Only the cheap local 1 KiB scenarios run, with ``--quick`` settings. No timing is asserted: the
numbers are the benchmark's business; here we check that they exist, are positive, and reach the
table and the JSON file in the documented shape.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import local
from benchmarks._harness import Config, not_run, table, to_json


def test_quick_local_1kib_scenarios_emit_table_and_json_rows(tmp_path: Path) -> None:
    cfg = Config(quick=True, reps=2, workdir=tmp_path)
    rows = local.small(cfg, tmp_path)

    assert [r.scenario.split(" (")[0] for r in rows] == [
        "local 1 KiB JSON save",
        "local 1 KiB JSON load",
    ]
    for row in rows:
        assert row.ckpt is not None and row.ckpt > 0
        assert row.reference is not None and row.reference > 0
        assert row.ratio == row.ckpt / row.reference
        assert row.reps == 2 and row.met in (True, False)
        assert row.spread is not None and row.spread[0] <= row.spread[1]

    rows.append(not_run("s3 (all scenarios)", "-", "SeaweedFS did not start"))
    text = table(rows)
    lines = text.splitlines()
    assert lines[0] == "| scenario | ckpt | reference | ratio [min-max] | target | met |"
    assert len(lines) == 2 + len(rows)
    assert "| <= 1.3 |" in lines[2] and "| <= 1.5 |" in lines[3]
    assert lines[4].endswith("| NOT RUN |") and "not run: SeaweedFS did not start" in lines[4]

    out = tmp_path / "bench-results.json"
    to_json(rows, out, seconds=1.0, quick=True)
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["machine"]["cpus"]
    saved = doc["rows"]
    assert [r["scenario"] for r in saved] == [r.scenario for r in rows]
    assert set(saved[0]) >= {"scenario", "ckpt", "reference", "ratio", "target", "met"}
    assert saved[2]["met"] is None and saved[2]["ckpt"] is None
