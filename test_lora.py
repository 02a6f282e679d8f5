"""LoRA (--lora-rank): the reference is the model with its adapters off, gradient checkpointing,
bit-identical resume, bf16-mixed storage, and the merged checkpoint evaluate.py scores alike.
(Two processes: test_distributed.py.)"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

pytest.importorskip("peft")

import evaluate
import grpo
import lora as L
import model as M
import sft
from conftest import assert_same_trained_adapters
from distributed import Runtime
from policy import completion_logprobs
from test_distributed import as_groups, fixed_rollouts, lora_config as lora, update_args
from training import load_trainer_state

FAST = ["--model", "tiny", "--limit", "24", "--batch-size", "4", "--eval-size", "4", "--max-new-tokens", "8", "--eval-every", "0"]


def with_trained_adapters(model, seed=1):
    """Adapters as after some training: B is zero at the start, which makes the adapted model
    equal to the base and every comparison below pass for the wrong reason."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=g))
    return model


def test_lora_trains_only_adapters_on_the_language_model():
    model, _ = M.load_model("tiny", device="cpu", lora=lora(4))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    # 3 decoder layers x 7 projections x (A, B); nothing in the vision tower, embeddings or lm_head
    assert len(trained) == 3 * 7 * 2 and all(".language_model.layers." in n and "lora_" in n for n in trained)
    h, i, kv = 128, 384, 2 * 32          # hidden, MLP, key/value width (2 heads of 32)
    per_layer = 2 * 4 * (h + h) + 2 * 4 * (h + kv) + 2 * 4 * (h + i) + 4 * (i + h)   # q, o; k, v; gate, up; down
    assert sum(p.numel() for n, p in model.named_parameters() if n in trained) == 3 * per_layer
    vision, _ = M.load_model("tiny", device="cpu", lora=lora(4, "--lora-vision"))
    assert any(".visual.blocks." in n and p.requires_grad for n, p in vision.named_parameters())


def test_reference_is_the_model_with_adapters_off_and_kl_starts_at_zero():
    model, processor = M.load_model("tiny", device="cpu", seed=0, lora=lora(4))
    base, _ = M.load_model("tiny", device="cpu", seed=0)   # the base model, loaded on its own
    prompts, completions, advantages, _ = fixed_rollouts(processor)
    ids, mask = completions.ids, completions.mask

    def logps(policy):
        with torch.no_grad():
            return completion_logprobs(policy, prompts, ids, mask, temperature=0.7)
    expected = logps(base)
    # before the first update the adapters add exactly zero: the KL of the first update is 0
    with L.reference_policy(model, None) as reference:
        ref = logps(reference)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    stats = grpo.policy_update(model, optimizer, optimizer.param_groups[0]["params"],
                               as_groups(prompts, completions, advantages, ref), update_args("grpo"), Runtime())
    assert stats["kl"] < 1e-10           # (micro-batches of other shapes than the reference's: rounding only)
    with_trained_adapters(model)
    assert (logps(model) - expected).abs().max() > 1e-2                  # the adapters do change the policy
    with L.reference_policy(model, None) as reference:
        assert (logps(reference) - expected).abs().max() <= 1e-5         # the reference does not move
    assert (logps(model) - expected).abs().max() > 1e-2                  # and the adapters are back on


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients():
    grads = {}
    for checkpointing in (False, True):
        model, processor = M.load_model("tiny", device="cpu", seed=0, lora=lora(4),
                                        gradient_checkpointing=checkpointing)
        with_trained_adapters(model).train()
        prompts, completions, advantages, _ = fixed_rollouts(processor)
        logps = completion_logprobs(model, prompts, completions.ids, completions.mask, temperature=0.7)
        (logps.sum(1) * advantages).sum().backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    plain, checkpointed = grads[False], grads[True]
    assert all(g is not None and g.abs().max() > 0 for g in checkpointed.values())
    largest = max(g.abs().max().item() for g in plain.values())
    assert max((plain[n] - checkpointed[n]).abs().max().item() for n in plain) <= 1e-5 * largest


