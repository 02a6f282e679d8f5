"""The phantom base model: the tiny Qwen2.5-VL pretrained to describe phantom images, before any
chain-of-thought. It stands where Qwen2.5-VL stands in the papers: a model that already perceives
images when SFT and GRPO start.

    python pretrain.py                    # writes runs/base once (sft.py also builds it if missing)
    python pretrain.py --probe runs/base  # its caption accuracy per attribute on held-out images

Pretraining is captioning: the prompt is "Describe the image." and the target the image's full
caption, "CT of the chest. Two nodules: left upper, right lower." (phantom.phantom_caption), on
images of the phantom's "base" stream, which no VQA split shares. Every step draws new images, so
the model sees each at most once. No rationale, no question, no <think>/<answer> format: what
sft.py then teaches on scarce chain-of-thought is the format and the reasoning from what is seen
to an answer, as the papers' SFT does on a pretrained VLM.

What it is not: a pretrained VLM's breadth. It knows one synthetic world (4 modalities, 3 regions,
0-3 lesions of 2 kinds in 4 quadrants), and its language is the phantom's few hundred words.
[reconstructed] None of this is in the papers; it reproduces their starting point in miniature.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from model import load_model, save_checkpoint
from phantom import CAPTION_PROMPT, parse_caption, phantom_captions
from policy import sample_completions, to_device
from records import run_script
from training import HelpFormatter, at_least, learning_rate, target_token_loss

DEFAULT_BASE = "runs/base"
PROBE_START = 10_000_000   # held-out probe images: far past any image pretraining draws
ATTRIBUTES = ("modality", "region", "count", "kind", "quadrants")
# [reconstructed] Pretraining's size, none of it from the papers: about the fewest images for a
# probe of >= 97% whole captions (3600 steps of 8, 28,800 images: 97.5%; 3000 of 8: 96.2%). Small
# batches learn more per image here: the same 24,000 images in steps of 16 (lr 1e-3) gave 94.5%;
# steps of 32 (lr 2e-3) needed 48,000 images for 97.8% (EXPERIMENTS.md §1, "The base, built faster").
STEPS, BATCH_SIZE, LR = 3600, 8, 1e-3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default=DEFAULT_BASE, help="where the base model is written")
    p.add_argument("--steps", type=at_least(1), default=STEPS,
                   help="optimizer steps, each on new images [reconstructed]")
    p.add_argument("--batch-size", type=at_least(1), default=BATCH_SIZE,
                   help="captioned images per step [reconstructed]")
    p.add_argument("--lr", type=float, default=LR, help="peak learning rate (warmup, cosine decay) [reconstructed]")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the images")
    p.add_argument("--probe-size", type=at_least(1), default=400, help="held-out images the probe captions")
    p.add_argument("--probe-every", type=at_least(0), default=0,
                   help="also probe every N steps, to watch perception grow (0: only at the end)")
    p.add_argument("--probe", metavar="CKPT", default=None,
                   help="only probe the perception of CKPT (a base model) and print it")
    return p.parse_args(argv)


def caption_accuracy(predicted, truth):
    """Share of held-out images whose generated caption states each attribute right, and the whole
    caption; "kind" and "quadrants" over the images with lesions. An unreadable caption is wrong
    on every attribute.

        truth     = ["CT of the chest. One mass: left upper.", "MRI of the head. No lesion."]
        predicted = ["CT of the chest. One mass: right upper.", "MRI of the head. No lesion."]
        -> modality 1.0, region 1.0, count 1.0, kind 1.0 (of 1), quadrants 0.0 (of 1), caption 0.5
    """
    right = {name: [] for name in (*ATTRIBUTES, "caption")}
    for text, reference in zip(predicted, truth):
        seen, facts = parse_caption(text) or {}, parse_caption(reference)
        for name in ATTRIBUTES:
            if name in ("modality", "region", "count") or facts["count"] > 0:
                right[name].append(seen.get(name) == facts[name])
        right["caption"].append(text.strip() == reference)
    return {name: float(np.mean(values)) for name, values in right.items()}


def probe(model, processor, size=400, seed=0, batch_size=64):
    """Caption accuracy (caption_accuracy) of `model` on `size` held-out base-stream images, greedy."""
    samples = phantom_captions(size, seed=seed, start=PROBE_START)
    model.eval()
    texts = []
    with torch.no_grad():
        for i in range(0, size, batch_size):
            chunk = samples[i:i + batch_size]
            batch = to_device(processor.prompts([CAPTION_PROMPT] * len(chunk), [im for im, _ in chunk]),
                              model.device)
            texts += [t.split("<|im_end|>")[0] for t in
                      sample_completions(model, processor, batch, greedy=True, max_new_tokens=32).texts]
    return caption_accuracy(texts, [caption for _, caption in samples])


def caption_batch(processor, samples):
    """The training batch of [(image, caption)], each prompted with CAPTION_PROMPT, with logits kept
    only where a caption token is predicted. The batch is left-padded, so every caption ends its
    row: with the labels cut to the last K positions and logits_to_keep=K (K = the longest caption
    + 1), target_token_loss gives the same loss while the output head and its softmax run on K
    positions instead of all (~20 of ~95). The saving is small: bench_pretrain.py measured forward
    and backward with every position's logits at 0.96x to 1.20x of these, within a shared CPU's noise.

        labels (2, 6) [[-100, -100, -100, -100, 7, EOS], [-100, -100, -100, 5, 8, EOS]]
        -> K = 4: labels [[-100, -100, 7, EOS], [-100, 5, 8, EOS]], logits (2, 4, V)
    """
    batch = processor.training_batch([CAPTION_PROMPT] * len(samples), [image for image, _ in samples],
                                     [caption for _, caption in samples])
    keep = int((batch["labels"] != -100).sum(1).max()) + 1
    return dict(batch, labels=batch["labels"][:, -keep:], logits_to_keep=keep)


def pretrain(out=DEFAULT_BASE, steps=STEPS, batch_size=BATCH_SIZE, lr=LR, seed=0, probe_size=400, probe_every=0,
             log=print):
    """Train the tiny model from random weights to caption base-stream images; write it to `out`
    (atomically, with its probe in meta.json) and return the probe. probe_every: log the probe
    every N steps too (its time counts in the build's seconds)."""
    model, processor = load_model("tiny", device="cpu", seed=seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)  # one kernel for all weights
    start = time.time()
    bar = tqdm(range(steps), desc="pretrain", file=sys.stderr)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, 0.05, 0.1)
        batch = caption_batch(processor, phantom_captions(batch_size, seed=seed, start=step * batch_size))
        loss_sum, n = target_token_loss(model, batch)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss_sum.item() / n:.3f}")
        if probe_every and (step + 1) % probe_every == 0 and step + 1 < steps:
            seen = format_probe(probe(model, processor, probe_size, seed=seed))
            log(f"pretrain.py: step {step + 1}, {(step + 1) * batch_size} images: {seen}")
            model.train()
    seconds = time.time() - start
    perception = probe(model, processor, probe_size, seed=seed)
    save_checkpoint(model, processor, out, meta=dict(script="pretrain.py", steps=steps, batch_size=batch_size,
                                                     lr=lr, seed=seed, seconds=round(seconds),
                                                     probe=perception, probe_size=probe_size))
    log(f"pretrain.py: wrote {out} in {seconds:.0f} s; " + format_probe(perception))
    return perception


def format_probe(perception):
    return "caption accuracy on held-out images: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in perception.items())


def ensure_base(path, script):
    """The base model at `path`, built first (pretrain with its defaults) if it is not there yet."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        print(f"{script}: no base model at {path}: building it once (python pretrain.py: ~1.6x the time of SFT)",
              file=sys.stderr)
        pretrain(path, log=lambda text: print(text, file=sys.stderr))
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.probe:
        model, processor = load_model(args.probe, device="cpu")
        print(format_probe(probe(model, processor, args.probe_size, seed=args.seed)))
        return
    if os.path.exists(args.out) and os.listdir(args.out):
        sys.exit(f"pretrain.py: {args.out} exists; remove it or choose another --out")
    perception = pretrain(args.out, args.steps, args.batch_size, args.lr, args.seed, args.probe_size, args.probe_every)
    print(json.dumps(perception))


if __name__ == "__main__":
    run_script(main)
