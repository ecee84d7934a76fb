"""Sample arguments of the raw ops, shared by the CPU, CUDA and emulated
CUDA tests: one generator per op family, each covering the options that
change a kernel's path (class and sample weights, ignore_index, label
smoothing, probability targets, weight rows broadcast over samples).

Samples are built by keyword (the schema's argument names); `op_args` puts
them in the compiled schema's order for a positional call (opcheck, the CUDA
emulation). `row_case` with `row_args`, and `with_tail` with `elem_cases`, give that positional
form directly, with the tail (reduction, compute_grad, compute_stats) last.
"""
import torch

from samplewt_ops._spec import SCHEMA_ARGS

ROW_VARIANTS = ("ce_index", "ce_plain", "ce_prob", "focal", "ce_zloss", "ce_softcap", "focal_zloss")
TAIL = ("reduction", "compute_grad", "compute_stats")


def tol(dtype):
    if dtype in (torch.float16, torch.bfloat16):
        return dict(atol=1e-2, rtol=2e-2)
    if dtype == torch.float64:
        return dict(atol=1e-10, rtol=1e-8)
    return dict(atol=1e-5, rtol=1e-4)


def assert_outputs_close(got, want, dtype):
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a.cpu(), b.cpu(), equal_nan=True, **tol(dtype))


def tail(reduction, compute_grad, compute_stats):
    """The arguments every op ends its call with, by keyword."""
    return dict(zip(TAIL, (reduction, compute_grad, compute_stats)))


def op_args(name, **kwargs):
    """Op `name`'s arguments (`name_`: its in-place variant), given by
    keyword, as a positional tuple in schema order; arguments left out must
    be the last ones."""
    names = SCHEMA_ARGS[name]
    assert set(kwargs) <= set(names), set(kwargs) - set(names)
    args = tuple(kwargs[n] for n in names if n in kwargs)
    assert all(n in kwargs for n in names[:len(args)]), f"{name}: a gap in {sorted(kwargs)}"
    return args


