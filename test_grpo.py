"""Tests of grpo.py: the GRPO math against hand-computed values and an independent restatement
of TRL's GRPOTrainer formulas."""

import math

import numpy as np
import pytest
from types import SimpleNamespace
import torch

from conftest import assert_same_trained_adapters
from grpo import ADVANTAGE_SCALES, LOSS_TYPES, group_advantages, grpo_loss

# Two groups of G = 3: group 0 is [1, 0, 0] (mean 1/3), group 1 is all equal.
REWARDS = [1.0, 0.0, 0.0, 0.5, 0.5, 0.5]


def test_group_scale_by_hand():
    std = 1 / math.sqrt(3)  # sqrt(((2/3)² + 2·(1/3)²) / (3 - 1))
    expected = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), 0, 0, 0]
    got = group_advantages(torch.tensor(REWARDS, dtype=torch.float64), group_size=3)
    assert got.tolist() == pytest.approx(expected, abs=1e-9)
    assert got[0].item() == pytest.approx(1.15450, abs=1e-5)  # the docstring's numbers
    assert group_advantages(np.array(REWARDS), 3).tolist() == pytest.approx(expected, abs=1e-9)


def test_batch_scale_by_hand():
    # Std of all six raw rewards, Bessel-corrected: mean 5/12, squared deviations
    # (7/12)² + 2·(5/12)² + 3·(1/12)² = 102/144 = 17/24, divided by 6 - 1.
    std = math.sqrt(17 / 24 / 5)
    expected = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), 0, 0, 0]
    got = group_advantages(torch.tensor(REWARDS, dtype=torch.float64), 3, scale="batch")
    assert got.tolist() == pytest.approx(expected, abs=1e-9)


def test_no_scale_is_centred_reward():
    got = group_advantages(torch.tensor(REWARDS, dtype=torch.float64), 3, scale="none")
    assert got.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], abs=1e-12)


@pytest.mark.parametrize("scale", ADVANTAGE_SCALES)
def test_all_equal_group_is_exactly_zero(scale):
    # 0.7 is not exact in float32, so the group mean may round; the result must still be 0.
    rewards = torch.tensor([0.7] * 8 + [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.3])
    got = group_advantages(rewards, 8, scale=scale)
    assert torch.equal(got[:8], torch.zeros(8))
    assert torch.isfinite(got).all() and (got[8:] != 0).all()


@pytest.mark.parametrize("scale", ADVANTAGE_SCALES)
def test_group_size_one_gives_zeros(scale):
    for rewards in ([0.3, 0.9, 0.1], [0.5]):
        got = group_advantages(torch.tensor(rewards), 1, scale=scale)
        assert torch.equal(got, torch.zeros(len(rewards)))


def test_advantage_errors():
    with pytest.raises(ValueError, match="group_size=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size=0"):
        group_advantages(torch.zeros(6), 0)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(6), 3, scale="global")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 3), 3)


