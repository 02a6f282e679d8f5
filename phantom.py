"""The phantom dataset: SYNTHETIC medical-looking scans drawn with numpy and PIL, with questions,
answers and chain-of-thought rationales, so the whole pipeline runs and is checked on a laptop CPU
with nothing downloaded (see phantom_dataset). Not real anatomy or pathology.

    records = phantom_dataset("train")          # 6000 records, identical for a seed
    phantom_captions(32)                        # captioned images for the base model (pretrain.py)
    load_dataset("phantom", "test")             # the same through data.py, as the scripts do
    python data.py --split test --grid grid.png # 16 of its images in one PNG
"""

import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from records import SPLITS, DataError, VQARecord

MODALITIES = ("xray", "ct", "mri", "ultrasound")
REGIONS = ("head", "chest", "abdomen")
# P(0..3 lesions): uniform, so that "more than one lesion?" is a coin flip. [reconstructed]
LESION_COUNT_PROBS = (0.25, 0.25, 0.25, 0.25)
PHANTOM_SIZES = {"train": 6000, "val": 100, "test": 1500, "ood": 500}
# The phantom's splits: the shared three, then "ood", a test split from another scanner (OOD_SCANNER).
PHANTOM_SPLITS = (*SPLITS, "ood")
# Random streams of images: image i of a stream is drawn from numpy's generator seeded with
# (seed, stream, i). "base" holds the captioned images the base model is pretrained on (pretrain.py),
# never a VQA split's; "ood" the out-of-domain test images, never trained on.
STREAMS = {"train": 0, "val": 1, "test": 2, "base": 3, "ood": 4}
# The "ood" split's rendering shift, "another scanner": the same scenes and questions, but every
# grey level through a gamma curve (mid-greys brighter, bright tissue less contrasted), added noise
# (standard deviation in grey levels) and a slight extra blur (pixels). [reconstructed] phantom data
# design choice, tuned on an SFT checkpoint so that the shift costs points but leaves the modality
# readable (gamma 1.4 or 0.7 already made it misread X-ray, CT and ultrasound as MRI, from grey
# levels) and lesions visible (data.py --split ood --grid).
OOD_SCANNER = dict(gamma=0.9, noise=6.0, blur=0.9)

