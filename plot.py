"""Pictures of GRPO runs, from the log grpo.py writes beside each checkpoint (<run>.log.jsonl).

    python plot.py runs/grpo --out figs                    # writes figs/*.png and prints their paths
    python plot.py runs/ablation/*-seed0 --out figs/ablation  # several runs overlaid, a legend names each
                                                              # (python experiments.py ablation)
    python plot.py runs/grpo --early 20 --late 20

  rewards.png    total reward and each component per step (thin: per step; thick: moving mean)
  heldout.png    validation metrics at each evaluation (grpo.py --eval-every), a panel per metric
  collapse.png   the share of groups whose G rewards are all equal (no GRPO signal) per step,
                 and the variance of the raw vs the weighted semantic reward on open questions
  semantic.png   the distribution of the raw (cosine) and the weighted (adaptive) semantic reward
                 of open completions, early vs late in training
  sampling.png   the sampled training reward beside the held-out greedy score (mean of closed
                 accuracy, semantic, ROUGE-1), the policy's entropy estimate (per-token NLL of its
                 samples), policy vs reward collapse and the learning rate, over steps

    python plot.py --figure4 runs/ablation/text+semantic-seed0 runs/ablation/text+adaptive-seed0 --out figs
    python plot.py --figure5 runs/ablation/ablation.json --out figs

  figure4.png    ARMed's Figure 4: the semantic reward's distribution in a plain-semantic GRPO run
                 against an adaptive one, over the same steps (early and late), raw and as weighted
  figure5.png    ARMed's Figure 5: the ablation's arms (experiments.py ablation), mean ± sample std
                 (ddof=1) over seeds, a panel per metric

    python plot.py --factors runs/factors/factors.json --out figs

  factors-init.png, factors-judge.png, factors-length.png, factors-bias.png
                 RL-MedVQA's factors (experiments.py factors): per arm, each seed's curve and their
                 mean: format reward from base, instruct and SFT; <think> words and completion
                 tokens of right and wrong answers under the length rewards and the loss types

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

from records import DataError, run_script
from training import HelpFormatter, at_least

HELD_OUT = (("closed accuracy", ("closed", "accuracy")), ("open semantic", ("open", "semantic")),
            ("open ROUGE-1", ("open", "rouge1")), ("open concept", ("open", "concept")))
PANEL_INCHES, DPI, COLUMNS = (4.2, 3.0), 100, 3  # a panel is 420 x 300 pixels; 10-point text
FONT_SIZE = 10


def read_log(run):
    path = run.rstrip("/") + ".log.jsonl"
    if not os.path.exists(path):
        raise SystemExit(f"plot.py: {path} not found: pass the run folder grpo.py wrote (its log sits beside it)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:   # a line cut short: a run killed while writing it
                raise DataError(f"plot.py: {path} line {number}: not valid JSON "
                                f"({error.msg}, column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"plot.py: {path} line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise SystemExit(f"plot.py: {path} is empty")
    return rows


def run_names(runs):
    """Legend names: "runs/ablation/text-seed0", "runs/ablation/text+semantic-seed0" ->
    "text-seed0", "text+semantic-seed0"; one run keeps its path."""
    paths = [os.path.normpath(run) for run in runs]
    if len(paths) <= 1:
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
            values = np.array([v for r in part for v in r[key]], dtype=float)
            if len(values):   # steps that sampled no open question log empty lists
                ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6, color=f"C{i}",
                        label=f"var {values.var():.4f}, {len(values)} answers")
        steps = f"first {early}" if when == "early" else f"last {late}"
        ax.set_title(f"{'raw cosine' if key == 'open_semantic_raw' else 'as weighted'}, {steps} steps"
                     if ax.patches else "no semantic scores logged (--reward text, or an older log)")
        ax.set_xlabel("semantic reward")
        if ax.patches:
            ax.legend(fontsize=FONT_SIZE - 2)
    return fig


def greedy_score(val):
    """The held-out greedy score of a validation row: the mean of closed accuracy, open semantic and
    ROUGE-1 in %, or None when one is missing."""
    scores = [nested(val, keys) for _, keys in HELD_OUT[:3]]
    return None if None in scores else 100 * float(np.mean(scores))


COLLAPSE = (("policy_collapse_fraction", "-", "policy collapse (identical completions)"),
            ("reward_collapse_fraction", "--", "reward collapse (distinct, equal rewards)"),
            ("distinct_fraction", ":", "distinct completions"))


def plot_sampling(plt, logs, window):
    """Why the sampled reward can fall while the greedy score rises: the training reward of the
    sampled completions, the held-out greedy score, the entropy estimate (`sampled_nll`), policy
    collapse against reward collapse, and the learning rate; a panel whose keys a log lacks says so."""
    fig, (reward, greedy, entropy, collapse, lr) = panels(plt, 5)
    for i, rows in enumerate(logs.values()):
        trace(reward, *series(rows, "reward"), window, f"C{i}")
        points = [(r["step"], greedy_score(r["val"])) for r in rows if r.get("val") and greedy_score(r["val"]) is not None]
        if points:
            greedy.plot(*zip(*points), marker="o", color=f"C{i}")
        if any("sampled_nll" in r for r in rows):
            trace(entropy, *series(rows, "sampled_nll"), window, f"C{i}")
        if any("lr" in r for r in rows):
            lr.plot(*series(rows, "lr"), color=f"C{i}")
        for key, style, label in COLLAPSE:
            steps, values = series(rows, key)
            if len(steps):
                collapse.plot(steps, moving_mean(values, window), style, color=f"C{i}", label=label if i == 0 else None)
    for ax, title, key in ((reward, "sampled training reward", ""), (greedy, "held-out greedy score", "--eval-every"),
                           (entropy, "entropy estimate", "sampled_nll"), (collapse, "collapsed groups", "*_collapse_fraction"),
                           (lr, "learning rate", "lr")):
        ax.set_title(title if ax.lines else f"{title}\nnot logged ({key})", fontsize=FONT_SIZE)
        ax.set_xlabel("step")
    greedy.set_ylabel("mean of closed, semantic, ROUGE-1 (%)")
    entropy.set_ylabel("NLL per sampled token")
    collapse.set_ylabel("share of groups")
    if collapse.lines:
        collapse.legend(fontsize=FONT_SIZE - 2)
    return fig


def same_steps(logs):
    """Each log cut to the steps every one of them reached, so that "late" means the same steps."""
    last = min(max(r["step"] for r in rows if "step" in r) for rows in logs.values())
    return {name: [r for r in rows if r.get("step", last + 1) <= last] for name, rows in logs.items()}


def plot_figure4(plt, plain, adaptive, early, late):
    """ARMed's Figure 4: the semantic reward of a plain-semantic run (--reward text+semantic) against
    an adaptive run (text+adaptive) over the same steps; plain's "as weighted" is its cosine."""
    logs = same_steps({f"plain semantic: {plain[0]}": plain[1], f"adaptive: {adaptive[0]}": adaptive[1]})
    fig = plot_semantic(plt, logs, early, late)
    name_runs(fig, logs, "Figure 4: the semantic reward, plain against adaptive, same steps")
    return fig


