"""Medical VQA data: loaders for public sets, and the built-in synthetic dataset (phantom.py), behind
one load_dataset that returns one record type (VQARecord, from records.py).

    records = load_dataset("phantom", "train")              # 6000 synthetic records, no files
    records = load_dataset("slake", "test", "/data/slake")  # SLAKE's English test questions
    records[0] -> VQARecord(id='slake-test-5', image='/data/slake/imgs/xmlab1/source.jpg',
                            question='Is the lung healthy?', answer='No', answer_type='closed', ...)
    image = load_image(records[0])                          # PIL RGB image
    python data.py --dataset slake --data-root /data/slake  # check every record and image first

Layouts under --data-root (a folder; or one file, then used for whatever split is asked: a warning
when that is not the split it is named for, and as test only with --same-file-for-test); the
README's datasets table lists each published file and what is read from it:
    vqa_rad  train.json / test.json (or trainset.json / testset.json): a JSON list with image_name,
             question, answer, answer_type (OPEN/CLOSED), question_type (the category); images in
             images/ (or "VQA_RAD Image Folder").
             Or the official "VQA_RAD Dataset Public.json", all splits in one file: test is the
             records whose phrase_type starts with "test_", train (and val) the others.
    slake    train.json / validate.json / test.json with img_name, question, answer, answer_type,
             q_lang, content_type (the category); only q_lang == "en" is kept; images under imgs/.
    pathvqa  train / val / test .jsonl (or .json list) of {"image", "question", "answer"}, image the
             id of the original release ("train_0422", ".jpg" added); images in images/{split}/.
             Or the authors' pvqa_train / pvqa_val / pvqa_test .json (img_id, sentf, labelf).
    pmc_vqa  train.csv / test.csv / test_clean.csv (v1) or train_2.csv / test_2.csv (v2) with
             Figure_path, Question, Answer, Choice A..D; images in images/ (or figures/). The reference
             is the answer's text: v2's Answer is a letter, mapped to its choice without "B:".
             [reconstructed] Asked open-ended, without the choices (ARMed studies open answers);
             --pmc-choices lists them and scores it closed.
    json     train / val / test .jsonl or .json with image, question, answer and optional id,
             answer_type, cot, category; image paths relative to the file's folder.
    hf       a Hugging Face dataset read with the `datasets` library (optional): a .parquet or
             .arrow file, a folder of them (or of save_to_disk), or a hub id; columns image (embedded
             bytes), question, answer; --hf-split names the split. Rows with q_lang other than en
             are dropped, as for SLAKE.
--field-map renames fields for any loader (question=q,answer=a,image=img,cot=explanation,
category=question_type; a record's category is what evaluate.py breaks its metrics down by). A
missing answer type is inferred (yes/no -> closed); a rationale is read from "cot", "rationale" or
"reasoning". Image paths are looked up under the image folder, then beside the data file, with
Windows separators accepted. [reconstructed] A folder without a validation file (VQA-RAD and
PMC-VQA ship none) gives every 20th training record as "val" (--val-every), and "train" leaves
those out; an empty val split is warned about. 16-bit and float scans are spread over 0..255 by
their own range, or by --window LOW HIGH (to_8bit).

Bad input stops with the file, the record and the field, e.g.
    data.py: vqa_rad/train.json record 17 (qid 42): image_name 'synpic123.jpg' not found under images/
    data.py: slake/test.json record 3 (qid 9): img_name 'xmlab1/source.jpg' is an empty file (0 bytes)
(each image's header and structure are read while loading; --check-images decodes it too) and
skip_bad=True (--skip-bad) skips such records and prints how many to stderr.
"""

import argparse
import csv
import json
import os
import sys

import numpy as np
from PIL import Image

from images import image_problem, open_image, to_8bit, unreadable
from phantom import PHANTOM_SIZES, PHANTOM_SPLITS, WORDINGS, phantom_dataset
from records import SPLITS, DataError, VQARecord, run_script  # the record type, shared with phantom.py

