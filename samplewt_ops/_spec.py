"""The op spec: one entry per loss, from which the Python side is built.

Each entry says what Python must know about a loss: its family (``"row"``:
softmax over (rows, C) with class targets; ``"elementwise"``: one loss per
element), its own scalar and tensor arguments with their checks, whether a
``_`` variant writes the gradient into the input, its mean rule and its
reference.  From the table come the fake kernels and the autograd formula
(``_ops``), the checks and dispatch of the public losses (``functional``),
the modules, ``__all__``, ``LOSS_NAMES`` and the adaptive-table driver's
mean rule (``weights``).

The C++ schema (csrc/ops.cpp) stays the one source of argument *order*:
Python binds arguments by name. At import, when the extension is compiled,
every entry is checked against ``torch.ops.samplewt_ops.<op>.default._schema``
and the order is read from there (:data:`SCHEMA_ARGS`).

A new element-wise loss needs its formula and schema (C++), an entry here,
its reference (reference.py), its public function (functional.py) and its
tests; its module, ``__all__`` and ``LOSS_NAMES`` follow from the entry.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch

from . import _loader, reference
from . import _validation as V

ROW = "row"
ELEMENTWISE = "elementwise"

# Mean rules: per sample, what reduction="mean" divides by (times its sample
# weight); the adaptive-table driver needs it for per-batch policies.
MEAN_CLASS_WEIGHT = "class_weight"  # sum of cw[y] over positions not ignored; positions for probabilities
MEAN_NOT_IGNORED = "not_ignored"    # positions not ignored
MEAN_ELEMENTS = "elements"          # elements per sample
MEAN_WEIGHT = "weight"              # sum of `weight` per sample, else elements (PyTorch's weighted mean)
MEAN_RULES = (MEAN_CLASS_WEIGHT, MEAN_NOT_IGNORED, MEAN_ELEMENTS, MEAN_WEIGHT)

# The arguments every loss op has, around its own.
COMMON_ARGS = {"input": "Tensor", "target": "Tensor", "sample_weight": "Optional[Tensor]",
               "reduction": "int", "compute_grad": "bool", "compute_stats": "bool"}
OUTPUTS = ("loss", "grad", "stats")
INPLACE_OUTPUTS = ("loss", "stats")
# Every loss op also takes an adaptive weight table's tensors, which it reads
# and updates in place (csrc/table_step.h; AdaptiveWeights.op_args); policy 0
# is no table. Written by the op: TABLE_MUTATED.
TABLE_ARGS = {"indices": "Optional[Tensor]", "table_ema": "Optional[Tensor]",
              "seen_count": "Optional[Tensor]", "stat_sum": "Optional[Tensor]",
              "bin_ema": "Optional[Tensor]", "bin_steps": "Optional[Tensor]",
              "threshold": "Optional[Tensor]", "policy": "int", "policy_params": "List[float]"}
TABLE_MUTATED = ("table_ema", "seen_count", "stat_sum", "bin_ema", "bin_steps")
# The softmax losses' z-loss and softcap (csrc/op_wrappers.h). softcap is
# the one optional scalar: None turns it off.
ROW_EXTRAS = {"z_loss": V.check_z_loss, "softcap": V.check_softcap}
OPTIONAL_SCALARS = ("softcap",)
# torch's deprecated reduction arguments, which its losses still take (by
# position too): the public functions and modules take them where torch's
# counterpart does and turn them into ``reduction`` as torch does, warning.
LEGACY_REDUCTION = ("size_average", "reduce")
# Element-wise ops also give d(loss)/d(target) from the same pass, on request.
ELEMENTWISE_ARGS = {"compute_target_grad": "bool"}
ELEMENTWISE_OUTPUTS = OUTPUTS + ("target_grad",)


@dataclass(frozen=True, eq=False)
class OpSpec:
    """One loss op.

    ``scalars`` and ``tensors`` map the op's own arguments (schema names, in
    the order they are checked) to their checks: a scalar's as
    ``check(value)``, a tensor's as ``check(value, input, name)``.
    ``to_op`` maps an argument whose public form differs from the op's to
    ``convert(value, input)``. ``positional`` lists, in order, the arguments
    that torch's counterpart takes by position after input and target: the
    reference's positional arguments with torch's LEGACY_REDUCTION ones among
    them, so that a positional call of torch's function is one of ours.
    """

    name: str
    family: str
    module: str
    mean: str
    reference: Callable
    scalars: Dict[str, Callable] = field(default_factory=dict)
    tensors: Dict[str, Callable] = field(default_factory=dict)
    inplace: bool = False
    prob_targets: bool = False
    to_op: Dict[str, Callable] = field(default_factory=dict)
    module_doc: Optional[str] = None
    # The dtype of the result with a floating-point target of another dtype,
    # as torch's counterpart gives it: "promote" (torch.result_type of both),
    # "target" (F.binary_cross_entropy_with_logits) or "input" (F.huber_loss).
    result_dtype: str = "promote"
    # torch's regression losses broadcast a target of another shape with
    # input (with a warning) and read an integer target in input's dtype.
    broadcast: bool = False
    # torch's counterpart takes complex input (F.l1_loss): the reference
    # computes such calls, whose loss is real.
    complex_input: bool = False
    positional: Tuple[str, ...] = ()
    doc: str = ""  # the public function's docstring

    def __post_init__(self):
        own = [*self.scalars, *self.tensors]
        if (self.family not in (ROW, ELEMENTWISE) or self.mean not in MEAN_RULES
                or self.result_dtype not in ("promote", "target", "input")
                or len(set(own)) < len(own) or set(own) & set(COMMON_ARGS) or set(self.to_op) - set(own)
                or (self.rows and "ignore_index" not in self.scalars)):
            raise ValueError(f"samplewt_ops: inconsistent op spec of {self.name}: {self}")
        ref = list(inspect.signature(self.reference).parameters.values())[2:]
        by_position = [p.name for p in ref if p.kind is p.POSITIONAL_OR_KEYWORD]
        if by_position != [n for n in self.positional if n not in LEGACY_REDUCTION]:
            raise ValueError(f"samplewt_ops: {self.name}'s positional arguments {self.positional} "
                             f"are not its reference's {by_position}")

    @property
    def rows(self) -> bool:
        return self.family == ROW

    def batch_size(self, input: torch.Tensor) -> int:
        """Samples along input's first dimension (1 without a batch dimension)."""
        return 1 if input.dim() == (1 if self.rows else 0) else input.shape[0]

    def op_args(self, args: dict, input: torch.Tensor) -> dict:
        """The loss's own arguments (checked, by name) as the op takes them."""
        return {name: self.to_op[name](value, input) if name in self.to_op else value
                for name, value in args.items()}

    def expected_args(self, inplace: bool = False) -> Dict[str, str]:
        """Every schema argument of the op (or its ``_`` variant) and its type."""
        args = dict(COMMON_ARGS)
        args.update({name: "Optional[Tensor]" for name in self.tensors})
        args.update({name: "Optional[float]" if name in OPTIONAL_SCALARS else "number"
                     for name in self.scalars})
        if inplace:
            del args["compute_grad"]
        if not self.rows:
            args.update(ELEMENTWISE_ARGS)
        args.update(TABLE_ARGS)
        return args

    def outputs(self, inplace: bool = False) -> Tuple[str, ...]:
        """The op's (or its ``_`` variant's) outputs, by schema name."""
        if inplace:
            return INPLACE_OUTPUTS
        return OUTPUTS if self.rows else ELEMENTWISE_OUTPUTS


