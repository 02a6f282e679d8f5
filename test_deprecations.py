"""No deprecated call from the project's files: what breaks when a library removes it (issue 21).

conftest.py fails any test during which a FutureWarning or DeprecationWarning is issued with one of
the project's files on the call stack; here the check is checked, and the scripts' code paths
(sft.py, grpo.py, evaluate.py on the tiny model) run once under it, transformers' deprecation log
messages included.
"""

import logging

import pytest
import torch
from transformers import DynamicCache

import evaluate
import grpo
import sft
from conftest import deprecations_from_project
from model import load_model

TINY = ["--limit", "8", "--eval-size", "2", "--max-new-tokens", "8", "--save-every", "0"]


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_check_names_a_deprecated_argument_that_transformers_reports_from_its_own_wrapper():
    """transformers attributes "`past_key_values` is deprecated" to utils/generic.py, not to the
    caller; the check finds this file's call on the stack."""
    model, processor = load_model("tiny", device="cpu", seed=0)
    ids = torch.tensor([[5, 6, 7]])
    with deprecations_from_project() as found:
        model(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True)
    assert found == []
    with deprecations_from_project() as found:
        model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    assert len(found) == 1 and found[0].startswith("test_deprecations.py:")
    assert "FutureWarning: `past_key_values` is deprecated" in found[0]


def test_sft_grpo_and_evaluate_make_no_deprecated_call(tmp_path):
    from transformers.utils.logging import get_logger, warning_once
    warning_once.cache_clear()               # transformers logs each deprecation once per process
    log = Messages()
    get_logger("transformers").addHandler(log)
    try:
        with deprecations_from_project() as found:
            sft.main(TINY + ["--model", "tiny", "--out", str(tmp_path / "sft"), "--steps", "2", "--batch-size", "2",
                             "--gradient-checkpointing"])
            grpo.main(TINY + ["--model", str(tmp_path / "sft"), "--out", str(tmp_path / "grpo"), "--steps", "1",
                              "--prompts-per-step", "2", "--num-generations", "2", "--train-offset", "0"])
            evaluate.main(["--model", str(tmp_path / "grpo"), "--limit", "2", "--max-new-tokens", "8",
                           "--out", str(tmp_path / "metrics.json")])
    finally:
        get_logger("transformers").removeHandler(log)
    assert found == []
    assert [m for m in log.messages if "deprecat" in m.lower()] == []
