"""The phantom base model: the tiny Qwen2.5-VL pretrained to describe phantom images, before any
chain-of-thought. It stands where Qwen2.5-VL stands in the papers: a model that already perceives
images when SFT and GRPO start.

    python pretrain.py                    # writes runs/base once (sft.py also builds it if missing)
    python pretrain.py --probe runs/base  # its caption accuracy per attribute on held-out images
    python pretrain.py --instruct         # writes runs/instruct from runs/base (grpo.py/sft.py build it if missing)
    python pretrain.py --instruct --probe runs/instruct   # its format compliance and answers
    python pretrain.py --instruct --instruct-describe 0.25 --out runs/instruct-describe   # also describes images

Pretraining is captioning: the prompt is "Describe the image.", without a system turn
(--caption-system), and the target the image's full caption, "CT of the chest. Two nodules: left
upper, right lower." (phantom.phantom_caption), on images of the phantom's "base" stream, which no
VQA split shares. Every step draws new images, so the model sees each at most once: 1000 steps of
16 (16,000 images), Muon on the hidden layers' matrices and AdamW on the rest (--optimizer; AdamW
alone, the earlier recipe, needs 28,800 images for the same probe). No rationale,
no question, no system prompt, no <think>/<answer> format: what sft.py then teaches on scarce
chain-of-thought is the format and the reasoning from what is seen to an answer, as the papers'
SFT does on a pretrained VLM.

What it is not: a pretrained VLM's breadth. It knows one synthetic world (4 modalities, 3 regions,
0-3 lesions of 2 kinds in 4 quadrants), and its language is the phantom's few hundred words.
[reconstructed] None of this is in the papers; it reproduces their starting point in miniature.

The instruct start (--instruct), the analogue of Qwen2.5-VL-*Instruct*, which ARMed's stage I
(GRPO) starts from: runs/base tuned to follow the system prompt's format,
"<think>…</think><answer>…</answer>", before any medical chain-of-thought. Its examples are
GENERIC questions about base-stream images (their modality, their body region; INSTRUCT_QUESTIONS),
none of a VQA split's kinds or images, each answered after one brief generic thought ("I look at
the image and answer the question."), never a caption or a phantom rationale. It has never been
asked about lesions: what stage I then learns. Its probe: format compliance and answers on
held-out generic questions, and format compliance on the phantom's val questions (greedy, and
sampled as GRPO samples). As built by default from the AdamW base (--optimizer adamw; seed 0, 60 s
alone on this 2-core CPU): format 100% on both, greedy and sampled; generic answers 59.0% right (it
follows the format far better than it answers); val answers uninformed (closed 45.8%, open 0%).
From the earlier base, captioned with the system prompt: generic answers 51.7% (of 200: modality
53%, region 72%, "no" to every closed question), val closed 47.9%. With --instruct-describe P, a
share P of its examples ask instead to describe the image, answered with its caption
(DESCRIBE_QUESTIONS): an instruct model that can name findings in an answer. At 0.25 (seed 0, 83 s, the earlier base): format 100% greedy and sampled,
generic answers 60.0%, val closed 47.9%, open 0%.
[reconstructed] Not in the papers: their instruct model is Qwen's own.
"""

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from checkpoints import checkpoint_meta
from model import TINY_INIT_STD, load_model, save_checkpoint
from phantom import (CAPTION_PROMPT, MODALITIES, MODALITY_WORDS, PHANTOM_SIZES, REGIONS, parse_caption, phantom_captions,
                     phantom_dataset)
from policy import sample_completions, to_device
from records import VQARecord, run_script
from rewards import extract_answer, format_reward
from training import HelpFormatter, at_least, learning_rate, positive_float, target_token_loss

