"""Shared test fixtures."""

import pytest


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


@pytest.fixture
def fixed_scorers(monkeypatch):
    """evaluate.py scores with test_rewards.FixedScorer (exact values) instead of loading its encoders."""
    import evaluate
    from test_rewards import FixedScorer
    monkeypatch.setattr(evaluate, "SemanticScorer", lambda *args, **kwargs: FixedScorer())
    monkeypatch.setattr(evaluate, "BERTScorer", lambda *args, **kwargs: FixedScorer())
