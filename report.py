"""One self-contained HTML page of a model's answers, to look at in a browser (evaluate.py --report).

    python evaluate.py --model runs/sft --report sft.html
    python evaluate.py --predictions sft.jsonl --compare grpo.jsonl --report sft-vs-grpo.html

The page holds everything: the metric tables, and every prediction with its image (a thumbnail;
a click opens it large), the question, the reference, the model's <think> and <answer>, its scores
and category. Images are embedded as JPEG data URIs, each distinct image once; nothing is fetched
and no server is needed. Filters (plain JavaScript): wrong only, open/closed, dataset, category,
text search; with --compare, where the two models differ and which one is right. The filters are
kept in the address (sft.html#wrong=1&type=closed&category=SIDE), so a view can be bookmarked or
shared. It stays usable at 10,000 predictions: one page of --report-page-size answers is drawn
at a time.
"""

import base64
import html
import io
import json
import sys

from data import DataError, VQARecord, dataset_from_args, load_image
from rewards import extract_answer, normalize, think_text

# Per-row scores shown beside each answer: (label, score_rows key), open and closed.
OPEN_SCORES = (("BLEU-1", "bleu1"), ("ROUGE-1", "rouge1"), ("BERTScore", "bertscore"), ("recall", "recall"),
               ("semantic", "semantic"))
CLOSED_SCORES = (("accuracy", "accuracy"),)


def image_uri(image, longest):
    """A PIL image as a JPEG data URI, shrunk so its longest side is at most `longest` pixels."""
    image = image.convert("RGB")
    image.thumbnail((longest, longest))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_records(rows, option_sets, split):
    """(dataset, id) -> the record whose image the report shows for a predictions file: the row's
    own image path, else the record of that id and question in the split of the dataset options
    (data.add_data_args; one set per dataset) it names; the phantom is drawn again, so give the
    --data-seed and --phantom-wording it was evaluated with."""
    records = {(row["dataset"], row["id"]): VQARecord(row["id"], row["image"], row["question"], row["answer"],
                                                      row["answer_type"], row["dataset"])
               for row in rows if row.get("image")}
    questions = {(row["dataset"], row["id"]): row["question"] for row in rows}
    wanted = {row["dataset"] for row in rows if (row["dataset"], row["id"]) not in records}
    for options in option_sets:
        if options.dataset in wanted:
            try:
                records.update(((r.dataset, r.id), r) for r in dataset_from_args(options, split)
                               if questions.get((r.dataset, r.id)) == r.question)  # other options: other ids
            except DataError as error:
                print(f"report.py: no images from {options.dataset}: {error}", file=sys.stderr)
    missing = sum(key not in records for key in questions)
    if missing:
        print(f"report.py: {missing} of {len(questions)} predictions have no image (no image path in the file, "
              "and no record of that id in --dataset/--data-root/--split)", file=sys.stderr)
    return records


def embedded_images(rows, records, longest):
    """(data URIs, index of each row's image or -1): each distinct image (a file, or one phantom
    image shared by its questions) encoded once; an unreadable or unknown one is -1."""
    uris, index_of, out, failed = [], {}, [], 0
    for row in rows:
        record = records.get((row["dataset"], row["id"]))
        if record is None:
            out.append(-1)
            continue
        key = record.image if isinstance(record.image, str) else id(record.image)
        if key not in index_of:
            try:
                uris.append(image_uri(load_image(record), longest))
                index_of[key] = len(uris) - 1
            except DataError:
                index_of[key] = -1
                failed += 1
        out.append(index_of[key])
    if failed:
        print(f"report.py: {failed} image(s) could not be read; their answers are shown without", file=sys.stderr)
    return uris, out


def row_view(row, scores, i, categories):
    """What the page shows of one prediction (scores in percent, rounded)."""
    names = OPEN_SCORES + (("concept", "concept"),) if row["dataset"] == "phantom" else OPEN_SCORES
    shown = names if row["answer_type"] == "open" else CLOSED_SCORES
    return {"think": think_text(row["prediction"]), "said": extract_answer(row["prediction"]),
            "right": int(scores["right"][i]), "format": int(scores["format"][i]), "categories": list(categories),
            "scores": [[label, round(100 * float(scores[key][i]), 1)] for label, key in shown]}


