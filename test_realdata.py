"""data.py on real samples of the published files, read from ../shared/realdata (its README.md says
where each file comes from and lists its quirks). The files belong to their publishers and stay
there: each test copies what it needs to tmp_path and adds a stand-in image for every image not
shipped. Skipped where ../shared/realdata is absent, as in a user's clone.

    python -m pytest test_realdata.py -q
"""

import csv
import json
import os
import shutil

import pytest
from PIL import Image

import evaluate
from data import DataError, load_dataset, load_image

REALDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "realdata")


@pytest.fixture
def real(tmp_path):
    """real(folder, image_dir, names) -> a copy of ../shared/realdata/<folder> in tmp_path, with a
    stand-in 8x8 image for each of `names` that is not there under image_dir."""
    if not os.path.isdir(REALDATA):
        pytest.skip("../shared/realdata is not here (a user's clone)")

    def copy(folder, image_dir="", names=()):
        source, root = os.path.join(REALDATA, folder), tmp_path / folder
        for dirpath, _, files in os.walk(source):
            target = root / os.path.relpath(dirpath, source)
            target.mkdir(parents=True, exist_ok=True)
            for name in files:
                shutil.copyfile(os.path.join(dirpath, name), target / name)
        for name in names:
            path = root / image_dir / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), 128).save(path, format="PNG")
        return str(root)
    return copy


def read_json(root, name):
    with open(os.path.join(root, name), encoding="utf-8") as file:
        return json.load(file)


