"""Tests of rewards.py: values computed by hand or by an independent implementation (nltk's
sentence_bleu, the rouge-score package, math/statistics). evaluate.py's metrics (BERTScore, the
predictions mode) are tested in test_evaluate.py.

    python -m pytest test_rewards.py -q
"""
import argparse
import json
import math
import random
import statistics
import warnings

import numpy as np
import pytest

import rewards
from rewards import (AdaptiveSemanticReward, RewardWeights, bleu1, reward_list,
                     collapse_diagnostics, compute_rewards, cwr_length_reward, ecr_length_reward, exact_match,
                     extract_answer, format_reward, normalize, rouge1_f1, textual_reward, think_text, token_recall)


def completion(answer, think="The image shows it."):
    return f"<think>{think}</think><answer>{answer}</answer>"


class FixedScorer:
    """Stands in for SemanticScorer (or BERTScorer) where a test needs exact values: 1.0 for the same normalised
    tokens, 0.5 otherwise, 0 for an empty prediction."""
    name, layer = "fixed", 0  # what evaluate.main prints of a BERTScorer

    def score(self, predictions, references):
        return np.array([0.0 if not normalize(p) else 1.0 if normalize(p) == normalize(r) else 0.5
                         for p, r in zip(predictions, references)])


# ---- text normalisation and answer extraction

@pytest.mark.parametrize("text, tokens", [
    ("The MRI, of the Brain!", ["mri", "of", "brain"]),
    ("left-sided effusion.", ["left", "sided", "effusion"]),
    ("An apple a day", ["apple", "day"]),
    ("T2_weighted (axial)", ["t2", "weighted", "axial"]),
    ("Épanchement  PLEURAL", ["épanchement", "pleural"]),
    ("", []), ("  ... ", []), (None, []), ("the a an", []),
])
def test_normalize(text, tokens):
    assert normalize(text) == tokens


def test_extract_answer_and_think():
    c = "<think> opacity at the base </think>\n<answer> Pneumonia </answer>"
    assert extract_answer(c) == "Pneumonia" and think_text(c) == "opacity at the base"
    assert extract_answer("<answer>a\nb</answer><answer>c</answer>") == "a\nb"  # the first one
    assert extract_answer("  just pneumonia ") == "just pneumonia"  # no tags: the whole completion
    assert extract_answer("just pneumonia", strict=True) == ""  # METHOD.md §3, for rewards
    assert extract_answer("<answer>cut off by max tokens", strict=True) == ""
    assert think_text("<answer>x</answer>") == "" and extract_answer(None) == ""


@pytest.mark.parametrize("text, reward", [
    ("<think>reasoning</think><answer>yes</answer>", 1.0),
    ("  <think>a\nb</think>\n\n<answer> left lung </answer>\n", 1.0),
    ("<answer>yes</answer>", 0.0),
    ("<think></think><answer>yes</answer>", 0.0),
    ("<think>r</think><answer>  </answer>", 0.0),
    ("<think>r</think><answer>yes</answer> and more", 0.0),
    ("preamble <think>r</think><answer>yes</answer>", 0.0),
    ("<think>r</think><answer>yes</answer><answer>no</answer>", 0.0),
    ("<think>r<think>s</think><answer>yes</answer>", 0.0),
    ("<answer>yes</answer><think>r</think>", 0.0),
    ("", 0.0), (None, 0.0),
])
def test_format_reward(text, reward):
    assert format_reward(text) == reward


# ---- textual rewards, by hand

def test_textual_rewards_by_hand():
    # hyp [left, lung, effusion] c=3, ref [effusion, in, left, lung] r=4, 3 matches
    assert bleu1("Left lung effusion.", "effusion in the left lung") == pytest.approx(math.exp(1 - 4 / 3))
    assert rouge1_f1("Left lung effusion.", "effusion in the left lung") == pytest.approx(2 * 0.75 / 1.75)
    assert token_recall("Left lung effusion.", "effusion in the left lung") == pytest.approx(0.75)
    assert textual_reward("Left lung effusion.", "effusion in the left lung", "open") == pytest.approx(
        (math.exp(-1 / 3) + 6 / 7) / 2)
    # repeated words are clipped: 1 match of 3, c > r so no brevity penalty
    assert bleu1("lung lung lung", "lung") == pytest.approx(1 / 3)
    assert rouge1_f1("lung lung lung", "lung") == pytest.approx(0.5)  # P 1/3, R 1
    assert token_recall("lung", "lung lung") == 0.5
    # articles and punctuation do not count
    assert textual_reward("The effusion!", "effusion", "open") == 1.0
    # a synonym shares no token: textual reward 0 (the semantic reward is for this)
    assert textual_reward("MRI", "magnetic resonance imaging", "open") == 0.0
    assert token_recall("there is a left pleural effusion", "left effusion") == 1.0