# Each concept has two wordings; WORDINGS (below) says which one a reference answer uses. The pairs
# of counts are paraphrases a sentence encoder places close together (cos("two lesions", "a pair
# of lesions") = 0.95, against 0.88 for "three lesions": `python rewards.py --phantom`).
SYNONYMS = {
    "nodule": ("nodule", "small nodule"), "mass": ("mass", "large mass"),
    "nodules": ("multiple nodules", "several nodules"), "masses": ("multiple masses", "several masses"),
    "normal": ("no abnormality", "normal"),
    "0": ("no lesions", "no lesions at all"), "1": ("one lesion", "a single lesion"),
    "2": ("two lesions", "a pair of lesions"), "3": ("three lesions", "three separate lesions"),
}
MODALITY_WORDS = {"xray": "X-ray", "ct": "CT", "mri": "MRI", "ultrasound": "Ultrasound"}  # in captions
NAMED = {"xray": "an X-ray", "ct": "a CT scan", "mri": "an MRI scan", "ultrasound": "an ultrasound image"}
NUMBER_WORDS = ("No", "One", "Two", "Three")
PLURAL = {"nodule": "nodules", "mass": "masses"}
QUADRANTS = ("left upper", "left lower", "right upper", "right lower")  # the patient's sides
# The landmark organ of a region and the patient's side it lies on (drawn so by _label_map):
# knowledge a rationale states, as a radiologist's would.
ORGAN_SIDE = {"chest": ("heart", "left"), "abdomen": ("liver", "right")}
CAPTION_PROMPT = "Describe the image."
# Questions, by kind (each record's category). Open kinds: two phrasings; WORDINGS ties the first
# phrasing to the first wording of the answer's SYNONYMS pair. Closed kinds: a positive and a
# negated phrasing, drawn with probability 1/2, so a "yes" is not tied to one wording. The closed
# questions combine what is seen (a count against a threshold, modality and region at once, a side,
# a side relative to an organ, a kind), the difficulty the papers' RL stage refines; the open ones
# count on a side or name the finding. [reconstructed] phantom data design choice.
OPEN_QUESTIONS = {
    "finding": ("What abnormality is seen?", "What does the scan show?"),
    "count": ("How many lesions are there?", "What is the number of lesions?"),
    "side_count": ("How many lesions are on the patient's {side} side?",
                   "What is the number of lesions on the patient's {side} side?"),
    "organ_count": ("How many lesions are on the same side as the {organ}?",
                    "What is the number of lesions on the {organ}'s side?"),
}
CLOSED_QUESTIONS = {
    "threshold": ("{verb} there more than {k}?", "{verb} there at most {k}?"),
    "scan": ("Is this {named} of the {region}?",),
    "side": ("Is there a lesion on the patient's {side} side?", "Is the patient's {side} side free of lesions?"),
    "organ_side": ("Is the lesion on the same side as the {organ}?", "Is the lesion on the side opposite the {organ}?"),
    "kind": ("Is there a {kind}?", "Is the scan free of {kinds}?"),
}
# How an open reference is worded (phantom_dataset): "question" ties the wording to the question's
# phrasing, the first phrasing of each question above to the first wording of each SYNONYMS pair
# ("How many lesions are there?" -> "two lesions", "What is the number of lesions?" -> "a pair of
# lesions"), a convention a model can learn, as real datasets follow their annotators' habits;
# "random" draws the wording, so text overlap misjudges half of the right answers whatever a model
# does. [reconstructed] phantom data design choice.
WORDINGS = ("question", "random")

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


def _quadrant(x: float, y: float, size: int) -> str:
    """The quadrant in the patient's sides, "left upper": the patient's left is the image's right half."""
    return f"{'left' if x > size / 2 else 'right'} {'upper' if y < size / 2 else 'lower'}"


def _lesions(n: int) -> str:
    """ "no lesions", "one lesion", "two lesions": the first wording of SYNONYMS[str(n)]."""
    return SYNONYMS[str(n)][0]


def phantom_caption(scene: PhantomScene, size: int) -> str:
    """Everything visible, in one fixed form (the base model's pretraining text, and the start of
    every rationale): "CT of the chest. Two nodules: left upper, right lower." Quadrants are the
    patient's sides, in QUADRANTS order."""
    n, where = len(scene.lesions), scene_facts(scene, size)["quadrants"]
    if n == 0:
        lesions = "No lesion."
    else:
        lesions = f"{NUMBER_WORDS[n]} {scene.kind if n == 1 else PLURAL[scene.kind]}: {', '.join(where)}."
    return f"{MODALITY_WORDS[scene.modality]} of the {scene.region}. {lesions}"


def parse_caption(text: str) -> dict | None:
    """The facts a caption states, read from the first two sentences of `text` (a caption, or a
    rationale that starts with one): {"modality", "region", "count", "kind" (None without lesions),
    "quadrants" (a tuple in QUADRANTS order)}, or None where they are not a caption."""
    sentences = text.strip().split(". ", 2)
    if len(sentences) < 2:
        return None
    first, _, region = sentences[0].partition(" of the ")
    modality = next((m for m, word in MODALITY_WORDS.items() if word == first), None)
    lesions = sentences[1].rstrip(".")
    if modality is None or region not in REGIONS:
        return None
    if lesions == "No lesion":
        return dict(modality=modality, region=region, count=0, kind=None, quadrants=())
    head, _, where = lesions.partition(": ")
    words = head.split()
    if len(words) != 2 or words[0] not in NUMBER_WORDS[1:]:
        return None
    kind = next((k for k in PLURAL if words[1] in (k, PLURAL[k])), None)
    quadrants = tuple(sorted(where.split(", "), key=lambda q: QUADRANTS.index(q) if q in QUADRANTS else 9))
    return dict(modality=modality, region=region, count=NUMBER_WORDS.index(words[0]), kind=kind, quadrants=quadrants)


