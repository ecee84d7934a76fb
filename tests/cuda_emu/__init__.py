"""Builds the host emulation of the CUDA kernels (see emulator.h) as a small
torch extension, cached under build/ per torch version."""
import os
import pathlib

import torch

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]


class _Emulation:
    """The emulation's ops (``torch.ops.samplewt_emu``, called as the
    extension's ops are) and its planner and self-test functions."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        if hasattr(self._module, name):
            return getattr(self._module, name)
        return getattr(torch.ops.samplewt_emu, name)


def load(verbose=False):
    from torch.utils import cpp_extension

    build = REPO / "build" / f"cuda_emu-torch{torch.__version__.replace('+', '_')}"
    build.mkdir(parents=True, exist_ok=True)
    return _Emulation(cpp_extension.load(
        name="samplewt_cuda_emu",
        sources=[str(HERE / f) for f in ("emu_module.cpp", "emu_row.cpp", "emu_elem.cpp", "emu_table.cpp",
                                          "emu_scale.cpp")],
        extra_include_paths=[str(HERE / "include"), str(REPO / "csrc" / "cuda")],
        extra_cflags=["-O1", "-DSAMPLEWT_CUDA_EMULATION=1"],
        build_directory=str(build),
        verbose=verbose,
    ))