def _worked_example():
    """The grpo_loss docstring's example: ρ = [[1.5, 1], [0.5, 1]], A = [1, -1]."""
    logps = torch.tensor([[math.log(1.5), 0.0], [math.log(0.5), 0.0]]) - 1.0
    old_logps = torch.full((2, 2), -1.0)
    mask = torch.tensor([[True, True], [True, False]])
    return logps, old_logps, torch.tensor([1.0, -1.0]), mask


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", (-1.1 + 0.8) / 2),        # per-sequence means -1.1 and 0.8
    ("token", (-1.2 - 1.0 + 0.8) / 3),
    ("dr_grpo", (-1.2 - 1.0 + 0.8) / (2 * 2)),
])
def test_loss_types_by_hand(loss_type, expected):
    logps, old_logps, advantages, mask = _worked_example()
    loss, stats = grpo_loss(logps, old_logps, None, advantages, mask, beta=0.0,
                            loss_type=loss_type, max_new_tokens=2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats == pytest.approx({"loss": expected, "kl": 0.0, "ratio_mean": 1.0,
                                   "clip_fraction": 2 / 3, "sampled_nll": 1.0}, abs=1e-6)


def test_sampled_nll_is_the_mean_negative_old_logprob_over_completion_tokens():
    old_logps = torch.tensor([[-1.0, -2.0], [-3.0, -99.0]])   # -99 is padding
    mask = torch.tensor([[True, True], [True, False]])
    _, stats = grpo_loss(old_logps.clone(), old_logps, None, torch.tensor([1.0, -1.0]), mask, beta=0.0)
    assert stats["sampled_nll"] == pytest.approx((1 + 2 + 3) / 3)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_k3_kl_by_hand(loss_type):
    # ρ = 1 and A = 0, so the loss is β·KL alone; ref - logp = ln 2 on one of two tokens.
    logps = torch.tensor([[-1.0, -2.0]])
    ref_logps = logps + torch.tensor([[math.log(2.0), 0.0]])
    kl = 2 - math.log(2.0) - 1
    loss, stats = grpo_loss(logps, logps, ref_logps, torch.zeros(1), torch.ones(1, 2),
                            beta=0.04, loss_type=loss_type, max_new_tokens=4)
    expected = {"grpo": 0.04 * kl / 2, "token": 0.04 * kl / 2, "dr_grpo": 0.04 * kl / 4}
    assert loss.item() == pytest.approx(expected[loss_type], abs=1e-7)
    assert stats["kl"] == pytest.approx(kl / 2, abs=1e-7)


def test_kl_zero_when_policy_equals_reference():
    torch.manual_seed(0)
    logps = (-3 * torch.rand(4, 5)).requires_grad_()
    old_logps = logps.detach() + 0.1 * torch.randn(4, 5)
    advantages, mask = torch.randn(4), torch.ones(4, 5)
    loss, stats = grpo_loss(logps, old_logps, logps.detach(), advantages, mask, beta=0.5)
    loss_no_kl, _ = grpo_loss(logps, old_logps, None, advantages, mask, beta=0.0)
    assert stats["kl"] == 0.0
    assert loss.item() == pytest.approx(loss_no_kl.item(), abs=1e-7)
    # The k3 KL also has zero gradient there: d/dlogp [e^(ref-logp) - (ref-logp) - 1] = 1 - 1.
    grad, = torch.autograd.grad(loss, logps)
    grad_no_kl, = torch.autograd.grad(loss_no_kl, logps)
    assert torch.allclose(grad, grad_no_kl, atol=1e-7)


@pytest.mark.parametrize("advantage, ratio, clipped", [
    (1.0, 1.5, True),    # A > 0: pushing ρ past 1+ε earns nothing more
    (1.0, 0.5, False),   # A > 0, ρ below 1-ε: min keeps ρA, the gradient pulls ρ back up
    (-1.0, 0.5, True),   # A < 0: pushing ρ below 1-ε earns nothing more
    (-1.0, 1.5, False),  # A < 0, ρ above 1+ε: min keeps ρA
    (1.0, 1.1, False),   # inside [1-ε, 1+ε]: never clipped
    (-1.0, 0.9, False),
])
def test_clipping_on_both_signs(advantage, ratio, clipped):
    logps = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = grpo_loss(logps, torch.zeros(1, 1), None, torch.tensor([advantage]),
                            torch.ones(1, 1), clip_eps=0.2, beta=0.0)
    grad, = torch.autograd.grad(loss, logps)
    assert stats["clip_fraction"] == (1.0 if clipped else 0.0)
    # Unclipped: loss = -ρA, so d loss / d logp = -ρA.
    assert grad.item() == pytest.approx(0.0 if clipped else -ratio * advantage, abs=1e-6)
    expected_surrogate = min(ratio * advantage, min(max(ratio, 0.8), 1.2) * advantage)
    assert loss.item() == pytest.approx(-expected_surrogate, abs=1e-6)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_only_through_completion_tokens(loss_type):
    torch.manual_seed(1)
    logps = (-3 * torch.rand(3, 6)).requires_grad_()
    old_logps = logps.detach() + 0.05 * torch.randn(3, 6)
    ref_logps = logps.detach() + 0.3 * torch.randn(3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    args = (old_logps, ref_logps, torch.tensor([0.7, -1.2, 0.4]), mask)
    kwargs = dict(beta=0.04, loss_type=loss_type, max_new_tokens=6)
    loss, _ = grpo_loss(logps, *args, **kwargs)
    grad, = torch.autograd.grad(loss, logps)
    assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum())))
    assert (grad[mask] != 0).all()
    # Whatever sits at padding positions does not change the loss.
    padded = torch.where(mask, logps.detach(), torch.full_like(logps, -50.0))
    assert grpo_loss(padded, *args, **kwargs)[0].item() == pytest.approx(loss.item(), abs=1e-7)