DEFAULT_BASE = "runs/base"
PROBE_START = 10_000_000   # held-out probe images: far past any image pretraining draws
ATTRIBUTES = ("modality", "region", "count", "kind", "quadrants")
# [reconstructed] The build's optimizer, none of it from the papers (--optimizer). "muon", the
# default: torch.optim.Muon (momentum 0.95, Nesterov, 5 Newton-Schulz steps, no weight decay) on
# the 2-D weights of the hidden layers (the vision blocks, the patch merger, the decoder layers),
# its update scaled to AdamW's RMS (adjust_lr_fn="match_rms_adamw", Moonshot's) so that one
# learning rate serves both; AdamW on the rest (the token embeddings, tied to the output head; the
# patch embedding's convolution; norms and biases). "adamw": AdamW on every weight, the recipe
# before Muon. Muon learns more per image: the probe's 97% in 16,000 images instead of 28,800, so
# the build takes about SFT's time (EXPERIMENTS.md §1, "Muon: the base in SFT's time").
OPTIMIZERS = ("muon", "adamw")
# [reconstructed] Pretraining's size per optimizer: about the shortest build whose probe is >= 97%
# whole captions on every seed. Muon (2,000-image probes, seed 0 unless stated; AMD EPYC): 1000
# steps of 16 at lr 2e-3, the default: 97.9, seeds 1 / 2: 97.4 / 98.0; at 1.5e-3: 97.7; 1100 of 16
# (Muon 2e-3, AdamW 1.5e-3): 98.4, seed 1 98.1; 1800 of 8, lr 1e-3: 97.5; the same with Muon kept off
# the merger's 384 x 384 matrix: 95.2; with 3 Newton-Schulz steps: 96.8. AdamW, captioning without
# the system turn (--caption-system none): 3600 steps of 8, 28,800 images: 97.8%; 3300: 96.0%;
# 3000: 96.5% (lr 7e-4: 96.2%); 2400: 96.2%; 5000 of 4 (lr 7e-4): 94.5%; 3600 steps of 8 drawn from
# 7,200 images (4 epochs): 96.8%. With the system turn, 3600 of 8: 97.5%. Small batches learn more
# per image: the same 24,000 images in steps of 16 gave 94.5%; steps of 32 (lr 2e-3) needed 48,000
# images for 97.8% (EXPERIMENTS.md §1, "The base, built faster"). Probed on 2,000 images instead
# of 400, AdamW's recipe lands at 97.2-98.2% on an Intel CPU (97.1-97.85 on an AMD one):
# seeds 0 / 1 / 2: 97.2 / 97.5 / 98.2 (EXPERIMENTS.md §1, "The patch embedding as a product").
# With --init-std 0.04, 2400 steps were enough on an Intel CPU (97.35 / 97.45 / 97.8; the build in
# SFT's time), not on an AMD one (97.2 / 97.2 / 96.85; 2600 steps: 96.7 / 98.0), and SFT and GRPO
# from that base did worse (EXPERIMENTS.md §1, "The initial weights' scale" and after).
RECIPES = {"muon": dict(steps=1000, batch_size=16, lr=2e-3), "adamw": dict(steps=3600, batch_size=8, lr=1e-3)}
OPTIMIZER = "muon"
STEPS, BATCH_SIZE, LR = RECIPES[OPTIMIZER].values()
# [reconstructed] The system turn while captioning: "none" (the default) captions with the user turn
# alone, as a pretrained VLM never saw the reasoning system prompt that SFT then teaches; "reasoning"
# keeps processor.SYSTEM_PROMPT, which all later stages use. Without it a row is 52 tokens instead of 97
# and a step takes 0.74x the time (one thread, this 2-core CPU).
CAPTION_SYSTEMS = ("none", "reasoning")

