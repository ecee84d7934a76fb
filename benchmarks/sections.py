"""The report's pair sections: samplewt_ops against what it replaces, one pair per row,
each pair timed interleaved in one process (timing.time_interleaved), with the target
ratio of the row and whether it is met.

- small sizes: every loss, forward plus backward of the mean, at N in {32, 256, 1024}
  and C (or D) in {10, 100}: without sample weights against its torch counterpart (F.*,
  or for the focal losses their formula in torch ops), with sample weights against the
  eager weighted formula, and the nn.Module forms. Target: ours <= 1.0x, weighted <= 0.8x.
- target gradients: element-wise losses whose target requires grad, against torch, and
  the cost of the target's gradient over the input-only call (the input-only call runs
  the kernel without any target-gradient code).
- linear cross-entropy: samplewt_ops.linear_cross_entropy at N=4096 tokens, D=256,
  V=32000 (float32), forward plus backward of the mean, against eager (linear then
  F.cross_entropy), torch.compile of eager and torch's chunked F.linear_cross_entropy
  (benchmarks/linear_loss.py, all interleaved): time <= each, extra peak memory
  <= 1/8 of eager's and <= torch's chunked; per-token weights <= 1.1x the unweighted
  call; bfloat16 <= float32.
- tables: cross_entropy at N=256, C=10, forward plus backward, with an adaptive table of
  10^3, 10^5 and 10^7 samples under every policy, against the same loss with a plain
  sample_weight. Target <= 1.3x at every table size: each step is O(batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from timing import time_interleaved


def _focal_formula(x, y, gamma=2.0):
    logp = F.log_softmax(x, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    return -((1.0 - logp.exp()).pow(gamma) * logp)


def _sigmoid_focal_formula(x, t, alpha=0.25, gamma=2.0):
    # torchvision.ops.sigmoid_focal_loss, with torch ops.
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    return (alpha * t + (1 - alpha) * (1 - t)) * loss


# name: (rows?, torch's unreduced loss, ours' extra keywords)
LOSSES = {
    "cross_entropy": (True, lambda x, t: F.cross_entropy(x, t, reduction="none"), {}),
    "focal_loss": (True, _focal_formula, {}),
    "sigmoid_focal_loss": (False, _sigmoid_focal_formula, {}),
    "binary_cross_entropy_with_logits": (
        False, lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none"), {}),
    "mse_loss": (False, lambda x, t: F.mse_loss(x, t, reduction="none"), {}),
    "l1_loss": (False, lambda x, t: F.l1_loss(x, t, reduction="none"), {}),
    "huber_loss": (False, lambda x, t: F.huber_loss(x, t, reduction="none"), {}),
}

# The torch counterpart of each loss's mean, as a user writes it.
TORCH_MEAN = {
    "cross_entropy": lambda x, t: F.cross_entropy(x, t),
    "focal_loss": lambda x, t: _focal_formula(x, t).mean(),
    "sigmoid_focal_loss": lambda x, t: _sigmoid_focal_formula(x, t).mean(),
    "binary_cross_entropy_with_logits": lambda x, t: F.binary_cross_entropy_with_logits(x, t),
    "mse_loss": lambda x, t: F.mse_loss(x, t),
    "l1_loss": lambda x, t: F.l1_loss(x, t),
    "huber_loss": lambda x, t: F.huber_loss(x, t),
}

TORCH_MODULES = {
    "cross_entropy": lambda: torch.nn.CrossEntropyLoss(),
    "binary_cross_entropy_with_logits": lambda: torch.nn.BCEWithLogitsLoss(),
    "mse_loss": lambda: torch.nn.MSELoss(),
    "l1_loss": lambda: torch.nn.L1Loss(),
    "huber_loss": lambda: torch.nn.HuberLoss(),
}


def _weighted_eager(name, x, t, sw):
    rows, per_fn, _ = LOSSES[name]
    per = per_fn(x, t)
    if rows:
        return (per * sw).sum() / sw.sum()
    return (per * sw.unsqueeze(1)).sum() / (sw.sum() * x.shape[1])


def _inputs(name, n, c, device, gen):
    rows = LOSSES[name][0]
    x = torch.randn(n, c, generator=gen).to(device).requires_grad_()
    if rows:
        t = torch.randint(0, c, (n,), generator=gen).to(device)
    elif name in ("mse_loss", "l1_loss", "huber_loss"):
        t = torch.randn(n, c, generator=gen).to(device)
    else:
        t = (torch.rand(n, c, generator=gen) < 0.3).float().to(device)
    sw = torch.rand(n, generator=gen).to(device)
    return x, t, sw


def _train(fn, x):
    def call():
        fn().backward()
        x.grad = None
    return call


def _row(section, case, ours_name, ours, base_name, base, target, device, min_time):
    t = time_interleaved({"ours": ours, "base": base}, device=device, min_time=min_time)
    ours_s, base_s = t["ours"][0], t["base"][0]
    ratio = ours_s / base_s
    return {"section": section, "case": case, "device": device, "ours": ours_name,
            "baseline": base_name, "ours_ms": ours_s * 1e3, "base_ms": base_s * 1e3,
            "ratio": ratio, "target": target, "met": ratio <= target}


def _check(a, b, what):
    torch.testing.assert_close(a.detach().float(), b.detach().float(), atol=1e-5, rtol=1e-4,
                               msg=lambda m: f"{what}: {m}")


def small_sizes(swo, device, quick, min_time):
    """Every loss at small sizes, its three forms; see the module docstring."""
    gen = torch.Generator().manual_seed(0)
    sizes = [(32, 10), (1024, 100)] if quick else [(n, c) for n in (32, 256, 1024) for c in (10, 100)]
    out = []
    for name in LOSSES:
        fn = getattr(swo, name)
        extra = {"reduction": "mean"} if name == "sigmoid_focal_loss" else {}
        for n, c in sizes:
            x, t, sw = _inputs(name, n, c, device, gen)
            case = f"{name} {n}x{c}"
            ours = lambda: fn(x, t, **extra)  # noqa: E731
            theirs = lambda: TORCH_MEAN[name](x, t)  # noqa: E731
            _check(ours(), theirs(), case)
            out.append(_row("small sizes", case, "ours", _train(ours, x), "torch", _train(theirs, x),
                            1.0, device, min_time))
            w_ours = lambda: fn(x, t, sample_weight=sw, **extra)  # noqa: E731
            w_eager = lambda: _weighted_eager(name, x, t, sw)  # noqa: E731
            _check(w_ours(), w_eager(), case + " weighted")
            out.append(_row("small sizes", case + " sample_weight", "ours", _train(w_ours, x),
                            "eager weighted", _train(w_eager, x), 0.8, device, min_time))
            if name in TORCH_MODULES:
                mod_ours = getattr(swo, type(TORCH_MODULES[name]()).__name__)(**extra)
                mod_torch = TORCH_MODULES[name]()
                m_ours = lambda: mod_ours(x, t)  # noqa: E731
                m_torch = lambda: mod_torch(x, t)  # noqa: E731
                out.append(_row("small sizes", case + " module", "ours module", _train(m_ours, x),
                                "torch module", _train(m_torch, x), 1.0, device, min_time))
    return out


def target_gradients(swo, device, quick, min_time):
    """Element-wise losses with a target that requires grad; see the module docstring."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(65536, 80), (1 << 20, 16)] if not quick else [(16384, 80)]
    out = []
    for name in ("binary_cross_entropy_with_logits", "mse_loss"):
        fn, ref = getattr(swo, name), TORCH_MEAN[name]
        for n, c in shapes:
            x, t, _ = _inputs(name, n, c, device, gen)
            tg = (t.clone() if name == "mse_loss" else torch.rand(n, c, generator=gen).to(device))
            tg.requires_grad_()
            case = f"{name} {n}x{c}"

            def both(f, x=x, tg=tg):
                def call():
                    f(x, tg).backward()
                    x.grad = tg.grad = None
                return call

            _check(fn(x, tg), ref(x, tg), case)
            out.append(_row("target gradients", case + " input only", "ours",
                            _train(lambda: fn(x, t), x), "torch", _train(lambda: ref(x, t), x),
                            1.0, device, min_time))
            out.append(_row("target gradients", case + " input and target", "ours", both(fn),
                            "torch", both(ref), 1.0, device, min_time))
            out.append(_row("target gradients", case + " cost of the target's gradient",
                            "ours, input and target", both(fn), "ours, input only",
                            _train(lambda: fn(x, t), x), 1.5, device, min_time))
    return out


