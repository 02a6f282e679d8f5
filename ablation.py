"""The reward ablation (ARMed Table 3 / Figure 4 at toy scale): one SFT checkpoint, four GRPO variants.

    python ablation.py                       # from runs/sft, seeds 0 1 2, phantom test split
    python ablation.py --seeds 0 --steps 20  # a quicker look (options it does not know go to grpo.py)
    python ablation.py --variants text text+semantic &     # two halves side by side (one CPU
    python ablation.py --variants text+adaptive text+adaptive+dynamic   # thread each), then
    python ablation.py                       # prints the whole table from the finished runs
    python ablation.py --rescore             # score every finished run again

For each seed and each variant (rewards text, text+semantic, text+adaptive, and text+adaptive
with DAPO's dynamic sampling) it runs grpo.py from the same SFT checkpoint with the same seed,
scores the result on the held-out split with evaluate.py's metrics, and prints mean ± std over
seeds beside the SFT starting point, with what the log says about the rewards during training
(raw cosine vs weighted semantic variance, equal-reward groups): reward collapse in numbers.
Every run's checkpoint, log and scores (<run>.heldout.json) stay under <out>; a run whose scores
are there is not trained again (another --out trains afresh). The table also goes to
<out>/ablation.json.
"""

import argparse
import json
import os

import numpy as np

import grpo
from data import load_dataset
from evaluate import evaluate_model
from model import load_model
from training import HelpFormatter
from phantom import WORDINGS
from records import run_script
from rewards import SemanticScorer

# Each variant: the grpo.py options it adds. The last is the default reward with DAPO's dynamic
# sampling, which neither paper uses.
VARIANTS = {"text": ["--reward", "text"], "text+semantic": ["--reward", "text+semantic"],
            "text+adaptive": ["--reward", "text+adaptive"],
            "text+adaptive+dynamic": ["--reward", "text+adaptive", "--dynamic-sampling"]}
COLUMNS = (("closed acc", ("closed", "accuracy")), ("open sem", ("open", "semantic")),
           ("ROUGE-1", ("open", "rouge1")), ("BLEU-1", ("open", "bleu1")), ("concept", ("open", "concept")),
           ("format", ("format",)))
TRAINING = ("semantic_raw_var", "semantic_var", "total_std_within_group", "equal_total_group_fraction", "draws")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--sft", default="runs/sft", help="SFT checkpoint every run starts from")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="rewards (and dynamic sampling) to compare")
    p.add_argument("--split", default="test", help="held-out phantom split to score")
    p.add_argument("--phantom-wording", default="random", choices=WORDINGS,
                   help="[reconstructed] how phantom open answers are worded (phantom.WORDINGS)")
    p.add_argument("--out", default="runs/ablation", help="directory for checkpoints, logs and ablation.json")
    p.add_argument("--max-new-tokens", type=int, default=96, help="generation length at evaluation")
    p.add_argument("--rescore", action="store_true",
                   help="do not train: score again the checkpoints a previous run left under --out")
    args, grpo_args = p.parse_known_args(argv)
    return args, grpo_args  # anything else (--steps, --lr, ...) goes to grpo.py unchanged


def held_out(path, saved, records, scorer, args):
    """The held-out metrics of checkpoint `path`, kept in the file `saved` and read from it later,
    unless --rescore or it scored another checkpoint or split."""
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


def pick(metrics, keys):
    for key in keys:
        metrics = metrics[key]
    return metrics


def main(argv=None):
    args, grpo_args = parse_args(argv)
    if not os.path.isdir(args.sft):
        raise SystemExit(f"ablation.py: {args.sft} not found: run `python sft.py` first (or pass --sft)")
    records = load_dataset("phantom", args.split, phantom_wording=args.phantom_wording)
    scorer = SemanticScorer()
    os.makedirs(args.out, exist_ok=True)
    results = {"sft": {"metrics": [held_out(args.sft, os.path.join(args.out, "sft.heldout.json"), records,
                                             scorer, args)]}}
    for variant in args.variants:
        results[variant] = {"metrics": [], "training": []}
        for seed in args.seeds:
            out = os.path.join(args.out, f"{variant}-seed{seed}")
            finished = os.path.exists(out + ".heldout.json")
            if args.rescore and not os.path.isdir(out):
                raise SystemExit(f"ablation.py --rescore: {out} not found: run ablation.py without --rescore")
            if not args.rescore and not finished:
                grpo.main(["--model", args.sft, *VARIANTS[variant], "--seed", str(seed), "--out", out,
                           "--phantom-wording", args.phantom_wording, "--save-every", "0", *grpo_args])
            rows = [json.loads(line) for line in open(out + ".log.jsonl")]
            results[variant]["training"].append({k: float(np.mean([r[k] for r in rows if k in r]))
                                                for k in TRAINING if any(k in r for r in rows)})
            results[variant]["metrics"].append(held_out(out, out + ".heldout.json", records, scorer, args))
    print(format_results(results, args))
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump(dict(args=vars(args), grpo_args=grpo_args, results=results), f, indent=2)


def format_results(results, args):
    def cell(values):
        values = [100 * v for v in values if v is not None]
        return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"

    lines = [f"phantom {args.split} split ({results['sft']['metrics'][0]['n']} records), "
             f"mean ± std over seeds {args.seeds}; metrics in %",
             f"{'start / variant':<24}" + "".join(f"{title:>14}" for title, _ in COLUMNS)]
    for name, result in results.items():
        lines.append(f"{name:<24}" + "".join(f"{cell([pick(m, keys) for m in result['metrics']]):>14}"
                                             for _, keys in COLUMNS))
    lines.append("\nduring training (mean over steps; semantic variances over open questions)")
    lines.append(f"{'variant':<24}" + "".join(f"{k:>28}" for k in TRAINING))
    for name, result in results.items():
        if name != "sft":
            lines.append(f"{name:<24}" + "".join(
                f"{np.mean([t[k] for t in result['training'] if k in t]):>28.4f}"
                if any(k in t for t in result["training"]) else f"{'-':>28}" for k in TRAINING))
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
