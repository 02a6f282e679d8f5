"""plot.py on hand-made grpo.py logs: panels in a grid a person can read at 100% zoom, and several
runs overlaid on the same axes with a legend naming each.

    python -m pytest test_plot.py -q
"""

import json

import numpy as np
import pytest
from PIL import Image

import plot

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
                     "semantic.png": (840, 600)}

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
