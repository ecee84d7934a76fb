#!/usr/bin/env python
"""Benchmark of the fused linear cross-entropy (samplewt_ops.linear_cross_entropy).

Forward plus backward of the *mean* loss of logits = input @ linear_weight.T,
gradients of input and linear_weight, for:

  ours           samplewt_ops.linear_cross_entropy(x, W, y)   (chunked, logits never materialised)
  eager          F.cross_entropy(F.linear(x, W), y)            (N x V logits and their gradient)
  compiled       torch.compile(eager)
  torch_chunked  F.linear_cross_entropy(x, W, y, options=LinearCrossEntropyOptions())
                 (torch's own chunked path; only when the installed torch has it)

Each variant is first checked against eager (loss and both gradients, float32
tolerance); one that does not match is reported as MISMATCH and not timed.
Times: median seconds per call, all variants timed in alternating rounds in
one process (benchmarks/timing.py's time_interleaved). Extra peak memory:
the peak of live bytes that one call allocates (CPU: every allocation of
PyTorch's CPU allocator, from profiler memory events; CUDA:
max_memory_allocated), gradients included, the inputs excluded.

  python benchmarks/linear_loss.py              N=4096, D=256, V=32000, float32: time + memory
  python benchmarks/linear_loss.py --quick      tiny sizes: checks that the script works
  python benchmarks/linear_loss.py --lm-memory  N=8192, D=1024, V=128256: memory only, each
                                                variant in its own subprocess (the eager
                                                logits alone are 4.2 GB in float32)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import samplewt_ops  # noqa: E402
from timing import cpu_peak_bytes, cuda_peak_bytes, time_interleaved  # noqa: E402

MAIN = dict(n=4096, d=256, v=32000)
QUICK = dict(n=256, d=32, v=1000)
LM = dict(n=8192, d=1024, v=128256)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_chunked_available() -> bool:
    return hasattr(F, "linear_cross_entropy") and _options_class() is not None


def _options_class():
    cls = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if cls is None:
        try:
            from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions as cls
        except ImportError:
            return None
    return cls


def make_inputs(n, d, v, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(n, d, generator=g) / d ** 0.5).to(device=device, dtype=dtype).requires_grad_()
    W = (torch.randn(v, d, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g).to(device)
    return x, W, y


def variants(x, W, y):
    """{name: fn() -> loss} of every variant (forward only; the caller backwards)."""
    def eager():
        return F.cross_entropy(F.linear(x, W), y)

    out = {
        "ours": lambda: samplewt_ops.linear_cross_entropy(x, W, y),
        "eager": eager,
        "compiled": torch.compile(lambda: F.cross_entropy(F.linear(x, W), y), dynamic=False),
    }
    if torch_chunked_available():
        opts = _options_class()()
        out["torch_chunked"] = lambda: F.linear_cross_entropy(x, W, y, options=opts)
    return out


def step(fn, x, W):
    def run():
        x.grad = W.grad = None
        fn().backward()
    return run


def check(fns, x, W, dtype):
    """Names of the variants whose loss and gradients match eager's."""
    x.grad = W.grad = None
    ref = fns["eager"]()
    ref.backward()
    want = (ref.detach().float(), x.grad.float(), W.grad.float())
    # Relative to each tensor's largest value: gradients of a mean over N x V are tiny.
    rel = 1e-4 if dtype == torch.float32 else 3e-2
    ok = {}
    for name, fn in fns.items():
        x.grad = W.grad = None
        try:
            loss = fn()
            loss.backward()
            for a, b in zip((loss.detach().float(), x.grad.float(), W.grad.float()), want):
                torch.testing.assert_close(a, b, rtol=10 * rel, atol=rel * float(b.abs().max()))
            ok[name] = True
        except Exception as e:  # noqa: BLE001  (reported, not timed)
            print(f"  {name}: MISMATCH or error: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            ok[name] = False
    x.grad = W.grad = None
    return ok


def peak_bytes(run, x, W, device):
    """Extra peak bytes of one step, the previous step's gradients freed before it.

    Freed inside the measured call, they would count against its peak or not as
    the profiler happened to see their allocation (35 MiB either way at 4096 x
    32000, which once decided ours against torch's chunked loss)."""
    def clear_grads():
        x.grad = W.grad = None

    if device == "cuda":
        return cuda_peak_bytes(run, clear_grads)
    return cpu_peak_bytes(run, clear_grads)[0]


def measure(sizes, dtype, device, *, timing=True, rounds=15, min_time=0.5, only=None):
    x, W, y = make_inputs(sizes["n"], sizes["d"], sizes["v"], dtype, device)
    fns = variants(x, W, y)
    if only:
        fns = {k: v for k, v in fns.items() if k in only}
    ok = check(fns, x, W, dtype) if "eager" in fns else {k: True for k in fns}
    runs = {name: step(fn, x, W) for name, fn in fns.items() if ok[name]}
    result = {name: {"ok": ok[name]} for name in fns}
    for name, run in runs.items():
        run()  # warm (compiled: compile outside the measurement)
        result[name]["peak_bytes"] = peak_bytes(run, x, W, device)
    if timing and runs:
        times = time_interleaved(runs, device=device, rounds=rounds, min_time=min_time)
        for name, (sec, calls) in times.items():
            result[name].update(median_s=sec, calls=calls)
    return result


def table(sizes, dtype, device, result) -> str:
    logits = sizes["n"] * sizes["v"] * torch.empty((), dtype=dtype).element_size()
    lines = [f"linear cross-entropy, N={sizes['n']}, D={sizes['d']}, V={sizes['v']}, {dtype}, "
             f"{device}, forward+backward of the mean (logits: {logits / 2**20:.1f} MiB)",
             "", "| variant | median ms | extra peak MiB |", "|---|---:|---:|"]
    for name, r in result.items():
        if not r["ok"]:
            lines.append(f"| {name} | MISMATCH | |")
            continue
        ms = f"{r['median_s'] * 1e3:.2f}" if "median_s" in r else "-"
        lines.append(f"| {name} | {ms} | {r['peak_bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


def lm_memory(dtype, device, sizes=LM):
    """Each variant's extra peak in its own subprocess (an OOM of one spares the rest)."""
    names = ["ours", "eager", "compiled"] + (["torch_chunked"] if torch_chunked_available() else [])
    result = {}
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--dtype", str(dtype).split(".")[1],
               "--device", device, "--sizes", json.dumps(sizes)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"  {name}: failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:] or ''}")
            result[name] = {"ok": False}
            continue
        result[name] = json.loads(p.stdout.strip().splitlines()[-1])[name]
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, short timing: checks the script works")
    ap.add_argument("--lm-memory", action="store_true", help="N=8192, D=1024, V=128256: memory only")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--one", help=argparse.SUPPRESS)     # subprocess of --lm-memory: one variant
    ap.add_argument("--sizes", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    dtype = DTYPES[a.dtype]
    if a.one:
        sizes = json.loads(a.sizes)
        x, W, y = make_inputs(sizes["n"], sizes["d"], sizes["v"], dtype, a.device)
        run = step(variants(x, W, y)[a.one], x, W)
        run()
        print(json.dumps({a.one: {"ok": True, "peak_bytes": peak_bytes(run, x, W, a.device)}}))
        return 0
    if a.lm_memory:
        sizes, result = LM, lm_memory(dtype, a.device)
    elif a.quick:
        sizes = QUICK
        result = measure(sizes, dtype, a.device, rounds=3, min_time=0.05)
    else:
        sizes = MAIN
        result = measure(sizes, dtype, a.device)
    print(table(sizes, dtype, a.device, result))
    if a.quick and a.lm_memory is False:
        # The memory-only path, at tiny sizes, in subprocesses as --lm-memory runs it.
        small = lm_memory(dtype, a.device, sizes=QUICK)
        print(table(QUICK, dtype, a.device, small).replace("| median ms", "| (memory only) ms"))
        result = {"timed": result, "memory_subprocess": small}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"sizes": sizes, "dtype": a.dtype, "device": a.device,
                       "torch": torch.__version__, "results": result}, f, indent=1)
    bad = [k for k, r in (result.get("timed", result)).items() if not r["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
