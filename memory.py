"""Per-GPU memory of full fine-tuning and of LoRA, from a model's config alone (no weights are loaded).

    python memory.py                          # Qwen2.5-VL-3B and -7B, GRPO, 1/2/4/8 GPUs, each precision,
                                              # full fine-tuning and LoRA rank 64
    python memory.py --model runs/sft --gpus 1 --precision bf16-mixed --stage sft --lora-rank 0
    torchrun --nproc-per-node 2 memory.py --measure qwen2.5-vl-3b --layers 8   # measured, per process

The model is built on the meta device, so its parameters are counted exactly (tied embeddings
once). What is held per GPU with FSDP2 over W GPUs (distributed.py):

    weights     master weights / W            fp32 (4 B), or bf16 (2 B) under --precision bf16
    gradients   / W                           same dtype as the weights
    AdamW       two moments / W               same dtype as the weights (2 x 4 B, or 2 x 2 B)
    reference   GRPO's frozen model / W       bf16 (fp32 under --precision fp32); 0 for SFT
    rollout     GRPO: the whole model gathered once for generation (bf16, or fp32 under fp32;
                with one GPU these are the weights themselves; --no-gather-for-generation: the
                root's own weights and one decoder layer or vision block) + the KV cache of this
                GPU's prompts x G sequences
    activations one micro-batch with gradient checkpointing: every decoder layer's input kept,
                one layer's working set recomputed at a time, and the fp32 log-probs of a chunk
                of completion rows over the vocabulary (one GPU in bf16-mixed: + the bf16 copies
                of the weights that autocast keeps for backward; 2+ GPUs: + the root unit, which
                FSDP2 keeps gathered from forward to backward, and the unit running)
    peak        weights + gradients + AdamW + reference + max(rollout, activations)

With LoRA (--lora-rank R, model.py): the base is frozen and stored as a frozen model is (bf16, fp32
under --precision fp32), sharded; gradients and AdamW moments exist only for the adapters (R x (in
+ out) per adapted layer, in the trained weights' dtype); GRPO's reference is the same model with
its adapters off (0 bytes); one GPU in bf16-mixed has no autocast copies (the base is bf16 already).
The last column names the GPU sizes (24, 40, 48, 80 GB) the peak fits in.

[reconstructed] The per-layer working set (10 h + 3 i values per token in bf16), the 2 GiB of
CUDA context and allocator slack are estimates, not measurements: read the table as a plan, and
check it on your GPU (bench figures in the README).
"""

import argparse

import torch

GIB = 2 ** 30
CONTEXT_BYTES = 2 * GIB     # [reconstructed] CUDA context, kernels and allocator slack per GPU
GPU_SIZES = (24, 40, 48, 80)   # GB of common GPUs (RTX 4090 / A100-40 / L40S, A6000 / A100-80, H100)


_META_COUNTS = {}   # config as JSON -> its counts: building a 7B model on meta takes a while


def _meta_counts(config):
    """Counts of the model `config` describes, built once on the meta device (no memory):
    total and vision parameters, the parameters a process holds gathered while sampling with
    sharded weights, and in + out of each linear layer the default LoRA targets adapt."""
    key = config.to_json_string()
    if key not in _META_COUNTS:
        import re

        from lora import lora_target_pattern
        from model import model_class
        with torch.device("meta"):
            model = model_class(config)(config)
        units = [sum(p.numel() for p in unit.parameters())
                 for unit in (*model.model.visual.blocks, *model.model.language_model.layers)]
        total = sum(p.numel() for p in model.parameters())           # parameters() lists a tied one once
        pattern = re.compile(lora_target_pattern())
        _META_COUNTS[key] = dict(
            total=total, vision=sum(p.numel() for p in model.model.visual.parameters()),
            sharded_rollout=total - sum(units) + max(units),
            adapted=sum(m.in_features + m.out_features for name, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and pattern.fullmatch(name)))
    return _META_COUNTS[key]


def count_parameters(config, lora_rank=0):
    """(total, vision) parameter counts of the model `config` describes, built on the meta device;
    with lora_rank, also the adapters' parameters that model.py's default targets would add."""
    counts = _meta_counts(config)
    if not lora_rank:
        return counts["total"], counts["vision"]
    return counts["total"], counts["vision"], lora_rank * counts["adapted"]


