"""evaluate.py as a researcher reads it: metrics by question category, and ARMed's main table
(models as rows, each dataset's open metrics and closed accuracy as columns) from one command.
The metrics themselves are tested in test_rewards.py; the real datasets' categories in
test_realdata.py; the HTML report in test_report.py.

    python -m pytest test_evaluate.py -q
"""

import csv
import json

import pytest
from PIL import Image

import evaluate
from model import load_model, save_checkpoint
from test_rewards import FixedScorer


@pytest.mark.parametrize("category, combined, parts", [
    ("POS, PRES", "split", ("POS", "PRES")), ("POS, PRES", "keep", ("POS, PRES",)), ("PRES,POS", "split", ("PRES", "POS")),
    ("Other", "split", ("OTHER",)), (" ATRIB ", "split", ("ATTRIB",)), ("PRSE", "split", ("PRES",)),
    ("PRES, PRSE", "split", ("PRES",)), ("Abnormality", "split", ("ABNORMALITY",)), (None, "split", ()),
    ("", "split", ()), ("side", "keep", ("SIDE",))])
def test_category_parts(category, combined, parts):
    assert evaluate.category_parts(category, combined) == parts


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def prediction(dataset, answer_type, answer, said, category=None):
    return {"question": "q", "answer": answer, "prediction": f"<think>t</think><answer>{said}</answer>",
            "answer_type": answer_type, "dataset": dataset, "category": category}


