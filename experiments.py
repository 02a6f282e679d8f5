"""Named experiments, one command each: every step is a run of sft.py, grpo.py, pretrain.py or
evaluate.py, written under --out, and a rerun skips what is there (it continues after an interruption).

    python experiments.py stages                     # ARMed's table in miniature: seeds 0 1 2
    python experiments.py stages --jobs 2            # two chains at once, one thread each
    python experiments.py stages --seeds 0 --grpo-args "--steps 50" --sft-args "--steps 100"
    python experiments.py stages --dry-run           # print the commands and what is done, run nothing
    python experiments.py ablation                   # the reward ablation and Figure 5's augmentation arm
    python experiments.py ablation --seeds 0 --grpo-args "--steps 20"   # a quicker look
    python experiments.py factors --jobs 2           # RL-MedVQA's four factors and GRPO against SFT
    python experiments.py factors --factors bias --report   # the bias table of what is there, run nothing

stages: per seed S, SFT (sft.py) and GRPO from it (the default path); ARMed's three stages: I =
GRPO from the instruct model (runs/instruct, `python pretrain.py --instruct`, built once), A = SFT
on the rationales I wrote for the training questions (sft.py --cot-from, --cot-select), R = GRPO
from A. Each checkpoint is scored once on the phantom test split (in-domain) and on the "ood" split
(out-of-domain), `python evaluate.py --model DIR --split SPLIT --out DIR.SPLIT.json`. The table gives
mean ± sample std (ddof=1) over seeds and, per seed, the difference of each stage from the one it
starts from. It goes to OUT/stages.md and OUT/stages.json; every command's output to OUT/logs/.

ablation: one SFT checkpoint, GRPO with each reward (text, text+semantic, text+adaptive, and
text+adaptive with DAPO's dynamic sampling), over seeds, scored on the test split with
evaluate.py's metrics, beside what the logs say about reward collapse (ARMed's Figure 5; the
variants and their grpo.py commands are those of ablation.py before it moved here). The
augmentation arm (text+adaptive+augment): GRPO from an SFT on the dataset's rationales with
ARMed-A's generated ones added (sft.py --cot-from --cot-augment). <run>.heldout.json keeps each
run's scores; the table goes to OUT/ablation.json (`python plot.py --figure5 OUT/ablation.json`).

factors: RL-MedVQA's four factors, each arm a GRPO (or SFT) run per seed S from the stages' SFT
checkpoint of seed S, scored like the stages: init (GRPO from the base model, the instruct model, SFT),
judge (with the oracle judge's reward, a stand-in for an LLM judge, against without), length (no
length reward, ECR, CWR), bias (GRPO, Dr. GRPO, token-mean), and sft, GRPO against SFT on GRPO's own
answer-only questions (the answers alone, or the start's own correct rationales). Tables of mean ±
std and paired differences from each factor's first row go to OUT/factors.md and OUT/factors.json
(`python plot.py --factors OUT/factors.json` draws the curves).

Reading order: how a step runs and is skipped (Step, training_step, score_steps, run_chains), what a
table reads (summary_of, value, differences), then each experiment in turn: its rows, its chains of
steps, its table (stages, ablation, factors); parse_args and main at the end.
"""

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from checkpoints import checkpoint_meta
from records import run_script
from tables import MISSING, markdown_table, mean_std_cell, paired_difference_cell
from training import HelpFormatter, at_least

INSTRUCT = "runs/instruct"  # pretrain.DEFAULT_INSTRUCT
SPLITS = ("test", "ood")  # in-domain, out-of-domain
# The table's columns: (title, keys into a dataset's summary in evaluate.py's --out JSON).
METRICS = (("closed acc", ("closed", "accuracy")), ("open semantic", ("open", "semantic")),
           ("ROUGE-1", ("open", "rouge1")), ("concept", ("open", "concept")),
           ("fact acc", ("reasoning", "fact_accuracy")), ("consistency", ("reasoning", "consistency")))
# The rows of the stages table: (name, checkpoint folder under OUT with {seed}, or the instruct model).
ROWS = (("SFT", "sft-{seed}"), ("SFT → GRPO", "grpo-{seed}"), ("instruct", None),
        ("I", "I-{seed}"), ("I → A", "A-{seed}"), ("I → A → R", "R-{seed}"))
