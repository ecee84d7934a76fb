"""table.sync() across 2 real processes (gloo on 127.0.0.1), compared with one process."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from samplewt_ops.samplers import DistributedAdaptiveSampler
from samplewt_ops.weights import GHM, AdaptiveWeights, LossEMA

WORLD = 2
N = 64
STEPS = 4
BATCH = 10


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _disjoint_plan(epoch):
    """Per step, each rank's batch; the ranks use disjoint halves of the dataset in an epoch
    (a rank may repeat indices within and across its own batches)."""
    g = torch.Generator().manual_seed(100 + epoch)
    halves = torch.randperm(N, generator=g).chunk(WORLD)
    plan = []
    for _ in range(STEPS):
        step = []
        for r in range(WORLD):
            idx = halves[r][torch.randint(0, len(halves[r]), (BATCH,), generator=g)]
            step.append((idx, torch.rand(BATCH, generator=g) * 3, torch.rand(BATCH, generator=g), torch.rand(BATCH, generator=g)))
        plan.append(step)
    return plan


def _overlap_plan():
    """Per step, both ranks draw from the whole dataset (indices overlap across ranks)."""
    g = torch.Generator().manual_seed(7)
    return [
        [
            (torch.randint(0, 12, (BATCH,), generator=g), torch.rand(BATCH, generator=g) * 3,
             torch.rand(BATCH, generator=g), torch.rand(BATCH, generator=g))
            for _ in range(WORLD)
        ]
        for _ in range(STEPS)
    ]


def _worker(rank, port, out_dir):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        # 1) disjoint indices per epoch, sync at the end of each epoch
        table = AdaptiveWeights(N, LossEMA(momentum=0.7))
        for epoch in range(2):
            for step in _disjoint_plan(epoch):
                idx, loss, gn, gm = step[rank]
                table.observe(idx, loss, gn, gm)
            results[f"disjoint_before_sync_{epoch}"] = table.state_dict()
            table.sync()
            table.step_epoch()
        table.sync()  # nothing changed since: a no-op
        results["disjoint"] = table.state_dict()
        results["disjoint_weights"] = table.weights
        # a sampler on the synced table: the ranks' shares of one draw
        sampler = DistributedAdaptiveSampler(table, num_samples=20, seed=3)
        sampler.set_epoch(1)
        results["sampler"] = list(sampler)

        # 2) overlapping indices, GHM, sync after every step
        table = AdaptiveWeights(12, GHM(bins=4, momentum=0.6, history_momentum=0.8))
        bins_before = []
        for step in _overlap_plan():
            idx, loss, gn, gm = step[rank]
            table.batch_weights(idx, loss=loss, g=gm)
            table.observe(idx, loss, gn, gm)
            bins_before.append(table.policy_state["bin_ema"].clone())
            table.sync()
        results["overlap"] = table.state_dict()
        results["overlap_bins_before"] = bins_before
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _assert_state_equal(a, b, exact=True):
    for key in ("loss_ema", "grad_norm_ema", "seen_count", "epoch"):
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)
    for key in a["policy_state"]:
        if exact:
            assert torch.equal(a["policy_state"][key], b["policy_state"][key]), key
        else:
            torch.testing.assert_close(a["policy_state"][key], b["policy_state"][key], rtol=1e-6, atol=1e-6)


def test_disjoint_sync_equals_single_process(rank_results):
    r0, r1 = rank_results
    # before the sync the ranks really differed
    assert not torch.equal(r0["disjoint_before_sync_0"]["loss_ema"], r1["disjoint_before_sync_0"]["loss_ema"])
    # single process: per step, rank 0's batch then rank 1's batch
    ref = AdaptiveWeights(N, LossEMA(momentum=0.7))
    for epoch in range(2):
        for step in _disjoint_plan(epoch):
            for idx, loss, gn, gm in step:
                ref.observe(idx, loss, gn, gm)
        ref.step_epoch()
    for res in rank_results:
        _assert_state_equal(res["disjoint"], ref.state_dict(), exact=True)
        assert torch.equal(res["disjoint_weights"], ref.weights)
    assert int(ref.seen_count.sum()) == 2 * STEPS * WORLD * BATCH


def test_distributed_sampler_shares(rank_results):
    s0, s1 = rank_results[0]["sampler"], rank_results[1]["sampler"]
    ref = AdaptiveWeights(N, LossEMA(momentum=0.7))
    ref.load_state_dict(rank_results[0]["disjoint"])
    full = [DistributedAdaptiveSampler(ref, 2, r, num_samples=20, seed=3) for r in range(2)]
    for s in full:
        s.set_epoch(1)
    assert s0 == list(full[0]) and s1 == list(full[1]) and len(s0) == len(s1) == 10


def test_overlapping_sync_every_step(rank_results):
    r0, r1 = rank_results
    _assert_state_equal(r0["overlap"], r1["overlap"], exact=True)  # identical tables on all ranks
    # per-sample state: one process observing, per step, the concatenation of the ranks' batches
    pol = GHM(bins=4, momentum=0.6, history_momentum=0.8)
    ref = AdaptiveWeights(12, pol)
    bins = None
    for k, step in enumerate(_overlap_plan()):
        idx, loss, gn, gm = (torch.cat(t) for t in zip(*step))
        ref.observe(idx, loss, gn, gm)
        # bin EMA: driven by the mean of the ranks' batch histograms
        hist = sum(torch.bincount(pol.bin_of(s[3]), minlength=4).double() for s in step) / WORLD
        bins = hist if k == 0 else 0.6 * bins + 0.4 * hist
        # and it is the mean of what the ranks held before the sync
        torch.testing.assert_close(
            bins.float(), (r0["overlap_bins_before"][k] + r1["overlap_bins_before"][k]) / 2, rtol=1e-6, atol=1e-6
        )
    got = r0["overlap"]
    assert torch.equal(got["seen_count"], ref.seen_count)
    torch.testing.assert_close(got["loss_ema"], ref.loss_ema, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["grad_norm_ema"], ref.grad_norm_ema, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["policy_state"]["g_ema"], ref.policy_state["g_ema"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["policy_state"]["bin_ema"], bins.float(), rtol=1e-6, atol=1e-6)
    assert int(got["policy_state"]["bin_steps"]) == STEPS
