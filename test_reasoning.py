"""The reasoning metric (evaluate.py's `reasoning`: fact accuracy and consistency of the <think>,
read with phantom.py's parse_caption, fact_truths and implied_answer) and pass@K (evaluate.py
--pass-at), on hand-made rationales and stubbed samples with values worked out by hand, then on
every reference of the phantom and on the tiny random model.

    python -m pytest test_reasoning.py -q
"""
import json

import numpy as np
import pytest

import evaluate
import reasoning
import phantom
from model import load_model, save_checkpoint

# The image of every hand-made row: a CT of the chest with one nodule, in the patient's left upper quadrant.
COT = "CT of the chest. One nodule: left upper. Asked: the left side; on the left: one lesion."


def row(question, category, answer_type, think, said, dataset="phantom", cot=COT):
    prediction = f"<think>{think}</think><answer>{said}</answer>" if think is not None else said
    return {"question": question, "answer": "ref", "prediction": prediction, "answer_type": answer_type,
            "dataset": dataset, "category": category, "cot": cot}


ROWS = [
    # 6 facts: CT, chest, two (false), nodules, left upper, right lower (false) -> 4 true;
    # two stated, "a pair of lesions" answered: consistent (though the image has one)
    row("How many lesions are there?", "count", "open",
        "CT of the chest. Two nodules: left upper, right lower. There are two lesions.", "a pair of lesions"),
    # the same facts, the TRUE answer: not what the rationale's own facts imply -> inconsistent
    row("How many lesions are there?", "count", "open",
        "CT of the chest. Two nodules: left upper, right lower. There are two lesions.", "one lesion"),
    # 3 facts: MRI (false), chest, no lesion (false) -> 1 true; no lesion stated, so the left
    # side is free: "Yes" (negated phrasing) is consistent
    row("Is the patient's left side free of lesions?", "side", "closed", "MRI of the chest. No lesion.", "Yes"),
    # no readable caption: no facts, not counted in consistency
    row("Is there a lesion on the patient's left side?", "side", "closed", "I see a bright spot.", "yes"),
    # 5 facts: CT, chest, one, mass (false), left upper -> 4 true; "a CT scan of the head?" -> no: consistent
    row("Is this a CT scan of the head?", "scan", "closed", "CT of the chest. One mass: left upper.", "no"),
    # not the phantom: no reasoning block
    row("Is there a fracture?", "PRES", "closed", "CT of the chest. No lesion.", "no", dataset="vqa_rad"),
]


def test_reasoning_on_hand_made_rationales(tmp_path, fixed_scorers, capsys):
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = evaluate.main(["--predictions", str(path), "--out", str(tmp_path / "m.json")])
    # facts 6 + 6 + 3 + 5 = 20, true 4 + 4 + 1 + 4 = 13; consistent 3 of the 4 rows that state facts
    assert out["by_dataset"]["phantom"]["reasoning"] == {"n": 5, "stated": 0.8, "facts": 20, "fact_accuracy": 0.65,
                                                         "consistency": 0.75}
    assert "reasoning" not in out["by_dataset"]["vqa_rad"] and out["reasoning"]["n"] == 5
    assert out["by_dataset"]["phantom"]["by_category"]["COUNT"]["reasoning"]["consistency"] == 0.5
    assert json.loads((tmp_path / "m.json").read_text()) == out
    printed = capsys.readouterr().out.splitlines()
    top = printed.index(next(line for line in printed if line.startswith("dataset")))
    header, lines = printed[top], printed[top + 1:top + 4]
    assert header.split()[-3:] == ["fact", "acc", "consist"]
    assert next(l for l in lines if l.startswith("phantom")).split()[-2:] == ["65.0", "75.0"]
    assert next(l for l in lines if l.startswith("vqa_rad")).split()[-2:] == ["-", "-"]


def test_facts_and_implied_answers_by_hand():
    truth = phantom.parse_caption(COT)
    assert phantom.fact_truths(phantom.parse_caption("CT of the head. Two nodules: left upper, left upper."), truth) \
        == [True, False, False, True, True, True]
    assert phantom.fact_truths(phantom.parse_caption("X-ray of the chest. No lesion."), truth) == [False, True, False]
    assert phantom.parse_question("side", "Is the patient's left side free of lesions?") == (1, {"side": "left"})
    assert phantom.parse_question("count", "Is the patient's left side free of lesions?") is None
    two_left = dict(modality="ct", region="chest", count=2, kind="mass", quadrants=("left upper", "left lower"))
    for kind, question, answer in [
            ("threshold", "Are there more than two lesions?", "no"),
            ("threshold", "Is there at most one lesion?", "no"),
            ("organ_side", "Is the lesion on the side opposite the heart?", "yes"),  # two on the heart's side, not one
            ("kind", "Is the scan free of masses?", "no"), ("kind", "Is there a nodule?", "no"),
            ("finding", "What does the scan show?", "masses"),
            ("side_count", "How many lesions are on the patient's right side?", "0"),
            ("organ_count", "What is the number of lesions on the heart's side?", "2"),
            ("organ_count", "How many lesions are on the same side as the liver?", "0")]:
        assert phantom.implied_answer(kind, *phantom.parse_question(kind, question), two_left) == answer, question


