"""Pictures of GRPO runs, from the log grpo.py writes beside each checkpoint (<run>.log.jsonl).

    python plot.py runs/grpo --out figs                    # writes figs/*.png and prints their paths
    python plot.py runs/ablation/*-seed0 --out figs/ablation  # several runs overlaid, a legend names each
    python plot.py runs/grpo --early 20 --late 20

  rewards.png    total reward and each component per step (thin: per step; thick: moving mean)
  heldout.png    validation metrics at each evaluation (grpo.py --eval-every), a panel per metric
  collapse.png   the share of groups whose G rewards are all equal (no GRPO signal) per step,
                 and the variance of the raw vs the weighted semantic reward on open questions
  semantic.png   ARMed's Figure 4 at toy scale: the distribution of the raw (cosine) and the
                 weighted (adaptive) semantic reward of open completions, early vs late in training

Each figure is a grid of panels sized to be read at 100% zoom (PANEL_INCHES at DPI); with several
runs every panel draws each run in its own colour, named in the legend above the panels (each
run's name is its path without the folder the runs share).
matplotlib is needed for this script only (pip install matplotlib).
"""

import argparse
import json
import math
import os

import numpy as np

from training import HelpFormatter, at_least

HELD_OUT = (("closed accuracy", ("closed", "accuracy")), ("open semantic", ("open", "semantic")),
            ("open ROUGE-1", ("open", "rouge1")), ("open concept", ("open", "concept")))
PANEL_INCHES, DPI, COLUMNS = (4.2, 3.0), 100, 3  # a panel is 420 x 300 pixels; 10-point text
FONT_SIZE = 10


def read_log(run):
    path = run.rstrip("/") + ".log.jsonl"
    if not os.path.exists(path):
        raise SystemExit(f"plot.py: {path} not found: pass the run folder grpo.py wrote (its log sits beside it)")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise SystemExit(f"plot.py: {path} is empty")
    return rows


def run_names(runs):
    """Legend names: "runs/ablation/text-seed0", "runs/ablation/text+semantic-seed0" ->
    "text-seed0", "text+semantic-seed0"; one run keeps its path."""
    paths = [os.path.normpath(run) for run in runs]
    if len(paths) == 1:
        return paths
    shared = os.path.commonpath([os.path.abspath(path) for path in paths])
    names = [os.path.relpath(os.path.abspath(path), shared) for path in paths]
    return names if len(set(names)) == len(names) and "." not in names else paths


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


def panels(plt, n, columns=COLUMNS):
    """(figure, n axes): a grid of n panels, `columns` wide at most, each PANEL_INCHES."""
    cols, rows = min(n, columns), math.ceil(n / columns)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.remove()
    return fig, list(axes.flat[:n])


def name_runs(fig, logs, title):
    """The figure's title, and with several runs a legend of their colours above the panels."""
    fig.suptitle(title, fontsize=FONT_SIZE + 1)
    if len(logs) > 1:
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], color=f"C{i}", lw=2.5) for i in range(len(logs))]
        fig.legend(handles, list(logs), loc="outside lower center", ncols=min(len(logs), 4), fontsize=FONT_SIZE)


def trace(ax, steps, values, window, color, label=None):
    """Per-step values (thin) and their moving mean (thick) in one colour."""
    ax.plot(steps, values, lw=0.6, alpha=0.35, color=color)
    ax.plot(steps, moving_mean(values, window), lw=1.8, color=color, label=label)


def plot_rewards(plt, logs, window):
    keys = ["reward"] + sorted({k for rows in logs.values() for r in rows for k in r if k.startswith("reward_")})
    fig, axes = panels(plt, len(keys))
    for ax, key in zip(axes, keys):
        for i, rows in enumerate(logs.values()):
            trace(ax, *series(rows, key), window, f"C{i}")
        ax.set_title("total reward" if key == "reward" else key[len("reward_"):])
        ax.set_xlabel("step")
    return fig


