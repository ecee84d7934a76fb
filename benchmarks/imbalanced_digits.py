#!/usr/bin/env python
"""Long-tailed handwritten digits: do the weighting methods help the rare classes?

A real (small) training run on scikit-learn's bundled digits (8x8 images, 10
classes, no download), made long-tailed on the training split and evaluated on a
balanced test split.

Data, per seed:
  * a random order of the 10 classes, from head to tail;
  * test split: 50 images of every class (balanced);
  * training split: n_c = round(n_max * (1 / ratio) ** (rank_c / 9)) images of the class
    of rank rank_c, with n_max = 100 and imbalance ratio = 100 (100, 60, 36, 22,
    13, 8, 5, 3, 2, 1 images: 250 in all), drawn from the images left after the
    test split; pixels scaled to [0, 1].

Model and training: an MLP 64-128-10 (ReLU) on the CPU, Adam (lr 3e-3), batch 32,
60 epochs, fixed seeds (the seed sets the data split, the initialisation and the
batch order). The model of the last epoch is evaluated (no early stopping, the
test split is never used during training).

Methods (every loss is samplewt_ops'):
  plain CE                 cross_entropy
  CE class-weighted inv.   cross_entropy with weight=class_weights(train targets, "inverse")
  CE class-weighted eff.   ... class_weights(..., "effective", beta=0.99) (Cui et al. 2019)
  focal                    focal_loss, gamma=2
  LossEMA                  cross_entropy(table=AdaptiveWeights(LossEMA()), indices=idx)
  GradNormEMA              the same with GradNormEMA()
  OHEM                     OHEM(keep_ratio=0.7)
  GHM                      GHM(bins=10, momentum=0.75)
  SelfPaced                SelfPaced(threshold=1.0, growth=1.15), loss summed / batch size
                           (a batch may have all weights 0, where a weighted mean is 0/0)
  AdaptiveSampler balanced AdaptiveSampler over static weights 1 / n_{y_i}, plain CE
  AdaptiveSampler LossEMA  AdaptiveSampler reading a LossEMA table each epoch, plain CE;
                           the table observes every batch through table.observe

Metrics on the balanced test split: balanced accuracy (mean per-class recall) and
minority-class recall (mean recall of the 5 rarest training classes), mean +- std
over 10 seeds by default (sample std; at least 5 are needed for a fair report), and
the per-seed difference to plain CE (paired: same split, initialisation and seed),
mean +- std, which removes most of the split-to-split variation.

Outputs: a markdown table on stdout, benchmarks/results/imbalanced_digits.json and
benchmarks/results/imbalanced_digits.png. Run: python benchmarks/imbalanced_digits.py
(--seeds, --epochs, --quick for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import samplewt_ops as so
except ImportError:  # not installed: use the checkout this script lives in
    sys.path.insert(0, os.path.dirname(HERE))
    import samplewt_ops as so
NUM_CLASSES = 10
N_MAX = 100
RATIO = 100
TEST_PER_CLASS = 50
N_MINORITY = 5
BATCH = 32
LR = 3e-3

METHODS = [
    "plain CE",
    "CE class-weighted (inverse)",
    "CE class-weighted (effective)",
    "focal (gamma=2)",
    "LossEMA",
    "GradNormEMA",
    "OHEM (0.7)",
    "GHM",
    "SelfPaced",
    "AdaptiveSampler (class-balanced)",
    "AdaptiveSampler (LossEMA table)",
]


def make_split(seed: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(NUM_CLASSES)  # order[0] is the head class, order[-1] the rarest
    counts = {}
    train_idx, test_idx = [], []
    for rank, c in enumerate(order):
        n_c = int(round(N_MAX * (1.0 / RATIO) ** (rank / (NUM_CLASSES - 1))))
        pool = rng.permutation(np.flatnonzero(y.numpy() == c))
        test_idx.extend(pool[:TEST_PER_CLASS].tolist())
        train_idx.extend(pool[TEST_PER_CLASS : TEST_PER_CLASS + n_c].tolist())
        counts[int(c)] = n_c
    tr, te = torch.tensor(train_idx), torch.tensor(test_idx)
    minority = [int(c) for c in order[-N_MINORITY:]]
    return x[tr], y[tr], x[te], y[te], counts, minority


def make_model():
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, NUM_CLASSES))


def _observe_plain(table, idx, logits, y):
    """Feed a table the batch statistics without weighting the loss (sampler method)."""
    with torch.no_grad():
        logp = torch.log_softmax(logits.detach().float(), dim=1)
        p = logp.exp()
        loss = -logp.gather(1, y[:, None]).squeeze(1)
        grad_norm = (p - F.one_hot(y, NUM_CLASSES).float()).norm(dim=1)
        g = 1.0 - p.gather(1, y[:, None]).squeeze(1)
    table.observe(idx, loss, grad_norm, g)


def train_one(method: str, seed: int, epochs: int, data):
    xtr, ytr, xte, yte, counts, minority = data
    n = xtr.shape[0]
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)

    table, sampler, loss_fn = None, None, None
    policies = {
        "LossEMA": lambda: so.LossEMA(),
        "GradNormEMA": lambda: so.GradNormEMA(),
        "OHEM (0.7)": lambda: so.OHEM(0.7),
        "GHM": lambda: so.GHM(bins=10, momentum=0.75),
        "SelfPaced": lambda: so.SelfPaced(threshold=1.0, growth=1.15),
    }
    if method in policies:
        table = so.AdaptiveWeights(n, policies[method]())
        if method == "SelfPaced":
            loss_fn = lambda lg, t, i: so.cross_entropy(lg, t, table=table, indices=i, reduction="sum") / t.shape[0]
        else:
            loss_fn = lambda lg, t, i: so.cross_entropy(lg, t, table=table, indices=i)
    elif method == "plain CE":
        loss_fn = lambda lg, t, i: so.cross_entropy(lg, t)
    elif method.startswith("CE class-weighted"):
        kind = "inverse" if "inverse" in method else "effective"
        cw = so.class_weights(ytr, NUM_CLASSES, method=kind, beta=0.99)
        loss_fn = lambda lg, t, i: so.cross_entropy(lg, t, cw)
    elif method.startswith("focal"):
        loss_fn = lambda lg, t, i: so.focal_loss(lg, t, gamma=2.0)
    elif method == "AdaptiveSampler (class-balanced)":
        cnt = torch.bincount(ytr, minlength=NUM_CLASSES).float()
        sampler = so.AdaptiveSampler(1.0 / cnt[ytr], n, generator=gen)
        loss_fn = lambda lg, t, i: so.cross_entropy(lg, t)
    elif method == "AdaptiveSampler (LossEMA table)":
        table = so.AdaptiveWeights(n, so.LossEMA())
        sampler = so.AdaptiveSampler(table, n, generator=gen)

        def loss_fn(lg, t, i):
            _observe_plain(table, i, lg, t)
            return so.cross_entropy(lg, t)
    else:
        raise ValueError(method)

    loss = run_epochs(model, opt, loss_fn, xtr, ytr, epochs, table,
                      lambda: torch.tensor(list(sampler)) if sampler is not None
                      else torch.randperm(n, generator=gen))

    model.eval()
    with torch.no_grad():
        pred = model(xte).argmax(1)
    recall = {c: float((pred[yte == c] == c).float().mean()) for c in range(NUM_CLASSES)}
    return {
        "balanced_accuracy": sum(recall.values()) / NUM_CLASSES,
        "minority_recall": sum(recall[c] for c in minority) / len(minority),
        "per_class_recall": recall,
        "final_train_loss": float(loss.detach()),
    }


def run_epochs(model, opt, loss_fn, xtr, ytr, epochs: int, table, order, before_epoch=None):
    """Trains `epochs` epochs, each over the sample order `order()` in
    batches of BATCH with ``loss_fn(logits, targets, indices)``, stepping the
    table's epoch after each; returns the last batch's loss."""
    model.train()
    loss = None
    for _ in range(epochs):
        if before_epoch is not None:
            before_epoch()
        perm = order()
        for s in range(0, perm.shape[0], BATCH):
            idx = perm[s : s + BATCH]
            loss = loss_fn(model(xtr[idx]), ytr[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if table is not None:
            table.step_epoch()
    return loss


def summarise(values):
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    ys = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.8))
    h = 0.38
    for k, (key, label, color) in enumerate(
        [("balanced_accuracy", "balanced accuracy", "#4C72B0"), ("minority_recall", "minority-class recall", "#DD8452")]
    ):
        means = [summary[m][key]["mean"] for m in names]
        stds = [summary[m][key]["std"] for m in names]
        ax.barh(ys + (k - 0.5) * h, means, height=h * 0.95, xerr=stds, color=color, label=label, capsize=2)
    base = summary[names[0]]["balanced_accuracy"]["mean"]
    ax.axvline(base, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score on the balanced test split (mean ± std over seeds; dashed: plain CE balanced accuracy)")
    seeds = len(next(iter(summary.values()))["balanced_accuracy"]["values"])
    ax.set_title(f"Long-tailed digits (imbalance ratio {RATIO}), MLP, {seeds} seeds", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_config(args) -> dict:
    """The model and training settings, for a result's JSON."""
    return {"model": "MLP 64-128-10 ReLU", "optimizer": f"Adam lr={LR}", "batch_size": BATCH,
            "epochs": args.epochs, "seeds": list(range(args.seeds)), "threads": args.threads}