def sharded_rollout_parameters(config):
    """Parameters a process holds gathered while it samples with sharded weights
    (--no-gather-for-generation): the root's own (embeddings, lm_head, final norm, the vision
    tower's patch embedding and merger), which stay gathered, plus the largest decoder layer or
    vision block, gathered one at a time (the FSDP2 units of distributed.py)."""
    return _meta_counts(config)["sharded_rollout"]


def memory_plan(config, precision="bf16-mixed", gpus=1, stage="grpo", micro_batch=8, prompt_tokens=600,
                completion_tokens=512, prompts_per_step=8, num_generations=8, chunk_rows=4, lora_rank=0,
                gather_for_generation=True):
    """Bytes per GPU of each part of fine-tuning (see the module docstring), as a dict.

    The default workload is ARMed's GRPO at the paper's image size: ~512 image tokens + the
    question (prompt_tokens 600), 512 new tokens, 8 prompts x G = 8 per step, micro-batches of 8.
    lora_rank > 0: LoRA on the language model's projections instead of full fine-tuning.
    """
    total, _, *adapters = count_parameters(config, lora_rank)
    text = config.get_text_config()
    h, i, layers, vocab = text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size
    weight_bytes = 2 if precision == "bf16" else 4
    frozen_bytes = 4 if precision == "fp32" else 2
    trained = adapters[0] if lora_rank else total
    plan = {"parameters": total, "trained": trained,
            "weights": (total * frozen_bytes + trained * weight_bytes if lora_rank else total * weight_bytes) / gpus,
            "gradients": trained * weight_bytes / gpus,
            "adamw": 2 * trained * weight_bytes / gpus,
            "reference": total * frozen_bytes / gpus if stage == "grpo" and not lora_rank else 0.0}
    tokens = prompt_tokens + (completion_tokens if stage == "grpo" else 0)
    if stage == "grpo":
        sequences = max(1, prompts_per_step // gpus) * num_generations
        head_dim = h // text.num_attention_heads
        kv_cache = 2 * layers * text.num_key_value_heads * head_dim * tokens * sequences * 2
        gathered = 0.0 if gpus == 1 else (total if gather_for_generation else sharded_rollout_parameters(config)) * frozen_bytes
        plan["rollout"] = gathered + kv_cache
        logit_rows = chunk_rows * completion_tokens
    else:
        plan["rollout"] = 0.0
        logit_rows = micro_batch * tokens
    checkpoints = layers * micro_batch * tokens * h * 2
    working_set = micro_batch * tokens * (10 * h + 3 * i) * 2
    logits = logit_rows * vocab * (4 + 4)               # fp32 logits and their log-softmax
    plan["activations"] = checkpoints + working_set + logits
    if precision == "bf16-mixed" and gpus == 1 and not lora_rank:
        plan["activations"] += total * 2    # autocast's bf16 copies of the weights, kept for backward
    if gpus > 1:                            # gathered in the compute dtype: the root and the unit running
        plan["activations"] += sharded_rollout_parameters(config) * frozen_bytes
    plan["peak"] = (plan["weights"] + plan["gradients"] + plan["adamw"] + plan["reference"]
                    + max(plan["rollout"], plan["activations"]) + CONTEXT_BYTES)
    return plan


PARTS = ("weights", "gradients", "adamw", "reference", "rollout", "activations", "peak")


def fits(peak):
    """The GPU sizes of GPU_SIZES (GB, as their makers count: GiB) that hold `peak` bytes: "24 40 48 80"."""
    return " ".join(str(size) for size in GPU_SIZES if peak <= size * GIB) or "none"


def measure(shape, layers=None, questions=2, new_tokens=2, gather_for_generation=True):
    """Measured, not planned: peak memory of each process as evaluate.py runs (no optimizer state).
    Run under torchrun to see what rank-0 loading saves:
        torchrun --nproc-per-node 2 memory.py --measure qwen2.5-vl-3b --layers 8 [--no-gather-for-generation]
    Each process loads `shape` (random weights; under torchrun only rank 0 builds them, the
    others build on the meta device), shards it, and answers `questions` phantom questions.
    Prints, per process, the peak resident set after loading and over the whole run (GiB; on a
    CPU this is where the weights live) and, on CUDA, the peak GPU memory allocated."""
    import resource

    from distributed import setup
    from evaluate import answer_records
    from model import load_model
    from phantom import phantom_dataset
    rt = setup(gather_for_generation=gather_for_generation)
    peak_rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB   # Linux: KiB
    model, processor = load_model(shape, device="cpu", dtype=rt.frozen_dtype, layers=layers, weights=rt.reads_weights)
    model = rt.prepare(model.eval().requires_grad_(False), frozen=True)
    loaded = peak_rss()
    answer_records(model, processor, phantom_dataset("val", size=questions), batch_size=questions,
                   max_new_tokens=new_tokens, rt=rt)
    own = dict(rank=rt.rank, loaded=loaded, run=peak_rss(),
               gpu=torch.cuda.max_memory_allocated() / GIB if rt.device.type == "cuda" else None)
    rows = rt.gather(own)
    rt.print(f"{shape}, {model.config.get_text_config().num_hidden_layers} decoder layers, {rt.world_size} "
             f"process(es), {rt.precision}, gather for generation: {gather_for_generation}")
    rt.print(f"{'rank':>4} {'RSS after loading':>18} {'RSS whole run':>14} {'GPU peak':>9}  (GiB)")
    for row in rows:
        rt.print(f"{row['rank']:>4} {row['loaded']:>18.2f} {row['run']:>14.2f} "
                 + (f"{row['gpu']:>9.2f}" if row["gpu"] is not None else f"{'-':>9}"))
    if len(rows) > 1:
        rt.print(f"rank 1 / rank 0, whole run: {rows[1]['run'] / rows[0]['run']:.2f}")
    rt.close()


def main(argv=None):
    from distributed import PRECISIONS
    from model import QWEN25_VL_SHAPES, qwen25_vl_config
    from training import HelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", nargs="+", default=list(QWEN25_VL_SHAPES),
                   help="qwen2.5-vl-3b, qwen2.5-vl-7b, or a checkpoint directory / hub id (config only)")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="numbers of GPUs")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS), help="precisions")
    p.add_argument("--stage", choices=("grpo", "sft"), default="grpo", help="GRPO (policy + reference + rollout) or SFT")
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward")
    p.add_argument("--prompt-tokens", type=int, default=600, help="prompt length (image tokens included)")
    p.add_argument("--completion-tokens", type=int, default=512, help="GRPO: new tokens per completion")
    p.add_argument("--prompts-per-step", type=int, default=8, help="GRPO: global prompts per step")
    p.add_argument("--num-generations", type=int, default=8, help="GRPO: completions per prompt")
    p.add_argument("--lora-rank", type=int, nargs="+", default=[0, 64],
                   help="0: full fine-tuning; R: LoRA of rank R [reconstructed: 64, as VLM-R1 on Qwen2.5-VL-3B]")
    p.add_argument("--gather-for-generation", action=argparse.BooleanOptionalAction, default=True,
                   help="GRPO on 2+ GPUs: the whole model gathered for the rollout (distributed.py's default), "
                        "or only one unit at a time")
    p.add_argument("--measure", metavar="SHAPE", help="measure instead (see measure()): qwen2.5-vl-3b, -7b or tiny")
    p.add_argument("--layers", type=int, help="--measure: fewer decoder layers (a reduced-depth shape)")
    args = p.parse_args(argv)
    if args.measure:
        return measure(args.measure, args.layers, gather_for_generation=args.gather_for_generation)
    print(f"GiB per GPU, {args.stage}, micro-batch {args.micro_batch}, prompt {args.prompt_tokens} tokens"
          + (f", {args.prompts_per_step} prompts x G={args.num_generations}, {args.completion_tokens} new tokens"
             if args.stage == "grpo" else "") + "; gradient checkpointing; estimates (see --help)")
    print(f"{'model':<16}{'training':<10}{'precision':<12}{'GPUs':>5}" + "".join(f"{part:>12}" for part in PARTS)
          + "  fits in (GB)")
    for name in args.model:
        if name in QWEN25_VL_SHAPES:
            config = qwen25_vl_config(name)
        else:
            from transformers import AutoConfig
            config = AutoConfig.from_pretrained(name)
        for rank in args.lora_rank:
            for precision in args.precision:
                for gpus in args.gpus:
                    plan = memory_plan(config, precision, gpus, args.stage, args.micro_batch, args.prompt_tokens,
                                       args.completion_tokens, args.prompts_per_step, args.num_generations,
                                       lora_rank=rank, gather_for_generation=args.gather_for_generation)
                    print(f"{name[-16:]:<16}{f'LoRA {rank}' if rank else 'full':<10}{precision:<12}{gpus:>5}" +
                          "".join(f"{plan[part] / GIB:>12.1f}" for part in PARTS) + f"  {fits(plan['peak'])}")


if __name__ == "__main__":
    main()
