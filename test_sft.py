"""Smoke and resume tests of sft.py on the tiny model (a few optimizer steps, seconds each)."""

import itertools
import json

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

import sft
from data import dataset_from_args
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


def _fake_writer(asked, seen):
    """A stand-in for sample_completions that is asked `asked`, in order, again and again: a right
    rationale for each ("written for Q"), recording the sampling temperature it was asked for."""
    from policy import Completions
    order = itertools.cycle(asked)

    def sampler(model, processor, batch, num_samples, temperature, **kwargs):
        seen.append(temperature)
        rows = [next(order) for _ in range(batch["input_ids"].shape[0])]
        return Completions(None, None, [f"<think>written for {r.question}</think><answer>{r.answer}</answer>"
                                        for r in rows for _ in range(num_samples)])
    return sampler


def test_armed_a_cot_temperature_and_cot_augment(monkeypatch):
    """--cot-temperature reaches the sampler (default 0.7); --cot-from answers the questions of the
    first --cot-records records: its rationales replace the dataset's, or with --cot-augment are
    added after them."""
    common = ["--model", "tiny", "--limit", "6", "--cot-records", "4", "--cot-from", "tiny", "--batch-size", "2",
              "--cot-samples", "1", "--eval-size", "2"]
    records = dataset_from_args(sft.parse_args(common), "train")
    temperatures = []
    monkeypatch.setattr(sft, "sample_completions", _fake_writer(records[:4], temperatures))
    replaced, _ = sft.training_examples(sft.parse_args(common), setup())
    assert temperatures and set(temperatures) == {0.7}
    assert [r.id for r, _ in replaced] == [r.id for r in records[:4]]
    assert all(t == f"<think>written for {r.question}</think><answer>{r.answer}</answer>" for r, t in replaced)
    temperatures.clear()
    augmented, _ = sft.training_examples(sft.parse_args(common + ["--cot-augment", "--cot-temperature", "1.3"]),
                                         setup())
    assert set(temperatures) == {1.3}
    given = [(r.id, sft.sft_target(r)) for r in records[:4]]                # the dataset's own rationales
    assert [(r.id, t) for r, t in augmented[:4]] == given
    assert [(r.id, t) for r, t in augmented[4:]] == [(r.id, t) for r, t in replaced]
    for wrong in (["--cot-temperature", "0"], ["--cot-augment"]):        # augment needs --cot-from
        with pytest.raises(SystemExit):
            sft.parse_args(wrong)


def test_answer_only_drops_rationales_on_grpos_questions():
    """--answer-only (RL-MedVQA's SFT control): every record trains with <think> restating its answer,
    also records that have a rationale; with --train-offset the records are GRPO's answer-only ones."""
    common = ["--model", "tiny", "--limit", "5", "--cot-records", "3", "--eval-size", "2"]
    grpo_records = dataset_from_args(sft.parse_args(common + ["--train-offset", "6000"]), "train")
    assert all(r.cot for r in grpo_records)   # the phantom's records have rationales; the option drops them
    examples, _ = sft.training_examples(sft.parse_args(common + ["--train-offset", "6000", "--answer-only"]), setup())
    assert [r.id for r, _ in examples] == [r.id for r in grpo_records[:3]]
    assert [t for _, t in examples] == [f"<think>The answer is {r.answer}.</think><answer>{r.answer}</answer>"
                                        for r in grpo_records[:3]]
    default, _ = sft.training_examples(sft.parse_args(common), setup())
    assert [t for _, t in default] == [sft.sft_target(r) for r in dataset_from_args(sft.parse_args(common), "train")[:3]]
    with pytest.raises(SystemExit):
        sft.parse_args(["--answer-only", "--cot-from", "tiny"])
