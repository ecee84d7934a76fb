#!/usr/bin/env python3
"""The GPU proof in one command: `make gpu-check` (= python3 tools/gpu_check.py).

Runs everything of samplewt_ops that needs a GPU, on a GPU machine, with that machine's
own python and torch (no venv, no network), and ends with one summary:

  1. build    python setup.py build_ext --inplace with SAMPLEWT_CUDA=1 and MAX_JOBS = every
              core (architectures: the visible GPU's, or TORCH_CUDA_ARCH_LIST), then checks
              that samplewt_ops.backend() lists cuda and that every op has a CUDA kernel
  2. tests    the whole pytest suite with CUDA (tests/test_cuda.py included, and its
              N x C > 2^31 case): one pytest per test file, several at once (the CPU-only
              files need not wait for the GPU ones), summarised from their JUnit XML
  3. memcheck, racecheck
              compute-sanitizer over a few fast tests of tests/test_cuda.py (pytest -k),
              the two tools side by side (neither is timed, so they need not take turns)
  4. bench    benchmarks/bench.py --device cuda, one run per op (cross_entropy, focal_loss,
              sigmoid_focal_loss, so a hang in one leaves the others), with eager,
              torch.compile and Liger-Kernel columns; merged into
              benchmarks/results/cuda-<gpu>.json (bench.py's machine tag, e.g. cuda-h200)
  5. profile  benchmarks/profile_cuda.py: the kernels of one forward + backward of a few
              cases (torch.profiler), ours and eager, to build/gpu-check/profile.txt
  6. summary  tests passed/failed, sanitizer errors, and each target of the GPU-proof issue,
              met or missed, with its ratio ("not measured" where bench.py has no number)

Every step runs in a subprocess with its own timeout, inside an overall budget (--budget,
default 460 s, so the whole check ends within 8 minutes): a step that hangs is killed
(with its process group) and the others still report. The script catches everything: it
always prints the summary and never a traceback (tracebacks go to the log).

Without a GPU (a dry run, e.g. `make gpu-check-dry-run` in .venv-cuda) every step runs up
to the point where it needs the GPU and then says "no GPU" in one line: the build runs in
full (it needs no GPU), the suite is collected and tests/test_cuda.py runs (and skips),
the sanitizer's test selection is collected, Liger is installed from .whl/ and bench.py
is started (and stops: no CUDA).

Output: build/gpu-check/ holds gpu_check.log (everything, with each command's output),
gpu_check.json (the summary), junit.xml, and bench-<op>/ (each bench run's own JSON).
When the environment variable OUT is set, the log, the summary JSON, the JUnit XML and
the merged benchmark JSON are copied there as well (after every step).

Exit code: 0 every step passed and every target met; 1 a step failed (build, a test,
a sanitizer error, a bench error, a timeout); 2 no GPU (dry run) and nothing failed;
3 every step passed but a performance target was missed or not measured.

Wheels that travel (the GPU machine has no network). They lie in the git-ignored .whl/
folder of the repository, which has to be carried to the GPU machine with the tree:
  liger_kernel-0.8.5-py3-none-any.whl   liger-kernel 0.8.5 (pure Python + Triton), for the
      GPU machine's torch 2.11.0+cu130 and triton 3.6, which it uses as they are. It is
      installed with `pip install --no-index --find-links .whl --no-deps --target
      build/gpu-check/site liger-kernel` (so the machine's python stays untouched) and put
      on PYTHONPATH for bench.py. Without it, Liger's column says "not installed".
  ninja-1.13.2-py3-none-manylinux*_x86_64.whl
                                        only used when the machine has no ninja (without it
      torch falls back to a slow serial build); installed the same way.
  pytest-9.2.0, iniconfig-2.3.1, pluggy-1.7.0, packaging-26.4, pygments-2.21.0 (py3-none-any)
                                        only used when the machine's python has no pytest;
      installed with their dependencies from .whl/ alone.
Fetch them on a machine with network:
  pip download --no-deps -d .whl liger-kernel==0.8.5 ninja==1.13.2 pytest==9.2.0 \
      iniconfig==2.3.1 pluggy==1.7.0 packaging==26.4 pygments==2.21.0

Other modes: --check-kernels (the kernel check of step 1 alone, in the current python;
make test-cuda-build uses it), --help.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check_util as util  # noqa: E402
from gpu_check_report import copy_out, summary  # noqa: E402
from gpu_check_util import (  # noqa: E402
    ROOT,
    WORK,
    LOG_PATH,
    JUNIT_PATH,
    RESULTS,
    Log,
    _kill,
    _read,
    base_env,
    check_kernels,
    find_sanitizer,
    install_wheel,
    ncores,
    note,
    probe,
    run,
    say,
)


# A few fast tests of tests/test_cuda.py for compute-sanitizer: every op forward and
# backward (incl. rows split across blocks), the determinism check, and the row kernels
# at 600 x 4000 in float32 (block reductions in shared memory).
SANITIZE_K = ("test_forward_backward_without_sync or test_cuda_kernels_are_deterministic "
              "or (test_row_ops_match_cpu and 600-4000 and dtype0)")
SANITIZE_K_FALLBACK = "test_forward_backward_without_sync"

# (seconds) nominal timeout of each step, and the least time kept back for it while the
# steps before it run. Each step gets min(nominal, what the budget leaves after the later
# steps' reserves).
STEPS = [  # name, nominal, reserve
    ("build", 150, 40),
    ("tests", 180, 60),
    ("sanitizers", 90, 45),  # memcheck and racecheck, side by side (neither is timed)
    ("bench", 220, 120),
    ("profile", 60, 30),  # benchmarks/profile_cuda.py: the kernels of one call, for the next fix
]
BENCH_OPS = [("cross_entropy", 0.45), ("focal_loss", 0.28), ("sigmoid_focal_loss", 0.27)]


# ---------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------

class Ctx:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget
        self.results = {}      # step name -> dict(status, seconds, line, ...)
        self.gpu = False
        self.info = {}
        self.env = None
        self.skip = set()
        self.build_env = {}  # CC/CXX when the build fell back to another compiler

    def timeout_for(self, name):
        names = [s[0] for s in STEPS]
        i = names.index(name)
        later = sum(s[2] for s in STEPS[i + 1:])
        left = self.deadline - time.monotonic() - 5 - later
        nominal = STEPS[i][1]
        if name == "build" and not self.gpu:
            nominal = self.args.budget  # a dry run's later steps are quick; a 2-core build is not
        return max(10.0, min(nominal, left))

    def left(self):
        return self.deadline - time.monotonic()


def step_build(ctx):
    r = {"status": "failed"}
    env = base_env()
    # ninja: torch's fast parallel build needs the ninja binary on PATH.
    if not (ctx.info.get("ninja_bin") or shutil.which("ninja", path=env.get("PATH"))):
        ok, why = install_wheel("ninja", 60)
        env = base_env()
        note(f"ninja: {why}")
        r["ninja"] = why if ok else "not found: " + why + " (torch builds serially)"
    jobs = ncores()
    env["MAX_JOBS"] = str(jobs)
    env["SAMPLEWT_CUDA"] = "1"
    arches = env.get("TORCH_CUDA_ARCH_LIST") or ("the visible GPU's" if ctx.gpu else "setup.py's default (no GPU)")
    r["max_jobs"], r["arch"] = jobs, arches
    # With a GPU the build time is a target, so it is a clean build of this python and
    # torch's objects (setup.py keeps them in build/temp-<tag>/); --incremental keeps them.
    if ctx.gpu and not ctx.args.incremental and ctx.info.get("torch"):
        _clean_build(ctx)
        r["clean"] = True
    if not _build_and_check(ctx, env, r, jobs, arches):
        return r
    # An error raised by a C++ check must reach Python. Where it does not (the first GPU
    # run died of SIGSEGV at each one), log the toolchain and build again with the
    # distribution's own gcc, when that is another compiler.
    ok, why = util.raise_probe(env)
    r["raise_probe"] = why
    if not ok:
        so = sorted(glob.glob(os.path.join(ROOT, "samplewt_ops", "_C*.so")))
        util.toolchain_report(env, so[0] if so else None)
        alt = util.system_compiler(env)
        if alt is None or ctx.left() < 300:
            r.update(status="failed", line=r["line"] + "; " + why)
            return r
        note(f"build: again with CC={alt[0]} CXX={alt[1]} ({why})")
        env = dict(env, CC=alt[0], CXX=alt[1])
        _clean_build(ctx)
        if not _build_and_check(ctx, env, r, jobs, arches):
            return r
        ok, why2 = util.raise_probe(env)
        r["raise_probe"] = f"{why}; rebuilt with {alt[1]}: {why2}"
        r["compiler"] = alt[1]
        if not ok:
            r.update(status="failed", line=r["line"] + "; " + r["raise_probe"])
            return r
        ctx.build_env = {"CC": alt[0], "CXX": alt[1]}
        os.environ.update(ctx.build_env)  # later steps' environments (base_env) too
    r["line"] += "; " + r["raise_probe"]
    return r


def _clean_build(ctx):
    v = sys.version_info
    tag = f"py{v[0]}{v[1]}-torch{ctx.info.get('torch', '')}-cuda".replace("+", "_")
    shutil.rmtree(os.path.join(ROOT, "build", "temp-" + tag), ignore_errors=True)
    for so in glob.glob(os.path.join(ROOT, "samplewt_ops", "_C*.so")):
        os.remove(so)


def _build_and_check(ctx, env, r, jobs, arches):
    """Builds in place and checks every op has a CUDA kernel; fills r, True when ok."""
    r["status"] = "failed"
    to = ctx.timeout_for("build")
    rc, text, dt = run([sys.executable, "setup.py", "build_ext", "--inplace"], to, env=env, name="build")
    r["seconds"] = r.get("seconds", 0) + dt
    if rc is None:
        r.update(status="timeout", line=f"timed out after {dt:.0f} s (MAX_JOBS={jobs})")
        return False
    if rc != 0:
        errs = [l for l in text.splitlines() if re.search(r"error|Error|FAILED", l)][:3]
        r.update(line=f"build failed (rc {rc}) after {dt:.0f} s: " + (" | ".join(errs)[:300] or "see log"))
        return False
    rc2, text2, _ = run([sys.executable, os.path.join("tools", "gpu_check.py"), "--check-kernels"],
                        min(120, max(20, ctx.left() - 200)), env=env, name="check-kernels")
    for l in text2.splitlines():
        if l.startswith("check-kernels:") and ("every op" in l or "FAILED" in l or "nvcc targets" in l):
            note(l)
    kern = [l for l in text2.splitlines() if "every op has a CUDA kernel" in l]
    targets = [l.split(":", 2)[-1].strip() for l in text2.splitlines() if "nvcc targets" in l]
    r["targets"] = targets[0] if targets else None
    if rc2 != 0:
        bad = [l for l in text2.splitlines() if "FAILED" in l]
        r.update(line=f"built in {dt:.0f} s, but the kernel check failed: " + (bad[0] if bad else "see log"))
        return False
    r.update(status="ok", line=f"built in {dt:.0f} s ({'clean' if r.get('clean') else 'incremental'}) "
             f"with MAX_JOBS={jobs} for {arches}"
             + (f" ({r['targets']})" if r["targets"] else "") + "; "
             + (kern[0].split(":", 1)[1].strip() if kern else "kernels checked"))
    return True


def parse_junit(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    res = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failed_names": [], "cases": {}}
    for s in suites:
        for tc in s.iter("testcase"):
            name = f"{tc.get('classname', '')}::{tc.get('name', '')}"
            kind = "passed"
            if tc.find("failure") is not None:
                kind = "failed"
            elif tc.find("error") is not None:
                kind = "errors"
            elif tc.find("skipped") is not None:
                kind = "skipped"
            res[kind] += 1
            if kind in ("failed", "errors"):
                res["failed_names"].append(name)
            sk = tc.find("skipped")
            res["cases"][tc.get("name", "")] = (kind, (sk.get("message") if sk is not None else None))
    return res


def parse_verbose(text):
    """Counts from pytest -v lines (for a run that timed out before writing its XML)."""
    res = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failed_names": [], "cases": {}}
    for m in re.finditer(r"^(\S+::(\S+?)) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", text, re.M):
        kind = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "errors",
                "SKIPPED": "skipped", "XFAIL": "skipped"}[m.group(3)]
        res[kind] += 1
        if kind in ("failed", "errors"):
            res["failed_names"].append(m.group(1))
        res["cases"][m.group(2)] = (kind, None)
    return res


def _big_test(res):
    for name, (kind, msg) in res.get("cases", {}).items():
        if name.startswith("test_big_index"):
            return kind + (f" ({msg})" if kind == "skipped" and msg else "")
    return "not run"


def _counts(res):
    return (f"{res['passed']} passed, {res['failed']} failed, {res['errors']} errors, "
            f"{res['skipped']} skipped")


def step_tests(ctx):
    r = {"status": "failed"}
    env = base_env()
    py = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    if os.path.exists(JUNIT_PATH):
        os.remove(JUNIT_PATH)
    if not ctx.gpu:
        rc, text, dt = run(py + ["--collect-only", "-q", "tests"], min(120, ctx.timeout_for("tests")),
                           env=env, name="tests-collect")
        m = re.search(r"(\d+) tests? collected", text) or re.search(r"^(\d+) tests?", text, re.M)
        n = m.group(1) if m else "?"
        rc2, text2, dt2 = run(py + ["-q", "-rs", "--junitxml", JUNIT_PATH, "tests/test_cuda.py"],
                              min(120, ctx.timeout_for("tests")), env=env, name="tests-cuda")
        res = parse_junit(JUNIT_PATH) if os.path.exists(JUNIT_PATH) else parse_verbose(text2)
        r.update(seconds=dt + dt2, counts=res, big_index=_big_test(res))
        if rc not in (0,) or rc2 not in (0, 5):
            r.update(line=f"collection rc {rc}, tests/test_cuda.py rc {rc2}: see log")
            return r
        r.update(status="no GPU", line=f"the suite was collected ({n} tests); tests/test_cuda.py "
                 f"ran without one: {_counts(res)}")
        return r
    # The whole suite, one pytest process per test file, several at a time (the CPU-only
    # files need not wait for the GPU ones): wall time = the slowest file, not the sum.
    tdir = os.path.join(ROOT, "tests")
    files = sorted({f for pat in ("test_*.py", "*_test.py") for f in glob.glob(os.path.join(tdir, "**", pat),
                                                                         recursive=True)},
                   key=lambda f: -os.path.getsize(f))
    # The CUDA emulation runs on the CPU (CI runs it on every submission): here it would
    # only spend the step's time compiling its host extension.
    files = [f for f in files if os.path.basename(f) != "test_cuda_emulation.py"]
    first = [f for f in files if os.path.basename(f) == "test_cuda.py"]
    files = first + [f for f in files if f not in first]
    cores = ncores()
    par = max(1, min(len(files), max(2, cores // 2)))
    env["OMP_NUM_THREADS"] = str(max(1, cores // par))
    env["SAMPLEWT_EARLY_FAILURES"] = "1"  # tests/conftest.py: a crash later keeps the reports
    for old in glob.glob(os.path.join(WORK, "junit-*.xml")):
        os.remove(old)
    cmds = []
    for f in files:
        base = os.path.splitext(os.path.relpath(f, tdir))[0].replace(os.sep, "__")
        junit = os.path.join(WORK, f"junit-{base}.xml")
        cmds.append((base, py + ["-v", "-rfE", "--junitxml", junit, os.path.relpath(f, ROOT)], junit))
    to = ctx.timeout_for("tests")
    outs, dt = run_many(cmds, to, env=env, parallel=par)
    r["seconds"] = dt
    res = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failed_names": [], "cases": {}}
    timed_out, bad_rc, suites = [], [], []
    for base, cmd, junit in cmds:
        rc, text = outs.get(base, (None, ""))
        if rc is not None and os.path.exists(junit):
            one = parse_junit(junit)
            try:
                suites.extend(ET.parse(junit).getroot().iter("testsuite"))
            except Exception:
                pass
        else:
            one = parse_verbose(text)
        for k in ("passed", "failed", "errors", "skipped"):
            res[k] += one[k]
        res["failed_names"] += one["failed_names"]
        res["cases"].update(one["cases"])
        if rc is None:
            timed_out.append(base)
        elif rc not in (0, 5):
            bad_rc.append(f"{base} rc {rc}")
            if rc != 1 and not one["failed"] and not one["errors"]:
                res["errors"] += 1  # crashed or could not start: no test reported it
                res["failed_names"].append(f"{base} (pytest rc {rc}, see log)")
    try:
        merged = ET.Element("testsuites")
        merged.extend(suites)
        ET.ElementTree(merged).write(JUNIT_PATH, encoding="utf-8", xml_declaration=True)
    except Exception as e:
        note(f"cannot write {JUNIT_PATH}: {type(e).__name__}: {e}")
    r.update(counts=res, big_index=_big_test(res))
    how = f"{len(cmds)} files, {par} at a time"
    if timed_out:
        r.update(status="timeout", line=f"timed out after {dt:.0f} s ({', '.join(timed_out)} unfinished; {how}); "
                 f"so far {_counts(res)}")
        return r
    ok = not bad_rc and res["failed"] == 0 and res["errors"] == 0
    r.update(status="ok" if ok else "failed", line=f"{_counts(res)} in {dt:.0f} s ({how})")
    return r


def run_many(cmds, timeout, env=None, cwd=ROOT, parallel=2):
    """Runs [(name, cmd, _)] with at most `parallel` at once, all within one timeout.
    Returns ({name: (rc or None, output)}, seconds)."""
    t0 = time.monotonic()
    pending = list(cmds)
    running = {}  # name -> (Popen, file, path)
    outs = {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name, cmd, _ = pending.pop(0)
                path = os.path.join(WORK, f"tests-{name}.out")
                note(f"\n$ {' '.join(cmd)}   [started at {time.monotonic() - t0:.0f} s]")
                f = open(path, "w", encoding="utf-8", errors="replace")
                try:
                    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=cwd, env=env, start_new_session=True)
                except OSError as e:
                    f.write(f"cannot run: {e}\n")
                    f.close()
                    outs[name] = (127, _read(path))
                    continue
                running[name] = (p, f, path)
            for name in list(running):
                p, f, path = running[name]
                if p.poll() is not None:
                    f.close()
                    outs[name] = (p.returncode, _read(path))
                    note(f"[tests {name}: rc {p.returncode} at {time.monotonic() - t0:.0f} s]")
                    del running[name]
            if time.monotonic() - t0 > timeout:
                break
            time.sleep(0.2)
    finally:
        for name, (p, f, path) in running.items():
            _kill(p)
            f.close()
            outs[name] = (None, _read(path))
            note(f"[tests {name}: timed out at {time.monotonic() - t0:.0f} s]")
        for name, _, _ in pending:
            outs[name] = (None, "")
    for name, (rc, text) in outs.items():
        note(f"--- output of tests/{name.replace('__', '/')}.py (rc {rc}) ---")
        note(text.rstrip())
    return outs, time.monotonic() - t0


def _select_sanitize(ctx, env):
    """The -k expression and how many tests of tests/test_cuda.py it selects (collection only)."""
    py = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "tests/test_cuda.py"]
    for k in (ctx.args.sanitize_k, SANITIZE_K_FALLBACK):
        rc, text, _ = run(py + ["-k", k], 90, env=env, name="sanitize-collect")
        n = len(re.findall(r"^tests/test_cuda\.py::\S+", text, re.M))
        if n:
            return k, n
    return None, 0


def pytest_tail(text):
    """pytest's closing counts ('12 passed, 300 deselected in 40.1s' -> '12 passed, 300 deselected')."""
    for line in reversed(text.splitlines()):
        if re.search(r"\d+ (passed|failed|errors?|skipped|deselected)\b", line) and re.search(r" in [\d.]+s", line):
            return re.sub(r"\s+in [\d.]+s.*$", "", line.strip("= ")).strip()
    return "no pytest summary"


