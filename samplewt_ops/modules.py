"""nn.Module wrappers over samplewt_ops.functional, one per op spec entry.

Each constructor takes its functional's keyword arguments (every argument
but input, target, sample_weight and indices, with the same defaults);
forward takes (input, target, sample_weight=None, indices=None). Tensor
arguments (class weight, alpha, pos_weight) are registered as buffers so
that .to() moves them.
"""
from __future__ import annotations

import inspect
from typing import Optional

from torch import Tensor, nn

from . import _loader
from . import functional as F
from ._spec import LEGACY_REDUCTION, SPECS

__all__ = [spec.module for spec in SPECS.values()]

# The functional's arguments that forward takes, not the constructor.
_CALL_ARGS = ("input", "target", "sample_weight", "indices")


class _WeightedLoss(nn.Module):
    _fn = None  # the functional the module calls
    _buffers_kw: tuple = ()

    def _setup(self, signature: inspect.Signature, args: tuple, kwargs: dict) -> None:
        super().__init__()
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        # torch's deprecated size_average / reduce set the reduction once, as
        # torch.nn's _Loss does; the module keeps only the reduction.
        legacy = {name: bound.arguments.pop(name) for name in LEGACY_REDUCTION if name in bound.arguments}
        if any(value is not None for value in legacy.values()):
            bound.arguments["reduction"] = F._legacy_reduction(**legacy)
        # Every argument is an attribute, as in torch.nn's losses (loss.reduction,
        # loss.ignore_index, ...); tensors are buffers (None allowed) so that
        # .to() moves them, and changing an attribute changes the next call.
        self._arg_names = tuple(bound.arguments)[1:]
        for key in self._arg_names:
            value = bound.arguments[key]
            if key in self._buffers_kw and (value is None or isinstance(value, Tensor)):
                self.register_buffer(key, value)
            else:
                setattr(self, key, value)

    # forward(input, target, sample_weight=None, indices=None): written per
    # class by _forward.

    def extra_repr(self) -> str:
        # The arguments that differ from their defaults (torch.nn shows none).
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self._arg_names
                         if not isinstance(getattr(self, k), Tensor)
                         and getattr(self, k) != self._defaults[k])


def _forward(spec, names: tuple, buffers: tuple):
    """The forward of a loss module: the functional's call with the module's
    arguments, as ``fn(input, target, sample_weight=sample_weight, **args,
    indices=indices)`` computes it.

    Written out as source, like the functionals: each argument read from the
    instance's own dicts (a buffer from ``_buffers``; a name found in neither,
    such as a buffer replaced by a Parameter, through getattr), then the
    functional's fast path. nn.Module's __getattr__ and a keyword dict per
    call cost about as much as the whole forward of torch's module."""
    # The loss's own arguments, as the functional passes them to its fast path.
    own = [name for name in inspect.signature(spec.reference).parameters if name not in F._COMMON]
    lines = ["def forward(self, input, target, sample_weight=None, indices=None):",
             "    d = self.__dict__",
             "    b = d['_buffers']"]
    for name in names:
        where = "b" if name in buffers else "d"
        lines.append(f"    {name} = {where}[{name!r}] if {name!r} in {where} else getattr(self, {name!r})")
    own_dict = "{" + ", ".join(f"{name!r}: {name}" for name in own) + "}"
    tail = ", inplace_grad" if spec.inplace else ""
    lines += [
        "    if _COMPILED:",
        f"        loss = _fast_loss(_spec, input, target, sample_weight, reduction, {own_dict}, "
        f"table, indices{tail})",
        "        if loss is not None:",
        "            return loss",
        "    return _fn(input, target, sample_weight=sample_weight, "
        + "".join(f"{name}={name}, " for name in names) + "indices=indices)",
    ]
    namespace = {"_fast_loss": F._fast_loss, "_spec": spec, "_fn": getattr(F, spec.name),
                 "_COMPILED": _loader.COMPILED}
    exec(compile("\n".join(lines) + "\n", f"<samplewt_ops.{spec.module}.forward>", "exec"), namespace)
    forward = namespace["forward"]
    forward.__qualname__ = f"{spec.module}.forward"
    forward.__annotations__ = {"input": Tensor, "target": Tensor, "sample_weight": Optional[Tensor],
                               "indices": Optional[Tensor], "return": Tensor}
    return forward


def _module(spec) -> type:
    """The module class of a loss: its constructor takes the functional's
    arguments (and the deprecated ``weights=`` for ``table=``)."""
    fn = getattr(F, spec.name)
    params = [p for name, p in inspect.signature(fn).parameters.items()
              if name not in _CALL_ARGS and p.kind is not p.VAR_KEYWORD]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.Signature([self_param, *params])

    def __init__(self, *args, **kwargs):
        if "weights" in kwargs:
            kwargs["table"] = F.renamed_table(kwargs, spec.module)
        self._setup(signature, args, kwargs)
        # Scalars of the wrong type fail here, as torch.nn.HuberLoss's delta
        # does; their values are checked per call, as torch's are.
        for name, check in spec.scalars.items():
            try:
                check(getattr(self, name))
            except TypeError:
                raise
            except (ValueError, RuntimeError):
                pass

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{spec.module}.__init__"
    doc = spec.module_doc or f"Module form of :func:`samplewt_ops.{spec.name}`."
    names = tuple(p.name for p in params if p.name not in LEGACY_REDUCTION)
    return type(spec.module, (_WeightedLoss,), {
        "__init__": __init__, "forward": _forward(spec, names, tuple(spec.tensors)),
        "__doc__": doc, "__module__": __name__,
        "_fn": staticmethod(fn), "_buffers_kw": tuple(spec.tensors),
        "_defaults": {name: p.default for name, p in signature.parameters.items()},
    })


globals().update({spec.module: _module(spec) for spec in SPECS.values()})
