"""What sft.py and grpo.py share around the model: options, the learning-rate schedule, the run's
output folder, the SFT loss and the JSONL log (checkpoints are written by model.save_checkpoint).

    args = parse_run_args(parser, argv)  # parse_args, noting which options the command line gave
    state = claim_output(args, "grpo.py")   # before anything is opened: may this run write to --out?
    log = open_log(args.out, state and state["step"])  # runs/grpo.log.jsonl, cut back to the checkpoint on resume
    state = load_trainer_state("runs/grpo")                                   # --resume
"""

import argparse
import glob
import json
import math
import os
import pickle
import shutil
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from checkpoints import written_by
from records import damaged_checkpoint


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the script's docstring as written and shows every option's default."""


def at_least(low, kind=int):
    """argparse type: a number >= low, refused at parse time with a one-line message."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def positive_float(text):
    """argparse type: a float > 0."""
    value = at_least(0.0, float)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_run_args(parser, script, default_out):
    """--out, --resume, --overwrite, --allow-option-changes, shared by sft.py and grpo.py;
    claim_output enforces them."""
    parser.add_argument("--out", default=None,
                        help=f"checkpoint directory (Hugging Face format); none given: {default_out}, "
                             "or the --resume directory")
    parser.add_argument("--resume", default=None,
                        help=f"checkpoint directory written by {script} to continue, in place and with the run's "
                             "options: only --steps, the eval and save cadence and the placement (device, memory) "
                             "may be given other values")
    parser.add_argument("--overwrite", action="store_true",
                        help="let a fresh run replace the checkpoint and log already in --out")
    parser.add_argument("--allow-option-changes", action="store_true",
                        help="with --resume: continue even with options that change the run (another lr, G, "
                             "reward, ...); the changes are recorded in the log and meta.json")
    parser.set_defaults(default_out=default_out)


def parse_run_args(parser, argv=None):
    """parser.parse_args(argv), with args.options_given: the options the command line gave (so that
    --resume can tell `--lr 3e-4` typed from the default 3e-4)."""
    args = parser.parse_args(argv)
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in defaults:
            action.default = argparse.SUPPRESS     # parsed again: only the options given appear
        args.options_given = sorted(vars(parser.parse_args(argv)).keys() & {a.dest for a in defaults})
    finally:
        for action, default in defaults.items():
            action.default = default
    return args


# --resume continues a run as it was started. Every option of sft.py and grpo.py is in one of these
# two groups (test_resume.py checks it). FIXED_ON_RESUME: the run's meaning (model, data, batch,
# optimiser and schedule, GRPO's loss, rewards, precision, LoRA, what validation measures); given
# with another value, the resume stops, naming each, unless --allow-option-changes. FREE_ON_RESUME:
# how long (--steps: the schedule keeps its first length), how often to validate and save, and how
# the same computation is placed; a change is written to the log. Options not given take the run's
# values, but for those of this command alone (THIS_COMMAND).
FIXED_ON_RESUME = frozenset({
    "model", "max_pixels", "min_pixels", "freeze_vision", "max_prompt_tokens", "precision",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "lora_vision",
    "dataset", "data_root", "field_map", "skip_bad", "limit", "train_offset", "data_seed", "phantom_wording",
    "val_every", "pmc_choices", "hf_split", "window", "eval_size", "max_new_tokens", "seed",
    "batch_size", "grad_accum", "lr", "weight_decay", "warmup", "min_lr_ratio", "clip",
    "missing_cot", "answer_only", "cot_records", "cot_from", "cot_select", "cot_samples", "cot_min_score",
    "cot_temperature", "cot_augment",
    "prompts_per_step", "num_generations", "temperature", "top_p", "mu", "beta", "clip_eps", "loss_type",
    "advantage_scale", "dynamic_sampling", "max_draws",
    "reward", "format_weight", "textual_weight", "semantic_weight", "ecr_weight", "cwr_weight", "judge_weight",
    "encoder", "buffer_size", "adaptive_quantile", "adaptive_k", "adaptive_eps", "closed_semantic",
    "target_length", "judge", "judge_model", "judge_reference", "judge_prompt"})
# Fixed by the checkpoint itself: the weights and adapters it holds. Refused even with
# --allow-option-changes, since a resumed run loads them from the checkpoint whatever is given;
# --model only for a LoRA run (the base its adapters sit on). A full fine-tune's checkpoint holds all
# its weights, and its --model is then grpo.py's KL reference alone: the override may repoint it (a
# folder that moved).
LOCKED_ON_RESUME = frozenset({"model", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "lora_vision"})
THIS_COMMAND = frozenset({"out", "resume", "overwrite", "allow_option_changes"})
FREE_ON_RESUME = THIS_COMMAND | {"steps", "eval_every", "save_every", "device", "gather_for_generation",
                                 "attn_implementation", "gradient_checkpointing", "micro_batch", "check_images",
                                 "same_file_for_test"}