DATASETS = ("phantom", "vqa_rad", "slake", "pathvqa", "pmc_vqa", "json", "hf")
FIELDS = ("id", "image", "question", "answer", "answer_type", "cot", "category")


def infer_answer_type(answer: str) -> str:
    """"Yes." -> "closed"; "left lung" -> "open"."""
    return "closed" if str(answer).strip().lower().rstrip(".!") in ("yes", "no") else "open"


def load_image(record: VQARecord) -> Image.Image:
    """The record's image as RGB (16-bit and float scans rescaled by to_8bit with the record's window);
    an unreadable file raises DataError naming file and record."""
    if isinstance(record.image, Image.Image):
        return to_8bit(record.image, record.window).convert("RGB")
    embedded = isinstance(record.image, bytes)
    try:
        with open_image(record.image) as image:
            return to_8bit(image, record.window).convert("RGB")  # also CMYK JPEGs (PathVQA)
    except FileNotFoundError:
        reason = "not found"
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        reason = unreadable(error)
    image = "embedded image" if embedded else f"image '{record.image}'"
    raise DataError(f"data.py: {record.source or record.id}: {image} {reason}",
                    hint="--check-images --skip-bad finds such images while loading, and skips and counts them")


# Loaders for public datasets: one reader, driven by a table of each dataset's layout.

VQA_RAD_OFFICIAL = "VQA_RAD Dataset Public.json"  # Lau et al.'s release: all splits in one file
JSON_FILES = {split: (f"{split}.jsonl", f"{split}.json") for split in SPLITS}
FORMATS = {  # per dataset: file of each split (first found), its field names, its image folder
    "vqa_rad": dict(
        files={"train": ("train.json", "trainset.json", VQA_RAD_OFFICIAL),
               "test": ("test.json", "testset.json", VQA_RAD_OFFICIAL)},
        fields={"id": "qid", "image": "image_name", "category": "question_type"},
        image_dirs=("images", "VQA_RAD Image Folder")),
    "slake": dict(
        files={"train": ("train.json",), "val": ("validate.json",), "test": ("test.json",)},
        fields={"id": "qid", "image": "img_name", "category": "content_type"}, image_dirs=("imgs",)),
    "pathvqa": dict(files={split: (*JSON_FILES[split], f"pvqa_{split}.json") for split in SPLITS},
                    fields={}, image_dirs=("images/{split}",)),
    "pmc_vqa": dict(
        files={"train": ("train.csv", "train_2.csv"), "test": ("test.csv", "test_2.csv", "test_clean.csv")},
        fields={"id": "index", "image": "Figure_path", "question": "Question", "answer": "Answer"},
        image_dirs=("images", "figures")),
    "json": dict(files=JSON_FILES, fields={}, image_dirs=("",)),
}
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # the hub's split names


def _read_rows(path: str, shown: str):
    """Yield (where, row) from a JSON list, JSONL or CSV file; where is "record 3" or "line 4".

    A malformed JSONL line is yielded as (where, DataError) so the caller may skip it.
    """
    try:
        with open(path, encoding="utf-8", newline="") as file:
            if path.endswith(".csv"):
                reader = csv.DictReader(file)
                yield from ((f"line {reader.line_num}", row) for row in reader)
            elif path.endswith(".jsonl"):
                for number, line in enumerate(file, 1):
                    if line.strip():
                        try:
                            yield f"line {number}", json.loads(line.strip())
                        except json.JSONDecodeError as error:
                            yield f"line {number}", DataError(
                                f"data.py: {shown} line {number}: not valid JSON ({error.msg}, column {error.colno})")
            else:
                rows = json.load(file)
                if not isinstance(rows, list):
                    raise DataError(f"data.py: {shown}: expected a JSON list of records")
                yield from ((f"record {index}", row) for index, row in enumerate(rows))
    except json.JSONDecodeError as error:
        hint = "; one object per line? then name the file .jsonl" if error.msg == "Extra data" else ""
        raise DataError(f"data.py: {shown}: not valid JSON (line {error.lineno}, column {error.colno}: "
                        f"{error.msg}{hint})")
    except UnicodeDecodeError as error:
        raise DataError(f"data.py: {shown}: not UTF-8 text ({error.reason})")


