"""experiments.py without training: the exact commands of a dry run, the stages table from
hand-made evaluate.py JSON (means, sample stds, paired differences worked out by hand), and
resumability (a step whose output is there is skipped; an interrupted training run is resumed).

    python -m pytest test_experiments.py -q
"""

import json
import os

import pytest

import experiments


def commands(chains):
    return [[step.command for step in chain] for chain in chains]


def test_stages_runs_these_commands_per_seed(tmp_path):
    out = str(tmp_path / "st")
    args = experiments.parse_args(["stages", "--seeds", "3", "--out", out, "--grpo-args", "--steps 7",
                                   "--sft-args", "--lr 1e-4", "--cot-select", "64"])
    first, sft_chain, armed = commands(experiments.stage_chains(args))

    def scored(name):
        return [["evaluate.py", "--model", f"{out}/{name}", "--split", split, "--out", f"{out}/{name}.{split}.json"]
                for split in ("test", "ood")]

    assert first == [["pretrain.py", "--instruct"],
                     *[["evaluate.py", "--model", "runs/instruct", "--split", split, "--out", f"{out}/instruct.{split}.json"]
                       for split in ("test", "ood")]]
    assert sft_chain == [["sft.py", "--seed", "3", "--lr", "1e-4", "--out", f"{out}/sft-3"], *scored("sft-3"),
                         ["grpo.py", "--model", f"{out}/sft-3", "--seed", "3", "--steps", "7", "--out", f"{out}/grpo-3"],
                         *scored("grpo-3")]
    assert armed == [["grpo.py", "--model", "runs/instruct", "--seed", "3", "--steps", "7", "--out", f"{out}/I-3"],
                     *scored("I-3"),
                     ["sft.py", "--model", "runs/instruct", "--cot-from", f"{out}/I-3", "--cot-select", "64",
                      "--seed", "3", "--lr", "1e-4", "--out", f"{out}/A-3"], *scored("A-3"),
                     ["grpo.py", "--model", f"{out}/A-3", "--seed", "3", "--steps", "7", "--out", f"{out}/R-3"],
                     *scored("R-3")]
    steps = {step.name: step.steps for chain in experiments.stage_chains(args) for step in chain}
    assert (steps["grpo-3"], steps["I-3"], steps["sft-3"], steps["instruct"]) == (7, 7, 500, None)

    args = experiments.parse_args(["stages", "--seeds", "0", "--out", out, "--a-start", "I", "--splits", "test"])
    armed = experiments.stage_chains(args)[2]
    assert armed[2].command[:5] == ["sft.py", "--model", f"{out}/I-0", "--cot-from", f"{out}/I-0"]
    assert [step.name for step in armed] == ["I-0", "I-0.test", "A-0", "A-0.test", "R-0", "R-0.test"]


def test_the_ablation_keeps_the_commands_of_ablation_py_and_adds_the_augmented_arm(tmp_path):
    out = str(tmp_path / "ab")
    args = experiments.parse_args(["ablation", "--seeds", "1", "--out", out, "--grpo-args", "--steps 5"])
    first, *variants = commands(experiments.ablation_chains(args))
    assert first == [["grpo.py", "--model", "runs/instruct", "--seed", "0", "--steps", "5", "--out", f"{out}/armed-i"],
                     ["sft.py", "--cot-from", f"{out}/armed-i", "--cot-augment", "--cot-select", "512", "--seed", "0",
                      "--out", f"{out}/augment-sft"]]
    # ablation.py ran grpo.main(["--model", sft, *variant, "--seed", s, "--out", out, "--phantom-wording", w,
    # "--save-every", "0", *rest]): the same options
    tail = ["--seed", "1", "--phantom-wording", "random", "--save-every", "0", "--steps", "5"]
    assert variants == [
        [["grpo.py", "--model", "runs/sft", "--reward", "text", *tail, "--out", f"{out}/text-seed1"]],
        [["grpo.py", "--model", "runs/sft", "--reward", "text+semantic", *tail, "--out", f"{out}/text+semantic-seed1"]],
        [["grpo.py", "--model", "runs/sft", "--reward", "text+adaptive", *tail, "--out", f"{out}/text+adaptive-seed1"]],
        [["grpo.py", "--model", "runs/sft", "--reward", "text+adaptive", "--dynamic-sampling", *tail,
          "--out", f"{out}/text+adaptive+dynamic-seed1"]],
        [["grpo.py", "--model", f"{out}/augment-sft", "--reward", "text+adaptive", *tail,
          "--out", f"{out}/text+adaptive+augment-seed1"]]]
    args = experiments.parse_args(["ablation", "--out", out, "--variants", "text+adaptive+augment", "--augment-from", "runs/I"])
    assert commands(experiments.ablation_chains(args))[0][0][:3] == ["sft.py", "--cot-from", "runs/I"]