@pytest.mark.parametrize("split, size, wording", [("train", 300, "question"), ("test", 300, "random"),
                                                  ("ood", 100, "random"), ("val", 100, "question")])
def test_every_reference_rationale_is_true_and_consistent(split, size, wording):
    records = phantom.phantom_dataset(split, size=size, wording=wording)
    rows = [evaluate.prediction_row(r, f"<think>{r.cot}</think><answer>{r.answer}</answer>") for r in records]
    scores = reasoning.reasoning_scores(rows, [r.answer for r in records])
    summary = reasoning.reasoning_summary(scores, np.ones(len(rows), dtype=bool))["reasoning"]
    assert summary["n"] == size and summary["stated"] == summary["fact_accuracy"] == summary["consistency"] == 1.0
    assert {r.category for r in records} == set(phantom.CLOSED_QUESTIONS) | set(phantom.OPEN_QUESTIONS)


def test_pass_at_k_summary_by_hand():
    is_open = np.array([False, False, True, True])
    greedy = np.array([1, 0, 0, 1.0])
    sampled = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [1, 1, 0.0]])
    assert evaluate.pass_at_k_summary(is_open, greedy, sampled) == {
        "k": 3, "closed": 1.0, "open_concept": 0.5, "sampled_closed": 1 / 3, "sampled_open_concept": 1 / 3,
        "greedy_closed": 0.5, "greedy_open_concept": 0.5, "n": 4, "closed_n": 2, "open_n": 2}


def test_pass_at_k_with_stubbed_samples(monkeypatch):
    records = phantom.phantom_dataset("test", size=6)
    calls = []

    def answer_records(model, processor, chosen, batch_size, max_new_tokens, blank_images, rt, samples=0,
                       temperature=0.7):
        calls.append((samples, temperature))  # record i's sample j is right where i + j is a multiple of 3
        return [evaluate.prediction_row(r, f"<answer>{r.answer if (i + j) % 3 == 0 else 'wrong'}</answer>")
                for i, r in enumerate(chosen) for j in range(max(samples, 1))]
    monkeypatch.setattr(evaluate, "answer_records", answer_records)
    passed = evaluate.pass_at_k(None, None, records, 2, batch_size=4)
    is_open = [r.answer_type == "open" for r in records]
    right = [[float((i + j) % 3 == 0) for j in range(2)] for i in range(6)]  # i = 1 never: (1, 2) mod 3
    expected = evaluate.pass_at_k_summary(np.array(is_open), np.array([r[0] for r in right]), np.array(right))
    assert calls == [(0, 0.7), (2, 0.7)] and passed == expected
    closed = [i for i in range(6) if not is_open[i]]
    assert passed["closed"] == np.mean([max(right[i]) for i in closed])


def test_pass_at_k_on_the_tiny_model(tmp_path, fixed_scorers, capsys):
    model, processor = load_model("tiny", device="cpu", seed=0)
    save_checkpoint(model, processor, str(tmp_path / "tiny"))
    out = evaluate.main(["--model", str(tmp_path / "tiny"), "--split", "ood", "--limit", "5", "--pass-at", "4",
                         "--pass-size", "3", "--max-new-tokens", "4", "--batch-size", "2",
                         "--out", str(tmp_path / "m.json")])
    passed = out["by_dataset"]["phantom"]["pass_at_k"]
    assert passed["k"] == 4 and passed["n"] == 3 and passed["closed_n"] + passed["open_n"] == 3
    rows = evaluate.read_predictions(str(tmp_path / "m.predictions.jsonl"))
    assert len(rows) == 5 and all(r["id"].startswith("phantom-ood-") and r["cot"] for r in rows)
    greedy = evaluate.answer_scores(rows[:3])["right"]
    is_open = np.array([r["answer_type"] == "open" for r in rows[:3]])
    assert passed["greedy_closed"] == reasoning.masked_mean(greedy, ~is_open)  # the saved greedy answers, the same records
    for key in ("closed", "open_concept"):
        if passed[key] is not None:
            assert passed[key] >= passed[f"sampled_{key}"] and 0 <= passed[key] <= 1
    assert out["by_dataset"]["phantom"]["reasoning"]["n"] == 5
    assert "pass@4 on phantom (3 questions): closed" in capsys.readouterr().out
