"""GRPO: group relative policy optimisation of the SFT model (METHOD.md §5).

    python grpo.py                       # from runs/sft, on the phantom dataset, writes runs/grpo
    python grpo.py --reward text+semantic   # plain (collapsing) semantic reward, for comparison
    python grpo.py --resume runs/grpo       # continue an interrupted run
    python grpo.py --dynamic-sampling       # DAPO: replace groups with equal rewards by new prompts
    python grpo.py --loss-type dr_grpo --closed-semantic zero   # Dr. GRPO: no std scaling, constant normaliser
    python grpo.py --model runs/sft-qwen --dataset vqa_rad --data-root data/vqa_rad \\
        --prompts-per-step 8 --micro-batch 4 --lr 1e-6 --max-new-tokens 512 --gradient-checkpointing

For every prompt the model samples G completions; each gets a reward (format, textual
correctness, adaptive semantic: rewards.py). A completion's advantage is its reward relative to
its own group, A_i = (r_i - mean(r)) / (std(r) + 1e-4): no value network. The policy then
maximises the PPO-style clipped surrogate min(ρA, clip(ρ, 1-ε, 1+ε)A) per completion token,
ρ = π_θ / π_old, minus β times a k3 estimate of the KL to a frozen reference model.

Reading order: the options (parse_args) and what a run derives from them (Config); the whole of
the math (group_advantages, grpo_loss); one step's record (Group) through its stages (sample_step,
set_advantages, set_logprobs, policy_update); main, which calls them in the order of GRPO's
algorithm box.
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from data import add_data_args, batch_order, dataset_from_args, load_image, train_offset
from distributed import setup
from evaluate import validate
from judges import add_judge_args, judge_from_args
from lora import has_lora, reference_policy
from checkpoints import check_checkpoint_folder
from model import add_model_args, check_prompt_lengths, model_from_args, save_checkpoint
from policy import Completions, ImageFeatures, completion_logprobs, sample_completions, select_prompts
from records import run_script
from rewards import (add_reward_args, collapse_diagnostics, exact_match, extract_answer, length_target_unreachable,
                     rewards_from_args, think_text)
from training import (HelpFormatter, RunConfig, add_optimizer_args, add_run_args, at_least, claim_output, due,
                      open_log, parse_run_args, positive_float, set_learning_rate)

ADVANTAGE_SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "token", "dr_grpo")
DR_GRPO_SCALE = "none"   # Dr. GRPO (Liu et al. 2025) is two changes: no std division, and the dr_grpo normaliser


def parse_args(argv=None):
    """grpo.py's options. Its own come in three groups below; the shared ones from the file of
    their concept: --model and LoRA (model.py, lora.py), --precision (distributed.py), the data
    (data.py: grpo.py's --train-offset default is data.train_offset's), the rewards (rewards.py),
    the judge (judges.py), --out/--resume and the optimizer (training.py)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, default_model="runs/sft")
    add_data_args(p, train_offset=None)
    add_judge_args(add_reward_args(p))
    add_run_args(p, "grpo.py", default_out="runs/grpo")
    # [reconstructed] 3e-4 for the tiny model, chosen on the validation split (1e-4 and 2e-4 gained
    # less in 200 steps: EXPERIMENTS.md); use ~1e-6 for a 3B model.
    add_optimizer_args(p, lr=3e-4)

    # [reconstructed] batch size, learning rate, beta and clip epsilon are not published (METHOD.md §2).
    g = p.add_argument_group("GRPO (METHOD.md §5)")
    g.add_argument("--steps", type=at_least(1), default=200, help="rollout batches (each followed by --mu "
                   "updates); a resumed run may raise it (the schedule keeps its first length)")
    g.add_argument("--prompts-per-step", type=at_least(1), default=16,
                   help="prompts B per rollout batch, over all processes")
    g.add_argument("--num-generations", type=at_least(2), default=8,
                   help="completions G per prompt (ARMed: 8); a group of one has no advantage")
    g.add_argument("--mu", type=at_least(1), default=1, help="policy updates per rollout batch")
    g.add_argument("--beta", type=at_least(0.0, float), default=0.04, help="KL weight (0 skips the reference model)")
    g.add_argument("--clip-eps", type=positive_float, default=0.2, help="PPO ratio clip epsilon")
    g.add_argument("--loss-type", choices=LOSS_TYPES, default="grpo",
                   help="token aggregation of the loss; dr_grpo is Dr. GRPO whole: the constant normaliser and, "
                        "unless --advantage-scale is given, no std scaling")
    g.add_argument("--advantage-scale", choices=ADVANTAGE_SCALES, default=None,
                   help="divide advantages by the group std, the batch std, or nothing; default: group, "
                        "or none with --loss-type dr_grpo (Dr. GRPO)")
    g.add_argument("--dynamic-sampling", action="store_true",
                   help="DAPO's dynamic sampling (in neither paper): drop groups whose rewards are all equal "
                        "and draw more prompts until the batch is full")
    g.add_argument("--max-draws", type=at_least(1), default=4,
                   help="--dynamic-sampling: at most this many prompt batches per step, the first included")

    g = p.add_argument_group("sampling and the update's micro-batches")
    g.add_argument("--temperature", type=positive_float, default=0.7, help="sampling temperature (ARMed: 0.7)")
    g.add_argument("--top-p", type=positive_float, default=1.0, help="nucleus sampling threshold (<= 1)")
    g.add_argument("--max-new-tokens", type=at_least(1), default=96, help="completion length limit")
    g.add_argument("--micro-batch", type=at_least(1), default=16,
                   help="completions per forward/backward (gradient accumulation)")

    g = p.add_argument_group("validation, checkpoints, seed")
    g.add_argument("--eval-every", type=at_least(0), default=50, help="validate every N steps (0: only at the end)")
    g.add_argument("--eval-size", type=at_least(1), default=100, help="validation records per evaluation")
    g.add_argument("--save-every", type=at_least(0), default=20, help="checkpoint every N steps (0: only at the end)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    args = parse_run_args(p, argv)
    if args.top_p > 1:
        p.error(f"argument --top-p: must be <= 1, got {args.top_p}")
    if args.advantage_scale is None:   # resolved here, so the checkpoint's options record the value used
        args.advantage_scale = DR_GRPO_SCALE if args.loss_type == "dr_grpo" else "group"
    if (args.ecr_weight or args.cwr_weight) and (unreachable := length_target_unreachable(args.target_length,
                                                                                         args.max_new_tokens)):
        p.error(unreachable)
    return args


@dataclass(frozen=True)
class Config(RunConfig):
    """What a GRPO run derives from its options, once (RunConfig: the learning rate, its schedule,
    the checkpoint the policy loads), and:"""
    ref_model: str = None     # the frozen KL reference: --model (resumed: the run's own, unless repointed)
    train_offset: int = 0     # the first training record of the prompts (data.train_offset)

    @classmethod
    def from_args(cls, args, state=None):
        # resumed, args.model is the run's own --model (training.resume_options), or the folder
        # --allow-option-changes repointed it to
        return super().from_args(args, state, train_offset=train_offset(args), ref_model=args.model)


def group_advantages(rewards, group_size, scale="group", eps=1e-4):
    """Group-relative advantages: each reward minus its group's mean, optionally scaled.

    rewards: (N,) with N = B*G, ordered group by group: [q0_o1..q0_oG, q1_o1..q1_oG, ...].
    scale:
      "group"  (r - group mean) / (group std + eps); std Bessel-corrected, as TRL (default).
      "batch"  (r - group mean) / (std of all N rewards + eps); Bessel-corrected std of the raw
               rewards of the whole batch, as TRL's scale_rewards="batch". [reconstructed]
      "none"   r - group mean, no division ("Dr. GRPO"; RL-MedVQA finds the std division
               biases the update towards groups that are nearly all right or all wrong).
    A group whose rewards are all equal carries no signal and gets exactly 0 (never NaN, also
    for group_size 1).

    Example, two groups of G = 3:
        rewards = [1., 0., 0.,  0.5, 0.5, 0.5]
        group 0: mean 1/3, std sqrt(((2/3)² + 2·(1/3)²) / 2) = 1/sqrt(3) = 0.5774
        group_advantages(rewards, 3)                -> [1.15450, -0.57725, -0.57725, 0, 0, 0]
        group_advantages(rewards, 3, scale="none")  -> [0.66667, -0.33333, -0.33333, 0, 0, 0]
    """
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() != 1:
        raise ValueError("group_advantages: rewards must be 1-D (N,), "
                         f"got shape {tuple(rewards.shape)}")
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"group_advantages: scale must be one of {ADVANTAGE_SCALES}, "
                         f"got {scale!r}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_advantages: {rewards.numel()} rewards do not split into groups "
                         f"of group_size={group_size}")
    grouped = rewards.reshape(-1, group_size)                                # (B, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)                   # (B, G)
    # Rounding in the mean can leave ~1e-8 in an all-equal group, which eps would turn into
    # ~1e-4; set such groups to exactly zero.
    all_equal = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)
    centered = torch.where(all_equal, torch.zeros_like(centered), centered)
    if scale == "group":
        std = _bessel_std(centered, dim=1)                                   # (B, 1)
    elif scale == "batch":
        std = _bessel_std(rewards - rewards.mean(), dim=0)                   # (1,)
    else:
        return centered.reshape(-1)
    return (centered / (std + eps)).reshape(-1)                              # (N,)


