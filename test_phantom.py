"""Tests for phantom.py, the synthetic dataset: sizes, determinism, disjoint splits, balanced
answers, wordings, rationales, laterality. Run: python -m pytest test_phantom.py -q"""

import argparse
import collections
import hashlib
import time

import numpy as np
import pytest

import phantom
from data import DataError, dataset_from_args, load_dataset, load_image


def image_bytes(records):
    return [load_image(record).tobytes() for record in records]


def texts(records):
    return [(r.id, r.question, r.answer, r.answer_type, r.cot) for r in records]


@pytest.fixture(scope="module")
def train():
    start = time.perf_counter()
    records = phantom.phantom_dataset("train")
    return records, time.perf_counter() - start


def test_phantom_default_sizes_and_generation_time(train):
    records, seconds = train
    # 2.1 s idle on a 2-core CPU; the bound catches an order-of-magnitude regression, not load
    assert len(records) == 6000 and seconds < 30
    assert len(phantom.phantom_dataset("val")) == 100 and len(phantom.phantom_dataset("test")) == 1500
    assert len(load_dataset("phantom", "test", limit=7)) == 7
    image = load_image(records[0])
    assert image.mode == "RGB" and image.size == (112, 112)
    assert load_image(phantom.phantom_dataset("val", size=1, image_size=56)[0]).size == (56, 56)


def test_phantom_is_deterministic_per_seed():
    first, again = phantom.phantom_dataset("val", seed=3, size=40), phantom.phantom_dataset("val", seed=3, size=40)
    assert texts(first) == texts(again) and image_bytes(first) == image_bytes(again)
    other = phantom.phantom_dataset("val", seed=4, size=40)
    assert texts(other) != texts(first)
    assert not set(image_bytes(other)) & set(image_bytes(first))
    # a smaller size is a prefix of a larger one
    assert texts(phantom.phantom_dataset("val", seed=3, size=15)) == texts(first)[:15]


def test_train_offset_continues_the_split_and_only_moves_train():
    # grpo.py's phantom default: prompts from the images after the ones sft.py trains on
    assert [r.id for r in load_dataset("phantom", "val", offset=30, limit=10)] == \
        [r.id for r in phantom.phantom_dataset("val", size=40)[30:]]
    args = argparse.Namespace(dataset="phantom", data_root=None, skip_bad=False, limit=5, train_offset=12,
                              field_map=None, data_seed=0, val_every=20, pmc_choices=False,
                              phantom_wording="question", hf_split=None, check_images=False,
                              window=None, same_file_for_test=False)
    assert [r.id for r in dataset_from_args(args, "train")] == \
        [r.id for r in phantom.phantom_dataset("train", size=17)[12:]]
    assert [r.id for r in dataset_from_args(args, "val")] == [r.id for r in phantom.phantom_dataset("val", size=5)]
    with pytest.raises(DataError, match="offset must be 0 or more"):
        load_dataset("phantom", "train", offset=-1)


def _open_phrasing(question):
    """(kind, phrasing index) of an open phantom question."""
    for kind, phrasings in phantom.OPEN_QUESTIONS.items():
        for i, phrasing in enumerate(phrasings):
            head, _, tail = phrasing.partition("{")
            if question.startswith(head) and question.endswith(tail.partition("}")[2]):
                return kind, i
    raise AssertionError(question)


def test_open_references_are_worded_as_their_question_asks():
    for split in ("train", "test"):
        records = [r for r in phantom.phantom_dataset(split, size=3000) if r.answer_type == "open"]
        phrasings = collections.Counter()
        for record in records:
            kind, phrasing = _open_phrasing(record.question)
            assert kind == record.category
            assert record.answer == phantom._phrasings(record.answer)[phrasing], (record.question, record.answer)
            phrasings[kind, phrasing] += 1
        # both phrasings of every open question are asked, about equally often
        for kind in phantom.OPEN_QUESTIONS:
            n0, n1 = phrasings[kind, 0], phrasings[kind, 1]
            assert n0 > 0 and n1 > 0 and abs(n0 - n1) <= 4 * ((n0 + n1) / 4) ** 0.5, (split, kind, n0, n1)