def _pair(section, case, ours_name, ours_v, base_name, base_v, target, device, unit="ms"):
    ratio = ours_v / base_v
    return {"section": section, "case": case + ("" if unit == "ms" else f" ({unit})"),
            "device": device, "ours": ours_name, "baseline": base_name, "ours_ms": ours_v,
            "base_ms": base_v, "ratio": ratio, "target": target, "met": ratio <= target}


def linear(swo, device, quick, min_time):
    """The fused linear cross-entropy against its peers; see the module docstring."""
    import linear_loss as L
    sizes = L.QUICK if quick else L.MAIN
    case = f"linear_cross_entropy N={sizes['n']} D={sizes['d']} V={sizes['v']}"
    rounds = 5
    res = L.measure(sizes, torch.float32, device, rounds=rounds, min_time=min_time)
    out = []
    ours = res["ours"]
    mem_target = {"eager": 0.125, "torch_chunked": 1.0}
    for base in ("eager", "compiled", "torch_chunked"):
        r = res.get(base)
        if not (r and r["ok"] and ours["ok"]):
            continue
        out.append(_pair("linear cross-entropy", case, "ours", ours["median_s"] * 1e3, base,
                         r["median_s"] * 1e3, 1.0, device))
        if base in mem_target:
            out.append(_pair("linear cross-entropy", case + " extra peak memory", "ours",
                             ours["peak_bytes"] / 2**20, base, r["peak_bytes"] / 2**20,
                             mem_target[base], device, unit="MiB"))
    # Per-token weights, and bfloat16 against float32 (same sizes, ours only).
    x, W, y = L.make_inputs(sizes["n"], sizes["d"], sizes["v"], torch.float32, device)
    sw = torch.rand(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
    xb = x.detach().bfloat16().requires_grad_()
    Wb = W.detach().bfloat16().requires_grad_()
    runs = {"plain": L.step(lambda: swo.linear_cross_entropy(x, W, y), x, W),
            "weighted": L.step(lambda: swo.linear_cross_entropy(x, W, y, sample_weight=sw), x, W),
            "bf16": L.step(lambda: swo.linear_cross_entropy(xb, Wb, y), xb, Wb)}
    t = time_interleaved(runs, device=device, rounds=rounds, min_time=min_time)
    out.append(_pair("linear cross-entropy", case + " per-token weights", "ours, sample_weight",
                     t["weighted"][0] * 1e3, "ours", t["plain"][0] * 1e3, 1.1, device))
    out.append(_pair("linear cross-entropy", case + " bfloat16", "ours, bfloat16",
                     t["bf16"][0] * 1e3, "ours, float32", t["plain"][0] * 1e3, 1.0, device))
    return out


def _policies():
    from samplewt_ops.weights import GHM, OHEM, GradNormEMA, LossEMA, SelfPaced, SmallLoss
    return {"LossEMA": LossEMA(), "GradNormEMA": GradNormEMA(), "SelfPaced": SelfPaced(2.0),
            "SelfPaced soft": SelfPaced(2.0, soft=True), "OHEM": OHEM(0.7), "GHM": GHM(),
            "SmallLoss": SmallLoss(0.2, ramp_epochs=0)}


def tables(swo, device, quick, min_time):
    """A loss with an adaptive table against a plain sample_weight; see the module docstring."""
    gen = torch.Generator().manual_seed(2)
    n, c = 256, 10
    x = torch.randn(n, c, generator=gen).to(device).requires_grad_()
    y = torch.randint(0, c, (n,), generator=gen).to(device)
    sw = torch.rand(n, generator=gen).to(device)
    sizes = (10**3, 10**7) if quick else (10**3, 10**5, 10**7)
    out = []
    for size in sizes:
        for pname, policy in _policies().items():
            table = swo.AdaptiveWeights(size, policy, device=device)
            # a table that has seen a few batches, and the cutoff of an epoch
            for _ in range(3):
                idx = torch.randint(0, size, (n,), generator=gen).to(device)
                swo.cross_entropy(x.detach(), y, table=table, indices=idx)
            table.step_epoch()
            idx = torch.randint(0, size, (n,), generator=gen).to(device)
            ours = lambda: swo.cross_entropy(x, y, table=table, indices=idx)  # noqa: E731
            plain = lambda: swo.cross_entropy(x, y, sample_weight=sw)  # noqa: E731
            out.append(_row("tables", f"cross_entropy {n}x{c} {pname}, table of {size:.0e}",
                            "ours with table", _train(ours, x), "ours with sample_weight",
                            _train(plain, x), 1.3, device, min_time))
            del table
    return out


SECTIONS = {"small sizes": small_sizes, "target gradients": target_gradients, "tables": tables,
            "linear cross-entropy": linear}


def run_sections(swo, devices, quick, min_time, progress=None, only=None):
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"bench.py: unknown section(s) {unknown}; choose from {sorted(SECTIONS)}")
    rows = []
    for device in devices:
        for title, build in SECTIONS.items():
            if only and title not in only:
                continue
            if progress:
                progress(f"section {title} on {device}")
            rows.extend(build(swo, device, quick, min_time))
    return rows


def format_sections(rows, markdown=False):
    """One table per section: case, ours, baseline, times, ratio, target, met."""
    lines = []
    for title in dict.fromkeys(r["section"] for r in rows):
        sec = [r for r in rows if r["section"] == title]
        met = sum(r["met"] for r in sec)
        lines.append(f"\n{title} ({sec[0]['device']}): {met} of {len(sec)} pairs meet their target")
        head = ["case", "ours", "ms", "baseline", "ms", "ratio", "target", "met"]
        body = [[r["case"], r["ours"], f"{r['ours_ms']:.4f}", r["baseline"], f"{r['base_ms']:.4f}",
                 f"{r['ratio']:.2f}x", f"<= {r['target']:g}x", "yes" if r["met"] else "NO"]
                for r in sec]
        if markdown:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            lines.extend("| " + " | ".join(b) + " |" for b in body)
        else:
            widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
            for b in [head] + body:
                lines.append("  ".join(str(v).ljust(w) for v, w in zip(b, widths)))
    return "\n".join(lines)