def step_sanitizers(ctx):
    """memcheck and racecheck over the same few tests, in two threads (one process each)."""
    env = base_env()
    cs = find_sanitizer()
    skip = ctx.skip
    tools = [t for t in ("memcheck", "racecheck") if t not in skip]
    out = {t: {"status": "skipped", "line": "skipped (--skip)"} for t in ("memcheck", "racecheck") if t in skip}
    k, n = _select_sanitize(ctx, env)
    for t in tools:
        out[t] = {"status": "failed", "errors": None}
    if not k:
        for t in tools:
            out[t]["line"] = "no test of tests/test_cuda.py matches the sanitizer selection (-k)"
        return out
    where = cs or "compute-sanitizer not found"
    if not ctx.gpu:
        for t in tools:
            out[t].update(status="no GPU", line=f"{where}; {n} tests selected (-k \"{k}\")")
        return out
    if not cs:
        for t in tools:
            out[t]["line"] = "compute-sanitizer not found (PATH, $CUDA_HOME/bin, nvcc's toolkit, /usr/local/cuda)"
        return out
    to = ctx.timeout_for("sanitizers")
    import threading

    def work(t):
        try:
            out[t] = step_sanitizer(t, cs, k, n, to, dict(env))
        except Exception as e:
            note(traceback.format_exc())
            out[t] = {"status": "error", "errors": None, "line": f"internal error: {type(e).__name__}: {e}"}
    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in tools]
    for th in threads:
        th.start()
    for th in threads:
        th.join(to + 60)
    for t in tools:
        if "line" not in out[t]:
            out[t].update(status="timeout", line="did not finish")
    return out


