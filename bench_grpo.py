"""How long a GRPO step takes, phase by phase (a benchmark, not a test); with TRL's beside it.

    python bench_grpo.py                                  # runs/sft (else tiny), phantom prompts, CPU
    python bench_grpo.py --compare-trl                    # + TRL's GRPOTrainer, same everything
    python bench_grpo.py --compare-trl --max-pixels 401408    # images at the papers' size
    python bench_grpo.py --shape qwen2.5-vl-3b --layers 2 --max-pixels 50176   # the 3B shape on a CPU
    python bench_grpo.py --shape qwen2.5-vl-3b --device cuda  # the whole 3B (random weights) on a GPU
    python bench_grpo.py --shape qwen2.5-vl-3b --device cuda --lora-rank 64 --max-pixels 401408 \
        --max-new-tokens 512 --micro-batch 8 --gradient-checkpointing     # LoRA on one GPU, memory.py's workload

A step is grpo.py's: sample G completions for each of B prompts (generate), score them
(rewards), reference log-probs, then one optimizer step over micro-batches (update); the phases
are timed around grpo.py's own functions. Tokens/s counts completion tokens per step second; peak
memory is how far the step raises memory above its start (PeakMemory).

--compare-trl (needs `pip install trl`, a benchmark-only dependency) trains a second copy of the
model with TRL's GRPOTrainer on the same prompts, images and settings: G, the completion length,
temperature, beta, epsilon, loss "grpo", learning rate, micro-batches, fp32, this project's reward
function, TRL's bias-corrected KL off. Steps interleave (TRL, ours, TRL, ours, ...) so a busy
machine slows both alike; after --warmup steps each, the table shows medians over --runs steps.
"""

import argparse
import math
import os
import statistics
import time
from contextlib import contextmanager

import torch

import grpo
from data import load_image
from distributed import PRECISIONS, setup
from judges import judge_from_args
from lora import lora_config
from model import QWEN25_VL_SHAPES, load_model
from phantom import PHANTOM_SIZES, phantom_dataset
from records import run_script
from rewards import rewards_from_args

PHASES = ("generate", "ref log-probs", "rewards", "update")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=("tiny", *QWEN25_VL_SHAPES), default=None,
                   help="a model built from a config with random weights (default: --model)")
    p.add_argument("--model", default="runs/sft", help="checkpoint when no --shape (runs/sft, else tiny)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers of a --shape qwen2.5-vl-* model")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="scale every image to about this many pixels (401408: ~512 image tokens, the papers')")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="distributed.py's --precision (default: fp32 on a CPU, bf16-mixed on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--prompts", type=int, default=8, help="prompts B per step")
    p.add_argument("--num-generations", type=int, default=8, help="completions G per prompt")
    p.add_argument("--max-new-tokens", type=int, default=96, help="completion length limit")
    p.add_argument("--micro-batch", type=int, default=16, help="completions per forward/backward")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--beta", type=float, default=0.04, help="KL weight")
    p.add_argument("--clip-eps", type=float, default=0.2, help="PPO clip epsilon")
    p.add_argument("--loss-type", choices=grpo.LOSS_TYPES, default="grpo",
                   help="grpo.py's --loss-type (TRL: grpo, dapo for token, dr_grpo)")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate (constant here)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each trainer first")
    p.add_argument("--runs", type=int, default=5, help="timed steps of each trainer (interleaved)")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA of this rank (grpo.py's other LoRA defaults; "
                   "the reference is the model with its adapters off); 0: full fine-tuning")
    p.add_argument("--gradient-checkpointing", action="store_true", help="as grpo.py's (memory.py assumes it)")
    p.add_argument("--compare-trl", action="store_true", help="also time TRL's GRPOTrainer (needs trl)")
    return p.parse_args(argv)


def model_name(args):
    if args.shape:
        return args.shape
    return args.model if args.model != "runs/sft" or os.path.isdir(args.model) else "tiny"


