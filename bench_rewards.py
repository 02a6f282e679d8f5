"""Scoring speed of rewards.py and evaluate.py (a benchmark, not a test).

    python bench_rewards.py [--rows 10000] [--repeats 9]

1. One GRPO step's rewards: compute_rewards (format + textual + adaptive semantic) for 64
   completions, 8 prompts x G = 8, against their 8 references, encoder already loaded. Fresh
   completions each run; the first run also encodes the 8 references (then they are cached).
2. `python evaluate.py --predictions FILE` end to end (start-up, encoder load, scoring) on a
   synthetic file of --rows lines, half open and half closed questions, open answers 1-4 words
   drawn from a medical vocabulary (nearly all distinct, so the encoder sees about one string per row).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from rewards import AdaptiveSemanticReward, SemanticScorer, compute_rewards, references as reference_records, reward_list

VOCABULARY = ("left right upper lower middle lobe lung pleural effusion pneumothorax consolidation opacity mass "
              "nodule cardiomegaly enlarged heart liver kidney spleen brain ventricle infarct hemorrhage edema "
              "fracture femur rib vertebra ct mri x-ray axial coronal contrast enhancing lesion cyst abscess "
              "atelectasis pneumonia tumor metastasis calcification aorta aneurysm bowel obstruction free air "
              "gallbladder stone appendix thickening diffuse focal bilateral small large").split()


def random_answer(rng, max_words=4):
    return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, max_words)))


def random_completion(rng, answer):
    return f"<think>{random_answer(rng, 40)}</think><answer>{answer}</answer>"


def bench_group_rewards(repeats, seed=0):
    rng = random.Random(seed)
    start = time.perf_counter()
    scorer = SemanticScorer()
    load_s = time.perf_counter() - start
    functions = reward_list(scorer=scorer, adaptive=AdaptiveSemanticReward())
    references = [random_answer(rng) for _ in range(8)]
    records = reference_records([r for r in references for _ in range(8)], ["open"] * 64)
    timings = []
    for _ in range(repeats):
        completions = [random_completion(rng, random_answer(rng)) for _ in range(64)]
        start = time.perf_counter()
        compute_rewards(functions, records, completions)
        timings.append(time.perf_counter() - start)
    return load_s, timings


def write_predictions(path, rows, seed=0):
    """Writes the synthetic file; returns (open rows, distinct open answers + distinct references)."""
    rng = random.Random(seed)
    datasets = ("vqa_rad", "slake", "pathvqa")
    open_answers, open_references = set(), set()
    with open(path, "w") as file:
        for i in range(rows):
            if i % 2:
                answer, prediction, kind = rng.choice(("yes", "no")), rng.choice(("yes", "no", "Yes.")), "closed"
            else:
                answer, prediction, kind = random_answer(rng), random_answer(rng), "open"
                open_answers.add(prediction)
                open_references.add(answer)
            row = {"id": str(i), "question": "What is shown?", "answer": answer, "answer_type": kind,
                   "prediction": random_completion(rng, prediction), "dataset": datasets[i % 3]}
            file.write(json.dumps(row) + "\n")
    return rows - rows // 2, len(open_answers) + len(open_references)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Scoring speed of rewards.py and evaluate.py.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="lines of the synthetic predictions file")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of the 64-completion reward")
    args = parser.parse_args(argv)

    load_s, timings = bench_group_rewards(args.repeats)
    print(f"encoder load: {load_s:.2f} s")
    print(f"compute_rewards, 64 completions vs 8 references, adaptive semantic: median "
          f"{statistics.median(timings):.3f} s over {len(timings)} runs\n"
          f"  (first run, which also encodes the references: {timings[0]:.3f} s; slowest {max(timings):.3f} s)")

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "predictions.jsonl")
        n_open, n_strings = write_predictions(path, args.rows)
        command = [sys.executable, "evaluate.py", "--predictions", path, "--out", os.path.join(folder, "m.json")]
        start = time.perf_counter()
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=here)
        print(f"python evaluate.py --predictions FILE, {args.rows} lines ({n_open} open, {n_strings} distinct "
              f"strings to encode): {time.perf_counter() - start:.1f} s end to end")


if __name__ == "__main__":
    main()