def test_random_wording_alternates_held_out_references_and_draws_training_ones():
    def counts(records):
        return collections.Counter(r.answer for r in records if r.answer_type == "open")
    test = counts(phantom.phantom_dataset("test", wording="random"))
    for pair in phantom.SYNONYMS.values():
        assert abs(test[pair[0]] - test[pair[1]]) <= 1 and test[pair[0]] > 0, pair
    train = phantom.phantom_dataset("train", size=1500, wording="random")
    assert max(abs(counts(train)[a] - counts(train)[b]) for a, b in phantom.SYNONYMS.values()) > 1
    # the wording no longer follows the question: both wordings answer the same phrasing
    count = {r.answer for r in train if r.question == "How many lesions are there?"}
    assert {"two lesions", "a pair of lesions"} <= count
    assert [r.answer for r in load_dataset("phantom", "test", limit=300, phantom_wording="random")] == \
        [r.answer for r in phantom.phantom_dataset("test", size=300, wording="random")]
    with pytest.raises(DataError, match="unknown wording 'both'"):
        phantom.phantom_dataset("val", wording="both")


def test_phantom_splits_share_no_image():
    splits = {split: set(image_bytes(phantom.phantom_dataset(split, size=150))) for split in phantom.SPLITS}
    assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]


def test_phantom_answers_are_balanced(train):
    records, _ = train
    closed = [r for r in records if r.answer_type == "closed"]
    assert 0.4 < len(closed) / len(records) < 0.6
    assert {r.answer for r in closed} == {"yes", "no"}
    assert 0.45 < sum(r.answer == "yes" for r in closed) / len(closed) < 0.55
    # every kind of closed question is near a coin flip; a threshold question's wording carries a
    # prior ("more than two lesions?" is yes for 3 lesions only), its two phrasings balance it
    by_kind = collections.defaultdict(collections.Counter)
    for record in closed:
        by_kind[record.category][record.answer] += 1
    assert set(by_kind) == set(phantom.CLOSED_QUESTIONS)
    for kind, counts in by_kind.items():
        n = sum(counts.values())
        assert 0.35 < counts["yes"] / n < 0.65, (kind, counts)


def test_phantom_answers_use_both_synonyms(train):
    records, _ = train
    answers = collections.Counter(r.answer for r in records if r.answer_type == "open")
    assert set(answers) == {w for pair in phantom.SYNONYMS.values() for w in pair}


def test_rationales_are_the_caption_then_one_conclusion(train):
    records, _ = train
    assert all(9 <= len(r.cot.split()) <= 30 for r in records)
    for record in records[:300]:
        caption = phantom.parse_caption(record.cot)
        assert caption is not None, record.cot
        assert record.cot.count(". ") == 2, record.cot


def test_caption_states_what_the_scene_holds():
    # two bright MRI nodules drawn by hand: image upper RIGHT (the patient's left upper), image lower left
    scene = phantom.PhantomScene("mri", "chest", (56.0, 56.0, 49.0, 42.0), [(80.0, 35.0, 8.0), (30.0, 80.0, 8.0)],
                                 "nodule")
    image = np.asarray(phantom.render_phantom(scene, 112, np.random.default_rng(0)))[..., 0]
    assert image[31:39, 76:84].mean() > 200 and image[31:39, 28:36].mean() < 120
    caption = phantom.phantom_caption(scene, 112)
    assert caption == "MRI of the chest. Two nodules: left upper, right lower."
    assert phantom.parse_caption(caption) == dict(modality="mri", region="chest", count=2, kind="nodule",
                                                  quadrants=("left upper", "right lower"))
    assert phantom.parse_caption("MRI of the chest. No lesion.")["count"] == 0
    assert phantom.parse_caption("What abnormality is seen?") is None


def test_left_is_the_patients_left_on_the_image_right():
    # one nodule in the image's upper RIGHT quadrant: the patient's left, the heart's side
    scene = phantom.PhantomScene("mri", "chest", (56.0, 56.0, 49.0, 42.0), [(80.0, 35.0, 8.0)], "nodule")
    rng = np.random.default_rng(0)
    questions = [q for _ in range(30) for q in phantom._phantom_questions(scene, 112, rng)]
    answers = {question: answer for _, question, answer, _, _ in questions}
    assert answers.get("Is there a lesion on the patient's left side?", "yes") == "yes"
    assert answers.get("Is the patient's left side free of lesions?", "no") == "no"
    assert answers.get("Is there a lesion on the patient's right side?", "no") == "no"
    assert answers["Is the lesion on the same side as the heart?"] == "yes"
    assert answers["Is the lesion on the side opposite the heart?"] == "no"
    assert answers["How many lesions are on the same side as the heart?"] == "one lesion"
    assert answers["What is the number of lesions on the patient's right side?"] == "no lesions at all"


