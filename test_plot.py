"""plot.py on hand-made grpo.py logs: panels in a grid a person can read at 100% zoom, and several
runs overlaid on the same axes with a legend naming each.

    python -m pytest test_plot.py -q
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import plot
from records import DataError

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def write_log(path, offset, steps=30):
    """A grpo.py log whose rewards are offset + step / 100, validated every 10 steps."""
    rows = []
    for step in range(1, steps + 1):
        value = offset + step / 100
        rows.append({"step": step, "reward": value, "reward_format": 1.0, "reward_textual": value / 2,
                     "reward_semantic": value / 4, "equal_total_group_fraction": 0.5,
                     "semantic_var": 0.01, "semantic_raw_var": 0.001,
                     "open_semantic_raw": [0.8, 0.82], "open_semantic": [0.2, 0.9]}
                    | ({"val": {"closed": {"accuracy": value}, "open": {"semantic": value}}} if step % 10 == 0 else {}))
    with open(f"{path}.log.jsonl", "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def test_several_runs_overlaid_in_a_readable_grid(tmp_path):
    (tmp_path / "ablation").mkdir()
    runs = [write_log(tmp_path / "ablation" / name, offset)
            for name, offset in (("text-seed0", 0.0), ("text+semantic-seed0", 1.0))]
    paths = plot.main([*runs, "--out", str(tmp_path / "figs"), "--window", "5"])
    sizes = {path.rsplit("/", 1)[1]: Image.open(path).size for path in paths}
    # 4 reward panels: 3 columns x 2 rows of 420 x 300 px; 4 held-out metrics: 2 x 2
    assert sizes == {"rewards.png": (1260, 600), "heldout.png": (840, 600), "collapse.png": (840, 300),
                     "semantic.png": (840, 600), "sampling.png": (1260, 600)}

    logs = {name: plot.read_log(run) for name, run in zip(plot.run_names(runs), runs)}
    assert list(logs) == ["text-seed0", "text+semantic-seed0"]
    with plt.rc_context({"font.size": plot.FONT_SIZE}):
        fig = plot.plot_rewards(plt, logs, window=5)
    plot.name_runs(fig, logs, "rewards")
    fig.canvas.draw()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["text-seed0", "text+semantic-seed0"]
    assert [ax.get_title() for ax in fig.axes] == ["total reward", "format", "semantic", "textual"]
    for ax in fig.axes:
        assert ax.get_window_extent().width >= 300 and ax.title.get_fontsize() >= 9  # readable at 100%
        means = [line for line in ax.lines if line.get_linewidth() > 1]
        assert [line.get_color() for line in means] == ["C0", "C1"]  # one colour per run, same axes
    total = [line for line in fig.axes[0].lines if line.get_linewidth() > 1]
    for line, offset in zip(total, (0.0, 1.0)):  # the last moving mean: steps 26..30
        assert line.get_ydata()[-1] == pytest.approx(offset + np.mean([26, 27, 28, 29, 30]) / 100)
    plt.close(fig)

    fig = plot.plot_held_out(plt, logs)
    accuracy = fig.axes[0]
    assert [list(line.get_ydata()) for line in accuracy.lines] == [
        pytest.approx([100 * (offset + s / 100) for s in (10, 20, 30)]) for offset in (0.0, 1.0)]
    assert "not logged" in fig.axes[2].get_title()  # ROUGE-1 is not in these logs
    plt.close(fig)


def test_one_run_keeps_its_path_as_its_name():
    assert plot.run_names(["runs/grpo"]) == ["runs/grpo"]
    assert plot.run_names(["runs/a/x", "runs/b/x"]) == ["a/x", "b/x"]


def test_sampling_puts_the_sampled_reward_beside_the_greedy_score_entropy_and_collapse(tmp_path):
    rows = [{"step": s, "reward": 2.0, "lr": 1e-4 * s, "sampled_nll": 1.0 / s, "policy_collapse_fraction": 0.25,
             "reward_collapse_fraction": 0.5, "distinct_fraction": 0.75}
            | ({"val": {"closed": {"accuracy": 0.6}, "open": {"semantic": 0.9, "rouge1": 0.3}}} if s % 5 == 0 else {})
            for s in range(1, 11)]
    fig = plot.plot_sampling(plt, {"run": rows}, window=1)
    reward, greedy, entropy, collapse, lr = fig.axes
    assert list(greedy.lines[0].get_ydata()) == pytest.approx([60.0, 60.0])   # (60 + 90 + 30) / 3
    assert list(greedy.lines[0].get_xdata()) == [5, 10]
    assert entropy.lines[-1].get_ydata()[-1] == pytest.approx(0.1) and lr.lines[0].get_ydata()[-1] == pytest.approx(1e-3)
    assert [line.get_ydata()[0] for line in collapse.lines] == [0.25, 0.5, 0.75]
    assert [t.get_text() for t in collapse.get_legend().get_texts()][0] == "policy collapse (identical completions)"
    plt.close(fig)
    fig = plot.plot_sampling(plt, {"old": [{"step": 1, "reward": 1.0}]}, window=1)
    assert [ax.get_title() for ax in fig.axes] == [
        "sampled training reward", "held-out greedy score\nnot logged (--eval-every)",
        "entropy estimate\nnot logged (sampled_nll)", "collapsed groups\nnot logged (*_collapse_fraction)",
        "learning rate\nnot logged (lr)"]
    plt.close(fig)


def test_figure4_compares_plain_and_adaptive_over_the_same_steps(tmp_path):
    def log(steps, value):
        return [{"step": s, "open_semantic_raw": [0.8, 0.8], "open_semantic": [value(s), value(s)]} for s in steps]
    plain = log(range(1, 31), lambda s: 0.8)
    adaptive = log(range(1, 41), lambda s: 0.0 if s > 30 else (0.2 if s % 2 else 0.6))   # steps 31-40: left out
    fig = plot.plot_figure4(plt, ("runs/plain", plain), ("runs/adaptive", adaptive), early=10, late=10)
    late_weighted = fig.axes[3]
    assert [t.get_text() for t in late_weighted.get_legend().get_texts()] == [
        "var 0.0000, 20 answers", "var 0.0400, 20 answers"]   # steps 21-30 of both: 0.2 and 0.6 alternate
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["plain semantic: runs/plain", "adaptive: runs/adaptive"]
    plt.close(fig)


def test_figure5_draws_each_arm_as_mean_and_sample_std(tmp_path):
    def metrics(closed, semantic, rouge):
        return {"closed": {"accuracy": closed}, "open": {"semantic": semantic, "rouge1": rouge, "concept": None}}
    results = {"sft": {"metrics": [metrics(0.6, 0.9, 0.3)]},
               "text+adaptive+augment": {"metrics": [metrics(0.6, 0.9, 0.3), metrics(0.7, 0.9, 0.5),
                                                     metrics(0.8, 0.9, 0.4)]}}
    arms = plot.arm_scores(results)
    assert arms["text+adaptive+augment"]["closed accuracy"] == pytest.approx([60, 70, 80])
    assert arms["text+adaptive+augment"]["mean of closed, semantic, ROUGE-1"] == pytest.approx([60, 70, 70])
    assert arms["sft"]["open concept"] == []
    with open(tmp_path / "ablation.json", "w") as f:
        json.dump({"results": results}, f)
    paths = plot.main(["--figure5", str(tmp_path / "ablation.json"), "--out", str(tmp_path)])
    assert [p.rsplit("/", 1)[1] for p in paths] == ["figure5.png"]
    fig = plot.plot_figure5(plt, results)
    closed = fig.axes[0]
    assert [bar.get_height() for bar in closed.patches] == pytest.approx([60, 70])
    errorbar, = [c for c in closed.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    caps = errorbar.lines[2][0].get_segments()   # the error bars: mean ± std (ddof=1)
    assert [tuple(segment[:, 1]) for segment in caps] == [pytest.approx((60, 60)), pytest.approx((60, 80))]
    assert [label.get_text() for label in closed.get_xticklabels()] == ["sft", "text+adaptive+augment"]
    assert fig.axes[3].get_title() == "open concept (%): not measured"
    plt.close(fig)


def test_factors_draw_each_arm_per_seed_and_their_mean(tmp_path):
    """--factors: a figure per factor with curves; an arm's thick line is the mean over seeds of the
    moving means, over the steps every seed reached; a missing log is left out."""
    def write(name, values):
        with open(tmp_path / f"{name}.log.jsonl", "w") as f:
            for step, v in enumerate(values, start=1):
                f.write(json.dumps({"step": step, "reward": 1.0, "think_words_right": v, "think_words_wrong": 2 * v,
                                    "completion_tokens_wrong": 30.0, "correct_fraction": 0.5}) + "\n")
    write("grpo-0", [10.0] * 6)
    write("grpo-1", [20.0] * 4)          # stopped at step 4: the mean runs to step 4
    write("ecr-0", [1.0, 3.0, 5.0])
    rows = [{"label": "none", "runs": [str(tmp_path / "grpo-0"), str(tmp_path / "grpo-1")]},
            {"label": "ECR", "runs": [str(tmp_path / "ecr-0"), str(tmp_path / "ecr-1")]},   # ecr-1 not run
            {"label": "CWR", "runs": [str(tmp_path / "cwr-0")]}]
    with open(tmp_path / "factors.json", "w") as f:
        json.dump({"factors": {"length": {"rows": rows}, "sft": {"rows": rows}}}, f)
    paths = plot.main(["--factors", str(tmp_path / "factors.json"), "--out", str(tmp_path), "--window", "2"])
    assert [p.rsplit("/", 1)[1] for p in paths] == ["factors-length.png"]   # the sft factor has no curves
    with open(tmp_path / "factors.json") as f:
        fig = plot.factor_figures(plt, json.load(f)["factors"], window=2)["factors-length"]
    right = fig.axes[0]
    assert right.get_title() == "<think> words, right answers"
    thick = [line for line in right.get_lines() if line.get_linewidth() > 1]
    assert list(thick[0].get_ydata()) == pytest.approx([15.0] * 4)        # mean of 10 and 20, steps 1-4
    assert list(thick[1].get_ydata()) == pytest.approx([1.0, 2.0, 4.0])   # moving mean of 2 steps
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["none (2 seeds)", "ECR (1 seeds)", "CWR (0 seeds)"]
    plt.close(fig)


def test_a_log_cut_short_is_one_line_naming_the_file_and_line(tmp_path):
    run = write_log(tmp_path / "run", 0.0, steps=3)
    with open(run + ".log.jsonl") as f:
        lines = f.readlines()
    with open(run + ".log.jsonl", "w") as f:                     # a run killed while writing its third line
        f.writelines(lines[:2] + [lines[2][:30]])
    message = f"plot.py: {run}.log.jsonl line 3: not valid JSON (Unterminated string starting at, column 29)"
    with pytest.raises(DataError) as error:
        plot.read_log(run)
    assert str(error.value) == message
    done = subprocess.run([sys.executable, "plot.py", run, "--out", str(tmp_path / "figs")], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.abspath(plot.__file__)))
    assert done.returncode == 1 and done.stderr.strip() == message   # one line, no traceback
    with open(run + ".log.jsonl", "w") as f:
        f.writelines(lines[:2] + ["[3]\n"])
    with pytest.raises(DataError, match=r"line 3: expected a JSON object, got list$"):
        plot.read_log(run)


def test_steps_that_sampled_no_open_question_draw_no_histogram_and_no_warning(tmp_path):
    run = write_log(tmp_path / "closed-only", 0.0, steps=2)   # a short run of closed questions only
    logs = {"closed-only": [row | {"open_semantic_raw": [], "open_semantic": []} for row in plot.read_log(run)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # numpy's "Degrees of freedom <= 0" and 0/0 in the density
        fig = plot.plot_semantic(plt, logs, early=5, late=5)
    assert not any(ax.patches for ax in fig.axes)
    assert all(ax.get_title().startswith("no semantic scores logged") for ax in fig.axes)
    plt.close(fig)
