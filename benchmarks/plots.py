"""PNG plots of the scaling curves (matplotlib, the ``bench`` extra).

``python -m benchmarks.plots bench-results.json docs/img`` redraws them from a saved run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ._harness import Row


def plot_all(rows: Sequence[Row], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    curves = [r for r in rows if r.extra.get("curve")]
    if curves:
        backends = sorted({r.extra["backend"] for r in curves})
        fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 4.2), squeeze=False)
        for ax, backend in zip(axes[0], backends, strict=True):
            for r, color in zip(
                [r for r in curves if r.extra["backend"] == backend],
                ("tab:blue", "tab:orange", "tab:green"),
                strict=False,
            ):
                pts = r.extra["curve"]
                ns = [p["n"] for p in pts]
                ax.plot(
                    ns,
                    [p["ckpt_s_per_record"] * 1e6 for p in pts],
                    "o-",
                    color=color,
                    label=f"ckpt {r.extra['op']}",
                )
                ax.plot(
                    ns,
                    [p["ref_s_per_record"] * 1e6 for p in pts],
                    "s--",
                    color=color,
                    alpha=0.6,
                    label=f"raw {r.extra['op']}",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("records in one correlation")
            ax.set_ylabel("us per record")
            ax.set_title(f"{backend}: per-record cost (flat = linear)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "bench-scaling-records.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    tp = [r for r in rows if "size" in r.extra and r.ckpt is not None]
    if tp:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for op, color in (("save", "tab:blue"), ("load", "tab:orange")):
            pts = sorted((r.extra["size"], r.ckpt, r.reference) for r in tp if r.extra["op"] == op)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"ckpt {op}")
            ax.plot(
                [p[0] for p in pts],
                [p[2] for p in pts],
                "s--",
                color=color,
                alpha=0.6,
                label=f"raw {op}",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("payload bytes")
        ax.set_ylabel("MB/s")
        ax.set_title("local store throughput vs raw file IO (fsync on)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "bench-throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.plots bench-results.json OUT_DIR", file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    rows = [
        Row(**{**r, "spread": tuple(r["spread"]) if r["spread"] else None}) for r in doc["rows"]
    ]
    for path in plot_all(rows, Path(argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