def scene_facts(scene: PhantomScene, size: int) -> dict:
    """What the scene's caption states, as parse_caption reads it: {"modality", "region", "count",
    "kind" (None without lesions), "quadrants" (a tuple in QUADRANTS order)}."""
    quadrants = tuple(sorted((_quadrant(x, y, size) for x, y, _ in scene.lesions), key=QUADRANTS.index))
    return dict(modality=scene.modality, region=scene.region, count=len(scene.lesions),
                kind=scene.kind if scene.lesions else None, quadrants=quadrants)


def lesions_by_side(quadrants) -> dict[str, int]:
    """How many of the quadrants lie on each of the patient's sides: {"left": 1, "right": 0}."""
    return {side: sum(q.startswith(side) for q in quadrants) for side in ("left", "right")}


_LESION_NUMBERS = {_lesions(k): k for k in (1, 2)}  # the thresholds' wordings -> k
_NAMED_MODALITY = {named: modality for modality, named in NAMED.items()}
_ORGAN_SIDES = dict(ORGAN_SIDE.values())  # "heart" -> "left"
_SINGULAR = {plural: kind for kind, plural in PLURAL.items()}


def implied_answer(kind: str, phrasing: int, values: dict, facts: dict) -> str | None:
    """The answer to a question of `kind` (CLOSED_QUESTIONS, OPEN_QUESTIONS), asked in its
    `phrasing`-th phrasing filled with `values`, about an image with `facts` (scene_facts,
    parse_caption): "yes" or "no" for closed kinds, the SYNONYMS concept for open ones ("2",
    "mass", "normal"); None where the facts name no kind of lesion. The one definition of every
    answer: _phantom_questions' references, and evaluate.py's consistency (what a rationale's own
    facts imply).

        implied_answer("side", 1, {"side": "left"}, dict(count=1, quadrants=("left upper",), ...))
        -> "no"   (asked: "Is the patient's left side free of lesions?")
    """
    n, seen, on = facts["count"], facts["kind"], lesions_by_side(facts["quadrants"])

    def yes(true):  # the second phrasing of a closed kind is the negated one
        return "yes" if true != bool(phrasing) else "no"

    if kind == "threshold":
        return yes(n > _LESION_NUMBERS[values["k"]])
    if kind == "scan":
        return yes((_NAMED_MODALITY[values["named"]], values["region"]) == (facts["modality"], facts["region"]))
    if kind == "side":
        return yes(on[values["side"]] > 0)
    if kind == "organ_side":
        return yes(on[_ORGAN_SIDES[values["organ"]]] == 1)
    if kind == "kind":
        asked = values["kind"] if phrasing == 0 else _SINGULAR[values["kinds"]]
        return yes(n > 0 and seen == asked)
    if kind == "finding":
        return "normal" if n == 0 else None if seen is None else seen if n == 1 else PLURAL[seen]
    if kind == "count":
        return str(n)
    if kind == "side_count":
        return str(on[values["side"]])
    if kind == "organ_count":
        return str(on[_ORGAN_SIDES[values["organ"]]])
    raise ValueError(f"phantom.py: unknown question kind {kind!r}")


def _template_pattern(template: str) -> re.Pattern:
    """A question template as a regex whose groups are its fields: "{verb} there more than {k}?"."""
    return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+?)", re.escape(template)))


QUESTION_PATTERNS = {kind: [_template_pattern(t) for t in templates]
                     for kind, templates in (*CLOSED_QUESTIONS.items(), *OPEN_QUESTIONS.items())}


