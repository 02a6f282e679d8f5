"""Shared test fixtures, the check that the project's own calls raise no deprecation warning, and
the suite kept on the CPU where there is a GPU.

Every test, and the import of every test module, fails when a FutureWarning, DeprecationWarning or
PendingDeprecationWarning is issued while one of the project's .py files is on the call stack,
whichever library issues it: transformers attributes its deprecated-argument warning to its own
wrappers (`past_key_values` is deprecated ... Use `cache` instead: transformers/utils/generic.py),
so the warning's own filename would not name the project's call that caused it.
"""

import contextlib
import os
import traceback
import warnings

import pytest

PROJECT = os.path.dirname(os.path.abspath(__file__))

# The tests assert the CPU's numbers (bit-identical resumes, one process against two under gloo,
# fp32 references); on a GPU machine the scripts would default to CUDA and bf16-mixed, and torchrun
# to one GPU per process. So the suite runs on the CPU there too: the GPUs are hidden from it and
# from the processes it starts (CUDA reads this when it first initialises). MEDVQA_TEST_CUDA=1
# leaves them visible.
if os.environ.get("MEDVQA_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


@contextlib.contextmanager
def deprecations_from_project():
    """Yields a list that collects "file.py:line: Category: message" for each deprecation warning
    issued inside the block with a project file on the call stack (the innermost such call). The
    block answers for those; every other warning goes on to the machinery around it (pytest's)."""
    found = []
    with warnings.catch_warnings():
        for category in DEPRECATIONS:          # once per place, whatever the default filters hide
            warnings.filterwarnings("default", category=category)
        passed_on = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DEPRECATIONS):
                ours = [f for f in traceback.extract_stack()[:-1]
                        if os.path.dirname(os.path.abspath(f.filename)) == PROJECT and f.filename != __file__]
                if ours:
                    found.append(f"{os.path.basename(ours[-1].filename)}:{ours[-1].lineno}: "
                                 f"{category.__name__}: {message}")
                    return
            passed_on(message, category, filename, lineno, file, line)
        warnings.showwarning = record
        yield found


def failure(found):
    return "deprecated calls from the project's files:\n  " + "\n  ".join(dict.fromkeys(found))


def checked():
    """A hook wrapper's body: the wrapped phase fails on a deprecation warning from the project."""
    with deprecations_from_project() as found:
        result = yield
    if found:
        pytest.fail(failure(found), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):       # fixtures included, module-scoped ones (a short SFT run) too
    return (yield from checked())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from checked())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    return (yield from checked())


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Importing a test module imports the project's modules: their import-time warnings count."""
    with deprecations_from_project() as found:
        report = yield
    if found and report.outcome != "failed":
        report.outcome, report.longrepr = "failed", failure(found)
    return report


class Killed(Exception):
    """Stands for a training job killed from outside."""


@pytest.fixture
def kill_after_first_checkpoint(monkeypatch):
    """kill_after_first_checkpoint(module): `module` stops, as if killed, right after it writes its
    first checkpoint; the Killed exception is returned for pytest.raises."""
    def arm(module):
        real = module.save_checkpoint

        def save_then_die(*args, **kwargs):
            real(*args, **kwargs)
            monkeypatch.setattr(module, "save_checkpoint", real)
            raise Killed
        monkeypatch.setattr(module, "save_checkpoint", save_then_die)
        return Killed
    return arm


@pytest.fixture(scope="session")
def scorer():
    """rewards.SemanticScorer on all-MiniLM-L6-v2, loaded once for the whole run (a few seconds)."""
    from rewards import SemanticScorer
    return SemanticScorer()


@pytest.fixture
def fixed_scorers(monkeypatch):
    """evaluate.py scores with test_rewards.FixedScorer (exact values) instead of loading its encoders."""
    import evaluate
    from test_rewards import FixedScorer
    monkeypatch.setattr(evaluate, "SemanticScorer", lambda *args, **kwargs: FixedScorer())
    monkeypatch.setattr(evaluate, "BERTScorer", lambda *args, **kwargs: FixedScorer())


def assert_same_trained_adapters(straight, split):
    """Two LoRA runs (an uninterrupted one and a resumed one) saved the same adapters, bit for bit,
    and the adapters did train (some lora_B is not zero: B starts at zero). Returns the first run's
    adapter tensors for further checks."""
    import torch
    from safetensors.torch import load_file
    a, b = (load_file(f"{path}/adapter_model.safetensors") for path in (straight, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B.weight") and a[k].abs().max() > 0 for k in a)
    return a
