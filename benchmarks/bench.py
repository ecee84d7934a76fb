#!/usr/bin/env python
"""Benchmark of samplewt_ops against eager PyTorch, torch.compile and memory floors.

`make bench` runs this script. Every timed call is forward plus backward of the
*mean* loss with sample weights and class weights given (for focal_loss the class
weights are its alpha tensor, for BCE the pos_weight; sigmoid_focal_loss has its
scalar alpha=0.25), unless the row's mode says "fwd" (torch.no_grad forward only).

Variants per row:
  ours      samplewt_ops.<fn>(..., sample_weight=sw)
  eager     the same loss written with torch ops and autograd, e.g.
            (F.cross_entropy(x, y, weight=cw, reduction="none") * sw).sum() / (sw * cw[y]).sum()
  compiled  torch.compile(eager function, dynamic=False); compiled once, warmed up, then timed
  liger     (CUDA, cross_entropy only) LigerCrossEntropyLoss(reduction="none") times the weights
Floors, on the logits tensor x: copy_ = buf.copy_(x) into an existing buffer,
clone = x.clone(), read = x.sum().

Honesty: before anything is timed, one call of every variant is checked against a
reference (the eager loss, evaluated in float32 for bf16/fp16 inputs): the loss value
and the whole gradient must match within a dtype tolerance. A variant that does
not match is not timed and is shown as MISMATCH; the script then exits non-zero.

Scaling section (CPU, after the main table; --scaling-only runs just it, --no-scaling
skips it): ours' default-mode call alone, timed over sweeps of N*C (cross_entropy and
focal_loss: C=1000 with N = 64 .. 16384 and N=64 with C = 1000 .. 128000, in float32 and
bfloat16; sigmoid_focal_loss: C=80, N = 1024 .. 65536), reported as ns per element with,
per sweep, max/min ns/elem and the log-log slope over the sizes with N*C >= 1e6 (linear
time = flat ns/elem, slope 1), and bfloat16 over float32 ns/elem per size. It is stored
under "scaling" in the JSON and drawn in <tag>-scaling.png (--scaling-only writes
<tag>-scaling.json so that a full run's JSON is not replaced). --quick: C=1000 with N in
256, 1024, 4096 only.

Run `python benchmarks/bench.py --help` for the flags.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import functools
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils import benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
# An installed samplewt_ops (pip install -e .) wins; else fall back to the source tree.
sys.path.append(os.path.dirname(HERE))
NTHREADS = os.cpu_count() or 1


# ----------------------------------------------------------------------------------------
# Eager baselines: the same losses written with torch ops (autograd does the backward).
# Arguments are always (x, target, cw, sw, **params); cw is the class-weight-like tensor
# of the op (class weights, focal alpha, BCE pos_weight) or None.
# ----------------------------------------------------------------------------------------

def eager_cross_entropy(x, y, cw, sw):
    per = F.cross_entropy(x, y, weight=cw, reduction="none")  # already includes cw[y]
    return (per * sw).sum() / (sw * cw[y]).sum()


def eager_focal_loss(x, y, cw, sw, gamma=2.0):
    logp = F.log_softmax(x, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    p = logp.exp()
    per = -cw[y] * (1.0 - p).pow(gamma) * logp
    return (per * sw).sum() / sw.sum()


def eager_sigmoid_focal_loss(x, t, cw, sw, alpha=0.25, gamma=2.0):
    # torchvision.ops.sigmoid_focal_loss formula, times the sample weight of each row.
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return (loss * sw.unsqueeze(1)).sum() / (sw.sum() * x.shape[1])


def eager_bce_with_logits(x, t, pw, sw):
    per = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
    return (per * sw.unsqueeze(1)).sum() / (sw.sum() * x.shape[1])


def eager_mse_loss(x, t, cw, sw):
    per = F.mse_loss(x, t, reduction="none")
    return (per * sw.unsqueeze(1)).sum() / (sw.sum() * x.shape[1])


def eager_huber_loss(x, t, cw, sw, delta=1.0):
    per = F.huber_loss(x, t, reduction="none", delta=delta)
    return (per * sw.unsqueeze(1)).sum() / (sw.sum() * x.shape[1])


# ----------------------------------------------------------------------------------------
# samplewt_ops calls. `inplace` is only forwarded when True (cross_entropy, focal_loss).
# ----------------------------------------------------------------------------------------

def make_ours(swo):
    def ce(x, y, cw, sw, inplace=False):
        kw = {"inplace_grad": True} if inplace else {}
        return swo.cross_entropy(x, y, cw, sample_weight=sw, **kw)

    def focal(x, y, cw, sw, gamma=2.0, inplace=False):
        kw = {"inplace_grad": True} if inplace else {}
        return swo.focal_loss(x, y, gamma=gamma, alpha=cw, sample_weight=sw, **kw)

    def sfl(x, t, cw, sw, alpha=0.25, gamma=2.0):
        return swo.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, sample_weight=sw,
                                      reduction="mean")

    def bce(x, t, pw, sw):
        return swo.binary_cross_entropy_with_logits(x, t, pos_weight=pw, sample_weight=sw)

    def mse(x, t, cw, sw):
        return swo.mse_loss(x, t, sample_weight=sw)

    def huber(x, t, cw, sw, delta=1.0):
        return swo.huber_loss(x, t, delta=delta, sample_weight=sw)

    return {"cross_entropy": ce, "focal_loss": focal, "sigmoid_focal_loss": sfl,
            "binary_cross_entropy_with_logits": bce, "mse_loss": mse, "huber_loss": huber}


def make_self_test_ours():
    """--self-test: 'ours' is the eager function itself (speedups ~1x). Only checks the flow."""
    def wrap(fn):
        def call(*a, inplace=False, **k):
            return fn(*a, **k)
        return call
    return {k: wrap(v) for k, v in EAGER.items()}


EAGER = {
    "cross_entropy": eager_cross_entropy,
    "focal_loss": eager_focal_loss,
    "sigmoid_focal_loss": eager_sigmoid_focal_loss,
    "binary_cross_entropy_with_logits": eager_bce_with_logits,
    "mse_loss": eager_mse_loss,
    "huber_loss": eager_huber_loss,
}
OPS = list(EAGER)
ROW_OPS = {"cross_entropy", "focal_loss"}  # index targets, (N, C) logits, class weights


# ----------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------

@dataclass
class Case:
    op: str
    n: int
    c: int
    dtype: torch.dtype
    device: str
    modes: tuple  # of "default", "inplace", "fwd"
    params: dict = field(default_factory=dict)
    quick: bool = False          # part of --quick
    quick_compile: bool = False  # compiled column also measured in --quick
    liger: bool = False          # Liger-Kernel column (CUDA cross_entropy)

    @property
    def variant(self):
        return " ".join(f"{k}={v}" for k, v in self.params.items())

    def name(self, mode=None):
        dt = str(self.dtype).replace("torch.", "")
        s = f"{self.op} {self.n}x{self.c} {dt}"
        if self.variant:
            s += f" {self.variant}"
        if mode:
            s += f" {mode}"
        return f"[{self.device}] {s}"


def cpu_cases():
    f32, bf16 = torch.float32, torch.bfloat16
    both = ("default", "inplace")
    return [
        Case("cross_entropy", 4096, 1000, f32, "cpu", both, quick=True, quick_compile=True),
        Case("focal_loss", 4096, 1000, f32, "cpu", both, {"gamma": 2.0}, quick=True),
        Case("cross_entropy", 8192, 32000, f32, "cpu", both + ("fwd",)),
        Case("focal_loss", 8192, 32000, f32, "cpu", both, {"gamma": 2.0}),
        Case("cross_entropy", 8192, 32000, bf16, "cpu", both),
        Case("sigmoid_focal_loss", 65536, 80, f32, "cpu", ("default",), {"gamma": 2.0},
             quick=True, quick_compile=True),
        Case("sigmoid_focal_loss", 65536, 80, f32, "cpu", ("default",), {"gamma": 1.5}),
        Case("binary_cross_entropy_with_logits", 65536, 80, f32, "cpu", ("default",), quick=True),
        Case("mse_loss", 1_000_000, 16, f32, "cpu", ("default",), quick=True),
        Case("huber_loss", 1_000_000, 16, f32, "cpu", ("default",), {"delta": 1.0}, quick=True),
    ]


def cuda_cases():
    f32, bf16 = torch.float32, torch.bfloat16
    both = ("default", "inplace")
    return [
        Case("cross_entropy", 16384, 128256, bf16, "cuda", both, quick=True, quick_compile=True,
             liger=True),
        Case("focal_loss", 16384, 128256, bf16, "cuda", both, {"gamma": 2.0}),
        Case("sigmoid_focal_loss", 262144, 80, bf16, "cuda", ("default",), {"gamma": 2.0},
             quick=True),
        Case("sigmoid_focal_loss", 262144, 80, f32, "cuda", ("default",), {"gamma": 2.0}),
        Case("cross_entropy", 4096, 1000, f32, "cuda", both, quick=True, liger=True),
    ]


def make_inputs(case: Case, gen_seed=0):
    dev, dt, n, c = case.device, case.dtype, case.n, case.c
    g = torch.Generator(device=dev)
    g.manual_seed(gen_seed)
    x = (torch.randn(n, c, generator=g, device=dev, dtype=torch.float32) * 2).to(dt)
    sw = (torch.rand(n, generator=g, device=dev) + 0.5).to(dt)
    if case.op in ROW_OPS:
        t = torch.randint(0, c, (n,), generator=g, device=dev)
        cw = (torch.rand(c, generator=g, device=dev) + 0.5).to(dt)
    elif case.op in ("sigmoid_focal_loss", "binary_cross_entropy_with_logits"):
        t = (torch.rand(n, c, generator=g, device=dev) < 0.1).to(dt)
        cw = ((torch.rand(c, generator=g, device=dev) + 0.5).to(dt)
              if case.op == "binary_cross_entropy_with_logits" else None)
    else:  # regression
        t = torch.randn(n, c, generator=g, device=dev, dtype=torch.float32).to(dt)
        cw = None
    return x.requires_grad_(), t, cw, sw


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------

MIN_RUNS = 5


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_cpu(call, setup=None, min_time=1.0, warmup=2):
    """Median seconds of >= MIN_RUNS timed runs after warm-up, with torch.utils.benchmark.

    Without setup: Timer.blocked_autorange (blocks of calls; more blocks until min_time
    and at least MIN_RUNS measurements).
    With setup (inplace mode, the call consumes its input): every run is Timer.timeit(1)
    whose untimed `setup` statement restores fresh logits first, so the copy is not in
    the time and every timed call sees real logits.
    """
    glb = {"call": call, "setup": setup}
    if setup is None:
        t = benchmark.Timer(stmt="call()", globals=glb, num_threads=NTHREADS)
        est = max(t.timeit(1).median for _ in range(max(1, warmup)))
        times = []
        while len(times) < MIN_RUNS:
            m = t.blocked_autorange(min_run_time=max(min_time, (MIN_RUNS + 0.5) * est))
            times.extend(m.times)
        return statistics.median(times), len(times)
    t = benchmark.Timer(stmt="call()", setup="setup()", globals=glb, num_threads=NTHREADS)
    for _ in range(max(1, warmup)):
        t.timeit(1)
    times, spent = [], 0.0
    while len(times) < MIN_RUNS or (spent < min_time and len(times) < 500):
        dt = t.timeit(1).median
        times.append(dt)
        spent += dt
    return statistics.median(times), len(times)


def time_cuda(call, setup=None, min_time=1.0, warmup=3):
    """Median seconds from CUDA events around each call (setup, if any, runs before the
    start event on the same stream, so it is excluded)."""
    for _ in range(max(1, warmup)):
        if setup:
            setup()
        call()
    torch.cuda.synchronize()
    times, spent = [], 0.0
    while len(times) < max(MIN_RUNS, 10) or (spent < min_time and len(times) < 1000):
        if setup:
            setup()
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        call()
        e.record()
        e.synchronize()
        dt = s.elapsed_time(e) / 1e3
        times.append(dt)
        spent += dt
    return statistics.median(times), len(times)


# ----------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------
# CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what was
#       allocated before the call.
# CPU:  torch has no CPU max_memory_allocated, so one call runs under
#       torch.profiler.profile(profile_memory=True). Every allocation and free made through
#       PyTorch's CPU allocator (ours' kernels, eager ATen ops, autograd, and the buffers
#       of inductor-generated code, which all allocate via at::empty*) is recorded as a
#       "[memory]" event with a signed byte count; summing them in time order gives the
#       exact running total of live bytes, and its maximum is the peak extra bytes of the
#       call (it includes the returned gradient). This is byte-exact and independent of
#       page-fault or glibc caching behaviour.
#       Memory obtained outside that allocator (e.g. a kernel that mmaps its own buffer)
#       would be invisible to it, so as a cross-check the same call is also measured by
#       the resident-set high-water mark: writing "5" to /proc/self/clear_refs resets
#       VmHWM to the current RSS (Linux >= 4.0), and VmHWM - RSS after the call is the
#       peak of touched pages. For logits of >= 256 MB (where glibc mmaps and unmaps every
#       such buffer, so RSS tracks live bytes) the table marks a figure with "†" when the
#       RSS peak exceeds the allocator peak by more than half the logits' size; both numbers
#       are in the JSON. (For small tensors glibc heap re-use makes RSS unreliable.)

_libc = None


def _malloc_trim():
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except Exception:
        pass


def _proc_status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_peak_bytes(call, setup=None):
    """(allocator peak bytes, RSS high-water-mark bytes or None) of one call; see above."""
    if setup:
        setup()
    gc.collect()
    _malloc_trim()  # return freed heap pages so that re-used memory is faulted in again
    base = None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status("VmRSS")
    except OSError:
        pass
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        call()
    hwm = _proc_status("VmHWM") if base is not None else None
    evs = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    evs.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in evs:
        live += e.nbytes()
        peak = max(peak, live)
    rss = max(0, hwm - base) if (base is not None and hwm is not None) else None
    return peak, rss


def cuda_peak_bytes(call, setup=None):
    if setup:
        setup()
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


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
# Environment
# ----------------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def slug(s):
    s = s.lower()
    s = re.sub(r"\((r|tm|c)\)", " ", s)
    s = re.sub(r"\b(nvidia|processor|cpu|with|radeon graphics|\d+-core)\b", " ", s)
    s = re.sub(r"@.*$", "", s)
    s = re.sub(r"[^a-z0-9.]+", "-", s).strip("-")
    return s or "unknown"


def machine_tag(device):
    if device == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(0))
    return f"cpu-{slug(cpu_model())}-{NTHREADS}c"


def env_info(device, swo_info):
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "samplewt_ops": swo_info,
        "env_vars": {k: os.environ[k] for k in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS",
                                                 "MALLOC_CONF", "LD_PRELOAD")
                     if k in os.environ},
    }
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            info["thp_enabled"] = f.read().strip()
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
            text=True, timeout=10).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update({"device_name": p.name, "cuda": torch.version.cuda,
                     "device_memory_gb": round(p.total_memory / 2**30, 1),
                     "sm": f"{p.major}.{p.minor}"})
        try:
            import liger_kernel  # noqa: F401
            from importlib.metadata import version
            info["liger_kernel"] = version("liger-kernel")
        except Exception:
            info["liger_kernel"] = None
    else:
        info["device_name"] = cpu_model()
    return info


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


def _liger_fn():
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "liger_kernel":
            return None, "not installed"
        return None, f"liger_kernel not importable ({type(e).__name__}: {e.name})"
    except Exception as e:  # no triton, or a version that does not fit
        return None, f"liger_kernel not importable ({type(e).__name__})"
    mod = LigerCrossEntropyLoss(reduction="none")

    def liger(x, y, cw, sw):
        # Liger's own kernel writes the gradient into x's memory in forward (it consumes x).
        w = sw * cw[y]
        return (mod(x, y) * w).sum() / w.sum()
    return liger, None


def run_case(case: Case, args, ours_impl, progress: Progress):
    dev = case.device
    is_cuda = dev == "cuda"
    timer = time_cuda if is_cuda else time_cpu
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

    def measure(name, call, setup=None, kind="train", loose=False):
        """check one call, then time it and measure its peak memory. Returns dict.
        loose=True (eager PyTorch in bf16/fp16, which computes in the low precision): loss
        checked with a wider tolerance and the gradient not checked."""
        out = {}
        try:
            if setup:
                setup()
            loss, g = call()
            _sync(dev)
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
            sec, runs = timer(call, setup=setup, min_time=min_time, warmup=warm)
            out["ms"], out["runs"] = sec * 1e3, runs
            if is_cuda:
                out["peak_bytes"] = cuda_peak_bytes(call, setup)
            else:
                out["peak_bytes"], out["rss_peak_bytes"] = cpu_peak_bytes(call, setup)
            progress.note(f"{name}: {out['ms']:.2f} ms ({runs} runs), "
                          f"peak {out['peak_bytes'] / 2**20:.0f} MB")
        except Exception as e:  # report, keep going
            out["check"] = f"ERROR: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            progress.note(f"{name}: {out['check']}")
            if args.verbose:
                traceback.print_exc()
        return out

    # --- floors on the logits tensor -------------------------------------------------
    buf = torch.empty_like(xd)
    floors = {"copy_": lambda: buf.copy_(xd), "clone": lambda: xd.clone(),
              "read": lambda: xd.sum()}
    for fname, fcall in floors.items():
        sec, _ = timer(fcall, min_time=min_time / 2, warmup=warm)
        res["floors"][fname + "_ms"] = sec * 1e3
    del buf

    # --- eager and compiled, once per kind (shared by the default and inplace rows) ----
    for kind in kinds:
        mk = train_call if kind == "train" else fwd_call
        k = res["kinds"].setdefault(kind, {})
        k["eager"] = measure(f"eager ({kind})", mk(eager, x), kind=kind, loose=lowp)
        if do_compile:
            cfn = torch.compile(eager, dynamic=False)
            call = mk(cfn, x)
            try:
                t0 = time.perf_counter()  # informational only: compile + first call
                call()
                _sync(dev)
                k["compile_s"] = time.perf_counter() - t0
                progress.note(f"compiled ({kind}): compile + first call {k['compile_s']:.1f}s")
                k["compiled"] = measure(f"compiled ({kind})", call, kind=kind)
            except Exception as e:
                k["compiled"] = {"check": f"ERROR: {type(e).__name__}: "
                                          f"{str(e).splitlines()[0][:200] if str(e) else ''}"}
                progress.note(f"compiled: {k['compiled']['check']}")
            del cfn, call
        else:
            k["compiled"] = {"check": "skipped"}
        if is_cuda and case.liger and kind == "train":
            lfn, why = _liger_fn()
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

    del x, xd, t, cw, sw, x_ip, refs
    torch._dynamo.reset()
    gc.collect()
    if is_cuda:
        torch.cuda.empty_cache()
    else:
        _malloc_trim()
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


# ----------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------

def _ms(row, name):
    v = row.get(name + "_ms")
    if isinstance(v, (int, float)):
        return f"{v:.2f}" if v < 100 else f"{v:.1f}"
    chk = row.get(name + "_check") or "-"
    if chk.startswith("MISMATCH"):
        return "MISMATCH"
    if chk.startswith("ERROR"):
        return "ERROR"
    if chk.startswith("n/a"):
        return "n/a"
    if chk == "not installed":
        return chk
    return "-" if chk == "skipped" else chk[:10]


def _ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return f"{a / b:.2f}x"
    return "-"


def rss_exceeds(row, name):
    """True when the RSS cross-check saw clearly more than the allocator did.

    Only judged for logits of >= 256 MB: glibc serves every such buffer with its own mmap
    and unmaps it on free, so RSS then tracks live bytes closely. For smaller tensors
    glibc's heap re-use and fragmentation make RSS overshoot the live bytes by tens to
    hundreds of MB, which says nothing about the op.
    """
    v, rss, inp = row.get(name + "_peak_mb"), row.get(name + "_rss_peak_mb"), row["input_mb"]
    if not isinstance(v, (int, float)) or not isinstance(rss, (int, float)) or inp < 256:
        return False
    return rss - v > 0.5 * inp


def _mb(row, name):
    v = row.get(name + "_peak_mb")
    if not isinstance(v, (int, float)):
        return "-"
    s = f"{v:.0f}" if v >= 10 else f"{v:.1f}"
    if rss_exceeds(row, name):
        s += "†"
    return s


FLOOR_OF_MODE = {"default": "clone", "inplace": "copy_", "fwd": "read"}


def table_rows(rows, with_liger):
    head = ["op", "shape", "dtype", "mode", "ours ms", "eager ms", "compiled ms"]
    if with_liger:
        head += ["liger ms"]
    head += ["vs eager", "vs compiled"]
    if with_liger:
        head += ["vs liger"]
    head += ["% copy_", "vs floor", "in MB", "peak MB ours", "eager", "compiled"]
    if with_liger:
        head += ["liger"]
    out = []
    for r in rows:
        ours = r.get("ours_ms")
        op = r["op"] + (f" ({r['variant']})" if r.get("variant") else "")
        line = [op, "x".join(map(str, r["shape"])), r["dtype"], r["mode"], _ms(r, "ours"),
                _ms(r, "eager"), _ms(r, "compiled")]
        if with_liger:
            line += [_ms(r, "liger")]
        line += [_ratio(r.get("eager_ms"), ours), _ratio(r.get("compiled_ms"), ours)]
        if with_liger:
            line += [_ratio(r.get("liger_ms"), ours)]
        copy_pct = (f"{100 * r['copy__ms'] / ours:.0f}%"
                    if isinstance(ours, (int, float)) and ours > 0 else "-")
        fl = FLOOR_OF_MODE[r["mode"]]
        vs_floor = (f"{ours / r[fl + '_ms']:.2f}x {fl}"
                    if isinstance(ours, (int, float)) and r.get(fl + "_ms") else "-")
        line += [copy_pct, vs_floor, f"{r['input_mb']:.0f}", _mb(r, "ours"), _mb(r, "eager"),
                 _mb(r, "compiled")]
        if with_liger:
            line += [_mb(r, "liger")]
        out.append(line)
    return head, out


def format_table(rows, markdown=False):
    with_liger = any(r["device"] == "cuda" for r in rows)
    head, body = table_rows(rows, with_liger)
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i < 4 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [fmt(b) for b in body]
    return "\n".join(lines)


def footnotes(device, env, self_test, quick):
    timing = ("CUDA events around each call; median of >= 10 runs after warm-up"
              if device == "cuda" else
              f"torch.utils.benchmark.Timer (blocked_autorange), median of >= {MIN_RUNS} timed runs "
              f"after warm-up, {env['threads']} threads")
    peak = ("torch.cuda.max_memory_allocated" if device == "cuda" else
            "allocator bytes from torch.profiler memory events (running peak); "
            "† = the RSS high-water mark exceeded it by > half the logits (memory from outside "
            "the allocator)")
    notes = [
        f"Device: {env['device_name']} | torch {env['torch']} | {timing}.",
        "Each time is forward + backward of the mean loss (torch.autograd.grad w.r.t. the logits), "
        "with sample weights and class weights (focal: alpha tensor; BCE: pos_weight).",
        "inplace: inplace_grad=True consumes the logits; before every timed call an untimed setup "
        "copy_ puts fresh logits into the input, so times exclude that copy. eager/compiled columns "
        "are the (non-in-place) functions of the default row.",
        "fwd: torch.no_grad forward only. vs eager/compiled/liger = baseline ms / ours ms.",
        "% copy_ = copy_ time / ours * 100 (buf.copy_(x): one read + one write of the logits). "
        "vs floor = ours / floor: default vs x.clone(), inplace vs copy_, fwd vs x.sum().",
        f"peak MB = peak extra memory during one call incl. the returned gradient, measured by {peak}; "
        "in MB = size of the logits.",
        "Every variant's loss and gradient were checked against a reference before timing "
        "(MISMATCH/ERROR = not timed).",
    ]
    if device == "cuda":
        notes.append("liger = LigerCrossEntropyLoss(reduction='none') times the weights; it also "
                     "writes its gradient into the logits, so it gets the same untimed fresh-logits "
                     "setup as inplace.")
    if quick:
        notes.append("--quick: subset of cases, fewer runs, torch.compile only on some rows.")
    if self_test:
        notes.append("SELF-TEST: 'ours' is the eager function, not samplewt_ops. Figures are "
                     "meaningless except as a check of this script.")
    sw = env.get("samplewt_ops") or {}
    if sw.get("implementation") == "reference":
        notes.append("WARNING: samplewt_ops runs its pure-PyTorch reference, not compiled kernels.")
    return "\n".join("  * " + n for n in notes)


# ----------------------------------------------------------------------------------------
# Scaling (CPU): ours' time per element against N*C, and bfloat16 against float32
# ----------------------------------------------------------------------------------------
# Each point is one (op, N, C, dtype): forward + backward of the mean loss with sample
# weights (and class weights / focal alpha) in the default mode, the same call as the
# main table's "default" row, timed for ours only with time_cpu (Timer.blocked_autorange,
# median of >= MIN_RUNS runs, NTHREADS threads). ns/elem = median time / (N*C).
# A sweep is one op and dtype with one dimension varied. Linear time means a flat ns/elem;
# the max/min ns/elem over the sizes with N*C >= SCALING_MIN_ELEMS and the least-squares
# slope of log(time) against log(N*C) over those sizes (1 = linear, 2 = quadratic) sum a
# sweep up. Below SCALING_MIN_ELEMS a fixed per-call cost (dispatch, autograd, thread
# start-up) dominates, so those sizes are shown but marked and left out of both figures.

SCALING_MIN_ELEMS = 1_000_000


@dataclass(frozen=True)
class Sweep:
    op: str
    axis: str      # "N" or "C": the dimension that varies
    fixed: int     # the other dimension
    sizes: tuple   # values of the varied dimension
    dtypes: tuple
    params: tuple = ()  # (name, value) pairs passed to the op

    def shapes(self):
        return [(s, self.fixed) if self.axis == "N" else (self.fixed, s) for s in self.sizes]

    @property
    def label(self):
        other = "C" if self.axis == "N" else "N"
        return f"{other}={self.fixed}, {self.axis} varies"


def scaling_sweeps(quick=False):
    f32, bf16 = torch.float32, torch.bfloat16
    g = (("gamma", 2.0),)
    if quick:
        return [Sweep("cross_entropy", "N", 1000, (256, 1024, 4096), (f32, bf16)),
                Sweep("focal_loss", "N", 1000, (256, 1024, 4096), (f32, bf16), g)]
    out = []
    for op, p in (("cross_entropy", ()), ("focal_loss", g)):
        out.append(Sweep(op, "N", 1000, (64, 256, 1024, 4096, 16384), (f32, bf16), p))
        out.append(Sweep(op, "C", 64, (1000, 8000, 32000, 128000), (f32, bf16), p))
    out.append(Sweep("sigmoid_focal_loss", "N", 80, (1024, 8192, 65536), (f32,), g))
    return out


def select_sweeps(args, devices):
    if args.no_scaling or "cpu" not in devices:
        return []
    return [s for s in scaling_sweeps(args.quick) if not args.ops or s.op in args.ops]


def _dt(dtype):
    return str(dtype).replace("torch.", "")


def _pkey(op, variant, n, c, dtype):
    return (op, variant, n, c, dtype)


def scaling_cases(sweeps):
    """The distinct points of the sweeps as Cases, in run order (both dtypes of a shape
    back to back, so that their ratio sees the same machine state)."""
    out, seen = [], set()
    for sw in sweeps:
        for n, c in sw.shapes():
            for dt in sw.dtypes:
                case = Case(sw.op, n, c, dt, "cpu", ("default",), dict(sw.params))
                key = _pkey(case.op, case.variant, n, c, _dt(dt))
                if key not in seen:
                    seen.add(key)
                    out.append(case)
    return out


def run_scaling_point(case: Case, args, ours_impl, progress: Progress):
    """Check ours once against the reference (as in run_case), then time it. Returns a dict."""
    n, c = case.n, case.c
    out = {"op": case.op, "variant": case.variant, "params": case.params, "n": n, "c": c,
           "dtype": _dt(case.dtype), "elems": n * c, "small": n * c < SCALING_MIN_ELEMS}
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
        _malloc_trim()
    return out


def _num(v):
    return isinstance(v, (int, float)) and v == v and v > 0


def _loglog_slope(xs, ys):
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den > 0 else None


def scaling_summary(sweeps, points, quick):
    """The JSON 'scaling' section: the timed points, and per sweep and dtype its series
    and figures (see the comment above SCALING_MIN_ELEMS)."""
    by = {_pkey(p["op"], p["variant"], p["n"], p["c"], p["dtype"]): p for p in points}
    for p in points:  # bf16 (fp16) ns/elem over float32 ns/elem, same op and shape
        if p["dtype"] != "float32":
            b = by.get(_pkey(p["op"], p["variant"], p["n"], p["c"], "float32"))
            if b and _num(p.get("ns_per_elem")) and _num(b.get("ns_per_elem")):
                p["vs_float32"] = p["ns_per_elem"] / b["ns_per_elem"]
    out = []
    for sw in sweeps:
        variant = Case(sw.op, 0, 0, torch.float32, "cpu", (), dict(sw.params)).variant
        for dt in sw.dtypes:
            pts = [by.get(_pkey(sw.op, variant, n, c, _dt(dt))) or {} for n, c in sw.shapes()]
            ok = [p for p in pts if _num(p.get("ns_per_elem"))]
            big = [p for p in ok if p["elems"] >= SCALING_MIN_ELEMS]
            ns_big = [p["ns_per_elem"] for p in big]
            e = {"op": sw.op, "variant": variant, "params": dict(sw.params), "axis": sw.axis,
                 "fixed": sw.fixed, "label": sw.label, "dtype": _dt(dt),
                 "shapes": [list(s) for s in sw.shapes()],
                 "elems": [n * c for n, c in sw.shapes()],
                 "ms": [p.get("ms") for p in pts],
                 "ns_per_elem": [p.get("ns_per_elem") for p in pts],
                 "vs_float32": [p.get("vs_float32") for p in pts],
                 "sizes_in_ratio": len(big),
                 "max_over_min": max(ns_big) / min(ns_big) if len(big) >= 2 else None,
                 "loglog_slope": (_loglog_slope([p["elems"] for p in big],
                                                [p["ms"] for p in big]) if len(big) >= 2 else None),
                 "max_over_min_all_sizes": (max(p["ns_per_elem"] for p in ok)
                                            / min(p["ns_per_elem"] for p in ok)
                                            if len(ok) >= 2 else None)}
            vs = [p["vs_float32"] for p in big if _num(p.get("vs_float32"))]
            if vs:
                e["vs_float32_min"], e["vs_float32_max"] = min(vs), max(vs)
            out.append(e)
    return {"min_elems": SCALING_MIN_ELEMS, "quick": quick, "threads": NTHREADS,
            "mode": "default (forward + backward of the mean loss, sample and class weights)",
            "points": points, "sweeps": out,
            "units": {"ms": "median milliseconds", "ns_per_elem": "median ns / (N*C)",
                      "vs_float32": "ns_per_elem / float32 ns_per_elem, same op and shape",
                      "max_over_min": f"max/min ns_per_elem over sizes with N*C >= "
                                      f"{SCALING_MIN_ELEMS:g}",
                      "loglog_slope": "least-squares slope of log(ms) vs log(N*C) over the "
                                      "same sizes (1 = linear)"}}


def _elems(e):
    return f"{e / 1e6:.3g}M" if e >= 1e6 else f"{e / 1e3:.3g}k"


def _fmt_x(v, nd=2):
    return f"{v:.{nd}f}x" if _num(v) else "-"


def _grid(head, body, nleft, markdown=False):
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i < nleft else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < nleft else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(b) for b in body])


def format_scaling(sc, markdown=False):
    """Two tables: every point (grouped by sweep), then one line per sweep and dtype."""
    by = {_pkey(p["op"], p["variant"], p["n"], p["c"], p["dtype"]): p for p in sc["points"]}
    head = ["op", "sweep", "dtype", "shape", "N*C", "ours ms", "ns/elem", "bf16/fp32"]
    body = []
    for e in sc["sweeps"]:
        op = e["op"] + (f" ({e['variant']})" if e["variant"] else "")
        for n, c in e["shapes"]:
            p = by.get(_pkey(e["op"], e["variant"], n, c, e["dtype"])) or {}
            ns = p.get("ns_per_elem")
            if _num(ns):
                ns_s = (f"{ns:.3f}" if ns < 10 else f"{ns:.2f}") + ("*" if p["small"] else "")
            else:
                chk = p.get("check") or "-"
                ns_s = ("MISMATCH" if chk.startswith("MISMATCH") else
                        "ERROR" if chk.startswith("ERROR") else chk[:10])
            ms = _ms({"ours_ms": p.get("ms"), "ours_check": p.get("check")}, "ours")
            body.append([op, e["label"], e["dtype"], f"{n}x{c}", _elems(n * c), ms, ns_s,
                         _fmt_x(p.get("vs_float32"))])
    t1 = _grid(head, body, 4, markdown)
    lim = _elems(sc["min_elems"])
    head2 = ["op", "sweep", "dtype", f"sizes >= {lim}", "max/min ns/elem", "log-log slope",
             "max/min all sizes", f"bf16/fp32 >= {lim}"]
    body2 = []
    for e in sc["sweeps"]:
        op = e["op"] + (f" ({e['variant']})" if e["variant"] else "")
        if e["sizes_in_ratio"] >= 2:
            r, s = _fmt_x(e["max_over_min"]), (f"{e['loglog_slope']:.3f}"
                                                 if e["loglog_slope"] is not None else "-")
        else:
            r = s = f"n/a ({e['sizes_in_ratio']} size)"
        vs = "-"
        if "vs_float32_min" in e:
            lo, hi = f"{e['vs_float32_min']:.2f}", f"{e['vs_float32_max']:.2f}"
            vs = f"{lo}x" if lo == hi else f"{lo}-{hi}x"
        body2.append([op, e["label"], e["dtype"], str(e["sizes_in_ratio"]), r, s,
                      _fmt_x(e["max_over_min_all_sizes"]), vs])
    t2 = _grid(head2, body2, 3, markdown)
    return t1 + "\n\n" + t2


def scaling_footnotes(env, quick, self_test):
    lim = f"{SCALING_MIN_ELEMS:,}"
    notes = [
        f"Scaling: ours only, default mode (forward + backward of the mean loss via "
        f"torch.autograd.grad, with sample weights and class weights / focal alpha; "
        f"sigmoid_focal_loss: reduction='mean', sample weights, alpha=0.25); "
        f"torch.utils.benchmark.Timer (blocked_autorange), median of >= {MIN_RUNS} timed runs "
        f"after warm-up, {env['threads']} threads.",
        "ns/elem = median time / (N*C); linear time = flat ns/elem. "
        f"* = N*C < {lim}: a fixed per-call cost dominates; shown, but left out of the "
        "max/min and slope.",
        f"max/min ns/elem: largest over smallest ns/elem in the sweep over sizes with N*C >= {lim} "
        "(1.00x = perfectly linear; a quadratic step would make it grow with the size ratio). "
        "log-log slope: least-squares slope of log(time) vs log(N*C) over those sizes "
        "(1 = linear, 2 = quadratic).",
        "bf16/fp32: ours' bfloat16 ns/elem over its float32 ns/elem at the same shape "
        "(<= 1.00x = no slower per element).",
        "Every point's loss and gradient were checked against the eager reference (float32 for "
        "bf16 inputs) before timing.",
    ]
    if quick:
        notes.append("--quick: reduced sweep (C=1000, N in 256, 1024, 4096) and fewer runs.")
    if self_test:
        notes.append("SELF-TEST: 'ours' is the eager function, not samplewt_ops.")
    return "\n".join("  * " + n for n in notes)


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------

def lowp_ratios(rows):
    """'bf16 vs fp32' lines: ours' time per element in a 16-bit dtype over float32, same case."""
    out = []
    by = {(r["op"], tuple(r["shape"]), r.get("variant"), r["mode"], r["dtype"]): r for r in rows}
    for (op, shape, var, mode, dt), r in by.items():
        base = by.get((op, shape, var, mode, "float32"))
        if dt in ("bfloat16", "float16") and base:
            a, b = r.get("ours_ms"), base.get("ours_ms")
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
                out.append(f"{dt} vs float32, ours, {op} {'x'.join(map(str, shape))} {mode}: "
                           f"{a / b:.2f}x the float32 time per element (<= 1 = no slower)")
    return out


