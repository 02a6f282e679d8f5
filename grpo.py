"""GRPO: group relative policy optimisation of the SFT model (METHOD.md §5).

    python grpo.py            # from runs/sft, on the phantom dataset, writes runs/grpo

For every prompt the model samples G completions; each gets a reward (format, textual
correctness, adaptive semantic: rewards.py). A completion's advantage is its reward relative to
its own group, A_i = (r_i - mean(r)) / (std(r) + 1e-4): no value network. The policy then
maximises the PPO-style clipped surrogate min(ρA, clip(ρ, 1-ε, 1+ε)A) per completion token,
ρ = π_θ / π_old, minus β times a k3 estimate of the KL to a frozen reference model.

The two functions below are the whole of that math; the training loop further down calls them.
"""

import torch

ADVANTAGE_SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "token", "dr_grpo")


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
                   length bias).
    Returns (loss, stats), stats python floats: "loss", and "kl", "ratio_mean", "clip_fraction"
    as means over completion tokens (kl is 0 when beta == 0: no reference). clip_fraction
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
        }
    return loss, stats


def _masked_mean(values, mask):
    """Mean of values (N, T) over the tokens where mask (N, T) is 1, as a python float."""
    return ((values * mask).sum() / mask.sum().clamp(min=1)).item()
