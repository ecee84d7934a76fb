"""Report of tools/gpu_check.py: the GPU-proof targets from the benchmark rows, the
copies to $OUT, and the one summary."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import time

from gpu_check_util import (
    BUILD_TARGET_S,
    JUNIT_PATH,
    LOG_PATH,
    ROOT,
    SHOWN,
    SUMMARY_PATH,
    ncores,
    note,
    say,
)


# ---------------------------------------------------------------------------------------
# Targets of the GPU-proof issue, from bench.py's rows
# ---------------------------------------------------------------------------------------

def _row(rows, op, n, c, dtype, mode):
    for r in rows:
        if (r.get("op") == op and list(r.get("shape", [])) == [n, c] and r.get("dtype") == dtype
                and r.get("mode") == mode):
            return r
    return None


def _num(v):
    return isinstance(v, (int, float)) and v == v and v > 0


def targets(ctx):
    """[(label, status 'met'|'missed'|'not measured', detail)]"""
    rows = ctx.results.get("bench", {}).get("rows", [])
    bres = ctx.results.get("bench")
    why_none = ("no GPU" if not ctx.gpu else
                "bench did not run" if bres is None else
                f"bench measured nothing ({bres.get('status')})" if not rows else
                "bench.py has no such row")
    out = []

    b = ctx.results.get("build", {})
    if ctx.gpu and b.get("status") == "ok" and _num(b.get("seconds")) and b.get("clean"):
        s = b["seconds"]
        out.append((f"build <= {BUILD_TARGET_S:.0f} s (MAX_JOBS={b.get('max_jobs')})",
                    "met" if s <= BUILD_TARGET_S else "missed", f"{s:.0f} s = {s / BUILD_TARGET_S:.2f}x the limit"))
    else:
        out.append((f"build <= {BUILD_TARGET_S:.0f} s on the GPU machine", "not measured",
                     "no GPU (a dry run's build is not the GPU machine's)" if not ctx.gpu else
                     "an incremental build (--incremental)" if b.get("status") == "ok" else "build failed"))

    def ratio_target(label, row, num_key, den_key, limit, higher, what):
        if row is None:
            out.append((label, "not measured", why_none))
            return
        a, d = row.get(num_key), row.get(den_key)
        if not (_num(a) and _num(d)):
            chk = row.get(num_key.replace("_ms", "_check")) if not _num(a) else row.get(den_key.replace("_ms", "_check"))
            out.append((label, "not measured", f"{what}: {chk or 'no time'}"))
            return
        x = a / d
        met = x >= limit if higher else x <= limit
        out.append((label, "met" if met else "missed", f"{x:.2f}x (limit {'>=' if higher else '<='} {limit}x)"))

    big = (16384, 128256, "bfloat16")
    for op in ("cross_entropy", "focal_loss"):
        r = _row(rows, op, *big, "default")
        name = f"{op} bf16 16384x128256"
        ratio_target(f"{name}: <= 1.25x x.clone()", r, "ours_ms", "clone_ms", 1.25, False, "ours/clone")
        ratio_target(f"{name}: >= 3x eager", r, "eager_ms", "ours_ms", 3.0, True, "eager/ours")
        ratio_target(f"{name}: >= 1.5x torch.compile", r, "compiled_ms", "ours_ms", 1.5, True, "compiled/ours")
        if op == "cross_entropy":
            lig = ctx.results.get("bench", {}).get("liger", "")
            if r is not None and not _num(r.get("liger_ms")) and lig.startswith("not installed"):
                out.append((f"{name}: >= 1.2x Liger", "not measured", "Liger " + lig))
            else:
                ratio_target(f"{name}: >= 1.2x Liger", r, "liger_ms", "ours_ms", 1.2, True, "liger/ours")
    r = _row(rows, "sigmoid_focal_loss", 262144, 80, "float32", "default")
    ratio_target("sigmoid_focal_loss fp32 262144x80: >= 5x eager", r, "eager_ms", "ours_ms", 5.0, True, "eager/ours")
    ratio_target("sigmoid_focal_loss fp32 262144x80: >= 1.5x torch.compile", r, "compiled_ms", "ours_ms", 1.5,
                 True, "compiled/ours")
    r = _row(rows, "cross_entropy", 4096, 1000, "float32", "default")
    ratio_target("cross_entropy fp32 4096x1000: >= 2x eager", r, "eager_ms", "ours_ms", 2.0, True, "eager/ours")
    for op in ("cross_entropy", "focal_loss"):
        r = _row(rows, op, *big, "inplace")
        label = f"{op} bf16 16384x128256 inplace_grad=True: peak memory <= 5% of the logits"
        if r is None:
            out.append((label, "not measured", why_none))
        elif not (isinstance(r.get("ours_peak_mb"), (int, float)) and _num(r.get("input_mb"))):
            out.append((label, "not measured", f"ours: {r.get('ours_check') or 'no peak'}"))
        else:
            x = r["ours_peak_mb"] / r["input_mb"]
            out.append((label, "met" if x <= 0.05 else "missed",
                        f"{r['ours_peak_mb']:.1f} MB of {r['input_mb']:.0f} MB = {100 * x:.2f}%"))
    return out


# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------

def copy_out(extra=()):
    dest = os.environ.get("OUT")
    if not dest:
        return
    try:
        os.makedirs(dest, exist_ok=True)
        for p in (LOG_PATH, SUMMARY_PATH, JUNIT_PATH) + tuple(extra):
            if p and os.path.isfile(p):
                shutil.copy2(p, os.path.join(dest, os.path.basename(p)))
    except Exception as e:
        note(f"copy to OUT={dest} failed: {type(e).__name__}: {e}")


def summary(ctx):
    res = ctx.results
    info = ctx.info
    dev = info.get("device_name") or "no GPU"
    say("")
    say("=" * 78)
    say(f"gpu-check summary: {dev} | torch {info.get('torch', '?')} (CUDA {info.get('torch_cuda')}) | "
        f"python {info.get('python', '?')} | {ncores()} cores | {time.monotonic() - ctx.t0:.0f} s")
    say("=" * 78)
    for name in SHOWN:
        r = res.get(name)
        if r is None:
            say(f"{name:10s} {'not run':8s} (the budget ran out, or an earlier error)")
            continue
        say(f"{name:10s} {r.get('status', '?'):8s} {r.get('line', '')}")
    t = res.get("tests", {})
    c = t.get("counts")
    if c:
        say(f"tests:     {c['passed']} passed, {c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped"
            + ("" if ctx.gpu else " (no GPU)"))
        say(f"           N x C > 2^31 test (test_big_index_bfloat16_beyond_2_pow_31): {t.get('big_index')}")
        for n in c.get("failed_names", [])[:15]:
            say(f"           FAILED {n}")
        if len(c.get("failed_names", [])) > 15:
            say(f"           ... and {len(c['failed_names']) - 15} more (see the log)")
    for tool in ("memcheck", "racecheck"):
        r = res.get(tool, {})
        e = r.get("errors")
        say(f"{tool + ':':10s} " + (f"{e} errors" if e is not None else
                                     "not measured (" + r.get("status", "not run") + ")"))
    say(f"liger:     {res.get('bench', {}).get('liger', 'not checked')}")
    say("targets (GPU-proof issue; bf16 / fp32 forward + backward of the mean loss with per-sample weights):")
    tg = targets(ctx)
    for label, st, detail in tg:
        say(f"  [{st:^12s}] {label}: {detail}")
    failed = [n for n, r in res.items() if r.get("status") in ("failed", "timeout", "error")]
    missed = [l for l, st, _ in tg if st != "met"]
    if failed:
        rc, verdict = 1, "FAILED: " + ", ".join(failed)
    elif not ctx.gpu:
        rc, verdict = 2, "NO GPU (dry run): every step ran up to where it needs a GPU"
    elif missed:
        rc, verdict = 3, f"steps passed; {len(missed)} of {len(tg)} targets missed or not measured"
    else:
        rc, verdict = 0, f"PASSED: every step, and all {len(tg)} targets met"
    say(f"result: {verdict} (exit {rc})")
    say(f"log: {os.path.relpath(LOG_PATH, ROOT)}; summary: {os.path.relpath(SUMMARY_PATH, ROOT)}"
        + (f"; copied to {os.environ['OUT']}" if os.environ.get("OUT") else ""))
    try:
        def clean(r):
            r = dict(r)
            r.pop("rows", None)
            if "counts" in r:
                r["counts"] = {k: v for k, v in r["counts"].items() if k != "cases"}
            return r
        with open(SUMMARY_PATH, "w") as f:
            json.dump({"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "machine": info, "gpu": ctx.gpu, "exit": rc, "verdict": verdict,
                       "steps": {k: clean(v) for k, v in res.items()},
                       "targets": [{"target": l, "status": s, "detail": d} for l, s, d in tg]}, f, indent=1)
    except Exception as e:
        note(f"cannot write {SUMMARY_PATH}: {type(e).__name__}: {e}")
    copy_out([res.get("bench", {}).get("json")])
    return rc