def _class_alpha(alpha, input):
    # One alpha for every class, as the op's per-class tensor, in the input's
    # accumulation type: float64 keeps a Python float exact for float64 inputs.
    if alpha is None or isinstance(alpha, torch.Tensor):
        return alpha
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    return torch.full((V.num_classes(input),), alpha, dtype=dtype, device=input.device)


def _sigmoid_alpha(alpha, input):
    return -1.0 if alpha is None else alpha  # < 0: no balance term


_SPEC_LIST = (
    OpSpec("cross_entropy", ROW, "CrossEntropyLoss", MEAN_CLASS_WEIGHT, reference.cross_entropy,
           positional=("weight", "size_average", "ignore_index", "reduce", "reduction", "label_smoothing"),
           scalars={"label_smoothing": V.check_label_smoothing, "ignore_index": V.check_ignore_index,
                    **ROW_EXTRAS},
           tensors={"weight": V.per_class}, inplace=True, prob_targets=True,
           module_doc="""Module form of :func:`samplewt_ops.cross_entropy`.

    Example:
        >>> loss_fn = CrossEntropyLoss(weight=class_weights, label_smoothing=0.1)
        >>> loss = loss_fn(logits, labels, sample_weight=w)
    """,
           doc=r"""Cross-entropy with class weights and per-sample weights.

    For class-index targets, with class weights :math:`cw`, label smoothing
    :math:`\varepsilon` and :math:`\log p = \mathrm{log\_softmax}(x)`:

    .. math::
        \ell_i = (1-\varepsilon)\, cw_{y_i} (-\log p_{i,y_i})
                 + \tfrac{\varepsilon}{C} \sum_c cw_c (-\log p_{i,c})

    and ``reduction="mean"`` gives :math:`\sum_i w_i \ell_i / \sum_i w_i cw_{y_i}`
    over the samples that are not ``ignore_index``. Class-probability targets
    (input's shape) give :math:`\ell_i = -\sum_c cw_c q'_{ic} \log p_{ic}` and a
    mean over :math:`\sum_i w_i`. Input may be (N, C), (N, C, d1..dk) or (C,).

    ``softcap`` (Gemma 2, > 0 or None) first maps the logits to
    :math:`s \tanh(x / s)`; ``z_loss`` (PaLM, >= 0) adds
    :math:`z\, cw_{y_i} \mathrm{lse}_i^2` to :math:`\ell_i`, lse the
    log-sum-exp of the (capped) logits, weighted and reduced like the
    cross-entropy term (:math:`z\, \mathrm{lse}_i^2` for probability targets).

    ``inplace_grad=True`` writes d(loss)/d(input) into ``input``'s own memory,
    so forward plus backward allocates no N x C buffer: the logits are
    consumed (overwritten) and backward may run only once.

    Example:
        >>> x = torch.randn(4, 10, requires_grad=True)
        >>> y = torch.tensor([1, 0, 9, 3])
        >>> loss = samplewt_ops.cross_entropy(x, y, sample_weight=torch.tensor([1., 2., 0., 1.]))
        >>> loss.backward()
    """),
    OpSpec("focal_loss", ROW, "FocalLoss", MEAN_NOT_IGNORED, reference.focal_loss,
           scalars={"gamma": V.check_gamma, "ignore_index": V.check_ignore_index, **ROW_EXTRAS},
           tensors={"alpha": V.per_class_or_real}, inplace=True, to_op={"alpha": _class_alpha},
           module_doc="Module form of :func:`samplewt_ops.focal_loss` (softmax focal loss).",
           doc=r"""Softmax (multi-class) focal loss of Lin et al. 2017.

    .. math:: \ell_i = -\alpha_{y_i} (1 - p_{i,y_i})^{\gamma} \log p_{i,y_i}

    ``alpha`` is None (1), a float for every class, or a tensor (C,).
    ``reduction="mean"`` gives :math:`\sum_i w_i \ell_i / \sum_i w_i` over the
    samples that are not ``ignore_index``. With gamma=0 and alpha=None this is
    cross_entropy. ``inplace_grad``, ``softcap`` and ``z_loss`` as in
    :func:`cross_entropy`, the z term weighted by :math:`\alpha_{y_i}`.

    Example:
        >>> x = torch.randn(8, 5, requires_grad=True)
        >>> y = torch.randint(0, 5, (8,))
        >>> samplewt_ops.focal_loss(x, y, gamma=2.0, alpha=0.25).backward()
    """),
    OpSpec("sigmoid_focal_loss", ELEMENTWISE, "SigmoidFocalLoss", MEAN_ELEMENTS,
           reference.sigmoid_focal_loss,
           positional=("alpha", "gamma", "reduction"),
           scalars={"gamma": V.check_gamma, "alpha": V.check_sigmoid_alpha},
           to_op={"alpha": _sigmoid_alpha},
           doc=r"""Sigmoid focal loss, as torchvision.ops.sigmoid_focal_loss.

    With :math:`p = \sigma(x)`, :math:`p_t = p t + (1-p)(1-t)` and
    :math:`\alpha_t = \alpha t + (1-\alpha)(1-t)`:

    .. math:: \ell = \alpha_t \, \mathrm{BCE}(x, t) \, (1 - p_t)^{\gamma}

    ``alpha < 0`` turns the balance term off. The default reduction is "none".

    Example:
        >>> x = torch.randn(16, 80, requires_grad=True)
        >>> t = (torch.rand(16, 80) < 0.1).float()
        >>> samplewt_ops.sigmoid_focal_loss(x, t, reduction="mean").backward()
    """),
    OpSpec("binary_cross_entropy_with_logits", ELEMENTWISE, "BCEWithLogitsLoss", MEAN_ELEMENTS,
           reference.binary_cross_entropy_with_logits,
           positional=("weight", "size_average", "reduce", "reduction", "pos_weight"),
           tensors={"weight": V.broadcastable, "pos_weight": V.broadcastable},
           result_dtype="target",
           doc=r"""BCE with logits and pos_weight, as F.binary_cross_entropy_with_logits.

    .. math:: \ell = w \left[(1-t)\,x + (1 + (pw - 1)\,t)\,\mathrm{softplus}(-x)\right]

    ``weight`` and ``pos_weight`` broadcast to input; the mean divides by the
    number of elements, each sample's count times its sample weight.

    Example:
        >>> x = torch.randn(32, 80, requires_grad=True)
        >>> t = (torch.rand(32, 80) < 0.1).float()
        >>> samplewt_ops.binary_cross_entropy_with_logits(x, t, pos_weight=torch.full((80,), 9.0))
    """),
    OpSpec("mse_loss", ELEMENTWISE, "MSELoss", MEAN_WEIGHT, reference.mse_loss,
           positional=("size_average", "reduce", "reduction", "weight"),
           tensors={"weight": V.same_shape}, broadcast=True,
           doc=r"""Squared error :math:`\ell = weight\,(x - t)^2`, as F.mse_loss.

    The mean is :math:`\sum_i w_i \sum_j \ell_{ij} / \sum_i w_i D_i`, where
    :math:`D_i` is the element count of sample i, or :math:`\sum_j weight_{ij}`
    when ``weight`` is given (PyTorch's weighted mean).

    Example:
        >>> pred = torch.randn(100, 16, requires_grad=True)
        >>> samplewt_ops.mse_loss(pred, torch.randn(100, 16), sample_weight=torch.rand(100))
    """),
    OpSpec("l1_loss", ELEMENTWISE, "L1Loss", MEAN_WEIGHT, reference.l1_loss,
           positional=("size_average", "reduce", "reduction", "weight"),
           tensors={"weight": V.same_shape}, broadcast=True, complex_input=True,
           doc=r"""Absolute error :math:`\ell = weight\,|x - t|`, as F.l1_loss (mean as in :func:`mse_loss`).

    Example:
        >>> samplewt_ops.l1_loss(torch.randn(8, 3), torch.randn(8, 3), sample_weight=torch.rand(8))
    """),
    OpSpec("huber_loss", ELEMENTWISE, "HuberLoss", MEAN_ELEMENTS, reference.huber_loss,
           positional=("reduction", "delta", "weight"),
           scalars={"delta": V.check_delta}, tensors={"weight": V.same_shape},
           result_dtype="input", broadcast=True,
           doc=r"""Huber loss, as F.huber_loss.

    .. math:: \ell = weight \cdot \begin{cases} \tfrac12 d^2 & |d| < \delta \\
              \delta (|d| - \tfrac12 \delta) & \text{otherwise} \end{cases}, \quad d = x - t

    PyTorch's weighted mean divides by the element count, and so does this one.

    Example:
        >>> samplewt_ops.huber_loss(torch.randn(8, 3), torch.randn(8, 3), delta=0.5)
    """),
)

