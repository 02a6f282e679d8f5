"""Do sft.py and grpo.py still compute the same numbers as at an earlier commit? A check to run
after a refactor that must not change a single bit (not a test: it takes a few minutes).

    python same_numbers.py                    # this working tree against 569edb0
    python same_numbers.py --base HEAD~1      # against another commit
    python same_numbers.py --only grpo-dynamic torchrun-grpo

Both trees run the same short runs on one CPU thread (OMP_NUM_THREADS=1, torch's deterministic
kernels: distributed.py): SFT from the untrained tiny model, alone and as two processes under
torchrun; GRPO from the base commit's SFT checkpoint (one start for both trees) with the default
rewards and --dynamic-sampling, alone and as two processes, and with the plain semantic and length
rewards. For every run it compares the logs, every number of every row except the timing fields,
and the checkpoints: every weight, the optimizer state, the random states and the adaptive
reward's history, bit for bit.
The base commit's outputs are kept under --work/<commit> and reused by later checks.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TIMING = {"step_time", "rollout_time", "tokens_per_s"}   # wall-clock fields: never the same twice

SFT = ["--model", "tiny", "--steps", "6", "--limit", "48", "--batch-size", "4", "--lr", "3e-3", "--eval-every", "3",
       "--eval-size", "4", "--max-new-tokens", "8", "--save-every", "0"]
GRPO = ["--steps", "3", "--limit", "16", "--train-offset", "0", "--prompts-per-step", "2", "--num-generations", "4",
        "--max-new-tokens", "24", "--micro-batch", "3", "--eval-every", "2", "--eval-size", "2", "--save-every", "0"]
# name -> (launcher, script, options); "{sft}" is the base commit's SFT checkpoint
RUNS = {
    "sft": ([], "sft.py", SFT),
    "grpo-dynamic": ([], "grpo.py", ["--model", "{sft}", *GRPO, "--dynamic-sampling", "--max-draws", "3", "--mu", "2"]),
    "grpo-plain": ([], "grpo.py", ["--model", "{sft}", *GRPO, "--steps", "2", "--reward", "text+semantic",
                                   "--ecr-weight", "0.5", "--cwr-weight", "0.5", "--target-length", "16",
                                   "--loss-type", "token", "--advantage-scale", "batch"]),
    "torchrun-sft": (["torchrun"], "sft.py", [*SFT, "--eval-size", "5"]),   # 5 records: one process pads its share
    "torchrun-grpo": (["torchrun"], "grpo.py", ["--model", "{sft}", *GRPO, "--prompts-per-step", "4",
                                                  "--dynamic-sampling", "--max-draws", "3"]),
}


def git(*args):
    return subprocess.run(["git", "-C", HERE, *args], check=True, capture_output=True, text=True).stdout.strip()


def run(tree, launcher, script, options, out):
    """Run `script` of `tree` with `options`, writing `out` (its log: out.log.jsonl)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    if launcher:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script]
    else:
        cmd = [sys.executable, script]
    for attempt in range(2):   # gloo on this CPU rarely aborts one process (test_distributed.torchrun)
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run(cmd + options + ["--out", out, "--overwrite"], cwd=tree, env=env,
                              capture_output=True, text=True)
        if done.returncode == 0:
            return
    raise SystemExit(f"same_numbers.py: {script} in {tree} failed:\n{done.stderr[-4000:]}")


def log_rows(out):
    with open(out + ".log.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def tensors(out):
    """name -> tensor of every checkpoint file that holds numbers a run computed."""
    import torch
    from safetensors.torch import load_file
    found = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".safetensors"):
            found.update({f"{name}:{k}": v for k, v in load_file(os.path.join(out, name)).items()})
    state = torch.load(os.path.join(out, "trainer_state.pt"), weights_only=False)
    for k, v in flatten(state["optimizer"], "optimizer").items():
        found[k] = v
    for i, rng in enumerate(state["rng"]):
        found.update({f"rng[{i}].{k}": v for k, v in rng.items()})
    found["adaptive"] = torch.tensor((state.get("adaptive") or {}).get("buffer", []), dtype=torch.float64)
    found["step"] = torch.tensor(state["step"])
    return found


