"""Chart helper for benchmarks/bench.py: speedup of samplewt_ops by op and shape.

Kept apart from bench.py so that a machine without matplotlib can still run the
benchmark (the chart is then skipped with a message).
"""

from __future__ import annotations

import math


def _label(row: dict) -> str:
    shape = "x".join(str(s) for s in row["shape"])
    extra = row.get("variant") or ""
    parts = [row["op"], shape, row["dtype"], row["mode"]]
    if extra:
        parts.insert(2, extra)
    return " ".join(parts)


def plot_speedups(rows: list[dict], path: str, title: str) -> bool:
    """Horizontal grouped bars of ours' speedup against each baseline, one group per row.

    A speedup is baseline_ms / ours_ms, so bars right of the 1x line mean ours is faster.
    Rows without a valid ours time are left out. Returns False when nothing was drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("eager", "vs eager", "#4C72B0"), ("compiled", "vs torch.compile", "#DD8452"),
              ("liger", "vs Liger-Kernel", "#55A868")]
    usable = [r for r in rows if isinstance(r.get("ours_ms"), (int, float)) and r["ours_ms"] > 0]
    present = [s for s in series
               if any(isinstance(r.get(s[0] + "_ms"), (int, float)) for r in usable)]
    if not usable or not present:
        return False

    n = len(usable)
    height = 0.8 / len(present)
    fig_h = max(3.0, 0.55 * n * max(1, len(present)) * 0.6 + 1.5)
    fig, ax = plt.subplots(figsize=(11, fig_h))
    vmax = 1.0
    for k, (key, name, color) in enumerate(present):
        ys, vals = [], []
        for i, r in enumerate(usable):
            base = r.get(key + "_ms")
            if isinstance(base, (int, float)) and base > 0:
                ys.append(i + (k - (len(present) - 1) / 2) * height)
                vals.append(base / r["ours_ms"])
        if not vals:
            continue
        vmax = max(vmax, max(vals))
        bars = ax.barh(ys, vals, height=height * 0.95, color=color, label=name)
        for b, v in zip(bars, vals):
            ax.text(b.get_width() * 1.02, b.get_y() + b.get_height() / 2, f"{v:.2f}x",
                    va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    lo = min(0.5, min((r.get(key + "_ms") / r["ours_ms"])
                      for r in usable for key, _, _ in present
                      if isinstance(r.get(key + "_ms"), (int, float)) and r[key + "_ms"] > 0) * 0.8)
    ax.set_xlim(lo, 10 ** (math.log10(vmax) + 0.35))
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    lo_x, hi_x = ax.get_xlim()
    ticks = [v * 10 ** e for e in range(-3, 5) for v in (1, 2, 5) if lo_x <= v * 10 ** e <= hi_x]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(range(n))
    ax.set_yticklabels([_label(r) for r in usable], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup of samplewt_ops (baseline time / ours, log scale; >1 = ours faster)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
