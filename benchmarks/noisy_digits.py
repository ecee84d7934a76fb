#!/usr/bin/env python
"""Noisy labels on handwritten digits: can per-sample weighting keep a model off the wrong labels?

The second real-data run (after imbalanced_digits.py), on scikit-learn's bundled
digits (8x8 images, 10 classes, no download), with symmetric label noise on the
training split and a clean test split.

Data, per seed:
  * training split: 50 images of every class (500), pixels scaled to [0, 1];
  * test split: the other 1297 images (125 to 133 per class), labels untouched;
  * symmetric noise at rate r: round(r * 500) training images, drawn at random,
    get a label drawn uniformly from the 9 other classes (so exactly that fraction
    of the training labels is wrong). The seed sets the split, the noise, the
    initialisation and the batch order; every method sees the same ones.

Model and training as in imbalanced_digits.py: an MLP 64-128-10 (ReLU) on the
CPU, Adam (lr 3e-3), batch 32, fixed seeds; 100 epochs here, long enough for plain
CE to fit most of the wrong labels. The model of the last epoch is evaluated (no
early stopping; the test split is never used during training).

Methods (every loss is samplewt_ops'):
  plain CE            cross_entropy
  focal               focal_loss, gamma=2
  LossEMA             cross_entropy(table=AdaptiveWeights(LossEMA()), indices=idx)
  OHEM                OHEM(keep_ratio=0.7)
  GHM                 GHM(bins=10, momentum=0.75)
  SelfPaced hard/soft SelfPaced(threshold=ln 10, growth=1.01, soft=False/True): ln 10 is
                      the loss of a uniform prediction (train on the samples the model
                      does better than chance on), raised by 1% an epoch
  SmallLoss           SmallLoss(forget_rate=r, ramp_epochs=10): the (1 - f_e) fraction of
                      the samples with the smallest loss EMA keep weight 1, the rest 0,
                      f_e = r * min(1, epoch / 10); r is the true noise rate, as Co-teaching
                      assumes it known
  SmallLoss (0.3)     the same with forget_rate 0.3 at every noise level (rate not known)
SelfPaced and SmallLoss can give a whole batch weight 0, where a weighted mean is
0/0: their loss is the weighted sum divided by the batch size.

Metrics, mean +- std over 10 seeds (sample std) per noise rate:
  * accuracy on the clean test split, and its per-seed difference to plain CE
    (paired: same split, noise, initialisation and batch order);
  * weight on corrupted: the share of the total weight the loss gave to the
    corrupted samples over the last epoch, sum over its batches of the weights of
    the corrupted samples / sum of all weights, with the weights each batch really
    used (the policy's batch weights; focal: its modulating factor (1 - p_y)^gamma;
    plain CE: 1, so the share is the noise rate);
  * corrupted labels fitted: the share of the corrupted training samples that the
    final model predicts with their wrong label (memorisation).
Plain CE is also trained on the clean labels, as the no-noise reference.

Outputs: markdown tables on stdout, benchmarks/results/noisy_digits.json and
benchmarks/results/noisy_digits.png. Run: python benchmarks/noisy_digits.py
(--seeds, --epochs, --noise, --quick for a smoke run).
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from imbalanced_digits import (LR, NUM_CLASSES, arg_parser, environment,  # noqa: E402
                               make_model, parse_args, run_epochs, so, summarise, training_config,
                               write_results)

NOISE_RATES = (0.2, 0.4)
TRAIN_PER_CLASS = 50
EPOCHS = 100
FOCAL_GAMMA = 2.0

METHODS = [
    "plain CE",
    "focal (gamma=2)",
    "LossEMA",
    "OHEM (0.7)",
    "GHM",
    "SelfPaced (hard)",
    "SelfPaced (soft)",
    "SmallLoss (forget rate = noise rate)",
    "SmallLoss (forget rate 0.3)",
]


def make_split(seed: int, noise: float):
    """A balanced training split with `noise` symmetric label noise, the rest as the clean test split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for c in range(NUM_CLASSES):
        pool = rng.permutation(np.flatnonzero(y == c))
        train_idx.extend(pool[:TRAIN_PER_CLASS].tolist())
        test_idx.extend(pool[TRAIN_PER_CLASS:].tolist())
    train_idx = rng.permutation(train_idx)
    y_true = y[train_idx]
    # the noise draws come after the split's, so every noise rate shares the split
    noise_rng = np.random.default_rng([seed, 1])
    n = len(train_idx)
    corrupted = np.zeros(n, dtype=bool)
    corrupted[noise_rng.choice(n, size=int(round(noise * n)), replace=False)] = True
    # a wrong label uniform over the 9 other classes: y + k mod 10, k in 1..9
    shift = noise_rng.integers(1, NUM_CLASSES, size=n)
    y_noisy = np.where(corrupted, (y_true + shift) % NUM_CLASSES, y_true)
    t = lambda a: torch.tensor(a, dtype=torch.int64)
    return x[t(train_idx)], t(y_noisy), t(corrupted).bool(), x[t(test_idx)], t(y[test_idx])