def write_scores(path, closed, semantic, reasoning=None):
    """An evaluate.py --out JSON of one phantom model (fractions), `reasoning` only if given."""
    phantom = {"closed": {"accuracy": closed}, "open": {"semantic": semantic, "rouge1": 0.5, "concept": None}}
    if reasoning:
        phantom["reasoning"] = {"fact_accuracy": reasoning[0], "consistency": reasoning[1], "n": 10}
    with open(path, "w") as f:
        json.dump({"closed": {"accuracy": closed}, "by_dataset": {"phantom": phantom}}, f)


def test_the_stages_table_gives_mean_sample_std_and_paired_differences(tmp_path):
    out = str(tmp_path)
    sft, grpo = [0.60, 0.62, 0.67], [0.65, 0.66, 0.70]   # GRPO − SFT: +5, +4, +3 points
    for seed in range(3):
        write_scores(f"{out}/sft-{seed}.test.json", sft[seed], 0.8)
        write_scores(f"{out}/grpo-{seed}.test.json", grpo[seed], 0.9, reasoning=(0.5 + seed / 10, 1.0))
    write_scores(f"{out}/instruct.test.json", 0.40, 0.7)
    write_scores(f"{out}/I-0.test.json", 0.45, 0.7)
    write_scores(f"{out}/I-2.test.json", 0.41, 0.7)   # seed 1 of stage I not measured
    results = experiments.stage_results(out, [0, 1, 2])
    assert results["SFT"]["test"]["closed acc"] == pytest.approx([60, 62, 67])
    table = experiments.stages_markdown(results, [0, 1, 2], seconds=90).splitlines()
    in_domain = table[:next(i for i, line in enumerate(table) if line.startswith("**paired differences per seed, out"))]
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in in_domain if line.startswith("| ")}
    # SFT closed: mean 63.0, deviations -3, -1, +4: sample variance 26 / 2 = 13, std 3.61
    assert table[table.index("**in-domain (test split)**") + 4].startswith("| SFT | 63.0 ± 3.6 | 80.0 ± 0.0 | 50.0 ± 0.0 | — | — | — |")
    assert "| SFT → GRPO | 67.0 ± 2.6 | 90.0 ± 0.0 | 50.0 ± 0.0 | — | 60.0 ± 10.0 | 100.0 ± 0.0 |" in table
    assert "| instruct | 40.0 | 70.0 | 50.0 | — | — | — |" in table
    assert "| I | 43.0 ± 2.8 | 70.0 ± 0.0 | 50.0 ± 0.0 | — | — | — |" in table
    assert "| I → A → R | — | — | — | — | — | — |" in table
    # paired: GRPO − SFT per seed +5, +4, +3: mean +4.0, sample std 1.0; I − instruct: +5, —, +1
    assert rows["| GRPO − SFT"][0] == "+4.0 ± 1.0 (+5.0, +4.0, +3.0)"
    assert rows["| I − instruct"][0] == "+3.0 ± 2.8 (+5.0, —, +1.0)"
    assert rows["| A − I"][0] == "—"
    assert table[-1].startswith("Wall time of this command: 1.5 min")
    ood = table.index("**out-of-domain (ood split)**")
    assert table[ood + 4] == "| SFT | — | — | — | — | — | — |"   # no ood scores written