def _answer_from_rationale(record):
    """The yes/no that the rationale's conclusion decides, worked out independently of phantom.py."""
    facts = phantom.parse_caption(record.cot)
    conclusion = record.cot.split(". ", 2)[2]
    q = record.question
    if record.category == "threshold":
        k = 1 if "one lesion" in q else 2
        return (facts["count"] > k) == ("more than" in q)
    if record.category == "scan":
        asked, seen = conclusion.removeprefix("Asked: ").rstrip(".").split("; it is ")
        return asked == seen
    if record.category == "side":
        side = "left" if "left" in q else "right"
        present = any(quadrant.startswith(side) for quadrant in facts["quadrants"])
        return present == q.startswith("Is there")
    if record.category == "organ_side":
        organ_side = "left" if "heart" in q else "right"
        same = facts["quadrants"][0].startswith(organ_side)
        return same == ("same side" in q)
    if record.category == "kind":
        kind = "mass" if "mass" in q else "nodule"
        return (facts["kind"] == kind) == q.startswith("Is there")
    raise AssertionError(record.category)


def test_closed_answers_follow_from_the_caption(train):
    records, _ = train
    closed = [r for r in records if r.answer_type == "closed"][:800]
    for record in closed:
        assert (record.answer == "yes") == _answer_from_rationale(record), (record.question, record.cot)
    assert {r.category for r in closed} == set(phantom.CLOSED_QUESTIONS)


def test_open_answers_follow_from_the_caption(train):
    records, _ = train
    for record in [r for r in records if r.answer_type == "open"][:800]:
        facts = phantom.parse_caption(record.cot)
        concept = next(c for c, pair in phantom.SYNONYMS.items() if record.answer in pair)
        if record.category == "finding":
            n, kind = facts["count"], facts["kind"]
            assert concept == ("normal" if n == 0 else kind if n == 1 else phantom.PLURAL[kind])
        else:
            side = ("left" if "heart" in record.question else "right") if record.category == "organ_side" or \
                "same side as" in record.question or "'s side" in record.question and "patient" not in record.question \
                else "left" if "left" in record.question else "right"
            where = facts["quadrants"] if record.category == "count" else \
                [q for q in facts["quadrants"] if q.startswith(side)]
            assert concept == str(len(where)), (record.question, record.cot, record.answer)


def test_phantom_corpus_covers_every_text(train):
    corpus = set(phantom.phantom_corpus())
    records, _ = train
    assert {r.question for r in records} <= corpus and {r.answer for r in records} <= corpus
    words = {word for text in corpus for word in text.split()}
    assert all(set(r.cot.split()) <= words for r in records)


# sha256 (first 16 hex digits) of images' pixels, computed with phantom.py as it was before the
# "ood" split (and the implied_answer refactor) came: adding a split must not move any other image.
IMAGE_HASHES = {("train", 0): "96d2020daa308878", ("train", 2): "788cda7e5497b443",
                ("val", 0): "03caa4b21ec2d9c7", ("test", 0): "ac66657a284269e2", ("test", 2): "1d371db9ce84797a"}


def pixel_hash(image):
    return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()[:16]


def test_the_ood_split_moves_no_other_image():
    for (split, index), digest in IMAGE_HASHES.items():
        assert pixel_hash(phantom.phantom_dataset(split, size=3)[index].image) == digest, (split, index)
    assert pixel_hash(phantom.phantom_captions(1, start=5)[0][0]) == "6ee413828ac937ab"  # the base stream


def test_ood_split_is_another_scanner_on_images_of_its_own():
    ood = load_dataset("phantom", "ood")
    assert len(ood) == 500 and all(r.id.startswith("phantom-ood-") for r in ood)
    assert texts(ood[:40]) == texts(phantom.phantom_dataset("ood", size=40))  # deterministic, a prefix
    splits = {split: set(image_bytes(phantom.phantom_dataset(split, size=150))) for split in phantom.PHANTOM_SPLITS}
    assert all(not splits["ood"] & splits[split] for split in phantom.SPLITS)
    # the shift alone, on test images: mid-greys brighter (gamma 0.9: 128 -> 137), noisier, bright
    # lesions still far brighter than soft tissue
    for record in phantom.phantom_dataset("test", size=20)[::4]:
        plain = np.asarray(record.image, np.float32)[..., 0]
        shifted = np.asarray(phantom.other_scanner(record.image, np.random.default_rng(0)), np.float32)[..., 0]
        mid = (plain > 90) & (plain < 170)
        assert 5 < (shifted[mid] - plain[mid]).mean() < 15, record.id
        lesion = plain > 220
        if lesion.sum() > 30:
            assert shifted[lesion].mean() > shifted[mid].mean() + 50, record.id
    with pytest.raises(DataError, match="unknown split 'oodd'.*ood"):
        phantom.phantom_dataset("oodd")
    with pytest.raises(DataError, match="unknown split 'ood'"):
        load_dataset("json", "ood", root=".")