# Each stage against the one it starts from: (label, row, predecessor).
PAIRS = (("GRPO − SFT", "SFT → GRPO", "SFT"), ("I − instruct", "I", "instruct"), ("A − I", "I → A", "I"),
         ("R − A", "I → A → R", "I → A"))


@dataclass
class Step:
    """One command of an experiment and the file or checkpoint folder it writes."""
    name: str           # its log: OUT/logs/NAME.log
    command: list       # arguments after `python`
    output: str         # a checkpoint folder (training) or a JSON file (scores)
    steps: int = None   # training steps the checkpoint is done at (None: any checkpoint is done)

    def state(self):
        """"done", "partial" (a training run interrupted after a checkpoint) or "todo"."""
        if self.output.endswith(".json"):
            if not os.path.exists(self.output):
                return "todo"
            try:
                with open(self.output) as f:
                    json.load(f)
            except ValueError:
                return "todo"  # cut off mid-write
            model = self.command[self.command.index("--model") + 1] if "--model" in self.command else ""
            checkpoint = os.path.join(model, "meta.json")
            scored_after = not os.path.exists(checkpoint) or os.path.getmtime(checkpoint) <= os.path.getmtime(self.output)
            return "done" if scored_after else "todo"   # a checkpoint trained again is scored again
        meta = checkpoint_meta(self.output)
        if not meta:
            return "todo"
        step = meta.get("step")
        return "done" if self.steps is None or step is None or step >= self.steps else "partial"

    def to_run(self):
        """The command to run now: None when the output is there, --resume for a run interrupted after
        a checkpoint, --overwrite for a training run interrupted before its first (only its log is there)."""
        state = self.state()
        if state == "done":
            return None
        if state == "partial":
            return [self.command[0], "--resume", self.output, "--steps", str(self.steps)]
        started = self.steps is not None and os.path.exists(self.output + ".log.jsonl")
        return [*self.command, "--overwrite"] if started else self.command


def training_step(name, script, args, out):
    """A sft.py or grpo.py run: done when its checkpoint reached the --steps it parses to."""
    command = [script, *args, "--out", out]
    default = importlib.import_module(script.removesuffix(".py")).parse_args(["--out", out]).steps
    steps = argparse.ArgumentParser(add_help=False)
    steps.add_argument("--steps", type=int, default=default)
    return Step(name, command, out, steps.parse_known_args(args)[0].steps)


def score_steps(name, checkpoint, base, eval_args, splits):
    """evaluate.py on each split: BASE.SPLIT.json (beside the checkpoint, or for the instruct model,
    which this experiment did not write, under --out)."""
    return [Step(f"{name}.{split}", ["evaluate.py", "--model", checkpoint, "--split", split,
                                     "--out", f"{base}.{split}.json", *eval_args], f"{base}.{split}.json")
            for split in splits]


def scored_run(out, name, seed, script, extra, grpo_args, sft_args, eval_args, splits):
    """[the training step OUT/NAME-SEED (script with extra, --seed SEED and the experiment's added
    options), then its scoring on each split]."""
    step = training_step(f"{name}-{seed}", script, [*extra, "--seed", str(seed),
                                                    *(grpo_args if script == "grpo.py" else sft_args)],
                         os.path.join(out, f"{name}-{seed}"))
    return [step, *score_steps(step.name, step.output, step.output, eval_args, splits)]


def stage_chains(args):
    """The steps of `stages`: [first chain (the instruct model), then per seed two chains (SFT → GRPO
    and I → A → R) that run side by side with --jobs]."""
    out, grpo_args, sft_args, eval_args = args.out, *map(shlex.split, (args.grpo_args, args.sft_args, args.eval_args))
    instruct = [Step("instruct", ["pretrain.py", "--instruct"], args.instruct)] if args.instruct == INSTRUCT else []
    chains = [instruct + score_steps("instruct", args.instruct, os.path.join(out, "instruct"), eval_args, args.splits)]
    for seed in args.seeds:
        def run(name, script, extra):
            return scored_run(out, name, seed, script, extra, grpo_args, sft_args, eval_args, args.splits)

        a_start = args.instruct if args.a_start == "instruct" else os.path.join(out, f"I-{seed}")
        chains.append(run("sft", "sft.py", []) + run("grpo", "grpo.py", ["--model", os.path.join(out, f"sft-{seed}")]))
        chains.append(run("I", "grpo.py", ["--model", args.instruct])
                      + run("A", "sft.py", ["--model", a_start, "--cot-from", os.path.join(out, f"I-{seed}"),
                                            "--cot-select", str(args.cot_select)])
                      + run("R", "grpo.py", ["--model", os.path.join(out, f"A-{seed}")]))
    return chains


