"""Smoke and resume tests of sft.py on the tiny model (a few optimizer steps, seconds each)."""

import json

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

import sft
from phantom import phantom_dataset
from distributed import setup
from training import load_trainer_state

FAST = ["--model", "tiny", "--limit", "24", "--batch-size", "4", "--eval-size", "4", "--max-new-tokens", "8",
        "--eval-every", "0"]


def weights(path):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path).state_dict()


def test_sft_smoke_run_writes_a_checkpoint_and_learns(tmp_path):
    out = str(tmp_path / "sft")
    sft.main(FAST + ["--out", out, "--steps", "6", "--save-every", "0"])
    state = load_trainer_state(out)
    assert state["step"] == 6
    log = [json.loads(line) for line in open(out + ".log.jsonl")]
    assert [row["step"] for row in log] == [1, 2, 3, 4, 5, 6]
    losses = [row["loss"] for row in log]                  # 6 steps at 2e-3 already lower the loss
    assert np.mean(losses[3:]) < np.mean(losses[:3]) - 0.2  # (one batch of 4 is noisy: compare halves)
    assert 0 <= log[-1]["val"]["format"] <= 1 and log[-1]["val"]["n"] == 4
    assert json.load(open(f"{out}/meta.json"))["step"] == 6


def test_sft_resume_gives_the_same_weights(tmp_path, kill_after_first_checkpoint):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    sft.main(FAST + ["--out", straight, "--steps", "4", "--save-every", "0"])
    with pytest.raises(kill_after_first_checkpoint(sft)):
        sft.main(FAST + ["--out", split, "--steps", "4", "--save-every", "2"])
    assert load_trainer_state(split)["step"] == 2
    sft.main(FAST + ["--out", split, "--steps", "4", "--save-every", "0", "--resume", split])
    a, b = weights(straight), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kmeans_picks_one_representative_per_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    x = np.concatenate([c + rng.normal(0, 0.1, (5, 2)) for c in centres])
    picked = sft.kmeans(x, 3, seed=1)
    assert sorted(i // 5 for i in picked) == [0, 1, 2]


def test_sft_target_and_missing_cot():
    record = phantom_dataset("train", size=1)[0]
    assert sft.sft_target(record) == f"<think>{record.cot}</think><answer>{record.answer}</answer>"
    record.cot = None
    assert sft.sft_target(record) is None
    assert sft.sft_target(record, "answer") == (f"<think>The answer is {record.answer}.</think>"
                                                f"<answer>{record.answer}</answer>")


def test_armed_a_keeps_correct_rationales_then_k_representatives(tmp_path, monkeypatch):
    """--cot-from: rationales the checkpoint writes are kept only when well formed and correct;
    --cot-select K keeps K of them (k-means over sentence embeddings)."""
    from policy import Completions
    records = phantom_dataset("train", size=6)
    start = tmp_path / "start"
    sft.main(FAST + ["--out", str(start), "--steps", "1", "--save-every", "0"])
    calls = iter(range(100))

    def fake_sampler(model, processor, batch, num_samples, **kwargs):
        texts = []
        for i in range(batch["input_ids"].shape[0]):
            r = records[next(calls)]
            right = f"<think>rationale {i} for {r.question}</think><answer>{r.answer}</answer>"
            wrong = "<think>x</think><answer>definitely not it</answer>"
            # record 0: only a wrong answer; record 1: right but unformatted; the rest: right
            texts += [wrong] * num_samples if r is records[0] else \
                [right.replace("<think>", "")] * num_samples if r is records[1] else [wrong, right]
        return Completions(None, None, texts)
    monkeypatch.setattr(sft, "sample_completions", fake_sampler)
    args = sft.parse_args(["--batch-size", "3", "--cot-samples", "2", "--cot-select", "0"])
    kept = sft.generate_cot(records, str(start), args, setup())
    assert [r.id for r in kept] == [r.id for r in records[2:]]
    assert all(r.cot.startswith("rationale") and r.question in r.cot for r in kept)
    calls = iter(range(100))
    args.cot_select = 2
    assert len(sft.generate_cot(records, str(start), args, setup())) == 2