def test_bleu1_brevity_penalty():
    assert bleu1("effusion", "left pleural effusion") == pytest.approx(math.exp(1 - 3))  # c=1, r=3
    assert bleu1("pleural effusion", "left pleural effusion") == pytest.approx(math.exp(1 - 3 / 2))
    assert bleu1("left pleural effusion", "left pleural effusion") == 1.0  # c = r: BP = exp(0)
    assert bleu1("big left pleural effusion", "left pleural effusion") == pytest.approx(3 / 4)  # c > r


@pytest.mark.parametrize("prediction, reference, reward", [
    ("Yes.", "yes", 1.0), ("YES", "Yes", 1.0), ("no", "yes", 0.0), ("yes, there is", "yes", 0.0),
    ("the left lung", "Left lung", 1.0), ("", "yes", 0.0), (None, "no", 0.0), ("", "", 0.0), ("the", "the", 0.0),
])
def test_closed_exact_match(prediction, reference, reward):
    assert textual_reward(prediction, reference, "closed") == reward == exact_match(prediction, reference)


def test_empty_answers_score_zero():
    for metric in (bleu1, rouge1_f1, token_recall, exact_match):
        assert metric("", "pneumonia") == 0.0 and metric("pneumonia", "") == 0.0 and metric(None, None) == 0.0
    assert textual_reward("", "pneumonia", "open") == 0.0


def _random_answer(rng):
    words = ["left", "right", "lung", "Lung", "effusion", "pleural", "the", "a", "an", "mass", "MRI", "CT",
             "T2", "lobe,", "upper", "lower", "(axial)", "no", "yes", "x-ray", "brain."]
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))


def test_bleu1_and_rouge1_agree_with_nltk_and_rouge_score():
    sentence_bleu = pytest.importorskip("nltk.translate.bleu_score").sentence_bleu   # in requirements.txt; a
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")                   # bare GPU image may lack them

    rng = random.Random(0)
    cases = [(_random_answer(rng), _random_answer(rng)) for _ in range(400)]
    cases += [("left lung effusion", "effusion in the left lung"), ("lung lung lung", "lung"),
              ("effusion", "left pleural effusion"), ("MRI", "magnetic resonance imaging"),
              ("the brain", "brain"), ("a b c d e", "a b c d e f g h")]
    rouge = rouge_scorer.RougeScorer(["rouge1"])
    checked = 0
    for prediction, reference in cases:
        hyp, ref = normalize(prediction), normalize(reference)
        if not hyp or not ref:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nltk warns about the zero 2..4-gram counts it ignores
            expected_bleu = sentence_bleu([ref], hyp, weights=(1, 0, 0, 0))
        expected_rouge = rouge.score(" ".join(ref), " ".join(hyp))["rouge1"].fmeasure
        assert bleu1(prediction, reference) == pytest.approx(expected_bleu, abs=1e-6), (prediction, reference)
        assert rouge1_f1(prediction, reference) == pytest.approx(expected_rouge, abs=1e-6), (prediction, reference)
        checked += 1
    assert checked > 350


def test_length_rewards():
    words = " ".join(["word"] * 64)
    assert ecr_length_reward(completion("x", think=words), target_length=128) == 0.5
    assert ecr_length_reward(completion("x", think=words * 3), target_length=128) == 1.0
    assert ecr_length_reward("<answer>x</answer>") == 0.0
    assert cwr_length_reward(completion("x", think=words), 0.5, target_length=128) == 0.25
    with pytest.raises(ValueError):
        ecr_length_reward("x", target_length=0)
    with pytest.raises(ValueError):
        cwr_length_reward("x", float("nan"))


# ---- bad inputs: defined values or a clear ValueError, never NaN