def _show(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark samplewt_ops vs eager PyTorch, torch.compile (and Liger on CUDA).")
    p.add_argument("--quick", action="store_true",
                   help="small subset and fewer runs (< 2 minutes on a 2-core CPU, compile included)")
    p.add_argument("--ops", default=None,
                   help="comma-separated ops to run (" + ", ".join(OPS) + ")")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                   help="cpu, cuda, or all (= cpu, plus cuda when available). Default all.")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="directory for <machine-tag>.json and .png (default benchmarks/results)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--min-time", type=float, default=None,
                   help="minimum seconds of timed runs per variant (default 1.0, --quick 0.2)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failing variants")
    p.add_argument("--scaling-only", action="store_true",
                   help="run only the CPU scaling section (ours' ns per element vs N*C, "
                        "bfloat16 vs float32); writes <tag>-scaling.json and <tag>-scaling.png")
    p.add_argument("--no-scaling", action="store_true", help="skip the CPU scaling section")
    # hidden: 'ours' = the eager function, to test this script without samplewt_ops
    p.add_argument("--self-test", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.scaling_only and a.no_scaling:
        p.error("--scaling-only and --no-scaling exclude each other")
    if a.min_time is None:
        a.min_time = 0.2 if a.quick else 1.0
    if a.ops:
        a.ops = [s.strip() for s in a.ops.split(",") if s.strip()]
        unknown = [o for o in a.ops if o not in OPS]
        if unknown:
            p.error(f"--ops: unknown {unknown}; choose from {OPS}")
    return a


def select_cases(args):
    devices = []
    if args.device in ("cpu", "all"):
        devices.append("cpu")
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    cases = []
    for d in devices:
        for c in (cpu_cases() if d == "cpu" else cuda_cases()):
            if args.quick and not c.quick:
                continue
            if args.ops and c.op not in args.ops:
                continue
            cases.append(c)
    return devices, cases


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.py: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    devices, cases = select_cases(args)
    if args.scaling_only:
        cases = []
    sweeps = select_sweeps(args, devices)
    sc_cases = scaling_cases(sweeps)
    if args.list:
        for c in cases:
            print(c.name(",".join(c.modes)))
        for c in sc_cases:
            print("scaling " + c.name("default"))
        return 0
    if args.scaling_only and "cpu" not in devices:
        print("bench.py: the scaling section is CPU only (--device cuda)", file=sys.stderr)
    if not cases and not sc_cases:
        print("bench.py: no case selected", file=sys.stderr)
        return 2

    if args.self_test:
        ours_impl = make_self_test_ours()
        swo_info = {"implementation": "self-test (eager stands in for ours)"}
    else:
        try:
            import samplewt_ops as swo
        except Exception as e:
            print(f"bench.py: cannot import samplewt_ops ({type(e).__name__}: {e}).\n"
                  "Build and install it first (make test, or pip install --no-build-isolation -e .),"
                  " or run with --self-test to check this script alone.", file=sys.stderr)
            return 2
        try:
            swo_info = dict(swo.backend())
        except Exception as e:
            swo_info = {"implementation": f"unknown ({type(e).__name__})"}
        swo_info["version"] = getattr(swo, "__version__", None)
        if swo_info.get("implementation") != "compiled":
            print(f"bench.py: WARNING samplewt_ops backend is {swo_info.get('implementation')!r}, "
                  "not the compiled kernels", file=sys.stderr)
        if "cuda" in devices and "cuda" not in (swo_info.get("devices") or []):
            print("bench.py: WARNING samplewt_ops reports no compiled CUDA kernels",
                  file=sys.stderr)
        ours_impl = make_ours(swo)

    torch.set_num_threads(NTHREADS)
    total = sum(len(c.modes) for c in cases)
    progress = Progress(len(cases))
    if cases:
        print(f"bench.py: {len(cases)} cases ({total} rows) on {', '.join(devices)}; "
              f"{NTHREADS} threads{'; QUICK' if args.quick else ''}"
              f"{'; SELF-TEST' if args.self_test else ''}", file=sys.stderr, flush=True)

    all_rows = []
    for case in cases:
        progress.start(case.name(",".join(case.modes)))
        res = run_case(case, args, ours_impl, progress)
        rows = rows_from(case, res)
        all_rows.extend(rows)
        summary = "; ".join(f"{r['mode']}: ours {_ms(r, 'ours')}, eager {_ms(r, 'eager')} (ms)"
                            for r in rows)
        progress.done(summary)

    # --- scaling section (CPU, ours only) ------------------------------------------------
    scaling = None
    if sc_cases:
        print(f"bench.py: scaling: {len(sc_cases)} points (ours only, default mode) on cpu; "
              f"{NTHREADS} threads{'; QUICK' if args.quick else ''}"
              f"{'; SELF-TEST' if args.self_test else ''}", file=sys.stderr, flush=True)
        sprog = Progress(len(sc_cases))
        points = []
        for case in sc_cases:
            sprog.start("scaling " + case.name("default"))
            p = run_scaling_point(case, args, ours_impl, sprog)
            points.append(p)
            sprog.done(f"ours {p['ms']:.3f} ms ({p['runs']} runs), {p['ns_per_elem']:.3f} ns/elem"
                       if _num(p.get("ms")) else p.get("check", ""))
        scaling = scaling_summary(sweeps, points, args.quick)

    failed = False
    os.makedirs(args.out, exist_ok=True)
    for d in devices:
        rows = [r for r in all_rows if r["device"] == d]
        sc = scaling if d == "cpu" else None
        if not rows and not sc:
            continue
        env = env_info(d, swo_info)
        tag = machine_tag(d)
        suffix = ("-selftest" if args.self_test else "") + ("-quick" if args.quick else "")
        title = f"samplewt_ops {d.upper()} benchmark on {env['device_name']} ({tag}{suffix})"
        ratios = []
        print()
        if rows:
            print(title + ("  [SELF-TEST]" if args.self_test else ""))
            print(format_table(rows, markdown=args.markdown))
            print(footnotes(d, env, args.self_test, args.quick))
            ratios = lowp_ratios(rows)
            for line in ratios:
                print("  * " + line)
            for r in rows:
                for name in ("ours", "eager", "compiled", "liger"):
                    chk = r.get(name + "_check") or ""
                    if chk.startswith(("MISMATCH", "ERROR")):
                        print(f"  ! {r['op']} {r['shape']} {r['dtype']} {r['mode']} {name}: {chk}")
                        if name == "ours":
                            failed = True
        stitle = (f"samplewt_ops CPU scaling on {env['device_name']} ({tag}{suffix}): "
                  "ns per element vs N*C")
        if sc:
            if rows:
                print()
            print(stitle + ("  [SELF-TEST]" if args.self_test else ""))
            print(format_scaling(sc, markdown=args.markdown))
            print(scaling_footnotes(env, args.quick, args.self_test))
            for p in sc["points"]:
                chk = p.get("check") or ""
                if chk.startswith(("MISMATCH", "ERROR")):
                    print(f"  ! scaling {p['op']} {[p['n'], p['c']]} {p['dtype']} ours: {chk}")
                    failed = True
        out = {"machine_tag": tag + suffix, "device": d, "self_test": args.self_test,
               "quick": args.quick, "argv": sys.argv[1:], "env": env, "rows": rows,
               "derived": ratios,
               "units": {"*_ms": "median milliseconds", "*_peak_mb": "MiB",
                         "*_rss_peak_mb": "MiB (RSS high-water mark cross-check)"}}
        if sc:
            out["scaling"] = sc
        if not rows:
            out["scaling_only"] = True
        # --scaling-only writes <tag>-scaling.json, so that it never replaces a full run's file
        jpath = os.path.join(args.out, tag + suffix + ("" if rows else "-scaling") + ".json")
        with open(jpath, "w") as f:
            json.dump(out, f, indent=1)
        print(f"\nwrote {_show(jpath)}", end="")
        if rows:
            ppath = os.path.join(args.out, tag + suffix + ".png")
            try:
                sys.path.insert(0, HERE)
                from _plot import plot_speedups
                if plot_speedups(rows, ppath, title):
                    print(f" and {_show(ppath)}")
                else:
                    print(" (no chart: no valid rows)")
            except Exception as e:
                print(f" (no chart: {type(e).__name__}: {e})")
        if sc:
            spath = os.path.join(args.out, tag + suffix + "-scaling.png")
            lead = "wrote " if rows else " and "
            try:
                sys.path.insert(0, HERE)
                from _plot import plot_scaling
                if plot_scaling(sc, spath, stitle):
                    print(f"{lead}{_show(spath)}")
                else:
                    print(f"{'' if rows else ' '}(no scaling chart: no valid points)")
            except Exception as e:
                print(f"{'' if rows else ' '}(no scaling chart: {type(e).__name__}: {e})")
    if failed:
        print("bench.py: some 'ours' variants failed their check or errored (see above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
