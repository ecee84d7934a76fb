"""What the tests of the public functions share: their tolerances and checks.

``check_op`` compares ``samplewt_ops.<fn>`` with ``samplewt_ops.reference.<fn>``
in value and in the gradient with respect to ``input``. The expected values
come from the reference evaluated in float64 on exactly the same values (the
inputs and every tensor argument are upcast losslessly), then cast to the
tested dtype: that is the exact answer rounded once, so the tolerances below
measure the kernels' own error:

* float64: rtol 1e-7 (torch.testing's float64 default),
* float32: rtol 1e-5, atol 1e-5 (float32 accumulation over a row of C logits),
* bfloat16: rtol 1.6e-2 (two roundings of 2**-8),
* float16: rtol 2e-3 (two roundings of 2**-10: the kernel may round the saved
  gradient to the input dtype before backward scales it by grad_output).
"""

import torch

import samplewt_ops as swo
from samplewt_ops import reference as ref

REDUCTIONS = ["none", "mean", "sum"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
}




def to64(v):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().double()
    return v


def assert_close(actual, expected, dtype, **override):
    tol = dict(TOL[dtype])
    tol.update(override)
    torch.testing.assert_close(actual, expected, equal_nan=True, **tol)


def forward_backward(fn, x, args, kwargs, grad_out=None):
    xg = x.detach().clone().requires_grad_(True)
    out = fn(xg, *args, **kwargs)
    if grad_out is None:
        grad_out = torch.randn(out.shape, dtype=out.dtype) if out.dim() else torch.ones_like(out)
    (g,) = torch.autograd.grad(out, xg, grad_out)
    return out.detach(), g, grad_out


def check_op(name, x, *args, tol=None, **kwargs):
    """Compare samplewt_ops.<name> with reference.<name> (in float64), forward and d/dinput."""
    dtype = x.dtype
    out, g, go = forward_backward(getattr(swo, name), x, args, kwargs)
    exp, ge, _ = forward_backward(getattr(ref, name), to64(x),
                                  tuple(to64(a) for a in args),
                                  {k: to64(v) for k, v in kwargs.items()},
                                  grad_out=to64(go))
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected {dtype}"
    assert out.shape == exp.shape
    assert g.dtype == dtype and g.shape == x.shape
    tol = tol or {}
    assert_close(out, exp.to(dtype), dtype, **tol)
    assert_close(g, ge.to(dtype), dtype, **tol)
    return out, g


def index_target(shape, C, ignore_index=-100, frac=0.2):
    t = torch.randint(0, C, shape)
    if ignore_index is not None and t.numel() > 1:
        mask = torch.rand(shape) < frac
        mask.view(-1)[0] = False
        t[mask] = ignore_index
    return t


def class_dim(shape):
    return 0 if len(shape) == 1 else 1


def index_shape(shape):
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def sample_weight(shape, dtype, kind):
    if kind is None:
        return None
    n = 1 if len(shape) == 1 else shape[0]
    w = torch.rand(n) * 2
    if n > 2:
        w[1] = 0.0  # a sample that does not count
    return w.to(dtype)


# (N,C) with C = 5, 1, 2, 37 (not a multiple of 16, the row kernel), 32 (the narrow
# kernel's widest, over a span of 64 rows), (N,C,d1,d2), unbatched (C,)
SOFTMAX_SHAPES = [(8, 5), (6, 1), (6, 2), (5, 37), (70, 32), (3, 5, 4, 2), (9,)]