def test_sequence_without_tokens_counts_as_zero_in_grpo_mean():
    logps, old_logps, advantages, mask = _worked_example()
    mask = mask.clone()
    mask[1] = False  # sequence 1 has no completion tokens
    loss, stats = grpo_loss(logps, old_logps, None, advantages, mask, beta=0.0)
    assert loss.item() == pytest.approx((-1.1 + 0.0) / 2, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(1 / 2)


def test_loss_errors():
    logps, old_logps, advantages, mask = _worked_example()
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, old_logps, None, advantages, mask, beta=0.04)
    with pytest.raises(ValueError, match="max_new_tokens"):
        grpo_loss(logps, old_logps, None, advantages, mask, beta=0.0, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, old_logps, None, advantages, mask, beta=0.0, loss_type="seq")
    with pytest.raises(ValueError, match="shape"):
        grpo_loss(logps, old_logps, None, advantages, mask[:, :1], beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        grpo_loss(logps, old_logps, None, advantages[:1], mask, beta=0.0)


def _trl_advantages(rewards, group_size, scale):
    """TRL GRPOTrainer: A = (r - mean_grouped) / (std_grouped + 1e-4), torch.std unbiased;
    "batch" divides by the unbiased std of all rewards; "none" does not divide."""
    batch_std = np.std(rewards, ddof=1) if len(rewards) > 1 else 0.0
    advantages = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        mean = sum(group) / len(group)
        std = {"group": np.std(group, ddof=1) if len(group) > 1 else 0.0,
               "batch": batch_std, "none": None}[scale]
        for r in group:
            advantages.append(r - mean if std is None else (r - mean) / (std + 1e-4))
    return np.array(advantages)


def _trl_loss_and_grad(logps, old_logps, ref_logps, advantages, mask, eps, beta, loss_type,
                       max_completion_length):
    """TRL GRPOTrainer's loss, token by token, with its gradient wrt logps derived by hand:
    coef_1 = exp(logp - old), coef_2 = clamp(coef_1, 1-eps, 1+eps),
    per_token_loss = -(min(coef_1·A, coef_2·A) - beta·(exp(ref - logp) - (ref - logp) - 1)),
    "grpo": ((ptl·mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean(),
    "token" (bnpo/dapo): (ptl·mask).sum() / mask.sum().clamp(min=1),
    "dr_grpo": (ptl·mask).sum() / (N · max_completion_length)."""
    n, t = logps.shape
    loss, grad = 0.0, np.zeros((n, t))
    stats = {"kl": 0.0, "ratio_mean": 0.0, "clip_fraction": 0.0, "sampled_nll": 0.0}
    total_tokens = max(mask.sum(), 1)
    for i in range(n):
        length = mask[i].sum()
        for j in range(t):
            if not mask[i, j]:
                continue
            a = advantages[i]
            coef_1 = math.exp(logps[i, j] - old_logps[i, j])
            coef_2 = min(max(coef_1, 1 - eps), 1 + eps)
            low = coef_1 < 1 - eps and a < 0
            high = coef_1 > 1 + eps and a > 0
            d = ref_logps[i, j] - logps[i, j]
            kl = math.exp(d) - d - 1 if beta > 0 else 0.0
            token_loss = -(min(coef_1 * a, coef_2 * a) - beta * kl)
            # d/dlogp: the unclipped branch gives coef_1·A, the clipped one 0; KL gives 1 - e^d.
            token_grad = -((0.0 if low or high else coef_1 * a) - beta * (1 - math.exp(d)))
            weight = {"grpo": 1 / (n * max(length, 1)), "token": 1 / total_tokens,
                      "dr_grpo": 1 / (n * max_completion_length)}[loss_type]
            loss += weight * token_loss
            grad[i, j] = weight * token_grad
            stats["kl"] += kl / total_tokens
            stats["ratio_mean"] += coef_1 / total_tokens
            stats["clip_fraction"] += (low or high) / total_tokens
            stats["sampled_nll"] += -old_logps[i, j] / total_tokens
    return loss, grad, stats


class TestAgainstTRLRestatement:
    """group_advantages + grpo_loss equal TRL's GRPO math (values and gradients)."""

    @staticmethod
    def random_batch(seed, groups=3, group_size=4, t=7):
        rng = np.random.default_rng(seed)
        n = groups * group_size
        rewards = rng.uniform(0, 1, n).round(2)
        rewards[:group_size] = 1.0  # an all-equal group
        logps = -3 * rng.uniform(size=(n, t))
        old_logps = logps + 0.3 * rng.normal(size=(n, t))  # ratios on both sides of the clip
        ref_logps = logps + 0.5 * rng.normal(size=(n, t))
        lengths = rng.integers(0, t + 1, n)
        lengths[1] = 0  # a sequence without completion tokens
        mask = np.arange(t)[None, :] < lengths[:, None]
        return rewards, logps, old_logps, ref_logps, mask

    @pytest.mark.parametrize("scale", ADVANTAGE_SCALES)
    @pytest.mark.parametrize("loss_type", LOSS_TYPES)
    @pytest.mark.parametrize("beta", [0.0, 0.04])
    def test_values_and_gradients(self, scale, loss_type, beta):
        group_size, max_len = 4, 9
        for seed in range(5):
            rewards, logps, old_logps, ref_logps, mask = self.random_batch(seed, group_size=4)
            expected_adv = _trl_advantages(rewards, group_size, scale)
            advantages = group_advantages(torch.tensor(rewards), group_size, scale=scale)
            assert advantages.numpy() == pytest.approx(expected_adv, abs=1e-6)

            expected_loss, expected_grad, expected_stats = _trl_loss_and_grad(
                logps, old_logps, ref_logps, expected_adv, mask, 0.2, beta, loss_type, max_len)
            logps_t = torch.tensor(logps, requires_grad=True)
            loss, stats = grpo_loss(logps_t, torch.tensor(old_logps), torch.tensor(ref_logps),
                                    advantages, torch.tensor(mask), clip_eps=0.2, beta=beta,
                                    loss_type=loss_type, max_new_tokens=max_len)
            grad, = torch.autograd.grad(loss, logps_t)
            assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
            assert grad.numpy() == pytest.approx(expected_grad, abs=1e-6)
            assert stats == pytest.approx({"loss": expected_loss, **expected_stats}, abs=1e-6)
            assert 0 < stats["clip_fraction"] < 1


# ---- named choices of the options: Dr. GRPO, the closed-question semantic slot, the length target ----------

def test_dr_grpo_is_one_named_choice_that_sets_both_parts():
    import grpo as script
    args = script.parse_args(["--loss-type", "dr_grpo"])
    assert (args.loss_type, args.advantage_scale) == ("dr_grpo", "none") and args.options_given == ["loss_type"]
    assert script.parse_args([]).advantage_scale == "group"
    assert script.parse_args(["--loss-type", "dr_grpo", "--advantage-scale", "group"]).advantage_scale == "group"
    # Dr. GRPO's loss (Liu et al. 2025, eq. 3 at ρ = 1): -Σ_i Σ_t (r_i - mean r) / (N · L)
    rewards, lengths, L = [1.0, 0.0, 0.0, 0.0], [1, 2, 3, 4], 4
    advantages = group_advantages(torch.tensor(rewards), 4, args.advantage_scale)
    assert advantages.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    mask = torch.arange(L).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)          # (4, 4)
    logps = torch.full((4, L), -1.0, requires_grad=True)
    loss, _ = grpo_loss(logps, logps.detach(), None, advantages, mask, beta=0.0, loss_type=args.loss_type,
                        max_new_tokens=L)
    assert loss.item() == pytest.approx(-(0.75 * 1 - 0.25 * (2 + 3 + 4)) / (4 * L))


