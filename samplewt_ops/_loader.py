"""Loading of the compiled kernels, with the reference as the fallback.

Importing samplewt_ops._C loads the shared library, whose TORCH_LIBRARY block
registers every op under torch.ops.samplewt_ops. If that fails (no build, an
ABI mismatch) or SAMPLEWT_FORCE_REFERENCE=1 is set, the package runs on the
pure-PyTorch reference instead, and says so once.
"""
from __future__ import annotations

import os
import warnings

import torch

COMPILED = False
REASON = ""


def _load() -> None:
    global COMPILED, REASON
    if os.environ.get("SAMPLEWT_FORCE_REFERENCE", "") == "1":
        REASON = "SAMPLEWT_FORCE_REFERENCE=1"
        return
    try:
        from . import _C  # noqa: F401  (registers the ops)
    except (ImportError, OSError) as exc:
        REASON = f"compiled extension not loaded: {exc}"
        warnings.warn(
            f"samplewt_ops: {REASON}; falling back to the pure-PyTorch reference "
            "(build with `pip install --no-build-isolation -e .`)",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    COMPILED = True


_load()


def _kernel_device_types() -> frozenset:
    if not COMPILED:
        return frozenset()
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return frozenset(
        d for d, key in (("cpu", "CPU"), ("cuda", "CUDA")) if has("samplewt_ops::cross_entropy", key)
    )


# Fixed at import, so that asking costs torch.compile no graph break.
KERNEL_DEVICE_TYPES = _kernel_device_types()


def has_kernel(device: torch.device | str) -> bool:
    """Whether a compiled kernel serves tensors on `device`."""
    return torch.device(device).type in KERNEL_DEVICE_TYPES


def backend() -> dict:
    """Which implementation is in use and which devices have compiled kernels.

    Example:
        >>> samplewt_ops.backend()
        {'implementation': 'compiled', 'devices': ['cpu'], 'cpu_isa': 'AVX512', 'reason': ''}
    """
    devices = [d for d in ("cpu", "cuda") if has_kernel(d)]
    return {
        "implementation": "compiled" if COMPILED else "reference",
        "devices": devices,
        "cpu_isa": torch.ops.samplewt_ops.cpu_isa() if COMPILED else None,
        "reason": REASON,
    }
