"""Tests for phantom.py, the synthetic dataset: sizes, determinism, disjoint splits, balanced
answers, wordings, rationales, laterality. Run: python -m pytest test_phantom.py -q"""

import argparse
import collections
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


def test_open_references_are_worded_as_their_question_asks():
    for split in ("train", "test"):
        records = [r for r in phantom.phantom_dataset(split, size=1500) if r.answer_type == "open"]
        phrasings = collections.Counter()
        for record in records:
            kind, phrasings_of_kind = next((k, p) for k, p in phantom.QUESTIONS.items() if record.question in p)
            phrasing = phrasings_of_kind.index(record.question)
            assert record.answer == phantom._phrasings(record.answer)[phrasing], (record.question, record.answer)
            phrasings[kind, phrasing] += 1
        # both phrasings of every open question are asked, about equally often
        for kind in ("modality", "region", "finding", "count", "location"):
            n0, n1 = phrasings[kind, 0], phrasings[kind, 1]
            assert n0 > 0 and n1 > 0 and abs(n0 - n1) <= 3 * ((n0 + n1) / 4) ** 0.5, (split, kind, n0, n1)


def test_random_wording_alternates_held_out_references_and_draws_training_ones():
    def counts(records):
        return collections.Counter(r.answer for r in records if r.answer_type == "open")
    test = counts(phantom.phantom_dataset("test", wording="random"))
    for pair in [*phantom.SYNONYMS.values(), ("left upper", "upper left"), ("right lower", "lower right")]:
        assert abs(test[pair[0]] - test[pair[1]]) <= 1 and test[pair[0]] > 0, pair
    train = phantom.phantom_dataset("train", size=1500, wording="random")
    assert max(abs(counts(train)[a] - counts(train)[b]) for a, b in phantom.SYNONYMS.values()) > 1
    # the wording no longer follows the question: both wordings answer the same phrasing
    modality = {r.answer for r in train if r.question == "What imaging modality is this?"}
    assert {"MRI", "magnetic resonance imaging"} <= modality
    assert [r.answer for r in load_dataset("phantom", "test", limit=300, phantom_wording="random")] == \
        [r.answer for r in phantom.phantom_dataset("test", size=300, wording="random")]
    with pytest.raises(DataError, match="unknown wording 'both'"):
        phantom.phantom_dataset("val", wording="both")


def test_phantom_splits_share_no_image():
    splits = {split: set(image_bytes(phantom.phantom_dataset(split, size=150))) for split in phantom.SPLITS}
    assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]


def test_phantom_answers_are_balanced_and_not_given_by_the_question(train):
    records, _ = train
    closed = [r for r in records if r.answer_type == "closed"]
    assert 0.4 < len(closed) / len(records) < 0.6
    assert {r.answer for r in closed} == {"yes", "no"}
    assert 0.45 < sum(r.answer == "yes" for r in closed) / len(closed) < 0.55
    # each closed question alone is a coin flip: its yes count within 3 binomial sd of n/2
    by_question = collections.defaultdict(collections.Counter)
    for record in closed:
        by_question[record.question][record.answer] += 1
    for question, counts in by_question.items():
        n = sum(counts.values())
        assert abs(counts["yes"] - n / 2) <= 3 * (n / 4) ** 0.5, (question, counts)


def test_phantom_answers_use_both_synonyms(train):
    records, _ = train
    answers = {r.answer for r in records if r.answer_type == "open"}
    for pair in (("MRI", "magnetic resonance imaging"), ("CT", "computed tomography"),
                 ("X-ray", "radiograph"), ("ultrasound", "sonography"), ("chest", "thorax"),
                 ("nodule", "small nodule"), ("two", "2"), ("left upper", "upper left")):
        assert set(pair) <= answers, pair


def test_phantom_rationales_are_short_and_name_what_the_answer_needs(train):
    records, _ = train
    assert all(25 <= len(r.cot.split()) <= 55 for r in records)
    for record in records[:300]:
        if record.question == "What imaging modality is this?":
            modality = next(m for m, names in phantom.SYNONYMS.items() if record.answer in names)
            assert phantom.MODALITY_CUES[modality] in record.cot


def test_left_is_the_patients_left_on_the_image_right():
    # a bright MRI nodule drawn by hand in the image's upper RIGHT quadrant
    scene = phantom.PhantomScene("mri", "chest", (56.0, 56.0, 49.0, 42.0), [(80.0, 35.0, 8.0)], "nodule")
    image = np.asarray(phantom.render_phantom(scene, 112, np.random.default_rng(0)))[..., 0]
    assert image[31:39, 76:84].mean() > 200 and image[31:39, 28:36].mean() < 120
    questions = {q: a for q, a, _, _ in phantom._phantom_questions(scene, 112, np.random.default_rng(0))}
    location = questions.get("Where is the lesion located?") or questions["Which quadrant holds the lesion?"]
    assert location in ("left upper", "upper left")
    side_question = next(q for q in questions if q.startswith("Is the lesion on the"))
    assert questions[side_question] == ("yes" if "left" in side_question else "no")
    assert "spot lies on the patient's left upper side, a nodule" in phantom.phantom_cot(scene, 112)


def test_rationales_end_with_a_conclusion_that_decides_the_answer(train):
    records, _ = train
    checked = 0
    for record in records[:600]:
        last = record.cot.rsplit(". ", 1)[-1]
        for asked_form, seen_form in (("Is this {};", "it is {}."), ("Does this image show the {};", "it shows the {}."),
                                      ("Is the lesion on the {} side;", "the lesion is on the {}.")):
            prefix, suffix = asked_form.split("{}")
            if record.question.startswith(prefix) and record.question != "Is this scan normal?":
                asked = record.question[len(prefix):-1].removesuffix(" side")
                seen = last.split("; ")[1][len(seen_form.split("{}")[0]):-1]
                assert last.startswith("The question asks about ")
                assert (asked == seen) == (record.answer == "yes"), (record.question, last)
                checked += 1
    assert checked > 100


def test_phantom_corpus_covers_every_text(train):
    corpus = set(phantom.phantom_corpus())
    records, _ = train
    assert {r.question for r in records} <= corpus and {r.answer for r in records} <= corpus
    words = {word for text in corpus for word in text.split()}
    assert all(set(r.cot.split()) <= words for r in records)