def test_a_resumed_dr_grpo_run_keeps_its_resolved_advantage_scale(monkeypatch):
    import grpo as script
    run = vars(script.parse_args(["--loss-type", "dr_grpo"]))   # the options as a checkpoint saves them
    state = {"args": run, "config": {}}
    args = script.parse_args(["--resume", "runs/x"])            # alone, it would resolve to "group"
    training.resume_options(args, state, "grpo.py")
    assert (args.loss_type, args.advantage_scale) == ("dr_grpo", "none")
    args = script.parse_args(["--resume", "runs/x", "--advantage-scale", "group"])
    with pytest.raises(SystemExit, match="--advantage-scale none -> group"):
        training.resume_options(args, state, "grpo.py")


def test_closed_semantic_exact_doubles_closed_advantages_without_std_scaling():
    """Why --closed-semantic is an option: with the semantic slot on, a closed group's exact match
    counts twice; group-std scaling cancels the factor, Dr. GRPO's "none" keeps it."""
    from rewards import compute_rewards, references, reward_list

    class NoOpenScorer:
        def score(self, predictions, refs):
            return np.zeros(len(predictions))

    records = references(["yes"] * 4, ["closed"] * 4)
    completions = [f"<think>t</think><answer>{a}</answer>" for a in ("yes", "no", "no", "yes")]
    text_only = compute_rewards(reward_list(semantic="none"), records, completions)[0]
    for closed, factor in (("exact", 2.0), ("zero", 1.0)):
        total = compute_rewards(reward_list(semantic="plain", scorer=NoOpenScorer(), closed_semantic=closed),
                                records, completions)[0]
        for scale, expected in (("none", factor), ("group", 1.0)):
            assert group_advantages(torch.tensor(total), 4, scale) == pytest.approx(
                expected * group_advantages(torch.tensor(text_only), 4, scale), rel=1e-3)