def option_name(dest):
    return "--" + dest.replace("_", "-")


def _shown(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(_shown, value))
    return "none" if value is None else str(value)


def _same(a, b):
    """Option values alike; two paths to one folder or file are alike, and two floats that differ in
    rounding only (a LoRA run's derived lr 3e-4 x 10 is 0.0029999999999999996, typed 3e-3)."""
    if isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def resume_options(args, state, script):
    """--resume: give args the options of the run being continued (state: its trainer_state) where
    the command line gave none, and check those it gave (FIXED_ON_RESUME, FREE_ON_RESUME,
    LOCKED_ON_RESUME). Exits with one line naming every option that would change the run, its old
    and its new value, unless --allow-option-changes (which never changes LOCKED_ON_RESUME).
    Returns what changed, {"--steps": [2, 4], ...}, split into "changed" (free) and "overridden"
    (allowed by --allow-option-changes), or None; the run keeps the list of them (args.resumes)
    for its log and meta.json.

    trainer_state["args"] holds the options as the run used them (RunConfig.options: the peak
    --lr, grpo.py's --train-offset, the precision and LoRA's alpha as derived), so a typed value
    compares with what the run used.
    """
    run = state["args"]
    if "config" not in state:   # written before RunConfig: a resumed run saved its own folder as --model
        run = dict(run, model=run.get("ref_model", run["model"]))
    given = set(getattr(args, "options_given", ()))
    if "model" in given and (_same(args.model, args.resume) or _same(run["model"], args.resume)):
        given.discard("model")   # the checkpoint itself, or an old one that recorded no other start
    changed = {}
    for name in sorted((FIXED_ON_RESUME | FREE_ON_RESUME) - THIS_COMMAND):
        if name not in run or not hasattr(args, name):
            continue
        if name not in given:
            setattr(args, name, run[name])
        elif not _same(run[name], getattr(args, name)):
            changed[name] = [run[name], getattr(args, name)]
    fixed = {name: values for name, values in changed.items() if name in FIXED_ON_RESUME}
    locked = [name for name in fixed if name in LOCKED_ON_RESUME and (name != "model" or run.get("lora_rank"))]
    if fixed and (locked or not args.allow_option_changes):
        shown = locked if args.allow_option_changes else fixed
        sys.exit(f"{script}: --resume {args.resume}: "
                 + ", ".join(f"{option_name(k)} {_shown(fixed[k][0])} -> {_shown(fixed[k][1])}" for k in shown)
                 + ": the run was started with the first value; leave these options out to continue it, start "
                 "another run (another --out)"
                 + (", or add --allow-option-changes to change them anyway" if not locked else
                    " (the checkpoint's weights fix these: --allow-option-changes cannot change them)"))
    args.resumes = list(run.get("resumes", []))
    if not changed:
        return None
    note = dict(at_step=None, changed={option_name(k): v for k, v in changed.items() if k not in fixed},
                overridden={option_name(k): v for k, v in fixed.items()})
    args.resumes.append(note)
    return note


# [reconstructed] LoRA trains about 10x the full fine-tuning learning rate (TRL's and verl's docs).
LORA_LR_SCALE = 10


def add_optimizer_args(parser, lr):
    """AdamW and schedule options shared by sft.py and grpo.py; lr: the full fine-tuning default
    (peak_learning_rate sets --lr when it is not given)."""
    parser.add_argument("--lr", type=positive_float, default=None,
                        help=f"peak learning rate (AdamW) [reconstructed]; default {lr}, or {lr * LORA_LR_SCALE:g} "
                             f"with --lora-rank ({LORA_LR_SCALE}x, as TRL's and verl's docs advise) [reconstructed]")
    parser.set_defaults(full_fine_tuning_lr=lr)
    parser.add_argument("--weight-decay", type=at_least(0.0, float), default=0.0, help="AdamW weight decay")
    parser.add_argument("--warmup", type=at_least(0.0, float), default=0.05, help="fraction of steps of linear warmup")
    parser.add_argument("--min-lr-ratio", type=at_least(0.0, float), default=0.1,
                        help="cosine decay floor, as a fraction of --lr")
    parser.add_argument("--clip", type=positive_float, default=1.0, help="gradient-norm clipping")