def bench_records(args):
    """The prompts of every step: phantom train records from 6000 on (grpo.py's default), with
    images scaled to --max-pixels (phantom draws 112 x 112)."""
    steps = args.warmup + args.runs
    records = phantom_dataset("train", size=PHANTOM_SIZES["train"] + steps * args.prompts)[PHANTOM_SIZES["train"]:]
    for r in records:
        r.image = load_image(r)
        if args.max_pixels:
            side = int(math.sqrt(args.max_pixels))
            r.image = r.image.resize((side, side))
    return [records[s * args.prompts:(s + 1) * args.prompts] for s in range(steps)]


class Clock:
    """Seconds spent in named phases; on CUDA each phase waits for the GPU."""

    def __init__(self, device):
        self.device, self.seconds = device, {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, name, fn):
        def timed(*a, **k):
            self.sync()
            start = time.perf_counter()
            out = fn(*a, **k)
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            return out
        return timed


class PeakMemory:
    """How far a step raises memory above where it started, in GiB: the GPU's allocation, or on a
    CPU (Linux) the process's resident memory. Above the start, so that the models both trainers
    keep in this one process do not count. A rough figure on a CPU, where the allocator keeps freed
    memory resident: a step that fits in what earlier steps freed shows 0."""

    def __init__(self, device):
        self.device = device

    def _resident(self, field):
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(field)) / 2 ** 20
        except (OSError, StopIteration):
            return float("nan")

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2 ** 30
        else:
            if os.path.exists("/proc/self/clear_refs"):
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")                  # resets the peak resident set size (VmHWM)
            self.base = self._resident("VmRSS")

    def stop(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 30 - self.base
        return max(0.0, self._resident("VmHWM") - self.base)   # 0: the step reused memory it had


@contextmanager
def patched(module, **replacements):
    saved = {k: getattr(module, k) for k in replacements}
    for k, v in replacements.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def grpo_args(args, name):
    return grpo.parse_args(["--model", name, "--prompts-per-step", str(args.prompts), "--num-generations",
                            str(args.num_generations), "--max-new-tokens", str(args.max_new_tokens),
                            "--micro-batch", str(args.micro_batch), "--temperature", str(args.temperature),
                            "--beta", str(args.beta), "--clip-eps", str(args.clip_eps), "--loss-type", args.loss_type,
                            "--lr", str(args.lr), "--mu", "1", "--lora-rank", str(args.lora_rank)]
                           + (["--max-pixels", str(args.max_pixels)] if args.max_pixels else []))


def load(args, rt, frozen=False, lora=None):
    model, processor = load_model(model_name(args), device="cpu", max_pixels=args.max_pixels, layers=args.layers,
                                  dtype=rt.frozen_dtype if frozen else rt.weight_dtype, lora=lora,
                                  gradient_checkpointing=args.gradient_checkpointing and not frozen)
    if frozen:
        model.eval().requires_grad_(False)
    return rt.prepare(model, frozen=frozen), processor


class Ours:
    """grpo.py's step: sample_step, advantages and log-probs, then policy_update, phases timed
    around its own functions."""

    name = "grpo.py"

    def __init__(self, args, rt):
        self.args, self.rt = grpo_args(args, model_name(args)), rt
        self.model, self.processor = load(args, rt, lora=lora_config(self.args))
        self.ref_model = load(args, rt, frozen=True)[0] if args.beta > 0 and not args.lora_rank else None
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.0)
        self.reward_fn = rewards_from_args(self.args, gather=rt.gather_scores if rt.sharded else None,
                                           judge=judge_from_args(self.args))

    def rollout(self, records, reward_fn):
        """grpo.main's sample G, reward, advantages, reference log-probs."""
        groups, _, _ = grpo.sample_step(self.model, self.processor, lambda draw: records, reward_fn, self.args, self.rt)
        grpo.set_advantages(groups, grpo.Scores.gather(groups, self.rt).totals, self.args, self.rt)
        grpo.set_logprobs(self.model, self.ref_model, groups, self.args)
        return groups

    def step(self, records):
        clock, memory = Clock(self.rt.device), PeakMemory(self.rt.device)
        memory.start()
        with patched(grpo, sample_completions=clock.wrap("generate", grpo.sample_completions),
                     micro_logprobs=clock.wrap("ref log-probs", grpo.micro_logprobs)):
            groups = clock.wrap("rollout", self.rollout)(records, clock.wrap("rewards", self.reward_fn))
            clock.wrap("update", grpo.policy_update)(self.model, self.optimizer, self.params, groups, self.args,
                                                     self.rt)
        t = clock.seconds
        return dict(t, step=t["rollout"] + t["update"], tokens=sum(int(g.completions.mask.sum()) for g in groups),
                    memory=memory.stop())