def _text(row: dict, field: str) -> str | None:
    value = row.get(field)
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _image_file(name: str, folders: list[str]) -> str | None:
    """The file an image field names: under each folder in turn (the image folder, then the data
    file's own), Windows separators turned ("images\\test\\x.jpg"), ".jpg" added to a bare id
    (PathVQA: "train_0422"); None when it is nowhere."""
    name = name.replace("\\", "/")
    for folder in folders:
        path = os.path.join(folder, name)
        if not os.path.splitext(name)[1] and not os.path.exists(path):
            path += ".jpg"
        if os.path.isfile(path):
            return path
    return None


def _source(shown: str, where: str, row: dict, fields: dict) -> str:
    """Where a record comes from, for messages: "slake/train.json record 31 (qid 1622)"."""
    native_id = _text(row, fields["id"])
    return f"{shown} {where}" + (f" ({fields['id']} {native_id})" if native_id else "")


def _record(name, split, shown, where, row, fields, image_dirs, image_shown, check_image) -> VQARecord:
    """One row of a file as a VQARecord, or DataError naming the file, the record and the field;
    check_image(path or bytes) says why its image cannot be used (image_problem), or None."""
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"data.py: {shown} {where}: expected a JSON object, got {type(row).__name__}")
    source = _source(shown, where, row, fields)
    for field in ("image", "question", "answer"):
        if row.get(fields[field]) is None:
            raise DataError(f"data.py: {source}: missing field '{fields[field]}'",
                            hint=f"--field-map {field}=FIELD reads it from a field of another name; "
                                 "--skip-bad skips such records and counts them")
        if _text(row, fields[field]) is None:  # SLAKE train qid 1622: "answer": ""
            raise DataError(f"data.py: {source}: field '{fields[field]}' is empty")
    answer = _text(row, fields["answer"])  # VQA-RAD has int answers (4) and stray spaces: text, stripped
    answer_type = (_text(row, fields["answer_type"]) or infer_answer_type(answer)).lower()  # "CLOSED "
    if answer_type not in ("open", "closed"):
        raise DataError(f"data.py: {source}: field '{fields['answer_type']}' is '{answer_type}', "
                        "expected open or closed")
    image = row[fields["image"]]
    if not isinstance(image, Image.Image):  # a path, or an embedded file's bytes (--dataset hf)
        named = f"{fields['image']} (embedded)" if isinstance(image, bytes) else \
            f"{fields['image']} '{_text(row, fields['image'])}'"
        if not isinstance(image, bytes):
            image = _image_file(_text(row, fields["image"]), image_dirs)
            if image is None:
                raise DataError(f"data.py: {source}: {named} not found under {image_shown}")
        if problem := check_image(image):
            raise DataError(f"data.py: {source}: {named} {problem}")
    cot_fields = [fields["cot"]] if "cot" in fields else ["cot", "rationale", "reasoning"]
    cot = next((text for field in cot_fields if (text := _text(row, field))), None)
    native_id = _text(row, fields["id"])
    return VQARecord(f"{name}-{split}-{native_id or where.replace(' ', '')}", image,
                     _text(row, fields["question"]), answer, answer_type, name, cot, source,
                     category=_text(row, fields["category"]))


def _vqa_rad_official_split(row: dict) -> str:
    """The official VQA-RAD file marks its 451 test questions in phrase_type (test_freeform,
    test_para); the other 1797 (freeform, para) are the training questions."""
    return "test" if str(row.get("phrase_type", "")).strip().startswith("test_") else "train"