#: Every loss, by name, in the order of the public API.
SPECS: Dict[str, OpSpec] = {spec.name: spec for spec in _SPEC_LIST}

#: The schema's argument names of every op and ``_`` variant, in schema order
#: (filled at import when the extension is compiled).
SCHEMA_ARGS: Dict[str, Tuple[str, ...]] = {}
#: The schema's default values, per op: the arguments a call may leave out.
SCHEMA_DEFAULTS: Dict[str, Dict[str, object]] = {}


def _matches(want: Optional[str], got: Optional[str]) -> bool:
    return want == got or (want == "number" and got in ("int", "float"))


def check_schema(spec: OpSpec) -> Dict[str, Tuple[str, ...]]:
    """Check ``spec`` against the compiled schemas of its op (and ``_``
    variant); returns their argument names in schema order."""
    found = {}
    for inplace in (False, True) if spec.inplace else (False,):
        qualname = spec.name + ("_" if inplace else "")
        schema = getattr(torch.ops.samplewt_ops, qualname).default._schema
        got = {a.name: str(a.type) for a in schema.arguments}
        want = spec.expected_args(inplace)
        outputs = tuple(r.name for r in schema.returns)
        problems = [f"{name}: {want.get(name, 'absent')} in the spec, {got.get(name, 'absent')} in the schema"
                    for name in sorted(set(got) | set(want)) if not _matches(want.get(name), got.get(name))]
        if outputs != spec.outputs(inplace):
            problems.append(f"returns {outputs}")
        if inplace and not next(a for a in schema.arguments if a.name == "input").is_write:
            problems.append("input is not written (Tensor(a!))")
        written = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
        if written - {"input"} != set(TABLE_MUTATED):
            problems.append(f"writes {sorted(written)}, the table's {list(TABLE_MUTATED)} expected")
        if problems:
            raise RuntimeError(f"samplewt_ops: the op spec of {qualname} (samplewt_ops/_spec.py) "
                               f"does not match its schema (csrc/ops.cpp): " + "; ".join(problems))
        found[qualname] = tuple(a.name for a in schema.arguments)
        SCHEMA_DEFAULTS[qualname] = {a.name: a.default_value for a in schema.arguments
                                     if a.has_default_value()}
    return found