def test_bf16_mixed_keeps_adapters_and_their_adamw_state_fp32_and_the_base_bf16(tmp_path):
    class Options:
        model, gradient_checkpointing, freeze_vision, min_pixels, max_pixels = "tiny", False, False, None, None
        attn_implementation, resume = "sdpa", None
        lora_rank, lora_alpha, lora_dropout, lora_targets, lora_vision = 4, None, 0.0, L.LORA_TARGETS, False
    model, _ = M.model_from_args(Options, Runtime(precision="bf16-mixed"))
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    out = str(tmp_path / "mixed")
    sft.main(FAST + ["--steps", "1", "--save-every", "0", "--lora-rank", "4", "--precision", "bf16-mixed", "--out", out])
    moments = load_trainer_state(out)["optimizer"]["state"].values()
    assert {m["exp_avg"].dtype for m in moments} == {m["exp_avg_sq"].dtype for m in moments} == {torch.float32}
    assert {v.dtype for v in load_file(f"{out}/adapter_model.safetensors").values()} == {torch.float32}


def test_lora_sft_resume_gives_the_same_adapters(tmp_path, kill_after_first_checkpoint):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    options = FAST + ["--steps", "4", "--lora-rank", "4"]
    sft.main(options + ["--out", straight, "--save-every", "0"])
    with pytest.raises(kill_after_first_checkpoint(sft)):
        sft.main(options + ["--out", split, "--save-every", "2"])
    assert load_trainer_state(split)["step"] == 2
    sft.main(options + ["--out", split, "--save-every", "0", "--resume", split])
    assert_same_trained_adapters(straight, split)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA SFT run of the tiny model (the adapter folder) and its merged checkpoint."""
    root = tmp_path_factory.mktemp("lora")
    adapter, merged = str(root / "adapter"), str(root / "merged")
    sft.main(FAST + ["--steps", "8", "--save-every", "0", "--lora-rank", "8", "--out", adapter])
    M.main(["merge", adapter, merged])
    return adapter, merged


def test_lora_run_writes_a_peft_adapter_and_its_merge_is_base_plus_scaled_product(lora_run):
    adapter, merged = lora_run
    config = json.load(open(f"{adapter}/adapter_config.json"))
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["base_model_name_or_path"] == "tiny"
    weights = load_file(f"{adapter}/adapter_model.safetensors")
    assert all(k.startswith("base_model.model.model.language_model.layers.") for k in weights)
    base = M.load_model("tiny", device="cpu", seed=0)[0].state_dict()
    full = load_file(f"{merged}/model.safetensors")                    # raw names: the hub layout
    assert "model.layers.0.self_attn.q_proj.weight" in full and "visual.merger.mlp.0.weight" in full
    for layer, proj in ((0, "self_attn.q_proj"), (2, "mlp.down_proj")):
        stem = f"base_model.model.model.language_model.layers.{layer}.{proj}"
        update = 16 / 8 * weights[f"{stem}.lora_B.weight"] @ weights[f"{stem}.lora_A.weight"]   # (alpha / r) B A
        assert update.abs().max() > 1e-4
        expected = base[f"model.language_model.layers.{layer}.{proj}.weight"] + update
        assert torch.allclose(full[f"model.layers.{layer}.{proj}.weight"], expected, atol=1e-6)
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(merged)
    assert not L.has_lora(plain)


def test_evaluate_scores_the_adapter_folder_as_its_merged_checkpoint(lora_run, tmp_path):
    adapter, merged = lora_run
    scored = {}
    for name, path in (("adapter", adapter), ("merged", merged)):
        scored[name] = evaluate.main(["--model", path, "--split", "val", "--limit", "8", "--max-new-tokens", "24",
                                      "--save-predictions", str(tmp_path / f"{name}.jsonl")])
    predictions = {name: [json.loads(line)["prediction"] for line in open(tmp_path / f"{name}.jsonl")]
                   for name in scored}
    assert predictions["adapter"] == predictions["merged"] and len(predictions["adapter"]) == 8
    assert scored["adapter"] == scored["merged"]
