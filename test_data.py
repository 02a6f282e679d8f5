"""Tests for data.py: each loader on fixture files in the real formats, and every bad-input
message (the phantom dataset: test_phantom.py). Run: python -m pytest test_data.py -q"""

import argparse
import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import data
from data import DataError, load_dataset, load_image
from records import one_line, run_script


# loaders on fixture files in the real formats


def png(path, shade=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("L" if shade % 2 else "RGB", (6, 4), shade).save(path)


def write_json(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump(rows, file)


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        file.writelines((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def vqa_rad(tmp_path, rows=None):
    root = tmp_path / "vqa_rad"
    if rows is None:
        rows = [{"qid": i, "image_name": f"synpic{i}.jpg", "question": f"Is there a mass {i}?",
                 "answer": "Yes" if i % 2 else "left lung", "answer_type": "CLOSED" if i % 2 else "OPEN",
                 "image_organ": "CHEST", "phrase_type": "freeform"} for i in range(40)]
    for row in rows:
        if "image_name" in row:
            png(str(root / "images" / row["image_name"]), row["qid"])
    write_json(str(root / "train.json"), rows)
    write_json(str(root / "test.json"), rows[:3])
    return str(root)


def test_vqa_rad_and_held_out_val(tmp_path):
    root = vqa_rad(tmp_path)
    train, val = load_dataset("vqa_rad", "train", root), load_dataset("vqa_rad", "val", root)
    assert [r.id for r in val] == ["vqa_rad-val-19", "vqa_rad-val-39"]  # every 20th
    assert len(train) == 38 and not {r.question for r in train} & {r.question for r in val}
    first = train[0]
    assert (first.id, first.question, first.answer, first.answer_type, first.dataset, first.cot) == \
        ("vqa_rad-train-0", "Is there a mass 0?", "left lung", "open", "vqa_rad", None)
    assert train[1].answer_type == "closed" and first.image == os.path.join(root, "images", "synpic0.jpg")
    assert load_image(train[1]).mode == "RGB" and load_image(train[1]).size == (6, 4)
    assert len(load_dataset("vqa_rad", "test", root)) == 3
    assert [r.id for r in load_dataset("vqa_rad", "train", root, limit=2)] == ["vqa_rad-train-0", "vqa_rad-train-1"]
    assert [r.id for r in load_dataset("vqa_rad", "train", root, offset=37, limit=2)] == ["vqa_rad-train-38"]


def test_slake_keeps_english_and_reads_validate(tmp_path):
    root = tmp_path / "slake"
    rows = [{"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Is the lung healthy?",
             "answer": "No", "q_lang": "en", "answer_type": "CLOSED", "qid": 7, "modality": "CT"},
            {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "肺健康吗?", "answer": "否",
             "q_lang": "zh", "answer_type": "CLOSED", "qid": 8},
            {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ is abnormal?",
             "answer": "Lung", "q_lang": "en", "answer_type": "OPEN", "qid": 9}]
    png(str(root / "imgs" / "xmlab1" / "source.jpg"))
    for name in ("train.json", "validate.json", "test.json"):
        write_json(str(root / name), rows)
    records = load_dataset("slake", "val", str(root))
    assert [(r.id, r.answer, r.answer_type) for r in records] == [("slake-val-7", "No", "closed"),
                                                                   ("slake-val-9", "Lung", "open")]
    assert records[0].source == "slake/validate.json record 0 (qid 7)"


def test_pathvqa_jsonl_infers_answer_type_and_image_extension(tmp_path):
    root = tmp_path / "pvqa"
    png(str(root / "images" / "test" / "test_0001.jpg"))
    write_jsonl(str(root / "test.jsonl"), [
        {"image": "test_0001", "question": "Are these neutrophils?", "answer": "yes"},
        {"image": "test_0001", "question": "What have lost their nuclei?", "answer": "neutrophils"}])
    records = load_dataset("pathvqa", "test", str(root))
    assert [(r.id, r.answer_type) for r in records] == [("pathvqa-test-line1", "closed"),
                                                        ("pathvqa-test-line2", "open")]
    assert records[0].image.endswith(os.path.join("images", "test", "test_0001.jpg"))


def test_pmc_vqa_csv_is_open_ended(tmp_path):
    root = tmp_path / "pmc"
    png(str(root / "images" / "PMC1_Fig2_41.jpg"))
    os.makedirs(root, exist_ok=True)
    with open(root / "test.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C",
                         "Choice D", "Answer_label"])
        writer.writerow(["PMC1_Fig2_41.jpg", "What imaging was used?", "MRI", "A:CT", "B:MRI",
                         "C:X-ray", "D:PET", "B"])
        writer.writerow(["PMC1_Fig2_41.jpg", "Is it a CT?", "", "A:yes", "B:no", "", "", "B"])
    with pytest.raises(DataError) as error:
        load_dataset("pmc_vqa", "test", str(root))
    assert str(error.value) == "data.py: pmc/test.csv line 3: field 'Answer' is empty"
    records = load_dataset("pmc_vqa", "test", str(root), skip_bad=True)
    assert [(r.id, r.question, r.answer, r.answer_type) for r in records] == [
        ("pmc_vqa-test-line2", "What imaging was used?", "MRI", "open")]
    records = load_dataset("pmc_vqa", "test", str(root), skip_bad=True, pmc_choices=True)
    assert [(r.question, r.answer_type) for r in records] == [
        ("What imaging was used? Choices: A:CT B:MRI C:X-ray D:PET", "closed")]
    # PMC-VQA ships no validation file: val is every val_every-th train record
    os.rename(root / "test.csv", root / "train.csv")
    assert [r.id for r in load_dataset("pmc_vqa", "val", str(root), skip_bad=True, val_every=1)] == [
        "pmc_vqa-val-line2"]


def test_generic_json_with_field_map_cot_and_single_file(tmp_path):
    root = tmp_path / "mine"
    png(str(root / "pics" / "a.png"))
    write_jsonl(str(root / "train.jsonl"), [
        {"q": "Is it normal?", "a": "No.", "img": "pics/a.png", "rationale": "A dark spot."},
        {"q": "Where?", "a": "apex", "img": "pics/a.png", "why": "Top.", "answer_type": "OPEN"},
        {"q": "Which side?", "a": "left", "img": "pics\\a.png", "answer_type": " Closed "}])  # Windows path
    records = load_dataset("json", "train", str(root), field_map=data.parse_field_map(
        "question=q, answer=a,image=img"))
    assert [(r.question, r.answer, r.answer_type, r.cot) for r in records] == [
        ("Is it normal?", "No.", "closed", "A dark spot."), ("Where?", "apex", "open", None),
        ("Which side?", "left", "closed", None)]
    assert records[2].image == str(root / "pics" / "a.png")
    records = load_dataset("json", "test", str(root / "train.jsonl"), same_file_for_test=True,
                           field_map={"question": "q", "answer": "a", "image": "img", "cot": "why"})
    assert [r.cot for r in records] == [None, "Top.", None]


def test_16_bit_and_float_scans_are_rescaled_not_clipped(tmp_path, capsys):
    root = tmp_path / "mine"
    os.makedirs(root)
    scan = np.array([[1000, 3000], [2000, 5000]], dtype=np.uint16)  # as exported from DICOM
    Image.fromarray(scan).save(root / "scan.png")
    assert Image.open(root / "scan.png").mode == "I;16"
    assert np.asarray(Image.open(root / "scan.png").convert("RGB"))[..., 0].tolist() == [[255, 255], [255, 255]]
    write_jsonl(str(root / "train.jsonl"), [{"image": "scan.png", "question": "Q?", "answer": "no"}])
    record, = load_dataset("json", "train", str(root))
    image = load_image(record)
    assert image.mode == "RGB" and np.asarray(image)[..., 0].tolist() == [[0, 128], [64, 255]]  # (v-1000)/4000*255
    assert (np.asarray(image)[..., 0] == np.asarray(image)[..., 2]).all()
    record, = load_dataset("json", "train", str(root), window=(2000, 4000))  # fixed window, clipped outside
    assert np.asarray(load_image(record))[..., 0].tolist() == [[0, 128], [0, 255]]
    parser = argparse.ArgumentParser()
    data.add_data_args(parser)
    args = parser.parse_args(["--dataset", "json", "--data-root", str(root), "--window", "2000", "4000"])
    assert data.dataset_from_args(args, "train")[0].window == (2000.0, 4000.0)
    assert load_error("json", "train", str(root), window=(4000, 4000)) == \
        "data.py: --window: LOW must be below HIGH, got 4000 4000"
    for mode, dtype in (("I;16B", ">u2"), ("I", np.int32), ("F", np.float32)):
        other = Image.frombytes(mode, (2, 2), scan.astype(dtype).tobytes())
        assert data.to_8bit(other).mode == "L" and np.asarray(data.to_8bit(other)).tolist() == [[0, 128], [64, 255]]
    flat = Image.fromarray(np.full((2, 3), 700, dtype=np.uint16))  # max == min: no division by zero
    assert np.asarray(data.to_8bit(flat)).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert "warning" not in capsys.readouterr().err


def test_8_bit_images_are_read_as_before(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    images = {"RGB": Image.fromarray(pixels), "L": Image.fromarray(pixels[..., 0]),
              "CMYK": Image.fromarray(pixels).convert("CMYK"), "P": Image.fromarray(pixels).quantize(5)}
    for mode, image in images.items():
        path = str(tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
        image.save(path)
        record = data.VQARecord("x", path, "Q?", "no", "closed", "json", window=(0, 1))
        with Image.open(path) as saved:
            assert saved.mode == mode and data.to_8bit(saved) is saved
            assert np.array_equal(np.asarray(load_image(record)), np.asarray(saved.convert("RGB")))


def test_infer_answer_type():
    assert [data.infer_answer_type(a) for a in ("yes", "No.", " YES ", "left", "no effusion", "3")] == \
        ["closed", "closed", "closed", "open", "open", "open"]


# bad input: every message names the file, the record and the field


def load_error(*args, **kwargs):
    with pytest.raises(DataError) as error:
        load_dataset(*args, **kwargs)
    return str(error.value)


def test_missing_image_and_missing_field(tmp_path):
    rows = [{"qid": 1, "image_name": "synpic1.jpg", "question": "Q?", "answer": "yes"},
            {"qid": 2, "question": "Q?", "answer": "yes"},
            {"qid": 3, "image_name": "synpic3.jpg", "question": "Q?"}]
    root = vqa_rad(tmp_path, rows)
    os.remove(os.path.join(root, "images", "synpic1.jpg"))
    assert load_error("vqa_rad", "test", root) == \
        "data.py: vqa_rad/test.json record 0 (qid 1): image_name 'synpic1.jpg' not found under images/"
    png(os.path.join(root, "images", "synpic1.jpg"))
    assert load_error("vqa_rad", "test", root) == \
        "data.py: vqa_rad/test.json record 1 (qid 2): missing field 'image_name'"
    write_json(os.path.join(root, "test.json"), rows[2:])
    assert load_error("vqa_rad", "test", root) == \
        "data.py: vqa_rad/test.json record 0 (qid 3): missing field 'answer'"


def test_malformed_lines_files_and_values(tmp_path):
    root = tmp_path / "mine"
    png(str(root / "a.png"))
    good = {"image": "a.png", "question": "Q?", "answer": "no"}
    write_jsonl(str(root / "train.jsonl"), [good, '{"image": "a.png", "question": ', "[1, 2]",
                                            dict(good, answer_type="maybe", id="x9")])
    assert load_error("json", "train", str(root)) == \
        "data.py: mine/train.jsonl line 2: not valid JSON (Expecting value, column 31)"
    with open(root / "train.jsonl") as file:
        lines = file.readlines()
    write_jsonl(str(root / "train.jsonl"), [lines[2].strip(), lines[3].strip()])
    assert load_error("json", "train", str(root)) == "data.py: mine/train.jsonl line 1: expected a JSON object, got list"
    write_jsonl(str(root / "train.jsonl"), [lines[3].strip()])
    assert load_error("json", "train", str(root)) == \
        "data.py: mine/train.jsonl line 1 (id x9): field 'answer_type' is 'maybe', expected open or closed"
    with open(root / "test.json", "w") as file:
        file.write('[{"image": "a.png",\n "question": }]')
    assert load_error("json", "test", str(root)) == \
        "data.py: mine/test.json: not valid JSON (line 2, column 14: Expecting value)"
    write_jsonl(str(root / "test.json"), [good, good])
    assert load_error("json", "test", str(root)) == ("data.py: mine/test.json: not valid JSON (line 2, "
                                                     "column 1: Extra data; one object per line? then name the file .jsonl)")


def test_unreadable_image_fails_at_load_image(tmp_path):
    root = tmp_path / "mine"
    png(str(root / "a.png"))
    write_jsonl(str(root / "train.jsonl"), [{"image": "a.png", "question": "Q?", "answer": "no"},
                                            {"image": "a.png", "question": "Q?", "answer": "no", "id": 5}])
    broken, good = load_dataset("json", "train", str(root))
    (root / "broken.png").write_bytes(b"not a png")  # spoilt after loading
    broken.image = str(root / "broken.png")
    with pytest.raises(DataError) as error:
        load_image(broken)
    assert str(error.value) == (f"data.py: mine/train.jsonl line 1: image '{root / 'broken.png'}' "
                                "is not an image file PIL can read")
    os.remove(root / "a.png")
    with pytest.raises(DataError) as error:
        load_image(good)
    assert str(error.value) == f"data.py: mine/train.jsonl line 2 (id 5): image '{root / 'a.png'}' not found"


def jpeg_bytes(size=(64, 48)):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_bad_image_files_stop_loading_or_are_skipped(tmp_path, capsys):
    root = tmp_path / "mine"
    png(str(root / "a.png"))
    whole = (root / "a.png").read_bytes()
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_bytes(b"not a png")
    (root / "cut.png").write_bytes(whole[:20])  # the signature and half a header
    (root / "tail.png").write_bytes(whole[:-8])  # header fine, the end chunk cut: found by verify()
    (root / "cut.jpg").write_bytes(jpeg_bytes()[:-200])  # header fine, pixels cut: found by decoding only
    good = {"image": "a.png", "question": "Q?", "answer": "no"}
    reasons = {"empty.png": "is an empty file (0 bytes)", "text.png": "is not an image file PIL can read",
               "cut.png": "is not a readable image (Truncated File Read)",
               "tail.png": "is not a readable image (broken PNG file (chunk b''))"}
    for name, reason in reasons.items():
        write_jsonl(str(root / "train.jsonl"), [good, dict(good, image=name, id="q7")])
        assert load_error("json", "train", str(root)) == \
            f"data.py: mine/train.jsonl line 2 (id q7): image '{name}' {reason}"
    write_jsonl(str(root / "train.jsonl"), [good, dict(good, image="cut.jpg")])
    assert len(load_dataset("json", "train", str(root))) == 2  # the cheap check reads no pixels
    assert load_error("json", "train", str(root), check_images=True).startswith(
        "data.py: mine/train.jsonl line 2: image 'cut.jpg' is not a readable image (image file is truncated")
    write_jsonl(str(root / "train.jsonl"), [dict(good, image=name) for name in (*reasons, "cut.jpg")] + [good])
    assert [r.source for r in load_dataset("json", "train", str(root), skip_bad=True)] == \
        ["mine/train.jsonl line 5", "mine/train.jsonl line 6"]
    assert capsys.readouterr().err == ("data.py: mine/train.jsonl: skipped 4 bad records of 6 (first: "
                                       "mine/train.jsonl line 1: image 'empty.png' is an empty file (0 bytes))\n")
    data.main(["--dataset", "json", "--data-root", str(root), "--skip-bad"])  # python data.py decodes every image
    assert capsys.readouterr().out.startswith("json train: 1 records")


def test_each_image_file_is_opened_once_and_embedded_bytes_are_checked(tmp_path, monkeypatch):
    root = tmp_path / "mine"
    png(str(root / "a.png"))
    png(str(root / "b.png"))
    write_jsonl(str(root / "train.jsonl"), [{"image": f"{name}.png", "question": "Q?", "answer": "no"}
                                            for name in "aabab"])
    opened = []
    monkeypatch.setattr(data, "image_problem", lambda image, decode: opened.append(os.path.basename(image)))
    assert len(load_dataset("json", "train", str(root))) == 5 and opened == ["a.png", "b.png"]
    monkeypatch.undo()
    assert data.image_problem(png_bytes((2, 2), 9)) is None
    assert data.image_problem(jpeg_bytes()[:-200], decode=True).startswith(
        "is not a readable image (image file is truncated")
    assert data.image_problem(b"") == "is an empty file (0 bytes)"


def test_skip_bad_counts_and_reports(tmp_path, capsys):
    root = tmp_path / "mine"
    png(str(root / "a.png"))
    good = {"image": "a.png", "question": "Q?", "answer": "no"}
    write_jsonl(str(root / "train.jsonl"), [good, dict(good, image="gone.png"), good, "{oops", good])
    records = load_dataset("json", "train", str(root), skip_bad=True)
    assert len(records) == 3
    assert capsys.readouterr().err == ("data.py: mine/train.jsonl: skipped 2 bad records of 5 (first: "
                                       "mine/train.jsonl line 2: image 'gone.png' not found under mine/)\n")
    assert load_dataset("json", "train", str(root), skip_bad=True, limit=1) == records[:1]


def test_a_field_of_another_name_points_to_field_map_and_all_bad_is_an_error(tmp_path):
    root = tmp_path / "mine"
    png(str(root / "a.png"))
    write_jsonl(str(root / "train.jsonl"), [{"image_name": "a.png", "question": "Q?", "answer": "no"}] * 2)
    with pytest.raises(DataError) as error:
        load_dataset("json", "train", str(root))
    assert one_line(error.value) == (
        "data.py: mine/train.jsonl line 1: missing field 'image'; --field-map image=FIELD reads it from a field of "
        "another name; --skip-bad skips such records and counts them")
    with pytest.raises(DataError) as error:                      # skipped, every one: nothing left to train on
        load_dataset("json", "train", str(root), skip_bad=True)
    assert one_line(error.value) == (
        "data.py: mine/train.jsonl: all 2 records are bad, none is left (first: mine/train.jsonl line 1: missing "
        "field 'image'); --field-map NAME=FIELD reads fields of other names")
    assert [r.image for r in load_dataset("json", "train", str(root), field_map={"image": "image_name"})] == [
        str(root / "a.png")] * 2


def test_dataset_level_errors(tmp_path):
    root = vqa_rad(tmp_path)
    assert load_error("vqa_rad", "train", str(tmp_path)) == \
        f"data.py: vqa_rad: no train.json or trainset.json or VQA_RAD Dataset Public.json in {tmp_path}"
    assert load_error("slake", "val", str(tmp_path)) == f"data.py: slake: no validate.json in {tmp_path}"
    assert load_error("kvasir", "train", root).startswith("data.py: unknown dataset 'kvasir'")
    assert load_error("vqa_rad", "dev", root).startswith("data.py: vqa_rad: unknown split 'dev'")
    assert load_error("slake", "train") == "data.py: slake: give the folder of its files with --data-root"
    with pytest.raises(DataError, match="'question' is not NAME=FIELD"):
        data.parse_field_map("question")
    with pytest.raises(DataError, match="'prompt=q' is not NAME=FIELD"):
        data.parse_field_map("prompt=q")


def test_an_empty_val_split_is_warned_about(tmp_path, capsys):
    rows = [{"qid": i, "image_name": f"synpic{i}.jpg", "question": "Q?", "answer": "yes"} for i in range(5)]
    root = vqa_rad(tmp_path, rows)
    assert len(load_dataset("vqa_rad", "train", root)) == 5 and capsys.readouterr().err == ""
    assert load_dataset("vqa_rad", "val", root) == []
    assert capsys.readouterr().err == ("data.py: vqa_rad/train.json: warning: the val split is empty (no "
                                       "validation file, and 5 training records are too few to hold out "
                                       "every 20-th)\n")
    assert len(load_dataset("vqa_rad", "val", root, val_every=5)) == 1 and capsys.readouterr().err == ""
    slake = tmp_path / "slake"
    write_json(str(slake / "validate.json"), [{"img_name": "a.png", "question": "肺?", "answer": "否", "q_lang": "zh"}])
    assert load_dataset("slake", "val", str(slake)) == []
    assert capsys.readouterr().err == "data.py: slake/validate.json: warning: the val split is empty (no records)\n"


def test_one_file_for_every_split_is_warned_about_and_refused_as_test(tmp_path, capsys):
    root = tmp_path / "mine"
    png(str(root / "a.png"))
    rows = [{"image": "a.png", "question": f"Q{i}?", "answer": "no"} for i in range(3)]
    write_jsonl(str(root / "mine.jsonl"), rows)
    mine = str(root / "mine.jsonl")
    assert len(load_dataset("json", "train", mine)) == 3 and capsys.readouterr().err == ""  # what one file is for
    assert len(load_dataset("json", "val", mine)) == 3
    assert capsys.readouterr().err == ("data.py: mine.jsonl: warning: one file serves every split, so its val "
                                       "records are the same as its training records\n")
    refusal = ("data.py: mine.jsonl: one file serves every split, so its test records would be the training "
               "records; give a folder with a test file, or --same-file-for-test to use it anyway")
    assert load_error("json", "test", mine) == refusal
    with pytest.raises(SystemExit, match="--same-file-for-test to use it anyway"):
        run_script(lambda: data.main(["--dataset", "json", "--data-root", mine, "--split", "test"]))
    capsys.readouterr()
    data.main(["--dataset", "json", "--data-root", mine, "--split", "test", "--same-file-for-test"])
    out, err = capsys.readouterr()
    assert out.startswith("json test: 3 records") and err == (
        "data.py: mine.jsonl: warning: one file serves every split, so its test records are the same as its "
        "training records\n")
    os.rename(mine, root / "test.jsonl")  # named for test: it is the test file
    assert len(load_dataset("json", "test", str(root / "test.jsonl"))) == 3 and capsys.readouterr().err == ""
    assert len(load_dataset("json", "train", str(root / "test.jsonl"))) == 3
    assert capsys.readouterr().err == ("data.py: test.jsonl: warning: one file serves every split, so its train "
                                       "records are the same as its test records\n")
    assert [data._file_split(name, path) for name, path in (
        ("pmc_vqa", "d/test_clean.csv"), ("pmc_vqa", "d/train_2.csv"), ("pathvqa", "pvqa_val.json"),
        ("vqa_rad", "d/testset.json"), ("hf", "data/test-00000-of-00001.parquet"), ("hf", "disk/validation/"),
        ("hf", "rad.parquet"), ("json", "mine.jsonl"))] == ["test", "train", "val", "test", "test", "val", None, None]


def test_the_official_vqa_rad_file_serves_every_split_without_a_warning(tmp_path, capsys):
    rows = [{"qid": i, "image_name": f"synpic{i}.jpg", "question": "Q?", "answer": "yes",
             "phrase_type": "test_freeform" if i < 3 else "freeform"} for i in range(25)]
    root = vqa_rad(tmp_path, rows)
    os.rename(os.path.join(root, "train.json"), os.path.join(root, data.VQA_RAD_OFFICIAL))
    os.remove(os.path.join(root, "test.json"))
    official = os.path.join(root, data.VQA_RAD_OFFICIAL)
    sizes = [len(load_dataset("vqa_rad", split, official)) for split in data.SPLITS]
    assert sizes == [21, 1, 3] and capsys.readouterr().err == ""


def test_command_line_options(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data.add_data_args(parser)
    assert all(action.help for action in parser._actions if action.dest != "help")
    root = tmp_path / "mine"
    png(str(root / "a.png"))
    write_jsonl(str(root / "val.jsonl"), [{"q": "Q?", "a": "yes", "image": "a.png"}] * 3)
    args = parser.parse_args(["--dataset", "json", "--data-root", str(root), "--field-map",
                              "question=q,answer=a", "--skip-bad", "--limit", "2"])
    records = data.dataset_from_args(args, "val")
    assert len(records) == 2 and records[0].answer_type == "closed"
    assert len(data.dataset_from_args(parser.parse_args([]), "val")) == 100  # phantom by default
    data.main(["--split", "val", "--limit", "20", "--grid", str(tmp_path / "grid.png")])
    assert capsys.readouterr().out.startswith("phantom val: 20 records")
    assert Image.open(tmp_path / "grid.png").size == (448, 448)
    write_jsonl(str(root / "val.jsonl"), [{"q": "Q?", "image": "a.png"}])
    with pytest.raises(SystemExit, match="mine/val.jsonl line 1: missing field 'question'"):
        run_script(lambda: data.main(["--dataset", "json", "--data-root", str(root), "--split", "val"]))


# Hugging Face datasets: parquet files with embedded images, read through the `datasets` library


def png_bytes(size, shade):
    buffer = io.BytesIO()
    Image.new("RGB", size, shade).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hugging_face_parquet_with_embedded_images(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import pyarrow
    import pyarrow.parquet
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    # one file as pyarrow writes it: the image column is a plain struct, read back as {"bytes", "path"}
    table = pyarrow.table({"img": [{"bytes": png_bytes((6, 4), 0), "path": "a.png"},
                                   {"bytes": png_bytes((3, 5), 200), "path": None}],
                           "q": ["Is there a mass?", "Where is it?"], "a": ["Yes", "3"]})
    pyarrow.parquet.write_table(table, tmp_path / "rad.parquet")
    records = load_dataset("hf", "test", str(tmp_path / "rad.parquet"), same_file_for_test=True,
                           field_map=data.parse_field_map("image=img,question=q,answer=a"))
    assert [(r.id, r.question, r.answer, r.answer_type, r.dataset, r.source) for r in records] == [
        ("hf-test-row0", "Is there a mass?", "Yes", "closed", "hf", "rad.parquet row 0"),
        ("hf-test-row1", "Where is it?", "3", "open", "hf", "rad.parquet row 1")]
    assert isinstance(records[0].image, bytes) and [load_image(r).size for r in records] == [(6, 4), (3, 5)]
    # a hub-style folder written by datasets: an Image column, splits named by file, SLAKE's q_lang
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "q_lang": datasets.Value("string")})
    os.makedirs(tmp_path / "slake" / "data")
    for split, shades in (("train", (10, 20, 30)), ("test", (40, 50, 60))):
        datasets.Dataset.from_dict({"image": [Image.new("RGB", (2 + s // 10, 2), s) for s in shades],
                                    "question": [f"Q{s}?" for s in shades], "answer": ["no", "liver", "是"],
                                    "q_lang": ["en", "en", "zh"]}, features=features
                                   ).to_parquet(str(tmp_path / "slake" / "data" / f"{split}-00000-of-00001.parquet"))
    root = str(tmp_path / "slake")
    test = load_dataset("hf", "test", root)
    assert [(r.question, r.answer, r.source) for r in test] == [("Q40?", "no", "slake[test] row 0"),
                                                                ("Q50?", "liver", "slake[test] row 1")]
    assert [load_image(r).getpixel((0, 0)) for r in test] == [(40, 0, 0), (50, 0, 0)]
    assert [r.question for r in load_dataset("hf", "val", root, val_every=2)] == ["Q20?"]  # no validation split
    assert [r.question for r in load_dataset("hf", "train", root, val_every=2)] == ["Q10?"]
    assert [r.question for r in load_dataset("hf", "train", root, hf_split="test")] == ["Q40?", "Q50?"]
    assert load_error("hf", "test", root, hf_split="validation") == \
        "data.py: hf: slake has no split 'validation' (it has train, test); name one with --hf-split"
    datasets.load_dataset(root).save_to_disk(str(tmp_path / "disk"))  # DatasetDict: a folder per split
    assert [r.question for r in load_dataset("hf", "test", str(tmp_path / "disk"))] == ["Q40?", "Q50?"]
    for one_table in (tmp_path / "disk" / "test", next((tmp_path / "disk" / "test").glob("*.arrow"))):
        assert [load_image(r).size for r in load_dataset("hf", "val", str(one_table))] == [(6, 2), (7, 2)]
    pyarrow.parquet.write_table(pyarrow.table({"image": [{"bytes": b"junk", "path": None}], "question": ["Q?"],
                                               "answer": ["no"]}), tmp_path / "train.parquet")
    assert load_error("hf", "train", str(tmp_path / "train.parquet")) == \
        "data.py: train.parquet row 0: image (embedded) is not an image file PIL can read"
    image = Image.new("RGB", (2, 2))
    assert data._embedded_image(image) is image and data._embedded_image({"bytes": None, "path": "a.png"}) == "a.png"