def last_line(path, size=4096):
    """The last line a step printed (its one-line error, where it stopped on one), progress bars'
    carriage returns taken as line ends; "no output" when it printed nothing."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - size))
        lines = [line.strip() for line in f.read().decode(errors="replace").replace("\r", "\n").split("\n")]
    return next((line for line in reversed(lines) if line and not line.startswith("$ python")), "no output")


def run_chains(chains, out, jobs, dry_run=False):
    """Run the first chain, then the others `jobs` at a time, each step's output to OUT/logs/NAME.log,
    every process on one thread (OMP_NUM_THREADS=1: the numbers do not depend on --jobs). A step whose
    output is there is skipped. Each step's seconds go to OUT/times.json (kept over reruns); returns
    that dict. A step that failed stops its chain and every step whose command names its output; the
    rest run on. Then SystemExit names each step that failed, its last line and its log."""
    logs, seconds, failed, broken, lock = os.path.join(out, "logs"), {}, [], [], threading.Lock()
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def say(line):
        with lock:
            print(line, flush=True)

    def run_chain(chain):
        for step in chain:
            needs = [name for name, output in broken if output in step.command]
            if needs:
                say(f"{step.name}: not run, it needs {needs[0]}, which failed")
                return
            command = step.to_run()
            shown = "python " + shlex.join(command or step.command)
            if dry_run or command is None:
                say(f"{'done ' if command is None else ''}{shown}")
                continue
            say(f"[{time.strftime('%H:%M:%S')}] {step.name}: {shown}")
            start = time.time()
            with open(os.path.join(logs, f"{step.name}.log"), "a") as log:
                log.write(f"$ {shown}\n")
                log.flush()
                done = subprocess.run([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT, env=env)
            with lock:
                seconds[step.name] = round(time.time() - start, 1)
                if done.returncode:
                    failed.append(f"{step.name} (exit {done.returncode}: {last_line(log.name)}; see {log.name})")
                    broken.append((step.name, step.output))
            if done.returncode:
                return

    if dry_run:
        for chain in chains:
            run_chain(chain)
        return {}
    os.makedirs(logs, exist_ok=True)
    run_chain(chains[0])
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run_chain, chains[1:]))
    times_path = os.path.join(out, "times.json")
    times = {}
    if os.path.exists(times_path):
        with open(times_path) as f:
            times = json.load(f)
    times.update(seconds)
    with open(times_path, "w") as f:
        json.dump(times, f, indent=2)
    if failed:
        raise SystemExit("experiments.py: failed: " + "; ".join(failed))
    return times


def summary_of(path):
    """The phantom summary in evaluate.py's --out JSON (its by_dataset entry, which carries
    `reasoning`), or None when the file is not there."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        metrics = json.load(f)
    return metrics.get("by_dataset", {}).get("phantom", metrics)


def value(summary, keys):
    for key in keys:
        summary = summary.get(key) if isinstance(summary, dict) else None
    return None if summary is None else 100 * summary


def stage_results(out, seeds, splits=SPLITS):
    """{row: {split: {metric: [value per seed, in %; None where not measured]}}}; the instruct
    row has one value (no seed)."""
    results = {}
    for row, folder in ROWS:
        paths = [os.path.join(out, "instruct")] if folder is None else [os.path.join(out, folder.format(seed=s)) for s in seeds]
        results[row] = {split: {title: [value(summary_of(f"{p}.{split}.json"), keys) for p in paths]
                                for title, keys in METRICS} for split in splits}
    return results


def differences(after, before):
    """Per seed after − before (a before without seeds, the instruct model, is the same for each)."""
    before = before * len(after) if len(before) == 1 else before
    return [None if a is None or b is None else a - b for a, b in zip(after, before)]