def write_report(path, title, rows, scores, tables, records, categories, compare=None, page_size=50, image_px=384):
    """Write the page (see the module docstring).

    rows, scores: a predictions file's rows and their score_rows scores; tables: metric_tables of
    their metrics; records: (dataset, id) -> the record whose image is shown; categories: each
    row's folded categories (evaluate.category_parts); compare: None or (name, rows, scores, tables)
    of a second model, matched to rows by dataset and id.
    """
    uris, image_index = embedded_images(rows, records, image_px)
    shown = []
    for i, row in enumerate(rows):
        shown.append({"key": f"{row['dataset']}/{row['id']}", "dataset": row["dataset"], "type": row["answer_type"],
                      "question": row["question"], "answer": row["answer"], "image": image_index[i]} | row_view(row, scores, i, categories[i]))
    data = {"title": title, "pageSize": page_size, "images": uris, "rows": shown, "compare": None}
    sections = [("" if compare is None else f"A: {title}", tables)]
    if compare is not None:
        name, other_rows, other_scores, other_tables = compare
        at = {(row["dataset"], row["id"]): i for i, row in enumerate(other_rows)}
        for view, row in zip(shown, rows):
            j = at.get((row["dataset"], row["id"]))
            if j is not None:
                view["b"] = row_view(other_rows[j], other_scores, j, ())
                view["b"]["differ"] = int(normalize(view["said"]) != normalize(view["b"]["said"]))
        data["compare"] = {"name": name, "matched": sum("b" in view for view in shown), "rows": len(other_rows)}
        sections.append((f"B: {name}", other_tables))
    page = PAGE.replace("$TITLE", html.escape(title)).replace("$TABLES", tables_html(sections))
    page = page.replace("$DATA", json.dumps(data, ensure_ascii=False).replace("<", "\\u003c"))
    with open(path, "w", encoding="utf-8") as file:
        file.write(page)


