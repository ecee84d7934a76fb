#!/usr/bin/env python3
"""Where a CUDA call's time goes: the kernels of one forward + backward, and the host time.

For each case (op, N, C, dtype) it runs the benchmark's call (mean loss, sample weights,
class weights; torch.autograd.grad w.r.t. the logits) of samplewt_ops and of the eager
formula, and prints
  * per call: GPU time (CUDA events, median), host time (wall clock of the Python call,
    no sync) and the number of kernel launches;
  * per kernel: name, launches per call and GPU microseconds per call (torch.profiler).
Usage: python benchmarks/profile_cuda.py [--case cross_entropy:16384x128256:bf16 ...] [--out FILE]
(make gpu-check runs it as its profile step.)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases as C  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
DEFAULT_CASES = ["cross_entropy:16384x128256:bf16", "cross_entropy:4096x1000:fp32",
                 "focal_loss:4096x1000:fp32", "cross_entropy:32x10:fp32"]


def parse(spec):
    op, shape, dt = spec.split(":")
    n, c = (int(v) for v in shape.split("x"))
    return op, n, c, DTYPES[dt]


def make_call(fn, x, t, cw, sw):
    def call():
        loss = fn(x, t, cw, sw)
        (g,) = torch.autograd.grad(loss, x)
        return g
    return call


def time_call(call, iters):
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    gpu, host = [], []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        g = call()
        t1 = time.perf_counter()
        b.record()
        b.synchronize()
        del g
        gpu.append(a.elapsed_time(b) * 1e3)
        host.append((t1 - t0) * 1e6)
    return statistics.median(gpu), statistics.median(host)


def kernels(call, reps=5):
    from torch.profiler import ProfilerActivity, profile
    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        dev = getattr(e, "device_time_total", None)
        if dev is None:
            dev = getattr(e, "cuda_time_total", 0)
        if dev > 0 and e.device_type.name == "CUDA":
            rows.append((dev / reps, e.count / reps, e.key))
    rows.sort(reverse=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("profile_cuda.py: no CUDA device", file=sys.stderr)
        return 2
    if args.out:
        open(args.out, "w").close()

    def say(text=""):
        print(text, flush=True)
        if args.out:  # line by line: a timeout still leaves what was measured
            with open(args.out, "a") as f:
                f.write(text + "\n")

    import samplewt_ops as swo
    ours = C.make_ours(swo)
    for spec in args.case or DEFAULT_CASES:
        op, n, c, dt = parse(spec)
        case = C.Case(op, n, c, dt, "cuda", ("default",))
        x, t, cw, sw = C.make_inputs(case)
        say(f"=== {op} {n}x{c} {dt} ===")
        for name, fn in (("ours", ours[op]), ("eager", C.EAGER[op])):
            call = make_call(fn, x, t, cw, sw)
            gpu, host = time_call(call, args.iters)
            ks = kernels(call)
            total = sum(r[0] for r in ks)
            launches = sum(r[1] for r in ks)
            say(f"{name:6s} gpu {gpu:9.1f} us  host {host:8.1f} us  kernels {total:9.1f} us "
                f"in {launches:.0f} launches")
            for us, cnt, key in ks[:12]:
                say(f"    {us:9.1f} us  x{cnt:.0f}  {key[:110]}")
        del x, t, cw, sw
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