def stages_markdown(results, seeds, seconds=None):
    """The stages table as Markdown: per split a table of mean ± std, then the paired differences."""
    titles = [title for title, _ in METRICS]
    splits = list(next(iter(results.values())))
    names = {split: f"{split} split" for split in splits} | {"test": "in-domain (test split)",
                                                              "ood": "out-of-domain (ood split)"}
    lines = [f"Phantom, seeds {', '.join(map(str, seeds))}: mean ± sample std (ddof=1) over seeds, in %; "
             f"{MISSING}: not measured, or (fact acc, consistency) no <think> states a readable caption."]
    for split in splits:
        lines += ["", f"**{names[split]}**", ""] + markdown_table(
            ["model", *titles], [[row, *(mean_std_cell(results[row][split][t]) for t in titles)] for row, _ in ROWS])
    for split in splits:
        lines += ["", f"**paired differences per seed, {names[split]}**: mean ± sample std (each seed)", ""]
        lines += markdown_table(["stage − its start", *titles], [
            [label, *(paired_difference_cell(differences(results[after][split][t], results[before][split][t]))
                      for t in titles)] for label, after, before in PAIRS])
    if seconds is not None:
        lines += ["", f"Wall time of this command: {seconds / 60:.1f} min (steps done before were skipped; "
                  "times.json has each step's)."]
    return "\n".join(lines)


def run_then_tabulate(chains, args):
    """run_chains, returning None, or the SystemExit of a step that failed: the caller still writes
    the tables of what did finish, then raises it."""
    try:
        run_chains(chains, args.out, args.jobs, args.dry_run)
    except SystemExit as error:
        return error
    return None


def write_tables(out, name, table, record, failed):
    """OUT/NAME.md (the Markdown tables, marked Incomplete after a failure) and OUT/NAME.json (the
    command, then `record`); prints the tables."""
    table += f"\n\nIncomplete: {failed}" if failed else ""
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(dict(command=sys.argv, **record), f, indent=2, ensure_ascii=False)
    print(table)


def stages(args):
    start = time.time()
    failed = run_then_tabulate(stage_chains(args), args)
    if args.dry_run:
        return None
    seconds = time.time() - start
    times_path = os.path.join(args.out, "times.json")
    with open(times_path) as f:
        times = json.load(f)
    results = stage_results(args.out, args.seeds, args.splits)
    write_tables(args.out, "stages", stages_markdown(results, args.seeds, seconds), dict(
        seeds=args.seeds, std="sample std, ddof=1", seconds=round(seconds, 1), step_seconds=times, results=results,
        differences={label: {split: {t: differences(results[a][split][t], results[b][split][t]) for t, _ in METRICS}
                             for split in args.splits} for label, a, b in PAIRS}), failed)
    print(f"wrote {args.out}/stages.md, {args.out}/stages.json; total wall time {seconds / 60:.1f} min "
          f"(--jobs {args.jobs}); the time of each step: {times_path}")
    if failed:
        raise failed
    return results


# The ablation: each variant's grpo.py options. The fourth is the default reward with DAPO's dynamic
# sampling, which neither paper uses; the fifth starts from the augmented SFT (AUGMENTED).
VARIANTS = {"text": ["--reward", "text"], "text+semantic": ["--reward", "text+semantic"],
            "text+adaptive": ["--reward", "text+adaptive"],
            "text+adaptive+dynamic": ["--reward", "text+adaptive", "--dynamic-sampling"],
            "text+adaptive+augment": ["--reward", "text+adaptive"]}
AUGMENTED = "augment-sft"
ABLATION_COLUMNS = (("closed acc", ("closed", "accuracy")), ("open sem", ("open", "semantic")),
                    ("ROUGE-1", ("open", "rouge1")), ("BLEU-1", ("open", "bleu1")), ("concept", ("open", "concept")),
                    ("format", ("format",)))
TRAINING = ("semantic_raw_var", "semantic_var", "total_std_within_group", "equal_total_group_fraction", "draws")


def ablation_chains(args):
    """[the augmentation arm's SFT (and the stage-I model that writes its rationales), then a chain
    per variant and seed]. The four reward variants run the commands ablation.py ran."""
    grpo_args, sft_args = shlex.split(args.grpo_args), shlex.split(args.sft_args)
    first = []
    if "text+adaptive+augment" in args.variants:
        writer = args.augment_from
        if writer is None:   # [reconstructed] ARMed-A's rationales: those of a stage-I model, seed 0
            writer = os.path.join(args.out, "armed-i")
            first.append(training_step("armed-i", "grpo.py", ["--model", INSTRUCT, "--seed", "0", *grpo_args], writer))
        first.append(training_step(AUGMENTED, "sft.py", ["--cot-from", writer, "--cot-augment", "--cot-select",
                                                         str(args.cot_select), "--seed", "0", *sft_args],
                                   os.path.join(args.out, AUGMENTED)))
    chains = [first]
    for variant in args.variants:
        start = os.path.join(args.out, AUGMENTED) if variant.endswith("augment") else args.sft
        for seed in args.seeds:
            chains.append([training_step(f"{variant}-seed{seed}", "grpo.py", [
                "--model", start, *VARIANTS[variant], "--seed", str(seed), "--phantom-wording", args.phantom_wording,
                "--save-every", "0", *grpo_args], os.path.join(args.out, f"{variant}-seed{seed}"))])
    return chains


