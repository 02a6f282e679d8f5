"""Medical VQA data: one record type, a built-in synthetic dataset, and loaders for public sets.

    records = load_dataset("phantom", "train")              # 6000 synthetic records, no files
    records = load_dataset("slake", "test", "/data/slake")  # SLAKE's English test questions
    records[0] -> VQARecord(id='slake-test-5', image='/data/slake/imgs/xmlab1/source.jpg',
                            question='Is the lung healthy?', answer='No', answer_type='closed', ...)
    image = load_image(records[0])                          # PIL RGB image
    python data.py --dataset slake --data-root /data/slake  # check every record and image first

Layouts under --data-root (a folder; or one file, then used for whatever split is asked):
    vqa_rad  train.json / test.json (or trainset.json / testset.json): a JSON list with image_name,
             question, answer, answer_type (OPEN/CLOSED); images in images/ (or "VQA_RAD Image Folder").
    slake    train.json / validate.json / test.json with img_name, question, answer, answer_type,
             q_lang; only q_lang == "en" is kept; images under imgs/.
    pathvqa  train / val / test .jsonl (or .json list) of {"image", "question", "answer"}, image the
             id of the original release ("train_0422", ".jpg" added); images in images/{split}/.
             The released pickles export with: python -c "import pickle,json,sys;
             [print(json.dumps(r)) for r in pickle.load(open(sys.argv[1],'rb'))]" train_qa.pkl > train.jsonl
    pmc_vqa  train.csv / test.csv (or train_2.csv / test_2.csv) with Figure_path, Question, Answer,
             Choice A..D; images in images/ (or figures/). [reconstructed] Asked open-ended, without
             the choices (ARMed studies open answers); --pmc-choices lists them and scores it closed.
    json     train / val / test .jsonl or .json with image, question, answer and optional id,
             answer_type, cot; image paths relative to the file's folder.
--field-map renames fields for any loader (question=q,answer=a,image=img,cot=explanation). A
missing answer type is inferred (yes/no -> closed); a rationale is read from "cot", "rationale" or
"reasoning". [reconstructed] A folder without a validation file (VQA-RAD and PMC-VQA ship none)
gives every 20th training record as "val" (--val-every), and "train" leaves those out.

Bad input stops with the file, the record and the field, e.g.
    data.py: vqa_rad/train.json record 17 (qid 42): image_name 'synpic123.jpg' not found under images/
and skip_bad=True (--skip-bad) skips such records and prints how many to stderr.
"""

import argparse
import csv
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SPLITS = ("train", "val", "test")
DATASETS = ("phantom", "vqa_rad", "slake", "pathvqa", "pmc_vqa", "json")
FIELDS = ("id", "image", "question", "answer", "answer_type", "cot")


@dataclass
class VQARecord:
    id: str
    image: "str | Image.Image"  # a path on disk, or an in-memory image (phantom)
    question: str
    answer: str
    answer_type: str  # "open" | "closed"
    dataset: str
    cot: str | None = None  # chain-of-thought rationale, when the dataset has one
    source: str = ""  # where the record came from, for error messages: "slake/test.json record 5"


class DataError(ValueError):
    """Bad input data. The message names the file, the record (index or line, and id) and field."""


def infer_answer_type(answer: str) -> str:
    """"Yes." -> "closed"; "left lung" -> "open"."""
    return "closed" if str(answer).strip().lower().rstrip(".!") in ("yes", "no") else "open"


def load_image(record: VQARecord) -> Image.Image:
    """The record's image as RGB; an unreadable file raises DataError naming file and record."""
    if isinstance(record.image, Image.Image):
        return record.image.convert("RGB")
    try:
        with Image.open(record.image) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        reason = "not found"
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        reason = f"is not a readable image ({error})"
    raise DataError(f"data.py: {record.source or record.id}: image '{record.image}' {reason}")


# The phantom dataset: SYNTHETIC images drawn with numpy and PIL (see phantom_dataset).
MODALITIES = ("xray", "ct", "mri", "ultrasound")
REGIONS = ("head", "chest", "abdomen")
LESION_COUNT_PROBS = (0.5, 0.25, 0.15, 0.10)  # P(0..3 lesions): half the images are normal
PHANTOM_SIZES = {"train": 6000, "val": 100, "test": 1500}