def lora_alpha(args):
    """LoRA's alpha: --lora-alpha, or 2 x the rank when it is not given (peft's usual ratio)."""
    return args.lora_alpha or 2 * args.lora_rank


def peak_learning_rate(args):
    """--lr as given, else the script's full fine-tuning default, x LORA_LR_SCALE under LoRA."""
    if args.lr is not None:
        return args.lr
    return args.full_fine_tuning_lr * (LORA_LR_SCALE if args.lora_rank else 1)


@dataclass(frozen=True)
class RunConfig:
    """What a training run derives from its options, once; the options (args) stay as parsed (on
    --resume: as the run used them, training.resume_options). trainer_state["config"] keeps it, so
    that a resumed run derives the same."""
    lr: float              # peak learning rate: --lr, or the script's default (peak_learning_rate)
    warmup: float          # --warmup
    min_lr_ratio: float    # --min-lr-ratio
    schedule_steps: int    # the --steps the run started with (a resumed run that raises --steps keeps it)
    policy: str            # the checkpoint the trained model loads: --model, or the --resume directory

    @classmethod
    def from_args(cls, args, state=None, **more):
        """The fields above (and a subclass's, `more`) from the options and, on resume, the
        checkpoint's trainer_state (runs before RunConfig kept schedule_steps in its "args")."""
        schedule_steps = saved_config(state).get("schedule_steps", state["args"]["steps"]) if state else args.steps
        return cls(lr=peak_learning_rate(args), warmup=args.warmup, min_lr_ratio=args.min_lr_ratio,
                   schedule_steps=schedule_steps, policy=args.resume or args.model, **more)

    def options(self, args, rt):
        """Every option as the run used it (trainer_state["args"]): args, with the values derived
        for options left unset (--lr; grpo.py's --train-offset; the precision the Runtime `rt`
        picked; LoRA's alpha), so that --resume compares a typed value with what the run used."""
        used = dict(vars(args), **{k: v for k, v in asdict(self).items() if k in vars(args)})
        if "precision" in used:
            used["precision"] = rt.precision
        if used.get("lora_rank"):
            used["lora_alpha"] = lora_alpha(args)
        return used


def saved_config(state):
    """The RunConfig fields a checkpoint's trainer_state saved (in its "args" before RunConfig)."""
    return state.get("config", state["args"])