class TRL:
    """TRL's GRPOTrainer on a second copy of the model, same prompts, images and settings.

    Steps run through trainer.train(); a callback times each one and then hands over to ours, so
    the two alternate. Phases are timed around TRL's own methods: _generate_single_turn
    (generate), _calculate_rewards (rewards), _get_per_token_logps_and_entropies inside
    _generate_and_score_completions (reference log-probs); update is the rest of the step.
    """

    name = "TRL"

    def __init__(self, args, rt, steps):
        import tempfile

        import datasets
        import trl
        from transformers import Qwen2_5_VLProcessor

        class ImageOnlyProcessor(Qwen2_5_VLProcessor):
            """Qwen2.5-VL's processor without the video processor, which needs torchvision."""

            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
                super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

        self.rt, self.clock, self.memory = rt, Clock(rt.device), PeakMemory(rt.device)
        ours = Ours(args, rt)                    # its reward function and a checkpoint TRL can load
        self.model_dir = tempfile.mkdtemp(prefix="bench_grpo_trl_")
        ours.model.save_pretrained(self.model_dir)
        processor = ImageOnlyProcessor(ours.processor.image_processor, ours.processor.tokenizer,
                                       chat_template=ours.processor.tokenizer.chat_template)
        records = [r for step in steps for r in step]
        data = datasets.Dataset.from_list([
            {"prompt": [{"role": "system", "content": ours.processor.system_prompt},
                        {"role": "user", "content": r.question}], "image": r.image, "record": i}
            for i, r in enumerate(records)])

        def project_reward(prompts, completions, record, **kwargs):
            texts = [c[0]["content"] for c in completions]
            return [float(x) for x in ours.reward_fn([records[i] for i in record], texts)[0]]

        G, micro = args.num_generations, args.micro_batch
        config = trl.GRPOConfig(
            output_dir=self.model_dir, max_steps=len(steps), per_device_train_batch_size=micro,
            gradient_accumulation_steps=args.prompts * G // micro, num_generations=G,
            max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=1.0, top_k=0,
            repetition_penalty=1.0, beta=args.beta, epsilon=args.clip_eps,
            loss_type={"token": "dapo"}.get(args.loss_type, args.loss_type),
            scale_rewards="group", num_iterations=1, use_bias_correction_kl=False, learning_rate=args.lr,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            gradient_checkpointing=False, bf16=rt.precision != "fp32", fp16=False, use_cpu=rt.device.type == "cpu",
            shuffle_dataset=False, seed=0, report_to=[], save_strategy="no", logging_steps=10 ** 6,
            disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
            model_init_kwargs={"dtype": rt.weight_dtype})
        self.trainer = trl.GRPOTrainer(model=self.model_dir, reward_funcs=project_reward, args=config,
                                       train_dataset=data, processing_class=processor)
        self._time_phases()

    def _time_phases(self):
        t, clock = self.trainer, self.clock
        t._generate_single_turn = clock.wrap("generate", t._generate_single_turn)
        t._calculate_rewards = clock.wrap("rewards", t._calculate_rewards)
        logps, score = t._get_per_token_logps_and_entropies, t._generate_and_score_completions
        timed_logps = clock.wrap("ref log-probs", logps)
        inside = {"rollout": False}

        def per_token_logps(*a, **k):
            return (timed_logps if inside["rollout"] else logps)(*a, **k)

        def generate_and_score(*a, **k):
            inside["rollout"] = True
            try:
                out = score(*a, **k)
            finally:
                inside["rollout"] = False
            self.tokens += int(out["completion_mask"].sum())
            return out
        t._get_per_token_logps_and_entropies = per_token_logps
        t._generate_and_score_completions = clock.wrap("rollout", generate_and_score)

    def run(self, after_each_step):
        """trainer.train(), calling after_each_step(step, timing) when each optimizer step ends."""
        from transformers import TrainerCallback
        bench = self

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                bench.clock.seconds, bench.tokens = {}, 0
                bench.memory.start()
                bench.clock.sync()
                bench.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                bench.clock.sync()
                t = dict(bench.clock.seconds, step=time.perf_counter() - bench.start)
                t.update(update=t["step"] - t["rollout"], tokens=bench.tokens, memory=bench.memory.stop())
                after_each_step(state.global_step - 1, t)
        self.trainer.add_callback(Timer())
        self.trainer.train()


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rt = setup(args.precision, args.device)
    if rt.sharded:
        raise SystemExit("bench_grpo.py: one process (no torchrun)")
    if args.compare_trl and (args.lora_rank or args.gradient_checkpointing):
        raise SystemExit("bench_grpo.py: --compare-trl times full fine-tuning without gradient checkpointing "
                         "on both sides; drop --lora-rank and --gradient-checkpointing")
    steps = bench_records(args)
    ours = Ours(args, rt)
    results = {ours.name: []}
    if args.compare_trl:
        trl = TRL(args, rt, steps)
        results[trl.name] = []
        trl.run(lambda s, timing: (results[trl.name].append(timing), results[ours.name].append(ours.step(steps[s]))))
    else:
        for records in steps:
            results[ours.name].append(ours.step(records))
    report(args, rt, {k: v[args.warmup:] for k, v in results.items()})