def held_out(path, saved, records, scorer, args):
    """The held-out metrics of checkpoint `path`, kept in the file `saved` and read from it later,
    unless --rescore or it scored another checkpoint or split."""
    from evaluate import evaluate_model
    from model import load_model
    key = dict(model=os.path.abspath(path), split=args.split, phantom_wording=args.phantom_wording)
    if os.path.exists(saved) and not args.rescore:
        with open(saved) as f:
            kept = json.load(f)
        if kept["scored"] == key:
            return kept["metrics"]
    model, processor = load_model(path)
    metrics, _ = evaluate_model(model, processor, records, scorer, batch_size=64, max_new_tokens=args.max_new_tokens)
    tmp = f"{saved}.tmp-{os.getpid()}"   # two ablations side by side may score the SFT start at once
    with open(tmp, "w") as f:
        json.dump(dict(scored=key, metrics=metrics), f)
    os.replace(tmp, saved)
    return metrics


def ablation(args):
    from data import load_dataset
    from rewards import SemanticScorer
    if not os.path.isdir(args.sft) and not args.dry_run:
        raise SystemExit(f"experiments.py ablation: {args.sft} not found: run `python sft.py` first (or pass --sft)")
    chains = ablation_chains(args)
    if args.rescore:
        missing = [step.output for chain in chains[1:] for step in chain if not os.path.isdir(step.output)]
        if missing:
            raise SystemExit(f"experiments.py ablation --rescore: {missing[0]} not found: run without --rescore")
    else:
        run_chains(chains, args.out, args.jobs, args.dry_run)
    if args.dry_run:
        return None
    records = load_dataset("phantom", args.split, phantom_wording=args.phantom_wording)
    scorer = SemanticScorer()
    results = {"sft": {"metrics": [held_out(args.sft, os.path.join(args.out, "sft.heldout.json"), records, scorer, args)]}}
    if "text+adaptive+augment" in args.variants:   # the augmentation arm's own start
        augmented = os.path.join(args.out, AUGMENTED)
        results[AUGMENTED] = {"metrics": [held_out(augmented, augmented + ".heldout.json", records, scorer, args)]}
    for variant in args.variants:
        results[variant] = {"metrics": [], "training": []}
        for seed in args.seeds:
            out = os.path.join(args.out, f"{variant}-seed{seed}")
            rows = [json.loads(line) for line in open(out + ".log.jsonl")]
            results[variant]["training"].append({k: float(np.mean([r[k] for r in rows if k in r]))
                                                for k in TRAINING if any(k in r for r in rows)})
            results[variant]["metrics"].append(held_out(out, out + ".heldout.json", records, scorer, args))
    print(format_ablation(results, args))
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump(dict(args=vars(args), std="sample std, ddof=1", results=results), f, indent=2)
    return results


def format_ablation(results, args):
    lines = [f"phantom {args.split} split ({results['sft']['metrics'][0]['n']} records), "
             f"mean ± sample std (ddof=1) over seeds {args.seeds}; metrics in %",
             f"{'start / variant':<24}" + "".join(f"{title:>14}" for title, _ in ABLATION_COLUMNS)]
    for name, result in results.items():
        lines.append(f"{name:<24}" + "".join(f"{mean_std_cell([value(m, keys) for m in result['metrics']]):>14}"
                                             for _, keys in ABLATION_COLUMNS))
    lines.append("\nduring training (mean over steps; semantic variances over open questions)")
    lines.append(f"{'variant':<24}" + "".join(f"{k:>28}" for k in TRAINING))
    for name, result in results.items():
        if "training" in result:   # a GRPO variant, not a start
            lines.append(f"{name:<24}" + "".join(
                f"{np.mean([t[k] for t in result['training'] if k in t]):>28.4f}"
                if any(k in t for t in result["training"]) else f"{'-':>28}" for k in TRAINING))
    return "\n".join(lines)