def tables_html(sections):
    """The metric tables (tables.metric_tables) of each model as HTML."""
    out = []
    for heading, tables in sections:
        if heading:
            out.append(f"<h3>{html.escape(heading)}</h3>")
        for title, header, rows in tables:
            cells = "".join(f"<th>{html.escape(cell)}</th>" for cell in [title, *header])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
            out.append(f"<table class=metrics><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(out)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>$TITLE</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; margin: 0 0 8px; } h3 { margin: 12px 0 4px; }
table.metrics { border-collapse: collapse; margin: 6px 0 12px; font-size: 12px; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; }
#bar { position: sticky; top: 0; background: #f4f4f4; padding: 8px; border: 1px solid #ddd; z-index: 1; }
#bar label { margin-right: 12px; } #bar input[type=search] { width: 220px; }
#answers { border-collapse: collapse; width: 100%; margin-top: 8px; }
#answers > tbody > tr > td { border-top: 1px solid #ddd; padding: 6px; vertical-align: top; }
#answers th { text-align: left; padding: 4px 6px; background: #eee; }
tr.right > td:first-child { border-left: 5px solid #2a8; } tr.wrong > td:first-child { border-left: 5px solid #d33; }
img.thumb { width: 96px; height: 96px; object-fit: contain; background: #000; cursor: zoom-in; }
.said { font-weight: 600; } .ok { color: #186; } .no { color: #c22; }
.think { color: #555; font-size: 12px; max-width: 420px; white-space: pre-wrap; }
.meta { color: #666; font-size: 12px; } .scores { font-size: 12px; color: #444; white-space: nowrap; }
#overlay { display: none; position: fixed; inset: 0; background: rgba(0,0,0,.85); z-index: 2;
           align-items: center; justify-content: center; cursor: zoom-out; }
#overlay img { max-width: 92vw; max-height: 92vh; image-rendering: auto; }
.legend { color: #555; font-size: 12px; }
</style></head><body>
<h1>$TITLE</h1>
<details open><summary>metrics (percent; n = questions)</summary>$TABLES</details>
<p class=legend>An answer counts as right (green) when its normalised words equal the reference's
(closed: accuracy; open: exact match; on the phantom, the same concept). Scores in percent.</p>
<div id=bar>
<label><input type=checkbox id=wrong> wrong only</label>
<label>type <select id=type><option value="">all</option><option>open</option><option>closed</option></select></label>
<label>dataset <select id=dataset><option value="">all</option></select></label>
<label>category <select id=category><option value="">all</option></select></label>
<label id=cmplabel hidden>compare <select id=cmp><option value="">all</option>
<option value=differ>answers differ</option><option value=a>only A right</option><option value=b>only B right</option>
</select></label>
<label>search <input type=search id=q placeholder="question, answer, id"></label>
<button id=prev>&lt;</button> <span id=pageinfo></span> <button id=next>&gt;</button>
</div>
<table id=answers><thead id=head></thead><tbody id=rows></tbody></table>
<div id=overlay><img alt="scan"></div>
<script type="application/json" id=data>$DATA</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const $ = id => document.getElementById(id);
const FILTERS = ["wrong", "type", "dataset", "category", "cmp", "q"];
let state = {page: 1};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function options(select, values) {
  for (const v of values) select.appendChild(el("option", "", v));
}
options($("dataset"), [...new Set(D.rows.map(r => r.dataset))].sort());
options($("category"), [...new Set(D.rows.flatMap(r => r.categories))].sort());
if (D.compare) $("cmplabel").hidden = false;

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state = {page: Math.max(1, parseInt(p.get("page") || "1", 10) || 1)};
  for (const f of FILTERS) state[f] = p.get(f) || "";
  $("wrong").checked = state.wrong === "1";
  for (const f of ["type", "dataset", "category", "cmp", "q"]) $(f).value = state[f];
}
function writeHash() {
  const p = new URLSearchParams();
  for (const f of FILTERS) if (state[f]) p.set(f, state[f]);
  if (state.page > 1) p.set("page", state.page);
  history.replaceState(null, "", "#" + p.toString());
}
function keep(r) {
  if (state.wrong === "1" && r.right) return false;
  if (state.type && r.type !== state.type) return false;
  if (state.dataset && r.dataset !== state.dataset) return false;
  if (state.category && !r.categories.includes(state.category)) return false;
  if (state.cmp) {
    if (!r.b) return false;
    if (state.cmp === "differ" && !r.b.differ) return false;
    if (state.cmp === "a" && !(r.right && !r.b.right)) return false;
    if (state.cmp === "b" && !(r.b.right && !r.right)) return false;
  }
  if (state.q) {
    const q = state.q.toLowerCase();
    const text = [r.key, r.question, r.answer, r.said, r.think, r.b ? r.b.said : ""].join("\\n").toLowerCase();
    if (!text.includes(q)) return false;
  }
  return true;
}
function answerCell(v, name) {
  const td = el("td");
  if (name) td.appendChild(el("div", "meta", name));
  td.appendChild(el("div", "said " + (v.right ? "ok" : "no"), (v.said || "(empty)") + (v.right ? "  \\u2713" : "  \\u2717")));
  if (v.think) td.appendChild(el("div", "think", v.think));
  if (!v.format) td.appendChild(el("div", "meta", "not in the <think>/<answer> format"));
  td.appendChild(el("div", "scores", v.scores.map(([k, x]) => k + " " + x).join(" \\u00b7 ")));
  return td;
}
function header() {
  const tr = el("tr");
  const names = ["#", "image", "question", "reference", D.compare ? "A: " + D.title : "model"];
  if (D.compare) names.push("B: " + D.compare.name);
  for (const n of names) tr.appendChild(el("th", "", n));
  $("head").replaceChildren(tr);
}
function render() {
  const shown = D.rows.map((r, i) => [r, i]).filter(([r]) => keep(r));
  const pages = Math.max(1, Math.ceil(shown.length / D.pageSize));
  state.page = Math.min(state.page, pages);
  const body = $("rows");
  body.replaceChildren();
  for (const [r, i] of shown.slice((state.page - 1) * D.pageSize, state.page * D.pageSize)) {
    const tr = el("tr", r.right ? "right" : "wrong");
    tr.dataset.key = r.key;
    tr.appendChild(el("td", "meta", String(i + 1)));
    const cell = el("td");
    if (r.image >= 0) {
      const img = el("img", "thumb");
      img.loading = "lazy";
      img.src = D.images[r.image];
      img.alt = r.key;
      cell.appendChild(img);
    } else cell.appendChild(el("span", "meta", "no image"));
    tr.appendChild(cell);
    const q = el("td");
    q.appendChild(el("div", "", r.question));
    q.appendChild(el("div", "meta", [r.dataset, r.type, r.categories.join(", ") || "no category", r.key].join(" \\u00b7 ")));
    tr.appendChild(q);
    tr.appendChild(el("td", "", r.answer));
    tr.appendChild(answerCell(r));
    if (D.compare) tr.appendChild(r.b ? answerCell(r.b) : el("td", "meta", "not in " + D.compare.name));
    body.appendChild(tr);
  }
  $("pageinfo").textContent = "page " + state.page + " of " + pages + " \\u00b7 " + shown.length + " of " +
    D.rows.length + " answers" + (D.compare ? " \\u00b7 " + D.compare.matched + " matched in B" : "");
  $("prev").disabled = state.page <= 1;
  $("next").disabled = state.page >= pages;
  document.body.dataset.shown = shown.length;
}
function changed() {
  state.wrong = $("wrong").checked ? "1" : "";
  for (const f of ["type", "dataset", "category", "cmp", "q"]) state[f] = $(f).value;
  state.page = 1;
  writeHash();
  render();
}
for (const f of ["wrong", "type", "dataset", "category", "cmp"]) $(f).addEventListener("change", changed);
$("q").addEventListener("input", changed);
$("prev").addEventListener("click", () => { state.page--; writeHash(); render(); });
$("next").addEventListener("click", () => { state.page++; writeHash(); render(); });
$("rows").addEventListener("click", e => {
  if (!e.target.classList.contains("thumb")) return;
  $("overlay").querySelector("img").src = e.target.src;
  $("overlay").style.display = "flex";
});
$("overlay").addEventListener("click", () => { $("overlay").style.display = "none"; });
document.addEventListener("keydown", e => { if (e.key === "Escape") $("overlay").style.display = "none"; });
window.addEventListener("hashchange", () => { readHash(); render(); });
header();
readHash();
render();
</script></body></html>
"""