# Figure 5's metrics: (title, keys into evaluate.py's metrics); the last is the mean of the first three.
FIGURE5 = HELD_OUT + (("mean of closed, semantic, ROUGE-1", None),)


def arm_scores(results):
    """{arm: {metric title: [value per seed, in %]}} from ablation.json's results (each arm's
    `metrics`, a list over seeds; the SFT start has one)."""
    return {arm: {title: [score for m in result["metrics"]
                          if (score := greedy_score(m) if keys is None else
                              None if nested(m, keys) is None else 100 * nested(m, keys)) is not None]
                   for title, keys in FIGURE5} for arm, result in results.items()}


def plot_figure5(plt, results):
    """ARMed's Figure 5: a bar per arm (the SFT start, each reward, the augmented start), mean ±
    sample std (ddof=1) over seeds, a panel per metric."""
    arms = arm_scores(results)
    fig, axes = panels(plt, len(FIGURE5))
    for ax, (title, _) in zip(axes, FIGURE5):
        values = [arms[arm][title] for arm in arms]
        means = [np.mean(v) if v else np.nan for v in values]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(arms))])
        measured = any(values)
        if measured:   # bars start near the lowest, so that differences of a point show
            ax.set_ylim(max(0.0, np.nanmin(np.subtract(means, stds)) - 5), None)
        ax.set_xticks(range(len(arms)), list(arms), rotation=30, ha="right", fontsize=FONT_SIZE - 2)
        ax.set_title(f"{title} (%){'' if measured else ': not measured'}", fontsize=FONT_SIZE)
    fig.suptitle("Figure 5: the ablation, mean ± sample std over seeds", fontsize=FONT_SIZE + 1)
    return fig


# The factors' curves (experiments.py factors): (panel title, grpo.py log key) per factor; the sft
# factor compares checkpoints, not curves.
LENGTH_PANELS = (("<think> words, right answers", "think_words_right"),
                 ("<think> words, wrong answers", "think_words_wrong"),
                 ("completion tokens, wrong answers", "completion_tokens_wrong"),
                 ("share of right answers", "correct_fraction"))
FACTOR_PANELS = {"init": (("format reward", "reward_format"), ("total reward", "reward"),
                          ("share of right answers", "correct_fraction")),
                 "judge": (("share of right answers", "correct_fraction"), ("<think> words", "think_words"),
                           ("oracle judge reward (true facts stated)", "reward_judge")),
                 "length": LENGTH_PANELS, "bias": LENGTH_PANELS}