def test_bad_inputs():
    long_text = "effusion " * 200_000
    for value in (None, "", "   ", long_text, "脑部 MRI 显示", "épanchement pleural", "\x00\ufffd"):
        for metric in (bleu1, rouge1_f1, token_recall, exact_match):
            result = metric(value, "pleural effusion")
            assert 0.0 <= result <= 1.0 and not math.isnan(result)
        assert format_reward(value) in (0.0, 1.0)
    for value in (5, 3.2, ["yes"], {"a": 1}, b"yes"):
        with pytest.raises(ValueError, match="must be a string"):
            bleu1(value, "yes")
        with pytest.raises(ValueError, match="must be a string"):
            format_reward(value)
    with pytest.raises(ValueError, match="answer_type"):
        textual_reward("yes", "yes", "free-text")


# ---- adaptive semantic reward

def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _linear_quantile(values, q):  # the definition numpy.quantile's default "linear" method implements
    values = sorted(values)
    position = q * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (position - low) * (values[high] - values[low])


def test_adaptive_by_hand():
    adaptive = AdaptiveSemanticReward()
    rewards = adaptive([0.2, 0.4, 0.9])
    sigma = statistics.pstdev([0.2, 0.4, 0.9])  # population std = sqrt(0.26 / 3)
    assert sigma == pytest.approx(math.sqrt(0.26 / 3))
    expected = [_sigmoid(2 * (s - 0.4) / (sigma + 1e-6)) for s in (0.2, 0.4, 0.9)]
    assert rewards == pytest.approx(expected, abs=1e-12)
    assert rewards == pytest.approx([0.2045, 0.5, 0.9676], abs=1e-4)  # the docstring's example


def test_adaptive_buffer_is_fifo_and_appends_first():
    adaptive = AdaptiveSemanticReward(buffer_size=4, quantile=0.25, k=3.0)
    adaptive([0.1, 0.2, 0.3])
    rewards = adaptive([0.5, 0.8])
    history = [0.2, 0.3, 0.5, 0.8]  # 0.1 evicted; the current batch is already in the buffer
    assert list(adaptive.buffer) == history
    tau, sigma = _linear_quantile(history, 0.25), statistics.pstdev(history)
    assert adaptive.tau == pytest.approx(tau) and adaptive.sigma == pytest.approx(sigma)
    assert rewards == pytest.approx([_sigmoid(3 * (s - tau) / (sigma + 1e-6)) for s in (0.5, 0.8)], abs=1e-12)


def test_adaptive_is_monotone():
    rng = np.random.default_rng(1)
    adaptive = AdaptiveSemanticReward()
    adaptive(rng.uniform(0, 1, 300))
    scores = np.sort(rng.uniform(0.3, 0.9, 64))
    rewards = adaptive(scores)
    assert np.all(np.diff(rewards) > 0) and np.all((rewards >= 0) & (rewards <= 1))


def test_adaptive_lifts_variance_of_a_collapsed_band():
    raw = np.random.default_rng(0).uniform(0.82, 0.95, 1024)
    adapted = AdaptiveSemanticReward()(raw)
    assert raw.var() < 0.002 and adapted.var() > 0.08


def test_adaptive_state_round_trip():
    rng = np.random.default_rng(2)
    original = AdaptiveSemanticReward(buffer_size=50, quantile=0.7, k=1.5)
    for _ in range(4):
        original(rng.uniform(0.5, 1.0, 16))
    state = json.loads(json.dumps(original.state_dict()))  # survives a JSON checkpoint
    assert len(state["buffer"]) == 50 and all(isinstance(x, float) for x in state["buffer"])
    resumed = AdaptiveSemanticReward()
    resumed.load_state_dict(state)
    batch = rng.uniform(0.5, 1.0, 16)
    assert np.array_equal(original(batch), resumed(batch))
    assert resumed.state_dict() == original.state_dict()


def test_adaptive_bad_inputs():
    adaptive = AdaptiveSemanticReward()
    assert adaptive([]).shape == (0,) and len(adaptive.buffer) == 0
    for bad in ([0.5, float("nan")], [[0.5]], ["high"], [float("inf")]):
        with pytest.raises(ValueError):
            adaptive(bad)
    assert len(adaptive.buffer) == 0
    one = adaptive([0.7])  # sigma = 0: s = tau gives sigmoid(0)
    assert one.tolist() == [0.5]
    with pytest.raises(ValueError):
        AdaptiveSemanticReward(buffer_size=0)
    with pytest.raises(ValueError):
        AdaptiveSemanticReward().load_state_dict({"buffer_size": 4, "quantile": 0.5, "k": 2, "eps": 1e-6,
                                                   "buffer": [0.1, None]})


