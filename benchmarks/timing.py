"""Timing and peak memory, for benchmarks/bench.py.

The main table: time_rounds times every contender of a case (ours, eager, compiled,
Liger, the floors) in the same rounds, medians; time_interleaved, the same for the
report's sections. time_cpu times one call alone (the scaling section:
torch.utils.benchmark.Timer, median of >= MIN_RUNS timed runs after warm-up, on
NTHREADS threads). An untimed setup (fresh logits for a call
that consumes its input) runs before each timed call. Peak memory: see the comment
above cpu_peak_bytes.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics

import torch
from torch.utils import benchmark

import samplewt_ops

NTHREADS = os.cpu_count() or 1


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------

MIN_RUNS = 5


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_cpu(call, setup=None, min_time=1.0, warmup=2):
    """Median seconds of >= MIN_RUNS timed runs after warm-up, with torch.utils.benchmark.

    Without setup: Timer.blocked_autorange (blocks of calls; more blocks until min_time
    and at least MIN_RUNS measurements).
    With setup (inplace mode, the call consumes its input): every run is Timer.timeit(1)
    whose untimed `setup` statement restores fresh logits first, so the copy is not in
    the time and every timed call sees real logits.
    """
    glb = {"call": call, "setup": setup}
    if setup is None:
        t = benchmark.Timer(stmt="call()", globals=glb, num_threads=NTHREADS)
        est = max(t.timeit(1).median for _ in range(max(1, warmup)))
        times = []
        while len(times) < MIN_RUNS:
            m = t.blocked_autorange(min_run_time=max(min_time, (MIN_RUNS + 0.5) * est))
            times.extend(m.times)
        return statistics.median(times), len(times)
    t = benchmark.Timer(stmt="call()", setup="setup()", globals=glb, num_threads=NTHREADS)
    for _ in range(max(1, warmup)):
        t.timeit(1)
    times, spent = [], 0.0
    while len(times) < MIN_RUNS or (spent < min_time and len(times) < 500):
        dt = t.timeit(1).median
        times.append(dt)
        spent += dt
    return statistics.median(times), len(times)


def time_rounds(entries, device="cpu", min_time=1.0, warmup=2, rounds=None):
    """{name: (median seconds per call, calls timed)} of every entry of `entries`
    ({name: (call, setup or None)}), all timed in the same rounds in one process: each
    round times a block of calls of every entry in turn, so that drift (clock, memory
    bandwidth, neighbours) hits every entry alike and their ratios are fair. Blocks are
    sized so that each entry gets about `min_time` in all; `rounds` rounds, by default 15,
    or 5 when an entry's one call takes more than a fifth of min_time. An entry with a
    setup (fresh logits for a call that consumes them) times each call alone, after its
    untimed setup (CUDA: events around the call)."""
    import time

    def run(call, setup, reps):
        if setup is None:  # one block, synchronised at both ends
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                call()
            sync(device)
            return (time.perf_counter() - t0) / reps
        spent = 0.0
        for _ in range(reps):
            setup()
            if device == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                call()
                e.record()
                e.synchronize()
                spent += s.elapsed_time(e) / 1e3
            else:
                t0 = time.perf_counter()
                call()
                spent += time.perf_counter() - t0
        return spent / reps

    est = {}
    for name, (call, setup) in entries.items():
        for _ in range(max(1, warmup)):
            if setup:
                setup()
            call()
        sync(device)
        est[name] = max(run(call, setup, 1), 1e-7)
    if rounds is None:
        rounds = 5 if max(est.values()) > min_time / 5 else 15
    reps = {name: max(1, min(10000, int(min_time / rounds / e))) for name, e in est.items()}
    samples = {name: [] for name in entries}
    for _ in range(rounds):
        for name, (call, setup) in entries.items():
            samples[name].append(run(call, setup, reps[name]))
    return {name: (statistics.median(v), len(v) * reps[name]) for name, v in samples.items()}


# ----------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------
# CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what was
#       allocated before the call.
# CPU:  torch has no CPU max_memory_allocated, so one call runs under
#       torch.profiler.profile(profile_memory=True). Every allocation and free made through
#       PyTorch's CPU allocator (ours' kernels, eager ATen ops, autograd, and the buffers
#       of inductor-generated code, which all allocate via at::empty*) is recorded as a
#       "[memory]" event with a signed byte count; summing them in time order gives the
#       exact running total of live bytes, and its maximum is the peak extra bytes of the
#       call (it includes the returned gradient). This is byte-exact and independent of
#       page-fault or glibc caching behaviour.
#       Memory obtained outside that allocator (e.g. a kernel that mmaps its own buffer)
#       would be invisible to it, so as a cross-check the same call is also measured by
#       the resident-set high-water mark: writing "5" to /proc/self/clear_refs resets
#       VmHWM to the current RSS (Linux >= 4.0), and VmHWM - RSS after the call is the
#       peak of touched pages. For logits of >= 256 MB (where glibc mmaps and unmaps every
#       such buffer, so RSS tracks live bytes) the table marks a figure with "†" when the
#       RSS peak exceeds the allocator peak by more than half the logits' size; both numbers
#       are in the JSON. (For small tensors glibc heap re-use makes RSS unreliable.)

_libc = None


def malloc_trim():
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except Exception:
        pass


def _proc_status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_peak_bytes(call, setup=None):
    """(allocator peak bytes, RSS high-water-mark bytes or None) of one call; see above."""
    if setup:
        setup()
    gc.collect()
    # Ours' cached output buffers back to the allocator: the call allocates its
    # gradient afresh, so the peak counts it as for the baselines.
    samplewt_ops.empty_cache()
    malloc_trim()  # return freed heap pages so that re-used memory is faulted in again
    base = None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status("VmRSS")
    except OSError:
        pass
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        call()
    hwm = _proc_status("VmHWM") if base is not None else None
    evs = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    evs.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in evs:
        live += e.nbytes()
        peak = max(peak, live)
    rss = max(0, hwm - base) if (base is not None and hwm is not None) else None
    return peak, rss


def cuda_peak_bytes(call, setup=None):
    if setup:
        setup()
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# ----------------------------------------------------------------------------------------
# Interleaved medians: the pairs of the report's sections (small sizes, tables, ...)
# ----------------------------------------------------------------------------------------

def time_interleaved(calls, device="cpu", rounds=15, min_time=0.5, warmup=3):
    """time_rounds over plain calls ({name: fn}), `rounds` rounds: the report's pairs."""
    return time_rounds({name: (fn, None) for name, fn in calls.items()}, device,
                       min_time=min_time, warmup=warmup, rounds=rounds)
