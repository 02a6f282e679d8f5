"""The metric tables of evaluate.py: per dataset and per category, and ARMed's main table (a row per
model, per dataset the open metrics and the closed accuracy), as text, CSV and Markdown.

Every table reads the summaries evaluate.py's score_predictions writes (fractions in [0, 1], counts
as `n`) and shows fractions in percent, counts as they are, and '-' where a group has no questions.
report.py draws the same tables (metric_tables) as HTML. experiments.py's tables over seeds use
mean_std_cell and paired_difference_cell.
"""
import csv

import numpy as np

COLUMNS = (("open n", ("open", "n")), ("BLEU-1", ("open", "bleu1")), ("ROUGE-1", ("open", "rouge1")),
           ("BERTScore", ("open", "bertscore")),
           ("recall", ("open", "recall")), ("semantic", ("open", "semantic")), ("concept", ("open", "concept")),
           ("closed n", ("closed", "n")),
           ("accuracy", ("closed", "accuracy")), ("format", ("format",)),
           ("fact acc", ("reasoning", "fact_accuracy")), ("consist", ("reasoning", "consistency")))
# ARMed's main table: per dataset, the open metrics and the closed accuracy.
PAPER_COLUMNS = (("BLEU-1", ("open", "bleu1")), ("ROUGE-1", ("open", "rouge1")), ("BERTScore", ("open", "bertscore")),
                 ("semantic", ("open", "semantic")), ("recall", ("open", "recall")),
                 ("closed acc", ("closed", "accuracy")))


def metric_cell(summary, keys):
    """A summary's value as shown: a count as it is, a fraction in percent, '-' where there is none."""
    value = summary
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        return "-"
    return str(value) if keys[-1] == "n" else f"{100 * value:.1f}"


def metric_tables(metrics):
    """[(title, header, rows)]: one table with a row per dataset and one for all, then per dataset
    with categories one with a row per category (each with its n, however small)."""
    header = [title for title, _ in COLUMNS]

    def rows(named):
        return [[name] + [metric_cell(summary, keys) for _, keys in COLUMNS] for name, summary in named]

    tables = [("dataset", header, rows([("all", metrics)] + list(metrics.get("by_dataset", {}).items())))]
    for name, summary in metrics.get("by_dataset", {}).items():
        if "by_category" in summary:
            tables.append((f"{name} by category", header, rows(summary["by_category"].items())))
    return tables


def text_table(title, header, rows, width=10):
    """Rows of cells as aligned text, the first column left-aligned under `title`."""
    first = max(len(title), *(len(row[0]) for row in rows)) + 2
    return "\n".join([f"{title:<{first}}" + "".join(f"{cell:>{width}}" for cell in header)] +
                     [f"{row[0]:<{first}}" + "".join(f"{cell:>{width}}" for cell in row[1:]) for row in rows])


def format_table(metrics):
    """The tables of metric_tables as text: metrics in percent, '-' where a group is empty."""
    return "\n\n".join(text_table(*table) for table in metric_tables(metrics))


def paper_table(results):
    """ARMed's main table from {model name: metrics}: (datasets, rows), a row per model, [model, then
    per dataset (in order of appearance) PAPER_COLUMNS in percent, then its open n and closed n]."""
    datasets = list(dict.fromkeys(name for metrics in results.values() for name in metrics["by_dataset"]))
    rows = [[model] + [metric_cell(metrics["by_dataset"].get(name, {}), keys)
                       for name in datasets for _, keys in PAPER_COLUMNS]
            + [metric_cell(metrics["by_dataset"].get(name, {}), (kind, "n"))
               for name in datasets for kind in ("open", "closed")] for model, metrics in results.items()]
    return datasets, rows


def format_paper_table(results):
    """paper_table as text: the dataset names over their columns, the question counts below."""
    datasets, rows = paper_table(results)
    width, metrics = 11, len(datasets) * len(PAPER_COLUMNS)
    first = max(len("model"), *(len(row[0]) for row in rows)) + 2
    lines = [" " * first + "".join(f"{name:^{width * len(PAPER_COLUMNS)}}" for name in datasets),
             f"{'model':<{first}}" + "".join(f"{title:>{width}}" for title, _ in PAPER_COLUMNS) * len(datasets)]
    lines += [f"{row[0]:<{first}}" + "".join(f"{cell:>{width}}" for cell in row[1:1 + metrics]) for row in rows]
    counts = [", ".join(f"{name} {opened} open / {closed} closed" for name, opened, closed
                        in zip(datasets, row[1 + metrics::2], row[2 + metrics::2])) for row in rows]
    if len(set(counts)) == 1:
        return "\n".join(lines + [f"questions: {counts[0]}"])
    return "\n".join(lines + [f"questions, {row[0]}: {text}" for row, text in zip(rows, counts)])


def write_paper_table(results, csv_path=None, markdown_path=None):
    """paper_table as CSV (with the question counts) and as a Markdown table (without)."""
    datasets, rows = paper_table(results)
    header = [f"{name} {title}" for name in datasets for title, _ in PAPER_COLUMNS]
    if csv_path:
        counts = [f"{name} {kind} n" for name in datasets for kind in ("open", "closed")]
        with open(csv_path, "w", newline="") as file:
            csv.writer(file).writerows([["model", *header, *counts], *rows])
    if markdown_path:
        with open(markdown_path, "w") as file:
            file.write("\n".join(markdown_table(["model", *header], [row[:1 + len(header)] for row in rows])) + "\n")


def markdown_table(header, rows):
    """Lines of a Markdown table: the header, the rule, a line per row of cells."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + ["| " + " | ".join(row) + " |" for row in rows]


MISSING = "—"


def mean_std_cell(values):
    """Values over seeds (in %, None where not measured) as "66.2 ± 2.6": mean ± sample std (ddof=1,
    the convention of every table here); one value alone; "—" for none."""
    values = [v for v in values if v is not None]
    if not values:
        return MISSING
    return f"{values[0]:.1f}" if len(values) == 1 else f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def paired_difference_cell(differences):
    """Per-seed differences as "+3.2 ± 1.4 (+4.7, +2.8, +2.0)": mean ± sample std, then each seed's
    ("—" where not measured)."""
    measured = [d for d in differences if d is not None]
    if len(measured) <= 1:
        return f"{measured[0]:+.1f}" if measured else MISSING
    each = ", ".join(MISSING if d is None else f"{d:+.1f}" for d in differences)
    return f"{np.mean(measured):+.1f} ± {np.std(measured, ddof=1):.1f} ({each})"