# Each concept has two wordings; WORDINGS (below) says which one a reference answer uses.
SYNONYMS = {
    "xray": ("X-ray", "radiograph"), "ct": ("CT", "computed tomography"),
    "mri": ("MRI", "magnetic resonance imaging"), "ultrasound": ("ultrasound", "sonography"),
    "head": ("head", "skull"), "chest": ("chest", "thorax"),
    "abdomen": ("abdomen", "abdominal region"),
    "nodule": ("nodule", "small nodule"), "mass": ("mass", "large mass"),
    "nodules": ("multiple nodules", "several nodules"), "masses": ("multiple masses", "several masses"),
    "normal": ("no abnormality", "normal"),
    "0": ("zero", "0"), "1": ("one", "1"), "2": ("two", "2"), "3": ("three", "3"),
}
NAMED = {"xray": "an X-ray", "ct": "a CT scan", "mri": "an MRI scan", "ultrasound": "an ultrasound image"}
MODALITY_CUES = {
    "xray": "A projection with white bones and an R marker, typical of an X-ray.",
    "ct": "A circular field of view with a table line, typical of CT.",
    "mri": "A bright fat rim, dark bone and grainy soft tissue, typical of MRI.",
    "ultrasound": "A fan-shaped sector filled with speckle, typical of ultrasound.",
}
REGION_CUES = {
    "head": "The tall oval with a thick skull ring is the head.",
    "chest": "Two lung fields beside the heart show the chest.",
    "abdomen": "The liver on the patient's right and two kidneys show the abdomen.",
}
QUESTIONS = {  # phrasings of each question; the closed pairs ask a positive and a negated form
    "presence": ("Is there a lesion?", "Is this scan normal?"),
    "multiple": ("Are there multiple lesions?", "Is there only one lesion?"),
    "modality": ("What imaging modality is this?", "How was this image taken?"),
    "region": ("Which body region is shown?", "What part of the body is imaged?"),
    "finding": ("What abnormality is seen?", "What does the scan show?"),
    "count": ("How many lesions are there?", "What is the number of lesions?"),
    "location": ("Where is the lesion located?", "Which quadrant holds the lesion?"),
}
# How an open reference is worded (phantom_dataset): "question" ties the wording to the question's
# phrasing, the first phrasing of each question above to the first wording of each SYNONYMS pair
# ("What imaging modality is this?" -> "MRI", "How was this image taken?" -> "magnetic resonance
# imaging"), a convention a model can learn, as real datasets follow their annotators' habits;
# "random" draws the wording, so text overlap misjudges half of the right answers whatever a model
# does. [reconstructed] phantom data design choice.
WORDINGS = ("question", "random")
ASK_MODALITY, ASK_REGION, ASK_SIDE = "Is this {}?", "Does this image show the {}?", "Is the lesion on the {} side?"
NUMBER_WORDS = ("No", "One", "Two", "Three")
# Laterality applies to one-lesion images only (a quarter of them) and is the hardest question:
# it is always asked where it applies, whatever its answer. [reconstructed] data design choice.
SIDE_QUESTIONS = {ASK_SIDE.format(side) for side in ("left", "right")}
PLURAL = {"nodule": "nodules", "mass": "masses"}

# Tissue classes of the label map, then the grey level each modality gives them.
AIR, SOFT, RIM, BONE, LUNG, ORGAN, LESION = range(7)
GREY = {  #            air soft rim bone lung organ lesion
    "xray": np.array([12, 125, 140, 235, 50, 150, 250], np.float32),
    "ct": np.array([35, 110, 85, 250, 15, 140, 225], np.float32),
    "mri": np.array([4, 95, 215, 25, 10, 60, 245], np.float32),
    "ultrasound": np.array([45, 100, 170, 225, 170, 135, 8], np.float32),
}
BODY = {"head": (0.37, 0.44, 2.0), "chest": (0.44, 0.38, 3.0), "abdomen": (0.45, 0.36, 2.0)}
FAN_APEX, FAN_HALF_ANGLE, FAN_NEAR, FAN_FAR = -0.12, math.radians(45), 0.2, 1.02  # in image widths


@dataclass
class PhantomScene:
    modality: str
    region: str
    body: tuple[float, float, float, float]  # centre x, centre y, radius x, radius y (pixels)
    lesions: list[tuple[float, float, float]]  # (x, y, radius) in pixels, image coordinates
    kind: str  # "nodule" | "mass"


def _superellipse(xx, yy, cx, cy, rx, ry, power=2.0):
    """< 1 inside the shape, 1 on its outline."""
    return np.abs((xx - cx) / rx) ** power + np.abs((yy - cy) / ry) ** power