def _pathvqa_questions(rows, shown: str, fields: dict):
    """PathVQA's own JSON (pvqa_{split}.json: one record per image, its questions in sentf.pvqa and
    their answers in labelf.pvqa as [{answer: 1}, ...]) as one row per question; other rows as they
    are. An image without questions gives no row."""
    for where, row in rows:
        if not (isinstance(row, dict) and "sentf" in row):
            yield where, row
            continue
        questions = (row.get("sentf") or {}).get("pvqa")
        labels = (row.get("labelf") or {}).get("pvqa")
        if not isinstance(questions, list) or not isinstance(labels, list) or len(questions) != len(labels):
            yield where, DataError(f"data.py: {shown} {where}: sentf.pvqa and labelf.pvqa are not two "
                                   "lists of the same length")
            continue
        for number, (question, label) in enumerate(zip(questions, labels)):
            answer = max(label, key=label.get) if isinstance(label, dict) and label else ""  # top-scored
            yield f"{where} question {number}", {fields["id"]: f"{row.get('img_id')}-{number}",
                                                 fields["image"]: row.get("img_id"),
                                                 fields["question"]: question, fields["answer"]: answer}


def _choice_text(value) -> str:
    """" B: Left  anterior " -> "Left anterior": a PMC-VQA choice without its letter and stray spaces."""
    text = " ".join(str(value).split())
    return text[2:].lstrip() if text[:2] in ("A:", "B:", "C:", "D:") else text


def _pmc_vqa_row(row: dict, fields: dict, pmc_choices: bool, source: str) -> dict:
    """A PMC-VQA row whose answer is the choice's text in either release: v1 (train.csv, test.csv,
    test_clean.csv) has the text in Answer, v2 (train_2.csv, test_2.csv) the letter ("B"), whose text
    is in Choice B ("B:Left anterior descending coronary artery")."""
    choices = {letter: _choice_text(row.get(f"Choice {letter}") or "") for letter in "ABCD"}
    answer = row.get(fields["answer"])
    if answer is not None:
        answer = _choice_text(answer)
        if answer in choices:
            if not choices[answer]:
                raise DataError(f"data.py: {source}: {fields['answer']} is '{answer}' but field "
                                f"'Choice {answer}' is empty")
            answer = choices[answer]
        row = row | {fields["answer"]: answer}
    if pmc_choices and _text(row, fields["question"]):
        listed = " ".join(f"{letter}:{text}" for letter, text in choices.items() if text)
        row = row | {fields["question"]: f"{_text(row, fields['question'])} Choices: {listed}",
                     fields["answer_type"]: "closed"}
    return row


def _embedded_image(value):
    """A Hugging Face image cell as a record's image: {"bytes": b"...", "path": ...} -> the bytes
    (decoded when used); {"bytes": None, "path": "a.jpg"} -> the path; a PIL image as it is."""
    return (value.get("bytes") or value.get("path")) if isinstance(value, dict) else value


