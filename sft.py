"""Chain-of-thought supervised fine-tuning: teach the <think>…</think><answer>…</answer> format.

    python sft.py                                   # the phantom base model, phantom data, writes runs/sft
    python sft.py --model Qwen/Qwen2.5-VL-3B-Instruct --dataset slake --data-root data/Slake1.0 \\
        --batch-size 4 --grad-accum 8 --lr 1e-5 --gradient-checkpointing --max-pixels 401408
    python sft.py --resume runs/sft                 # continue an interrupted run

ARMed stage 2 (knowledge-enhanced fine-tuning, ARMed-A): with --cot-from CKPT the questions of the
first --cot-records training records are first answered by that checkpoint (the stage-I GRPO
model), --cot-samples times each at --cot-temperature; the first well-formatted rationale with a
correct answer is kept, --cot-select K representative ones are chosen by k-means over their
sentence embeddings, and the model in --model is fine-tuned on them: instead of the dataset's
rationales, or, with --cot-augment, added to them (the data-augmentation arm of ARMed's Figure 5).

    python sft.py --model runs/grpo-I --cot-from runs/grpo-I --cot-select 300 --out runs/armed-A

By default SFT starts from runs/base, the tiny model pretrained to describe phantom images
(pretrain.py builds it the first time, about 0.9x the time of SFT): the papers' regime, where SFT on scarce
chain-of-thought starts from a VLM that already sees. `--model tiny` starts from random weights.

The loss is next-token cross-entropy on the assistant's tokens only (the prompt and the image
are context, labelled -100). Target: "<think>{cot}</think><answer>{answer}</answer><|im_end|>".
"""

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from data import add_data_args, batch_order, dataset_from_args, load_image
from distributed import setup
from evaluate import validate
from checkpoints import check_checkpoint_folder
from model import add_model_args, check_prompt_lengths, model_from_args, save_checkpoint
from policy import sample_completions, to_device
from pretrain import DEFAULT_BASE, DEFAULT_INSTRUCT, ensure_base, ensure_instruct
from records import run_script
from rewards import SemanticScorer, extract_answer, format_reward, think_text, textual_reward
from training import (HelpFormatter, RunConfig, add_optimizer_args, add_run_args, at_least, claim_output, due,
                      open_log, parse_run_args, positive_float, set_learning_rate, target_token_loss)