def _fan_polar(x, y, size):
    """(angle from the beam axis, distance from the probe) of points, for the ultrasound sector."""
    dx, dy = x - size / 2, y - FAN_APEX * size
    return np.arctan2(dx, dy), np.hypot(dx, dy)


def _in_fan(x, y, r, size):
    """Whether a disc of radius r at (x, y) lies inside the ultrasound sector."""
    angle, dist = _fan_polar(x, y, size)
    return (dist - r >= FAN_NEAR * size and dist + r <= FAN_FAR * size
            and abs(angle) + math.asin(min(1.0, r / dist)) <= FAN_HALF_ANGLE)


def _sample_scene(rng: np.random.Generator, size: int) -> PhantomScene:
    """What one image shows, before any pixel is drawn: modality, region, outline, lesions."""
    modality, region = MODALITIES[rng.integers(4)], REGIONS[rng.integers(3)]
    fx, fy, power = BODY[region]
    scale = rng.uniform(0.94, 1.04)
    cx, cy = size * (0.5 + rng.uniform(-0.025, 0.025, 2))
    rx, ry = fx * scale * size, fy * scale * size
    kind = "nodule" if rng.random() < 0.5 else "mass"
    count = rng.choice(4, p=LESION_COUNT_PROBS)
    lesions = []
    for quadrant in rng.permutation(4)[:count]:  # one lesion per quadrant: never touching
        sx, sy = (1 if quadrant % 2 else -1), (1 if quadrant // 2 else -1)
        for _ in range(200):
            r = size * (rng.uniform(0.055, 0.07) if kind == "nodule" else rng.uniform(0.095, 0.115))
            # whole lesion on one side of both midlines, inside the body clear of its rim
            x = size / 2 + sx * rng.uniform(r + 0.015 * size, 0.4 * size)
            y = size / 2 + sy * rng.uniform(r + 0.015 * size, 0.4 * size)
            margin = r + (0.055 if region == "head" else 0.04) * size  # clear of skull and skin
            inside = _superellipse(x, y, cx, cy, rx - margin, ry - margin, power) <= 1
            if inside and (modality != "ultrasound" or _in_fan(x, y, r, size)):
                lesions.append((x, y, r))
                break
    return PhantomScene(modality, region, (cx, cy, rx, ry), lesions, kind)


def _label_map(scene: PhantomScene, xx, yy) -> np.ndarray:
    """Tissue class per pixel for the scene's body region, before lesions: (S, S) uint8."""
    cx, cy, rx, ry = scene.body
    power = BODY[scene.region][2]
    outline = _superellipse(xx, yy, cx, cy, rx, ry, power)
    labels = np.full(xx.shape, AIR, np.uint8)
    labels[outline < 1] = RIM
    labels[outline < 0.85] = SOFT
    if scene.region == "head":
        labels[(outline >= 0.72) & (outline < 0.85)] = BONE
    elif scene.region == "chest":
        angle = np.arctan2(yy - cy, xx - cx)  # rib cross-sections in the chest wall
        labels[(outline >= 0.62) & (outline < 0.85) & (np.sin(angle * 14) > 0.5)] = BONE
        for side in (-1, 1):
            labels[_superellipse(xx, yy, cx + side * 0.45 * rx, cy - 0.05 * ry, 0.33 * rx, 0.6 * ry) < 1] = LUNG
        labels[_superellipse(xx, yy, cx + 0.12 * rx, cy + 0.22 * ry, 0.28 * rx, 0.3 * ry) < 1] = ORGAN
    else:
        labels[_superellipse(xx, yy, cx - 0.4 * rx, cy - 0.2 * ry, 0.42 * rx, 0.5 * ry) < 1] = ORGAN
        for side in (-1, 1):
            labels[_superellipse(xx, yy, cx + side * 0.5 * rx, cy + 0.35 * ry, 0.13 * rx, 0.22 * ry) < 1] = ORGAN
    if scene.region != "head":  # vertebra: a ring at the back midline, unlike a solid lesion
        spine = _superellipse(xx, yy, cx, cy + 0.68 * ry, 0.06 * xx.shape[0], 0.06 * xx.shape[0])
        labels[(spine < 1) & (spine > 0.4)] = BONE
    return labels


def render_phantom(scene: PhantomScene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw a scene as a (size x size) RGB image, grey levels per modality (see GREY)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    labels = _label_map(scene, xx, yy)
    grey = GREY[scene.modality][labels]  # (S, S) float
    if scene.modality == "xray" and scene.region == "chest":  # ribs projected over the lungs
        grey[(labels == LUNG) & (np.sin(yy * 2 * np.pi / (0.1 * size)) > 0.5)] += 45
    lesion_grey = GREY[scene.modality][LESION]
    for x, y, r in scene.lesions:
        wobble = 1 + (0.08 * np.sin(3 * np.arctan2(yy - y, xx - x) + x) if scene.kind == "mass" else 0)
        alpha = np.clip(r * wobble + 0.5 - np.hypot(xx - x, yy - y), 0, 1)  # antialiased edge
        grey = grey * (1 - alpha) + lesion_grey * alpha
    if scene.modality == "xray":
        grey = grey * (0.92 + 0.16 * yy / size) + rng.normal(0, 3, grey.shape)
        blur = 1.0
    elif scene.modality == "ct":
        table_top = scene.body[1] + scene.body[3] + 0.03 * size
        grey[(yy > table_top) & (yy < table_top + 0.035 * size)] = 170
        grey = grey + rng.normal(0, 5, grey.shape)
        grey[np.hypot(xx - size / 2, yy - size / 2) > 0.5 * size] = 0
        blur = 0.6
    elif scene.modality == "mri":
        grey = grey * (1 + 0.12 * rng.normal(size=grey.shape)) + np.abs(rng.normal(0, 5, grey.shape))
        blur = 0.4
    else:
        grey = grey * rng.rayleigh(0.8, grey.shape)  # speckle, mean ~1
        angle, dist = _fan_polar(xx, yy, size)
        grey[(np.abs(angle) > FAN_HALF_ANGLE) | (dist < FAN_NEAR * size) | (dist > FAN_FAR * size)] = 0
        blur = 0.7
    image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
    if scene.modality == "xray":  # the "R" side marker of a radiograph: patient's right, image left
        u = size / 112
        ImageDraw.Draw(image).line([(7 * u, 16 * u), (7 * u, 6 * u), (12 * u, 6 * u), (12 * u, 11 * u),
                                    (7 * u, 11 * u), (12 * u, 16 * u)], fill=230, width=max(1, round(u)))
    return image.filter(ImageFilter.GaussianBlur(blur)).convert("RGB")


def _quadrant(x: float, y: float, size: int) -> tuple[str, str]:
    """(patient side, height): the patient's left is the image's right half."""
    return ("left" if x > size / 2 else "right"), ("upper" if y < size / 2 else "lower")


def phantom_cot(scene: PhantomScene, size: int) -> str:
    """What the image shows: modality cue, region cue, lesion cue (~30-40 words). A record's
    rationale adds one sentence that ties this to its question (_phantom_questions)."""
    tone = "dark" if scene.modality == "ultrasound" else "bright"
    n, big = len(scene.lesions), "large" if scene.kind == "mass" else "small"
    if n == 0:
        lesion = "No focal spot stands out, so there is no lesion."
    elif n == 1:
        side, height = _quadrant(*scene.lesions[0][:2], size)
        # Only the patient's side is named (the image shows it mirrored: see phantom_dataset).
        # Naming the image's side too would put both "left" and "right" in every rationale,
        # and a small model then cannot tell which of them the question asked about.
        lesion = f"One {big} {tone} spot lies on the patient's {side} {height} side, a {scene.kind}."
    else:
        sides = {_quadrant(x, y, size)[0] for x, y, _ in scene.lesions}
        where = f"the patient's {sides.pop()} side" if len(sides) == 1 else "both sides"
        lesion = f"{NUMBER_WORDS[n]} {big} {tone} spots lie on {where}, {PLURAL[scene.kind]}."
    return f"{MODALITY_CUES[scene.modality]} {REGION_CUES[scene.region]} {lesion}"


def _phantom_questions(scene: PhantomScene, size: int, rng: np.random.Generator,
                       wording: str = "question") -> list[tuple]:
    """Every (question, answer, answer_type, conclusion) this scene supports, one random phrasing
    each; `wording` (WORDINGS) words the open answers.

    Each yes/no question asks a true or a false value ("Is this an MRI scan?") or a positive or a
    negated phrasing ("Is there a lesion?" / "Is this scan normal?") with probability 1/2.
    """
    def pick(options):
        return options[rng.integers(len(options))]

    def other(value, values):
        return value if rng.random() < 0.5 else pick([v for v in values if v != value])

    n, modality, region = len(scene.lesions), scene.modality, scene.region
    asked_modality, asked_region = other(modality, MODALITIES), other(region, REGIONS)
    presence, multiple = QUESTIONS["presence"], QUESTIONS["multiple"]
    lesions = "no lesion" if n == 0 else "one lesion" if n == 1 else f"{NUMBER_WORDS[n].lower()} lesions"
    there = f"there {'are' if n > 1 else 'is'} {lesions}"
    # Each rationale ends by restating what the question asks beside what the image shows, so
    # the yes/no compares two neighbouring phrases. [reconstructed] phantom data design choice.
    asks = "The question asks"
    questions = [
        pick([(presence[0], n > 0, f"{asks} about a lesion; {there}."),
              (presence[1], n == 0, f"{asks} if the scan is normal; {there}.")]),
        (ASK_MODALITY.format(NAMED[asked_modality]), asked_modality == modality,
         f"{asks} about {NAMED[asked_modality]}; it is {NAMED[modality]}."),
        (ASK_REGION.format(asked_region), asked_region == region,
         f"{asks} about the {asked_region}; it shows the {region}."),
    ]
    if n >= 1:
        questions.append(pick([(multiple[0], n > 1, f"{asks} about multiple lesions; {there}."),
                               (multiple[1], n == 1, f"{asks} about only one lesion; {there}.")]))
    if n == 1:
        side, height = _quadrant(*scene.lesions[0][:2], size)
        asked_side = pick(("left", "right"))
        questions.append((ASK_SIDE.format(asked_side), asked_side == side,
                          f"{asks} about the {asked_side} side; the lesion is on the {side}."))
    closed = [(q, "yes" if a else "no", "closed", why) for q, a, why in questions]

    def ask(kind, answer, conclusion):
        phrasing = rng.integers(len(QUESTIONS[kind]))
        worded = _phrasings(answer)[phrasing] if wording == "question" else pick(_phrasings(answer))
        return QUESTIONS[kind][phrasing], worded, "open", conclusion

    finding = "normal" if n == 0 else scene.kind if n == 1 else PLURAL[scene.kind]
    open_ = [ask("modality", SYNONYMS[modality][0], f"The modality is {SYNONYMS[modality][0]}."),
             ask("region", SYNONYMS[region][0], f"The region is the {region}."),
             ask("finding", SYNONYMS[finding][0], f"The finding is {finding}."),
             ask("count", SYNONYMS[str(n)][0], f"There is {lesions}." if n < 2 else f"There are {lesions}.")]
    if n == 1:
        open_.append(ask("location", f"{side} {height}", f"The lesion is {side} {height}."))
    return closed + open_


def _phrasings(answer: str) -> tuple[str, str]:
    """The two ways a phantom open answer can be worded: its SYNONYMS pair, or a location's two
    word orders ("left upper", "upper left")."""
    pair = next((pair for pair in SYNONYMS.values() if answer in pair), None)
    if pair is None:
        words = answer.split()
        side, height = (words[0], words[1]) if words[0] in ("left", "right") else (words[1], words[0])
        pair = (f"{side} {height}", f"{height} {side}")
    return pair


def phantom_dataset(split: str = "train", seed: int = 0, size: int | None = None, *,
                    image_size: int = 112, question_rate: float = 0.375,
                    wording: str = "question") -> list[VQARecord]:
    """`size` SYNTHETIC records (default train 6000, val 100, test 1500), identical for a seed.

        phantom_dataset("train")[0] -> VQARecord(id='phantom-train-0-0', image=<112x112 RGB>,
            question='Is this scan normal?', answer='no', answer_type='closed',
            cot='A fan-shaped sector filled with speckle, typical of ultrasound. Two lung fields
            beside the heart show the chest. Three large dark spots lie on both sides, masses.
            The question asks if the scan is normal; there are three lesions.')

    Not real anatomy or pathology: it lets the whole pipeline run, and be checked, on a laptop CPU
    with nothing downloaded. Each image is a scene: a modality style, a body region, 0-3 lesions.
      modality  X-ray: white bones, "R" marker, smooth;  CT: circular field of view, table line;
                MRI: bright fat rim, dark bone, grainy;  ultrasound: fan-shaped sector, speckle,
                lesions dark (hypoechoic) instead of bright.
      region    head: tall oval, thick skull ring;  chest: boxy outline, two lungs, the heart;
                abdomen: wide oval, liver on the patient's right, two kidneys.
      lesions   all "nodules" (radius 5.5-7% of the width: 6-8 px at 112 px) or all "masses"
                (9.5-11.5%, lobulated), each inside one quadrant, one per quadrant at most.
    LEFT AND RIGHT ARE THE PATIENT'S, displayed as in radiology: the patient's left is the
    image's RIGHT half, so "left upper" is the image's upper right quadrant.

    Image i of a split is drawn from numpy's generator seeded with (seed, split number, i), so
    the splits never share an image and a smaller size is a prefix of a larger one. Each question
    an image supports is asked with probability `question_rate` (laterality always; about 3 per
    image, half of them closed): how often a question is asked never depends on its answer, so yes and
    no are balanced and a question alone does not give its answer away. At 112 px the vision
    tower's 14-px patches, merged 2x2, give 16 image tokens.

    Each concept has two wordings ("MRI" / "magnetic resonance imaging"). With `wording="question"`
    (the default) the question's phrasing decides which one the reference uses (see WORDINGS).
    With "random", training references draw it, and in val and test each concept's references
    alternate between its two wordings, so a model that always says "X-ray" scores as well as one
    that always says "radiograph" (one that mixes them image by image matches more or fewer by
    chance). [reconstructed] phantom data design choice.
    """
    if split not in SPLITS:
        raise DataError(f"data.py: phantom: unknown split '{split}' (use one of {', '.join(SPLITS)})")
    if wording not in WORDINGS:
        raise DataError(f"data.py: phantom: unknown wording '{wording}' (use one of {', '.join(WORDINGS)})")
    size = PHANTOM_SIZES[split] if size is None else size
    records, index, worded = [], 0, Counter()  # held-out answers given so far, per wording pair
    while len(records) < size:
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        scene = _sample_scene(rng, image_size)
        questions = [q for q in _phantom_questions(scene, image_size, rng, wording)
                     if rng.random() < (1.0 if q[0] in SIDE_QUESTIONS else question_rate)]
        if questions:
            image, seen = render_phantom(scene, image_size, rng), phantom_cot(scene, image_size)
            for slot, (question, answer, answer_type, conclusion) in enumerate(questions):
                if answer_type == "open" and split != "train" and wording == "random":
                    pair = _phrasings(answer)
                    answer = pair[worded[pair] % 2]
                    worded[pair] += 1
                records.append(VQARecord(f"phantom-{split}-{index}-{slot}", image, question, answer,
                                         answer_type, "phantom", f"{seen} {conclusion}",
                                         f"phantom {split} image {index}"))
        index += 1
    return records[:size]


def phantom_corpus(samples: int = 2000, image_size: int = 112) -> list[str]:
    """Every question and answer the phantom data can produce (all synonyms) and the rationales
    of `samples` random scenes: text to train a tokenizer on."""
    texts = {"yes", "no"} | {question for phrasings in QUESTIONS.values() for question in phrasings}
    texts.update(ASK_MODALITY.format(name) for name in NAMED.values())
    texts.update(ASK_REGION.format(region) for region in REGIONS)
    texts.update(ASK_SIDE.format(side) for side in ("left", "right"))
    texts.update(answer for answers in SYNONYMS.values() for answer in answers)
    texts.update(f"{a} {b}" for side in ("left", "right") for height in ("upper", "lower")
                 for a, b in ((side, height), (height, side)))
    rng = np.random.default_rng(12345)
    for _ in range(samples):
        scene = _sample_scene(rng, image_size)
        seen = phantom_cot(scene, image_size)
        texts.update(f"{seen} {q[3]}" for q in _phantom_questions(scene, image_size, rng))
    return sorted(texts)


# Loaders for public datasets: one reader, driven by a table of each dataset's layout.

JSON_FILES = {split: (f"{split}.jsonl", f"{split}.json") for split in SPLITS}
FORMATS = {  # per dataset: file of each split (first found), its field names, its image folder
    "vqa_rad": dict(
        files={"train": ("train.json", "trainset.json"), "test": ("test.json", "testset.json")},
        fields={"id": "qid", "image": "image_name"}, image_dirs=("images", "VQA_RAD Image Folder")),
    "slake": dict(
        files={"train": ("train.json",), "val": ("validate.json",), "test": ("test.json",)},
        fields={"id": "qid", "image": "img_name"}, image_dirs=("imgs",)),
    "pathvqa": dict(files=JSON_FILES, fields={}, image_dirs=("images/{split}",)),
    "pmc_vqa": dict(
        files={"train": ("train.csv", "train_2.csv"), "test": ("test.csv", "test_2.csv")},
        fields={"image": "Figure_path", "question": "Question", "answer": "Answer"},
        image_dirs=("images", "figures")),
    "json": dict(files=JSON_FILES, fields={}, image_dirs=("",)),
}


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


def _record(name, split, shown, where, row, fields, image_dir, image_shown) -> VQARecord:
    """One row of a file as a VQARecord, or DataError naming the file, the record and the field."""
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"data.py: {shown} {where}: expected a JSON object, got {type(row).__name__}")
    native_id = _text(row, fields["id"])
    source = f"{shown} {where}" + (f" ({fields['id']} {native_id})" if native_id else "")
    for field in ("image", "question", "answer"):
        if _text(row, fields[field]) is None:
            raise DataError(f"data.py: {source}: missing field '{fields[field]}'")
    image, answer = _text(row, fields["image"]), _text(row, fields["answer"])
    answer_type = (_text(row, fields["answer_type"]) or infer_answer_type(answer)).lower()
    if answer_type not in ("open", "closed"):
        raise DataError(f"data.py: {source}: field '{fields['answer_type']}' is '{answer_type}', "
                        "expected open or closed")
    path = os.path.join(image_dir, image)
    if not os.path.splitext(image)[1] and not os.path.exists(path):
        path += ".jpg"  # PathVQA names its images by id only: "train_0422"
    if not os.path.isfile(path):
        raise DataError(f"data.py: {source}: {fields['image']} '{image}' not found under {image_shown}")
    cot_fields = [fields["cot"]] if "cot" in fields else ["cot", "rationale", "reasoning"]
    cot = next((text for field in cot_fields if (text := _text(row, field))), None)
    return VQARecord(f"{name}-{split}-{native_id or where.replace(' ', '')}", path,
                     _text(row, fields["question"]), answer, answer_type, name, cot, source)


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
                 pmc_choices: bool = False, phantom_wording: str = "question") -> list[VQARecord]:
    """Records of one split of a dataset (see the module docstring for each layout).

    `offset` drops the first N good records, then `limit` keeps the next N (phantom: `limit` is
    the split's size, and an offset draws that many more images); `seed` and `phantom_wording`
    only affect phantom (phantom_dataset's `seed` and `wording`).
    [reconstructed] Without a validation file, every `val_every`-th training record is "val".
    [reconstructed] PMC-VQA is open-ended unless `pmc_choices`: then the question lists the four
    choices ("... Choices: A:CT B:MRI C:PET D:X-ray") and the answer is scored as closed.
    """
    if offset < 0:
        raise DataError(f"data.py: {name}: the offset must be 0 or more, got {offset}")
    if name == "phantom":
        size = PHANTOM_SIZES.get(split, 0) if limit is None else limit
        return phantom_dataset(split, seed, offset + size, wording=phantom_wording)[offset:]
    if name not in FORMATS:
        raise DataError(f"data.py: unknown dataset '{name}' (use one of {', '.join(DATASETS)})")
    if split not in SPLITS:
        raise DataError(f"data.py: {name}: unknown split '{split}' (use one of {', '.join(SPLITS)})")
    if root is None:
        raise DataError(f"data.py: {name}: give the folder of its files with --data-root")
    fmt = FORMATS[name]
    path, hold_out = _split_file(name, split, root)
    folder = os.path.dirname(os.path.abspath(path))
    shown = os.path.join(os.path.basename(folder), os.path.basename(path))
    fields = {field: field for field in FIELDS if field != "cot"} | fmt["fields"] | (field_map or {})
    image_dirs = [d.format(split=split) for d in fmt["image_dirs"]]
    image_sub = next((d for d in image_dirs if os.path.isdir(os.path.join(folder, d))), image_dirs[0])
    image_shown = os.path.join(image_sub, "") if image_sub else os.path.basename(folder) + "/"
    records, bad = [], []
    for index, (where, row) in enumerate(_read_rows(path, shown)):
        if limit is not None and len(records) >= offset + limit:
            break
        if hold_out and (index % val_every == val_every - 1) != (hold_out == "val"):
            continue
        if name == "pmc_vqa" and pmc_choices and isinstance(row, dict) and _text(row, fields["question"]):
            choices = " ".join(_text(row, f"Choice {letter}") or "" for letter in "ABCD")
            row = row | {fields["question"]: f"{_text(row, fields['question'])} Choices: {choices.strip()}",
                         fields["answer_type"]: "closed"}
        if name == "slake" and isinstance(row, dict) and row.get("q_lang", "en") != "en":
            continue
        try:
            records.append(_record(name, split, shown, where, row, fields,
                                   os.path.join(folder, image_sub), image_shown))
        except DataError as error:
            if not skip_bad:
                raise
            bad.append(str(error).removeprefix("data.py: "))
    if bad:
        print(f"data.py: {shown}: skipped {len(bad)} bad records of {len(records) + len(bad)} "
              f"(first: {bad[0]})", file=sys.stderr)
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


