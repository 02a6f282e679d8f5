"""Tests of judges.py: RL-MedVQA's LLM judge (JudgeReward) with a tiny randomly initialised
causal LM built here (nothing downloaded: the plumbing, not what a judge says), and the oracle
fact-checking judge that stands in for it on the phantom data (OracleJudge), on hand-made completions.

    python -m pytest test_judge.py -q
"""
import argparse

import numpy as np
import pytest

import rewards
from data import load_dataset
from judges import (JUDGE_PROMPT, JUDGE_PROMPT_BLIND, JudgeReward, OracleJudge, add_judge_args,
                    judge_from_args)
from records import VQARecord
from rewards import compute_rewards, extract_answer, think_text


def completion(answer, think="The image shows it."):
    return f"<think>{think}</think><answer>{answer}</answer>"


WORDS = ["<pad>", "<unk>", "</s>", "yes", "no", "Yes", "No", "the", "heart", "is", "enlarged", "cardiomegaly",
         "normal", "Reference", "answer", "Question", "Reasoning", "Final"]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A word-level tokenizer and a one-layer Llama with random weights, saved as a judge checkpoint."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("judge")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                            eos_token="</s>").save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


COMPLETIONS = [completion("yes", think="the heart is enlarged"), completion("no", think="heart"),
               "<answer>yes</answer>", completion("enlarged", think="is " * 40),
               completion("cardiomegaly", think="the heart is normal"), completion("normal", think="Yes yes")]
QUESTIONS = ["is the heart enlarged?"] * 6
REFERENCES = ["yes", "yes", "yes", "cardiomegaly", "cardiomegaly", "cardiomegaly"]


def test_judge_returns_zero_or_one(judge_dir):
    judge = JudgeReward(judge_dir, device="cpu", batch_size=2)
    scores = judge(QUESTIONS, COMPLETIONS, REFERENCES)
    assert scores.shape == (6,) and set(scores.tolist()) <= {0.0, 1.0} and scores[2] == 0.0  # no reasoning


def test_judge_margins_do_not_depend_on_the_batch_split(judge_dir):
    judge = JudgeReward(judge_dir, device="cpu", batch_size=1)
    alone = judge.margins(QUESTIONS, COMPLETIONS, REFERENCES)
    asked = [i for i, c in enumerate(COMPLETIONS) if "<think>" in c]
    assert alone[2] == -float("inf") and np.ptp(alone[asked]) > 1e-3   # the rows' prompts differ
    for batch_size in (2, 4, 8):   # left padding of unequal prompts: position ids must follow it
        judge.batch_size = batch_size
        assert judge.margins(QUESTIONS, COMPLETIONS, REFERENCES)[asked] == pytest.approx(alone[asked], abs=1e-5)
        assert judge(QUESTIONS, COMPLETIONS, REFERENCES).tolist() == (alone > 0).astype(float).tolist()