def plot_held_out(plt, logs):
    evaluated = {name: [r for r in rows if r.get("val")] for name, rows in logs.items()}
    fig, axes = panels(plt, len(HELD_OUT), columns=2)
    for ax, (title, keys) in zip(axes, HELD_OUT):
        for i, rows in enumerate(evaluated.values()):
            points = [(r["step"], 100 * nested(r["val"], keys)) for r in rows if nested(r["val"], keys) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=f"C{i}")
        ax.set_title(title if ax.lines else f"{title}: not logged (grpo.py --eval-every)")
        ax.set_xlabel("step")
        ax.set_ylabel("% on the validation split")
    return fig


def plot_collapse(plt, logs, window):
    fig, (left, right) = panels(plt, 2)
    for i, rows in enumerate(logs.values()):
        trace(left, *series(rows, "equal_total_group_fraction"), window, f"C{i}")
        for key, style in (("semantic_var", "-"), ("semantic_raw_var", "--")):
            steps, values = series(rows, key)
            if len(steps):
                right.plot(steps, moving_mean(values, window), style, color=f"C{i}")
    left.set_ylim(-0.02, 1.02)
    left.set_title("groups with all G rewards equal")
    right.set_title("semantic reward variance, open questions")
    for ax in (left, right):
        ax.set_xlabel("step")
    if right.lines:
        from matplotlib.lines import Line2D
        right.legend([Line2D([], [], color="grey", ls="-"), Line2D([], [], color="grey", ls="--")],
                     ["as weighted", "raw cosine"], fontsize=FONT_SIZE - 1)
    return fig


def plot_semantic(plt, logs, early, late):
    """Histograms of the raw and the weighted semantic reward in each run's first `early` and last
    `late` steps: rows early/late, columns raw/weighted, a line per run (its variance in the legend)."""
    fig, axes = panels(plt, 4, columns=2)
    bins = np.linspace(-0.2, 1, 49)
    logged = {name: [r for r in rows if "open_semantic_raw" in r] for name, rows in logs.items()}
    for ax, (when, key) in zip(axes, [(w, k) for w in ("early", "late") for k in ("open_semantic_raw", "open_semantic")]):
        for i, (name, rows) in enumerate(logged.items()):
            part = rows[:early] if when == "early" else rows[-late:]
            if part:
                values = np.concatenate([r[key] for r in part])
                ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6, color=f"C{i}",
                        label=f"var {values.var():.4f}, {len(values)} answers")
        steps = f"first {early}" if when == "early" else f"last {late}"
        ax.set_title(f"{'raw cosine' if key == 'open_semantic_raw' else 'as weighted'}, {steps} steps"
                     if ax.patches else "no semantic scores logged (--reward text, or an older log)")
        ax.set_xlabel("semantic reward")
        if ax.patches:
            ax.legend(fontsize=FONT_SIZE - 2)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", help="grpo.py output folders (runs/grpo); each log is <run>.log.jsonl; "
                   "several are overlaid, a colour each")
    p.add_argument("--out", default="figs", help="folder for the PNGs (created; existing PNGs of these names are replaced)")
    p.add_argument("--window", type=at_least(1), default=10, help="steps in the moving mean")
    p.add_argument("--early", type=at_least(1), default=20, help="first steps pooled in semantic.png")
    p.add_argument("--late", type=at_least(1), default=20, help="last steps pooled in semantic.png")
    args = p.parse_args(argv)
    logs = dict(zip(run_names(args.runs), map(read_log, args.runs)))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot.py: needs matplotlib (pip install matplotlib)")
    os.makedirs(args.out, exist_ok=True)
    with plt.rc_context({"font.size": FONT_SIZE}):
        figures = {"rewards": plot_rewards(plt, logs, args.window), "heldout": plot_held_out(plt, logs),
                   "collapse": plot_collapse(plt, logs, args.window),
                   "semantic": plot_semantic(plt, logs, args.early, args.late)}
    paths = []
    for name, fig in figures.items():
        name_runs(fig, logs, f"{next(iter(logs)) if len(logs) == 1 else f'{len(logs)} runs'}: {name}")
        paths.append(os.path.join(args.out, f"{name}.png"))
        fig.savefig(paths[-1], dpi=DPI)
        plt.close(fig)
    print("\n".join(paths))
    return paths


if __name__ == "__main__":
    main()