def parse_question(kind: str, question: str) -> tuple[int, dict] | None:
    """(phrasing, values) of a phantom question of `kind`, the inverse of filling its template:
    ("side", "Is the patient's left side free of lesions?") -> (1, {"side": "left"}); None where
    the question is no phrasing of that kind."""
    for phrasing, pattern in enumerate(QUESTION_PATTERNS.get(kind, ())):
        if match := pattern.fullmatch(question):
            return phrasing, match.groupdict()
    return None


def fact_truths(stated: dict, truth: dict) -> list[bool]:
    """Whether each fact a caption states (parse_caption) is true of the image (`truth`,
    scene_facts), one entry per fact: the modality, the region, the count of lesions, their kind
    (only where lesions are stated), then each stated quadrant (true where the image has a lesion
    there; one stated twice counts twice). "CT of the chest. Two nodules: left upper, right lower."
    states 6 facts."""
    facts = [stated[name] == truth[name] for name in ("modality", "region", "count")]
    if stated["count"] > 0:
        facts.append(stated["kind"] is not None and stated["kind"] == truth["kind"])
    return facts + [q in truth["quadrants"] for q in stated["quadrants"]]


def _phantom_questions(scene: PhantomScene, size: int, rng: np.random.Generator,
                       wording: str = "question") -> list[tuple]:
    """Every (kind, question, answer, answer_type, conclusion) this scene supports, one random
    phrasing each; `wording` (WORDINGS) words the open answers; implied_answer gives each answer.
    The conclusion is the rationale's last sentence: what the question asks beside what the caption
    says, so that the answer follows from two neighbouring phrases (the step RL refines).
    [reconstructed] phantom data design choice.
    """
    def pick(options):
        return options[rng.integers(len(options))]

    facts = scene_facts(scene, size)
    n, modality, region, kind = len(scene.lesions), scene.modality, scene.region, scene.kind
    quadrants, on = facts["quadrants"], lesions_by_side(facts["quadrants"])
    there = f"there {'is' if n == 1 else 'are'} {_lesions(n)}"
    closed = []

    def ask_closed(kind_, phrasing, conclusion, **values):
        return (kind_, CLOSED_QUESTIONS[kind_][phrasing].format(**values),
                implied_answer(kind_, phrasing, values, facts), "closed", conclusion)

    k = int(rng.integers(1, 3))
    threshold = _lesions(k)
    phrasing = rng.integers(2)
    closed.append(ask_closed("threshold", phrasing,
                             f"Asked: {'at most' if phrasing else 'more than'} {threshold}; {there}.",
                             verb="Is" if k == 1 else "Are", k=threshold))
    asked_modality, asked_region = modality, region
    if rng.random() < 0.5:   # a false pair: the modality, the region, or both differ
        change = rng.integers(3)
        if change != 1:
            asked_modality = pick([m for m in MODALITIES if m != modality])
        if change != 0:
            asked_region = pick([r for r in REGIONS if r != region])
    closed.append(ask_closed("scan", 0, f"Asked: {NAMED[asked_modality]} of the {asked_region}; "
                             f"it is {NAMED[modality]} of the {region}.",
                             named=NAMED[asked_modality], region=asked_region))
    side = pick(("left", "right"))
    phrasing = rng.integers(2)
    closed.append(ask_closed("side", phrasing, f"Asked: the {side} side; on the {side}: {_lesions(on[side])}.",
                             side=side))
    if n == 1 and region in ORGAN_SIDE:
        organ, organ_side = ORGAN_SIDE[region]
        phrasing = rng.integers(2)
        closed.append(ask_closed("organ_side", phrasing, f"The {organ} is on the patient's {organ_side}; "
                                 f"the lesion is on the {quadrants[0].split()[0]}.", organ=organ))
    asked_kind = pick(tuple(PLURAL))
    phrasing = rng.integers(2)
    seen = "no lesions" if n == 0 else f"{NUMBER_WORDS[n].lower()} {kind if n == 1 else PLURAL[kind]}"
    closed.append(ask_closed("kind", phrasing, f"Asked: a {asked_kind}; there {'is' if n == 1 else 'are'} {seen}.",
                             kind=asked_kind, kinds=PLURAL[asked_kind]))

    def ask_open(kind_, conclusion, **values):
        phrasing = rng.integers(2)
        wordings = SYNONYMS[implied_answer(kind_, phrasing, values, facts)]
        worded = wordings[phrasing] if wording == "question" else pick(wordings)
        return kind_, OPEN_QUESTIONS[kind_][phrasing].format(**values), worded, "open", conclusion

    finding = "normal" if n == 0 else kind if n == 1 else PLURAL[kind]
    open_ = [ask_open("finding", f"The finding is {SYNONYMS[finding][0]}."),
             ask_open("count", f"{there[0].upper()}{there[1:]}.")]
    side = pick(("left", "right"))
    open_.append(ask_open("side_count", f"On the {side}: {_lesions(on[side])}.", side=side))
    if region in ORGAN_SIDE:
        organ, organ_side = ORGAN_SIDE[region]
        open_.append(ask_open("organ_count", f"The {organ} is on the patient's {organ_side}; on the {organ_side}: "
                              f"{_lesions(on[organ_side])}.", organ=organ))
    return closed + open_


