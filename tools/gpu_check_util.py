"""Helpers of tools/gpu_check.py: logging, subprocesses with timeouts, the probe of
the machine, wheels from .whl/, and the kernel check (--check-kernels)."""
from __future__ import annotations
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "build", "gpu-check")
LOG_PATH = os.path.join(WORK, "gpu_check.log")
SUMMARY_PATH = os.path.join(WORK, "gpu_check.json")
JUNIT_PATH = os.path.join(WORK, "junit.xml")
SITE = os.path.join(WORK, "site")  # wheels from .whl/ are installed here (--target)
WHEELS = os.path.join(ROOT, ".whl")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
SHOWN = ["build", "tests", "memcheck", "racecheck", "bench", "profile"]  # what the summary reports
BUILD_TARGET_S = 90.0  # seconds, the build-time target on the GPU machine

# ---------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------

class Log:
    def __init__(self, path):
        self.f = None
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.f = open(path, "w", encoding="utf-8", errors="replace")
        except OSError as e:
            print(f"gpu-check: cannot write {path} ({e}); logging to the console only")

    def both(self, msg=""):
        print(msg, flush=True)
        self.file(msg)

    def file(self, msg):
        if self.f:
            try:
                self.f.write(msg + "\n")
                self.f.flush()
            except Exception:
                pass


LOG: Log | None = None


def say(msg=""):
    LOG.both(msg)


def note(msg):
    LOG.file(msg)


# ---------------------------------------------------------------------------------------
# Subprocesses with a timeout that kills the whole process group
# ---------------------------------------------------------------------------------------