# ---- semantic scorer (real encoder)

def test_semantic_scorer_matches_direct_cosine(scorer):
    predictions = ["magnetic resonance imaging", "MRI", "cardiomegaly", "yes", "MRI"]
    references = ["MRI", "MRI", "enlarged heart", "no", "fracture of the femur"]
    scores = scorer.score(predictions, references)
    embeddings = scorer.encoder.encode(predictions + references)  # not normalised: cos by hand
    for i, (p, r) in enumerate(zip(embeddings[:5], embeddings[5:])):
        cos = float(np.dot(p, r) / np.linalg.norm(p) / np.linalg.norm(r))
        assert scores[i] == pytest.approx(max(0.0, min(1.0, cos)), abs=1e-5)
    assert scores[1] == pytest.approx(1.0, abs=1e-6)  # identical strings
    assert scores[0] > 0.7 > scores[4]  # METHOD.md §1: cos(MRI, magnetic resonance imaging) = 0.78


def test_semantic_scorer_one_encode_per_call(scorer, monkeypatch):
    calls = []
    encode = scorer.encoder.encode
    monkeypatch.setattr(scorer.encoder, "encode",
                        lambda texts, **kw: calls.append(list(texts)) or encode(texts, **kw))
    first = scorer.score(["left lung", "left lung", "right lung", ""], ["lung", "lung", "pleura", "lung"])
    assert calls == [["left lung", "right lung", "lung", "pleura"]]  # distinct texts, empty ones skipped
    second = scorer.score(["left lung"], ["lung"])
    assert calls[1] == ["left lung", "lung"]
    assert second[0] == pytest.approx(first[0]) and first[3] == 0.0  # empty prediction scores 0
    assert scorer.score([], []).shape == (0,) and len(calls) == 2


def test_semantic_scores_do_not_depend_on_earlier_calls(scorer):
    """A resumed run has not made the earlier calls: its scores must equal the uninterrupted run's."""
    predictions, references = ["left upper lobe", "a mass", "MRI"], ["left lower lobe", "nodule", "CT scan"]
    cold = scorer.score(predictions, references)
    scorer.score(["x", "y"], ["nodule", "pleural effusion of the right side"])
    assert np.array_equal(scorer.score(predictions, references), cold)


def test_semantic_scorer_bad_inputs(scorer):
    scores = scorer.score([None, "", "x" * 50_000, "脑部", "épanchement"], ["yes", "yes", "yes", "brain", ""])
    assert scores.shape == (5,) and np.all((scores >= 0) & (scores <= 1)) and not np.isnan(scores).any()
    assert scores[0] == scores[1] == scores[4] == 0.0
    with pytest.raises(ValueError, match="must be a string"):
        scorer.score([3], ["yes"])
    with pytest.raises(ValueError, match="references"):
        scorer.score(["a", "b"], ["a"])


# ---- combining rewards and collapse diagnostics

def test_compute_rewards_exact_values():
    completions = [completion("Yes"), completion("no"), completion("left lung effusion"), "left lung effusion"]
    references = ["yes", "yes", "effusion in the left lung", "effusion in the left lung"]
    types = ["closed", "closed", "open", "open"]
    total, parts = compute_rewards(reward_list(RewardWeights(format=1, textual=2, semantic=0.5), "plain", FixedScorer()),
                                   rewards.references(references, types), completions)
    open_textual = (math.exp(-1 / 3) + 6 / 7) / 2
    assert parts["format"].tolist() == [1, 1, 1, 0]
    assert parts["textual"] == pytest.approx([1, 0, open_textual, 0])  # no <answer>: empty answer
    assert parts["semantic_raw"].tolist() == [1, 0, 0.5, 0]  # closed: exact match; open: scorer
    assert total == pytest.approx([1 + 2 + 0.5, 1, 1 + 2 * open_textual + 0.25, 0])
    assert set(parts) == {"format", "textual", "semantic_raw", "semantic"}