def test_papers_table_from_two_predictions_files_over_two_datasets(tmp_path, fixed_scorers, capsys):
    sft = [prediction("vqa_rad", "closed", "yes", "yes", "PRES"), prediction("vqa_rad", "closed", "no", "yes", "POS, PRES"),
           prediction("vqa_rad", "open", "left lung", "left lung", "POS"), prediction("slake", "closed", "yes", "no"),
           prediction("slake", "open", "liver", "the spleen")]
    grpo = [prediction("vqa_rad", "closed", "yes", "yes"), prediction("vqa_rad", "closed", "no", "no"),
            prediction("vqa_rad", "open", "left lung", "lung"), prediction("slake", "closed", "yes", "yes"),
            prediction("slake", "open", "liver", "liver")]
    paths = [write_jsonl(tmp_path / "sft.jsonl", sft), write_jsonl(tmp_path / "grpo.jsonl", grpo)]
    out = evaluate.main(["--predictions", *paths, "--csv", str(tmp_path / "t.csv"), "--markdown", str(tmp_path / "t.md"),
                         "--out", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == out and set(out["by_model"]) == set(paths)
    by_category = out["by_model"][paths[0]]["by_dataset"]["vqa_rad"]["by_category"]
    assert {name: (c["open"]["n"], c["closed"]["n"], c["closed"]["accuracy"]) for name, c in by_category.items()} == {
        "PRES": (0, 2, 0.5), "POS": (1, 1, 0.0)}  # "POS, PRES" counts under both
    assert "slake" not in [name for name, m in out["by_model"][paths[0]]["by_dataset"].items() if "by_category" in m]

    rows = list(csv.reader(open(tmp_path / "t.csv")))
    header = rows[0]
    assert header[:7] == ["model", "vqa_rad BLEU-1", "vqa_rad ROUGE-1", "vqa_rad BERTScore", "vqa_rad semantic",
                          "vqa_rad recall", "vqa_rad closed acc"]
    assert header[7:13] == [f"slake {name}" for name in ("BLEU-1", "ROUGE-1", "BERTScore", "semantic", "recall",
                                                         "closed acc")]
    assert header[13:] == ["vqa_rad open n", "vqa_rad closed n", "slake open n", "slake closed n"]
    table = {row[0]: dict(zip(header, row)) for row in rows[1:]}
    # by hand: sft vqa_rad closed 1 of 2 right, open exact; slake closed wrong, open "the spleen" vs "liver"
    assert table[paths[0]]["vqa_rad closed acc"] == "50.0" and table[paths[0]]["vqa_rad BLEU-1"] == "100.0"
    assert table[paths[0]]["slake closed acc"] == "0.0" and table[paths[0]]["slake recall"] == "0.0"
    assert table[paths[0]]["slake semantic"] == "50.0"  # FixedScorer: 0.5 for different words
    # grpo: "lung" for "left lung": BLEU-1 exp(1 - 2/1) * 1 = 36.8, recall 1/2, ROUGE-1 2 * 1 * 0.5 / 1.5
    assert table[paths[1]]["vqa_rad BLEU-1"] == "36.8" and table[paths[1]]["vqa_rad recall"] == "50.0"
    assert table[paths[1]]["vqa_rad ROUGE-1"] == "66.7" and table[paths[1]]["slake closed acc"] == "100.0"
    assert table[paths[1]]["vqa_rad closed n"] == "2" and table[paths[1]]["slake open n"] == "1"

    markdown = (tmp_path / "t.md").read_text().splitlines()
    assert markdown[0].startswith("| model | vqa_rad BLEU-1 |") and markdown[1].count("|---") == 13
    assert markdown[2] == "| " + " | ".join(rows[1][:13]) + " |"
    printed = capsys.readouterr().out
    assert "vqa_rad by category" in printed and "questions: vqa_rad 1 open / 2 closed, slake 1 open / 1 closed" in printed
    model_line = next(line for line in printed.splitlines() if line.startswith(paths[1]) and "100.0" in line)
    assert model_line.split()[1:] == [table[paths[1]][name] for name in header[1:13]]


def test_two_checkpoints_over_two_datasets_in_one_command(tmp_path, fixed_scorers, capsys):
    checkpoints = []
    for seed in (0, 1):
        model, processor = load_model("tiny", device="cpu", seed=seed)
        checkpoints.append(str(tmp_path / f"model{seed}"))
        save_checkpoint(model, processor, checkpoints[-1])
    Image.new("RGB", (56, 56), 90).save(tmp_path / "scan.png")
    write_jsonl(tmp_path / "test.jsonl", [{"image": "scan.png", "question": "Is there a lesion?", "answer": "no",
                                           "category": "PRES"},
                                          {"image": "scan.png", "question": "Which organ?", "answer": "liver",
                                           "category": "Organ"}])
    out = evaluate.main(["--model", *checkpoints, "--dataset", "phantom", "json", "--data-root", str(tmp_path),
                         "--limit", "3", "--max-new-tokens", "3", "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert list(out["by_model"]) == checkpoints
    for checkpoint in checkpoints:
        metrics = out["by_model"][checkpoint]
        assert [metrics["by_dataset"][name]["n"] for name in ("phantom", "json")] == [3, 2]
        assert set(metrics["by_dataset"]["json"]["by_category"]) == {"PRES", "ORGAN"}
        for dataset, n in (("phantom", 3), ("json", 2)):  # the predictions, saved beside each checkpoint
            rows = evaluate.read_predictions(f"{checkpoint}.predictions-{dataset}-test.jsonl")
            assert len(rows) == n and all(row["category"] for row in rows)
            again = evaluate.score_predictions(rows, FixedScorer(), FixedScorer())
            assert again["by_dataset"][dataset] == metrics["by_dataset"][dataset]
    lines = printed.splitlines()
    top = next(i for i, line in enumerate(lines) if line.split() == ["phantom", "json"])
    assert lines[top + 1].split() == ["model"] + ["BLEU-1", "ROUGE-1", "BERTScore", "semantic", "recall", "closed",
                                                  "acc"] * 2
    assert [line.split()[0] for line in lines[top + 2:top + 4]] == checkpoints
    assert lines[top + 4] == "questions: phantom 2 open / 1 closed, json 1 open / 1 closed"  # phantom: finding, side_count, kind
    assert "phantom by category" in printed and "json by category" in printed