def _policy(method: str, noise: float):
    """A new policy object for `method` (None for the methods without a table)."""
    make = {
        "LossEMA": lambda: so.LossEMA(),
        "OHEM (0.7)": lambda: so.OHEM(0.7),
        "GHM": lambda: so.GHM(bins=10, momentum=0.75),
        "SelfPaced (hard)": lambda: so.SelfPaced(threshold=math.log(NUM_CLASSES), growth=1.01),
        "SelfPaced (soft)": lambda: so.SelfPaced(threshold=math.log(NUM_CLASSES), growth=1.01, soft=True),
        "SmallLoss (forget rate = noise rate)": lambda: so.SmallLoss(forget_rate=noise, ramp_epochs=10),
        "SmallLoss (forget rate 0.3)": lambda: so.SmallLoss(forget_rate=0.3, ramp_epochs=10),
    }.get(method)
    return make() if make is not None else None


def _recording(policy, sink: list):
    """Make `policy` append (indices, weights) of every batch it weights to `sink`:
    the weights the loss really used, per-batch policies included."""
    inner = policy.batch_weights

    def batch_weights(table, indices, loss=None, g=None, valid=None):
        w = inner(table, indices, loss=loss, g=g, valid=valid)
        sink.append((indices, w.detach()))
        return w

    policy.batch_weights = batch_weights
    return policy


def train_one(method: str, seed: int, epochs: int, data, noise: float):
    xtr, ytr, corrupted, xte, yte = data
    n = xtr.shape[0]
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)

    used = []  # (indices, weights) of each batch of the current epoch
    table = None
    policy = _policy(method, noise)
    if policy is not None:
        table = so.AdaptiveWeights(n, _recording(policy, used))
        if isinstance(policy, (so.SelfPaced, so.SmallLoss)):  # may weight a whole batch 0
            loss_fn = lambda lg, t, i: so.cross_entropy(lg, t, table=table, indices=i, reduction="sum") / t.shape[0]
        else:
            loss_fn = lambda lg, t, i: so.cross_entropy(lg, t, table=table, indices=i)
    elif method == "plain CE":
        def loss_fn(lg, t, i):
            used.append((i, torch.ones(t.shape[0])))
            return so.cross_entropy(lg, t)
    elif method.startswith("focal"):
        def loss_fn(lg, t, i):
            with torch.no_grad():
                p_y = torch.softmax(lg.float(), dim=1).gather(1, t[:, None]).squeeze(1)
            used.append((i, (1.0 - p_y) ** FOCAL_GAMMA))
            return so.focal_loss(lg, t, gamma=FOCAL_GAMMA)
    else:
        raise ValueError(method)

    loss = run_epochs(model, opt, loss_fn, xtr, ytr, epochs, table,
                      lambda: torch.randperm(n, generator=gen), before_epoch=used.clear)

    idx = torch.cat([i for i, _ in used])
    w = torch.cat([w for _, w in used]).double()
    total = float(w.sum())
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
        fitted = model(xtr[corrupted]).argmax(1) == ytr[corrupted]
    return {
        "test_accuracy": acc,
        "weight_on_corrupted": float(w[corrupted[idx]].sum()) / total if total > 0 else float("nan"),
        "corrupted_fitted": float(fitted.float().mean()) if fitted.numel() else float("nan"),
        "final_train_loss": float(loss.detach()),
    }


KEYS = ("test_accuracy", "weight_on_corrupted", "corrupted_fitted")


def summarise_runs(per_seed: dict, keys=KEYS) -> dict:
    """Mean/std of every metric, and the accuracy's paired difference to plain CE."""
    out = {}
    for m, runs in per_seed.items():
        out[m] = {}
        for key in keys:
            vals = [r[key] for r in runs]
            mean, std = summarise(vals)
            out[m][key] = {"mean": mean, "std": std, "values": vals}
        if "plain CE" in per_seed:
            diff = [r["test_accuracy"] - b["test_accuracy"] for r, b in zip(runs, per_seed["plain CE"])]
            dm, ds = summarise(diff)
            out[m]["test_accuracy"]["paired_delta_vs_plain_ce"] = {"mean": dm, "std": ds}
    return out


