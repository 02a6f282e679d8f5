"""The mistakes users make with runs, as they make them: nothing lost, nothing silent.

A run never changes or removes what it did not create; bad options stop before anything is
opened, with argparse's one-line message; a resumed run continues in place with one log row per
step; the learning-rate schedule survives an extension.
"""

import json
import os
import stat
import subprocess
import sys

import pytest

import grpo
import sft
from training import load_trainer_state

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = ["--model", "tiny", "--limit", "24", "--batch-size", "4", "--eval-size", "2", "--max-new-tokens", "4", "--eval-every", "0",
        "--save-every", "0"]


def tree(path):
    """Every file under path with its bytes, to show that nothing changed."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = f.read()
    return out


def log_rows(out):
    """The log's step rows (a resume that changed options adds a row of its own, without a step)."""
    return [row for line in open(str(out) + ".log.jsonl") if "step" in (row := json.loads(line))]


def log_steps(out):
    return [row["step"] for row in log_rows(out)]


@pytest.fixture
def finished(tmp_path):
    """A finished 2-step SFT run in tmp_path/run."""
    out = tmp_path / "run"
    sft.main(FAST + ["--out", str(out), "--steps", "2"])
    return out


def test_a_fresh_run_on_a_used_out_stops_before_touching_it(finished, capsys):
    before = tree(finished.parent)
    with pytest.raises(SystemExit, match="already holds a run.*--resume.*--overwrite"):
        sft.main(FAST + ["--out", str(finished), "--steps", "3"])
    assert tree(finished.parent) == before
    sft.main(FAST + ["--out", str(finished), "--steps", "3", "--overwrite"])
    assert log_steps(finished) == [1, 2, 3] and load_trainer_state(finished)["step"] == 3


def test_a_folder_of_the_users_files_is_never_written(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match="not a checkpoint"):
            sft.main(FAST + ["--out", str(tmp_path), "--steps", "1", *extra])
    assert tree(tmp_path) == {"notes.txt": b"keep me"}


def test_resume_without_out_continues_in_place_and_extends_the_schedule(finished, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                      # where the default runs/sft would go
    sft.main(FAST + ["--resume", str(finished), "--steps", "4"])
    assert not os.path.exists(tmp_path / "runs")
    assert load_trainer_state(finished)["step"] == 4 and log_steps(finished) == [1, 2, 3, 4]
    lrs = [row["lr"] for row in log_rows(finished)]
    # the 2-step schedule ended at its floor (0.1 * 2e-3); the extension stays there, no restart
    assert lrs[2] == lrs[3] == pytest.approx(2e-4) and lrs[2] <= lrs[1]


def test_resume_keeps_one_log_row_per_step(finished):
    with open(str(finished) + ".log.jsonl", "a") as log:   # a run killed after logging 3, 4
        log.write(json.dumps({"step": 3, "loss": 9.0}) + "\n" + json.dumps({"step": 4, "loss": 9.0}) + "\n")
    sft.main(FAST + ["--resume", str(finished), "--steps", "3"])
    assert log_steps(finished) == [1, 2, 3]
    assert log_rows(finished)[-1]["loss"] != 9.0


def test_interrupted_saves_are_named_and_cleaned(finished, capsys):
    os.rename(finished, str(finished) + ".old")            # killed between the save's two renames
    with pytest.raises(SystemExit, match=r"run\.old holds one.*mv"):
        sft.main(FAST + ["--resume", str(finished), "--steps", "3"])
    os.rename(str(finished) + ".old", finished)
    os.makedirs(str(finished) + ".tmp-abc123")              # killed while writing
    sft.main(FAST + ["--resume", str(finished), "--steps", "3"])
    assert sorted(os.listdir(finished.parent)) == ["run", "run.log.jsonl"]
    assert "removed" in capsys.readouterr().err


def test_checkpoint_folder_is_readable_by_others(finished):
    assert stat.S_IMODE(os.stat(finished).st_mode) & 0o055 == 0o055 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("script, option, value", [
    (sft, "--steps", "0"), (sft, "--batch-size", "0"), (sft, "--grad-accum", "0"), (sft, "--lr", "-1"),
    (grpo, "--num-generations", "1"), (grpo, "--micro-batch", "0"), (grpo, "--prompts-per-step", "0"),
    (grpo, "--temperature", "0"), (grpo, "--max-new-tokens", "0"), (grpo, "--top-p", "1.5")])
def test_bad_options_stop_at_parse_time(script, option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        script.parse_args(["--out", str(tmp_path / "x"), option, value])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"{os.path.basename(sys.argv[0])}: error: argument {option}") or option in error


def test_bad_option_and_missing_model_as_a_user_sees_them(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "grpo.py", "--num-generations", "1", "--out", str(tmp_path / "g")],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "grpo.py: error: argument --num-generations: must be >= 2, got 1")
    done = subprocess.run([sys.executable, "evaluate.py", "--model", str(tmp_path / "nothing"), "--limit", "2"],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        f"evaluate.py: --model {tmp_path / 'nothing'}: no such checkpoint directory "
        "(and HF_HUB_OFFLINE=1: no hub download)")
    assert not os.path.exists(tmp_path / "g") and not os.path.exists(tmp_path / "g.log.jsonl")


def test_an_over_long_prompt_is_refused_or_skipped_and_counted(tmp_path, capsys):
    from PIL import Image
    Image.new("RGB", (64, 64)).save(tmp_path / "scan.png")
    rows = [dict(image="scan.png", question=q, answer="yes", cot="A spot.") for q in
            ["Is there a lesion?"] * 3 + ["Is there a lesion? " + "very " * 4000]]
    for split in ("train", "val"):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    data = ["--model", "tiny", "--dataset", "json", "--data-root", str(tmp_path), "--batch-size", "1", "--steps", "1",
            "--eval-size", "2", "--max-new-tokens", "2", "--eval-every", "0", "--save-every", "0"]
    with pytest.raises(SystemExit, match=r"train.jsonl line 4.*over --max-prompt-tokens 2048"):
        sft.main(data + ["--out", str(tmp_path / "a")])
    sft.main(data + ["--out", str(tmp_path / "b"), "--skip-bad"])
    assert "skipped 1 record(s) whose prompt is over --max-prompt-tokens 2048" in capsys.readouterr().err
