"""Tests of pretrain.py, the phantom base model: the probe's arithmetic, the batch cut to the caption
positions, a short build, Muon's and AdamW's share of the weights and their recipes, the same base
from the same seed, sft.py building the base on first use, and bench_pretrain.py; the instruct
start: its data (no VQA kind, no VQA image), its probe's arithmetic, a short build, sft.py and
grpo.py building it on first use; with --instruct-describe, examples that ask to describe the
image, answered with its caption.
Run: python -m pytest test_pretrain.py -q"""

import hashlib
import json
import os

import numpy as np
import pytest
import torch

import grpo
import pretrain
import sft
from model import load_model
from processor import SYSTEM_PROMPT
from phantom import (CAPTION_PROMPT, CLOSED_QUESTIONS, MODALITY_WORDS, OPEN_QUESTIONS, parse_caption, phantom_captions,
                     phantom_corpus, phantom_dataset)
from rewards import format_reward
from training import learning_rate, target_token_loss


def test_caption_accuracy_counts_each_attribute_where_it_applies():
    truth = ["CT of the chest. One mass: left upper.", "MRI of the head. No lesion.",
             "X-ray of the abdomen. Two nodules: left lower, right upper."]
    predicted = ["CT of the chest. One mass: right upper.", "MRI of the head. No lesion.",
                 "this is not a caption"]
    accuracy = pretrain.caption_accuracy(predicted, truth)
    # modality, region, count over all 3 images; kind and quadrants over the 2 with lesions
    assert accuracy == dict(modality=2 / 3, region=2 / 3, count=2 / 3, kind=1 / 2, quadrants=0.0, caption=1 / 3)


def test_caption_batch_keeps_only_the_logits_the_loss_needs():
    model, processor = load_model("tiny", device="cpu")
    samples = phantom_captions(4)
    full = processor.training_batch([CAPTION_PROMPT] * 4, [im for im, _ in samples], [c for _, c in samples])
    cut = pretrain.caption_batch(processor, samples)
    longest = max(len(processor.tokenizer(c + "<|im_end|>")["input_ids"]) for _, c in samples)
    assert cut["logits_to_keep"] == longest + 1 == cut["labels"].shape[1] < full["labels"].shape[1]
    assert torch.equal(cut["labels"], full["labels"][:, -longest - 1:])
    assert (full["labels"][:, :-longest - 1] == -100).all()     # nothing cut is a target
    with torch.no_grad():
        (loss, n), (loss_cut, n_cut) = target_token_loss(model, full), target_token_loss(model, cut)
    assert n_cut == n == sum(len(processor.tokenizer(c + "<|im_end|>")["input_ids"]) for _, c in samples)
    assert torch.allclose(loss_cut, loss, rtol=1e-6)