def parse_args(argv=None):
    """sft.py's options. Its own come in three groups below; the shared ones from the file of their
    concept: --model and LoRA (model.py, lora.py), --precision (distributed.py), the data (data.py),
    --out/--resume and the optimizer (training.py)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p, default_model=DEFAULT_BASE)
    add_data_args(p)
    add_run_args(p, "sft.py", default_out="runs/sft")
    # [reconstructed] the papers publish no SFT hyper-parameters; 2e-3 suits the tiny model,
    # use ~1e-5 for a 3B model.
    add_optimizer_args(p, lr=2e-3)

    g = p.add_argument_group("SFT on chain-of-thought")
    g.add_argument("--steps", type=at_least(1), default=500,
                   help="optimizer steps; a resumed run may raise it (the schedule keeps its first length)")
    g.add_argument("--batch-size", type=at_least(1), default=32,
                   help="examples per micro-batch, over all processes")
    g.add_argument("--grad-accum", type=at_least(1), default=1, help="micro-batches per optimizer step")
    g.add_argument("--missing-cot", choices=["skip", "answer"], default="skip",
                   help="records without a rationale: skip them, or train with <think> restating "
                        "the answer [reconstructed]")
    g.add_argument("--answer-only", action="store_true",
                   help="drop the dataset's rationales: every record trains with <think> restating the answer "
                        "(--missing-cot answer's target). RL-MedVQA's SFT control: `--train-offset 6000` gives "
                        "it GRPO's answer-only questions (experiments.py factors, sft-answers)")
    # [reconstructed] ARMed's regime: chain-of-thought annotations are scarce, so SFT sees a limited
    # CoT subset and GRPO then trains on answer-only questions SFT never saw (grpo.py's default
    # prompts on phantom start past every record sft.py could use). The size is not published; 500
    # phantom rationales, 500 steps, is where SFT from runs/base levels off on the validation split
    # (EXPERIMENTS.md §1, lab notes: more steps or more rationales, and what that leaves GRPO).
    g.add_argument("--cot-records", type=at_least(0), default=500,
                   help="[reconstructed] train on the first N records that have a rationale (0: all); "
                        "with --cot-from, the checkpoint answers the questions of the first N records")

    g = p.add_argument_group("ARMed-A: rationales written by a checkpoint",
                             "ARMed-A fine-tunes --model on them. [reconstructed] ARMed does not say which "
                             "checkpoint: `experiments.py stages` gives the model stage I started from (runs/instruct; "
                             "its --a-start I gives the stage-I model itself, --model as --cot-from).")
    g.add_argument("--cot-from", default=None,
                   help="ARMed-A: checkpoint that writes rationales for the questions of the first --cot-records "
                        "training records (0: all); only well-formatted correct ones are kept")
    g.add_argument("--cot-select", type=at_least(0), default=0,
                   help="ARMed-A: keep K representative rationales by k-means (0: keep all correct)")
    g.add_argument("--cot-samples", type=at_least(1), default=4, help="ARMed-A: rationales sampled per question")
    g.add_argument("--cot-temperature", type=positive_float, default=0.7,
                   help="ARMed-A: sampling temperature of the rationales [reconstructed]")
    g.add_argument("--cot-augment", action="store_true",
                   help="ARMed-A: add the written rationales to the dataset's (its first --cot-records) instead "
                        "of replacing them: the data-augmentation arm of ARMed's Figure 5 [reconstructed]")
    g.add_argument("--cot-min-score", type=float, default=1.0,
                   help="ARMed-A: textual reward an answer needs to count as correct [reconstructed]")

    g = p.add_argument_group("validation, checkpoints, seed")
    g.add_argument("--eval-every", type=at_least(0), default=500, help="validate every N steps (0: only at the end)")
    g.add_argument("--eval-size", type=at_least(1), default=100, help="validation records per evaluation")
    g.add_argument("--save-every", type=at_least(0), default=500, help="checkpoint every N steps (0: only at the end)")
    g.add_argument("--max-new-tokens", type=at_least(1), default=96, help="generation length at validation")
    g.add_argument("--encoder", default=None, help="sentence-transformers model for the semantic metric")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    args = parse_run_args(p, argv)
    if args.answer_only and args.cot_from:
        p.error("argument --answer-only: drops rationales, --cot-from writes them; give one of the two")
    if args.cot_augment and not args.cot_from:
        p.error("argument --cot-augment: adds the rationales --cot-from writes; give --cot-from too")
    return args


def sft_target(record, missing_cot="skip"):
    """The assistant text SFT teaches, or None if the record has no rationale and we skip those."""
    cot = record.cot
    if not cot:
        if missing_cot == "skip":
            return None
        cot = f"The answer is {record.answer}."  # [reconstructed] see --missing-cot
    return f"<think>{cot}</think><answer>{record.answer}</answer>"


def kmeans(x, k, seed=0, iters=50):
    """Plain Lloyd's k-means on rows of x (n, d); returns the index of the row nearest each centre."""
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), size=k, replace=False)]
    for _ in range(iters):
        assign = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    nearest = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(0)
    return sorted(set(nearest.tolist()))