def step_sanitizer(tool, cs, k, n, to, env):
    r = {"status": "failed", "errors": None}
    if tool == "memcheck":
        # Without the caching allocator every tensor is its own allocation, so an
        # out-of-bounds access is caught rather than landing in a neighbour's block.
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    cmd = [cs, "--tool", tool, "--target-processes", "all", "--print-limit", "30",
           sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", "tests/test_cuda.py", "-k", k]
    rc, text, dt = run(cmd, to, env=env, name=tool)
    r["seconds"] = dt
    m = re.findall(r"ERROR SUMMARY: (\d+) errors?", text)
    errors = int(m[-1]) if m else None
    hz = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    extra = ""
    if hz:
        h, e, w = map(int, hz[-1])
        errors = max(errors or 0, e)
        extra = f", {h} hazards ({e} errors, {w} warnings)"
    r["errors"] = errors
    tests = pytest_tail(text)
    if rc is None:
        r.update(status="timeout", line=f"timed out after {dt:.0f} s ({n} tests selected)")
        return r
    ran = re.search(r"(\d+) passed", tests)
    ok = errors == 0 and rc == 0 and bool(ran)
    if not ran:
        tests += " (no test ran under the sanitizer)"
    r.update(status="ok" if ok else "failed",
             line=f"{'?' if errors is None else errors} errors{extra}; tests: {tests}; {dt:.0f} s (rc {rc})")
    return r


def step_bench(ctx):
    r = {"status": "failed", "rows": [], "runs": {}}
    # Liger-Kernel: the machine's own, else the wheels carried in .whl/.
    liger = ctx.info.get("liger_kernel")
    if liger:
        r["liger"] = f"liger-kernel {liger} (installed)"
    else:
        ok, why = install_wheel("liger-kernel", 60)
        if ok:
            p = probe(base_env(), timeout=60)
            if p.get("liger_kernel"):
                r["liger"] = f"liger-kernel {p['liger_kernel']} ({why})"
            else:
                r["liger"] = f"not installed (import failed: {p.get('liger_kernel_error', '?')})"
        else:
            r["liger"] = f"not installed ({why})"
    note(f"liger: {r['liger']}")
    env = base_env()
    bench = [sys.executable, os.path.join("benchmarks", "bench.py"), "--device", "cuda"]
    if not ctx.gpu:
        rc, text, dt = run(bench + ["--list"], 120, env=env, name="bench-dry")
        last = (text.strip().splitlines() or ["no output"])[-1][:200]
        r.update(seconds=dt, status="no GPU",
                 line=f"bench.py stopped where it needs one (rc {rc}: {last}); Liger: {r['liger']}")
        return r
    total = ctx.timeout_for("bench")
    t_end = time.monotonic() + total
    bad, dts = [], 0.0
    merged_env = None
    for i, (op, share) in enumerate(BENCH_OPS):
        rest = sum(s for _, s in BENCH_OPS[i:])
        to = max(15.0, (t_end - time.monotonic()) * share / rest)
        out = os.path.join(WORK, f"bench-{op}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = bench + ["--ops", op, "--no-scaling", "--min-time", str(ctx.args.min_time), "--out", out]
        rc, text, dt = run(cmd, to, env=env, name=f"bench-{op}")
        dts += dt
        js = sorted(glob.glob(os.path.join(out, "cuda-*.json")))
        r["runs"][op] = {"rc": rc, "seconds": dt, "json": js[0] if js else None}
        # the table, for the console
        lines = text.splitlines()
        at = next((i for i, l in enumerate(lines) if l.startswith("samplewt_ops CUDA benchmark")), None)
        if at is not None:
            print("\n".join(l for l in lines[at:] if not re.match(r"[WEI]\d{4} ", l)).strip(), flush=True)
        if rc is None:
            bad.append(f"{op} timed out after {dt:.0f} s")
        elif rc != 0:
            bad.append(f"{op} rc {rc}")
        if js:
            try:
                with open(js[0]) as f:
                    d = json.load(f)
                r["rows"].extend(d.get("rows", []))
                merged_env = merged_env or d
            except Exception as e:
                bad.append(f"{op}: unreadable JSON ({type(e).__name__})")
    r["seconds"] = dts
    if merged_env is not None:
        tag = merged_env.get("machine_tag") or "cuda-unknown"
        merged = dict(merged_env)
        merged["rows"] = r["rows"]
        merged["argv"] = ["(make gpu-check: one bench.py run per op)"] + [" ".join(
            ["--device", "cuda", "--ops", op, "--no-scaling", "--min-time", str(ctx.args.min_time)])
            for op, _ in BENCH_OPS]
        merged["gpu_check"] = {"runs": r["runs"], "liger": r["liger"]}
        try:
            os.makedirs(RESULTS, exist_ok=True)
            path = os.path.join(RESULTS, tag + ".json")
            with open(path, "w") as f:
                json.dump(merged, f, indent=1)
            r["json"] = path
        except Exception as e:
            bad.append(f"cannot write the merged JSON ({type(e).__name__}: {e})")
    dev = (merged_env or {}).get("env", {}).get("device_name", "?")
    where = os.path.relpath(r["json"], ROOT) if r.get("json") else "no JSON"
    if bad:
        r.update(line=f"{len(r['rows'])} rows on {dev} -> {where}; problems: " + "; ".join(bad))
    else:
        r.update(status="ok", line=f"{len(r['rows'])} rows on {dev} in {dts:.0f} s -> {where}")
    return r


def step_profile(ctx):
    """The kernels of one forward + backward per case (benchmarks/profile_cuda.py), saved
    as build/gpu-check/profile.txt: where the time goes, for whoever works on the kernels
    next (informational: no target reads it)."""
    cmd = [sys.executable, os.path.join("benchmarks", "profile_cuda.py")]
    if not ctx.gpu:
        rc, text, dt = run(cmd + ["--help"], 60, env=base_env(), name="profile-dry")
        return {"status": "no GPU", "seconds": dt,
                "line": f"profile_cuda.py needs a GPU (--help: rc {rc})"}
    path = os.path.join(WORK, "profile.txt")
    rc, text, dt = run(cmd + ["--out", path], ctx.timeout_for("profile"), env=base_env(), name="profile")
    first = next((l.strip() for l in text.splitlines() if l.startswith("ours ")), "no call profiled")
    if rc != 0:
        why = "timed out" if rc is None else f"rc {rc}"
        return {"status": "failed", "seconds": dt, "line": f"profile_cuda.py {why}; see the log",
                "json": path if os.path.isfile(path) else None}
    return {"status": "ok", "seconds": dt, "json": path,
            "line": f"{os.path.relpath(path, ROOT)} in {dt:.0f} s; first case, {first}"}


def main(argv=None):
    p = argparse.ArgumentParser(description="make gpu-check: the GPU proof in one command (see the header).")
    p.add_argument("--budget", type=float, default=460.0, help="seconds for all steps together (default 460)")
    p.add_argument("--min-time", type=float, default=0.3, help="bench.py --min-time (default 0.3)")
    p.add_argument("--sanitize-k", default=SANITIZE_K, help="pytest -k of the compute-sanitizer subset")
    p.add_argument("--skip", default="", help="comma-separated steps to skip (build, tests, memcheck, "
                                              "racecheck, sanitizers, bench, profile)")
    p.add_argument("--incremental", action="store_true",
                   help="with a GPU, keep earlier object files (default: a clean, timed build)")
    p.add_argument("--check-kernels", action="store_true",
                   help="only check that the importable samplewt_ops has a CUDA kernel for every op")
    args = p.parse_args(argv)
    if args.check_kernels:
        return check_kernels()

    os.makedirs(WORK, exist_ok=True)
    util.LOG = Log(LOG_PATH)
    ctx = Ctx(args)
    rc = 1
    try:
        say(f"gpu-check: {ROOT}, python {sys.executable}, budget {args.budget:.0f} s")
        ctx.info = probe(base_env())
        info = ctx.info
        ctx.gpu = bool(info.get("cuda_available") and info.get("device_count"))
        say(f"gpu-check: torch {info.get('torch')} (CUDA {info.get('torch_cuda')}), "
            f"GPU: {info.get('device_name', 'none')}, triton {info.get('triton')}, "
            f"ninja {info.get('ninja') or info.get('ninja_bin')}, liger-kernel {info.get('liger_kernel')}"
            + (f", probe: {info['probe_error']}" if "probe_error" in info else "")
            + (f", torch: {info['torch_error']}" if "torch_error" in info else ""))
        if not info.get("pytest"):
            ok, why = install_wheel("pytest", 60, deps=True)
            say(f"gpu-check: pytest: {why}")
        if not ctx.gpu:
            say("gpu-check: no GPU visible: dry run (each step stops where it needs the GPU)")
        skip = ctx.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        if "sanitizers" in skip:
            skip |= {"memcheck", "racecheck"}
        if {"memcheck", "racecheck"} <= skip:
            skip.add("sanitizers")
        fns = {"build": step_build, "tests": step_tests, "sanitizers": step_sanitizers, "bench": step_bench,
               "profile": step_profile}
        for name, _, _ in STEPS:
            subs = ["memcheck", "racecheck"] if name == "sanitizers" else [name]
            if name in skip:
                for sub in subs:
                    ctx.results[sub] = {"status": "skipped", "line": "skipped (--skip)"}
                continue
            if ctx.left() < 15:
                for sub in subs:
                    ctx.results[sub] = {"status": "timeout", "line": "not started: the budget ran out"}
                continue
            say(f"\n--- {name} (timeout {ctx.timeout_for(name):.0f} s) ---")
            try:
                r = fns[name](ctx)
                got = r if name == "sanitizers" else {name: r}
            except Exception as e:
                note(traceback.format_exc())
                got = {sub: {"status": "error", "line": f"internal error: {type(e).__name__}: {str(e)[:200]} "
                                                       "(see log)"} for sub in subs}
            for sub, r in got.items():
                ctx.results[sub] = r
                say(f"{sub}: {r.get('status')}: {r.get('line', '')}")
            copy_out([r.get("json") for r in got.values()])
    except BaseException as e:  # noqa: BLE001 (KeyboardInterrupt too: the summary still prints)
        note(traceback.format_exc())
        say(f"gpu-check: interrupted: {type(e).__name__}: {str(e)[:200]}")
        ctx.results.setdefault("internal", {"status": "error", "line": f"{type(e).__name__}"})
    try:
        rc = summary(ctx)
    except BaseException as e:  # noqa: BLE001
        note(traceback.format_exc())
        print(f"gpu-check: the summary failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        rc = 1
    return rc


if __name__ == "__main__":
    try:
        code = main()
    except BaseException as e:  # noqa: BLE001 (never a traceback)
        print(f"gpu-check: internal error: {type(e).__name__}: {str(e)[:200]}", flush=True)
        code = 1
    sys.exit(code)