def set_learning_rate(optimizer, step, config):
    """The learning rate of `step` (a RunConfig's schedule), set on every parameter group. The
    schedule spans config.schedule_steps, the --steps the run was started with: a resumed run
    that extends --steps continues at the schedule's floor instead of restarting it."""
    lr = learning_rate(step, config.schedule_steps, config.lr, config.warmup, config.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def due(step, every, total):
    """Whether a periodic action (validation, checkpoint) runs after `step`: every N and at the end."""
    return bool(every and step % every == 0) or step == total


def learning_rate(step, total, peak, warmup_frac, min_ratio):
    """Linear warmup over warmup_frac of the steps, then cosine decay to min_ratio * peak."""
    warmup = max(1, int(total * warmup_frac))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def is_checkpoint(path):
    """Whether the folder `path` holds a model checkpoint: full weights, or a LoRA adapter."""
    return any(os.path.isfile(os.path.join(path, name)) for name in ("config.json", "adapter_config.json"))


def claim_output(args, script):
    """Decide where this run writes, before anything is opened; exit with one line if it may not.

    --resume DIR continues in DIR (its own --out unless --out names another directory). A fresh
    run needs an --out that holds no checkpoint or log yet, or --overwrite; a directory holding
    anything but a checkpoint is never written. A save interrupted between its two renames left
    the checkpoint as DIR.old: --resume DIR says so. Leftovers of interrupted saves (DIR.tmp-*,
    a stale DIR.old) are removed: only save_checkpoint makes them.
    A checkpoint another script wrote (meta.json), or a --steps the run has already reached, is
    refused. On resume args gets the run's options (resume_options) and args.resume_note what this resume
    changed, for open_log. Returns the checkpoint's trainer_state on resume (read once, here: the
    optimizer state of a large model takes long to load), else None.
    """
    state = note = None
    if args.resume:
        resume = os.path.normpath(args.resume)
        if not os.path.isfile(os.path.join(resume, "trainer_state.pt")):
            old = resume + ".old"
            if os.path.isfile(os.path.join(old, "trainer_state.pt")):
                sys.exit(f"{script}: --resume {resume}: no checkpoint there, but {old} holds one (a save was "
                         f"interrupted); move it back (`mv {old} {resume}`) and resume again")
            sys.exit(f"{script}: --resume {resume}: no checkpoint written by this project's training "
                     "scripts there (trainer_state.pt missing)")
        wrote = written_by(resume)
        if wrote and wrote != script:
            sys.exit(f"{script}: --resume {resume}: that checkpoint was written by {wrote}: continue it with "
                     f"`python {wrote} --resume {resume}`, or start a new {script} run from it with --model {resume}")
        state = load_trainer_state(resume)
        note = resume_options(args, state, script)
        if args.steps <= state["step"]:
            sys.exit(f"{script}: --resume {resume}: the run is at step {state['step']} and --steps is {args.steps}: "
                     f"nothing to train; give a larger --steps to continue it")
        args.out = os.path.normpath(args.out or resume)
    args.out = os.path.normpath(args.out or args.default_out)
    out, log = args.out, args.out + ".log.jsonl"
    if os.path.exists(out) and not os.path.isdir(out):
        sys.exit(f"{script}: --out {out} is a file, not a checkpoint directory")
    if os.path.isdir(out) and os.listdir(out) and not is_checkpoint(out):
        sys.exit(f"{script}: --out {out} holds files that are not a checkpoint; nothing there is replaced: "
                 "choose another --out")
    continuing = args.resume and out == os.path.normpath(args.resume)
    taken = (os.path.isdir(out) and os.listdir(out)) or os.path.exists(log)
    if taken and not continuing and not args.overwrite:
        sys.exit(f"{script}: --out {out} already holds a run (checkpoint or {os.path.basename(log)}): "
                 f"`--resume {out}` continues it, --overwrite replaces it, or choose another --out")
    main_process = int(os.environ.get("RANK", "0")) == 0
    # a resumed run keeps DIR.old (its first save replaces it): the fallback if DIR proves damaged
    for leftover in glob.glob(glob.escape(out) + ".tmp-*") + [out + ".old"] * (os.path.isdir(out + ".old")
                                                                            and not continuing):
        if os.path.isdir(leftover) and main_process:
            shutil.rmtree(leftover, ignore_errors=True)
            print(f"{script}: removed {leftover}, left by an interrupted save", file=sys.stderr)
    args.resume_note = note   # open_log writes it, once the resumed run has loaded (not here: see there)
    if note is not None:
        note["at_step"] = state["step"]
        if main_process:
            print(f"{script}: resuming at step {state['step']} with "
                  + ", ".join(f"{k} {_shown(old)} -> {_shown(new)}"
                              for k, (old, new) in {**note["changed"], **note["overridden"]}.items())
                  + (" (--allow-option-changes)" if note["overridden"] else ""), file=sys.stderr)
    return state


def open_log(out, keep_step=None, enabled=True, note=None):
    """The JSONL training log beside the checkpoint (<out>.log.jsonl: outside the directory that
    each save replaces). A fresh run starts it anew; a resumed one (keep_step: the checkpoint's
    step) keeps the rows up to that step, dropping those a killed run logged after its last
    checkpoint, and appends, so every step appears once. note (claim_output's args.resume_note):
    the options this resume changed, a row {"resume": note} without "step" (readers of steps skip
    it). It is written here, after the run has loaded its checkpoint and every process has met:
    a resume that fails earlier leaves the log as it was. Not enabled (the processes other than
    the main one): a sink that writes nothing."""
    if not enabled:
        return open(os.devnull, "w")
    path = os.path.abspath(out) + ".log.jsonl"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if keep_step is None:
        return open(path, "w")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= keep_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(rows)
        if note is not None:
            f.write(json.dumps(dict(resume=note)) + "\n")
    os.replace(path + ".tmp", path)
    return open(path, "a")


def load_trainer_state(path):
    file = os.path.join(path, "trainer_state.pt")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"training.py: {file} not found; --resume needs a checkpoint "
                                "written by this project's training scripts")
    try:
        state = torch.load(file, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise damaged_checkpoint("training.py", file, error) from None
    if "torch_rng" in state:   # written before the multi-process runtime: one process, CPU RNG
        state["rng"] = [{"cpu": state.pop("torch_rng")}]
    return state


def target_token_loss(model, batch):
    """Summed next-token cross-entropy over the target tokens of `batch`, and their number.

    Summed, not averaged, so that the loop can divide by the target tokens of the whole global
    batch: the gradient is then the same on one process or many. Token t+1 is predicted at t:
        labels  = [-100, -100, 7, 9, EOS]   (prompt, then target)
        targets = labels[1:] = [-100, 7, 9, EOS], scored against logits[:-1]  -> 3 tokens
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits                                                  # (B, L, V)
    targets = batch["labels"][:, 1:]                                                 # (B, L-1)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                           reduction="sum")
    return loss, int((targets != -100).sum())