# Losses with statistics that are not spec entries: the fused linear losses
# take a (V, D) head instead of logits, and samplewt_ops/linear.py holds their
# checks, fake kernels and modules.
LINEAR_OPS = ("linear_cross_entropy", "linear_focal_loss")


def _loss_ops() -> set:
    """The registered ops that are spec'd losses (they return per-sample
    statistics), the linear losses aside."""
    names = set()
    for qualname in torch._C._dispatch_get_all_op_names():
        if qualname.startswith("samplewt_ops::"):
            name = qualname.split("::", 1)[1]
            schema = getattr(torch.ops.samplewt_ops, name).default._schema
            if name not in LINEAR_OPS and any(a.name == "compute_stats" for a in schema.arguments):
                names.add(name)
    return names


def check_schemas() -> None:
    """Every spec against its schema, and every loss op has a spec."""
    SCHEMA_ARGS.clear()
    SCHEMA_DEFAULTS.clear()
    for spec in SPECS.values():
        SCHEMA_ARGS.update(check_schema(spec))
    missing = sorted(_loss_ops() - set(SCHEMA_ARGS))
    if missing:
        raise RuntimeError(f"samplewt_ops: no op spec (samplewt_ops/_spec.py) for {', '.join(missing)}")


if _loader.COMPILED:
    check_schemas()
