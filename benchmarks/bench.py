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

The code, by role: cases.py (the ops, from samplewt_ops' op spec, their sizes and the
competitors), timing.py (timers and peak memory), runner.py (checking, timing and
measuring one case), machine.py (the machine tag and environment), report.py (tables,
JSON, charts via _plot.py); this file is the command line.

Pair sections (sections.py, after the scaling section; --sections-only runs just them,
--no-sections skips them): samplewt_ops against what it replaces at small sizes (every
loss, its weighted form and its module), and with targets that require grad; each pair
timed interleaved in one process, with its target ratio. Stored under "sections".

Run `python benchmarks/bench.py --help` for the flags.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the modules next to this file (not on the path under python -P)
    sys.path.insert(0, HERE)
# An installed samplewt_ops (pip install -e .) wins; else fall back to the source tree.
sys.path.append(os.path.dirname(HERE))

try:  # cases.py reads samplewt_ops' op spec
    from cases import (OPS, make_ours, make_self_test_ours, scaling_cases, select_cases,  # noqa: E402
                       select_sweeps)
except ImportError as e:
    if not (e.name or "").startswith("samplewt_ops"):
        raise
    print(f"bench.py: cannot import samplewt_ops ({type(e).__name__}: {e}).\n"
          "Build and install it first (make test, or pip install --no-build-isolation -e .).",
          file=sys.stderr)
    sys.exit(2)
from report import case_summary, point_summary, scaling_summary, write_results  # noqa: E402
from runner import Progress, run_case, run_scaling_point, rows_from  # noqa: E402
from timing import NTHREADS  # noqa: E402


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
    p.add_argument("--sections-only", action="store_true",
                   help="run only the pair sections (small sizes, target gradients)")
    p.add_argument("--no-sections", action="store_true", help="skip the pair sections")
    p.add_argument("--section", action="append", default=None,
                   help="with --sections-only: run only this pair section (repeatable; "
                        "'small sizes', 'target gradients', 'tables', 'linear cross-entropy')")
    # hidden: 'ours' = the eager function, to test this script without samplewt_ops' kernels
    p.add_argument("--self-test", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.scaling_only and a.no_scaling:
        p.error("--scaling-only and --no-scaling exclude each other")
    if a.sections_only and (a.no_sections or a.scaling_only):
        p.error("--sections-only excludes --no-sections and --scaling-only")
    if a.min_time is None:
        a.min_time = 0.2 if a.quick else 1.0
    if a.ops:
        a.ops = [s.strip() for s in a.ops.split(",") if s.strip()]
        unknown = [o for o in a.ops if o not in OPS]
        if unknown:
            p.error(f"--ops: unknown {unknown}; choose from {OPS}")
    return a


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.py: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    devices, cases = select_cases(args)
    if args.scaling_only or args.sections_only:
        cases = []
    sweeps = [] if args.sections_only else select_sweeps(args, devices)
    sc_cases = scaling_cases(sweeps)
    if args.list:
        for c in cases:
            print(c.name(",".join(c.modes)))
        for c in sc_cases:
            print("scaling " + c.name("default"))
        return 0
    if args.scaling_only and "cpu" not in devices:
        print("bench.py: the scaling section is CPU only (--device cuda)", file=sys.stderr)
    want_sections = not (args.no_sections or args.scaling_only or args.self_test or args.ops)
    if not cases and not sc_cases and not want_sections:
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
        progress.done(case_summary(rows))

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
            sprog.done(point_summary(p))
        scaling = scaling_summary(sweeps, points, args.quick)

    # --- pair sections (small sizes, target gradients) -----------------------------------
    section_rows = []
    if want_sections:
        from sections import run_sections
        section_rows = run_sections(swo, devices, args.quick, 0.1 if args.quick else 0.3,
                                    progress=lambda m: print("bench.py: " + m, file=sys.stderr,
                                                             flush=True),
                                    only=args.section)

    failed = write_results(args, devices, all_rows, scaling, swo_info, section_rows)
    if failed:
        print("bench.py: some 'ours' variants failed their check or errored (see above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