# RL-MedVQA's four factors and GRPO against SFT on equal data (`factors`). Every arm is a run per
# seed S from the SFT checkpoint of seed S (STAGES/sft-S, the stages experiment's), scored like the
# stages. [reconstructed] Every GRPO arm but the initialisation's sets --closed-semantic zero: the
# semantic slot rewards open answers alone, so that Dr. GRPO's unscaled advantages do not weigh closed
# questions double, and the loss types, the judge and the length rewards compare alike.
ALIKE = ("--closed-semantic", "zero")
# [reconstructed] the SFT control: GRPO's pool of answer-only questions (phantom train records 6000 on,
# data.train_offset), the 3200 question visits of GRPO's 200 steps of 16 prompts, at GRPO's learning
# rate; sft-own-long matches GRPO's compute instead (8 samples a question as GRPO's G, 4x the steps:
# about GRPO's wall time on a 2-core CPU).
CONTROL = ("--train-offset", "6000", "--cot-records", "3200", "--batch-size", "16", "--lr", "3e-4")
ARMS = {  # arm: (script, its options; {sft} is STAGES/sft-S), started from --model, by default STAGES/sft-S
    "grpo": ("grpo.py", ALIKE),
    "dr_grpo": ("grpo.py", ("--loss-type", "dr_grpo", *ALIKE)),   # implies --advantage-scale none
    "token": ("grpo.py", ("--loss-type", "token", *ALIKE)),
    "judge": ("grpo.py", ("--judge", "oracle", "--judge-weight", "1", *ALIKE)),
    "ecr": ("grpo.py", ("--ecr-weight", "1", *ALIKE)),
    "cwr": ("grpo.py", ("--cwr-weight", "1", *ALIKE)),
    "base": ("grpo.py", ("--model", "runs/base")),   # pretrain.DEFAULT_BASE: captions, no format
    "sft-answers": ("sft.py", (*CONTROL, "--steps", "200", "--answer-only")),
    "sft-own": ("sft.py", (*CONTROL, "--steps", "200", "--cot-from", "{sft}")),
    "sft-own-long": ("sft.py", (*CONTROL, "--steps", "800", "--cot-from", "{sft}", "--cot-samples", "8")),
}
# Each factor's rows: (label, an arm, or "stages:NAME", the stages experiment's run STAGES/NAME-S); the
# first row is the one every other is compared with, per seed.
FACTORS = {
    "init": [("GRPO from SFT", "stages:grpo"), ("GRPO from instruct (stage I)", "stages:I"),
             ("GRPO from base", "base")],
    "judge": [("GRPO", "grpo"), ("GRPO + oracle judge", "judge")],
    "length": [("no length reward", "grpo"), ("ECR", "ecr"), ("CWR", "cwr")],
    "bias": [("GRPO", "grpo"), ("Dr. GRPO", "dr_grpo"), ("token-mean", "token")],
    "sft": [("GRPO (from SFT)", "stages:grpo"), ("SFT start", "stages:sft"),
            ("SFT + answers", "sft-answers"), ("SFT + own rationales", "sft-own"),
            ("SFT + own rationales, GRPO's compute", "sft-own-long")],
}
# What the training logs say, mean over the last LATE steps of each run (grpo.py's log keys).
LATE = 50
LOG_COLUMNS = (("format reward", "reward_format"), ("correct", "correct_fraction"),
               ("think words, right", "think_words_right"), ("think words, wrong", "think_words_wrong"))


def factor_runs(args):
    """{row arm: its run folder per seed} of the chosen factors (a "stages:NAME" row: STAGES/NAME-S)."""
    arms = dict.fromkeys(arm for factor in args.factors for _, arm in FACTORS[factor])   # in the factors' order
    return {arm: [os.path.join(args.stages, f"{arm[len('stages:'):]}-{s}") if arm.startswith("stages:")
                  else os.path.join(args.out, f"{arm}-{s}") for s in args.seeds] for arm in arms}


