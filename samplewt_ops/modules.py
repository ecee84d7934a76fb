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

from . import functional as F
from ._spec import SPECS

__all__ = [spec.module for spec in SPECS.values()]

# The functional's arguments that forward takes, not the constructor.
_CALL_ARGS = ("input", "target", "sample_weight", "indices")


class _WeightedLoss(nn.Module):
    _fn = None
    _buffers_kw: tuple = ()

    def _setup(self, signature: inspect.Signature, args: tuple, kwargs: dict) -> None:
        super().__init__()
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
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

    def forward(self, input: Tensor, target: Tensor, sample_weight: Optional[Tensor] = None,
                indices: Optional[Tensor] = None) -> Tensor:
        kw = {key: getattr(self, key) for key in self._arg_names}
        if kw.get("table") is not None or indices is not None:
            kw["indices"] = indices
        return type(self)._fn(input, target, sample_weight=sample_weight, **kw)

    def extra_repr(self) -> str:
        # The arguments that differ from their defaults (torch.nn shows none).
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self._arg_names
                         if not isinstance(getattr(self, k), Tensor)
                         and getattr(self, k) != self._defaults[k])


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

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{spec.module}.__init__"
    doc = spec.module_doc or f"Module form of :func:`samplewt_ops.{spec.name}`."
    return type(spec.module, (_WeightedLoss,), {
        "__init__": __init__, "__doc__": doc, "__module__": __name__,
        "_fn": staticmethod(fn), "_buffers_kw": tuple(spec.tensors),
        "_defaults": {name: p.default for name, p in signature.parameters.items()},
    })


globals().update({spec.module: _module(spec) for spec in SPECS.values()})