DEFAULT_INSTRUCT = "runs/instruct"
# [reconstructed] The instruct tuning's base-stream images start far past pretraining's (0 ..
# steps x batch: 16,000 by default, 28,800 with --optimizer adamw) and its held-out probe's far past
# those, both before the caption probe's (PROBE_START): no image is shared.
INSTRUCT_START, INSTRUCT_PROBE_START = 1_000_000, 2_000_000
# [reconstructed] Generic questions, one per image, kind and phrasing drawn uniformly; none is a
# VQA kind (phantom.OPEN_QUESTIONS, CLOSED_QUESTIONS): the modality alone or the region alone, never
# a lesion. Several phrasings, so that the format is not tied to a few questions. The closed ones
# ask the true modality or region with probability 1/2 (yes/no balanced). Words from the phantom's
# vocabulary where there is one (its tokenizer is trained on phantom_corpus).
INSTRUCT_QUESTIONS = {   # answers: the modality as captions write it ("CT"), the region ("chest"), yes / no
    "modality": ("What imaging modality is this?", "What kind of image is this?", "Which modality was used?"),
    "region": ("What region does the image show?", "Which part of the body is this?", "What body region is seen?"),
    "is_modality": ("Is the modality {modality}?", "Is this image made with {modality}?", "Was {modality} used here?"),
    "shows_region": ("Does the image show the {region}?", "Is the {region} shown?", "Is the {region} seen here?"),
}
# [reconstructed] With --instruct-describe P, a share P of the examples instead asks to describe the
# image, answered in the format with its caption, the text the base was pretrained on: a model
# that has put findings into an answer, as a real instruct VLM describes what it sees. The first
# phrasing is the pretraining prompt (phantom.CAPTION_PROMPT). Default 0: generic questions only.
DESCRIBE_QUESTIONS = (CAPTION_PROMPT, "What do you see in the image?", "Describe the findings.")
# [reconstructed] Brief generic thoughts, one drawn per example: the format, not a rationale.
GENERIC_THOUGHTS = ("I look at the image and answer the question.", "I look at the image, then answer.",
                    "First I look at the image. Then I answer the question.")
# [reconstructed] The instruct tuning's size, from runs/base (the AdamW base; seed 0; one thread of a
# 2-core CPU shared with other jobs). Format compliance on held-out generic questions and on the phantom's
# val questions, greedy and sampled at 0.7, and generic answers right:
#   300 steps of 16, lr 1e-3: 100%, 100%, 100%; answers 51.7% (modality 53%, region 72%; 114 s
#                             with the other core busy, 327 s on a loaded machine)   <- the default
#   600 steps of 16, lr 1e-3: 100%, 100%, 100%; answers 72.8% (128 s; 311 s loaded)
# The default is the fewer steps: what stage I needs is the format (EXPERIMENTS.md §7 ran from it).
#   300 steps of 16, lr 3e-3: 100%,  98%,  96%; answers 42.5%
# With one phrasing per kind, 300 steps at lr 5e-4 left the val questions' greedy format at 63%
# (the first token not <think> on questions unlike its own).
INSTRUCT_STEPS, INSTRUCT_BATCH_SIZE, INSTRUCT_LR = 300, 16, 1e-3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--instruct", action="store_true",
                   help="build (or with --probe, probe) the instruct start from --base instead of the base model")
    p.add_argument("--base", default=DEFAULT_BASE, help="with --instruct: the base model it starts from")
    p.add_argument("--instruct-describe", type=float, default=0.0, metavar="P",
                   help="with --instruct: share of examples that ask to describe the image, answered with its caption "
                        "(DESCRIBE_QUESTIONS) [reconstructed]")
    p.add_argument("--out", default=None, help=f"where the model is written ({DEFAULT_BASE}; --instruct: {DEFAULT_INSTRUCT})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help=f"the build's optimizer ({OPTIMIZER}): Muon on the hidden layers' matrices and AdamW on "
                        "the rest, or AdamW on all (the recipe before Muon); not with --instruct (AdamW) [reconstructed]")
    adamw = RECIPES["adamw"]
    p.add_argument("--steps", type=at_least(1), default=None,
                   help=f"optimizer steps, each on new images ({STEPS}; --optimizer adamw: {adamw['steps']}; "
                        f"--instruct: {INSTRUCT_STEPS}) [reconstructed]")
    p.add_argument("--batch-size", type=at_least(1), default=None,
                   help=f"images per step ({BATCH_SIZE}; --optimizer adamw: {adamw['batch_size']}; "
                        f"--instruct: {INSTRUCT_BATCH_SIZE}) [reconstructed]")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate, warmup then cosine decay ({LR}; --optimizer adamw: {adamw['lr']}; "
                        f"--instruct: {INSTRUCT_LR}) [reconstructed]")
    p.add_argument("--caption-system", choices=CAPTION_SYSTEMS, default="none",
                   help="the system turn while captioning and probing: none, or processor.SYSTEM_PROMPT [reconstructed]")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the images")
    p.add_argument("--init-std", type=positive_float, default=TINY_INIT_STD,
                   help="std of the initial weights (model.TINY_INIT_STD, transformers' default); 0.04 with "
                        "--optimizer adamw --steps 2400 builds a base in 2/3 of AdamW's time whose probe sits at the "
                        "97%% bar (96.85 to 97.8 over 3 seeds on 2 machines), from which SFT and GRPO did worse "
                        "[reconstructed]")
    p.add_argument("--probe-size", type=at_least(1), default=400,
                   help="held-out images the probe captions (--instruct: generic questions it answers)")
    p.add_argument("--probe-every", type=at_least(0), default=0,
                   help="also probe every N steps, to watch perception grow (0: only at the end; not with --instruct)")
    p.add_argument("--probe", metavar="CKPT", default=None,
                   help="only probe CKPT (a base model; with --instruct an instruct one) and print it")
    args = p.parse_args(argv)
    if not 0 <= args.instruct_describe <= 1:
        p.error(f"argument --instruct-describe: a share in [0, 1], got {args.instruct_describe}")
    if args.instruct and args.optimizer:
        p.error("argument --optimizer: the instruct tuning uses AdamW; --optimizer is for the base's build")
    if not args.instruct:
        args.optimizer = args.optimizer or OPTIMIZER
    sizes = (DEFAULT_INSTRUCT, INSTRUCT_STEPS, INSTRUCT_BATCH_SIZE, INSTRUCT_LR) if args.instruct else \
        (DEFAULT_BASE, *RECIPES[args.optimizer].values())
    for name, default in zip(("out", "steps", "batch_size", "lr"), sizes):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


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


