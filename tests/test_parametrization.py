"""The parametrization's constants (docs/parametrization.md): exact, foldable, and what they claim."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.ir import Kind, LayerChoice, Structure
from glorac.kinds import Geometry, kind_scale
from tests.reference import perturb, random_structure, rel_err

K = Kind.parse


def test_paper_scales_are_one_and_balanced_follows_the_table():
    geom = Geometry.linear(in_features=400, out_features=30)
    for tensor, kind in [("A", "lora(8)"), ("B", "vector"), ("B", "scalar"), ("C", "lora(4)"), ("E", "vector")]:
        assert kind_scale(tensor, K(kind), geom, "paper") == 1.0
    assert kind_scale("A", K("lora(8)"), geom) == pytest.approx(math.sqrt(400 / 8))
    assert kind_scale("B", K("vector"), geom) == pytest.approx(1 / 20)
    assert kind_scale("B", K("scalar"), geom) == pytest.approx(1 / 20)
    assert kind_scale("C", K("lora(4)"), geom) == pytest.approx(1 / 4)
    for tensor, kind in [("A", "vector"), ("A", "scalar"), ("B", "lora(8)"), ("C", "vector"), ("D", "scalar")]:
        assert kind_scale(tensor, K(kind), geom) == 1.0
    with pytest.raises(ValueError, match="parametrization"):
        kind_scale("A", K("vector"), geom, "mup")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 6))


SPEC = PAPER_SPACE + """
adapt "0", "2" with paper(r=4)
bias add
training { parametrization = PARAM }
"""


def spec(parametrization: str) -> str:
    return SPEC.replace("PARAM", parametrization)


def test_balanced_equals_paper_with_rescaled_tensors():
    """The same function under both parametrizations once values are multiplied by the constants."""
    base = _net().eval()
    balanced = glorac.build_supernet(glorac.loads_spec(spec("balanced")), base)
    perturb(balanced, seed=3, scale=0.3)
    paper = glorac.build_supernet(glorac.loads_spec(spec("paper")), _net().eval())
    x = torch.randn(5, 12)
    for seed in range(20):
        structure = random_structure(balanced, seed)
        with torch.no_grad():
            for name, adapter in balanced.adapters.items():
                target = paper.adapters[name]
                for pname, value in adapter.named_parameters():
                    tensor = pname[0]
                    kind = structure.layers[name].tensor(tensor)
                    scale = kind_scale(tensor, kind, adapter.geom) if pname.endswith("_out") else 1.0
                    getattr(target, pname).copy_(value * scale)
        balanced.activate(structure)
        paper.activate(structure)
        with torch.no_grad():
            assert rel_err(balanced(x), paper(x)) < 1e-6, structure
        folded_b = glorac.fold(balanced, structure)
        folded_p = glorac.fold(paper, structure)
        for (n, a), (_, b) in zip(folded_b.state_dict().items(), folded_p.state_dict().items()):
            assert rel_err(a, b) < 1e-6, (n, structure)


def test_broadcast_b_step_is_tamed():
    """A unit of B = vector moves a wide layer's output like one LoRA rank, not like a fan-in sum."""
    fan_in = 900
    layer = nn.Linear(fan_in, 4).eval()
    x = torch.rand(16, fan_in)  # post-activation inputs: positive, so Σ_j x_j ~ fan_in / 2
    moves = {}
    for p in ("paper", "balanced"):
        sn = glorac.build_supernet(glorac.loads_spec(PAPER_SPACE + f'adapt "*" with paper(r=8)\ntraining {{ parametrization = {p} }}\n'),
                            nn.Sequential(layer))
        adapter = sn.adapters["0"]
        sn.activate(Structure(layers={"0": LayerChoice(B=K("vector"))}))
        with torch.no_grad():
            before = sn(x)
            adapter.B_out[:, 0] += 1e-3
            moves[p] = (sn(x) - before).abs().mean().item()
    assert moves["paper"] == pytest.approx(1e-3 * x.sum(-1).mean().item(), rel=1e-3)
    assert moves["balanced"] == pytest.approx(moves["paper"] / math.sqrt(fan_in), rel=1e-3)


def test_checkpoint_keeps_the_parametrization(tmp_path):
    sn = glorac.build_supernet(glorac.loads_spec(spec("paper")), _net().eval())
    assert {a.parametrization for a in sn.adapters.values()} == {"paper"}
    assert glorac.build_supernet(glorac.loads_spec(spec("balanced")), _net().eval()).spec.training.parametrization == "balanced"
    text = PAPER_SPACE + 'adapt "0" with paper(r=2)\n'
    assert glorac.build_supernet(glorac.loads_spec(text), _net().eval()).adapters["0"].parametrization == "balanced"  # the default


def test_version_1_checkpoint_reads_as_the_paper_parametrization(tmp_path):
    """Checkpoints written before the constants existed hold unscaled tensors."""
    import json

    sn = glorac.build_supernet(glorac.loads_spec(PAPER_SPACE + 'adapt "body.1" with paper(r=2)\n'), "tests.test_train:digit_net")
    path = tmp_path / "v1.pt"
    glorac.save(sn, path)
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    for key in ("parametrization", "sampling"):
        del meta["spec"]["training"][key]
    payload.update(meta=json.dumps(meta), format_version=1)
    torch.save(payload, path)
    old = glorac.load(path)
    assert old.spec.training.parametrization == "paper" and old.spec.training.sampling == "uniform"
    assert {a.parametrization for a in old.adapters.values()} == {"paper"}
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(glorac.CheckpointError, match="format version 99"):
        glorac.load(path)