def generate_cot(records, ckpt, args, rt):
    """ARMed-A data: rationales written by `ckpt`, kept when format and answer are right.

    Each process answers every world_size-th question; the kept rationales are gathered in
    record order, so every process trains on the same list.
    """
    model, processor = model_from_args(args, rt, name=ckpt, frozen=True)

    def first_correct_rationale(chunk, all_done):
        """Each record with its first sampled rationale whose format and answer are right, or None."""
        batch = processor.prompts([r.question for r in chunk], [load_image(r) for r in chunk])
        out = sample_completions(model, processor, batch, num_samples=args.cot_samples,
                                 temperature=args.cot_temperature, max_new_tokens=args.max_new_tokens, all_done=all_done)
        kept = []
        for i, r in enumerate(chunk):
            texts = out.texts[i * args.cot_samples:(i + 1) * args.cot_samples]
            correct = [t for t in texts if format_reward(t) == 1.0
                       and textual_reward(extract_answer(t), r.answer, r.answer_type) >= args.cot_min_score]
            kept.append(type(r)(**{**vars(r), "cot": think_text(correct[0]).strip()}) if correct else None)
        return kept
    kept = [r for r in rt.map_generation(model, first_correct_rationale, records, args.batch_size, "writing CoT")
            if r is not None]
    rt.print(f"ARMed-A: {len(kept)}/{len(records)} questions got a correct rationale from {ckpt}")
    if args.cot_select and len(kept) > args.cot_select:
        emb = SemanticScorer(args.encoder).encode([f"{r.question} {r.cot}" for r in kept])
        kept = [kept[i] for i in kmeans(np.asarray(emb), args.cot_select, seed=args.seed)]
        rt.print(f"ARMed-A: k-means kept {len(kept)} representative rationales")
    del model
    return kept


def training_examples(args, rt):
    """(examples, val): the (record, target) pairs SFT trains on and the validation records. The
    dataset's rationales: those of its first --cot-records records that have one. --cot-from: the
    rationales that checkpoint writes for the questions of the first --cot-records records
    (generate_cot) replace them, or with --cot-augment are added after them."""
    train = dataset_from_args(args, "train")
    if args.answer_only:
        train = [type(r)(**{**vars(r), "cot": ""}) for r in train]
    given = [(r, t) for r in train if (t := sft_target(r, "answer" if args.answer_only else args.missing_cot))
             is not None]
    without_cot = len(train) - len(given)
    if args.cot_records:
        given = given[:args.cot_records]
    examples = given
    if args.cot_from:
        asked = train[:args.cot_records] if args.cot_records else train
        written = [(r, sft_target(r)) for r in generate_cot(asked, args.cot_from, args, rt)]
        examples = given + written if args.cot_augment else written
        rt.print(f"sft.py: {len(written)} rationales written by {args.cot_from}"
                 + (f", added to the dataset's {len(given)}" if args.cot_augment else ""))
    if not examples:
        sys.exit("sft.py: no training record has a rationale (cot); use --missing-cot answer "
                 "or a dataset with a cot field" + (", or check --cot-from's answers" if args.cot_from else ""))
    val = dataset_from_args(args, "val")[:args.eval_size]
    rt.print(f"sft.py: {len(examples)} training examples ({without_cot} without CoT skipped, "
             f"--cot-records {args.cot_records or 'all'}), {len(val)} validation records")
    return examples, val


def accumulate_gradients(model, processor, examples, step, args, rt):
    """The gradient of one optimizer step, over --grad-accum micro-batches of --batch-size examples
    (over all processes): (mean target-token loss, tokens seen), both of the global batch."""
    total_loss, n_tokens = 0.0, 0
    for micro in range(args.grad_accum):
        # this process's share of the global micro-batch of --batch-size examples
        idx = rt.share(batch_order(len(examples), args.batch_size, step * args.grad_accum + micro, args.seed))
        rs = [examples[i][0] for i in idx]
        batch = processor.training_batch([r.question for r in rs], [load_image(r) for r in rs],
                                         [examples[i][1] for i in idx])
        loss_sum, n_targets = target_token_loss(model, to_device(batch, rt.device))
        n_targets = rt.sum(n_targets)                   # target tokens of the global micro-batch
        (loss_sum / n_targets / args.grad_accum).backward()
        total_loss += rt.sum(loss_sum.item()) / n_targets / args.grad_accum
        n_tokens += rt.sum(int(batch["attention_mask"].sum()))
    return total_loss, n_tokens


