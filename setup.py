"""Build of samplewt_ops: a CPU extension always, CUDA kernels when possible.

CUDA joins the build when the installed torch has CUDA (torch.version.cuda)
and a CUDA toolkit is found; no GPU needs to be visible.
SAMPLEWT_CUDA=0 forces a CPU-only build; SAMPLEWT_CUDA=1 requires CUDA.
Install against the torch you already have:
    pip install --no-build-isolation -e .

What this file decides, and why:
- C++ standard: the one the installed torch's headers require (ATen/ATen.h
  has `#if __cplusplus < ...`): C++17 up to torch 2.13, C++20 from torch 2.14.
  The same standard goes to the host compiler, to nvcc, and (through
  `python setup.py --print-cxx-std`, which imports nothing) to `make nvcc-check`.
- CUDA toolkit: CUDA_HOME (or CUDA_PATH) is kept when set. Otherwise the
  toolkit root is the directory that really holds bin/nvcc, include/ and
  lib64/libcudart: the nvcc on PATH may be a link, a copy or a wrapper script
  outside the toolkit, so its parent's parent (torch's own guess) is not
  trusted without that check. CUDA_HOME is set before torch.utils.cpp_extension
  is imported (it reads CUDA_HOME at import time) and on the module as well.
- GPU architectures: TORCH_CUDA_ARCH_LIST is honoured when set. When it is
  unset, torch builds for the visible GPUs; with no GPU visible (a CI machine,
  a build host), it would crash, so the build uses DEFAULT_ARCH_LIST:
  sm_80 and sm_90 machine code, plus compute_90 PTX that the driver compiles
  for newer chips (Blackwell and later).
"""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# sm_80 (A100), sm_90 (H100/H200) machine code; "+PTX" adds compute_90 PTX for newer GPUs.
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


# ---------------------------------------------------------------------------------------
# C++ standard of the installed torch (without importing torch)
# ---------------------------------------------------------------------------------------

def _torch_dir():
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(spec.origin)


def _torch_version():
    try:
        from importlib.metadata import version
        return version("torch")
    except Exception:
        return None


def cxx_std() -> str:
    """'c++17' or 'c++20': what the installed torch's headers require."""
    tdir = _torch_dir()
    if tdir:
        try:
            with open(os.path.join(tdir, "include", "ATen", "ATen.h")) as f:
                head = f.read(4096)
            m = re.search(r"__cplusplus\s*<\s*(\d{6})L", head)
            if m:
                return "c++20" if int(m.group(1)) >= 202002 else "c++17"
        except OSError:
            pass
    v = _torch_version()
    if v:
        m = re.match(r"(\d+)\.(\d+)", v)
        if m and (int(m.group(1)), int(m.group(2))) >= (2, 14):
            return "c++20"
    return "c++17"


if __name__ == "__main__" and sys.argv[1:] == ["--print-cxx-std"]:
    # For the Makefile (make nvcc-check): no torch import, no setuptools run.
    print(cxx_std())
    sys.exit(0)


# ---------------------------------------------------------------------------------------
# CUDA toolkit root
# ---------------------------------------------------------------------------------------

def _cudart_dir(root):
    """The directory of libcudart under a toolkit root, or None."""
    if not root:
        return None
    cands = [os.path.join(root, "lib64"), os.path.join(root, "lib")]
    cands += sorted(glob.glob(os.path.join(root, "targets", "*", "lib")))
    for d in cands:
        if glob.glob(os.path.join(d, "libcudart.so*")) or glob.glob(os.path.join(d, "libcudart_static.a")):
            return d
    return None


def _is_toolkit(root):
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) \
        and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")) \
        and _cudart_dir(root) is not None


