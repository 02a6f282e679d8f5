"""Where a pretraining step's time goes (a benchmark that reports, not a test):

    python bench_pretrain.py                        # 30 steps of 16 images, torch's threads
    OMP_NUM_THREADS=1 python bench_pretrain.py --batch-size 8 --caption-system reasoning

Times each part of pretrain.py's step from random weights, prompted as pretrain.py prompts
(--caption-system: without a system turn by default, as pretrain.py): drawing the images (phantom.py), the
image processor and tokenizer (processor.VLProcessor.training_batch), the forward pass with the vision
tower's share of it, the backward pass, the optimizer (--optimizer: Muon and AdamW by default, as
pretrain.py's). Each step then runs forward and backward once more with logits at every position
(what target_token_loss computes on an uncut batch), so that the two are compared under the same
load. Give ratios from one run: on a shared machine the seconds move.
"""

import argparse
import statistics
import time

import torch

from model import load_model
from phantom import CAPTION_PROMPT, phantom_captions
from pretrain import CAPTION_SYSTEMS, OPTIMIZER, OPTIMIZERS, caption_batch, captioning, optimizers
from training import HelpFormatter, at_least, target_token_loss

PARTS = ("render", "processor", "forward", "backward", "optimizer")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--batch-size", type=at_least(1), default=16, help="captioned images per step")
    p.add_argument("--steps", type=at_least(1), default=30, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--caption-system", choices=CAPTION_SYSTEMS, default="none", help="as pretrain.py's")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=OPTIMIZER,
                   help="as pretrain.py's (the steps keep --batch-size images, not the optimizer's recipe)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor = load_model("tiny", device="cpu")
    processor = captioning(processor, args.caption_system)
    model.train()
    steppers = optimizers(model, args.optimizer, 1e-4)   # as pretrain.py's
    vision = []
    model.model.visual.register_forward_pre_hook(lambda *_: vision.append(-time.perf_counter()))
    model.model.visual.register_forward_hook(lambda *_: vision.append(vision.pop() + time.perf_counter()))
    seconds = {name: [] for name in (*PARTS, "vision forward", "all logits: forward + backward")}
    for step in range(args.steps + 2):
        marks = [time.perf_counter()]
        samples = phantom_captions(args.batch_size, start=step * args.batch_size)
        marks.append(time.perf_counter())
        batch = caption_batch(processor, samples)
        marks.append(time.perf_counter())
        loss, n = target_token_loss(model, batch)
        marks.append(time.perf_counter())
        (loss / n).backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for stepper in steppers:
            stepper.step()
        model.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        whole = processor.training_batch([CAPTION_PROMPT] * len(samples), [im for im, _ in samples],
                                         [caption for _, caption in samples])
        start = time.perf_counter()
        loss, n = target_token_loss(model, whole)
        (loss / n).backward()
        model.zero_grad(set_to_none=True)
        if step >= 2:
            for name, t0, t1 in zip(PARTS, marks, marks[1:]):
                seconds[name].append(t1 - t0)
            seconds["vision forward"].append(vision[-2])   # this step's first forward
            seconds["all logits: forward + backward"].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    step = sum(median[name] for name in PARTS)
    print(f"pretrain step, {args.batch_size} images, {torch.get_num_threads()} threads: median {1000 * step:.0f} ms")
    for name in PARTS:
        print(f"  {name:<10} {1000 * median[name]:7.1f} ms  {100 * median[name] / step:5.1f}%")
    print(f"  the vision tower's forward: {100 * median['vision forward'] / step:.1f}% of the step (inside forward)")
    print(f"  forward + backward with logits at every position: {1000 * median['all logits: forward + backward']:.1f} "
          f"ms, {median['all logits: forward + backward'] / (median['forward'] + median['backward']):.2f}x "
          f"the captions-only ones")


if __name__ == "__main__":
    main()