def captioning(processor, system="none"):
    """The processor as pretraining prompts it (CAPTION_SYSTEMS): without a system turn ("none"),
    or with processor.SYSTEM_PROMPT ("reasoning"). The one it is given is left as it is.

        captioning(processor).prompt_text("Describe the image.")
        -> "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n"
    """
    if system not in CAPTION_SYSTEMS:
        raise ValueError(f"pretrain.py: caption system {system!r} is not one of {CAPTION_SYSTEMS}")
    captioner = copy.copy(processor)
    if system == "none":
        captioner.system_prompt = None
    return captioner


def probe(model, processor, size=400, seed=0):
    """Caption accuracy (caption_accuracy) of `model` on `size` held-out base-stream images, greedy."""
    samples = phantom_captions(size, seed=seed, start=PROBE_START)
    texts = complete(model, processor, [CAPTION_PROMPT] * size, [image for image, _ in samples], 32, greedy=True)
    return caption_accuracy([t.split("<|im_end|>")[0] for t in texts], [caption for _, caption in samples])


def complete(model, processor, questions, images, max_new_tokens, batch_size=64, **sampling):
    """One completion per question, in batches (sampling: sample_completions' greedy=True, or a temperature)."""
    texts = []
    with torch.no_grad():
        for i in range(0, len(questions), batch_size):
            batch = processor.prompts(questions[i:i + batch_size], images[i:i + batch_size])
            texts += sample_completions(model, processor, to_device(batch, model.device),
                                        max_new_tokens=max_new_tokens, **sampling).texts
    return texts


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
    return cut_to_targets(processor.training_batch([CAPTION_PROMPT] * len(samples), [image for image, _ in samples],
                                                   [caption for _, caption in samples]))


def cut_to_targets(batch):
    """A left-padded training batch with its labels cut to the last K positions and
    logits_to_keep=K, K = the longest target + 1 (caption_batch)."""
    keep = int((batch["labels"] != -100).sum(1).max()) + 1
    return dict(batch, labels=batch["labels"][:, -keep:], logits_to_keep=keep)


