"""RL-MedVQA's judge reward, METHOD.md §4: a local causal LM says whether the reasoning in <think> is
clinically sound (JudgeReward), or, on the phantom data, an oracle standing in for it: the share of
the facts stated in <think> that are true of the image (OracleJudge). Off by default (--judge-weight 0).

grpo.py builds it with judge_from_args and hands it to rewards.rewards_from_args, which adds it to
the total reward as the component "judge". Reading a completion (<think>, <answer>) is rewards.py's.
"""
import argparse

import numpy as np

from rewards import as_text, extract_answer, think_text

# [reconstructed] RL-MedVQA does not publish its judge prompt; see --judge-prompt. The judge sees the
# reference answer by default ([reconstructed]: it can then reward agreement with the ground truth,
# not only plausible-sounding reasoning); JUDGE_PROMPT_BLIND (--no-judge-reference) hides it.
JUDGE_PROMPT = (
    "You are an experienced clinician reviewing a student's reasoning about a medical image.\n"
    "Question: {question}\nReference answer: {reference}\nReasoning: {reasoning}\nFinal answer: {answer}\n"
    "Does the final answer agree with the reference answer, and is the reasoning clinically sound? "
    "Answer yes or no."
)
JUDGE_PROMPT_BLIND = (
    "You are an experienced clinician reviewing a student's reasoning about a medical image.\n"
    "Question: {question}\nReasoning: {reasoning}\nFinal answer: {answer}\n"
    "Is the reasoning clinically sound for this question and this answer? Answer yes or no."
)


class JudgeReward:
    """RL-MedVQA's clinical-alignment judge: a local causal LM reads the question, the reference
    answer (show_reference, the default; prompt None picks JUDGE_PROMPT, or JUDGE_PROMPT_BLIND
    without it), the <think> reasoning and the answer. [reconstructed] Reward 1 if the judge's
    next-token logit for "yes" beats the one for "no" (the best of each word's first tokens,
    with and without a leading space and capital), else 0: a greedy one-token verdict, since the
    paper publishes no decoding rule. A completion without reasoning gets 0 without asking. Off
    by default (weight 0).
    """

    def __init__(self, model_path, device=None, prompt=None, batch_size=8, max_reasoning_chars=4000,
                 show_reference=True):
        prompt = prompt or (JUDGE_PROMPT if show_reference else JUDGE_PROMPT_BLIND)
        if ("{reference}" in prompt) != show_reference:
            raise ValueError("--judge-prompt " + ("has no {reference} field; add one or pass --no-judge-reference"
                                                   if show_reference else "has a {reference} field, which "
                                                   "--no-judge-reference leaves unfilled; drop one of them"))
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"  # the next-token logits then sit at position -1 of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.pad_token is None:
            raise ValueError(f"judge tokenizer {model_path} has neither a pad nor an eos token")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(model_path).to(self.device).eval().requires_grad_(False)
        self.prompt, self.batch_size, self.max_reasoning_chars = prompt, batch_size, max_reasoning_chars
        yes = self._first_tokens(("yes", " yes", "Yes", " Yes"))
        no = self._first_tokens(("no", " no", "No", " No"))
        self.yes_ids, self.no_ids = sorted(yes - no), sorted(no - yes)  # a shared first token decides nothing
        if not self.yes_ids or not self.no_ids:
            raise ValueError(f"judge tokenizer {model_path} cannot tell 'yes' from 'no' by their first token")

    def _first_tokens(self, words):
        return {ids[0] for ids in (self.tokenizer.encode(w, add_special_tokens=False) for w in words) if ids}

    def prompt_text(self, question, completion, reference=""):
        """The text the judge reads for one completion (its chat template applied, if it has one)."""
        text = self.prompt.format(question=as_text(question, "question").strip(),
                                  reference=as_text(reference, "reference").strip(),
                                  reasoning=think_text(completion)[: self.max_reasoning_chars],
                                  answer=extract_answer(completion, strict=True))
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text + "\nAnswer:"

    def rewards(self, records, completions):
        """The judge as a reward function (compute_rewards): the records' questions and answers."""
        return self([r.question for r in records], completions, [r.answer for r in records])

    def __call__(self, questions, completions, references=None):
        """(N,) 1.0 where the judge says yes, else 0.0."""
        return (self.margins(questions, completions, references) > 0).astype(float)

    def margins(self, questions, completions, references=None):
        """(N,) the judge's next-token logit for yes minus the one for no; -inf (never asked) for a
        completion without reasoning."""
        import torch

        references = [""] * len(questions) if references is None else references
        if not len(questions) == len(completions) == len(references):
            raise ValueError(f"{len(questions)} questions, {len(completions)} completions, "
                             f"{len(references)} references: they must have the same length")
        margins = np.full(len(completions), -np.inf)
        asked = [i for i, c in enumerate(completions) if think_text(c)]
        for start in range(0, len(asked), self.batch_size):
            rows = asked[start:start + self.batch_size]
            batch = self.tokenizer([self.prompt_text(questions[i], completions[i], references[i]) for i in rows],
                                   return_tensors="pt", padding=True,  # a chat template has its own BOS
                                   add_special_tokens=not self.tokenizer.chat_template).to(self.device)
            position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # left padding
            with torch.inference_mode():
                logits = self.model(**batch, position_ids=position_ids, logits_to_keep=1).logits[:, -1]  # (b, V)
            # [reconstructed] the verdict: "yes" beats "no" on the first token (the best of each word's forms)
            margin = logits[:, self.yes_ids].max(-1).values - logits[:, self.no_ids].max(-1).values   # (b,)
            margins[rows] = margin.float().cpu().numpy()
        return margins