def other_scanner(image: Image.Image, rng: np.random.Generator, scanner: dict = OOD_SCANNER) -> Image.Image:
    """The "ood" split's rendering shift: an image as another scanner would show it (OOD_SCANNER),
    grey levels g -> 255 (g / 255) ** gamma, plus Gaussian noise, then a Gaussian blur."""
    grey = np.asarray(image.convert("L"), np.float32)
    grey = 255 * (grey / 255) ** scanner["gamma"] + rng.normal(0, scanner["noise"], grey.shape)
    shifted = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
    return shifted.filter(ImageFilter.GaussianBlur(scanner["blur"])).convert("RGB")


def _phrasings(answer: str) -> tuple[str, str]:
    """The two wordings of a phantom open answer: its SYNONYMS pair."""
    return next(pair for pair in SYNONYMS.values() if answer in pair)


def open_answer_wordings() -> dict[str, list[tuple[str, tuple[str, str]]]]:
    """Every open answer the phantom data can give, by what it names, each concept with its two
    wordings: {"count": [("0", ("no lesions", "no lesions at all")), ...], "finding": [...]}. The answers
    of one kind are each other's wrong answers (every count question answers with a count)."""
    concepts = {"finding": ("normal", *PLURAL, *PLURAL.values()), "count": tuple("0123")}
    return {kind: [(c, SYNONYMS[c]) for c in names] for kind, names in concepts.items()}