def read_csv(root, name):
    with open(os.path.join(root, name), encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


# VQA-RAD

OFFICIAL = "VQA_RAD Dataset Public.json"


def test_vqa_rad_official_file_splits_by_phrase_type(real):
    rows = read_json(os.path.join(REALDATA, "vqa_rad"), OFFICIAL)
    root = real("vqa_rad", "images", {row["image_name"] for row in rows})
    for name in ("trainset.json", "testset.json", "VQA_RAD Dataset Public.quirks.json"):
        os.remove(os.path.join(root, name))  # the official file alone, as the release ships it
    marked_test = [str(row["qid"]) for row in rows if row["phrase_type"].startswith("test_")]
    assert len(rows) == 60 and len(marked_test) == 15  # 12 test_freeform + 3 test_para
    for data_root in (root, os.path.join(root, OFFICIAL)):  # the folder, or the file itself
        train, val, test = (load_dataset("vqa_rad", split, data_root) for split in ("train", "val", "test"))
        assert [r.id.removeprefix("vqa_rad-test-") for r in test] == marked_test
        assert (len(train), len(val)) == (43, 2)  # val: every 20th of the 45 training questions
        held = {r.id.split("-")[-1] for r in train + val}
        assert not held & set(marked_test) and len(held) + len(test) == 60
    first = train[0]
    assert (first.id, first.question, first.answer, first.answer_type) == \
        ("vqa_rad-train-0", "Are regions of the brain infarcted?", "Yes", "closed")  # qid "0" is a string
    real_image = load_image(first)  # synpic54610.jpg is shipped
    assert real_image.mode == "RGB" and real_image.size != (8, 8)


def test_vqa_rad_official_quirks(real):
    quirks = read_json(os.path.join(REALDATA, "vqa_rad"), "VQA_RAD Dataset Public.quirks.json")
    root = real("vqa_rad", "images", {row["image_name"] for row in quirks})
    for name in ("trainset.json", "testset.json", OFFICIAL):
        os.remove(os.path.join(root, name))
    os.rename(os.path.join(root, "VQA_RAD Dataset Public.quirks.json"), os.path.join(root, OFFICIAL))  # its records
    records = {r.id: r for r in load_dataset("vqa_rad", "train", root, val_every=100)}
    assert len(records) == 17 and load_dataset("vqa_rad", "test", root) == []  # all 17 are freeform/para
    assert [records[f"vqa_rad-train-{qid}"].answer for qid in (1511, 1568, 1683, 2234, 2235)] == \
        ["4", "2", "2", "12", "12"]  # JSON ints, as text
    assert [records[f"vqa_rad-train-{qid}"].answer_type for qid in (2156, 2157)] == ["closed", "closed"]  # "CLOSED "
    assert records["vqa_rad-train-2239"].answer == "superficial to the patient's skin"
    assert records["vqa_rad-train-1910"].question == "What pathology is seen int his image?"
    assert "\ufffd" in records["vqa_rad-train-2136"].question
    assert sum(r.answer_type == "closed" for r in records.values()) == 6


def test_vqa_rad_re_release(real):
    train_rows = read_json(os.path.join(REALDATA, "vqa_rad"), "trainset.json")
    test_rows = read_json(os.path.join(REALDATA, "vqa_rad"), "testset.json")
    root = real("vqa_rad", "images", {row["image_name"] for row in train_rows + test_rows})
    train, val, test = (load_dataset("vqa_rad", split, root) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (57, 3, 60)  # trainset.json before the official file
    assert [r.answer for r in test] == [str(row["answer"]).strip() for row in test_rows]
    assert [r.answer_type for r in test] == [row["answer_type"].strip().lower() for row in test_rows]



def category_metrics(records, tmp_path, wrong=(), options=()):
    """evaluate.py's JSON for predictions of `records` that are right but where the raw category is in `wrong`."""
    path, out = tmp_path / "predictions.jsonl", tmp_path / "metrics.json"
    rows = [evaluate.prediction_row(r, f"<think>x</think><answer>{'zzz' if r.category in wrong else r.answer}</answer>")
            for r in records]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluate.main(["--predictions", str(path), "--out", str(out), *options])
    return json.loads(out.read_text())["by_dataset"]


def counts(by_category):
    return {name: (summary["open"]["n"], summary["closed"]["n"]) for name, summary in by_category.items()}


def test_vqa_rad_categories_fold_typos_case_and_combined_values(real, tmp_path, fixed_scorers):
    quirks = read_json(os.path.join(REALDATA, "vqa_rad"), "VQA_RAD Dataset Public.quirks.json")
    test_rows = read_json(os.path.join(REALDATA, "vqa_rad"), "testset.json")
    root = real("vqa_rad", "images", {row["image_name"] for row in quirks + test_rows})
    test = load_dataset("vqa_rad", "test", root)  # testset.json
    assert [r.category for r in test] == [row["question_type"] for row in test_rows]
    by_category = category_metrics(test, tmp_path, wrong={"SIZE, PRES"})["vqa_rad"]["by_category"]
    # (open n, closed n), counted by hand from the file: "SIZE, PRES" and "ATTRIB, PRES" count under both parts
    assert counts(by_category) == {"ABN": (5, 7), "ATTRIB": (3, 2), "COLOR": (0, 2), "COUNT": (1, 2), "ORGAN": (0, 1),
                                   "OTHER": (2, 1), "PLANE": (1, 2), "POS": (2, 0), "PRES": (2, 18), "SIZE": (0, 11)}
    assert by_category["SIZE"]["closed"]["accuracy"] == pytest.approx(10 / 11)  # the combined one is wrong
    assert by_category["PRES"]["closed"]["accuracy"] == pytest.approx(17 / 18)
    assert by_category["ATTRIB"]["closed"]["accuracy"] == 1.0
    kept = category_metrics(test, tmp_path, options=["--combined-categories", "keep"])
    assert counts(kept["vqa_rad"]["by_category"])["SIZE, PRES"] == (0, 1)
    assert counts(kept["vqa_rad"]["by_category"])["PRES"] == (2, 16)

    for name in ("trainset.json", "testset.json", OFFICIAL):
        os.remove(os.path.join(root, name))
    os.rename(os.path.join(root, "VQA_RAD Dataset Public.quirks.json"), os.path.join(root, OFFICIAL))
    train = load_dataset("vqa_rad", "train", root, val_every=100)  # the 17 quirks records
    by_category = category_metrics(train, tmp_path, wrong={"PRSE"})["vqa_rad"]["by_category"]
    # Other -> OTHER, ATRIB -> ATTRIB, PRSE -> PRES
    assert counts(by_category) == {"ABN": (1, 0), "ATTRIB": (1, 0), "COUNT": (5, 0), "OTHER": (3, 2), "POS": (0, 1),
                                   "PRES": (1, 3)}
    assert by_category["PRES"]["closed"]["accuracy"] == pytest.approx(2 / 3)
    assert by_category["OTHER"]["open"]["bleu1"] == 1.0


# SLAKE


def test_slake_keeps_exactly_its_english_records_and_reports_the_empty_answer(real, capsys):
    splits = {split: read_json(os.path.join(REALDATA, "slake"), f"{name}.json")
              for split, name in (("train", "train"), ("val", "validate"), ("test", "test"))}
    root = real("slake", "imgs", {row["img_name"] for rows in splits.values() for row in rows})
    with pytest.raises(DataError) as error:
        load_dataset("slake", "train", root)
    assert str(error.value) == "data.py: slake/train.json record 31 (qid 1622): field 'answer' is empty"
    for split, rows in splits.items():
        records = load_dataset("slake", split, root, skip_bad=True)
        english = [row for row in rows if row["q_lang"] == "en" and row["answer"]]
        assert [r.id for r in records] == [f"slake-{split}-{row['qid']}" for row in english]
        assert [(r.answer, r.answer_type) for r in records] == \
            [(row["answer"], row["answer_type"].lower()) for row in english]
    assert [len(load_dataset("slake", split, root, skip_bad=True)) for split in splits] == [36, 35, 35]
    assert "data.py: slake/train.json: skipped 1 bad records of 37 (first: slake/train.json record 31 " \
           "(qid 1622): field 'answer' is empty)" in capsys.readouterr().err


def test_slake_categories_are_its_content_types(real, tmp_path, fixed_scorers):
    rows = read_json(os.path.join(REALDATA, "slake"), "test.json")
    root = real("slake", "imgs", {row["img_name"] for row in rows})
    test = load_dataset("slake", "test", root)
    assert [r.category for r in test] == [row["content_type"] for row in rows if row["q_lang"] == "en"]
    by_dataset = category_metrics(test, tmp_path, wrong={"Organ"})
    by_category = by_dataset["slake"]["by_category"]
    assert counts(by_category) == {"ABNORMALITY": (3, 3), "KG": (5, 0), "MODALITY": (3, 0), "ORGAN": (3, 8),
                                   "POSITION": (5, 0), "SIZE": (3, 2)}  # the 35 English questions, by hand
    assert by_category["ORGAN"]["closed"]["accuracy"] == 0.0 and by_category["SIZE"]["closed"]["accuracy"] == 1.0
    assert by_dataset["slake"]["closed"]["accuracy"] == pytest.approx(5 / 13)


# PathVQA


def test_pathvqa_authors_json(real):
    files = {split: read_json(os.path.join(REALDATA, "pathvqa"), f"pvqa_{split}.json") for split in ("train", "test")}
    root = real("pathvqa", "images/test", [f"{row['img_id']}.jpg" for row in files["test"]])
    real("pathvqa", "images/train", [f"{row['img_id']}.jpg" for row in files["train"]])
    train, val, test = (load_dataset("pathvqa", split, root) for split in ("train", "val", "test"))
    assert (len(test), len(train), len(val)) == (60, 63, 3)  # 60 and 66 questions; no pvqa_val.json here
    for records, rows in ((test, files["test"]), (train + val, files["train"])):
        pairs = [(question, next(iter(label)).strip()) for row in rows
                 for question, label in zip(row["sentf"]["pvqa"], row["labelf"]["pvqa"])]
        assert sorted((r.question, r.answer) for r in records) == sorted(pairs)
        assert sum(r.answer_type == "closed" for r in records) == sum(a in ("yes", "no") for _, a in pairs)
    assert sum(r.answer_type == "closed" for r in test) == 35 and not {r.id for r in train} & {r.id for r in val}
    first = test[0]  # test_0000 has no questions
    assert (first.id, first.question, first.answer, first.answer_type) == (
        "pathvqa-test-test_0001-0", "What is composed of nests of malignant cells that partially recapitulate "
        "the stratified organization of squamous epithelium?", "squamous cell carcinoma", "open")
    assert first.image == os.path.join(root, "images", "test", "test_0001.jpg")
    assert first.source == "pathvqa/pvqa_test.json record 1 question 0 (id test_0001-0)"
    assert "apoptosis" in [r.answer for r in test]  # "apoptosis " in the file


def test_pathvqa_hub_conversion_with_windows_paths(real):
    rows = read_json(os.path.join(REALDATA, "pathvqa", "hf_conversion"), "test.json")
    root = real("pathvqa", "hf_conversion", [row["image_path"].replace("\\", "/") for row in rows])
    records = load_dataset("pathvqa", "test", os.path.join(root, "hf_conversion"), field_map={"image": "image_path"})
    assert len(records) == 60 and [r.answer_type for r in records] == [row["answer_type"].lower() for row in rows]
    assert sum(r.answer_type == "closed" for r in records) == 24
    cmyk = next(r for r in records if r.image.endswith("pathvqa_00002.jpg"))
    assert cmyk.image == os.path.join(root, "hf_conversion", "images", "test", "pathvqa_00002.jpg")
    assert Image.open(cmyk.image).mode == "CMYK" and load_image(cmyk).mode == "RGB"


# PMC-VQA


def test_pmc_vqa_v2_letters_become_the_choice_text(real):
    rows = read_csv(os.path.join(REALDATA, "pmc_vqa"), "test_2.csv")
    root = real("pmc_vqa", "images", {row["Figure_path"] for row in rows})
    records = load_dataset("pmc_vqa", "test", root)  # test_2.csv: Answer is the letter
    assert [r.answer for r in records] == [
        "Left Anterior Descending Coronary Artery", "Left anterior descending coronary artery.",
        "Patellar tendon", "MRI", "STIR imaging", "MRI scan", "MRI", "1.5 cm"]
    assert [r.id for r in records[:2]] == ["pmc_vqa-test-62", "pmc_vqa-test-65"]  # the index column
    assert {r.answer_type for r in records} == {"open"}
    choices = load_dataset("pmc_vqa", "test", root, pmc_choices=True)
    assert choices[3].question == ("What is the imaging technique used in the figure? "
                                   "Choices: A:CT B:X-ray C:MRI D:Ultrasound")
    assert (choices[3].answer, choices[3].answer_type) == ("MRI", "closed")


def test_pmc_vqa_v1_clean_test(real):
    rows = read_csv(os.path.join(REALDATA, "pmc_vqa"), "test_clean.csv")
    root = real("pmc_vqa", "images", {row["Figure_path"] for row in rows})
    records = load_dataset("pmc_vqa", "test", os.path.join(root, "test_clean.csv"))
    assert len(records) == 87
    labelled = [row[f"Choice {row['Answer_label']}"].strip()[2:].strip() for row in rows]
    assert [r.answer for r in records] == labelled == [row["Answer"].strip() for row in rows]
    choices = load_dataset("pmc_vqa", "test", os.path.join(root, "test_clean.csv"), pmc_choices=True)
    assert choices[3].question == ("What color represents the harder area in the strain elastography image? "
                                   "Choices: A:Blue B:Red C:Green D:Yellow")