def run(cmd, timeout, env=None, cwd=ROOT, name="cmd", echo=False):
    """(rc or None on timeout, output, seconds). The output also goes to the log."""
    out_path = os.path.join(WORK, f"{name}.out")
    note(f"\n$ {' '.join(cmd)}   [cwd {cwd}, timeout {timeout:.0f} s]")
    t0 = time.monotonic()
    rc = None
    try:
        with open(out_path, "w", encoding="utf-8", errors="replace") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=cwd, env=env, start_new_session=True)
            try:
                rc = p.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                _kill(p)
                rc = None
    except FileNotFoundError as e:
        with open(out_path, "a") as out:
            out.write(f"cannot run: {e}\n")
        rc = 127
    dt = time.monotonic() - t0
    try:
        with open(out_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    note(text.rstrip())
    note(f"[{name}: {'timed out' if rc is None else 'rc ' + str(rc)} after {dt:.1f} s]")
    if echo and text.strip():
        print(text.rstrip(), flush=True)
    return rc, text, dt


def _kill(p):
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def base_env(extra_path=None):
    env = dict(os.environ)
    paths = [ROOT] + ([SITE] if os.path.isdir(SITE) else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if os.path.isdir(os.path.join(SITE, "bin")):
        env["PATH"] = os.path.join(SITE, "bin") + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def ncores():
    try:
        return len(os.sched_getaffinity(0))
    except Exception:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------
# Probing the machine (in a subprocess: a broken torch or driver cannot take us down)
# ---------------------------------------------------------------------------------------

PROBE = r"""
import json, shutil, sys
info = {"python": sys.version.split()[0]}
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = bool(torch.cuda.is_available())
    info["device_count"] = torch.cuda.device_count() if info["cuda_available"] else 0
    if info["device_count"]:
        p = torch.cuda.get_device_properties(0)
        info["device_name"] = p.name
        info["device_memory_gb"] = round(p.total_memory / 2**30, 1)
        info["sm"] = f"{p.major}.{p.minor}"
except Exception as e:
    info["torch_error"] = f"{type(e).__name__}: {e}"
for mod in ("triton", "ninja", "liger_kernel", "pytest", "setuptools"):
    try:
        m = __import__(mod)
        v = getattr(m, "__version__", None)
        if v is None:
            from importlib.metadata import version
            v = version(mod.replace("_", "-"))
        info[mod] = v
    except Exception as e:
        info[mod] = None
        info[mod + "_error"] = f"{type(e).__name__}: {str(e)[:200]}"
info["ninja_bin"] = shutil.which("ninja")
print("PROBE " + json.dumps(info))
"""


def probe(env, timeout=90):
    rc, text, _ = run([sys.executable, "-c", PROBE], timeout, env=env, name="probe")
    for line in text.splitlines():
        if line.startswith("PROBE "):
            try:
                return json.loads(line[6:])
            except ValueError:
                break
    return {"probe_error": f"rc {rc}: " + (text.strip().splitlines() or ["no output"])[-1][:300]}


def find_sanitizer():
    cands = [shutil.which("compute-sanitizer")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(os.path.join(os.environ[var], "bin", "compute-sanitizer"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), "compute-sanitizer"))
        try:
            r = subprocess.run([nvcc, "--dryrun", "-v", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                               capture_output=True, text=True, timeout=30)
            m = re.search(r"#\$\s*TOP=(\S+)", r.stderr + r.stdout)
            if m:
                cands.append(os.path.join(os.path.realpath(m.group(1)), "bin", "compute-sanitizer"))
        except Exception:
            pass
    cands += ["/usr/local/cuda/bin/compute-sanitizer"]
    cands += sorted(glob.glob("/usr/local/cuda-*/bin/compute-sanitizer"), reverse=True)
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


# ---------------------------------------------------------------------------------------
# Wheels from .whl/
# ---------------------------------------------------------------------------------------

def install_wheel(project, timeout, deps=False):
    """pip install --no-index --find-links .whl [--no-deps] --target build/gpu-check/site."""
    pattern = project.replace("-", "_") + "-*.whl"
    if not glob.glob(os.path.join(WHEELS, pattern)):
        return False, f"no {pattern} in .whl/"
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", WHEELS] + \
        ([] if deps else ["--no-deps"]) + \
        ["--upgrade", "--target", SITE, "--disable-pip-version-check", "-q", project]
    rc, text, _ = run(cmd, timeout, name=f"pip-{project}")
    if rc == 0:
        return True, f"installed from .whl/ into {os.path.relpath(SITE, ROOT)}"
    last = (text.strip().splitlines() or ["no output"])[-1][:200]
    return False, f"pip install from .whl/ failed ({'timed out' if rc is None else 'rc ' + str(rc)}: {last})"


# ---------------------------------------------------------------------------------------
# --check-kernels: backend() lists cuda and every op has a CUDA kernel
# ---------------------------------------------------------------------------------------

def check_kernels() -> int:
    try:
        import torch
        import samplewt_ops
    except Exception as e:
        print(f"check-kernels: cannot import samplewt_ops ({type(e).__name__}: {e})")
        return 1
    try:
        b = samplewt_ops.backend()
        where = os.path.dirname(os.path.abspath(samplewt_ops.__file__))
        print(f"check-kernels: samplewt_ops from {where}, torch {torch.__version__} "
              f"(CUDA {torch.version.cuda}), GPU visible: {torch.cuda.is_available()}")
        print(f"check-kernels: backend() = {b}")
        ok = b.get("implementation") == "compiled" and "cuda" in (b.get("devices") or [])
        if not ok:
            print("check-kernels: FAILED: backend() does not list compiled cuda kernels")
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("samplewt_ops::"))
        device_ops = [n for n in names if has(n, "CPU") or has(n, "CUDA")]
        free = [n for n in names if n not in device_ops]
        missing = [n for n in device_ops if not has(n, "CUDA")]
        print(f"check-kernels: {len(device_ops)} ops with device kernels: "
              + ", ".join(n.split("::", 1)[1] for n in device_ops))
        if free:
            print("check-kernels: device-independent ops (no CPU/CUDA kernel needed): "
                  + ", ".join(n.split("::", 1)[1] for n in free))
        if not device_ops:
            print("check-kernels: FAILED: no samplewt_ops op has a device kernel")
            ok = False
        if missing:
            print("check-kernels: FAILED: no CUDA kernel for " + ", ".join(missing))
            ok = False
        else:
            print(f"check-kernels: every op has a CUDA kernel ({len(device_ops)} of {len(device_ops)})")
        arches = sorted({a for f in glob.glob(os.path.join(ROOT, "build", "**", "build.ninja"), recursive=True)
                         if "cuda_emu" not in f
                         for a in re.findall(r"-gencode=arch=compute_\d+a?,code=\w+", _read(f))})
        if arches:
            print("check-kernels: nvcc targets in build.ninja: " + " ".join(a.split("=", 2)[2] for a in arches))
        print("check-kernels: " + ("ok" if ok else "FAILED"))
        return 0 if ok else 1
    except Exception as e:
        print(f"check-kernels: FAILED ({type(e).__name__}: {e})")
        return 1


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------
# Does an error raised by the extension's C++ checks reach Python? (the first GPU run,
# torch 2.11 built with /opt/gcc, died of SIGSEGV at every TORCH_CHECK that fired)
# ---------------------------------------------------------------------------------------

RAISE_PROBE = r"""
import torch, samplewt_ops
devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devs:
    x = torch.zeros(2, 3, device=dev)
    y = torch.zeros(5, dtype=torch.long, device=dev)  # wrong length: the C++ check raises
    try:
        torch.ops.samplewt_ops.cross_entropy(x, y, None, None, -100, 0.0, 1, True, False)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        print(f"RAISE-PROBE {dev} ok: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    else:
        print(f"RAISE-PROBE {dev} FAILED: no error raised")
"""


def raise_probe(env, timeout=120):
    """(ok, line): whether a C++ TORCH_CHECK of the built extension raises in Python."""
    rc, text, _ = run([sys.executable, "-c", RAISE_PROBE], timeout, env=env, name="raise-probe")
    oks = [l for l in text.splitlines() if l.startswith("RAISE-PROBE") and " ok: " in l]
    if rc == 0 and oks and not any("FAILED" in l for l in text.splitlines()):
        return True, "C++ errors raise in Python (" + ", ".join(l.split()[1] for l in oks) + ")"
    how = "timed out" if rc is None else (f"killed by signal {-rc}" if rc < 0 else f"rc {rc}")
    return False, f"a C++ check of the extension did not raise cleanly: {how}"


def toolchain_report(env, so_path, timeout=120):
    """Logs what decides how C++ exceptions unwind: the compilers, the extension's
    program headers (GNU_EH_FRAME), its libraries, and a native backtrace of the probe
    (cuda-gdb runs host programs too; the GPU machine has no gdb)."""
    cmds = [["sh", "-c", "echo CC=$CC CXX=$CXX; command -v c++ gcc g++; ${CXX:-c++} --version | head -1; "
             "/usr/bin/g++ --version 2>/dev/null | head -1; ld --version | head -1"]]
    if so_path:
        cmds += [["readelf", "-lW", so_path], ["ldd", so_path]]
    dbg = shutil.which("cuda-gdb") or shutil.which("gdb")
    if dbg:
        cmds.append([dbg, "-batch", "-ex", "run", "-ex", "bt 30", "--args", sys.executable, "-c", RAISE_PROBE])
    for i, cmd in enumerate(cmds):
        run(cmd, timeout if i == len(cmds) - 1 else 30, env=env, name=f"toolchain-{i}")


def system_compiler(env):
    """(CC, CXX) of the distribution's own gcc when it is not the compiler just used,
    else None."""
    cc, cxx = "/usr/bin/gcc", "/usr/bin/g++"
    if not (os.access(cc, os.X_OK) and os.access(cxx, os.X_OK)):
        return None
    used = env.get("CXX") or shutil.which("c++", path=env.get("PATH")) or ""
    if used and os.path.realpath(used) == os.path.realpath(cxx):
        return None
    return cc, cxx