class OracleJudge:
    """NOT a language model: a stand-in for RL-MedVQA's LLM judge on the phantom data, an oracle that
    knows each image's true facts. It reads the facts stated in the completion's <think>
    (phantom.parse_caption: modality, region, lesion count and, when lesions are stated, their kind
    and each quadrant) and rewards the share that are true of the image, whose caption opens the
    record's reference rationale (record.cot): phantom.fact_truths, the facts of evaluate.py's
    reasoning fact_accuracy, which with this judge on is a trained-for metric. 0 when <think>
    states no readable caption. It isolates the effect of rewarding sound reasoning from a real
    judge's own errors.
    Example, truth "Ultrasound of the chest. Two masses: left upper, right upper.":
        <think>Ultrasound of the chest. Two masses: left upper, right lower. ...  -> 5/6
        <think>CT of the chest. No lesion. ...                                   -> 1/3
        <think>I see a lung.                                                      -> 0
    """

    def rewards(self, records, completions):
        from phantom import fact_truths, parse_caption   # the judge's only use of the dataset

        scores = np.zeros(len(completions))
        for i, (record, completion) in enumerate(zip(records, completions)):
            truth = parse_caption(getattr(record, "cot", None) or "")
            if truth is None:
                where = getattr(record, "source", "") or f"the record of question {record.question!r}"
                raise ValueError(f"--judge oracle: {where}: its rationale does not open with a phantom caption; "
                                 "the oracle judge knows only the phantom data's facts")
            stated = parse_caption(think_text(completion))
            if stated is not None:
                scores[i] = np.mean(fact_truths(stated, truth))   # the facts evaluate.py's fact_accuracy counts
        return scores


JUDGES = ("lm", "oracle")   # --judge


def add_judge_args(group):
    """The judge's options, added to add_reward_args' group (which holds its weight, --judge-weight)."""
    group.add_argument("--judge", choices=JUDGES, default="lm",
                       help="the judge reward (--judge-weight): lm, a local causal LM (--judge-model) says yes/no; "
                            "oracle, NOT a language model but a stand-in for one on the phantom data: the share "
                            "of the facts stated in <think> that are true of the image")
    group.add_argument("--judge-model", default=None, help="local causal LM for the clinical judge reward")
    group.add_argument("--judge-reference", action=argparse.BooleanOptionalAction, default=True,
                       help="[reconstructed] show the lm judge the reference answer")
    group.add_argument("--judge-prompt", default=None,
                       help="[reconstructed] lm judge prompt template, fields {question} {reference} {reasoning} "
                            "{answer}; default: judges.JUDGE_PROMPT, or JUDGE_PROMPT_BLIND with "
                            "--no-judge-reference")


def judge_from_args(args, device=None):
    """The judge reward of the add_judge_args options (loads the lm judge), or None when
    --judge-weight is 0."""
    if not args.judge_weight:
        return None
    if args.judge == "oracle":
        return OracleJudge()
    if not args.judge_model:
        raise ValueError("--judge-weight needs --judge-model (or, on the phantom data, --judge oracle)")
    return JudgeReward(args.judge_model, device=device, prompt=args.judge_prompt, show_reference=args.judge_reference)
