"""Running the cases of benchmarks/bench.py: one call of every variant is checked
against the reference (the eager loss, in float32 for bf16/fp16 inputs), then timed and
its peak memory measured (timing.py); run_case's results become the JSON rows
(rows_from). run_scaling_point does the same for ours alone at one scaling point.
"""

from __future__ import annotations

import functools
import gc
import sys
import time
import traceback

import torch

from cases import EAGER, SCALING_MIN_ELEMS, Case, compile_eager, dtype_name, liger_fn, make_inputs
from timing import cpu_peak_bytes, cuda_peak_bytes, malloc_trim, sync, time_cpu, time_rounds


# ----------------------------------------------------------------------------------------
# Correctness checks
# ----------------------------------------------------------------------------------------

# (loss rtol, grad rtol, grad atol as a fraction of max |reference grad|)
TOL = {
    torch.float64: (1e-6, 1e-5, 1e-8),
    torch.float32: (2e-4, 2e-3, 1e-5),
    torch.bfloat16: (2e-2, 4e-2, 1e-2),
    torch.float16: (5e-3, 1e-2, 2e-3),
}


def check_against(loss, grad, ref_loss, ref_grad, dtype, loose=False):
    """None if (loss, grad) match the reference, else a short reason."""
    lrt, grt, gat = TOL[dtype]
    if loose:
        lrt, grt, gat = lrt * 4, grt * 4, gat * 4
    lv, rv = float(loss.detach().float()), float(ref_loss)
    if not abs(lv - rv) <= lrt * abs(rv) + 1e-7:
        return f"loss {lv:.7g} vs reference {rv:.7g}"
    if ref_grad is None:
        return None
    if grad is None:
        return "no gradient"
    if tuple(grad.shape) != tuple(ref_grad.shape):
        return f"grad shape {tuple(grad.shape)} vs {tuple(ref_grad.shape)}"
    g2 = grad.detach().reshape(grad.shape[0], -1)
    r2 = ref_grad.reshape(ref_grad.shape[0], -1)
    rows = max(1, (1 << 22) // max(1, r2.shape[1]))
    scale = 0.0
    for i in range(0, r2.shape[0], rows):
        scale = max(scale, float(r2[i:i + rows].abs().max()))
    atol = gat * scale
    bad, worst = 0, 0.0
    for i in range(0, r2.shape[0], rows):
        a = g2[i:i + rows].float()
        r = r2[i:i + rows]
        d = (a - r).abs()
        ok = d <= atol + grt * r.abs()  # NaN compares False, so NaNs count as bad
        nb = int((~ok).sum())
        if nb:
            bad += nb
            dm = d.nan_to_num(float("inf")).max()
            worst = max(worst, float(dm))
    if bad:
        return f"gradient: {bad} of {g2.numel()} elements off (max |diff| {worst:.3g}, scale {scale:.3g})"
    return None


# ----------------------------------------------------------------------------------------
# Running one case
# ----------------------------------------------------------------------------------------

class Progress:
    def __init__(self, total):
        self.total, self.i, self.t0 = total, 0, time.perf_counter()

    def start(self, what):
        self.i += 1
        self.cur = time.perf_counter()
        print(f"[{self.i}/{self.total}] {what} ...", file=sys.stderr, flush=True)

    def note(self, msg):
        print(f"      {msg}", file=sys.stderr, flush=True)

    def done(self, msg=""):
        el = time.perf_counter() - self.cur
        tot = time.perf_counter() - self.t0
        print(f"      done in {el:.1f}s (total {tot:.0f}s) {msg}", file=sys.stderr, flush=True)


def run_case(case: Case, args, ours_impl, progress: Progress):
    dev = case.device
    is_cuda = dev == "cuda"
    min_time = args.min_time
    warm = 1  # extra warm-up calls; the checked call before timing is the first warm-up
    do_compile = not args.no_compile and (not args.quick or case.quick_compile)

    torch._dynamo.reset()
    x, t, cw, sw = make_inputs(case)
    xd = x.detach()
    lowp = case.dtype in (torch.bfloat16, torch.float16)
    eager = functools.partial(EAGER[case.op], **case.params)
    ours = functools.partial(ours_impl[case.op], **case.params)

    def train_call(fn, xin):
        def call():
            loss = fn(xin, t, cw, sw)
            (g,) = torch.autograd.grad(loss, xin)
            return loss, g
        return call

    def fwd_call(fn, xin):
        def call():
            with torch.no_grad():
                return fn(xin, t, cw, sw), None
        return call

    # Inputs consumed by in-place variants (ours inplace, Liger) get their own leaf, refilled
    # from the untouched x before every call (untimed), so x stays valid for the others.
    x_ip = None

    def refill():
        with torch.no_grad():
            x_ip.copy_(xd)

    kinds = sorted({"fwd" if m == "fwd" else "train" for m in case.modes})
    res = {"kinds": {}, "floors": {}, "modes": {}, "errors": []}

    # --- reference (gold) values per kind: eager in float32 for low-precision inputs -----
    refs = {}
    for kind in kinds:
        if lowp:
            xr = xd.float().requires_grad_()
            cwr = cw.float() if cw is not None else None
            swr = sw.float()
            tr = t.float() if t.is_floating_point() else t
            loss = EAGER[case.op](xr, tr, cwr, swr, **case.params)
            g = torch.autograd.grad(loss, xr)[0] if kind == "train" else None
            refs[kind] = (float(loss.detach()), g)
            del xr, loss
        else:
            mk = train_call if kind == "train" else fwd_call
            loss, g = mk(eager, x)()
            refs[kind] = (float(loss.detach().float()), g.detach() if g is not None else None)
            del loss, g

    # Every contender that passes its check is timed later, with all the others in the
    # same rounds (timing.time_rounds): {key: (call, setup)}, and the dict its time goes to.
    timed, timed_out = {}, {}

    def measure(name, call, setup=None, kind="train", loose=False):
        """check one call and measure its peak memory; its time comes from the rounds
        after every contender is checked. Returns dict.
        loose=True (eager PyTorch in bf16/fp16, which computes in the low precision): loss
        checked with a wider tolerance and the gradient not checked."""
        out = {}
        try:
            if setup:
                setup()
            loss, g = call()
            sync(dev)
            ref_loss, ref_g = refs[kind]
            if loose:
                ref_g = None
            why = check_against(loss, g, ref_loss, ref_g, case.dtype, loose=loose)
            del loss, g
            if why:
                out["check"] = "MISMATCH: " + why
                progress.note(f"{name}: MISMATCH ({why})")
                return out
            out["check"] = "ok"
            if is_cuda:
                out["peak_bytes"] = cuda_peak_bytes(call, setup)
            else:
                out["peak_bytes"], out["rss_peak_bytes"] = cpu_peak_bytes(call, setup)
            timed[name], timed_out[name] = (call, setup), out
            progress.note(f"{name}: ok, peak {out['peak_bytes'] / 2**20:.0f} MB")
        except Exception as e:  # report, keep going
            out["check"] = f"ERROR: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            progress.note(f"{name}: {out['check']}")
            if args.verbose:
                traceback.print_exc()
        return out

    # --- floors on the logits tensor (timed in the rounds too) --------------------------
    buf = torch.empty_like(xd)
    floors = {"copy_": lambda: buf.copy_(xd), "clone": lambda: xd.clone(),
              "read": lambda: xd.sum()}

    # --- eager and compiled, once per kind (shared by the default and inplace rows) ----
    for kind in kinds:
        mk = train_call if kind == "train" else fwd_call
        k = res["kinds"].setdefault(kind, {})
        k["eager"] = measure(f"eager ({kind})", mk(eager, x), kind=kind, loose=lowp)
        if do_compile:
            cfn = compile_eager(eager)
            call = mk(cfn, x)
            try:
                t0 = time.perf_counter()  # informational only: compile + first call
                call()
                sync(dev)
                k["compile_s"] = time.perf_counter() - t0
                progress.note(f"compiled ({kind}): compile + first call {k['compile_s']:.1f}s")
                k["compiled"] = measure(f"compiled ({kind})", call, kind=kind)
            except Exception as e:
                k["compiled"] = {"check": f"ERROR: {type(e).__name__}: "
                                          f"{str(e).splitlines()[0][:200] if str(e) else ''}"}
                progress.note(f"compiled: {k['compiled']['check']}")
        else:
            k["compiled"] = {"check": "skipped"}
        if is_cuda and case.liger and kind == "train":
            lfn, why = liger_fn()
            if lfn is None:
                k["liger"] = {"check": why if why == "not installed" else "n/a: " + why}
            else:
                if x_ip is None:
                    x_ip = torch.empty_like(xd).requires_grad_()
                k["liger"] = measure("liger", train_call(lfn, x_ip), setup=refill, kind=kind)
        elif is_cuda and kind == "train":
            k["liger"] = {"check": "n/a" + (": no focal loss in Liger" if case.op == "focal_loss"
                                             else "")}

    # --- ours, per mode ----------------------------------------------------------------
    for mode in case.modes:
        if mode == "fwd":
            r = measure("ours (fwd)", fwd_call(ours, x), kind="fwd")
        elif mode == "inplace":
            if x_ip is None:
                x_ip = torch.empty_like(xd).requires_grad_()
            r = measure("ours (inplace)",
                        train_call(functools.partial(ours, inplace=True), x_ip),
                        setup=refill, kind="train")
        else:
            r = measure("ours (default)", train_call(ours, x), kind="train")
        res["modes"][mode] = r

    # --- every checked contender and the floors, timed in the same rounds ---------------
    entries = dict(timed)
    entries.update({"floor " + f: (fcall, None) for f, fcall in floors.items()})
    try:
        times = time_rounds(entries, dev, min_time=min_time, warmup=warm)
    except Exception as e:  # report, keep going
        times = {}
        res["errors"].append(f"timing: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        progress.note(res["errors"][-1])
    for name, (sec, runs) in times.items():
        if name.startswith("floor "):
            res["floors"][name[len("floor "):] + "_ms"] = sec * 1e3
        else:
            timed_out[name]["ms"], timed_out[name]["runs"] = sec * 1e3, runs
            progress.note(f"{name}: {sec * 1e3:.2f} ms ({runs} runs)")

    del x, xd, t, cw, sw, x_ip, refs, buf, timed, timed_out, entries
    torch._dynamo.reset()
    gc.collect()
    if is_cuda:
        torch.cuda.empty_cache()
    else:
        malloc_trim()
    return res


def rows_from(case: Case, res):
    rows = []
    for mode in case.modes:
        kind = "fwd" if mode == "fwd" else "train"
        k = res["kinds"].get(kind, {})
        o = res["modes"].get(mode, {})
        row = {
            "device": case.device, "op": case.op, "shape": [case.n, case.c],
            "dtype": str(case.dtype).replace("torch.", ""), "mode": mode,
            "variant": case.variant, "params": case.params,
            "input_mb": case.n * case.c * torch.empty((), dtype=case.dtype).element_size() / 2**20,
            **res["floors"],
        }
        for name, m in (("ours", o), ("eager", k.get("eager", {})),
                        ("compiled", k.get("compiled", {})), ("liger", k.get("liger"))):
            if m is None:
                continue
            row[name + "_ms"] = m.get("ms")
            row[name + "_runs"] = m.get("runs")
            row[name + "_check"] = m.get("check")
            if "peak_bytes" in m:
                row[name + "_peak_mb"] = m["peak_bytes"] / 2**20
            if m.get("rss_peak_bytes") is not None:
                row[name + "_rss_peak_mb"] = m["rss_peak_bytes"] / 2**20
        if "compile_s" in k:
            row["compile_s"] = k["compile_s"]
        if mode == "inplace":
            row["timing_note"] = "fresh logits copied in an untimed setup before every call"
        rows.append(row)
    return rows



def run_scaling_point(case: Case, args, ours_impl, progress: Progress):
    """Check ours once against the reference (as in run_case), then time it. Returns a dict."""
    n, c = case.n, case.c
    out = {"op": case.op, "variant": case.variant, "params": case.params, "n": n, "c": c,
           "dtype": dtype_name(case.dtype), "elems": n * c, "small": n * c < SCALING_MIN_ELEMS}
    x = t = cw = sw = None
    try:
        x, t, cw, sw = make_inputs(case)
        ours = functools.partial(ours_impl[case.op], **case.params)

        def call():
            loss = ours(x, t, cw, sw)
            (g,) = torch.autograd.grad(loss, x)
            return loss, g

        if case.dtype in (torch.bfloat16, torch.float16):  # reference in float32
            xr = x.detach().float().requires_grad_()
            cwr = cw.float() if cw is not None else None
            tr = t.float() if t.is_floating_point() else t
            ref = EAGER[case.op](xr, tr, cwr, sw.float(), **case.params)
        else:
            xr = x
            ref = EAGER[case.op](x, t, cw, sw, **case.params)
        ref_g = torch.autograd.grad(ref, xr)[0]
        ref_loss = float(ref.detach().float())
        del ref, xr
        loss, g = call()
        why = check_against(loss, g, ref_loss, ref_g, case.dtype)
        del loss, g, ref_g
        if why:
            out["check"] = "MISMATCH: " + why
            progress.note(f"ours: MISMATCH ({why})")
            return out
        out["check"] = "ok"
        sec, runs = time_cpu(call, min_time=args.min_time, warmup=1)
        out["ms"], out["runs"] = sec * 1e3, runs
        out["ns_per_elem"] = sec * 1e9 / (n * c)
    except Exception as e:  # report, keep going
        out["check"] = f"ERROR: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        progress.note(f"ours: {out['check']}")
        if args.verbose:
            traceback.print_exc()
    finally:
        del x, t, cw, sw
        gc.collect()
        malloc_trim()
    return out