def test_a_length_target_out_of_reach_is_refused():
    import grpo as script
    from rewards import DEFAULT_TARGET_LENGTH, length_target_unreachable
    assert length_target_unreachable(91, 96) is None and length_target_unreachable(DEFAULT_TARGET_LENGTH, 96) is None
    message = length_target_unreachable(128, 96)
    assert message.startswith("--target-length 128 ") and "--max-new-tokens 96" in message and "\n" not in message
    assert "--target-length <= 91 or --max-new-tokens >= 133" in message
    with pytest.raises(SystemExit):
        script.parse_args(["--cwr-weight", "1", "--target-length", "128"])
    script.parse_args(["--target-length", "128"])   # no length reward: nothing to reach


def test_the_default_length_target_fits_the_default_token_limit():
    """At grpo.py's defaults a completion of L* phantom-rationale words, tags and answer included,
    fits --max-new-tokens in the tiny tokenizer (an end token too) and earns the full ECR."""
    import grpo as script
    from data import load_dataset
    from model import build_tiny_tokenizer
    from rewards import ecr_length_reward
    args = script.parse_args(["--ecr-weight", "1", "--cwr-weight", "1"])
    words = " ".join(r.cot for r in load_dataset("phantom", "val")[:20]).split()[:args.target_length]
    text = f"<think>{' '.join(words)}</think><answer>pleural effusion</answer>"
    tokens = len(build_tiny_tokenizer().encode(text, add_special_tokens=False)) + 1
    assert tokens <= args.max_new_tokens and ecr_length_reward(text, args.target_length) == 1.0


# ---- the training loop on the tiny model -------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402

from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

import grpo  # noqa: E402
import training  # noqa: E402


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory):
    """A tiny model after a short SFT (sft.py), so that rollouts earn different rewards."""
    import sft
    path = str(tmp_path_factory.mktemp("sft") / "sft")
    sft.main(["--model", "tiny", "--out", path, "--steps", "60", "--batch-size", "16", "--limit", "96", "--lr", "3e-3",
              "--eval-every", "0", "--save-every", "0", "--eval-size", "2", "--max-new-tokens", "8"])
    return path