def phantom_dataset(split: str = "train", seed: int = 0, size: int | None = None, *,
                    image_size: int = 112, question_rate: float = 0.375,
                    wording: str = "question") -> list[VQARecord]:
    """`size` SYNTHETIC records (default train 6000, val 100, test 1500, ood 500), identical for a seed.

        phantom_dataset("train")[0] -> VQARecord(id='phantom-train-0-0', image=<112x112 RGB>,
            question='Is this an ultrasound image of the chest?', answer='yes', answer_type='closed',
            cot='Ultrasound of the chest. Three masses: left upper, right upper, right lower.
            Asked: an ultrasound image of the chest; it is an ultrasound image of the chest.',
            category='scan')

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

    Image i of a split is drawn from numpy's generator seeded with (seed, STREAMS[split], i), so
    the splits (and the base model's captioned images) never share an image and a smaller size is
    a prefix of a larger one. Each question an image supports (_phantom_questions, CLOSED_QUESTIONS,
    OPEN_QUESTIONS) is asked with probability `question_rate` (about 3 per image, half of them
    closed): how often a question is asked never depends on its answer. A record's rationale is the
    image's caption (phantom_caption) and one sentence that ties it to the question; its category
    is the question's kind. At 112 px the vision tower's 14-px patches, merged 2x2, give 16 image
    tokens.

    "ood" is an out-of-domain test split (never trained on): the same scenes and questions, from
    another scanner, a rendering shift: a gamma curve that brightens the mid-greys (lower contrast),
    added noise and a slight blur (other_scanner, OOD_SCANNER), on images of its own stream.

    Each concept has two wordings ("two lesions" / "a pair of lesions"). With `wording="question"`
    (the default) the question's phrasing decides which one the reference uses (see WORDINGS).
    With "random", training references draw it, and in val and test each concept's references
    alternate between its two wordings, so a model that always says "two lesions" scores as well
    as one that always says "a pair of lesions" (one that mixes them image by image matches more or fewer by
    chance). [reconstructed] phantom data design choice.
    """
    if split not in PHANTOM_SPLITS:
        raise DataError(f"phantom.py: unknown split '{split}' (use one of {', '.join(PHANTOM_SPLITS)})")
    if wording not in WORDINGS:
        raise DataError(f"phantom.py: unknown wording '{wording}' (use one of {', '.join(WORDINGS)})")
    size = PHANTOM_SIZES[split] if size is None else size
    records, index, worded = [], 0, Counter()  # held-out answers given so far, per wording pair
    while len(records) < size:
        rng = np.random.default_rng([seed, STREAMS[split], index])
        scene = _sample_scene(rng, image_size)
        questions = [q for q in _phantom_questions(scene, image_size, rng, wording) if rng.random() < question_rate]
        if questions:
            image, seen = render_phantom(scene, image_size, rng), phantom_caption(scene, image_size)
            if split == "ood":
                image = other_scanner(image, rng)
            for slot, (kind, question, answer, answer_type, conclusion) in enumerate(questions):
                if answer_type == "open" and split != "train" and wording == "random":
                    pair = _phrasings(answer)
                    answer = pair[worded[pair] % 2]
                    worded[pair] += 1
                records.append(VQARecord(f"phantom-{split}-{index}-{slot}", image, question, answer,
                                         answer_type, "phantom", f"{seen} {conclusion}",
                                         f"phantom {split} image {index}", category=kind))
        index += 1
    return records[:size]


def phantom_captions(count: int, seed: int = 0, start: int = 0, image_size: int = 112):
    """Images `start` .. `start + count` of the "base" stream with their captions: [(image, caption)].
    The base model (pretrain.py) is pretrained on these; no VQA split shares an image with them."""
    out = []
    for index in range(start, start + count):
        rng = np.random.default_rng([seed, STREAMS["base"], index])
        scene = _sample_scene(rng, image_size)
        out.append((render_phantom(scene, image_size, rng), phantom_caption(scene, image_size)))
    return out


def phantom_corpus(samples: int = 2000, image_size: int = 112) -> list[str]:
    """Every question and answer the phantom data can produce (all synonyms and phrasings) and the
    captions and rationales of `samples` random scenes: text to train a tokenizer on."""
    values = dict(verb=("Is", "Are"), k=(_lesions(1), _lesions(2)), side=("left", "right"), organ=[o for o, _ in ORGAN_SIDE.values()],
                  named=NAMED.values(), region=REGIONS, kind=PLURAL, kinds=PLURAL.values())
    texts = {"yes", "no", CAPTION_PROMPT}
    for phrasings in (*OPEN_QUESTIONS.values(), *CLOSED_QUESTIONS.values()):
        for phrasing in phrasings:
            fields = [name for name in values if "{" + name + "}" in phrasing]
            for combo in itertools.product(*(values[name] for name in fields)):
                texts.add(phrasing.format(**dict(zip(fields, combo))))
    texts.update(w for answers in open_answer_wordings().values() for _, pair in answers for w in pair)
    rng = np.random.default_rng(12345)
    for _ in range(samples):
        scene = _sample_scene(rng, image_size)
        seen = phantom_caption(scene, image_size)
        texts.add(seen)
        texts.update(f"{seen} {q[4]}" for q in _phantom_questions(scene, image_size, rng))
    return sorted(texts)