def _nvcc_top(nvcc):
    """The toolkit root nvcc itself reports (`#$ TOP=...` of a dry run), or None.

    This sees through wrapper scripts that exec the real nvcc."""
    try:
        r = subprocess.run([nvcc, "--dryrun", "-v", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                           capture_output=True, text=True, timeout=60)
    except Exception:
        return None
    for line in (r.stderr + "\n" + r.stdout).splitlines():
        m = re.match(r"#\$\s*TOP=(.+)$", line.strip())
        if m:
            return os.path.realpath(m.group(1).strip())
    return None


def find_cuda_home():
    """(root or None, how it was found). CUDA_HOME / CUDA_PATH win when set."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    cands = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append((os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "realpath of nvcc on PATH"))
        top = _nvcc_top(nvcc)
        if top:
            cands.append((top, "TOP reported by nvcc on PATH"))
        cands.append((os.path.dirname(os.path.dirname(nvcc)), "parent of nvcc on PATH"))
    cands.append(("/usr/local/cuda", "/usr/local/cuda"))
    cv = _torch_cuda_version()
    if cv:
        cands.append((f"/usr/local/cuda-{cv}", f"/usr/local/cuda-{cv} (torch's CUDA)"))
    cands += [(p, p) for p in sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    cands.append(("/opt/cuda", "/opt/cuda"))
    for root, how in cands:
        if _is_toolkit(root):
            return os.path.realpath(root), how
    return None, "no CUDA toolkit found (no nvcc with include/ and libcudart beside it)"


def _torch_cuda_version():
    """torch.version.cuda of the installed torch, read from torch/version.py without importing torch."""
    tdir = _torch_dir()
    if not tdir:
        return None
    try:
        with open(os.path.join(tdir, "version.py")) as f:
            m = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([\d.]+)['\"]", f.read(), re.M)
        return m.group(1) if m else None
    except OSError:
        return None


def _want_cuda_flag():
    return os.environ.get("SAMPLEWT_CUDA", "").strip()


CUDA_HOME_FOUND, CUDA_HOME_HOW = (None, "SAMPLEWT_CUDA=0")
if _want_cuda_flag() != "0" and _torch_cuda_version():
    CUDA_HOME_FOUND, CUDA_HOME_HOW = find_cuda_home()
    if CUDA_HOME_FOUND and not os.environ.get("CUDA_HOME"):
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported, below.
        os.environ["CUDA_HOME"] = CUDA_HOME_FOUND

from setuptools import find_packages, setup  # noqa: E402  (after --print-cxx-std, which needs neither)

try:
    import torch
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # torch is deliberately not a build requirement
    raise SystemExit(
        "samplewt_ops builds against an installed torch: pip install torch, then "
        "pip install --no-build-isolation -e ."
    ) from exc

if CUDA_HOME_FOUND:
    cpp_extension.CUDA_HOME = CUDA_HOME_FOUND  # in case it was imported before this file ran


def build_cuda() -> bool:
    flag = _want_cuda_flag()
    if flag == "0":
        return False
    can = bool(torch.version.cuda) and CUDA_HOME_FOUND is not None
    if flag == "1" and not can:
        raise SystemExit(
            "SAMPLEWT_CUDA=1 but CUDA cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA toolkit: {CUDA_HOME_HOW}. "
            "Install a CUDA build of torch and a CUDA toolkit (or set CUDA_HOME), "
            "or unset SAMPLEWT_CUDA."
        )
    return can


def _visible_gpus() -> int:
    try:
        return torch.cuda.device_count()
    except Exception:
        return 0


def cuda_arch_list() -> str:
    """Sets TORCH_CUDA_ARCH_LIST for torch's build when it must not guess; returns what is used."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    if _visible_gpus() == 0:
        # torch.utils.cpp_extension would take the list from the visible GPUs and crash
        # (IndexError) when there are none.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        return DEFAULT_ARCH_LIST
    return "the visible GPUs'"


def extension(with_cuda: bool):
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    std = "-std=" + cxx_std()
    # Loops on 32-byte boundaries: the element-wise kernels' hot loops moved by 10-20%
    # (in cache) with unrelated code changes, wherever GCC's default placed them.
    cxx = ["-O3", std, "-fopenmp", "-fdiagnostics-color=always", "-falign-loops=32"]
    # libstdc++ by its shared object's file name, before the compiler's own: torch uses
    # the shared libstdc++, and a second, static copy inside the extension breaks the
    # streams that format torch's error messages (a truncated message, or SIGSEGV). The
    # GPU machines' /opt/gcc/bin/g++ wrapper searches a -B folder that holds only
    # libstdc++.a, so a plain -lstdc++ still links it statically there.
    link = ["-fopenmp"] + (["-l:libstdc++.so.6"] if sys.platform.startswith("linux") else [])
    # setuptools skips the extension when no source is newer than it: headers and this
    # file (its flags) count too, else a header edit leaves a stale build.
    depends = rel("csrc/*.h") + rel("csrc/*/*.h") + rel("csrc/*/*.cuh") + ["setup.py"]
    if with_cuda:
        arches = cuda_arch_list()
        print(f"samplewt_ops: building CUDA kernels: CUDA_HOME={CUDA_HOME_FOUND} ({CUDA_HOME_HOW}), "
              f"architectures {arches}, {std}", file=sys.stderr)
        sources += rel("csrc/cuda/*.cu")  # not recursive: csrc/cuda/standalone/ stays out
        nvcc = ["-O3", std, "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        library_dirs = []
        cudart = _cudart_dir(CUDA_HOME_FOUND)
        if cudart and os.path.realpath(cudart) != os.path.realpath(os.path.join(CUDA_HOME_FOUND, "lib64")):
            library_dirs.append(cudart)  # torch only adds $CUDA_HOME/lib64
        return CUDAExtension(
            "samplewt_ops._C",
            sources,
            define_macros=[("SAMPLEWT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
            library_dirs=library_dirs,
            depends=depends,
        )
    print(f"samplewt_ops: building the CPU extension only ({std}; CUDA: "
          f"torch.version.cuda={torch.version.cuda!r}, toolkit: {CUDA_HOME_HOW})", file=sys.stderr)
    return CppExtension("samplewt_ops._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link,
                        depends=depends)


class BuildExt(BuildExtension):
    """torch's BuildExtension (ninja), with object files kept between builds.

    `pip install -e .` hands build_ext a fresh temporary directory every time, so every
    install recompiled everything. When the build directory is such a temporary one
    (outside this tree) or setuptools' default build/temp.<platform>, the objects go to
    build/temp-<python>-torch<version>-<cpu|cuda>/ instead: ninja then recompiles only
    what changed (it also notices changed flags), `pip install -e .` and
    `setup.py build_ext --inplace` share them, and builds against another torch, or with
    and without CUDA, keep separate objects. An explicit --build-temp inside the tree wins.
    """

    def finalize_options(self):
        super().finalize_options()
        tmp = os.path.realpath(self.build_temp or "")
        here = os.path.realpath(HERE)
        default = os.path.dirname(tmp) == os.path.join(here, "build") and os.path.basename(tmp).startswith("temp.")
        if default or not tmp.startswith(here + os.sep):
            kind = "cuda" if WITH_CUDA else "cpu"
            tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{kind}".replace("+", "_")
            self.build_temp = os.path.join(HERE, "build", "temp-" + tag)


WITH_CUDA = build_cuda()
EXT = extension(WITH_CUDA)

setup(
    name="samplewt_ops",
    packages=find_packages(include=["samplewt_ops", "samplewt_ops.*"]),
    ext_modules=[EXT],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