def _grpo_args(start, out, steps, *extra):
    return ["--model", start, "--out", out, "--steps", str(steps), "--limit", "16",
            "--prompts-per-step", "2", "--num-generations", "4", "--max-new-tokens", "48",
            "--micro-batch", "3", "--eval-size", "2", "--save-every", "0", "--train-offset", "0", *extra]


def test_phantom_prompts_default_to_images_sft_never_saw():
    from data import train_offset
    assert train_offset(grpo.parse_args([])) == 6000  # sft.py trains on phantom train records 0-5999
    assert train_offset(grpo.parse_args(["--train-offset", "0"])) == 0
    assert train_offset(grpo.parse_args(["--dataset", "slake", "--data-root", "data"])) == 0
    assert grpo.parse_args([]).train_offset is None and grpo.Config.from_args(grpo.parse_args([])).train_offset == 6000


def test_config_is_derived_once_and_resumes_checkpoints_of_either_form():
    args = grpo.parse_args(["--model", "runs/sft-x", "--steps", "9"])
    fresh = grpo.Config.from_args(args)
    assert (fresh.lr, fresh.schedule_steps, fresh.policy, fresh.ref_model, fresh.train_offset) == \
           (3e-4, 9, "runs/sft-x", "runs/sft-x", 6000)
    assert args.lr is None and args.train_offset is None                 # the options stay as parsed
    used = fresh.options(args, SimpleNamespace(precision="fp32"))
    assert (used["lr"], used["train_offset"], used["precision"]) == (3e-4, 6000, "fp32")   # as the run used them
    assert grpo.Config.from_args(grpo.parse_args(["--lora-rank", "4"])).lr == pytest.approx(3e-3)   # 10x under LoRA
    resumed = grpo.parse_args(["--resume", "runs/g", "--steps", "9"])
    before = {"args": {"steps": 5, "schedule_steps": 4, "ref_model": "runs/sft"}}   # written before Config
    after = {"args": {"steps": 5}, "config": {"schedule_steps": 4, "ref_model": "runs/sft"}}
    for state in (before, after):
        config = grpo.Config.from_args(resumed, state)
        assert (config.schedule_steps, config.ref_model, config.policy) == (4, "runs/sft", "runs/g")


def test_reward_log_gives_think_words_and_tokens_of_right_and_wrong_completions():
    """The length question's log keys: right = the <answer> matches the reference exactly."""
    texts = ["<think>a b c</think><answer>yes</answer>", "<think>a</think><answer>no</answer>",
             "<answer>x</answer>", "<think>one two three four five</think><answer>two</answer>"]
    scores = grpo.Scores(np.array([2.0, 1.0, 0.0, 1.0]), {"format": np.array([1.0, 1.0, 0.0, 1.0])},
                         ["closed", "closed", "open", "open"], texts, np.array([1.0, 0.0, 0.0, 1.0]),
                         np.array([10, 6, 4, 12]))
    row = grpo.reward_log(scores, scores, 1, 2)
    # right: completions 0 and 3 (3 and 5 words, 10 and 12 tokens); wrong: 1 and 2 (1 and 0 words, 6 and 4)
    assert row["correct_fraction"] == 0.5 and row["think_words"] == 2.25
    assert (row["think_words_right"], row["think_words_wrong"]) == (4.0, 0.5)
    assert (row["completion_tokens_right"], row["completion_tokens_wrong"]) == (11.0, 5.0)
    none_right = grpo.Scores(scores.totals, scores.components, scores.answer_types, texts, np.zeros(4), scores.tokens)
    row = grpo.reward_log(none_right, none_right, 1, 2)
    assert "think_words_right" not in row and row["think_words_wrong"] == 2.25