def optimizers(model, name, lr):
    """The optimizers of `model` (OPTIMIZERS): ["adamw"] AdamW on every weight, or ["muon"] Muon on
    the 2-D weights of the hidden layers and AdamW on the rest (the embeddings, the patch
    embedding's convolution, norms, biases). No weight decay in either."""
    adamw = dict(lr=lr, weight_decay=0.0, fused=True)   # fused: one kernel for all its weights
    if name == "adamw":
        return [torch.optim.AdamW(model.parameters(), **adamw)]
    if name != "muon":
        raise ValueError(f"pretrain.py: optimizer {name!r} is not one of {OPTIMIZERS}")
    embeddings = {id(w) for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    hidden = [w for w in model.parameters() if w.ndim == 2 and id(w) not in embeddings]
    rest = [w for w in model.parameters() if w.ndim != 2 or id(w) in embeddings]
    return [torch.optim.Muon(hidden, lr=lr, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5,
                             adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW(rest, **adamw)]


def fit(model, batch_at, steps, lr, desc, after_step=None, optimizer="adamw"):
    """`optimizer` (optimizers()) on target_token_loss: step s trains on batch_at(s) at
    learning_rate(s) (warmup 5%, cosine to 10%). after_step(s) runs after each step. Returns the
    seconds it took."""
    model.train()
    steppers = optimizers(model, optimizer, lr)
    start = time.time()
    bar = tqdm(range(steps), desc=desc, file=sys.stderr)
    for step in bar:
        for stepper in steppers:
            for group in stepper.param_groups:
                group["lr"] = learning_rate(step, steps, lr, 0.05, 0.1)
        loss_sum, n = target_token_loss(model, batch_at(step))
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for stepper in steppers:
            stepper.step()
        model.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss_sum.item() / n:.3f}")
        if after_step:
            after_step(step)
    return time.time() - start


def pretrain(out=DEFAULT_BASE, steps=None, batch_size=None, lr=None, seed=0, probe_size=400, probe_every=0,
             caption_system="none", init_std=TINY_INIT_STD, optimizer=OPTIMIZER, log=print):
    """Train the tiny model from random weights to caption base-stream images, prompted as
    captioning(processor, caption_system), with `optimizer` (OPTIMIZERS); write it to `out`
    (atomically, with its probe in meta.json) and return the probe. steps, batch_size, lr: None
    for the optimizer's recipe (RECIPES). probe_every: log the probe every N steps too (its time
    counts in the build's seconds)."""
    recipe = RECIPES[optimizer]
    steps, batch_size, lr = (recipe[name] if value is None else value
                             for name, value in (("steps", steps), ("batch_size", batch_size), ("lr", lr)))
    model, processor = load_model("tiny", device="cpu", seed=seed, init_std=init_std)
    captioner = captioning(processor, caption_system)

    def probe_now(step):
        if probe_every and (step + 1) % probe_every == 0 and step + 1 < steps:
            seen = format_probe(probe(model, captioner, probe_size, seed=seed))
            log(f"pretrain.py: step {step + 1}, {(step + 1) * batch_size} images: {seen}")
            model.train()
    seconds = fit(model, lambda step: caption_batch(captioner, phantom_captions(batch_size, seed=seed,
                                                                                start=step * batch_size)),
                  steps, lr, "pretrain", probe_now, optimizer)
    perception = probe(model, captioner, probe_size, seed=seed)
    save_checkpoint(model, processor, out, meta=dict(script="pretrain.py", optimizer=optimizer, steps=steps,
                                                     batch_size=batch_size, lr=lr, seed=seed,
                                                     caption_system=caption_system, init_std=init_std,
                                                     seconds=round(seconds), probe=perception, probe_size=probe_size))
    log(f"pretrain.py: wrote {out} in {seconds:.0f} s; " + format_probe(perception))
    return perception


def instruct_records(count, seed=0, start=INSTRUCT_START, describe=0.0):
    """`count` generic questions, one per base-stream image start .. start + count, each with its
    answer and a generic thought in `cot`: VQARecords of dataset "instruct", category the
    question's kind (INSTRUCT_QUESTIONS). describe: the chance that an image's question is instead
    one of DESCRIBE_QUESTIONS (category "describe"), answered with its caption; drawn last, so the
    other records are those of describe=0.

        instruct_records(2) -> [VQARecord(id='instruct-1000000', question='What region does the image show?',
            answer='abdomen', answer_type='open', dataset='instruct', category='region',
            cot='I look at the image and answer the question.', ...),
            VQARecord(id='instruct-1000001', question='Is the modality MRI?', answer='no', ...)]
        instruct_records(2, describe=1.0)[0] -> VQARecord(id='instruct-1000000',
            question=<one of DESCRIBE_QUESTIONS>, answer=<its caption>, answer_type='open', category='describe', ...)
    """
    records = []
    for offset, (image, caption) in enumerate(phantom_captions(count, seed=seed, start=start)):
        index = start + offset
        rng = np.random.default_rng([seed, 4, index])   # 4: not a phantom stream (phantom.STREAMS)
        facts = parse_caption(caption)
        kind = list(INSTRUCT_QUESTIONS)[rng.integers(len(INSTRUCT_QUESTIONS))]
        truth = rng.random() < 0.5
        modality = facts["modality"] if truth else rng.choice([m for m in MODALITIES if m != facts["modality"]])
        region = facts["region"] if truth else rng.choice([r for r in REGIONS if r != facts["region"]])
        phrasings = INSTRUCT_QUESTIONS[kind]
        question = phrasings[rng.integers(len(phrasings))].format(modality=MODALITY_WORDS[modality], region=region)
        answer = dict(modality=MODALITY_WORDS[facts["modality"]], region=facts["region"]).get(
            kind, "yes" if truth else "no")
        thought = GENERIC_THOUGHTS[rng.integers(len(GENERIC_THOUGHTS))]
        if rng.random() < describe:
            kind, question, answer = "describe", DESCRIBE_QUESTIONS[rng.integers(len(DESCRIBE_QUESTIONS))], caption
        records.append(VQARecord(f"instruct-{index}", image, question, answer,
                                 "open" if kind in ("modality", "region", "describe") else "closed", "instruct",
                                 thought, f"base-stream image {index}", category=kind))
    return records


def instruct_batch(processor, records):
    """The training batch of generic questions: "<think>{thought}</think><answer>{answer}</answer>",
    the target sft.py teaches (sft.sft_target), with logits kept only on the targets (caption_batch)."""
    return cut_to_targets(processor.training_batch(
        [r.question for r in records], [r.image for r in records],
        [f"<think>{r.cot}</think><answer>{r.answer}</answer>" for r in records]))


def instruct_probe(model, processor, size=400, seed=0, temperature=0.7, val_size=None):
    """What the instruct start does, as fractions: on `size` held-out generic questions (greedy), its
    format compliance (rewards.format_reward == 1) and answer accuracy (the <answer> text exactly
    right, case aside); on the phantom's val questions (VQA kinds it never saw), format compliance
    greedy and sampled at `temperature` (grpo.py's default: what stage I's first steps see), and
    its greedy closed and open answers' exact accuracy (uninformed: near chance for closed).
    val_size: the first N val questions (None: all 100)."""
    generic, val = instruct_records(size, seed, INSTRUCT_PROBE_START), phantom_dataset("val", seed=seed)[:val_size]

    def right(records, texts):
        return [extract_answer(t, strict=True).lower() == r.answer.lower() for r, t in zip(records, texts)]

    def share(values):
        return float(np.mean(values)) if len(values) else float("nan")
    def answers(records, **sampling):
        return complete(model, processor, [r.question for r in records], [r.image for r in records], 48, **sampling)
    texts, val_texts = answers(generic, greedy=True), answers(val, greedy=True)
    torch.manual_seed(seed)
    sampled = answers(val, temperature=temperature)
    val_right = right(val, val_texts)
    return dict(generic_format=share([format_reward(t) for t in texts]), generic_accuracy=share(right(generic, texts)),
                vqa_format=share([format_reward(t) for t in val_texts]),
                vqa_sampled_format=share([format_reward(t) for t in sampled]),
                vqa_closed_accuracy=share([ok for r, ok in zip(val, val_right) if r.answer_type == "closed"]),
                vqa_open_accuracy=share([ok for r, ok in zip(val, val_right) if r.answer_type == "open"]))


def instruct(out=DEFAULT_INSTRUCT, base=DEFAULT_BASE, steps=INSTRUCT_STEPS, batch_size=INSTRUCT_BATCH_SIZE,
             lr=INSTRUCT_LR, seed=0, probe_size=400, val_size=None, describe=0.0, log=print):
    """Tune the base model at `base` to the system prompt's format on generic questions
    (instruct_records, from INSTRUCT_START, each image once; a share `describe` asks to describe
    the image); write it to `out` (atomically, with its probe in meta.json) and return the probe
    (val_size: instruct_probe's; its generic questions are never "describe")."""
    model, processor = load_model(base, device="cpu")
    seconds = fit(model, lambda step: instruct_batch(processor, instruct_records(
        batch_size, seed=seed, start=INSTRUCT_START + step * batch_size, describe=describe)), steps, lr, "instruct")
    following = instruct_probe(model, processor, probe_size, seed=seed, val_size=val_size)
    save_checkpoint(model, processor, out, meta=dict(script="pretrain.py --instruct", base=base, steps=steps,
                                                     batch_size=batch_size, lr=lr, seed=seed, describe=describe,
                                                     seconds=round(seconds), probe=following, probe_size=probe_size,
                                                     probe_val_size=val_size or PHANTOM_SIZES["val"]))
    log(f"pretrain.py: wrote {out} in {seconds:.0f} s; " + format_instruct_probe(following))
    return following


def format_instruct_probe(following):
    return "instruct probe: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in following.items())


def format_probe(perception):
    return "caption accuracy on held-out images: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in perception.items())


def ensure_base(path, script):
    """The base model at `path`, built first (pretrain with its defaults) if it is not there yet."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        print(f"{script}: no base model at {path}: building it once (python pretrain.py: a few minutes, about "
              "0.9x the time of SFT)", file=sys.stderr)
        pretrain(path, log=lambda text: print(text, file=sys.stderr))
    return path


def ensure_instruct(path, script):
    """The instruct start at `path`, built first (pretrain.py --instruct with its defaults, from
    runs/base, itself built first if missing) if it is not there yet. Under torchrun it is not
    built: every process would build it."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            sys.exit(f"{script}: no instruct model at {path}: run `python pretrain.py --instruct` once before torchrun")
        print(f"{script}: no instruct model at {path}: building it once (python pretrain.py --instruct)",
              file=sys.stderr)
        instruct(path, ensure_base(DEFAULT_BASE, script), log=lambda text: print(text, file=sys.stderr))
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.probe:
        try:
            model, processor = load_model(args.probe, device="cpu")
        except FileNotFoundError as error:
            sys.exit(f"pretrain.py: {error}")
        if args.instruct:
            print(format_instruct_probe(instruct_probe(model, processor, args.probe_size, seed=args.seed)))
        else:
            # a base built before --caption-system captioned with the system prompt
            system = checkpoint_meta(args.probe).get("caption_system", "reasoning")
            print(format_probe(probe(model, captioning(processor, system), args.probe_size, seed=args.seed)))
        return
    if os.path.exists(args.out) and os.listdir(args.out):
        sys.exit(f"pretrain.py: {args.out} exists; remove it or choose another --out")
    if args.instruct:
        if not os.path.isfile(os.path.join(args.base, "config.json")):
            sys.exit(f"pretrain.py: no base model at {args.base}: run `python pretrain.py` first (or pass --base)")
        result = instruct(args.out, args.base, args.steps, args.batch_size, args.lr, args.seed, args.probe_size,
                          describe=args.instruct_describe)
    else:
        result = pretrain(args.out, args.steps, args.batch_size, args.lr, args.seed, args.probe_size, args.probe_every,
                          args.caption_system, args.init_std, args.optimizer)
    print(json.dumps(result))


if __name__ == "__main__":
    run_script(main)