def environment() -> dict:
    """The machine and versions, for a result's JSON."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "samplewt_ops": getattr(so, "__version__", "?"),
        "backend": so.backend(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def write_results(result: dict, out: str, name: str, plot_to) -> None:
    """Writes <out>/<name>.json and, with matplotlib, the chart <name>.png
    through ``plot_to(path)``."""
    os.makedirs(out, exist_ok=True)
    jpath = os.path.join(out, f"{name}.json")
    with open(jpath, "w") as f:
        json.dump(result, f, indent=1)
    ppath = os.path.join(out, f"{name}.png")
    try:
        plot_to(ppath)
    except ImportError as e:  # matplotlib missing: keep the JSON
        print(f"plot skipped: {e}", file=sys.stderr)
        ppath = None
    print(f"\nwrote {jpath}" + (f" and {ppath}" if ppath else ""))


def arg_parser(doc: str, epochs: int, quick_epochs: int) -> argparse.ArgumentParser:
    """The options both digits benchmarks share."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="number of seeds (default 10)")
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the model is tiny)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of the methods (exact names)")
    ap.add_argument("--quick", action="store_true",
                    help=f"2 seeds, {quick_epochs} epochs, no files written")
    ap.set_defaults(quick_epochs=quick_epochs)
    return ap


def parse_args(ap: argparse.ArgumentParser, argv, all_methods) -> tuple:
    """(args, methods): --quick applied, threads set, the methods checked."""
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 2, args.quick_epochs
    torch.set_num_threads(args.threads)
    methods = args.methods or all_methods
    unknown = [m for m in methods if m not in all_methods]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {all_methods}")
    return args, methods