def print_table(noise: float, summary: dict) -> None:
    print(f"\n{noise:.0%} symmetric label noise\n")
    paired = "plain CE" in summary
    print("| method | clean test accuracy |" + (" Δ vs plain CE (paired) |" if paired else "")
          + " weight on corrupted (last epoch) | corrupted labels fitted |")
    print("| --- | --- |" + (" --- |" if paired else "") + " --- | --- |")
    for m, s in summary.items():
        a = s["test_accuracy"]
        row = f"| {m} | {a['mean']:.3f} ± {a['std']:.3f} |"
        if paired:
            d = a["paired_delta_vs_plain_ce"]
            row += f" {d['mean']:+.3f} ± {d['std']:.3f} |"
        for key in KEYS[1:]:
            row += f" {s[key]['mean']:.3f} ± {s[key]['std']:.3f} |"
        print(row)


def plot(summaries: dict, clean: dict, path: str, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = list(summaries)
    names = list(summaries[rates[0]])
    ys = np.arange(len(names))
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.9), sharey=True)
    h = 0.8 / len(rates)
    panels = [("test_accuracy", "clean test accuracy (dotted: plain CE on clean labels)"),
              ("weight_on_corrupted", "share of the weight on corrupted samples, last epoch (dotted: noise rate)")]
    for ax, (key, xlabel) in zip(axes, panels):
        for k, r in enumerate(rates):
            means = [summaries[r][m][key]["mean"] for m in names]
            stds = [summaries[r][m][key]["std"] for m in names]
            off = (k - (len(rates) - 1) / 2) * h
            ax.barh(ys + off, means, height=h * 0.95, xerr=stds, color=colors[k % len(colors)],
                    label=f"{r:.0%} noise", capsize=2)
            ax.axvline(r if key == "weight_on_corrupted" else np.nan, color=colors[k % len(colors)],
                       linewidth=0.9, linestyle=":")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    if clean:
        axes[0].axvline(clean["test_accuracy"]["mean"], color="black", linewidth=0.9, linestyle=":")
    lo = min(summaries[r][m]["test_accuracy"]["mean"] for r in rates for m in names)
    axes[0].set_xlim(max(0.0, lo - 0.1), 1.0)
    top = max(v["mean"] + v["std"] for r in rates for v in (s["weight_on_corrupted"] for s in summaries[r].values()))
    axes[1].set_xlim(0, min(1.0, max(top, max(rates)) + 0.05))
    axes[0].set_yticks(ys)
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Digits with symmetric label noise, MLP, {seeds} seeds (mean ± std)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = arg_parser(__doc__, EPOCHS, 3)
    ap.add_argument("--noise", type=float, nargs="+", default=list(NOISE_RATES), help="noise rates (default 0.2 0.4)")
    args, methods = parse_args(ap, argv, METHODS)
    if any(not 0.0 < r < 0.9 for r in args.noise):
        ap.error("--noise rates must be in (0, 0.9)")

    t0 = time.time()
    clean_runs = []
    per_seed = {r: {m: [] for m in methods} for r in args.noise}
    for seed in range(args.seeds):
        clean_runs.append(train_one("plain CE", seed, args.epochs, make_split(seed, 0.0), 0.0))
        for r in args.noise:
            data = make_split(seed, r)
            for m in methods:
                per_seed[r][m].append(train_one(m, seed, args.epochs, data, r))
        print(f"seed {seed} done ({time.time() - t0:.1f} s)", file=sys.stderr)

    summaries = {r: summarise_runs(per_seed[r]) for r in args.noise}
    clean = summarise_runs({"clean": clean_runs}, keys=("test_accuracy",))["clean"]
    ca = clean["test_accuracy"]
    print(f"\nDigits with symmetric label noise, {args.seeds} seeds, {args.epochs} epochs "
          f"({time.time() - t0:.0f} s, backend {so.backend()['implementation']})")
    print(f"\nplain CE on the clean labels (no noise): test accuracy {ca['mean']:.3f} ± {ca['std']:.3f}")
    for r in args.noise:
        print_table(r, summaries[r])

    if args.quick:
        return 0
    result = {
        "benchmark": "noisy_digits",
        "config": {
            "dataset": "sklearn.datasets.load_digits",
            "noise": "symmetric: a corrupted label is uniform over the other classes",
            "noise_rates": args.noise,
            "train_per_class": TRAIN_PER_CLASS,
            "n_test": int(make_split(0, 0.0)[3].shape[0]),
            **training_config(args),
            "policies": {f"{r:g}": {m: repr(_policy(m, r)) for m in methods if _policy(m, r) is not None}
                         for r in args.noise},
        },
        "environment": environment(),
        "elapsed_s": time.time() - t0,
        "clean_labels_plain_ce": clean,
        "summary": {f"{r:g}": summaries[r] for r in args.noise},
        "per_seed": {f"{r:g}": per_seed[r] for r in args.noise},
    }
    write_results(result, args.out, "noisy_digits", lambda path: plot(summaries, clean, path, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