def test_a_step_with_its_output_is_skipped_and_an_interrupted_run_resumed(tmp_path, capsys):
    done_dir, partial_dir = tmp_path / "done", tmp_path / "partial"
    for folder, step in ((done_dir, 5), (partial_dir, 2)):
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps({"step": step}))
    fails = ["-c", "raise SystemExit(3)"]
    done = experiments.Step("done", [*fails, "--out", str(done_dir)], str(done_dir), steps=5)
    partial = experiments.Step("partial", ["grpo.py", "--steps", "5", "--out", str(partial_dir)], str(partial_dir), steps=5)
    assert (done.state(), done.to_run()) == ("done", None)
    assert (partial.state(), partial.to_run()) == ("partial", ["grpo.py", "--resume", str(partial_dir), "--steps", "5"])
    early = experiments.Step("early", ["sft.py", "--out", str(tmp_path / "early")], str(tmp_path / "early"), steps=5)
    assert early.to_run() == ["sft.py", "--out", str(tmp_path / "early")]
    (tmp_path / "early.log.jsonl").write_text('{"step": 1}\n')   # stopped before its first checkpoint
    assert (early.state(), early.to_run()) == ("todo", ["sft.py", "--out", str(tmp_path / "early"), "--overwrite"])

    scores = str(tmp_path / "done.test.json")
    scored = experiments.Step("scored", ["-c", "raise SystemExit(4)", "--model", str(done_dir)], scores)
    assert scored.state() == "todo"
    with open(scores, "w") as f:
        f.write('{"n": 3')   # cut off mid-write: scored again
    assert scored.state() == "todo"
    with open(scores, "w") as f:
        f.write('{"n": 3}')
    os.utime(done_dir / "meta.json", (0, 0))   # the checkpoint is older than its scores
    assert scored.state() == "done"

    marker = tmp_path / "ran"
    runs = experiments.Step("runs", ["-c", f"import os; open({str(marker)!r}, 'w').write(os.environ['OMP_NUM_THREADS'])"],
                            str(tmp_path / "runs.json"))
    (tmp_path / "times.json").write_text('{"earlier": 7.0}')   # a step of an earlier, interrupted run
    times = experiments.run_chains([[done], [scored, runs]], str(tmp_path), jobs=2)
    assert list(times) == ["earlier", "runs"] and marker.read_text() == "1"
    assert json.loads((tmp_path / "times.json").read_text()) == times
    assert (tmp_path / "logs" / "runs.log").read_text().startswith("$ python -c")
    assert "done python -c 'raise SystemExit(3)'" in capsys.readouterr().out

    damaged = ["-c", "import sys; print('working\\r', end=''); sys.exit('sft.py: runs/x: damaged')"]   # its one line
    fails_first = experiments.Step("fails", [*damaged, "--out", str(tmp_path / "x")], str(tmp_path / "x"))
    needs_it = experiments.Step("needs", ["-c", "raise SystemExit(5)", "--model", str(tmp_path / "x")], str(tmp_path / "n.json"))
    other = experiments.Step("other", ["-c", "pass"], str(tmp_path / "other.json"))
    with pytest.raises(SystemExit, match=r"failed: fails \(exit 1: sft.py: runs/x: damaged; see .*fails.log\)$"):
        experiments.run_chains([[fails_first], [needs_it], [other]], str(tmp_path), jobs=1)
    assert "needs: not run, it needs fails, which failed" in capsys.readouterr().out
    assert (tmp_path / "logs" / "other.log").exists() and not (tmp_path / "logs" / "needs.log").exists()


def test_the_ablation_table_gives_each_arm_mean_and_sample_std():
    def metrics(closed):
        return {"n": 4, "closed": {"accuracy": closed}, "open": {"semantic": 0.9, "rouge1": 0.4, "bleu1": None,
                                                                 "concept": 0.7}, "format": 1.0}
    results = {"sft": {"metrics": [metrics(0.45)]}, "augment-sft": {"metrics": [metrics(0.48)]},
               "text+adaptive+augment": {"metrics": [metrics(0.5), metrics(0.6)],
                                         "training": [{"draws": 1.0}, {"draws": 2.0}]}}
    lines = experiments.format_ablation(results, experiments.parse_args(["ablation", "--seeds", "0", "1"])).splitlines()
    assert lines[0] == "phantom test split (4 records), mean ± sample std (ddof=1) over seeds [0, 1]; metrics in %"
    # closed 50 and 60: mean 55, sample std sqrt(50) = 7.07; BLEU-1 not measured
    assert lines[2].split() == ["sft", "45.0", "90.0", "40.0", "—", "70.0", "100.0"]
    assert lines[3].split()[:2] == ["augment-sft", "48.0"]
    assert lines[4].split() == ["text+adaptive+augment", "55.0", "±", "7.1", "90.0", "±", "0.0", "40.0", "±", "0.0", "—",
                                "70.0", "±", "0.0", "100.0", "±", "0.0"]
    assert lines[-1].split() == ["text+adaptive+augment", "-", "-", "-", "-", "1.5000"]   # only draws logged


