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


def empty_cache() -> int:
    """Frees the large CPU output buffers kept for reuse; returns their bytes.

    A freed gradient (or ``reduction="none"`` loss) of 8 MiB or more goes back
    to a small cache, and the next call of the same size reuses it with its
    pages already mapped, as the CUDA caching allocator does on the GPU. Call
    this to return that memory (at most ``SAMPLEWT_CPU_BUFFER_CACHE_MB`` MiB,
    by default an eighth of the machine's memory; 0 turns the cache off) to
    the allocator.

    Example:
        >>> samplewt_ops.empty_cache()
        0
    """
    return int(torch.ops.samplewt_ops.empty_cpu_buffer_cache()) if COMPILED else 0


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