def test_captioning_prompts_without_the_system_turn_unless_asked():
    _, processor = load_model("tiny", device="cpu")
    image = phantom_captions(1)[0][0]
    plain, reasoning = pretrain.captioning(processor), pretrain.captioning(processor, "reasoning")
    assert plain.prompt_text(CAPTION_PROMPT) == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                                                 f"{CAPTION_PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    assert reasoning.prompt_text(CAPTION_PROMPT) == processor.prompt_text(CAPTION_PROMPT)
    assert processor.prompt_text(CAPTION_PROMPT).startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>")
    lengths = [p.prompts([CAPTION_PROMPT], [image])["input_ids"].shape[1] for p in (plain, processor)]
    system = len(processor.tokenizer(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n")["input_ids"])
    assert lengths[1] - lengths[0] == system > 40     # the system turn is about half a caption row
    with pytest.raises(ValueError, match="'chatty' is not one of"):
        pretrain.captioning(processor, "chatty")


def test_a_short_build_writes_a_base_model_with_its_probe(tmp_path):
    out = str(tmp_path / "base")
    logged = []
    perception = pretrain.pretrain(out, steps=2, batch_size=4, probe_size=4, probe_every=1, log=logged.append)
    assert len(logged) == 2 and logged[0].startswith("pretrain.py: step 1, 4 images: caption accuracy")
    assert logged[1].startswith(f"pretrain.py: wrote {out} in ")   # the last step: only the final probe
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["script"] == "pretrain.py" and meta["probe"] == perception and meta["steps"] == 2
    assert meta["caption_system"] == "none" and (meta["optimizer"], meta["lr"]) == ("muon", pretrain.LR)
    assert set(perception) == {*pretrain.ATTRIBUTES, "caption"}
    assert all(0.0 <= value <= 1.0 for value in perception.values())
    model, processor = load_model(out, device="cpu")     # a plain checkpoint that reloads
    assert processor.tokenizer.convert_tokens_to_ids("<think>") != processor.tokenizer.unk_token_id
    with pytest.raises(SystemExit, match="exists"):
        pretrain.main(["--out", out])                    # never replaces a folder
    with pytest.raises(SystemExit, match="no such checkpoint directory"):
        pretrain.main(["--probe", str(tmp_path / "none")])   # one line, no traceback


def test_muon_takes_the_hidden_layers_matrices_and_adamw_the_rest():
    model, _ = load_model("tiny", device="cpu")
    names = {id(w): name for name, w in model.named_parameters()}
    muon, adamw = pretrain.optimizers(model, "muon", 1e-3)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    hidden = [names[id(w)] for group in muon.param_groups for w in group["params"]]
    rest = [names[id(w)] for group in adamw.param_groups for w in group["params"]]
    assert sorted(hidden + rest) == sorted(names.values())               # every weight, once
    assert len(hidden) == 33 and all(model.get_parameter(n).ndim == 2 for n in hidden)
    assert {"model.visual.merger.mlp.0.weight", "model.visual.blocks.0.attn.qkv.weight",
            "model.language_model.layers.2.mlp.down_proj.weight"} <= set(hidden)
    assert {"model.language_model.embed_tokens.weight", "model.visual.patch_embed.proj.weight",
            "model.visual.blocks.0.attn.qkv.bias", "model.language_model.norm.weight"} <= set(rest)
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw" and muon.param_groups[0]["weight_decay"] == 0
    (alone,) = pretrain.optimizers(model, "adamw", 1e-3)
    assert isinstance(alone, torch.optim.AdamW) and len(alone.param_groups[0]["params"]) == len(names)
    with pytest.raises(ValueError, match="'sgd' is not one of"):
        pretrain.optimizers(model, "sgd", 1e-3)


def test_fit_steps_every_weight_on_the_schedule(monkeypatch):
    """fit sets the scheduled learning rate on both of Muon's optimizers, and both move their weights."""
    model, processor = load_model("tiny", device="cpu")
    made, real = [], pretrain.optimizers
    monkeypatch.setattr(pretrain, "optimizers", lambda *args: made.extend(real(*args)) or made)
    captioner = pretrain.captioning(processor)
    before = {name: w.detach().clone() for name, w in model.named_parameters()}
    pretrain.fit(model, lambda step: pretrain.caption_batch(captioner, phantom_captions(2, start=2 * step)), 3, 1e-3,
                 "test", optimizer="muon")
    assert [type(stepper) for stepper in made] == [torch.optim.Muon, torch.optim.AdamW]
    last = learning_rate(2, 3, 1e-3, 0.05, 0.1)
    assert all(group["lr"] == last for stepper in made for group in stepper.param_groups)
    assert [name for name, w in model.named_parameters() if torch.equal(before[name], w)] == []   # every weight moved


def test_each_optimizer_has_its_recipe(tmp_path):
    """--optimizer adamw rebuilds the base of before Muon (its steps, batch and lr); the instruct
    tuning keeps AdamW."""
    args = pretrain.parse_args([])
    assert (args.optimizer, args.steps, args.batch_size, args.lr) == ("muon", 1000, 16, 2e-3)
    args = pretrain.parse_args(["--optimizer", "adamw"])
    assert (args.steps, args.batch_size, args.lr) == (3600, 8, 1e-3)
    assert pretrain.parse_args(["--optimizer", "adamw", "--steps", "5"]).steps == 5
    for name in pretrain.OPTIMIZERS:
        with pytest.raises(SystemExit):
            pretrain.parse_args(["--instruct", "--optimizer", name])
    out = str(tmp_path / "adamw")
    pretrain.pretrain(out, steps=2, batch_size=2, probe_size=2, optimizer="adamw", log=lambda _: None)
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert (meta["optimizer"], meta["steps"], meta["batch_size"], meta["lr"]) == ("adamw", 2, 2, 1e-3)


def test_the_probe_prompts_a_base_as_it_was_pretrained(tmp_path, monkeypatch):
    systems = []
    monkeypatch.setattr(pretrain, "probe", lambda model, processor, size, seed: systems.append(processor.system_prompt) or {})
    for caption_system in pretrain.CAPTION_SYSTEMS:
        pretrain.pretrain(str(tmp_path / caption_system), steps=1, batch_size=2, caption_system=caption_system)
        pretrain.main(["--probe", str(tmp_path / caption_system)])
    os.remove(tmp_path / "reasoning" / "meta.json")    # a base built before --caption-system
    pretrain.main(["--probe", str(tmp_path / "reasoning")])
    # each build's own final probe, then the --probe of its folder
    assert systems == [None, None, SYSTEM_PROMPT, SYSTEM_PROMPT, SYSTEM_PROMPT]


def test_a_seed_builds_the_same_base_model(tmp_path):
    for out in ("a", "b"):
        pretrain.pretrain(str(tmp_path / out), steps=3, batch_size=2, probe_size=2, seed=1)
    a, b = (load_model(str(tmp_path / out), device="cpu")[0].state_dict() for out in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_model("tiny", device="cpu", seed=1)[0].state_dict()
    assert not all(torch.equal(a[k], start[k]) for k in a)     # trained: not the initial weights


def test_sft_builds_the_base_model_once_when_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    builds = []
    real = pretrain.pretrain

    def short_build(out, log=print, **_):
        builds.append(out)
        return real(out, steps=1, batch_size=2, probe_size=2, log=log)
    monkeypatch.setattr(pretrain, "pretrain", short_build)
    fast = ["--limit", "8", "--batch-size", "2", "--steps", "1", "--eval-size", "2", "--max-new-tokens", "4",
            "--eval-every", "0", "--save-every", "0"]
    sft.main(fast + ["--out", "runs/a"])
    sft.main(fast + ["--out", "runs/b"])
    assert builds == [pretrain.DEFAULT_BASE]             # built by the first run, reused by the second
    assert os.path.isfile("runs/base/config.json") and os.path.isfile("runs/b/config.json")


def test_bench_pretrain_times_every_part_of_a_step(capsys):
    """bench_pretrain.py drives pretrain.py's own step; a change to it must not break the benchmark."""
    import bench_pretrain
    bench_pretrain.main(["--batch-size", "2", "--steps", "1"])
    lines = capsys.readouterr().out.splitlines()
    shares = {line.split()[0]: float(line.split()[-1].rstrip("%")) for line in lines[1:6]}
    assert list(shares) == list(bench_pretrain.PARTS) and abs(sum(shares.values()) - 100) < 0.5


def test_instruct_examples_ask_no_vqa_kind_about_no_vqa_image():
    records = pretrain.instruct_records(200)
    kinds = {r.category for r in records}
    assert kinds == set(pretrain.INSTRUCT_QUESTIONS) and not kinds & {*OPEN_QUESTIONS, *CLOSED_QUESTIONS}
    assert not {r.question for r in records} & set(phantom_corpus(samples=0))   # no VQA phrasing either
    assert all(r.cot in pretrain.GENERIC_THOUGHTS and parse_caption(r.cot) is None for r in records)
    # each image is base-stream image INSTRUCT_START + i, drawn again here; pretraining draws
    # images 0 .. STEPS x BATCH_SIZE, the caption probe from PROBE_START
    most = max(recipe["steps"] * recipe["batch_size"] for recipe in pretrain.RECIPES.values())
    assert most < pretrain.INSTRUCT_START < pretrain.INSTRUCT_PROBE_START
    assert pretrain.INSTRUCT_PROBE_START + 10_000 < pretrain.PROBE_START
    base = phantom_captions(200, start=pretrain.INSTRUCT_START)
    assert all(np.array_equal(np.asarray(r.image), np.asarray(image)) for r, (image, _) in zip(records, base))
    vqa = phantom_dataset("val")
    assert not any(np.array_equal(np.asarray(r.image), np.asarray(v.image)) for r in records[:20] for v in vqa)
    # the answers, read from each image's caption
    for r, (_, caption) in zip(records, base):
        modality, region = caption.split(". ")[0].split(" of the ")
        if r.category == "modality":
            assert r.answer == modality and r.answer_type == "open"
        elif r.category == "region":
            assert r.answer == region and r.answer_type == "open"
        else:
            asked = next(w for w in (*MODALITY_WORDS.values(), "head", "chest", "abdomen") if f" {w}" in r.question)
            assert r.answer == ("yes" if asked in (modality, region) else "no") and r.answer_type == "closed"
    closed = [r.answer for r in records if r.answer_type == "closed"]
    assert 0.4 < closed.count("yes") / len(closed) < 0.6


def test_instruct_describe_replaces_a_share_of_questions_with_captions():
    plain, records = pretrain.instruct_records(400), pretrain.instruct_records(400, describe=0.25)
    # describe=0 (the default) draws the examples runs/instruct was built on: a fingerprint of the
    # first 300, taken from pretrain.py before --instruct-describe existed
    first = [(r.id, r.question, r.answer, r.answer_type, r.category, r.cot) for r in plain[:300]]
    assert hashlib.sha256(repr(first).encode()).hexdigest()[:16] == "6cfa3003b0b2484c"
    base = phantom_captions(400, start=pretrain.INSTRUCT_START)
    described = [i for i, r in enumerate(records) if r.category == "describe"]
    assert 0.19 < len(described) / 400 < 0.31                       # about P; binomial sd 0.022
    for i, (r, p, (image, caption)) in enumerate(zip(records, plain, base)):
        if i in described:   # the image's caption, the base's pretraining text, after a generic thought
            assert (r.question in pretrain.DESCRIBE_QUESTIONS and r.answer == caption and r.answer_type == "open"
                    and r.cot in pretrain.GENERIC_THOUGHTS and np.array_equal(np.asarray(r.image), np.asarray(image)))
        else:                # every other example is the default's
            assert (r.id, r.question, r.answer, r.category, r.cot) == (p.id, p.question, p.answer, p.category, p.cot)
    assert {records[i].question for i in described} == set(pretrain.DESCRIBE_QUESTIONS)
    vqa_phrasings = {p for kind in (*OPEN_QUESTIONS.values(), *CLOSED_QUESTIONS.values()) for p in kind}
    assert not set(pretrain.DESCRIBE_QUESTIONS) & vqa_phrasings
    # of the phantom's texts, only the pretraining prompt
    assert set(pretrain.DESCRIBE_QUESTIONS) & set(phantom_corpus(samples=0)) == {CAPTION_PROMPT}
    assert all(r.category == "describe" for r in pretrain.instruct_records(20, describe=1.0))
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--instruct", "--instruct-describe", "1.5"])
    assert pretrain.parse_args(["--instruct"]).instruct_describe == 0.0


def test_instruct_probe_counts_format_and_answers(monkeypatch):
    """A model that answers "yes" in the format to everything: format 1, and right where "yes" is."""
    monkeypatch.setattr(pretrain, "complete", lambda model, processor, questions, images, *a, **k:
                        ["<think>I look.</think><answer>Yes</answer>"] * len(questions))
    following = pretrain.instruct_probe(None, None, size=40)
    generic, val = pretrain.instruct_records(40, start=pretrain.INSTRUCT_PROBE_START), phantom_dataset("val")
    closed = [r.answer for r in val if r.answer_type == "closed"]
    assert following == dict(generic_format=1.0, generic_accuracy=sum(r.answer == "yes" for r in generic) / 40,
                             vqa_format=1.0, vqa_sampled_format=1.0,
                             vqa_closed_accuracy=closed.count("yes") / len(closed), vqa_open_accuracy=0.0)
    assert format_reward("<think>I look.</think><answer>Yes</answer>") == 1.0


def test_a_short_instruct_build_writes_a_model_with_its_probe(tmp_path):
    base, out = str(tmp_path / "base"), str(tmp_path / "instruct")
    pretrain.pretrain(base, steps=1, batch_size=2, probe_size=2)
    logged = []
    following = pretrain.instruct(out, base, steps=2, batch_size=2, probe_size=4, val_size=4, describe=0.5,
                                  log=logged.append)
    assert len(logged) == 1 and logged[0].startswith(f"pretrain.py: wrote {out} in ")
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["script"] == "pretrain.py --instruct" and meta["base"] == base and meta["steps"] == 2
    assert meta["describe"] == 0.5
    assert meta["probe"] == following and meta["probe_size"] == meta["probe_val_size"] == 4
    assert set(following) == {"generic_format", "generic_accuracy", "vqa_format", "vqa_sampled_format",
                              "vqa_closed_accuracy", "vqa_open_accuracy"}
    assert all(0.0 <= value <= 1.0 for value in following.values())
    a, b = load_model(base, device="cpu")[0].state_dict(), load_model(out, device="cpu")[0].state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)      # tuned from the base
    with pytest.raises(SystemExit, match="exists"):
        pretrain.main(["--instruct", "--out", out])
    with pytest.raises(SystemExit, match="no base model"):
        pretrain.main(["--instruct", "--base", str(tmp_path / "none"), "--out", str(tmp_path / "other")])
    args = pretrain.parse_args(["--instruct"])
    assert (args.out, args.steps, args.lr) == (pretrain.DEFAULT_INSTRUCT, pretrain.INSTRUCT_STEPS, pretrain.INSTRUCT_LR)
    assert pretrain.parse_args(["--instruct", "--steps", "7"]).steps == 7
    assert pretrain.parse_args([]).steps == pretrain.STEPS


def test_sft_and_grpo_build_the_instruct_model_once_when_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    builds = []
    real_pretrain, real_instruct = pretrain.pretrain, pretrain.instruct

    def short_base(out, log=print, **_):
        builds.append(out)
        return real_pretrain(out, steps=1, batch_size=2, probe_size=2, log=log)

    def short_instruct(out, base, log=print, **_):
        builds.append(out)
        return real_instruct(out, base, steps=1, batch_size=2, probe_size=2, val_size=2, log=log)
    monkeypatch.setattr(pretrain, "pretrain", short_base)
    monkeypatch.setattr(pretrain, "instruct", short_instruct)
    sft.main(["--model", "runs/instruct", "--limit", "8", "--batch-size", "2", "--steps", "1", "--eval-size", "2",
              "--max-new-tokens", "4", "--eval-every", "0", "--save-every", "0", "--out", "runs/a"])
    grpo.main(["--model", "runs/instruct", "--out", "runs/b", "--steps", "1", "--limit", "4", "--prompts-per-step", "2",
               "--num-generations", "2", "--max-new-tokens", "4", "--eval-every", "0", "--save-every", "0",
               "--train-offset", "0"])
    assert builds == [pretrain.DEFAULT_BASE, pretrain.DEFAULT_INSTRUCT]   # built by the first run, reused after
    assert os.path.isfile("runs/instruct/config.json") and os.path.isfile("runs/b/config.json")
