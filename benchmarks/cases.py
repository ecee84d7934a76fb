"""The benchmark cases of benchmarks/bench.py: which ops, at which sizes, against what.

The ops come from samplewt_ops' op spec (``samplewt_ops._spec.SPECS``): every loss there
needs its eager baseline (EAGER), its samplewt_ops call (make_ours) and at least one CPU
case, or an entry in NOT_BENCHMARKED that says why not; check_cases() (run at import)
names every op that lacks one on stderr, so that a new op is not silently left out, and
fails on entries that contradict the spec.

The competitors of every row: ours (samplewt_ops), eager PyTorch (the same loss written
with torch ops), torch.compile of that eager function (compile_eager), and on CUDA for
cross_entropy Liger-Kernel when it is importable (liger_fn). The scaling section's sweeps
(ours only, CPU) are here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sys

import torch
import torch.nn.functional as F

from samplewt_ops._spec import SPECS


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


def eager_l1_loss(x, t, cw, sw):
    per = F.l1_loss(x, t, reduction="none")
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

    def l1(x, t, cw, sw):
        return swo.l1_loss(x, t, sample_weight=sw)

    def huber(x, t, cw, sw, delta=1.0):
        return swo.huber_loss(x, t, delta=delta, sample_weight=sw)

    return {"cross_entropy": ce, "focal_loss": focal, "sigmoid_focal_loss": sfl,
            "binary_cross_entropy_with_logits": bce, "mse_loss": mse, "l1_loss": l1,
            "huber_loss": huber}


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
    "l1_loss": eager_l1_loss,
    "huber_loss": eager_huber_loss,
}


def compile_eager(fn):
    """The torch.compile column: the eager function, compiled for the case's static shapes."""
    return torch.compile(fn, dynamic=False)


# ----------------------------------------------------------------------------------------
# The ops: those of the op spec, in its order (the public API's), less NOT_BENCHMARKED
# ----------------------------------------------------------------------------------------

NOT_BENCHMARKED: dict = {}  # op -> why it has no case
OPS = [name for name in SPECS if name not in NOT_BENCHMARKED]
UNBENCHMARKED: set = set()  # spec ops that lack a piece here (check_cases)
ROW_OPS = {name for name, spec in SPECS.items() if spec.rows}  # index targets, (N, C) logits, class weights


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
        Case("l1_loss", 1_000_000, 16, f32, "cpu", ("default",)),
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
# Liger-Kernel (CUDA, cross_entropy), when importable
# ----------------------------------------------------------------------------------------

def liger_fn():
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


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def point_key(op, variant, n, c, dtype):
    return (op, variant, n, c, dtype)


def scaling_cases(sweeps):
    """The distinct points of the sweeps as Cases, in run order (both dtypes of a shape
    back to back, so that their ratio sees the same machine state)."""
    out, seen = [], set()
    for sw in sweeps:
        for n, c in sw.shapes():
            for dt in sw.dtypes:
                case = Case(sw.op, n, c, dt, "cpu", ("default",), dict(sw.params))
                key = point_key(case.op, case.variant, n, c, dtype_name(dt))
                if key not in seen:
                    seen.add(key)
                    out.append(case)
    return out


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
            if (args.ops and c.op not in args.ops) or c.op in UNBENCHMARKED:
                continue
            cases.append(c)
    return devices, cases


def check_cases():
    """Every op of the spec has its baseline, its call and a CPU case (or a reason in
    NOT_BENCHMARKED), and nothing here names an op that the spec does not have."""
    ours = make_ours(None)  # its functions only reach samplewt_ops when called
    cases = cpu_cases() + cuda_cases() + [Case(s.op, 0, 0, torch.float32, "cpu", ())
                                          for s in scaling_sweeps()]
    # A spec op without its pieces is named on every run, not silently left out; it does
    # not stop the run, so that a new op can land before its benchmark does.
    missing = [f"{name}: no eager baseline (EAGER)" for name in OPS if name not in EAGER]
    missing += [f"{name}: no samplewt_ops call (make_ours)" for name in OPS if name not in ours]
    missing += [f"{name}: no case in cpu_cases()" for name in OPS
                if not any(c.op == name and c.device == "cpu" for c in cases)]
    for line in missing:
        print(f"bench: not benchmarked: {line} (benchmarks/cases.py)", file=sys.stderr)
    UNBENCHMARKED.update(line.split(":", 1)[0] for line in missing)
    problems = []
    stale = sorted((set(EAGER) | set(ours) | set(NOT_BENCHMARKED)) - set(SPECS))
    if stale:
        problems.append(f"{', '.join(stale)}: not in the op spec")
    problems += sorted({f"{c.op}: has a case but is in NOT_BENCHMARKED" for c in cases
                        if c.op in NOT_BENCHMARKED})
    problems += [f"{c.name()}: inplace mode, but the op has no inplace_grad" for c in cases
                 if "inplace" in c.modes and c.op in SPECS and not SPECS[c.op].inplace]
    if problems:
        raise RuntimeError("benchmarks/cases.py does not match the op spec (samplewt_ops/_spec.py): "
                           + "; ".join(problems))


check_cases()