class Spy:
    """The judge's tokenizer, recording the texts it is asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.texts.extend(texts)
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_the_judge_reads_the_reference_answer_by_default(judge_dir):
    judge = JudgeReward(judge_dir, device="cpu")
    assert judge.prompt == JUDGE_PROMPT
    judge.tokenizer = spy = Spy(judge.tokenizer)
    records = [VQARecord(f"r{i}", None, q, a, "open", "test") for i, (q, a) in enumerate(zip(QUESTIONS, REFERENCES))]
    judge.rewards(records, COMPLETIONS)   # the reward function of compute_rewards: the records' answers
    asked = [i for i, c in enumerate(COMPLETIONS) if "<think>" in c]
    assert len(spy.texts) == len(asked)
    for text, i in zip(spy.texts, asked):
        assert f"Reference answer: {REFERENCES[i]}\nReasoning: {think_text(COMPLETIONS[i])}\n" in text
        assert f"Final answer: {extract_answer(COMPLETIONS[i])}\n" in text
        assert text.startswith("You are an experienced clinician") and text.endswith("yes or no.\nAnswer:")
    blind = JudgeReward(judge_dir, device="cpu", show_reference=False)
    assert blind.prompt == JUDGE_PROMPT_BLIND
    assert "Reference" not in blind.prompt_text(QUESTIONS[0], COMPLETIONS[0], "cardiomegaly")


def test_a_judge_prompt_must_match_the_reference_option(judge_dir):
    with pytest.raises(ValueError, match="no {reference} field"):
        JudgeReward(judge_dir, device="cpu", prompt="Q: {question} {reasoning} {answer}")
    with pytest.raises(ValueError, match="--no-judge-reference leaves unfilled"):
        JudgeReward(judge_dir, device="cpu", prompt=JUDGE_PROMPT, show_reference=False)


# ---- the oracle judge on the phantom data

TRUTH = "Ultrasound of the chest. Two masses: left upper, right upper. The heart lies on the left."


def record(cot=TRUTH):
    return VQARecord("p0", None, "How many masses?", "two", "open", "phantom", cot=cot, source="phantom record 0")


@pytest.mark.parametrize("think, expected", [
    ("Ultrasound of the chest. Two masses: left upper, right upper. So two.", 1.0),
    ("Ultrasound of the chest. Two masses: left upper, right lower. So two.", 5 / 6),   # one quadrant wrong
    ("Ultrasound of the chest. Two nodules: right upper, left upper.", 5 / 6),         # the kind wrong
    ("CT of the chest. No lesion. So none.", 1 / 3),      # modality and count wrong; states no kind
    ("MRI of the head. Three masses: left lower.", 1 / 5),   # only the kind right (of 5 facts)
    ("I see a lung.", 0.0),                                # no readable facts
    ("", 0.0),
])
def test_oracle_judge_rewards_the_share_of_stated_facts_that_are_true(think, expected):
    assert OracleJudge().rewards([record()], [completion("two", think=think)]).tolist() == [pytest.approx(expected)]


def test_oracle_judge_on_real_phantom_records_and_as_a_reward_component():
    by_image = {r.source: r for r in load_dataset("phantom", "val")}   # "phantom val image 3": one per image
    records = list(by_image.values())[:4]
    right = [completion(r.answer, think=r.cot) for r in records]   # the reference rationale itself
    wrong = [completion(r.answer, think=records[(i + 1) % 4].cot) for i, r in enumerate(records)]
    oracle = OracleJudge()
    assert oracle.rewards(records, right).tolist() == [1.0] * 4
    assert oracle.rewards(records, wrong).mean() < 1       # another image's facts
    parser = argparse.ArgumentParser()
    add_judge_args(rewards.add_reward_args(parser))
    args = parser.parse_args(["--reward", "text", "--judge", "oracle", "--judge-weight", "0.5"])
    built = rewards.rewards_from_args(args, judge=judge_from_args(args))
    total, parts = compute_rewards(built.functions, records, right)
    assert parts["judge"].tolist() == [1.0] * 4
    assert total.tolist() == pytest.approx((parts["format"] + parts["textual"] + 0.5).tolist())


def test_oracle_judge_refuses_records_without_a_phantom_caption():
    with pytest.raises(ValueError, match="phantom record 0: its rationale does not open with a phantom caption"):
        OracleJudge().rewards([record(cot="The heart looks big.")], [completion("yes")])
    with pytest.raises(ValueError, match="phantom record 0"):
        OracleJudge().rewards([record(cot=None)], [completion("yes")])


def test_lm_judge_needs_a_model_the_oracle_none():
    parser = argparse.ArgumentParser()
    add_judge_args(rewards.add_reward_args(parser))
    with pytest.raises(ValueError, match="--judge-model .*--judge oracle"):
        judge_from_args(parser.parse_args(["--reward", "text", "--judge-weight", "1"]))
    args = parser.parse_args(["--reward", "text", "--judge", "oracle"])
    assert judge_from_args(args) is None
    unweighted = rewards.rewards_from_args(args)
    assert [f.name for f in unweighted.functions] == ["format", "textual"]   # --judge-weight 0: no judge
