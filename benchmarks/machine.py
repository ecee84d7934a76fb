"""The machine a benchmark ran on, for benchmarks/bench.py: its tag (the results' file
name, e.g. cpu-amd-epyc-2c or cuda-h200) and the environment stored in the JSON."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess

import torch

from timing import NTHREADS

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def slug(s):
    s = s.lower()
    s = re.sub(r"\((r|tm|c)\)", " ", s)
    s = re.sub(r"\b(nvidia|processor|cpu|with|radeon graphics|\d+-core)\b", " ", s)
    s = re.sub(r"@.*$", "", s)
    s = re.sub(r"[^a-z0-9.]+", "-", s).strip("-")
    return s or "unknown"


def machine_tag(device):
    if device == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(0))
    return f"cpu-{slug(cpu_model())}-{NTHREADS}c"


def env_info(device, swo_info):
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "samplewt_ops": swo_info,
        "env_vars": {k: os.environ[k] for k in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS",
                                                 "MALLOC_CONF", "LD_PRELOAD")
                     if k in os.environ},
    }
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            info["thp_enabled"] = f.read().strip()
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
            text=True, timeout=10).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update({"device_name": p.name, "cuda": torch.version.cuda,
                     "device_memory_gb": round(p.total_memory / 2**30, 1),
                     "sm": f"{p.major}.{p.minor}"})
        try:
            import liger_kernel  # noqa: F401
            from importlib.metadata import version
            info["liger_kernel"] = version("liger-kernel")
        except Exception:
            info["liger_kernel"] = None
    else:
        info["device_name"] = cpu_model()
    return info

