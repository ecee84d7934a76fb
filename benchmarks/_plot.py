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


_OP_COLORS = {"cross_entropy": "#4C72B0", "focal_loss": "#DD8452",
              "sigmoid_focal_loss": "#55A868"}


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and v == v and v > 0


def plot_scaling(scaling: dict, path: str, title: str) -> bool:
    """ns per element against N*C (log x) for every sweep of bench.py's scaling section.

    Colour = op, marker = which dimension varies (o: N, s: C), line = dtype (solid
    float32, dashed bfloat16). The grey band is N*C < scaling["min_elems"] (fixed per-call
    cost dominates). A flat line = time linear in N*C; the y axis is logarithmic too, since
    the small sizes' ns/elem can be 100x the large ones' (a quadratic step would show as a
    line rising one decade per decade of N*C). When bfloat16 points exist, a lower panel
    shows bfloat16 ns/elem over float32 ns/elem per size (<= 1 = no slower).
    Returns False when nothing was drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    sweeps = [s for s in scaling.get("sweeps", []) if any(_ok(v) for v in s["ns_per_elem"])]
    if not sweeps:
        return False
    lim = scaling.get("min_elems", 1e6)
    ratio_sweeps = [s for s in sweeps if any(_ok(v) for v in s.get("vs_float32", []))]
    nrow = 2 if ratio_sweeps else 1
    fig, axes = plt.subplots(nrow, 1, figsize=(13, 4.8 + 2.8 * (nrow - 1)), sharex=True,
                             gridspec_kw={"height_ratios": [5, 3][:nrow]}, squeeze=False)
    ax = axes[0][0]

    def style(s):
        return dict(color=_OP_COLORS.get(s["op"], "#8172B2"),
                    marker="o" if s["axis"] == "N" else "s",
                    linestyle="-" if s["dtype"] == "float32" else "--")

    def name(s, with_dtype=True):
        op = s["op"] + (f" ({s['variant']})" if s.get("variant") else "")
        return f"{op}, {s['label']}" + (f", {s['dtype']}" if with_dtype else "")

    allv = [v for s in sweeps for v in s["ns_per_elem"] if _ok(v)]
    xs_all = [e for s in sweeps for e, v in zip(s["elems"], s["ns_per_elem"]) if _ok(v)]
    for s in sweeps:
        pts = [(e, v) for e, v in zip(s["elems"], s["ns_per_elem"]) if _ok(v)]
        ax.plot([e for e, _ in pts], [v for _, v in pts], label=name(s), linewidth=1.4,
                markersize=5, **style(s))
    ylo, yhi = min(allv) / 1.5, max(allv) * 1.5
    xlo, xhi = min(xs_all) / 1.6, max(xs_all) * 1.6
    for row in axes:
        a = row[0]
        a.set_xscale("log")
        a.set_xlim(xlo, xhi)
        if xlo < lim:
            a.axvspan(xlo, min(lim, xhi), color="0.5", alpha=0.12, linewidth=0)
        a.grid(which="both", alpha=0.3)
        a.xaxis.set_major_locator(LogLocator(base=10))
        a.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yscale("log")
    ax.set_ylim(ylo, yhi)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if xlo < lim:
        ax.text(xlo * 1.08, yhi / 1.1, f"N*C < {lim:,.0f}:\nfixed per-call cost dominates",
                fontsize=7, va="top", color="0.35")
    ax.set_ylabel("ours: ns per element\n(median time / (N*C), log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if ratio_sweeps:
        ax2 = axes[1][0]
        rmax = 1.0
        for s in ratio_sweeps:
            pts = [(e, v) for e, v in zip(s["elems"], s["vs_float32"]) if _ok(v)]
            rmax = max(rmax, max(v for _, v in pts))
            st = style(s)
            st["linestyle"] = "-"
            ax2.plot([e for e, _ in pts], [v for _, v in pts], label=name(s, False),
                     linewidth=1.4, markersize=5, **st)
        ax2.axhline(1.0, color="black", linewidth=0.8)
        ax2.set_ylim(0, max(1.5, rmax * 1.15))
        ax2.set_ylabel(f"{ratio_sweeps[0]['dtype']} / float32\nns per element")
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes[-1][0].set_xlabel("N*C (elements of the logits, log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