def add_data_args(parser: argparse.ArgumentParser, train_offset: int | None = 0) -> None:
    """The data options shared by sft.py, grpo.py and evaluate.py (grpo.py: train_offset None,
    resolved per dataset after parsing)."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="phantom", choices=DATASETS,
                       help="phantom (synthetic, built in) or a real dataset read from --data-root")
    group.add_argument("--data-root", default=None,
                       help="folder of the dataset's files (or one file); layouts in data.py")
    group.add_argument("--field-map", default=None,
                       help="rename fields, e.g. question=q,answer=a,image=img,cot=explanation")
    group.add_argument("--skip-bad", action="store_true",
                       help="skip records with a missing image or field instead of stopping")
    group.add_argument("--limit", type=int, default=None,
                       help="use only the first N records of each split (phantom: its size)")
    group.add_argument("--train-offset", type=int, default=train_offset,
                       help="skip the first N training records (phantom: draw N more images; "
                            "grpo.py's default on phantom is 6000, the records sft.py trains on)")
    group.add_argument("--data-seed", type=int, default=0,
                       help="seed of the phantom dataset; its splits are disjoint for any seed")
    group.add_argument("--phantom-wording", default="question", choices=WORDINGS,
                       help="[reconstructed] phantom open answers: wording set by the question's "
                            "phrasing (learnable) or drawn at random (see data.WORDINGS)")
    group.add_argument("--val-every", type=int, default=20,
                       help="[reconstructed] without a validation file, val = every N-th train record")
    group.add_argument("--pmc-choices", action="store_true",
                       help="[reconstructed] PMC-VQA: list the four choices, score as closed")


def dataset_from_args(args: argparse.Namespace, split: str) -> list[VQARecord]:
    """The split that the options of add_data_args select."""
    return load_dataset(args.dataset, split, args.data_root, skip_bad=args.skip_bad, limit=args.limit,
                        offset=args.train_offset if split == "train" else 0,
                        field_map=parse_field_map(args.field_map), seed=args.data_seed,
                        val_every=args.val_every, pmc_choices=args.pmc_choices,
                        phantom_wording=args.phantom_wording)


def batch_order(n, batch_size, step, seed):
    """Indices of the micro-batch `step` sees: a fresh permutation each epoch, fixed by (seed, epoch).

    A pure function of the step, so a resumed run sees exactly the batches it would have seen.
    """
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng(seed + epoch).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size]


def main(argv=None):
    """Check a dataset before a long run: load a split, open every image, print a summary."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    add_data_args(parser)
    parser.add_argument("--split", default="train", choices=SPLITS, help="which split to check")
    parser.add_argument("--grid", default=None, help="also save its first 16 images as one PNG")
    args = parser.parse_args(argv)
    grid, shown = Image.new("RGB", (448, 448)), set()
    try:
        records = dataset_from_args(args, args.split)
        for record in records:
            image, key = load_image(record), str(record.image) if isinstance(record.image, str) else id(record.image)
            if key not in shown and len(shown) < 16:
                grid.paste(image.resize((112, 112)), (len(shown) % 4 * 112, len(shown) // 4 * 112))
                shown.add(key)
    except DataError as error:
        sys.exit(str(error))
    closed = sum(record.answer_type == "closed" for record in records)
    print(f"{args.dataset} {args.split}: {len(records)} records ({closed} closed, {len(records) - closed} "
          f"open), {sum(record.cot is not None for record in records)} with a rationale")
    for record in records[:3]:
        print(f"  {record.id}: {record.question} -> {record.answer} ({record.answer_type})")
    if args.grid:
        grid.save(args.grid)


if __name__ == "__main__":
    main()