def _bessel_std(centered, dim):
    """Bessel-corrected std from already-centred values; 0 (not NaN) when there is one value."""
    n = centered.shape[dim]
    return (centered.pow(2).sum(dim=dim, keepdim=True) / max(n - 1, 1)).sqrt()


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip_eps=0.2, beta=0.04,
              loss_type="grpo", max_new_tokens=None):
    """The GRPO loss over a batch of completions, and what to log about it.

    logps, old_logps, ref_logps: (N, T) log-probs of the sampled completion tokens under the
        policy being trained, the policy that sampled them, and the frozen reference. Only logps
        carries gradient (old_logps and ref_logps are detached here). ref_logps may be None
        when beta == 0.
    advantages: (N,) from group_advantages.  mask: (N, T) 1 for completion tokens (up to and
        including the first EOS), 0 for padding; bool or float. Log-probs at padding must be
        finite (any value): they are multiplied by 0.
    Per token: ρ = exp(logps - old_logps); surrogate = min(ρA, clip(ρ, 1-clip_eps, 1+clip_eps)A);
        k3 KL = exp(ref - logp) - (ref - logp) - 1 (Schulman's k3 estimate of KL(π_θ || π_ref),
        never negative);
        ℓ = -(surrogate - beta·KL).
    loss_type (how tokens are averaged):
        "grpo"     mean over each sequence's tokens, then over the N sequences (the paper's
                   form; a token of a short answer weighs more). A sequence without tokens
                   adds 0.
        "token"    sum over all completion tokens / their number (DAPO).
        "dr_grpo"  sum over all completion tokens / (N · max_new_tokens) (Dr. GRPO: no
                   length bias). Dr. GRPO's other half is group_advantages' scale "none";
                   grpo.py's --loss-type dr_grpo sets both (--advantage-scale overrides).
    Returns (loss, stats), stats python floats: "loss", and "kl", "ratio_mean", "clip_fraction",
    "sampled_nll" as means over completion tokens (kl is 0 when beta == 0: no reference).
    sampled_nll = -old_logps: how surprised the sampling policy is by its own samples, an estimate
    of its per-token entropy (falling towards 0: the policy narrowing), at no extra forward. clip_fraction
    counts the tokens whose gradient the clip stops: ρ < 1-ε with A < 0, or ρ > 1+ε with A > 0
    (TRL's is_low_clipped / is_high_clipped). A ρ outside the range on the other side (say
    ρ > 1+ε with A < 0) keeps the unclipped ρA.

    Worked example, N = 2, T = 2, clip_eps = 0.2, beta = 0:
        advantages = [1., -1.];  mask = [[1, 1], [1, 0]]
        logps - old_logps = [[ln 1.5, 0], [ln 0.5, 0]]  ->  ρ = [[1.5, 1], [0.5, 1]]
        surrogate = [[min(1.5, 1.2), 1], [min(-0.5, -0.8), ·]] = [[1.2, 1], [-0.8, ·]]
        ℓ = [[-1.2, -1.0], [0.8, ·]]
        "grpo":    mean(-1.1, 0.8)        = -0.15
        "token":   (-1.2 - 1.0 + 0.8) / 3 = -0.4667
        "dr_grpo": -1.4 / (2 · 2)         = -0.35   (max_new_tokens = 2)
        stats: clip_fraction 2/3 (both ρ ≠ 1 tokens hit the clip), ratio_mean 1.0, kl 0.
    With beta > 0, a token where ref - logp = ln 2 has KL 2 - ln 2 - 1 = 0.3069.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"grpo_loss: loss_type must be one of {LOSS_TYPES}, "
                         f"got {loss_type!r}")
    if beta > 0 and ref_logps is None:
        raise ValueError("grpo_loss: beta > 0 needs ref_logps (log-probs of the reference "
                         "model); pass them or set beta = 0")
    if loss_type == "dr_grpo" and not max_new_tokens:
        raise ValueError("grpo_loss: loss_type 'dr_grpo' needs max_new_tokens "
                         "(the generation limit)")
    shapes = [t.shape for t in (old_logps, ref_logps, mask) if t is not None]
    if any(s != logps.shape for s in shapes) or advantages.shape != logps.shape[:1]:
        raise ValueError(f"grpo_loss: logps {tuple(logps.shape)}, old_logps, ref_logps and "
                         "mask must share a shape (N, T) and advantages be (N,); got "
                         f"{[tuple(s) for s in shapes]} and {tuple(advantages.shape)}")
    mask = mask.to(logps.dtype)                                              # (N, T)
    adv = advantages.to(logps.dtype).unsqueeze(1)                            # (N, 1)
    ratio = torch.exp(logps - old_logps.detach())                            # (N, T)
    clipped_ratio = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    surrogate = torch.min(ratio * adv, clipped_ratio * adv)                  # (N, T)
    if beta > 0:
        log_ref_over_pi = ref_logps.detach() - logps
        kl = torch.exp(log_ref_over_pi) - log_ref_over_pi - 1                # (N, T), k3
        per_token_loss = -(surrogate - beta * kl)
    else:
        kl = torch.zeros_like(logps)
        per_token_loss = -surrogate
    masked_loss = per_token_loss * mask                                      # (N, T)
    if loss_type == "grpo":
        loss = (masked_loss.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    elif loss_type == "token":
        loss = masked_loss.sum() / mask.sum().clamp(min=1)
    else:
        loss = masked_loss.sum() / (logps.shape[0] * max_new_tokens)

    with torch.no_grad():
        clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + clip_eps) & (adv > 0))
        stats = {
            "loss": loss.item(),
            "kl": _masked_mean(kl, mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "clip_fraction": _masked_mean(clipped.to(mask.dtype), mask),
            "sampled_nll": _masked_mean(-old_logps.detach(), mask),
        }
    return loss, stats


def _masked_mean(values, mask):
    """Mean of values (N, T) over the tokens where mask (N, T) is 1, as a python float."""
    return ((values * mask).sum() / mask.sum().clamp(min=1)).item()


@dataclass
class Group:
    """One prompt and its G completions: GRPO's unit, from sampling to the update. Dynamic sampling
    keeps or drops whole groups; the update consumes a list of them.

        record        the prompt's dataset record (question, image, answer, answer_type)
        prompts, row  the prompt batch the group was sampled in (shared by the groups of one
                      draw; see one_batch) and the prompt's row in it
        completions   (G, T) generated ids, mask, texts
        rewards       (G,) total reward;  components: reward name -> (G,) (rewards.compute_rewards)
        advantages    (G,) group_advantages, set once every process's groups are scored
        old_logps     (G, T) π_old's token log-probs, when --mu > 1 (else π_old = π_θ.detach())
        ref_logps     (G, T) the reference's token log-probs, when --beta > 0
    Example, G = 4, --advantage-scale group: rewards [1, 0, 0, 1] (mean 0.5, Bessel std 0.5774)
        -> advantages [0.8659, -0.8659, -0.8659, 0.8659]; rewards [1, 1, 1, 1] -> not informative,
        advantages [0, 0, 0, 0] (dynamic sampling drops such a group).
    """
    record: object
    prompts: dict
    row: int
    completions: Completions
    rewards: np.ndarray
    components: dict
    advantages: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None

    @property
    def informative(self):
        """Whether its rewards differ: a group whose rewards are all equal has zero advantage."""
        return np.ptp(self.rewards) > 0


@dataclass
class Scores:
    """The rewards of a list of groups of every process, in rank order: the input of the advantages
    (the "batch" scale needs every process's) and what the log reports."""
    totals: np.ndarray    # (n,) total rewards
    components: dict      # reward name -> (n,)
    answer_types: list    # n: "open" or "closed"
    texts: list           # n: the completions' texts (identical ones in a group: the policy collapsing)
    correct: np.ndarray   # (n,) 1.0 where the <answer> matches the reference exactly (rewards.exact_match)
    tokens: np.ndarray    # (n,) completion tokens, up to and with the end of sequence

    @classmethod
    def gather(cls, groups, rt):
        """The Scores of this process's `groups` and those of every other process (a collective)."""
        own = (np.concatenate([g.rewards for g in groups]),
               {k: np.concatenate([g.components[k] for g in groups]) for k in groups[0].components},
               [g.record.answer_type for g in groups for _ in g.rewards],
               [text for g in groups for text in g.completions.texts],
               np.array([exact_match(extract_answer(text, strict=True), g.record.answer)
                         for g in groups for text in g.completions.texts]),
               np.concatenate([g.completions.mask.sum(dim=1).cpu().numpy() for g in groups]))
        totals, components, types, texts, correct, tokens = zip(*rt.gather(own))   # each: one per process
        return cls(np.concatenate(totals), {k: np.concatenate([c[k] for c in components]) for k in components[0]},
                   [t for part in types for t in part], [t for part in texts for t in part],
                   np.concatenate(correct), np.concatenate(tokens))


def draw_records(train, step, draw, args, rt):
    """This process's share of the prompts of a step's `draw`. Draw 0 is the step's own batch; the
    extra draws of --dynamic-sampling come from a second stream of batches with its own seed, one
    batch per (step, draw), so a resumed run draws exactly the same prompts."""
    if draw == 0:
        order = batch_order(len(train), args.prompts_per_step, step, args.seed)
    else:
        order = batch_order(len(train), args.prompts_per_step, step * args.max_draws + draw, args.seed + 1_000_003)
    return [train[i] for i in rt.share(order)]


def sample_groups(model, processor, records, reward_fn, args, rt):
    """Sample G completions for each of `records` (one batch) and score them: a Group each."""
    G = args.num_generations
    prompts = processor.prompts([r.question for r in records], [load_image(r) for r in records])
    with rt.generation(model) as all_done:
        out = sample_completions(model, processor, prompts, num_samples=G, temperature=args.temperature,
                                 top_p=args.top_p, max_new_tokens=args.max_new_tokens, all_done=all_done)
    total, components = reward_fn([r for r in records for _ in range(G)], out.texts)      # (B*G,)
    return [Group(r, prompts, i, out.select(range(i * G, (i + 1) * G)), total[i * G:(i + 1) * G],
                  {k: v[i * G:(i + 1) * G] for k, v in components.items()}) for i, r in enumerate(records)]


def sample_step(model, processor, records_of_draw, reward_fn, args, rt):
    """The groups this process trains on in a step, the Scores of the step's own prompts
    (records_of_draw(0), every process's: the log compares runs with and without dynamic sampling
    on them), and the number of prompt batches drawn. records_of_draw(d): this process's records
    of the step's d-th prompt batch (draw_records).

    --dynamic-sampling (DAPO, Yu et al. 2025; in neither paper): a group whose G rewards are all
    equal has zero advantage and teaches nothing but the KL term, so it is dropped and further
    prompts are drawn (records_of_draw(1), records_of_draw(2), ...) until every process has its
    B/W informative groups or --max-draws batches were sampled; then dropped groups fill the rest,
    so every process trains on the same number of rows (sharded training needs the same forwards
    on every process). Every process samples the same number of draws: the adaptive reward
    gathers scores from all of them.
    """
    groups = sample_groups(model, processor, records_of_draw(0), reward_fn, args, rt)
    first = Scores.gather(groups, rt)
    if not args.dynamic_sampling:
        return groups, first, 1
    quota = len(groups)
    kept, dropped = [], []
    for d in range(args.max_draws):
        if d > 0:
            groups = sample_groups(model, processor, records_of_draw(d), reward_fn, args, rt)
        for group in groups:
            (kept if group.informative and len(kept) < quota else dropped).append(group)
        if rt.sum(quota - len(kept)) == 0:
            break
    groups = kept + dropped[:quota - len(kept)]
    one_batch(groups, processor)
    return groups, first, d + 1


def one_batch(groups, processor):
    """Let the groups of a step share one prompt batch and one completion width: those of the draw
    they were sampled in, or, when they come from several draws, their prompts built again as one
    batch and their completions padded to the widest."""
    if len({id(g.prompts) for g in groups}) > 1:
        records = [g.record for g in groups]
        prompts = processor.prompts([r.question for r in records], [load_image(r) for r in records])
        completions = Completions.concat([g.completions for g in groups], processor.pad_token_id)
        for i, group in enumerate(groups):
            G = len(group.rewards)
            group.prompts, group.row, group.completions = prompts, i, completions.select(range(i * G, (i + 1) * G))


def set_advantages(groups, totals, args, rt):
    """Each group's advantages, from `totals` (N,): every process's groups' rewards in rank order
    (Scores.totals), since the "batch" scale needs all of them."""
    advantages = rt.share(group_advantages(torch.as_tensor(totals, dtype=torch.float32), args.num_generations,
                                           args.advantage_scale))                    # (N,) this process's
    for i, group in enumerate(groups):
        group.advantages = advantages[i * args.num_generations:(i + 1) * args.num_generations]


def as_batch(groups):
    """The groups (of one prompt batch and one width: one_batch) as one batch of N = len(groups) * G
    rows: the prompts, each repeated for its G completions (N rows), and the completions (N, T)."""
    prompts = select_prompts(groups[0].prompts, [g.row for g in groups for _ in g.rewards])
    return prompts, Completions.concat([g.completions for g in groups], pad_token_id=None)


def micro_logprobs(model, prompts, out, args):
    """completion_logprobs of a batch, --micro-batch rows at a time: (N, T)."""
    rows = range(out.ids.shape[0])
    return torch.cat([completion_logprobs(model, select_prompts(prompts, list(rows[i:i + args.micro_batch])),
                                          out.ids[i:i + args.micro_batch], out.mask[i:i + args.micro_batch],
                                          temperature=args.temperature)
                      for i in range(0, len(rows), args.micro_batch)])


@torch.no_grad()
def set_logprobs(model, ref_model, groups, args):
    """Each group's log-probs under π_old (with --mu > 1; with one update π_old equals π_θ and the
    ratio is exp(logp - logp.detach())) and under the frozen reference (with --beta > 0)."""
    prompts, out = as_batch(groups)
    G = args.num_generations
    if args.mu > 1:
        old = micro_logprobs(model, prompts, out, args)                               # (N, T)
        for i, group in enumerate(groups):
            group.old_logps = old[i * G:(i + 1) * G]
    if args.beta > 0:
        with reference_policy(model, ref_model) as reference:   # LoRA: the model, adapters off
            ref = micro_logprobs(reference, prompts, out, args)                       # (N, T)
        for i, group in enumerate(groups):
            group.ref_logps = ref[i * G:(i + 1) * G]


def policy_update(model, optimizer, params, groups, args, rt):
    """One optimizer step on this process's groups, accumulated over micro-batches (and processes).

    Micro-batches take completions of similar length and drop the padding columns past their
    longest one. Each micro-batch's loss is weighted by its share of the aggregation's denominator
    over the global batch (sequences for grpo and dr_grpo, tokens for token), so the gradient, summed
    over micro-batches and processes, equals that of one grpo_loss over the whole global batch.
    Worked example, one process, N = 4 completions of 3, 1, 2 and 1 tokens (7), --micro-batch 2:
        sorted by length: micro-batches {1, 1 tokens} and {2, 3 tokens}
        grpo, dr_grpo: each micro-batch loss is a mean over its 2 sequences (or its sum / (2 · max_new_tokens));
                       weights 2/4 and 2/4: their sum is the mean over the 4 sequences
        token:         micro-batch losses are means over 2 and 5 tokens; weights 2/7 and 5/7:
                       their sum is the mean over all 7 tokens
    With W processes, N and the token count are those of the global batch (rt.sum) and the
    gradients are summed over processes. kl, ratio_mean, clip_fraction and sampled_nll are weighted
    by tokens; sampled_nll is thus over the trained groups (the only ones with log-probs), where the
    other collapse diagnostics are over the step's own prompts (reward_log).
    A non-finite loss or gradient skips the step (on every process alike).
    """
    prompts, completions = as_batch(groups)
    advantages = torch.cat([g.advantages for g in groups])                          # (N,)
    old_logps = None if groups[0].old_logps is None else torch.cat([g.old_logps for g in groups])   # (N, T)
    ref_logps = None if groups[0].ref_logps is None else torch.cat([g.ref_logps for g in groups])
    ids, mask = completions.ids.to(rt.device), completions.mask.to(rt.device)
    n_local = ids.shape[0]
    N, total_tokens = rt.sum(n_local), rt.sum(int(mask.sum()))    # of the global batch
    stats_sum, finite = {}, True
    lengths = mask.sum(dim=1)                                                # (N,)
    order = torch.argsort(lengths, stable=True).cpu()   # similar lengths together: less padding
    images = ImageFeatures(model, prompts, accumulate=True)   # the vision tower once per image
    for i in range(0, n_local, args.micro_batch):
        rows = order[i:i + args.micro_batch].tolist()
        T = int(lengths[rows].max())      # the micro-batch's longest completion; the rest is padding
        m = mask[rows, :T]
        logps = completion_logprobs(model, select_prompts(prompts, rows), ids[rows, :T], m,
                                    temperature=args.temperature, images=images.rows(rows))  # (n, T)
        old = logps.detach() if old_logps is None else old_logps[rows, :T]
        ref = None if ref_logps is None else ref_logps[rows, :T]
        loss, stats = grpo_loss(logps, old, ref, advantages[rows].to(rt.device), m,
                                clip_eps=args.clip_eps, beta=args.beta, loss_type=args.loss_type,
                                max_new_tokens=args.max_new_tokens)
        token_weight = int(m.sum()) / max(total_tokens, 1)
        weight = token_weight if args.loss_type == "token" else logps.shape[0] / N
        finite = finite and bool(torch.isfinite(loss))
        (loss * weight).backward()   # a non-finite loss still runs backward: the processes stay in step
        for k, v in stats.items():  # the loss as aggregated; kl, ratio, clip fraction per token
            stats_sum[k] = stats_sum.get(k, 0.0) + v * (weight if k == "loss" else token_weight)
    images.backward()               # the vision tower's gradient, summed over the micro-batches
    stats_sum = {k: rt.sum(v) for k, v in stats_sum.items()}
    grad_norm = rt.clip_grad_norm(params, args.clip)
    skipped = rt.sum(not finite) > 0 or not math.isfinite(grad_norm)
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return dict(stats_sum, grad_norm=grad_norm, skipped=skipped)


def reward_log(first, trained, draws, G):
    """What the log says about rewards: the mean of each reward over the trained groups; collapse
    diagnostics of the step's own prompts (`first`, so runs with and without --dynamic-sampling
    compare alike), the draws and the share of trained groups with a signal, and every open
    completion's raw and weighted semantic reward (3 decimals; plot.py draws their distributions,
    ARMed's Figure 4)."""
    row = dict(reward=float(trained.totals.mean()),
               **{f"reward_{k}": float(np.mean(v)) for k, v in trained.components.items()},
               **collapse_diagnostics(first.components, first.totals, G, first.answer_types, first.texts))
    informative = np.ptp(trained.totals.reshape(-1, G), axis=1) > 0                       # (trained groups,)
    row.update(draws=draws, trained_informative_fraction=float(informative.mean()))
    for kind in ("closed", "open"):   # which questions the reward rises on
        is_kind = np.asarray(first.answer_types) == kind
        if is_kind.any():
            row[f"reward_{kind}_questions"] = float(first.totals[is_kind].mean())
    # RL-MedVQA's length question and GRPO's length bias: how long right and wrong answers run
    think_words = np.array([len(think_text(t).split()) for t in first.texts])
    right = first.correct == 1.0
    row.update(correct_fraction=float(right.mean()), think_words=float(think_words.mean()))
    for name, rows in (("right", right), ("wrong", ~right)):
        if rows.any():
            row.update({f"think_words_{name}": float(think_words[rows].mean()),
                        f"completion_tokens_{name}": float(first.tokens[rows].mean())})
    if "semantic_raw" in first.components:
        is_open = np.asarray(first.answer_types) == "open"
        row.update(open_semantic_raw=np.round(first.components["semantic_raw"][is_open], 3).tolist(),
                   open_semantic=np.round(first.components["semantic"][is_open], 3).tolist())
    return row


@dataclass
class Policy:
    """The model being trained and what travels with it."""
    model: torch.nn.Module
    processor: object
    ref_model: torch.nn.Module | None   # the frozen reference; None without KL, or with LoRA (the model, adapters off)
    optimizer: torch.optim.Optimizer
    params: list                        # the parameters that train


def load_run(args, config, rt):
    """The training prompts, the validation records and the Policy, as the options ask."""
    from pretrain import DEFAULT_INSTRUCT, ensure_instruct   # only this start needs pretrain.py
    if os.path.normpath(config.policy) == DEFAULT_INSTRUCT:   # ARMed-I's start: built once, on first use
        ensure_instruct(DEFAULT_INSTRUCT, "grpo.py")
    if config.policy != "tiny" and not os.path.exists(config.policy) and config.policy.startswith("runs/"):
        sys.exit(f"grpo.py: {config.policy} not found: run `python sft.py` first (or pass --model)")
    # an incomplete or damaged folder is named before any work
    for folder in {config.policy, *[config.ref_model] * (args.beta > 0)}:
        if os.path.isdir(folder):
            check_checkpoint_folder(folder)
    train = dataset_from_args(args, "train")
    val = dataset_from_args(args, "val")[:args.eval_size]
    model, processor = model_from_args(args, rt, name=config.policy, seed=args.seed)
    train, val = (check_prompt_lengths(records, processor, args.max_prompt_tokens, args.skip_bad, "grpo.py")
                  for records in (train, val))
    ref_model = None
    if args.beta > 0 and not has_lora(model):   # frozen copy of the starting policy for the KL term
        ref_model, _ = model_from_args(args, rt, name=config.ref_model, frozen=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=args.weight_decay)
    return train, val, Policy(model, processor, ref_model, optimizer, params)


def resume(state, policy, rewards, rt):
    """Restore the random states, the optimizer and the adaptive buffer; the step to continue from."""
    rt.set_rng_state(state["rng"])   # first: it refuses another number of processes
    rt.load_optimizer_state(policy.model, policy.optimizer, state["optimizer"])
    if rewards.adaptive is not None:
        rewards.adaptive.load_state_dict(state["adaptive"])
    return state["step"]


def held_out(policy, val, rewards, args, rt):
    """Validation metrics (evaluate.validate), greedy answers in batches of 4 x --prompts-per-step."""
    return validate(policy.model, policy.processor, val, rewards.scorer, args.prompts_per_step * 4,
                    args.max_new_tokens, rt)


def save(policy, rewards, config, args, rt, step, metrics):
    trainer_state = dict(step=step, optimizer=rt.optimizer_state(policy.model, policy.optimizer), rng=rt.rng_state(),
                         adaptive=rewards.adaptive.state_dict() if rewards.adaptive else None,
                         args=config.options(args, rt), config=asdict(config), world_size=rt.world_size)
    save_checkpoint(policy.model, policy.processor, args.out, trainer_state, rt=rt,
                    meta=dict(script="grpo.py", step=step, val=metrics, world_size=rt.world_size,
                              precision=rt.precision))


def main(argv=None):
    args = parse_args(argv)
    state = claim_output(args, "grpo.py")   # the checkpoint's trainer_state on --resume
    rt = setup(args.precision, args.device, args.gather_for_generation)
    rt.require_divisible(args.prompts_per_step, "--prompts-per-step", "grpo.py")
    config = Config.from_args(args, state)
    train, val, policy = load_run(args, config, rt)
    rewards = rewards_from_args(args, gather=rt.gather_scores if rt.sharded else None, judge=judge_from_args(args))
    torch.manual_seed(args.seed + rt.rank)   # each process samples its own completions
    start = resume(state, policy, rewards, rt) if state else 0
    log = open_log(args.out, keep_step=state and state["step"], enabled=rt.is_main,
                   note=args.resume_note)
    judge = ("" if not args.judge_weight else " + oracle judge (a stand-in, not an LLM)" if args.judge == "oracle"
             else f" + judge {args.judge_model}")
    rt.print(f"grpo.py: {len(train)} training prompts, G={args.num_generations}, reward {args.reward}{judge}, "
             f"from {config.policy} on {rt.world_size} x {rt.device.type}, precision {rt.precision}")
    metrics = None
    if args.eval_every and start == 0:   # the starting point of the held-out curve (plot.py)
        metrics = held_out(policy, val, rewards, args, rt)
        log.write(json.dumps(dict(step=0, val=metrics)) + "\n")
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, file=sys.stderr, desc="grpo",
               disable=not rt.is_main)
    for step in bar:
        t0 = time.time()
        lr = set_learning_rate(policy.optimizer, step, config)
        groups, first, draws = sample_step(policy.model, policy.processor,             # sample G, reward
                                           lambda d: draw_records(train, step, d, args, rt), rewards, args, rt)
        trained = Scores.gather(groups, rt)
        set_advantages(groups, trained.totals, args, rt)                                # advantages
        set_logprobs(policy.model, policy.ref_model, groups, args)                      # π_old, π_ref
        t_rollout = time.time() - t0
        for _ in range(args.mu):                                                        # update
            update = policy_update(policy.model, policy.optimizer, policy.params, groups, args, rt)
        dt = time.time() - t0
        n_tokens = rt.sum(sum(int(g.completions.mask.sum()) for g in groups))
        row = dict(step=step + 1, lr=lr, **reward_log(first, trained, draws, args.num_generations), **update,
                   completion_length=n_tokens / len(trained.totals), tokens_per_s=n_tokens / dt,
                   rollout_time=t_rollout, step_time=dt, world_size=rt.world_size)
        if row["skipped"]:
            rt.print(f"grpo.py: step {step + 1}: non-finite loss or gradient; update skipped", file=sys.stderr)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row.get('kl', 0):.4f}", s_step=f"{dt:.1f}")
        if due(step + 1, args.eval_every, args.steps):
            row["val"] = metrics = held_out(policy, val, rewards, args, rt)
        log.write(json.dumps(row) + "\n")
        log.flush()
        if due(step + 1, args.save_every, args.steps):
            save(policy, rewards, config, args, rt, step + 1, metrics)
    log.close()
    rt.print(f"grpo.py: wrote {args.out}")
    rt.close()


if __name__ == "__main__":
    run_script(main)