def factor_chains(args):
    """[first chain: the stages' runs the factors start from or compare with, where missing (the
    instruct model, each seed's SFT), then a chain per stages run and per arm and seed]."""
    grpo_args, sft_args, eval_args = map(shlex.split, (args.grpo_args, args.sft_args, args.eval_args))
    arms = factor_runs(args)

    def stages(name, seed, script, extra):   # a run of the stages experiment, with its own (default) options
        return scored_run(args.stages, name, seed, script, extra, [], [], eval_args, args.splits)

    first = []
    if "stages:I" in arms:
        first += [Step("instruct", ["pretrain.py", "--instruct"], INSTRUCT)]
    first += [step for seed in args.seeds for step in stages("sft", seed, "sft.py", [])]
    chains = [first]
    for seed in args.seeds:
        sft = os.path.join(args.stages, f"sft-{seed}")
        if "stages:grpo" in arms:
            chains.append(stages("grpo", seed, "grpo.py", ["--model", sft]))
        if "stages:I" in arms:
            chains.append(stages("I", seed, "grpo.py", ["--model", INSTRUCT]))
        for arm in (a for a in arms if not a.startswith("stages:")):
            script, options = ARMS[arm]
            extra = [o.format(sft=sft) for o in options]
            chains.append(scored_run(args.out, arm, seed, script, extra if "--model" in extra else ["--model", sft, *extra],
                                     grpo_args, sft_args, eval_args, args.splits))
    return chains


def log_summary(run, late=LATE):
    """{LOG_COLUMNS key: mean over the run's last `late` logged steps}, None where it is not logged
    (sft.py's log, a log from before a key existed)."""
    rows = []
    if os.path.exists(run + ".log.jsonl"):
        with open(run + ".log.jsonl") as f:
            rows = [row for line in f if "reward" in (row := json.loads(line))][-late:]
    return {key: float(np.mean([r[key] for r in rows if key in r])) if any(key in r for r in rows) else None
            for _, key in LOG_COLUMNS}


def factor_results(args):
    """{factor: {"rows": [{label, arm, runs, scores: {split: {metric: [per seed, %]}}, log: {key: [per
    seed]}}], "differences": {label: {split: {metric: [row − first row, per seed]}}}}}."""
    runs, results = factor_runs(args), {}
    for factor in args.factors:
        rows = []
        for label, arm in FACTORS[factor]:
            logs = [log_summary(run) for run in runs[arm]]
            rows.append(dict(label=label, arm=arm, runs=runs[arm],
                             scores={split: {title: [value(summary_of(f"{run}.{split}.json"), keys) for run in runs[arm]]
                                             for title, keys in METRICS} for split in args.splits},
                             log={key: [log[key] for log in logs] for _, key in LOG_COLUMNS}))
        results[factor] = dict(rows=rows, differences={
            row["label"]: {split: {title: differences(row["scores"][split][title], rows[0]["scores"][split][title])
                                   for title, _ in METRICS} for split in args.splits} for row in rows[1:]})
    return results


def factors_markdown(results, seeds):
    """Per factor: the scores (mean ± std over seeds) and the training log's late means, then the
    paired differences from the factor's first row, per split."""
    titles = [title for title, _ in METRICS]
    lines = [f"Phantom, seeds {', '.join(map(str, seeds))}: mean ± sample std (ddof=1) over seeds, in %; the "
             f"training columns: mean over each run's last {LATE} steps ({MISSING}: not logged)."]
    for factor, result in results.items():
        rows = result["rows"]
        for split in rows[0]["scores"]:
            lines += ["", f"**{factor}, {split} split**", ""] + markdown_table(
                ["run", *titles] + ([f"{t} (train)" for t, _ in LOG_COLUMNS] if split == "test" else []),
                [[row["label"], *(mean_std_cell(row["scores"][split][t]) for t in titles)]
                 + ([log_cell(row["log"][key], key) for _, key in LOG_COLUMNS] if split == "test" else [])
                 for row in rows])
            lines += ["", f"paired differences from {rows[0]['label']} per seed, {split} split", ""] + markdown_table(
                ["run − " + rows[0]["label"], *titles],
                [[label, *(paired_difference_cell(d[split][t]) for t in titles)]
                 for label, d in result["differences"].items()])
    return "\n".join(lines)


def log_cell(values, key):
    """A training-log column over seeds: fractions in %, words as they are."""
    scale = 1 if key.startswith("think_words") else 100
    return mean_std_cell([None if v is None else scale * v for v in values])