def plot_factor(plt, rows, panels_of, window):
    """One factor's curves: a colour per row (arm), thin per seed, thick the mean over seeds of the
    moving means, over the steps every seed reached; a panel per log key. rows: [(label, [log rows
    per seed])]."""
    fig, axes = panels(plt, len(panels_of), columns=len(panels_of) if len(panels_of) <= 4 else COLUMNS)
    for ax, (title, key) in zip(axes, panels_of):
        for i, (_, logs) in enumerate(rows):
            curves = [series(log, key) for log in logs]
            curves = [(steps, moving_mean(values, window)) for steps, values in curves if len(steps)]
            for steps, values in curves:
                ax.plot(steps, values, lw=0.6, alpha=0.35, color=f"C{i}")
            if curves:
                n = min(len(steps) for steps, _ in curves)
                ax.plot(curves[0][0][:n], np.mean([values[:n] for _, values in curves], axis=0), lw=1.8, color=f"C{i}")
        ax.set_title(title, fontsize=FONT_SIZE)
        ax.set_xlabel("step")
    return fig


def factor_figures(plt, factors, window):
    """{"factors-NAME": figure} of experiments.py factors' factors.json (its "factors"), runs whose
    log is missing left out."""
    figures = {}
    for factor, result in factors.items():
        if factor not in FACTOR_PANELS:
            continue
        rows = [(row["label"], [read_log(run) for run in row["runs"] if os.path.exists(run + ".log.jsonl")])
                for row in result["rows"]]
        fig = plot_factor(plt, rows, FACTOR_PANELS[factor], window)
        name_runs(fig, {f"{label} ({len(logs)} seeds)": logs for label, logs in rows},
                  f"RL-MedVQA's {factor} factor: each seed thin, their mean thick (moving mean of {window} steps)")
        figures[f"factors-{factor}"] = fig
    return figures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="*", help="grpo.py output folders (runs/grpo); each log is <run>.log.jsonl; "
                   "several are overlaid, a colour each")
    p.add_argument("--figure4", nargs=2, metavar=("PLAIN", "ADAPTIVE"),
                   help="figure4.png from a plain-semantic and an adaptive grpo.py run")
    p.add_argument("--figure5", metavar="ABLATION_JSON", help="figure5.png from experiments.py ablation's ablation.json")
    p.add_argument("--factors", metavar="FACTORS_JSON",
                   help="factors-*.png from experiments.py factors' factors.json: each factor's curves")
    p.add_argument("--out", default="figs", help="folder for the PNGs (created; existing PNGs of these names are replaced)")
    p.add_argument("--window", type=at_least(1), default=10, help="steps in the moving mean")
    p.add_argument("--early", type=at_least(1), default=20, help="first steps pooled in semantic.png")
    p.add_argument("--late", type=at_least(1), default=20, help="last steps pooled in semantic.png")
    args = p.parse_args(argv)
    if not (args.runs or args.figure4 or args.figure5 or args.factors):
        p.error("give grpo.py runs, --figure4 PLAIN ADAPTIVE, --figure5 ABLATION_JSON or --factors FACTORS_JSON")
    logs = dict(zip(run_names(args.runs), map(read_log, args.runs)))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot.py: needs matplotlib (pip install matplotlib)")
    os.makedirs(args.out, exist_ok=True)
    figures = {}
    with plt.rc_context({"font.size": FONT_SIZE}):
        if logs:
            figures = {"rewards": plot_rewards(plt, logs, args.window), "heldout": plot_held_out(plt, logs),
                       "collapse": plot_collapse(plt, logs, args.window),
                       "semantic": plot_semantic(plt, logs, args.early, args.late),
                       "sampling": plot_sampling(plt, logs, args.window)}
            for name, fig in figures.items():
                name_runs(fig, logs, f"{next(iter(logs)) if len(logs) == 1 else f'{len(logs)} runs'}: {name}")
        if args.figure4:
            plain, adaptive = ((os.path.normpath(run), read_log(run)) for run in args.figure4)
            figures["figure4"] = plot_figure4(plt, plain, adaptive, args.early, args.late)
        if args.figure5:
            with open(args.figure5) as f:
                figures["figure5"] = plot_figure5(plt, json.load(f)["results"])
        if args.factors:
            with open(args.factors) as f:
                figures.update(factor_figures(plt, json.load(f)["factors"], args.window))
    paths = []
    for name, fig in figures.items():
        paths.append(os.path.join(args.out, f"{name}.png"))
        fig.savefig(paths[-1], dpi=DPI)
        plt.close(fig)
    print("\n".join(paths))
    return paths


if __name__ == "__main__":
    run_script(main)