def test_factors_runs_each_arm_from_its_seeds_sft_with_the_stages_runs_first(tmp_path):
    out, stages = str(tmp_path / "f"), str(tmp_path / "st")
    args = experiments.parse_args(["factors", "--seeds", "4", "--out", out, "--stages", stages,
                                   "--grpo-args", "--steps 9", "--sft-args", "--steps 8", "--splits", "test"])
    first, *chains = commands(experiments.factor_chains(args))
    assert first == [["pretrain.py", "--instruct"], ["sft.py", "--seed", "4", "--out", f"{stages}/sft-4"],
                     ["evaluate.py", "--model", f"{stages}/sft-4", "--split", "test", "--out", f"{stages}/sft-4.test.json"]]
    trained = {os.path.relpath(chain[0][-1], tmp_path): chain[0] for chain in chains}
    sft, alike = f"{stages}/sft-4", ["--closed-semantic", "zero"]
    # the stages' own runs keep the stages' commands (no --grpo-args: they are the stages experiment's)
    assert trained["st/grpo-4"] == ["grpo.py", "--model", sft, "--seed", "4", "--out", f"{stages}/grpo-4"]
    assert trained["st/I-4"] == ["grpo.py", "--model", "runs/instruct", "--seed", "4", "--out", f"{stages}/I-4"]
    tail = ["--seed", "4", "--steps", "9"]
    assert trained["f/base-4"] == ["grpo.py", "--model", "runs/base", *tail, "--out", f"{out}/base-4"]
    assert trained["f/grpo-4"] == ["grpo.py", "--model", sft, *alike, *tail, "--out", f"{out}/grpo-4"]
    assert trained["f/dr_grpo-4"] == ["grpo.py", "--model", sft, "--loss-type", "dr_grpo", *alike, *tail,
                                    "--out", f"{out}/dr_grpo-4"]
    assert trained["f/judge-4"] == ["grpo.py", "--model", sft, "--judge", "oracle", "--judge-weight", "1", *alike, *tail,
                                  "--out", f"{out}/judge-4"]
    assert trained["f/cwr-4"][:5] == ["grpo.py", "--model", sft, "--cwr-weight", "1"]
    control = ["--train-offset", "6000", "--cot-records", "3200", "--batch-size", "16", "--lr", "3e-4"]
    assert trained["f/sft-own-4"] == ["sft.py", "--model", sft, *control, "--steps", "200", "--cot-from", sft,
                                      "--seed", "4", "--steps", "8", "--out", f"{out}/sft-own-4"]
    assert trained["f/sft-own-long-4"][11:17] == ["--steps", "800", "--cot-from", sft, "--cot-samples", "8"]
    assert trained["f/sft-answers-4"][-7:] == ["--answer-only", "--seed", "4", "--steps", "8", "--out", f"{out}/sft-answers-4"]
    assert len(chains) == 12 and all(len(chain) == 2 for chain in chains)   # trained, then scored on test
    args = experiments.parse_args(["factors", "--factors", "bias", "--seeds", "0", "1", "--out", out, "--stages", stages])
    first, *chains = commands(experiments.factor_chains(args))
    assert [c[0][-1] for c in chains] == [f"{out}/{arm}-{s}" for s in (0, 1) for arm in ("grpo", "dr_grpo", "token")]
    assert first[0] == ["sft.py", "--seed", "0", "--out", f"{stages}/sft-0"]   # no instruct model needed


def test_the_factors_table_compares_each_arm_with_the_first_row_per_seed(tmp_path):
    out, stages = tmp_path / "f", tmp_path / "st"
    out.mkdir(), stages.mkdir()
    for seed, (grpo, dr) in enumerate([(0.60, 0.66), (0.62, 0.63), (0.70, 0.73)]):   # Dr. GRPO − GRPO: +6, +1, +3
        write_scores(out / f"grpo-{seed}.test.json", grpo, 0.8, reasoning=(0.5, 0.9))
        write_scores(out / f"dr_grpo-{seed}.test.json", dr, 0.8)
        rows = [{"step": s, "reward": 1.0, "reward_format": 1.0, "think_words_right": 10.0 + seed,
                 **({"think_words_wrong": 20.0} if s > 1 else {})} for s in range(1, 61)]
        (out / f"dr_grpo-{seed}.log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = experiments.parse_args(["factors", "--factors", "bias", "--out", str(out), "--stages", str(stages),
                                   "--splits", "test"])
    results = experiments.factor_results(args)
    bias = results["bias"]
    assert bias["differences"]["Dr. GRPO"]["test"]["closed acc"] == pytest.approx([6, 1, 3])
    assert bias["rows"][1]["log"]["think_words_right"] == [10.0, 11.0, 12.0]
    table = experiments.factors_markdown(results, [0, 1, 2]).splitlines()
    # closed: GRPO 60, 62, 70: mean 64.0, sample std sqrt((16 + 4 + 36) / 2) = 5.29; the log's last 50 steps
    assert "| GRPO | 64.0 ± 5.3 | 80.0 ± 0.0 | 50.0 ± 0.0 | — | 50.0 ± 0.0 | 90.0 ± 0.0 | — | — | — | — |" in table
    assert "| Dr. GRPO | 67.3 ± 5.1 | 80.0 ± 0.0 | 50.0 ± 0.0 | — | — | — | 100.0 ± 0.0 | — | 11.0 ± 1.0 | 20.0 ± 0.0 |" in table
    assert "| token-mean | — | — | — | — | — | — | — | — | — | — |" in table
    assert "| Dr. GRPO | +3.3 ± 2.5 (+6.0, +1.0, +3.0) | +0.0 ± 0.0 (+0.0, +0.0, +0.0) |" in "\n".join(table)