def test_grpo_two_step_smoke_run_logs_what_a_user_watches(start_checkpoint, tmp_path):
    out = str(tmp_path / "grpo")
    grpo.main(_grpo_args(start_checkpoint, out, 2, "--mu", "2", "--prompts-per-step", "4"))
    rows = [json.loads(line) for line in open(out + ".log.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert set(rows[0]) == {"step", "val"} and rows[0]["val"]["n"] == 2   # the start, for plot.py
    rows = rows[1:]
    for key in ("reward", "reward_format", "reward_textual", "reward_semantic", "kl", "clip_fraction",
                "total_std_within_group", "equal_total_group_fraction", "completion_length",
                "tokens_per_s", "step_time", "grad_norm", "policy_collapse_fraction",
                "reward_collapse_fraction", "distinct_fraction", "sampled_nll", "correct_fraction", "think_words"):
        assert key in rows[-1] and np.isfinite(rows[-1][key])
    for row in rows:   # the two kinds of all-equal group make up the whole
        assert row["policy_collapse_fraction"] + row["reward_collapse_fraction"] == \
            pytest.approx(row["equal_total_group_fraction"])
        assert 0 < row["distinct_fraction"] <= 1 and row["sampled_nll"] > 0
    assert 0 < rows[-1]["completion_length"] <= 48
    assert "val" in rows[-1] and rows[-1]["val"]["n"] == 2
    state = training.load_trainer_state(out)
    # the adaptive reward's history: every open completion's raw score, of both steps
    open_completions = sum(len(r.get("open_semantic_raw", [])) for r in rows)
    assert state["step"] == 2 and open_completions > 0 and len(state["adaptive"]["buffer"]) == open_completions
    # every open completion's raw and weighted semantic reward, for plot.py's Figure 4
    for row in rows:
        assert row["draws"] == 1 and len(row["open_semantic_raw"]) == len(row["open_semantic"])
        assert all(0 <= v <= 1 for v in row["open_semantic"]) and all(-1 <= v <= 1 for v in row["open_semantic_raw"])
    assert sum(len(r["open_semantic"]) for r in rows) > 0

    import plot
    from PIL import Image
    paths = plot.main([out, "--out", str(tmp_path / "figs"), "--early", "1", "--late", "1"])
    assert "reward_closed_questions" in rows[-1] or "reward_open_questions" in rows[-1]
    assert sorted(os.path.basename(p) for p in paths) == ["collapse.png", "heldout.png", "rewards.png", "sampling.png", "semantic.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 400


def test_grpo_resume_gives_the_same_weights_as_an_uninterrupted_run(start_checkpoint, tmp_path,
                                                                    kill_after_first_checkpoint):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    grpo.main(_grpo_args(start_checkpoint, straight, 4))
    with pytest.raises(kill_after_first_checkpoint(grpo)):
        grpo.main(_grpo_args(start_checkpoint, split, 4, "--save-every", "2"))
    assert training.load_trainer_state(split)["step"] == 2
    grpo.main(_grpo_args(start_checkpoint, split, 4, "--resume", split))
    a = Qwen2_5_VLForConditionalGeneration.from_pretrained(straight).state_dict()
    b = Qwen2_5_VLForConditionalGeneration.from_pretrained(split).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = Qwen2_5_VLForConditionalGeneration.from_pretrained(start_checkpoint).state_dict()
    assert not all(torch.equal(a[k], start[k]) for k in a)            # training did move the weights
    sa, sb = training.load_trainer_state(straight), training.load_trainer_state(split)
    assert sa["adaptive"] == sb["adaptive"]


def test_lora_grpo_resume_gives_the_same_adapters(start_checkpoint, tmp_path, kill_after_first_checkpoint):
    pytest.importorskip("peft")
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    lora = ("--lora-rank", "4")
    grpo.main(_grpo_args(start_checkpoint, straight, 4, *lora))
    with pytest.raises(kill_after_first_checkpoint(grpo)):
        grpo.main(_grpo_args(start_checkpoint, split, 4, "--save-every", "2", *lora))
    assert training.load_trainer_state(split)["step"] == 2
    grpo.main(_grpo_args(start_checkpoint, split, 4, "--resume", split, *lora))
    assert_same_trained_adapters(straight, split)
    assert training.load_trainer_state(straight)["adaptive"] == training.load_trainer_state(split)["adaptive"]


def test_non_finite_loss_skips_the_step_and_never_reaches_the_weights(start_checkpoint, tmp_path, monkeypatch):
    real = grpo.grpo_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats
    monkeypatch.setattr(grpo, "grpo_loss", nan_loss)
    out = str(tmp_path / "nan")
    grpo.main(_grpo_args(start_checkpoint, out, 1, "--beta", "0"))
    rows = [json.loads(line) for line in open(out + ".log.jsonl")]
    assert rows[-1]["step"] == 1 and rows[-1]["skipped"] is True
    a = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).state_dict()
    start = Qwen2_5_VLForConditionalGeneration.from_pretrained(start_checkpoint).state_dict()
    assert all(torch.equal(a[k], start[k]) for k in a)


# ---- dynamic sampling (DAPO; --dynamic-sampling) -------------------------------------------------

def _dynamic_rollout(equal_ids, draws, max_draws, dynamic=True):
    """grpo.py's sampling on the untrained tiny model with a stand-in reward (sample_step, then the
    advantages): a record whose id is in equal_ids earns G equal rewards (no signal), any other 0,
    1, ..., G-1. Returns what a step trains on and logs, and the records."""
    from argparse import Namespace

    from data import load_dataset
    from distributed import setup
    from model import load_model
    records = load_dataset("phantom", "val", limit=2 * len(draws))
    batches = [[records[i] for i in draw] for draw in draws]
    G = 4

    def reward_fn(recs, texts):
        total = np.concatenate([np.zeros(G) if r.id in {records[i].id for i in equal_ids} else np.arange(G, dtype=float)
                                for r in recs[::G]])
        return total, {"textual": total.copy()}
    model, processor = load_model("tiny", device="cpu", seed=0)
    args = Namespace(num_generations=G, temperature=1.0, top_p=1.0, max_new_tokens=6, dynamic_sampling=dynamic,
                     max_draws=max_draws, advantage_scale="group", mu=1, beta=0.0, micro_batch=4)
    rt = setup("fp32", "cpu")
    groups, first, n_draws = grpo.sample_step(model, processor, lambda d: batches[d], reward_fn, args, rt)
    trained = grpo.Scores.gather(groups, rt)
    grpo.set_advantages(groups, trained.totals, args, rt)
    prompts, completions = grpo.as_batch(groups)
    return Namespace(draws=n_draws, prompts=prompts, completions=completions, rewards=trained.totals,
                     first=first, advantages=torch.cat([g.advantages for g in groups])), records


def test_dynamic_sampling_replaces_groups_without_signal_by_new_prompts():
    rollout, records = _dynamic_rollout(equal_ids={0, 2}, draws=[[0, 1], [2, 3], [4, 5]], max_draws=3)
    assert rollout.draws == 2                                   # draw 0 gave one group, draw 1 the other
    assert rollout.prompts["input_ids"].shape[0] == 8 == rollout.completions.ids.shape[0]
    assert rollout.rewards.tolist() == [0, 1, 2, 3] * 2         # both trained groups carry a signal
    assert rollout.first.totals.tolist() == [0] * 4 + [0, 1, 2, 3]   # the log keeps the step's own prompts
    assert torch.count_nonzero(rollout.advantages) == 8


def test_dynamic_sampling_fills_with_dropped_groups_at_the_cap_and_is_off_by_default():
    rollout, _ = _dynamic_rollout(equal_ids={0, 2, 3}, draws=[[0, 1], [2, 3]], max_draws=2)
    assert rollout.draws == 2
    assert rollout.rewards.tolist() == [0, 1, 2, 3] + [0] * 4   # one informative group, then a dropped one
    assert torch.count_nonzero(rollout.advantages[4:]) == 0
    plain, _ = _dynamic_rollout(equal_ids={0}, draws=[[0, 1], [2, 3]], max_draws=2, dynamic=False)
    assert plain.draws == 1 and plain.rewards.tolist() == [0] * 4 + [0, 1, 2, 3]


def test_bench_grpo_times_a_step_of_grpo_py(capsys):
    """bench_grpo.py drives grpo.py's own functions; a change to them must not break it."""
    import bench_grpo
    bench_grpo.main(["--model", "tiny", "--runs", "1", "--warmup", "0", "--prompts", "2", "--num-generations", "2",
                     "--max-new-tokens", "8", "--micro-batch", "2"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("grpo.py"))
    step, generate, ref, rewards, update = map(float, row.split()[1:6])
    assert step > 0 and generate > 0 and update > 0 and abs(step - (generate + ref + rewards + update)) < step
