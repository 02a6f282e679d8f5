"""The phantom dataset: SYNTHETIC medical-looking scans drawn with numpy and PIL, with questions,
answers and chain-of-thought rationales, so the whole pipeline runs and is checked on a laptop CPU
with nothing downloaded (see phantom_dataset). Not real anatomy or pathology.

    records = phantom_dataset("train")          # 6000 records, identical for a seed
    load_dataset("phantom", "test")             # the same through data.py, as the scripts do
    python data.py --split test --grid grid.png # 16 of its images in one PNG
"""

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data import SPLITS, DataError, VQARecord

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

    def ask(kind, wordings, conclusion):
        phrasing = rng.integers(len(QUESTIONS[kind]))
        worded = wordings[phrasing] if wording == "question" else pick(wordings)
        return QUESTIONS[kind][phrasing], worded, "open", conclusion

    finding = "normal" if n == 0 else scene.kind if n == 1 else PLURAL[scene.kind]
    open_ = [ask("modality", SYNONYMS[modality], f"The modality is {SYNONYMS[modality][0]}."),
             ask("region", SYNONYMS[region], f"The region is the {region}."),
             ask("finding", SYNONYMS[finding], f"The finding is {finding}."),
             ask("count", SYNONYMS[str(n)], f"There is {lesions}." if n < 2 else f"There are {lesions}.")]
    if n == 1:
        open_.append(ask("location", (f"{side} {height}", f"{height} {side}"), f"The lesion is {side} {height}."))
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


def open_answer_wordings() -> dict[str, list[tuple[str, tuple[str, str]]]]:
    """Every open answer the phantom data can give, by question kind, each concept with its two
    wordings: {"count": [("0", ("zero", "0")), ...], "location": [("left upper", ("left upper",
    "upper left")), ...], ...}. The answers of one kind are each other's wrong answers."""
    quadrants = [f"{side} {height}" for side in ("left", "right") for height in ("upper", "lower")]
    concepts = {"modality": MODALITIES, "region": REGIONS, "finding": ("normal", *PLURAL, *PLURAL.values()),
                "count": tuple("0123")}
    kinds = {kind: [(c, SYNONYMS[c]) for c in names] for kind, names in concepts.items()}
    kinds["location"] = [(q, _phrasings(q)) for q in quadrants]
    return kinds


# The kind of each question (a record's category): "Is this an MRI scan?" -> "modality".
QUESTION_KINDS = ({phrasing: kind for kind, phrasings in QUESTIONS.items() for phrasing in phrasings}
                  | {ASK_MODALITY.format(named): "modality" for named in NAMED.values()}
                  | {ASK_REGION.format(region): "region" for region in REGIONS}
                  | {question: "side" for question in SIDE_QUESTIONS})


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
        raise DataError(f"phantom.py: unknown split '{split}' (use one of {', '.join(SPLITS)})")
    if wording not in WORDINGS:
        raise DataError(f"phantom.py: unknown wording '{wording}' (use one of {', '.join(WORDINGS)})")
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
                                         f"phantom {split} image {index}", category=QUESTION_KINDS[question]))
        index += 1
    return records[:size]


def phantom_corpus(samples: int = 2000, image_size: int = 112) -> list[str]:
    """Every question and answer the phantom data can produce (all synonyms) and the rationales
    of `samples` random scenes: text to train a tokenizer on."""
    texts = {"yes", "no"} | {question for phrasings in QUESTIONS.values() for question in phrasings}
    texts.update(ASK_MODALITY.format(name) for name in NAMED.values())
    texts.update(ASK_REGION.format(region) for region in REGIONS)
    texts.update(ASK_SIDE.format(side) for side in ("left", "right"))
    texts.update(w for answers in open_answer_wordings().values() for _, pair in answers for w in pair)
    rng = np.random.default_rng(12345)
    for _ in range(samples):
        scene = _sample_scene(rng, image_size)
        seen = phantom_cot(scene, image_size)
        texts.update(f"{seen} {q[3]}" for q in _phantom_questions(scene, image_size, rng))
    return sorted(texts)