def test_compute_rewards_worked_example_of_its_docstring():
    cosine = {"effusion": 0.8, "pneumothorax": 0.3}

    class TableScorer:
        def score(self, predictions, references):
            return np.array([cosine[p] for p in predictions])
    records = rewards.references(["yes", "pleural effusion", "pleural effusion"], ["closed", "open", "open"])
    completions = [completion("yes"), completion("effusion"), "<answer>pneumothorax</answer>"]
    total, parts = compute_rewards(reward_list(scorer=TableScorer(), adaptive=AdaptiveSemanticReward()),
                                   records, completions)
    assert parts["format"].tolist() == [1, 1, 0]
    assert parts["textual"] == pytest.approx([1, (math.exp(-1) + 2 / 3) / 2, 0])
    assert parts["textual"][1] == pytest.approx(0.5173, abs=5e-5)
    assert parts["semantic_raw"] == pytest.approx([1, 0.8, 0.3])
    sigmoid = 1 / (1 + math.exp(-2))   # 2 (0.8 - 0.55) / 0.25 = 2 (the eps added to sigma aside)
    assert parts["semantic"] == pytest.approx([1, sigmoid, 1 - sigmoid], rel=1e-5) and sigmoid == pytest.approx(0.8808, abs=5e-5)
    assert total == pytest.approx([3, 2.3981, 0.1192], abs=5e-5)


def test_compute_rewards_adaptive_sees_open_answers_only():
    adaptive = AdaptiveSemanticReward()
    completions = [completion("yes"), completion("lung"), completion("left lung"), completion("")]
    references = ["yes", "left lung", "left lung", "left lung"]
    types = ["closed", "open", "open", "open"]
    _, parts = compute_rewards(reward_list(scorer=FixedScorer(), adaptive=adaptive, closed_semantic="zero"),
                               rewards.references(references, types), completions)
    assert list(adaptive.buffer) == [0.5, 1.0, 0.0]
    assert parts["semantic_raw"].tolist() == [0.0, 0.5, 1.0, 0.0]
    assert parts["semantic"][0] == 0.0 and parts["semantic"][1:] == pytest.approx(
        AdaptiveSemanticReward()([0.5, 1.0, 0.0]))


def test_compute_rewards_length_and_options():
    c = [completion("x", think=" ".join(["w"] * 32))] * 2
    records = rewards.references(["x", "y"], ["open", "open"])
    total, parts = compute_rewards(reward_list(RewardWeights(format=0, textual=0, ecr=1, cwr=1), "none",
                                               target_length=64), records, c)
    assert parts["ecr"].tolist() == [0.5, 0.5] and parts["cwr"].tolist() == [0.5, 0.0]
    assert total.tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="scorer"):
        reward_list()   # the adaptive semantic reward without a scorer
    with pytest.raises(ValueError, match="judge"):
        reward_list(RewardWeights(judge=1), "none")
    with pytest.raises(ValueError, match="same length"):
        compute_rewards(reward_list(semantic="none"), records[:1], c)


def test_compute_rewards_with_real_encoder(scorer):
    answers = ("the heart is enlarged", "cardiomegaly", "small heart", "femur fracture")
    completions = [completion(a) for a in answers]
    total, parts = compute_rewards(reward_list(scorer=scorer, adaptive=AdaptiveSemanticReward()),
                                   rewards.references(["enlarged heart"] * 4, ["open"] * 4), completions)
    assert np.all(np.isfinite(total)) and parts["semantic_raw"][0] > 0.9 > parts["semantic_raw"][3]
    assert parts["semantic"].var() > parts["semantic_raw"].var()


def test_collapse_diagnostics_by_hand():
    parts = {"semantic_raw": np.array([0.8, 0.9, 1.0, 0.5]), "semantic": np.array([0.2, 0.5, 0.8, 0.0])}
    totals = np.array([1.0, 1.0, 2.0, 0.0])
    d = collapse_diagnostics(parts, totals, group_size=2, answer_types=["open", "open", "open", "closed"])
    assert d["equal_total_group_fraction"] == 0.5
    assert d["total_std_within_group"] == pytest.approx((0 + math.sqrt(2)) / 2)  # Bessel std of (2, 0)
    assert d["semantic_raw_var"] == pytest.approx(statistics.pvariance([0.8, 0.9, 1.0]))
    assert d["semantic_var"] == pytest.approx(statistics.pvariance([0.2, 0.5, 0.8]))
    with pytest.raises(ValueError):
        collapse_diagnostics(parts, totals, group_size=3)


