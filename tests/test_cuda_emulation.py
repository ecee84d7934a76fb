"""The CUDA kernels on the CPU: the op layer, launch planners and kernel
templates of csrc/cuda/, compiled by the host compiler under the emulation
of tests/cuda_emu/emulator.h (threads as fibers, __syncthreads and warp
shuffles as checked barriers, __shared__ as per-block storage), against the
CPU ops. Every regime of the planners is hit, and asserted to be hit, for
every dtype. Runs everywhere: no GPU, no CUDA toolkit."""
import pytest
import torch

import cuda_emu
import samplewt_ops  # noqa: F401  (registers the CPU ops)
from samples import ROW_VARIANTS, assert_outputs_close, elem_cases, row_args, row_case, with_tail

OPS = torch.ops.samplewt_ops
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NUM_SMS = 2  # small grids: the grid-stride loops run several times


@pytest.fixture(scope="module")
def emu():
    m = cuda_emu.load()
    m.set_num_sms(NUM_SMS)
    return m


def _plan_row(emu, name, x, target):
    kind = 2 if name == "focal_loss" else (1 if target.is_floating_point() else 0)
    aligned = x.data_ptr() % 16 == 0 and (x.stride(0) * x.element_size()) % 16 == 0
    return emu.plan_row(kind, x.shape[0], x.shape[1], x.element_size(), aligned, 1, True, NUM_SMS)


# (rows, classes, regime, lanes per row or threads per block), for float32
# with 128-bit loads (4 per vector). With 2 SMs a small-C grid holds at most
# 16 blocks and a block-per-row grid 32 (block 128) rows.
ROW_SHAPES = [
    (5, 1, "small", 1),
    (7, 8, "small", 1),
    (33, 36, "small", 4),
    (9, 37, "small", 32),     # rows of 148 bytes: scalar loads
    (40, 1000, "small", 32),
    (1100, 10, "small", 4),     # 18 row tiles on 16 blocks
    (40, 3000, "block", 128),   # 40 rows on 32 blocks
    (6, 5000, "block", 256),
    (4, 20000, "block", 512),
    (1, 20000, "split", 4),     # 4 chunks of one row
    (3, 8191, "split", 2),      # a ragged last chunk
]


@pytest.mark.parametrize("n,c,regime,width", ROW_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ROW_VARIANTS)
def test_row_ops_match_cpu(emu, variant, n, c, regime, width, dtype):
    gen = torch.Generator().manual_seed(n * 7 + c)
    name, kw = row_case(variant, n, c, dtype, gen)
    if dtype == torch.float32:
        plan = _plan_row(emu, name, kw["input"], kw["target"])
        assert plan["regime"] == regime
        assert width == {"small": plan["group"], "block": plan["block"], "split": plan["nch"]}[regime]
    for reduction in (0, 1, 2):
        full = row_args(name, kw, reduction, True, True)
        assert_outputs_close(getattr(emu, name)(*full), getattr(OPS, name)(*full), dtype)
    fwd = row_args(name, kw, 1, False, False)
    got = getattr(emu, name)(*fwd)
    assert got[1].numel() == 0 and got[2].numel() == 0
    assert_outputs_close(got[:1], getattr(OPS, name)(*fwd)[:1], dtype)


