"""Every registered architecture compiles, adapts and folds correctly, or says exactly why not.

One test per entry of tests/coverage.py (the contract is documented there): it passes
iff every check passes, with the layers glorac cannot adapt excluded at plan time with
a stated reason (``plan.skipped``), or, for an entry expected to have no adaptable layer,
iff the plan refuses it giving every reason. A fast subset runs always; the rest is
marked ``slow`` (``pytest -m "not slow"`` leaves it out). The same sweep, as a table:
``python benchmarks/coverage.py`` (writes docs/coverage.md).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import glorac
from tests.coverage import REGISTRY, Entry, check


def _params():
    for name, entry in REGISTRY.items():
        yield pytest.param(name, id=name, marks=() if entry.fast else (pytest.mark.slow,))


def test_fast_subset_is_representative():
    fast = {name: entry for name, entry in REGISTRY.items() if entry.fast}
    sources = {entry.source for entry in fast.values()}
    assert {"timm", "transformers"} <= sources and 6 <= len(fast) <= 10, sorted(fast)


@pytest.mark.parametrize("name", _params())
def test_architecture(name):
    entry = REGISTRY[name]
    if not entry.available:
        pytest.skip(f"{entry.needs} not installed")
    row = check(entry)
    detail = [f"{name} ({row.family}, front end {row.front_end}, {row.adapted} adapted, "
              f"{len(row.skipped)} skipped): {row.result}"]
    if row.trace_failure:
        detail.append(f"trace failure: {row.trace_failure}")
    if row.skipped:
        detail.append(f"skipped: {row.skipped_summary(collapse=False)}")
    if row.status == "excluded" and not row.expected_excluded:
        detail.append("every layer was excluded, but this entry is expected to be adapted")
    if row.other_weights:
        detail.append("left alone (not Linear/Conv2d): "
                      + ", ".join(f"{k}×{v}" for k, v in sorted(row.other_weights.items())))
    if not row.ok:
        pytest.fail("\n".join(detail), pytrace=False)


# ------------------------------------------------------- the harness sees what breaks

class _TinyNet(nn.Module):
    """A biased and a bias-free Linear, dropout between them."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 4, bias=False)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


TINY = Entry(name="tiny", family="test", source="test", make=_TinyNet, dropout=True,
             example=lambda: ((torch.randn(2, 8, generator=torch.Generator().manual_seed(0)),), {}))


def test_harness_passes_a_healthy_model():
    row = check(TINY)
    assert row.ok, row.result
    assert row.adapted == 2 and row.base_random_in_train is True
    assert row.metrics["fold"] <= 1e-4 < row.metrics["moved"]


def _patched_build(monkeypatch, after):
    real = glorac.build_supernet

    def build(spec, model, **kw):
        supernet = real(spec, model, **kw)
        after(supernet, model)
        return supernet

    monkeypatch.setattr(glorac, "build_supernet", build)


def test_harness_sees_a_mutated_caller_model(monkeypatch):
    _patched_build(monkeypatch, lambda supernet, model: model.add_module("extra", nn.Identity()))
    row = check(TINY)
    assert not row.ok and row.stage == "caller's model unchanged by compile", row.result
    assert "extra" in row.message


def test_harness_sees_a_train_mode_that_does_nothing(monkeypatch):
    def freeze(supernet, model):
        supernet.train = lambda mode=True: supernet  # .train() no longer reaches the dropout

    _patched_build(monkeypatch, freeze)
    row = check(TINY)
    assert not row.ok and row.stage == "train/eval mode", row.result


def test_harness_sees_a_wrong_fold(monkeypatch):
    real = glorac.fold

    def fold(supernet, structure=None, **kw):
        model = real(supernet, structure, **kw)
        with torch.no_grad():
            model.fc1.weight.mul_(1.01)
        return model

    monkeypatch.setattr(glorac, "fold", fold)
    row = check(TINY)
    assert not row.ok and row.stage == "fold", row.result
    assert "max|Δ|/max|y|" in row.message