def _hf_rows(root: str, split: str, hf_split: str | None, fields: dict):
    """(shown, rows, hold_out) of a Hugging Face dataset through the `datasets` library: a .parquet
    or .arrow file (used for any split), a save_to_disk folder, a folder of parquet files, or a hub
    id. rows yields ("row 3", dict) with embedded images as bytes, decoded only when used."""
    try:
        import datasets  # optional dependency: only --dataset hf needs it
    except ImportError:
        raise DataError("data.py: hf: --dataset hf needs the datasets library (pip install datasets)") from None
    name = os.path.basename(os.path.normpath(root))
    try:
        if os.path.isfile(root) or os.path.isfile(os.path.join(root, "state.json")):  # one table: any split
            kind = "arrow" if root.endswith(".arrow") else "parquet"
            table = (datasets.load_from_disk(root) if os.path.isdir(root)
                     else datasets.load_dataset(kind, data_files=root, split="train"))
            tables, wanted, hold_out = {split: table}, split, None
        else:
            tables = (datasets.load_from_disk(root) if os.path.isfile(os.path.join(root, "dataset_dict.json"))
                      else datasets.load_dataset(root))
            has_val = hf_split is not None or HF_SPLITS["val"] in tables
            wanted = hf_split or HF_SPLITS["train" if split == "val" and not has_val else split]
            hold_out = None if has_val or split == "test" else split
    except (OSError, ValueError) as error:  # datasets' not-found and connection errors subclass these
        raise DataError(f"data.py: hf: cannot read {root}: {str(error).splitlines()[0]}") from None
    if wanted not in tables:
        raise DataError(f"data.py: hf: {name} has no split '{wanted}' (it has {', '.join(tables)}); "
                        "name one with --hf-split")
    table = tables[wanted]
    if isinstance(table.features.get(fields["image"]), datasets.Image):
        table = table.cast_column(fields["image"], datasets.Image(decode=False))  # keep the bytes
    shown = name if os.path.isfile(root) else f"{name}[{wanted}]"
    rows = ((f"row {index}", row | {fields["image"]: _embedded_image(row.get(fields["image"]))})
            for index, row in enumerate(table))
    return shown, rows, hold_out


def _file_split(name: str, path: str) -> str | None:
    """The split a data file is named for: "test" for test_clean.csv, pvqa_test.json or the hub's
    test-00000-of-00001.parquet (or a save_to_disk folder test/); None for mine.jsonl."""
    base = os.path.basename(os.path.normpath(path))
    if name == "hf":
        stem = os.path.splitext(base)[0].split("-")[0]
        return next((split for split, hub in HF_SPLITS.items() if stem == hub), None)
    return next((split for split in SPLITS if base in FORMATS[name]["files"].get(split, ())), None)


def _one_file_for_every_split(name: str, split: str, root: str, same_file_for_test: bool) -> None:
    """A single file as --data-root gives the same records for whatever split is asked (but the
    official VQA-RAD file, split by phrase_type). Asked for the split it is named for, fine; for
    another, a warning; for test, a DataError unless same_file_for_test (--same-file-for-test)."""
    named, shown = _file_split(name, root), os.path.basename(os.path.normpath(root))
    if named == split or (split == "train" and named is None):  # mine.jsonl: train on it, no surprise
        return
    if split == "test" and not same_file_for_test:
        raise DataError(f"data.py: {shown}: one file serves every split, so its test records would be "
                        "the training records; give a folder with a test file, or --same-file-for-test "
                        "to use it anyway")
    print(f"data.py: {shown}: warning: one file serves every split, so its {split} records are the "
          f"same as its {'test' if named == 'test' else 'training'} records", file=sys.stderr)


def _split_file(name: str, split: str, root: str) -> tuple[str, str | None]:
    """(file holding the split, None or the side of the train/val hold-out the split keeps)."""
    if os.path.isfile(root):
        return root, None
    files = FORMATS[name]["files"]

    def first(of_split):
        paths = (os.path.join(root, candidate) for candidate in files.get(of_split, ()))
        return next((path for path in paths if os.path.isfile(path)), None)

    has_val = first("val") is not None
    path = first("train" if split == "val" and not has_val else split)
    if path is None:
        wanted = " or ".join(files.get(split) or files["train"])
        raise DataError(f"data.py: {name}: no {wanted} in {root}")
    return path, None if has_val or split == "test" else split


