"""Sample arguments of the raw ops, shared by the CPU, CUDA and emulated
CUDA tests: one generator per op family, each covering the options that
change a kernel's path (class and sample weights, ignore_index, label
smoothing, probability targets, weight rows broadcast over samples)."""
import torch

ROW_VARIANTS = ("ce_index", "ce_plain", "ce_prob", "focal")


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


def with_tail(args, reduction, compute_grad, compute_stats):
    """Replaces a sample's last three arguments (reduction, compute_grad,
    compute_stats)."""
    return args[:-3] + (reduction, compute_grad, compute_stats)


def row_case(variant, n, c, dtype, gen):
    """(op name, args) of a row op over n x c logits; the tail is a
    placeholder for with_tail."""
    x = (torch.randn(n, c, generator=gen) * 3).to(dtype)
    y = torch.randint(0, c, (n,), generator=gen)
    if n > 2:
        y[n // 2] = -100
    cw = torch.rand(c, generator=gen) + 0.1
    sw = torch.rand(n, generator=gen)
    if n > 3:
        sw[1] = 0.0
    if variant == "ce_index":
        return "cross_entropy", (x, y, cw, sw, -100, 0.1, None, None, None)
    if variant == "ce_plain":
        return "cross_entropy", (x, y, None, None, -100, 0.0, None, None, None)
    if variant == "ce_prob":
        q = torch.softmax(torch.randn(n, c, generator=gen), 1).to(dtype)
        return "cross_entropy", (x, q, cw, sw, -100, 0.2, None, None, None)
    return "focal_loss", (x, y, cw, sw, 2.0, -100, None, None, None)


def elem_cases(shape, dtype, gen):
    """(op name, args without the tail) of every element-wise op."""
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    t = (torch.rand(shape, generator=gen) < 0.3).to(dtype)
    soft = torch.rand(shape, generator=gen).to(dtype)
    n = shape[0] if len(shape) else 1
    sw = torch.rand(n, generator=gen)
    if n > 3:
        sw[2] = 0.0
    w = torch.rand(shape, generator=gen).to(dtype)
    row = torch.rand(shape[1:], generator=gen).to(dtype) * 3 if len(shape) > 1 else None
    yield "sigmoid_focal_loss", (x, t, sw, 0.25, 2.0)
    yield "sigmoid_focal_loss", (x, soft, None, -1.0, 1.5)
    yield "binary_cross_entropy_with_logits", (x, t, w, row, sw)
    yield "binary_cross_entropy_with_logits", (x, soft, row, None, None)
    yield "mse_loss", (x, soft, w, sw)
    yield "mse_loss", (x, soft, row, sw)  # a weight row broadcast over samples
    yield "l1_loss", (x, soft, None, sw)
    yield "l1_loss", (x, soft, w, None)
    yield "huber_loss", (x, soft, w, sw, 0.7)
    yield "huber_loss", (x, soft, None, None, 1.0)
