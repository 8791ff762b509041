"""glorac.scoring.FoldedEvaluator: incremental folds give the numbers of a fresh fold; a head outside the supernet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glorac
from glorac.data import Batch
from glorac.dsl.library import PAPER_SPACE
from glorac.scoring import FoldedEvaluator, accuracy, supernet_accuracy
from glorac.ir import Kind, LayerChoice, Structure
from tests.reference import perturb, random_structure

NONE = Kind.parse("none")

# Layers with and without a bias, and `bias add`: candidates that create a bias alternate
# with ones that do not, so the scratch model's biases come and go.
SPEC = PAPER_SPACE + """
adapt "*" type Linear with paper(r=2)
bias add
"""


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.b = nn.Linear(16, 16, bias=False)
        self.c = nn.Linear(16, 8)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def batches(n: int = 40, size: int = 16, classes: int = 8, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return [Batch((x[k:k + size],), y[k:k + size]) for k in range(0, n, size)]


@pytest.fixture()
def supernet():
    torch.manual_seed(0)
    sn = glorac.build_supernet(glorac.loads_spec(SPEC), Backbone())
    perturb(sn, seed=1, scale=0.3)
    return sn.eval()


def scratch_state(ev: FoldedEvaluator) -> dict:
    return {k: v.clone() for k, v in ev.scratch.state_dict().items()}


def test_a_b_a_gives_the_numbers_of_a_fresh_evaluator(supernet):
    data = batches()
    a, b = random_structure(supernet, seed=3), random_structure(supernet, seed=4)
    # Layer b has no bias of its own: A creates one (C = vector), B does not.
    b = Structure(layers={**b.layers, "b": b.layers["b"].model_copy(update={"C": NONE, "E": NONE})})
    assert a.layers["b"].C != NONE and all(a.layers[n] != b.layers[n] for n in a.layers)
    ev = FoldedEvaluator(supernet, data)
    first = ev(a)
    assert ev.scratch.b.bias is not None
    other = ev(b)
    assert ev.scratch.b.bias is None
    again = ev(a)
    state = scratch_state(ev)
    fresh = FoldedEvaluator(supernet, data)
    assert first == again == fresh(a)
    assert other == FoldedEvaluator(supernet, data)(b)
    want = scratch_state(fresh)
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    # And the unfolded supernet agrees (up to float rounding of the folded weights).
    ref = supernet_accuracy(supernet, data, a)
    assert ref["correct"] == first["correct"] and ref["loss"] == pytest.approx(first["loss"], rel=1e-5)


def test_many_candidates_in_any_order_match_fresh_folds(supernet):
    data = batches()
    structures = [random_structure(supernet, seed=s) for s in range(8)]
    ev = FoldedEvaluator(supernet, data)
    got = [ev(s) for s in structures + structures[::-1]]
    want = [FoldedEvaluator(supernet, data)(s) for s in structures]
    assert got == want + want[::-1]


def test_only_changed_layers_are_folded(supernet, monkeypatch):
    ev = FoldedEvaluator(supernet, batches())
    calls = []
    for name, adapter in supernet.adapters.items():
        fold = adapter.fold
        monkeypatch.setattr(adapter, "fold", lambda *a, _f=fold, _n=name: (calls.append(_n), _f(*a))[1])
    base = random_structure(supernet, seed=5)
    ev(base)
    assert calls == list(supernet.adapters)
    calls.clear()
    ev(base)
    assert calls == []
    other = base.layers["b"].model_copy(update={"A": next(k for k in supernet.spaces()["b"].A
                                                          if k != base.layers["b"].A)})
    ev(Structure(layers={**base.layers, "b": other}))
    assert calls == ["b"]


def test_forget_refolds_after_the_adapters_change(supernet):
    data = batches()
    s = random_structure(supernet, seed=6)
    ev = FoldedEvaluator(supernet, data)
    ev(s)
    perturb(supernet, seed=9, scale=0.3)
    ev.forget()
    assert ev(s) == FoldedEvaluator(supernet, data)(s)


def test_scores_are_computed_without_autograd(supernet):
    seen = []
    ev = FoldedEvaluator(supernet, batches(), forward=lambda m, b: (seen.append(torch.is_inference_mode_enabled()),
                                                                    m(*b.inputs))[1])
    ev(random_structure(supernet, seed=7))
    assert seen and all(seen)
    # The scratch model's tensors stay ordinary ones (usable outside inference mode).
    assert not any(p.is_inference() for p in ev.scratch.parameters())


def test_head_outside_the_supernet():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    supernet = glorac.build_supernet(glorac.loads_spec(PAPER_SPACE + 'adapt "*" type Linear with paper(r=2)\n'), backbone)
    perturb(supernet, seed=2, scale=0.3)
    supernet.eval()
    head = nn.Linear(16, 5).eval()
    data = batches(classes=5)
    structure = random_structure(supernet, seed=8)

    ev = FoldedEvaluator(supernet, data, forward=lambda m, b: head(m(*b.inputs)))
    got = ev(structure)

    supernet.activate(structure)  # by hand: the unfolded supernet, then the head
    with torch.no_grad():
        x = torch.cat([b.inputs[0] for b in data])
        y = torch.cat([b.labels for b in data])
        logits = head(supernet(x))
    correct = int((logits.argmax(-1) == y).sum())
    assert got["n"] == len(y) and got["correct"] == correct and got["accuracy"] == correct / len(y)
    assert got["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    # The same through accuracy() with the same forward.
    assert accuracy(supernet, data, forward=lambda m, b: head(m(*b.inputs)))["correct"] == correct


def test_accuracy_sums_like_python_floats(supernet):
    """The device-side sums give exactly what per-batch .item() sums gave."""
    data = batches(n=50, size=7)
    supernet.activate(random_structure(supernet, seed=10))
    got = accuracy(supernet, data)
    loss, correct = 0.0, 0
    with torch.no_grad():
        for b in data:
            logits = supernet(*b.inputs).float()
            loss += F.cross_entropy(logits, b.labels, reduction="sum").item()
            correct += (logits.argmax(-1) == b.labels).sum().item()
    assert got == {"accuracy": correct / 50, "loss": loss / 50, "correct": correct, "n": 50}
    assert accuracy(supernet, []) == {"accuracy": 0.0, "loss": 0.0, "correct": 0, "n": 0}


def test_a_layer_choice_record_is_per_layer(supernet):
    # Same choice object on two layers, different layers changed: the record keys by name.
    ev = FoldedEvaluator(supernet, batches())
    none = LayerChoice()
    s1 = Structure(layers={n: none for n in supernet.adapters})
    assert ev(s1) == FoldedEvaluator(supernet, batches())(s1)
    assert ev.written == s1.layers