def flatten(obj, prefix):
    import torch
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flatten(value, f"{prefix}.{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in flatten(value, f"{prefix}[{i}]").items()}
    if torch.is_tensor(obj):
        return {prefix: obj}
    if isinstance(obj, (int, float, bool)):
        return {prefix: torch.tensor(float(obj))}
    return {prefix: torch.tensor(list(repr(obj).encode()), dtype=torch.uint8)}   # names, None: compared as text


def compare(a, b):
    """The differences between two runs' outputs (empty: bit-identical)."""
    import torch
    problems = []
    rows_a, rows_b = log_rows(a), log_rows(b)
    if len(rows_a) != len(rows_b):
        problems.append(f"log: {len(rows_a)} rows vs {len(rows_b)}")
    for ra, rb in zip(rows_a, rows_b):
        if ra != rb:
            keys = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
            differ = ", ".join(f"{k} {ra.get(k)!r:.60} vs {rb.get(k)!r:.60}" for k in keys)
            problems.append(f"log step {ra.get('step')}: {differ}")
    ta, tb = tensors(a), tensors(b)
    if ta.keys() != tb.keys():
        problems.append(f"checkpoint: tensors only in one: {sorted(ta.keys() ^ tb.keys())[:5]}")
    differ = [k for k in ta.keys() & tb.keys() if not (ta[k].shape == tb[k].shape and ta[k].dtype == tb[k].dtype
                                                       and torch.equal(ta[k].nan_to_num(), tb[k].nan_to_num()))]
    if differ:
        problems.append(f"checkpoint: {len(differ)} of {len(ta)} tensors differ, e.g. {sorted(differ)[:3]}")
    return problems, len(rows_a), len(ta)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="569edb0", help="commit to compare this working tree against")
    p.add_argument("--only", nargs="+", choices=tuple(RUNS), default=tuple(RUNS), help="runs to compare")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "same_numbers"),
                   help="where the base commit's tree and outputs are kept (reused) and this tree's written")
    p.add_argument("--fresh", action="store_true", help="run the base commit again instead of reusing its outputs")
    args = p.parse_args(argv)
    base = git("rev-parse", args.base)
    base_dir = os.path.join(args.work, base[:12])
    tree = os.path.join(base_dir, "tree")
    if args.fresh:
        shutil.rmtree(base_dir, ignore_errors=True)
    if not os.path.isdir(tree):
        os.makedirs(tree)
        archive = subprocess.run(["git", "-C", HERE, "archive", base], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    head = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain") else "")
    print(f"same_numbers.py: this tree ({head}) against {base[:12]}, one CPU thread")
    sft_checkpoint = os.path.join(base_dir, "sft")
    failed = 0
    for name in args.only:
        launcher, script, options = RUNS[name]
        if "{sft}" in options and not os.path.isfile(os.path.join(sft_checkpoint, "trainer_state.pt")):
            run(tree, *RUNS["sft"][:2], RUNS["sft"][2], sft_checkpoint)
        options = [o.replace("{sft}", sft_checkpoint) for o in options]
        digest = hashlib.sha1(" ".join(launcher + [script] + options).encode()).hexdigest()[:8]
        reference = os.path.join(base_dir, f"{name}-{digest}")   # other options: another reference
        if name == "sft":
            reference = sft_checkpoint
        if not os.path.isfile(os.path.join(reference, "trainer_state.pt")):
            run(tree, launcher, script, options, reference)
        mine = os.path.join(args.work, "current", name)
        run(HERE, launcher, script, options, mine)
        problems, n_rows, n_tensors = compare(reference, mine)
        verdict = "IDENTICAL" if not problems else "DIFFERENT"
        failed += bool(problems)
        print(f"{name:<14} {verdict}: {n_rows} log rows (timing fields aside), {n_tensors} checkpoint tensors "
              f"({' '.join(launcher + [script])} {' '.join(options)})")
        for problem in problems:
            print(f"    {problem}")
    print("same_numbers.py: " + ("bit-identical" if not failed else f"{failed} run(s) differ"))
    return failed


if __name__ == "__main__":
    sys.exit(main())