def to_device(kwargs, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def ce_kwargs(x, y, sample_weight=None, label_smoothing=0.0, weight=None):
    """Keyword arguments of cross_entropy, but the tail."""
    return dict(input=x, target=y, weight=weight, sample_weight=sample_weight, ignore_index=-100,
                label_smoothing=label_smoothing)


def row_kwargs(variant, n, c, dtype, gen):
    """(op name, keyword arguments without the tail) of a row op over
    n x c logits."""
    x = (torch.randn(n, c, generator=gen) * 3).to(dtype)
    y = torch.randint(0, c, (n,), generator=gen)
    if n > 2:
        y[n // 2] = -100
    cw = torch.rand(c, generator=gen) + 0.1
    sw = torch.rand(n, generator=gen)
    if n > 3:
        sw[1] = 0.0
    ce = dict(input=x, target=y, weight=cw, sample_weight=sw, ignore_index=-100, label_smoothing=0.1)
    if variant == "ce_index":
        return "cross_entropy", ce
    if variant == "ce_plain":
        return "cross_entropy", dict(ce, weight=None, sample_weight=None, label_smoothing=0.0)
    if variant == "ce_prob":
        q = torch.softmax(torch.randn(n, c, generator=gen), 1).to(dtype)
        return "cross_entropy", dict(ce, target=q, label_smoothing=0.2)
    # z-loss (in the kernels' row formulas) and softcap (around the kernels).
    if variant == "ce_zloss":
        return "cross_entropy", dict(ce, z_loss=0.01, softcap=None)
    if variant == "ce_softcap":
        return "cross_entropy", dict(ce, z_loss=0.001, softcap=2.0)
    focal = dict(input=x, target=y, alpha=cw, sample_weight=sw, gamma=2.0, ignore_index=-100)
    if variant == "focal_zloss":
        return "focal_loss", dict(focal, z_loss=0.01, softcap=5.0)
    return "focal_loss", focal


def strided_row_kwargs(x, gen):
    """(op name, keyword arguments but input and the tail) of every row op
    variant over the logits `x`, for layouts of x (strided, misaligned)."""
    n, c = x.shape
    y = torch.randint(0, c, (n,), generator=gen)
    cw = torch.rand(c, generator=gen)
    sw = torch.rand(n, generator=gen)
    q = torch.softmax(torch.randn(n, c, generator=gen), 1).to(x.dtype)
    ce = dict(target=y, weight=cw, sample_weight=sw, ignore_index=-100, label_smoothing=0.1)
    return [("cross_entropy", ce),
            ("cross_entropy", dict(ce, target=q, weight=None, label_smoothing=0.0)),
            ("focal_loss", dict(target=y, alpha=cw, sample_weight=sw, gamma=1.5, ignore_index=-100))]


def elem_kwargs(shape, dtype, gen):
    """(op name, keyword arguments without the tail) of every element-wise op."""
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    t = (torch.rand(shape, generator=gen) < 0.3).to(dtype)
    soft = torch.rand(shape, generator=gen).to(dtype)
    n = shape[0] if len(shape) else 1
    sw = torch.rand(n, generator=gen)
    if n > 3:
        sw[2] = 0.0
    w = torch.rand(shape, generator=gen).to(dtype)
    row = torch.rand(shape[1:], generator=gen).to(dtype) * 3 if len(shape) > 1 else None
    yield "sigmoid_focal_loss", dict(input=x, target=t, sample_weight=sw, alpha=0.25, gamma=2.0)
    yield "sigmoid_focal_loss", dict(input=x, target=soft, sample_weight=None, alpha=-1.0, gamma=1.5)
    yield "binary_cross_entropy_with_logits", dict(input=x, target=t, weight=w, pos_weight=row,
                                                   sample_weight=sw)
    yield "binary_cross_entropy_with_logits", dict(input=x, target=soft, weight=row, pos_weight=None,
                                                   sample_weight=None)
    yield "mse_loss", dict(input=x, target=soft, weight=w, sample_weight=sw)
    yield "mse_loss", dict(input=x, target=soft, weight=row, sample_weight=sw)  # a weight row broadcast over samples
    yield "l1_loss", dict(input=x, target=soft, weight=None, sample_weight=sw)
    yield "l1_loss", dict(input=x, target=soft, weight=w, sample_weight=None)
    yield "huber_loss", dict(input=x, target=soft, weight=w, sample_weight=sw, delta=0.7)
    yield "huber_loss", dict(input=x, target=soft, weight=None, sample_weight=None, delta=1.0)


def row_opcheck_samples(gen, dtypes, sizes, device="cpu", plain=True):
    """(op name, positional args) for opcheck of the row ops: every
    reduction, with weights and statistics (and, if `plain`, without)."""
    for dtype in dtypes:
        for n, c in sizes:
            x = torch.randn(n, c, generator=gen).to(dtype).to(device).requires_grad_()
            y = torch.randint(0, c, (n,), generator=gen)
            y[0] = -100
            y = y.to(device)
            cw = torch.rand(c, generator=gen).to(device)
            sw = torch.rand(n, generator=gen).to(device)
            ce = dict(input=x, target=y, weight=cw, sample_weight=sw, ignore_index=-100, label_smoothing=0.1)
            for red in (0, 1, 2):
                yield "cross_entropy", op_args("cross_entropy", **ce, **tail(red, True, True))
                if plain:
                    yield "cross_entropy", op_args("cross_entropy", **dict(
                        ce, weight=None, sample_weight=None, label_smoothing=0.0), **tail(red, True, False))
                yield "focal_loss", op_args("focal_loss", input=x, target=y, alpha=cw, sample_weight=sw,
                                            gamma=2.0, ignore_index=-100, **tail(red, True, True))
            q = torch.softmax(torch.randn(n, c, generator=gen), 1).to(dtype).to(device)
            yield "cross_entropy", op_args("cross_entropy", **dict(ce, target=q, label_smoothing=0.2),
                                           **tail(1, True, True))
            yield "cross_entropy", op_args("cross_entropy", **ce, **tail(1, True, True), z_loss=0.01,
                                           softcap=3.0)
            yield "focal_loss", op_args("focal_loss", input=x, target=y, alpha=cw, sample_weight=sw,
                                        gamma=2.0, ignore_index=-100, **tail(0, True, False),
                                        z_loss=0.01, softcap=None)


def spatial_row_opcheck_samples(gen, dtypes, device="cpu"):
    """(op name, positional args) for opcheck of the row ops over (N, C,
    d1..dk) input, which the ops take as N * d1 * .. * dk rows: classes the
    CPU reads in place (C <= 32) and ones every device folds to rows, and a
    fold that moves nothing (every d_i = 1)."""
    for dtype in dtypes:
        for shape in ((2, 5, 3, 4), (3, 7, 5), (2, 40, 3), (2, 40, 1)):
            n, c, rest = shape[0], shape[1], shape[2:]
            x = torch.randn(shape, generator=gen).to(dtype).to(device).requires_grad_()
            y = torch.randint(0, c, (n,) + rest, generator=gen)
            y.view(-1)[::4] = -100
            y = y.to(device)
            cw = torch.rand(c, generator=gen).to(device)
            rows = y.numel()
            sw = torch.rand(rows, generator=gen).to(device)
            ce = dict(input=x, target=y, weight=cw, sample_weight=sw, ignore_index=-100, label_smoothing=0.1)
            for red in (0, 1, 2):
                yield "cross_entropy", op_args("cross_entropy", **ce, **tail(red, True, True))
                yield "focal_loss", op_args("focal_loss", input=x, target=y, alpha=None, sample_weight=None,
                                            gamma=2.0, ignore_index=-100, **tail(red, True, False))
            q = torch.softmax(torch.randn(shape, generator=gen), 1).to(dtype).to(device)
            yield "cross_entropy", op_args("cross_entropy", **dict(ce, target=q, sample_weight=None),
                                           **tail(0, True, True))
            yield "cross_entropy", op_args("cross_entropy", **ce, **tail(1, True, False), z_loss=0.01,
                                           softcap=3.0)


def spatial_inplace_opcheck_samples(gen, device="cpu"):
    """(op name, positional args) for opcheck of the in-place row ops over
    (N, C, d1..dk) input (see spatial_row_opcheck_samples)."""
    for shape in ((2, 5, 3, 4), (2, 40, 3), (2, 40, 1)):
        x = torch.randn(shape, generator=gen).to(device)
        y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen).to(device)
        yield "cross_entropy_", op_args("cross_entropy_", **ce_kwargs(x, y), reduction=0, compute_stats=True)
        yield "focal_loss_", op_args("focal_loss_", input=x.clone(), target=y, alpha=None, sample_weight=None,
                                     gamma=2.0, ignore_index=-100, reduction=1, compute_stats=False)


def elem_opcheck_samples(gen, dtypes, shapes, device="cpu"):
    """(op name, positional args) for opcheck of the element-wise ops."""
    for dtype in dtypes:
        for shape in shapes:
            x = torch.randn(shape, generator=gen).to(dtype).to(device).requires_grad_()
            t = (torch.rand(shape, generator=gen) < 0.3).to(dtype).to(device)
            sw = torch.rand(shape[0], generator=gen).to(device)
            w = torch.rand(shape, generator=gen).to(dtype).to(device)
            pw = (torch.rand(shape[-1:], generator=gen) * 3).to(dtype).to(device)
            xt = dict(input=x, target=t)
            for red in (0, 1, 2):
                full, no_stats = tail(red, True, True), tail(red, True, False)
                yield "sigmoid_focal_loss", op_args("sigmoid_focal_loss", **xt, sample_weight=sw, alpha=0.25,
                                                    gamma=2.0, **full)
                yield "binary_cross_entropy_with_logits", op_args(
                    "binary_cross_entropy_with_logits", **xt, weight=w, pos_weight=pw, sample_weight=sw, **full)
                yield "mse_loss", op_args("mse_loss", **xt, weight=w, sample_weight=sw, **full)
                yield "l1_loss", op_args("l1_loss", **xt, weight=None, sample_weight=sw, **no_stats)
                yield "huber_loss", op_args("huber_loss", **xt, weight=w, sample_weight=None, delta=0.5, **full)
            # d/dtarget from the same pass, for a target that requires grad.
            soft = torch.rand(shape, generator=gen).to(dtype).to(device).requires_grad_()
            for red in (0, 1):
                with_target = dict(tail(red, True, False), compute_target_grad=True)
                yield "binary_cross_entropy_with_logits", op_args(
                    "binary_cross_entropy_with_logits", input=x, target=soft, weight=w, pos_weight=pw,
                    sample_weight=sw, **with_target)
                yield "sigmoid_focal_loss", op_args("sigmoid_focal_loss", input=x, target=soft, sample_weight=sw,
                                                    alpha=0.25, gamma=2.0, **with_target)
                yield "huber_loss", op_args("huber_loss", input=x, target=soft, weight=None, sample_weight=sw,
                                            delta=0.5, **with_target)


def inplace_opcheck_samples(x, y, sw):
    """(op name, positional args) for opcheck of the in-place row ops."""
    yield "cross_entropy_", op_args("cross_entropy_", **ce_kwargs(x.clone(), y, sw), reduction=1,
                                    compute_stats=True)
    yield "focal_loss_", op_args("focal_loss_", input=x.clone(), target=y, alpha=None, sample_weight=None,
                                 gamma=2.0, ignore_index=-100, reduction=1, compute_stats=False)
    yield "cross_entropy_", op_args("cross_entropy_", **ce_kwargs(x.clone(), y, sw), reduction=2,
                                    compute_stats=True, z_loss=0.01, softcap=2.0)


# ---------------------------------------------------------------------------
# The positional form, tail last (the CUDA emulation's calls)


def with_tail(args, reduction, compute_grad, compute_stats):
    """Replaces a sample's last three arguments (reduction, compute_grad,
    compute_stats)."""
    return args[:-3] + (reduction, compute_grad, compute_stats)


def row_case(variant, n, c, dtype, gen):
    """(op name, keyword arguments) of a row op over n x c logits, for
    row_args."""
    return row_kwargs(variant, n, c, dtype, gen)


def row_args(name, kwargs, reduction, compute_grad, compute_stats):
    """A row_case's positional arguments with this tail."""
    return op_args(name, **kwargs, **tail(reduction, compute_grad, compute_stats))


def elem_cases(shape, dtype, gen):
    """(op name, args without the tail) of every element-wise op."""
    for name, kwargs in elem_kwargs(shape, dtype, gen):
        yield name, op_args(name, **kwargs)