def factors(args):
    start = time.time()
    failed = None if args.report else run_then_tabulate(factor_chains(args), args)
    if args.dry_run:
        return None
    results = factor_results(args)
    write_tables(args.out, "factors", factors_markdown(results, args.seeds), dict(
        seeds=args.seeds, std="sample std, ddof=1", late_steps=LATE, seconds=round(time.time() - start, 1),
        factors=results), failed)
    print(f"wrote {args.out}/factors.md, {args.out}/factors.json (`python plot.py --factors {args.out}/factors.json`)")
    if failed:
        raise failed
    return results


def parse_args(argv=None):
    from phantom import WORDINGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    commands = p.add_subparsers(dest="experiment", required=True, help="the experiment to run")
    both = argparse.ArgumentParser(add_help=False)
    both.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    both.add_argument("--jobs", type=at_least(1), default=1, help="chains of steps run side by side")
    both.add_argument("--grpo-args", default="", help='options added to every grpo.py step, e.g. "--steps 100"')
    both.add_argument("--sft-args", default="", help='options added to every sft.py step, e.g. "--steps 200"')
    both.add_argument("--cot-select", type=at_least(0), default=512,
                      help="[reconstructed] ARMed-A: rationales kept by k-means (sft.py --cot-select; "
                      "the paper gives no number, the README's three-stage commands use 512)")
    both.add_argument("--dry-run", action="store_true", help="print the commands (done ones marked), run nothing")
    s = commands.add_parser("stages", parents=[both], formatter_class=HelpFormatter,
                            help="SFT, SFT → GRPO, instruct, I, I → A, I → A → R; in- and out-of-domain")
    s.add_argument("--out", default="runs/stages", help="folder of the checkpoints, scores, logs and the table")
    s.add_argument("--instruct", default=INSTRUCT, help="the instruct model stage I starts from "
                   f"({INSTRUCT} is built by `python pretrain.py --instruct` when missing)")
    s.add_argument("--a-start", choices=("instruct", "I"), default="instruct",
                   help="[reconstructed] the checkpoint stage A fine-tunes on stage I's rationales: the instruct "
                   "model (as the README's three-stage commands) or the stage-I model itself")
    s.add_argument("--eval-args", default="", help="options added to every evaluate.py step")
    s.add_argument("--splits", nargs="+", default=list(SPLITS),
                   help="phantom splits each checkpoint is scored on: in-domain test, out-of-domain ood")
    a = commands.add_parser("ablation", parents=[both], formatter_class=HelpFormatter,
                            help="GRPO with each reward from one SFT start, and the augmentation arm (Figure 5)")
    a.add_argument("--out", default="runs/ablation", help="folder of the checkpoints, logs and ablation.json")
    a.add_argument("--sft", default="runs/sft", help="SFT checkpoint every reward variant starts from")
    a.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="rewards (dynamic sampling, the augmented SFT start) to compare")
    a.add_argument("--augment-from", default=None,
                   help="[reconstructed] checkpoint that writes the added rationales (default: a stage-I model, "
                   "GRPO from the instruct model, seed 0, trained under --out)")
    a.add_argument("--split", default="test", help="held-out phantom split to score")
    a.add_argument("--phantom-wording", default="random", choices=WORDINGS,
                   help="[reconstructed] how phantom open answers are worded (phantom.WORDINGS)")
    a.add_argument("--max-new-tokens", type=int, default=96, help="generation length at evaluation")
    a.add_argument("--rescore", action="store_true",
                   help="do not train: score again the checkpoints a previous run left under --out")
    f = commands.add_parser("factors", parents=[both], formatter_class=HelpFormatter,
                            help="RL-MedVQA's factors (init, judge, length, bias) and GRPO against SFT on equal data")
    f.add_argument("--out", default="runs/factors", help="folder of the arms' checkpoints, scores, logs and tables")
    f.add_argument("--stages", default="runs/stages",
                   help="the stages experiment's folder: its SFT checkpoints are every arm's start, its GRPO and "
                   "stage-I runs rows of init and sft (trained there with the stages' defaults where missing)")
    f.add_argument("--factors", nargs="+", choices=list(FACTORS), default=list(FACTORS), help="the factors to run")
    f.add_argument("--report", action="store_true",
                   help="run nothing: write the tables of what is there (a run still going is read as it stands)")
    f.add_argument("--eval-args", default="", help="options added to every evaluate.py step")
    f.add_argument("--splits", nargs="+", default=list(SPLITS), help="phantom splits each checkpoint is scored on")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return {"stages": stages, "ablation": ablation, "factors": factors}[args.experiment](args)


if __name__ == "__main__":
    run_script(main)