def load_dataset(name: str, split: str = "train", root: str | None = None, *,
                 skip_bad: bool = False, limit: int | None = None, offset: int = 0,
                 field_map: dict | None = None, seed: int = 0, val_every: int = 20,
                 pmc_choices: bool = False, phantom_wording: str = "question",
                 hf_split: str | None = None, check_images: bool = False,
                 window: tuple[float, float] | None = None,
                 same_file_for_test: bool = False) -> list[VQARecord]:
    """Records of one split of a dataset (see the module docstring for each layout).

    `offset` drops the first N good records, then `limit` keeps the next N (phantom: `limit` is
    the split's size, and an offset draws that many more images); `seed` and `phantom_wording`
    only affect phantom (phantom_dataset's `seed` and `wording`); `hf_split` names the split of a
    Hugging Face dataset (default: train, validation, test).
    Each image file is opened once here (image_problem; `check_images` decodes it too), so a bad
    one stops loading, or with skip_bad is counted, not a training run hours later. `window` is
    the raw range of 16-bit and float scans (to_8bit; default each image's own min..max).
    A single file as `root` serves every split: warned, and refused as test unless
    `same_file_for_test`. An empty val split is warned about.
    [reconstructed] Without a validation file, every `val_every`-th training record is "val".
    [reconstructed] PMC-VQA is open-ended unless `pmc_choices`: then the question lists the four
    choices ("... Choices: A:CT B:MRI C:PET D:X-ray") and the answer is scored as closed.
    """
    if offset < 0:
        raise DataError(f"data.py: {name}: the offset must be 0 or more, got {offset}")
    if name == "phantom":
        size = PHANTOM_SIZES.get(split, 0) if limit is None else limit
        return phantom_dataset(split, seed, offset + size, wording=phantom_wording)[offset:]
    if name not in DATASETS:
        raise DataError(f"data.py: unknown dataset '{name}' (use one of {', '.join(DATASETS)})")
    if split not in SPLITS:
        raise DataError(f"data.py: {name}: unknown split '{split}' (use one of {', '.join(SPLITS)})")
    if root is None:
        raise DataError(f"data.py: {name}: give the folder of its files with --data-root")
    if window is not None and not window[0] < window[1]:
        raise DataError(f"data.py: --window: LOW must be below HIGH, got {window[0]:g} {window[1]:g}")
    fmt = FORMATS.get(name, dict(fields={}))
    fields = {field: field for field in FIELDS if field != "cot"} | fmt["fields"] | (field_map or {})
    one_table = os.path.isfile(root) or name == "hf" and os.path.isfile(os.path.join(root, "state.json"))
    if one_table and not (name == "vqa_rad" and os.path.basename(root) == VQA_RAD_OFFICIAL):
        _one_file_for_every_split(name, split, root, same_file_for_test)
    official = False
    if name == "hf":
        shown, rows, hold_out = _hf_rows(root, split, hf_split, fields)
        image_dirs = [root if os.path.isdir(root) else os.path.dirname(os.path.abspath(root))]
        image_shown = os.path.join(os.path.basename(os.path.normpath(image_dirs[0])), "")
    else:
        path, hold_out = _split_file(name, split, root)
        folder = os.path.dirname(os.path.abspath(path))
        shown = os.path.join(os.path.basename(folder), os.path.basename(path))
        official = os.path.basename(path) == VQA_RAD_OFFICIAL
        if official:  # one file for every split: test is what phrase_type marks, val held out of train
            hold_out, side = (None, "test") if split == "test" else (split, "train")
        subs = [d.format(split="train" if hold_out else split) for d in fmt["image_dirs"]]  # val held out of train
        image_sub = next((d for d in subs if os.path.isdir(os.path.join(folder, d))), subs[0])
        image_shown = os.path.join(image_sub, "") if image_sub else os.path.basename(folder) + "/"
        image_dirs = [os.path.join(folder, image_sub), folder]
        rows = _read_rows(path, shown)
        if name == "pathvqa":
            rows = _pathvqa_questions(rows, shown, fields)
    checked = {}  # path -> image_problem: a SLAKE image is asked about by ~20 questions, opened once

    def check_image(image):
        if isinstance(image, bytes):
            return image_problem(image, check_images)
        if image not in checked:
            checked[image] = image_problem(image, check_images)
        return checked[image]

    records, bad, index = [], [], -1
    for where, row in rows:
        if limit is not None and len(records) >= offset + limit:
            break
        if isinstance(row, dict) and name in ("slake", "hf") and row.get("q_lang", "en") != "en":
            continue  # SLAKE: English questions only
        if isinstance(row, dict) and official and _vqa_rad_official_split(row) != side:
            continue
        index += 1
        if hold_out and (index % val_every == val_every - 1) != (hold_out == "val"):
            continue
        try:
            if name == "pmc_vqa" and isinstance(row, dict):
                row = _pmc_vqa_row(row, fields, pmc_choices, _source(shown, where, row, fields))
            record = _record(name, split, shown, where, row, fields, image_dirs, image_shown, check_image)
            record.window = window
            records.append(record)
        except DataError as error:
            if not skip_bad:
                error.hint = error.hint or "--skip-bad skips such records and counts them"
                raise
            bad.append(str(error).removeprefix("data.py: "))
    if bad and not records:
        raise DataError(f"data.py: {shown}: all {len(bad)} records are bad, none is left (first: {bad[0]})",
                        hint="--field-map NAME=FIELD reads fields of other names" if "missing field" in bad[0] else None)
    if bad:
        print(f"data.py: {shown}: skipped {len(bad)} bad records of {len(records) + len(bad)} "
              f"(first: {bad[0]})", file=sys.stderr)
    if split == "val" and not records[offset:]:
        why = (f"no validation file, and {index + 1} training records are too few to hold out every "
               f"{val_every}-th" if hold_out and index + 1 < val_every else "no records")
        print(f"data.py: {shown}: warning: the val split is empty ({why})", file=sys.stderr)
    return records[offset:]


