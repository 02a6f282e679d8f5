"""Pictures of a GRPO run, from the log grpo.py writes beside its checkpoint (<run>.log.jsonl).

    python plot.py runs/grpo --out figs      # writes figs/*.png and prints their paths
    python plot.py runs/grpo --early 20 --late 20

  rewards.png    total reward and each component per step (thin: per step; thick: moving mean)
  heldout.png    validation metrics at each evaluation (grpo.py --eval-every)
  collapse.png   the share of groups whose G rewards are all equal (no GRPO signal) per step,
                 and the variance of the raw vs the weighted semantic reward on open questions
  semantic.png   ARMed's Figure 4 at toy scale: the distribution of the raw (cosine) and the
                 weighted (adaptive) semantic reward of open completions, early vs late in training

matplotlib is needed for this script only (pip install matplotlib).
"""

import argparse
import json
import os

import numpy as np

from training import HelpFormatter, at_least

HELD_OUT = (("closed accuracy", ("closed", "accuracy")), ("open semantic", ("open", "semantic")),
            ("open ROUGE-1", ("open", "rouge1")), ("open concept", ("open", "concept")))


def read_log(run):
    path = run.rstrip("/") + ".log.jsonl"
    if not os.path.exists(path):
        raise SystemExit(f"plot.py: {path} not found: pass the run folder grpo.py wrote (its log sits beside it)")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise SystemExit(f"plot.py: {path} is empty")
    return rows


def moving_mean(values, window):
    """Mean of the last `window` values at each step (fewer at the start)."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)


def series(rows, key):
    """(steps, values) of the rows that log `key`."""
    pairs = [(r["step"], r[key]) for r in rows if key in r]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=float)


def nested(metrics, keys):
    for key in keys:
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


def plot_rewards(plt, rows, window):
    keys = ["reward"] + sorted({k for r in rows for k in r if k.startswith("reward_")})
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = series(rows, key)
        ax.plot(steps, values, lw=0.6, alpha=0.4)
        ax.plot(steps, moving_mean(values, window), lw=1.8)
        ax.set_title("total reward" if key == "reward" else key[len("reward_"):])
        ax.set_xlabel("step")
    return fig


def plot_held_out(plt, rows):
    evaluated = [r for r in rows if r.get("val")]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for title, keys in HELD_OUT:
        points = [(r["step"], 100 * nested(r["val"], keys)) for r in evaluated if nested(r["val"], keys) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=title)
    ax.set_xlabel("step")
    ax.set_ylabel("% on the validation split")
    ax.set_title("held-out metrics" if evaluated else "no validation logged (grpo.py --eval-every)")
    if evaluated:
        ax.legend(fontsize=8)
    return fig


def plot_collapse(plt, rows, window):
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps, equal = series(rows, "equal_total_group_fraction")
    left.plot(steps, equal, lw=0.6, alpha=0.4)
    left.plot(steps, moving_mean(equal, window), lw=1.8)
    left.set_ylim(-0.02, 1.02)
    left.set_title("groups with all G rewards equal")
    left.set_xlabel("step")
    for key, label in (("semantic_raw_var", "raw cosine"), ("semantic_var", "as weighted")):
        steps, values = series(rows, key)
        if len(steps):
            right.plot(steps, moving_mean(values, window), label=label)
    right.set_title("semantic reward variance, open questions")
    right.set_xlabel("step")
    if right.lines:
        right.legend(fontsize=8)
    return fig


def plot_semantic(plt, rows, early, late):
    """Histograms of the raw and weighted semantic reward in the first `early` and last `late` steps."""
    logged = [r for r in rows if "open_semantic_raw" in r]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    if not logged:
        axes[0].set_title("no semantic scores logged (--reward text, or an older log)")
        return fig
    bins = np.linspace(0, 1, 41)
    for ax, part, name in ((axes[0], logged[:early], "early"), (axes[1], logged[-late:], "late")):
        raw = np.concatenate([r["open_semantic_raw"] for r in part])
        weighted = np.concatenate([r["open_semantic"] for r in part])
        ax.hist(raw, bins=bins, alpha=0.6, density=True, label=f"raw cosine, var {raw.var():.4f}")
        ax.hist(weighted, bins=bins, alpha=0.6, density=True, label=f"as weighted, var {weighted.var():.4f}")
        ax.set_title(f"{name}: steps {part[0]['step']}-{part[-1]['step']}, {len(raw)} open completions")
        ax.set_xlabel("semantic reward")
        ax.legend(fontsize=8)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("run", help="a grpo.py output folder (runs/grpo); its log is <run>.log.jsonl")
    p.add_argument("--out", default="figs", help="folder for the PNGs (created; existing PNGs of these names are replaced)")
    p.add_argument("--window", type=at_least(1), default=10, help="steps in the moving mean")
    p.add_argument("--early", type=at_least(1), default=20, help="first steps pooled in semantic.png")
    p.add_argument("--late", type=at_least(1), default=20, help="last steps pooled in semantic.png")
    args = p.parse_args(argv)
    rows = read_log(args.run)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot.py: needs matplotlib (pip install matplotlib)")
    os.makedirs(args.out, exist_ok=True)
    figures = {"rewards": plot_rewards(plt, rows, args.window), "heldout": plot_held_out(plt, rows),
               "collapse": plot_collapse(plt, rows, args.window),
               "semantic": plot_semantic(plt, rows, args.early, args.late)}
    paths = []
    for name, fig in figures.items():
        fig.suptitle(f"{args.run}: {name}", fontsize=9)
        fig.tight_layout()
        paths.append(os.path.join(args.out, f"{name}.png"))
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    print("\n".join(paths))
    return paths


if __name__ == "__main__":
    main()