@pytest.mark.parametrize("layout", ["padded_aligned", "padded_unaligned", "offset", "transposed"])
@pytest.mark.parametrize("c", [37, 3000, 20000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_ops_strided_misaligned_and_in_place(emu, layout, c, dtype):
    n = 3 if c == 20000 else 9
    gen = torch.Generator().manual_seed(c)
    x = (torch.randn(n, c, generator=gen) * 3).to(dtype)
    if layout == "padded_aligned":
        xd = torch.zeros(n, c + 8, dtype=dtype)[:, :c]
    elif layout == "padded_unaligned":
        xd = torch.zeros(n, c + 3, dtype=dtype)[:, :c]
    elif layout == "offset":  # one element past a 16-byte boundary: scalar loads
        xd = torch.zeros(n * c + 1, dtype=dtype)[1:].view(n, c)
    else:
        xd = torch.zeros(c, n, dtype=dtype).t()
    xd.copy_(x)
    y = torch.randint(0, c, (n,), generator=gen)
    cw = torch.rand(c, generator=gen)
    sw = torch.rand(n, generator=gen)
    q = torch.softmax(torch.randn(n, c, generator=gen), 1).to(dtype)
    for name, rest in (("cross_entropy", (y, cw, sw, -100, 0.1)),
                       ("cross_entropy", (q, None, sw, -100, 0.0)),
                       ("focal_loss", (y, cw, sw, 1.5, -100))):
        want = getattr(OPS, name)(x, *rest, 1, True, True)
        assert_outputs_close(getattr(emu, name)(xd, *rest, 1, True, True), want, dtype)
        xi = xd.clone() if layout == "transposed" else xd
        saved = xd.clone()
        loss, stats = getattr(emu, name + "_")(xi, *rest, 1, True)
        assert_outputs_close((loss, xi, stats), want, dtype)
        xd.copy_(saved)


def test_invalid_targets_give_nan_not_memory_access(emu):
    for n, c in ((9, 37), (6, 3000), (2, 20000)):
        x = torch.randn(n, c)
        y = torch.randint(0, c, (n,))
        y[1], y[-1] = c + 5, -7
        loss, grad, stats = emu.cross_entropy(x, y, None, None, -100, 0.0, 0, True, True)
        assert torch.isnan(loss[1]) and torch.isnan(loss[-1])
        assert torch.count_nonzero(grad[1]) == 0 and torch.count_nonzero(grad[-1]) == 0
        ok = torch.ones(n, dtype=torch.bool)
        ok[1] = ok[-1] = False
        want = OPS.cross_entropy(x[ok], y[ok], None, None, -100, 0.0, 0, True, True)
        torch.testing.assert_close(loss[ok], want[0])
        torch.testing.assert_close(grad[ok], want[1])


def test_empty_and_all_ignored(emu):
    for reduction in (0, 1, 2):
        x, y = torch.empty(0, 5), torch.empty(0, dtype=torch.long)
        assert_outputs_close(emu.cross_entropy(x, y, None, None, -100, 0.0, reduction, True, True),
                             OPS.cross_entropy(x, y, None, None, -100, 0.0, reduction, True, True),
                             torch.float32)
        e = torch.empty(0, 4)
        assert_outputs_close(emu.mse_loss(e, e, None, None, reduction, True, True),
                             OPS.mse_loss(e, e, None, None, reduction, True, True), torch.float32)
    loss, grad, _ = emu.cross_entropy(torch.randn(6, 9), torch.full((6,), -100), None, None,
                                      -100, 0.0, 1, True, False)
    assert torch.isnan(loss) and torch.count_nonzero(grad) == 0


# (shape, regime, lanes per sample or chunks per sample), float32.
ELEM_SHAPES = [
    ((), "rows", 1),
    ((7,), "rows", 1),
    ((6, 5), "rows", 4),
    ((4, 3, 2), "rows", 4),
    ((100, 80), "rows", 4),
    ((40, 300), "rows", 32),
    ((1100, 3), "rows", 4),   # 18 sample tiles on 16 blocks
    ((3, 300), "chunk", 1),   # few samples of some length: one chunk each
    ((3, 9000), "chunk", 3),  # several chunks, statistics merged afterwards
]


@pytest.mark.parametrize("shape,regime,width", ELEM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_ops_match_cpu(emu, shape, regime, width, dtype):
    n = shape[0] if shape else 1
    s = 1
    for d in shape[1:]:
        s *= d
    plan = emu.plan_elem(n, s, 4, True, 1, True, NUM_SMS)
    assert plan["regime"] == regime
    assert width == (plan["group"] if regime == "rows" else plan["nch"])
    gen = torch.Generator().manual_seed(len(shape) * 31 + sum(shape))
    for name, args in elem_cases(shape, dtype, gen):
        for reduction in (0, 1, 2):
            full = args + (reduction, True, True, True)  # with d/dtarget
            got = getattr(emu, name)(*full)
            assert got[3].shape == args[0].shape
            assert_outputs_close(got, getattr(OPS, name)(*full), dtype)
        fwd = args + (1, False, False)
        assert_outputs_close(getattr(emu, name)(*fwd)[:1], getattr(OPS, name)(*fwd)[:1], dtype)


def test_elementwise_non_contiguous(emu):
    gen = torch.Generator().manual_seed(5)
    x, t, w = (torch.randn(40, 30, generator=gen).t() for _ in range(3))
    sw = torch.rand(30, generator=gen)
    for name, args in (("mse_loss", (x, t, w, sw)),
                       ("binary_cross_entropy_with_logits", (x, t.sigmoid(), w, None, sw)),
                       ("huber_loss", (x, t, None, sw, 0.5))):
        for reduction in (0, 1, 2):
            assert_outputs_close(getattr(emu, name)(*args, reduction, True, True),
                                 getattr(OPS, name)(*args, reduction, True, True), torch.float32)


def test_results_are_deterministic(emu):
    x = torch.randn(40, 3000)
    y = torch.randint(0, 3000, (40,))
    sw = torch.rand(40)
    a = emu.cross_entropy(x, y, None, sw, -100, 0.1, 1, True, True)
    b = emu.cross_entropy(x, y, None, sw, -100, 0.1, 1, True, True)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# ---------------------------------------------------------------------------
# The planners


@pytest.mark.parametrize("elem", [2, 4, 8])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 37), (1, 262144), (7, 262147), (300, 4000),
                                       (5, 100000), (100000, 10), (16384, 128256)])
