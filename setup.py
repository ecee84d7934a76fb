"""Build of samplewt_ops: a CPU extension always, CUDA kernels when possible.

CUDA joins the build when the installed torch has CUDA (torch.version.cuda)
and a CUDA toolkit is found (CUDA_HOME); no GPU needs to be visible.
SAMPLEWT_CUDA=0 forces a CPU-only build; SAMPLEWT_CUDA=1 requires CUDA.
Install against the torch you already have:
    pip install --no-build-isolation -e .
"""
import glob
import os

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # torch is deliberately not a build requirement
    raise SystemExit(
        "samplewt_ops builds against an installed torch: pip install torch, then "
        "pip install --no-build-isolation -e ."
    ) from exc

HERE = os.path.dirname(os.path.abspath(__file__))


def build_cuda() -> bool:
    can = bool(torch.version.cuda) and CUDA_HOME is not None
    flag = os.environ.get("SAMPLEWT_CUDA", "").strip()
    if flag == "0":
        return False
    if flag == "1" and not can:
        raise SystemExit(
            "SAMPLEWT_CUDA=1 but CUDA cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}. "
            "Install a CUDA build of torch and a CUDA toolkit, or unset SAMPLEWT_CUDA."
        )
    return can


def extension():
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fdiagnostics-color=always"]
    link = ["-fopenmp"]
    if build_cuda():
        sources += rel("csrc/cuda/*.cu")
        nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        return CUDAExtension(
            "samplewt_ops._C",
            sources,
            define_macros=[("SAMPLEWT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    return CppExtension("samplewt_ops._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)


setup(
    name="samplewt_ops",
    packages=find_packages(include=["samplewt_ops", "samplewt_ops.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