def report(args, rt, results):
    """Medians per phase, and TRL / ours ratios."""
    columns = ("step", *PHASES, "other", "tok/s", "peak GiB")   # peak: above the step's start (PeakMemory)
    medians = {}
    for name, rows in results.items():
        for r in rows:   # preparing prompts and images, advantages: the step outside the phases
            r["other"] = r["step"] - sum(r[c] for c in PHASES)
        med = {c: statistics.median(r[c] for r in rows) for c in ("step", *PHASES, "other", "memory")}
        med["tok/s"] = statistics.median(r["tokens"] / r["step"] for r in rows)
        med["peak GiB"] = med.pop("memory")
        medians[name] = med
    threads = torch.get_num_threads() if rt.device.type == "cpu" else "-"
    print(f"model {model_name(args)}{f' ({args.layers} layers)' if args.layers else ''}"
          f"{f', LoRA rank {args.lora_rank}' if args.lora_rank else ', full fine-tuning'}, "
          f"{args.prompts} prompts x G={args.num_generations}, {args.max_new_tokens} new tokens, "
          f"max pixels {args.max_pixels or 'default'}, {rt.device.type} ({threads} threads), precision {rt.precision}; "
          f"median of {args.runs} steps after {args.warmup} warm-up" + (", interleaved" if len(results) > 1 else ""))
    print(f"{'seconds':<14}" + "".join(f"{c:>14}" for c in columns))
    for name, med in medians.items():
        print(f"{name:<14}" + "".join(f"{med[c]:>14.3f}" if c != "tok/s" else f"{med[c]:>14.0f}" for c in columns))
    if rt.device.type == "cuda" and len(results) == 1:   # to set beside memory.py's peak (+ its CUDA context)
        print(f"peak GPU memory allocated in the last step, weights and optimizer state included: "
              f"{torch.cuda.max_memory_allocated(rt.device) / 2 ** 30:.2f} GiB")
    if len(medians) == 2:
        (a, ma), (b, mb) = medians.items()
        print(f"{b + ' / ' + a:<14}" + "".join(f"{mb[c] / ma[c]:>13.2f}x" if ma[c] > 1e-3 else f"{'-':>14}"
                                               for c in columns))


if __name__ == "__main__":
    run_script(main)
