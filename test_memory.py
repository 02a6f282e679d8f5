"""Tests for memory.py: exact parameter counts of the published configs, and the plan's arithmetic."""

import os

import pytest

from memory import GIB, count_parameters, fits, memory_plan, sharded_rollout_parameters
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
    # --no-gather-for-generation: the root's own weights (embeddings 151936 x 2048, final norm, the
    # vision tower's patch conv and merger) and one decoder layer (the largest unit), in bf16
    merger = 1280 + (5120 * 5120 + 5120) + (5120 * 2048 + 2048)
    root = 151936 * 2048 + 2048 + 3 * 2 * 14 * 14 * 1280 + merger
    layer = 2 * 2048 + (2048 * 2048 + 2048) + 2 * (2048 * 256 + 256) + 2048 * 2048 + 3 * 2048 * 11008
    assert sharded_rollout_parameters(config) == root + layer == 426_457_856
    sharded = memory_plan(config, "bf16-mixed", 2, gather_for_generation=False)
    assert sharded["rollout"] == pytest.approx(2 * (root + layer) + kv)
    # the update on 2+ GPUs holds the same gathered in bf16 beside the activations of one GPU
    one, two = (memory_plan(config, "bf16-mixed", gpus, lora_rank=64)["activations"] for gpus in (1, 2))
    assert two - one == pytest.approx(2 * (root + layer))


def test_lora_holds_the_frozen_base_in_bf16_and_trains_only_the_adapters():
    config = qwen25_vl_config("qwen2.5-vl-3b")
    total, _, adapters = count_parameters(config, lora_rank=64)
    # by hand, per decoder layer, r x (in + out): q and o 2048 -> 2048, k and v 2048 -> 256 (2 heads of 128),
    # gate and up 2048 -> 11008, down 11008 -> 2048; 36 layers
    assert adapters == 64 * 36 * (2 * 4096 + 2 * 2304 + 3 * 13056)
    for gpus in (1, 2):
        lora, full = memory_plan(config, "bf16-mixed", gpus, lora_rank=64), memory_plan(config, "bf16-mixed", gpus)
        assert lora["weights"] == pytest.approx((2 * total + 4 * adapters) / gpus)
        assert lora["gradients"] + lora["adamw"] == pytest.approx(12 * adapters / gpus)
        assert lora["reference"] == 0 and lora["rollout"] == full["rollout"]
    one = memory_plan(config, "bf16-mixed", 1, lora_rank=64)
    assert one["peak"] < 24 * GIB < memory_plan(config, "bf16-mixed", 1)["peak"]   # EasyR1's estimate: 1 x 24 GB
    assert fits(one["peak"]) == "24 40 48 80" and fits(100 * GIB) == "none"


def test_measure_reports_the_peaks_of_its_own_run():
    """`memory.py --measure` in a process of its own (ru_maxrss is a whole process's peak): one row
    per process, the tiny model's peaks between the imports' and a bound no tiny run reaches."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "memory.py", "--measure", "tiny"], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.splitlines()
    assert out[0].startswith("tiny, 3 decoder layers, 1 process(es), fp32, gather for generation: True")
    assert len(out) == 3
    rank, loaded, run, gpu = out[2].split()
    assert rank == "0" and 0.2 < float(loaded) <= float(run) < 3 and gpu == "-"