def test_collapse_diagnostics_separate_policy_from_reward_collapse():
    # G = 3: one text thrice (policy collapse); three texts, equal totals (reward collapse);
    # two texts, equal totals (reward collapse); two texts, different totals (a signal)
    texts = ["a", "a", "a", "a", "b", "c", "a", "a", "b", "a", "b", "b"]
    totals = np.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    d = collapse_diagnostics({}, totals, group_size=3, texts=texts)
    assert d["equal_total_group_fraction"] == 3 / 4
    assert d["policy_collapse_fraction"] == 1 / 4 and d["reward_collapse_fraction"] == 2 / 4
    assert d["distinct_fraction"] == pytest.approx((1 / 3 + 3 / 3 + 2 / 3 + 2 / 3) / 4)
    assert "policy_collapse_fraction" not in collapse_diagnostics({}, totals, group_size=3)
    with pytest.raises(ValueError, match="11 texts for 12 totals"):
        collapse_diagnostics({}, totals, group_size=3, texts=texts[:11])


def test_reward_options_and_demo(scorer, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "SemanticScorer", lambda *args, **kwargs: scorer)
    parser = argparse.ArgumentParser()
    rewards.add_reward_args(parser)
    made = rewards.rewards_from_args(parser.parse_args([]))
    weights = RewardWeights()   # the default weights; no judge
    assert [(f.name, f.weight) for f in made.functions] == [("format", weights.format), ("textual", weights.textual),
                                                            ("semantic", weights.semantic)]
    assert isinstance(made.functions[2].fn, rewards.AdaptiveReward) and made.functions[2].fn.adaptive is made.adaptive
    assert made.adaptive.state_dict() == AdaptiveSemanticReward().state_dict()
    made = rewards.rewards_from_args(parser.parse_args(["--reward", "text", "--ecr-weight", "0.5"]))
    assert made.scorer is None and made.adaptive is None
    assert [(f.name, f.weight) for f in made.functions] == [("format", 1.0), ("textual", 1.0), ("ecr", 0.5)]
    with pytest.raises(ValueError, match=r"judge weight needs .*judges\.judge_from_args"):   # no judge= given
        rewards.rewards_from_args(parser.parse_args(["--judge-weight", "1"]))
    rewards.main([])  # the worked example of reward collapse
    out = capsys.readouterr().out
    assert "cardiomegaly" in out and "variance" in out and "adaptive" in out


def test_wording_check_compares_the_other_wording_with_the_closest_wrong_answer():
    cosine = {("2", "two"): 0.82, ("three", "two"): 0.81, ("3", "two"): 0.7,
              ("two", "2"): 0.82, ("three", "2"): 0.6, ("3", "2"): 0.87}

    class TableScorer:
        def score(self, predictions, references):
            return np.array([cosine.get((p, r), 0.0) for p, r in zip(predictions, references)])

    rows = rewards.wording_check(TableScorer(), {"count": [("2", ("two", "2")), ("3", ("three", "3"))]})
    assert len(rows) == 4 and rows[0] == ("count", "two", "2", 0.0, 0.82, "three", 0.0, 0.81)
    assert rows[1] == ("count", "2", "two", 0.0, 0.82, "3", 0.0, 0.87)  # a wrong answer above the right one


def test_phantom_wording_check_on_minilm(scorer, monkeypatch, capsys):
    from phantom import SYNONYMS, open_answer_wordings

    answers = open_answer_wordings()
    assert {c for kind in answers.values() for c, _ in kind} == set(SYNONYMS)  # every concept
    rows = {r[1]: r for r in rewards.wording_check(scorer, answers)}
    assert len(rows) == 18 and rows["two lesions"][2] == "a pair of lesions"
    # the encoder tells every right answer in its other wording from the closest wrong one:
    # cos("two lesions", "a pair of lesions") = 0.95 against 0.88 for "three lesions"
    assert all(row[4] > row[7] for row in rows.values())
    assert rows["two lesions"][5] == "three lesions" and rows["two lesions"][4] - rows["two lesions"][7] > 0.04
    monkeypatch.setattr(rewards, "SemanticScorer", lambda *args, **kwargs: scorer)
    rewards.main(["--phantom"])
    out = capsys.readouterr().out
    assert "closest wrong answer" in out and "0 of 18 references" in out and "a pair of lesions" in out