def main(argv=None):
    args, methods = parse_args(arg_parser(__doc__, 60, 5), argv, METHODS)

    t0 = time.time()
    per_seed = {m: [] for m in methods}
    splits = {}
    for seed in range(args.seeds):
        data = make_split(seed)
        splits[seed] = {"train_counts": data[4], "minority_classes": data[5], "n_train": int(data[0].shape[0])}
        for m in methods:
            per_seed[m].append(train_one(m, seed, args.epochs, data))
        print(f"seed {seed} done ({time.time() - t0:.1f} s)", file=sys.stderr)

    summary = {}
    for m in methods:
        summary[m] = {}
        for key in ("balanced_accuracy", "minority_recall"):
            vals = [r[key] for r in per_seed[m]]
            mean, std = summarise(vals)
            summary[m][key] = {"mean": mean, "std": std, "values": vals}
            if "plain CE" in per_seed:
                # paired with plain CE on the same seed (same split, init and first batches)
                diff = [a - b[key] for a, b in zip(vals, per_seed["plain CE"])]
                dm, ds = summarise(diff)
                summary[m][key]["paired_delta_vs_plain_ce"] = {"mean": dm, "std": ds}

    print(f"\nLong-tailed digits, imbalance ratio {RATIO}, {args.seeds} seeds, {args.epochs} epochs "
          f"({time.time() - t0:.0f} s, backend {so.backend()['implementation']})\n")
    paired = "plain CE" in per_seed
    head = "| method | balanced accuracy | minority-class recall |"
    rule = "| --- | --- | --- |"
    if paired:
        head += " Δ bal. acc. vs plain CE (paired) | Δ minority recall vs plain CE (paired) |"
        rule += " --- | --- |"
    print(head)
    print(rule)
    for m in methods:
        ba, mr = summary[m]["balanced_accuracy"], summary[m]["minority_recall"]
        row = f"| {m} | {ba['mean']:.3f} ± {ba['std']:.3f} | {mr['mean']:.3f} ± {mr['std']:.3f} |"
        if paired:
            for v in (ba, mr):
                d = v["paired_delta_vs_plain_ce"]
                row += f" {d['mean']:+.3f} ± {d['std']:.3f} |"
        print(row)

    if args.quick:
        return 0
    result = {
        "benchmark": "imbalanced_digits",
        "config": {
            "dataset": "sklearn.datasets.load_digits",
            "imbalance_ratio": RATIO,
            "n_max": N_MAX,
            "test_per_class": TEST_PER_CLASS,
            "minority_classes": N_MINORITY,
            **training_config(args),
        },
        "environment": environment(),
        "elapsed_s": time.time() - t0,
        "splits": {str(k): v for k, v in splits.items()},
        "summary": summary,
        "per_seed": per_seed,
    }
    write_results(result, args.out, "imbalanced_digits", lambda path: plot(summary, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