def parse_field_map(text: str | None) -> dict:
    """"question=q,answer=a" -> {"question": "q", "answer": "a"}."""
    if not text:
        return {}
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    for pair in pairs:
        if len(pair) != 2 or pair[0].strip() not in FIELDS or not pair[1].strip():
            raise DataError(f"data.py: --field-map: '{'='.join(pair)}' is not NAME=FIELD with NAME "
                            f"one of {', '.join(FIELDS)}")
    return {key.strip(): value.strip() for key, value in pairs}


def add_data_args(parser: argparse.ArgumentParser, train_offset: int | None = 0, several: bool = False) -> None:
    """The data options shared by sft.py, grpo.py and evaluate.py (grpo.py: train_offset None,
    resolved per dataset by train_offset(); evaluate.py: `several` datasets, lists in --dataset and
    --data-root)."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=["phantom"] if several else "phantom", choices=DATASETS,
                       nargs="+" if several else None,
                       help="phantom (synthetic, built in), a real dataset read from --data-root, or "
                            "hf: a Hugging Face dataset (parquet/arrow file, folder or hub id)"
                            + ("; several: each is evaluated" if several else ""))
    group.add_argument("--data-root", default=None, nargs="+" if several else None,
                       help="folder of the dataset's files (or one file; hf: also a hub id); layouts in data.py"
                            + ("; several: one per --dataset that reads files (all but phantom), in order"
                               if several else ""))
    group.add_argument("--field-map", default=None,
                       help="rename fields, e.g. question=q,answer=a,image=img,cot=explanation")
    group.add_argument("--skip-bad", action="store_true",
                       help="skip records with a missing image or field instead of stopping")
    group.add_argument("--limit", type=int, default=None,
                       help="use only the first N records of each split (phantom: its size)")
    group.add_argument("--train-offset", type=int, default=train_offset,
                       help="skip the first N training records (phantom: draw N more images; "
                            "grpo.py's default on phantom is 6000: past every record sft.py may train on)")
    group.add_argument("--data-seed", type=int, default=0,
                       help="seed of the phantom dataset; its splits are disjoint for any seed")
    group.add_argument("--phantom-wording", default="random", choices=WORDINGS,
                       help="[reconstructed] phantom open answers: wording drawn at random, as by "
                            "inconsistent annotators (ARMed's regime), or set by the question's "
                            "phrasing, a learnable convention (see phantom.WORDINGS)")
    group.add_argument("--val-every", type=int, default=20,
                       help="[reconstructed] without a validation file, val = every N-th train record")
    group.add_argument("--pmc-choices", action="store_true",
                       help="[reconstructed] PMC-VQA: list the four choices, score as closed")
    group.add_argument("--hf-split", default=None,
                       help="hf: the split to read (default: train, validation, test for train, val, test)")
    group.add_argument("--check-images", action="store_true",
                       help="decode every image while loading (slower), not only its header and structure")
    group.add_argument("--window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                       help="[reconstructed] 16-bit/float scans: raw values LOW..HIGH become 0..255 "
                            "(default: each image's own min..max)")
    group.add_argument("--same-file-for-test", action="store_true",
                       help="allow a single --data-root file as the test split (it serves every split)")


def train_offset(args: argparse.Namespace) -> int:
    """--train-offset, or where it is not given (grpo.py's default, None) the dataset's own.

    [reconstructed] The phantom generator never runs out, so by default GRPO's prompts come from
    answer-only questions on images SFT never saw: train records 6000 on (sft.py trains on at most
    the first 6000, by default on its first --cot-records 500), as in ARMed's regime SFT sees a
    limited chain-of-thought subset and RL the answer-only rest. A real dataset has one training
    set, which both stages use: 0.
    """
    if args.train_offset is not None:
        return args.train_offset
    return PHANTOM_SIZES["train"] if args.dataset == "phantom" else 0


def dataset_from_args(args: argparse.Namespace, split: str) -> list[VQARecord]:
    """The split that the options of add_data_args select."""
    return load_dataset(args.dataset, split, args.data_root, skip_bad=args.skip_bad, limit=args.limit,
                        offset=train_offset(args) if split == "train" else 0,
                        field_map=parse_field_map(args.field_map), seed=args.data_seed,
                        val_every=args.val_every, pmc_choices=args.pmc_choices,
                        phantom_wording=args.phantom_wording, hf_split=args.hf_split,
                        check_images=args.check_images, window=tuple(args.window) if args.window else None,
                        same_file_for_test=args.same_file_for_test)


def batch_order(n, batch_size, step, seed):
    """Indices of the micro-batch `step` sees: a fresh permutation each epoch, fixed by (seed, epoch).

    A pure function of the step, so a resumed run sees exactly the batches it would have seen.
    """
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng(seed + epoch).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size]


def main(argv=None):
    """Check a dataset before a long run: load a split, decode every image, print a summary."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    add_data_args(parser)
    parser.set_defaults(check_images=True)  # a bad image stops here, or is skipped and counted (--skip-bad)
    parser.add_argument("--split", default="train", choices=PHANTOM_SPLITS,
                        help="which split to check (ood: the phantom's only)")
    parser.add_argument("--grid", default=None, help="also save its first 16 images as one PNG")
    args = parser.parse_args(argv)
    grid, shown = Image.new("RGB", (448, 448)), set()
    records = dataset_from_args(args, args.split)
    for record in records:
        key = record.image if isinstance(record.image, str) else id(record.image)
        if key not in shown and len(shown) < 16:
            grid.paste(load_image(record).resize((112, 112)), (len(shown) % 4 * 112, len(shown) // 4 * 112))
            shown.add(key)
    closed = sum(record.answer_type == "closed" for record in records)
    print(f"{args.dataset} {args.split}: {len(records)} records ({closed} closed, {len(records) - closed} "
          f"open), {sum(record.cot is not None for record in records)} with a rationale")
    for record in records[:3]:
        print(f"  {record.id}: {record.question} -> {record.answer} ({record.answer_type})")
    if args.grid:
        grid.save(args.grid)


if __name__ == "__main__":
    run_script(main)

