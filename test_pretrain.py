"""Tests of pretrain.py, the phantom base model: the probe's arithmetic, a short build, and sft.py
building the base on first use. Run: python -m pytest test_pretrain.py -q"""

import json
import os

import pytest

import pretrain
import sft
from model import load_model


def test_caption_accuracy_counts_each_attribute_where_it_applies():
    truth = ["CT of the chest. One mass: left upper.", "MRI of the head. No lesion.",
             "X-ray of the abdomen. Two nodules: left lower, right upper."]
    predicted = ["CT of the chest. One mass: right upper.", "MRI of the head. No lesion.",
                 "this is not a caption"]
    accuracy = pretrain.caption_accuracy(predicted, truth)
    # modality, region, count over all 3 images; kind and quadrants over the 2 with lesions
    assert accuracy == dict(modality=2 / 3, region=2 / 3, count=2 / 3, kind=1 / 2, quadrants=0.0, caption=1 / 3)


def test_a_short_build_writes_a_base_model_with_its_probe(tmp_path):
    out = str(tmp_path / "base")
    perception = pretrain.pretrain(out, steps=2, batch_size=4, probe_size=4)
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["script"] == "pretrain.py" and meta["probe"] == perception and meta["steps"] == 2
    assert set(perception) == {*pretrain.ATTRIBUTES, "caption"}
    assert all(0.0 <= value <= 1.0 for value in perception.values())
    model, processor = load_model(out, device="cpu")     # a plain checkpoint that reloads
    assert processor.tokenizer.convert_tokens_to_ids("<think>") != processor.tokenizer.unk_token_id
    with pytest.raises(SystemExit, match="exists"):
        pretrain.main(["--out", out])                    # never replaces a folder


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
