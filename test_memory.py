"""Tests for memory.py: exact parameter counts of the published configs, and the plan's arithmetic."""

import pytest

from memory import GIB, count_parameters, memory_plan
from model import qwen25_vl_config


def test_published_qwen25_vl_parameter_counts():
    # the counts of the published checkpoints (3B ties its embeddings, 7B does not)
    assert count_parameters(qwen25_vl_config("qwen2.5-vl-3b"))[0] == 3_754_622_976
    assert count_parameters(qwen25_vl_config("qwen2.5-vl-7b"))[0] == 8_292_166_656
    total, vision = count_parameters(qwen25_vl_config("qwen2.5-vl-3b", layers=2))
    # by hand: patch conv 3*2*14*14*1280; 32 blocks of 2 norms, qkv, proj, gate/up/down (with biases);
    # merger: norm, 5120x5120 and 5120x2048 with biases
    block = 2 * 1280 + (1280 * 3840 + 3840) + (1280 * 1280 + 1280) + 2 * (1280 * 3420 + 3420) + 3420 * 1280 + 1280
    merger = 1280 + (5120 * 5120 + 5120) + (5120 * 2048 + 2048)
    assert vision == 3 * 2 * 14 * 14 * 1280 + 32 * block + merger == 668_684_288
    assert total == 3_754_622_976 - 34 * (count_parameters(qwen25_vl_config("qwen2.5-vl-3b", layers=3))[0] - total)


@pytest.mark.parametrize("precision, bytes_per_parameter", [("fp32", 16), ("bf16-mixed", 16), ("bf16", 8)])
def test_weights_gradients_and_adamw_are_sharded_over_gpus(precision, bytes_per_parameter):
    config = qwen25_vl_config("qwen2.5-vl-3b")
    for gpus in (1, 4):
        plan = memory_plan(config, precision, gpus)
        held = plan["weights"] + plan["gradients"] + plan["adamw"]
        assert held == pytest.approx(bytes_per_parameter * 3_754_622_976 / gpus)
    one, eight = memory_plan(config, precision, 1)["peak"], memory_plan(config, precision, 8)["peak"]
    assert eight < one / 2


def test_reference_model_and_rollout_only_in_grpo():
    config = qwen25_vl_config("qwen2.5-vl-3b")
    grpo, sft = memory_plan(config, "bf16-mixed", 2), memory_plan(config, "bf16-mixed", 2, stage="sft")
    assert grpo["reference"] == pytest.approx(2 * 3_754_622_976 / 2)     # bf16, sharded over 2
    assert sft["reference"] == 0 and sft["rollout"] == 0
    # rollout on 2 GPUs: the whole model gathered in bf16 + the KV cache of 4 prompts x 8 sequences
    kv = 2 * 36 * 2 * 128 * (600 + 512) * 32 * 2
    assert grpo["rollout"] == pytest.approx(2 * 3_754_622_976 + kv)
    assert memory_plan(config, "bf16-mixed", 4)["peak"] < 80 * GIB     # ARMed: 4 x H100 80 GB