def save(model, processor, optimizer, config, args, rt, step, metrics):
    trainer_state = dict(step=step, optimizer=rt.optimizer_state(model, optimizer), rng=rt.rng_state(),
                         args=config.options(args, rt), config=asdict(config), world_size=rt.world_size)
    save_checkpoint(model, processor, args.out, trainer_state, rt=rt,
                    meta=dict(script="sft.py", step=step, val=metrics, world_size=rt.world_size,
                              precision=rt.precision))


def main(argv=None):
    args = parse_args(argv)
    state = claim_output(args, "sft.py")   # the checkpoint's trainer_state on --resume
    if args.model == DEFAULT_BASE and not args.resume:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not os.path.isdir(DEFAULT_BASE):
            sys.exit(f"sft.py: no base model at {DEFAULT_BASE}: run `python pretrain.py` once before torchrun")
        ensure_base(DEFAULT_BASE, "sft.py")
    if os.path.normpath(args.model) == DEFAULT_INSTRUCT and not args.resume:
        ensure_instruct(DEFAULT_INSTRUCT, "sft.py")
    rt = setup(args.precision, args.device, args.gather_for_generation)
    rt.require_divisible(args.batch_size, "--batch-size", "sft.py")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    config = RunConfig.from_args(args, state)
    for folder in (config.policy, args.cot_from):   # incomplete or damaged: said before any work
        if folder and os.path.isdir(folder):
            check_checkpoint_folder(folder)
    examples, val = training_examples(args, rt)
    model, processor = model_from_args(args, rt, name=config.policy, seed=args.seed)
    fits = {id(r) for r in check_prompt_lengths([r for r, _ in examples], processor, args.max_prompt_tokens,
                                                args.skip_bad, "sft.py")}
    examples = [(r, t) for r, t in examples if id(r) in fits]
    val = check_prompt_lengths(val, processor, args.max_prompt_tokens, args.skip_bad, "sft.py")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=args.weight_decay)
    if state is not None:
        rt.set_rng_state(state["rng"])   # first: it refuses another number of processes
        rt.load_optimizer_state(model, optimizer, state["optimizer"])
    scorer = SemanticScorer(args.encoder)
    log = open_log(args.out, keep_step=state and state["step"], enabled=rt.is_main,
                   note=args.resume_note)
    rt.print(f"sft.py: {sum(p.numel() for p in params) * rt.world_size / 1e6:.2f}M trainable parameters on "
             f"{rt.world_size} x {rt.device.type}, precision {rt.precision}")
    start = state["step"] if state else 0
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, file=sys.stderr, desc="sft",
               disable=not rt.is_main)
    metrics = None
    for step in bar:
        t0 = time.time()
        lr = set_learning_rate(optimizer, step, config)
        loss, n_tokens = accumulate_gradients(model, processor, examples, step, args, rt)
        grad_norm = rt.clip_grad_norm(params, args.clip)
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if not skipped:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.time() - t0
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{n_tokens / dt:.0f}")
        row = dict(step=step + 1, loss=loss, lr=lr, grad_norm=grad_norm, step_time=dt,
                   tokens_per_s=n_tokens / dt, skipped=skipped, world_size=rt.world_size)
        if due(step + 1, args.eval_every, args.steps):
            row["val"] = metrics = validate(model, processor, val, scorer, args.batch_size, args.max_new_tokens, rt)
        log.write(json.dumps(row) + "\n")
        log.flush()
        if due(step + 1, args.save_every, args.steps):
            save(model, processor, optimizer, config, args, rt, step + 1, metrics)
    log.close()
    rt.print(f"sft.py: wrote {args.out}")
    rt.close()


if __name__ == "__main__":
    run_script(main)