@pytest.mark.parametrize("sms", [1, 2, 132])
def test_row_plan_covers_every_column_with_disjoint_workspace(emu, rows, cols, elem, aligned,
                                                              sms):
    p = emu.plan_row(0, rows, cols, elem, aligned, 1, True, sms)
    assert p["run"]
    rows_aligned = rows == 1 or (cols * elem) % 16 == 0
    assert p["vw"] == (16 // elem if aligned and rows_aligned else 1)
    assert 1 <= p["grid"] <= max(rows * p["nch"], 1)
    if p["regime"] == "small":
        assert -(-cols // p["vw"]) <= 256 and p["group"] in (1, 4, 32)
        assert p["grid"] <= 8 * sms
    elif p["regime"] == "block":
        assert p["block"] in (128, 256, 512) and p["grid"] <= rows
    else:
        assert rows < 2 * sms and 2 <= p["nch"] <= 256
        assert p["chunk"] % p["vw"] == 0
        assert (p["nch"] - 1) * p["chunk"] < cols <= p["nch"] * p["chunk"]
    offs = p["offsets"]
    assert all(o % 256 == 0 for o in offs) and p["bytes"] >= max(offs)
    assert p["n_denom"] <= 256


@pytest.mark.parametrize("samples,per_sample", [(1, 1), (7, 1), (1000, 80), (3, 5000),
                                                (2, 100000), (1000000, 16), (65536, 80)])
@pytest.mark.parametrize("sms", [2, 132])
def test_elem_plan_covers_every_element(emu, samples, per_sample, sms):
    p = emu.plan_elem(samples, per_sample, 4, True, 1, True, sms)
    vector = samples == 1 or (per_sample * 4) % 16 == 0
    assert p["run"] and p["vw"] == (4 if vector else 1) and p["grid"] >= 1
    if p["regime"] == "chunk":
        assert p["chunk"] % p["vw"] == 0
        assert (p["nch"] - 1) * p["chunk"] < per_sample <= p["nch"] * p["chunk"]
    else:
        assert p["group"] in (1, 4, 32) and p["grid"] <= 8 * sms


# ---------------------------------------------------------------------------
# The emulator catches what a GPU would get wrong


def test_emulator_exposes_a_missing_barrier(emu):
    x = torch.randn(64 * 256)
    want = x.view(64, 256).sum(1)
    torch.testing.assert_close(emu.selftest_sum(x, 256, True), want)
    assert not torch.allclose(emu.selftest_sum(x, 256, False), want)


@pytest.mark.parametrize("which,message", [(0, "__syncthreads"), (1, "deadlock")])
def test_emulator_rejects_divergent_syncs(emu, which, message):
    with pytest.raises(RuntimeError, match=message):
        emu.selftest_sync(which)
    emu.selftest_sync(2)  # a warp vote, then no divergent sync


# --- the backward's scaling: grad *= grad_output on the device ---------------

def _scale_layout(layout, dtype):
    """(grad, grad_loss, rows, expected vector width) of a layout."""
    g = torch.Generator().manual_seed(3)
    vmax = 16 // torch.empty((), dtype=dtype).element_size()
    if layout == "misaligned":
        base = torch.randn(1 + 7 * 24, generator=g).to(dtype)
        grad = base[1:].view(7, 24)  # one element past a 16-byte boundary
        return grad, torch.tensor(2.5, dtype=dtype), True, 1
    shape, per_row, width = {
        "scalar": ((37, 40), False, vmax),
        "tail": ((7, 5), False, vmax),               # 35 elements: vectors, then a tail
        "long": ((70, 1000), False, vmax),           # the four-vectors-in-flight loop runs
        "rows": ((9, 16), True, vmax),
        "rows_odd": ((9, 13), True, 1),              # vectors would straddle rows
    }[layout]
    grad = torch.randn(*shape, generator=g).to(dtype)
    scale = (torch.rand(shape[0], generator=g) * 4 - 2).to(dtype) if per_row else torch.tensor(-0.75, dtype=dtype)
    return grad, scale, per_row, width


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["scalar", "tail", "long", "rows", "rows_odd", "misaligned"])
def test_scale_grad_is_atens_product(emu, layout, dtype):
    grad, scale, rows, width = _scale_layout(layout, dtype)
    vw, grid = emu.plan_scale(grad.numel(), grad.shape[1], rows, grad.element_size(),
                              grad.data_ptr() % 16 == 0, NUM_SMS)
    assert (vw, grid <= NUM_SMS * 8) == (width, True)
    expected = grad * (scale.unsqueeze(-1) if rows else scale)  # ATen, rounded once
    assert emu.scale_grad(grad, scale, rows)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_grad_by_one_leaves_the_gradient_as_it_is(emu, dtype):
    grad = torch.randn(33, 17).to(dtype)
    grad[0, :3] = torch.tensor([float("inf"), -float("inf"), -0.0])
    before = grad.clone()
    assert emu.scale_grad(grad, torch.ones((), dtype=dtype), False)
    assert torch.equal(grad, before) and torch.signbit(grad[0, 2])
    # A grad_output of another dtype is rounded to grad's first, as ATen's grad * g.to(grad.dtype).
    assert emu.scale_grad(grad, torch.tensor(1.0 + 1e-9, dtype=torch.float64), False)
    assert torch.equal(grad, before * torch.tensor(1.0 + 1e-9, dtype=torch.float64).to(dtype))


def test_scale_grad_declines_what_it_does_not_take(emu):
    grad = torch.randn(6, 8)
    keep = grad.clone()
    assert not emu.scale_grad(grad, torch.rand(6), False)          # per element, not per row
    assert not emu.scale_grad(grad.t(), torch.tensor(2.0), False)  # not contiguous
    assert not emu.scale_grad(grad, torch.rand(5), True)           # a scale per row, wrong count
    assert not emu.scale_grad(grad.view(2, 3, 8), torch.rand(2), True)  # rows of a 3-D grad
    assert torch.equal(grad, keep)
    empty = torch.empty(0, 8)
    assert emu.scale_grad(empty, torch.tensor(3.0), False)
