"""What the phantom lets a metric check that no training reward optimises: an open answer's
concept with synonyms folded ("two lesions" = "a pair of lesions"), and the reasoning metric, whether
the facts a <think> states are true of the image and whether the answer follows from them.
evaluate.py reports both beside BLEU, ROUGE and the cosine (which are, or resemble, rewards).

    reasoning_summary(reasoning_scores(rows, answers), selected)
    -> {"reasoning": {"n", "stated", "facts", "fact_accuracy", "consistency"}}
"""

import numpy as np

from phantom import SYNONYMS, fact_truths, implied_answer, parse_caption, parse_question
from rewards import exact_match, normalize, think_text


# Each phrasing of a phantom answer, normalised -> the concept it names (phantom.SYNONYMS).
PHANTOM_CONCEPTS = {" ".join(normalize(name)): concept for concept, names in SYNONYMS.items() for name in names}


def phantom_concept(answer):
    """What a phantom answer names, with synonyms folded: "two lesions" and "a pair of lesions" ->
    "2"; an answer that is no phantom wording -> its words, sorted."""
    words = normalize(answer)
    return PHANTOM_CONCEPTS.get(" ".join(words), " ".join(sorted(words)))


def same_concept(prediction, reference):
    concept = phantom_concept(prediction)   # "" for an empty answer, which never matches
    return float(bool(concept) and concept == phantom_concept(reference))


def masked_mean(values, mask):
    """The mean of values[mask], None where the mask selects nothing."""
    return float(values[mask].mean()) if mask.any() else None


def reasoning_scores(rows, answers):
    """The reasoning metric's per-row counts, independent of every reward: on phantom rows with a
    reference rationale (`cot`, which starts with the image's caption) and a question of a known
    kind (`category`), `reasoned` is 1. `stated` is 1 where the <think> starts with a readable
    caption (phantom.parse_caption); its facts (phantom.fact_truths: modality, region, count, kind
    where lesions are stated, each stated quadrant) are counted in `facts`, the true ones in
    `true_facts`. `consistent` is 1 where the answer is the one the rationale's OWN stated facts
    imply for the question (phantom.implied_answer), true or not: closed, the same yes/no; open,
    the same concept (phantom_concept). A <think> with no readable caption states no facts: 0 in
    all but `reasoned`.

        think "CT of the chest. Two nodules: left upper, right lower. ..." of an image that is a CT
        of the chest with one nodule, left upper; question "How many lesions are there?", answer
        "a pair of lesions" -> facts 6 (modality, region, count, kind, 2 quadrants), true_facts 4
        (the count and "right lower" are false), consistent 1 (two stated, two answered).
    """
    names = ("reasoned", "stated", "facts", "true_facts", "consistent")
    per_row = {name: np.zeros(len(rows)) for name in names}
    for i, (row, answer) in enumerate(zip(rows, answers)):
        truth = parse_caption(row.get("cot") or "") if row["dataset"] == "phantom" else None
        kind = (row.get("category") or "").lower()
        asked = parse_question(kind, row["question"])
        if truth is None or asked is None:
            continue
        per_row["reasoned"][i] = 1
        stated = parse_caption(think_text(row["prediction"]))
        if stated is None:
            continue
        truths = fact_truths(stated, truth)
        implied = implied_answer(kind, *asked, stated)
        per_row["stated"][i], per_row["facts"][i], per_row["true_facts"][i] = 1, len(truths), sum(truths)
        if implied is not None:
            per_row["consistent"][i] = (exact_match(answer, implied) if row["answer_type"] == "closed"
                                        else float(phantom_concept(answer) == implied))
    return per_row


def reasoning_summary(per_row, selected):
    """{"reasoning": {n, stated, facts, fact_accuracy, consistency}} over the selected rows that
    reasoning_scores scores, or {} where there are none (a dataset other than the phantom):
    fact_accuracy = true facts / stated facts, pooled over rows; consistency = consistent answers /
    rows that state facts; stated = rows that state facts / n."""
    reasoned = selected & (per_row["reasoned"] > 0)
    if not reasoned.any():
        return {}
    stated, facts = reasoned & (per_row["stated"] > 0), per_row["facts"][reasoned].sum()
    return {"reasoning": {"n": int(reasoned.sum()), "stated": masked_mean(per_row["stated"], reasoned),
                          "facts": int(facts),
                          "fact_accuracy": float(per_row["true_facts"][reasoned].sum() / facts) if facts else None,
                          "consistency": masked_mean(per_row["consistent"], stated)}}
