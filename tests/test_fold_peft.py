"""glorac's fold against PEFT's GLoRA merge, with the SAME adapter tensors.

PEFT (``peft.tuners.glora``) implements the elementwise formula of DESIGN.md §1 for
``nn.Linear`` only, with one kind for A and B together (``config_A_B``), one for C and one
for D and E together (``config_D_E``); its ``constant`` is glorac's ``scalar``. Its
parameters map onto glorac's shared storage as:

    A/B lora(r):  Xd (out×r) = A_out[:, :r]     Xu (r×in) = A_in[:r]
    A/B vector:   X (out×1)  = A_out[:, :1]     A/B constant: X (1,) = A_out[0, :1]
    C lora(r):    Xd (in×r)  = C_out[:, :r]     Xu (r×1)  = C_in[:r]
    C vector:     X (in×1)   = C_out[:, :1]
    D/E vector:   X (out,)   = D                D/E constant: X (1,) = D[:1]

Where they should agree (every layer with a bias; bias-free layers under ``bias
preserve``) they agree to float32 rounding (PEFT merges in float32, glorac in float64).
Known PEFT behaviour, asserted here as documentation and NOT followed by glorac:

* on a bias-free layer PEFT silently drops C, D and E (glorac's ``bias add`` emits the
  bias they create; ``bias preserve`` removes them from the space, visibly);
* the tensors are compared under ``parametrization = paper`` (PEFT has no constants);
* PEFT's unmerge divides by (1 + A): at A = −1 it returns NaN/±inf weights. glorac's fold is
  one-way and never divides.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.ir import Kind, LayerChoice, Structure
from tests.reference import perturb, reference_weight_bias

peft = pytest.importorskip("peft")
if not hasattr(peft, "GloraConfig"):
    pytest.skip(f"peft {peft.__version__} has no GloraConfig (GLoRA landed in a later release)",
                allow_module_level=True)
from peft.tuners.glora.layer import (  # noqa: E402
    GloraEmptyPath,
    GloraLinear,
    GloraLoraPath,
    GloraScalarPath,
    GloraVectorPath,
)

RANK = 4
ADAPTED = ("fc1", "fc2", "fc3")
# PEFT stores A..E unscaled: the authors' (paper) parametrization, glorac's `balanced`
# constants would make the same tensors mean different things.
SPEC = PAPER_SPACE + """
adapt "fc1", "fc2", "fc3" with paper(r=4)
training { parametrization = paper }
"""
# peft's names → glorac's kinds
AB = {"lora": f"lora({RANK})", "vector": "vector", "constant": "scalar", "none": "none"}
CK = {"lora": f"lora({RANK})", "vector": "vector", "none": "none"}
DE = {"vector": "vector", "constant": "scalar", "none": "none"}
CONFIGS = list(itertools.product(AB, CK, DE))  # 4·3·3 = 36: all that peft can express


class Net(nn.Module):
    """Biased, bias-free, biased: like a transformer MLP next to a LLaMA-style projection."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 10)
        self.fc2 = nn.Linear(10, 8, bias=False)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def _base() -> Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Net().eval()


def _input() -> torch.Tensor:
    return torch.randn(5, 12, generator=torch.Generator().manual_seed(1))


def _supernet(bias: str):
    base = _base()
    supernet = glorac.build_supernet(glorac.loads_spec(SPEC + f"bias {bias}\n"), copy.deepcopy(base))
    perturb(supernet, seed=5, scale=0.3)
    return base, supernet


def _glorac_choice(supernet, name: str, ab: str, c: str, de: str) -> LayerChoice:
    """The glorac structure with peft's kinds, restricted to what the layer's space allows."""
    want = {"A": AB[ab], "B": AB[ab], "C": CK[c], "D": DE[de], "E": DE[de]}
    space = supernet.spaces()[name]
    kinds = {}
    for t, k in want.items():
        kind = Kind.parse(k)
        kinds[t] = kind if kind in space.tensor(t) else Kind(kind="none")
    return LayerChoice(**kinds)


def _copy_into_peft(layer: GloraLinear, adapter) -> None:
    """Put glorac's adapter tensors into peft's parameters (see the module docstring)."""
    p = {k: v.detach() for k, v in adapter.named_parameters()}
    with torch.no_grad():
        for t in ("A", "B", "C"):
            path = getattr(layer, f"glora_{t}")["default"]
            if isinstance(path, GloraLoraPath):
                path.Xd.copy_(p[f"{t}_out"][:, :RANK])
                path.Xu.copy_(p[f"{t}_in"][:RANK, :])
            elif isinstance(path, GloraVectorPath):
                path.X.copy_(p[f"{t}_out"][:, :1])
            elif isinstance(path, GloraScalarPath):
                path.X.copy_(p[f"{t}_out"][0, :1])
            else:
                assert isinstance(path, GloraEmptyPath)
        for t in ("D", "E"):
            path = getattr(layer, f"glora_{t}")["default"]
            if isinstance(path, GloraVectorPath):
                path.X.copy_(p[t])
            elif isinstance(path, GloraScalarPath):
                path.X.copy_(p[t][:1])
            else:
                assert isinstance(path, GloraEmptyPath)


def _peft_model(base: Net, supernet, ab: str, c: str, de: str):
    config = peft.GloraConfig(r=RANK, target_modules=list(ADAPTED), config_A_B=ab, config_C=c, config_D_E=de)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    for name in ADAPTED:
        layer = model.base_model.model.get_submodule(name)
        assert isinstance(layer, GloraLinear)
        _copy_into_peft(layer, supernet.adapters[name])
    return model.eval()


def _max_abs(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def test_merge_agrees_with_fold_where_both_define_the_same_thing():
    base, supernet = _supernet("preserve")
    x = _input()
    worst = {"weight": 0.0, "bias": 0.0, "peft_forward": 0.0, "peft_merged": 0.0}
    for ab, c, de in CONFIGS:
        structure = Structure(layers={n: _glorac_choice(supernet, n, ab, c, de) for n in ADAPTED})
        folded = glorac.fold(supernet, structure)
        supernet.activate(structure)  # fold takes the structure as an argument; it activates nothing
        with torch.no_grad():
            adapted = supernet(x)
        pm = _peft_model(base, supernet, ab, c, de)
        with torch.no_grad():
            peft_out = pm(x)
        merged = pm.merge_and_unload()
        assert not any(isinstance(m, GloraLinear) for m in merged.modules())
        with torch.no_grad():
            merged_out = merged(x)
        for name in ADAPTED:
            ours, theirs = folded.get_submodule(name), merged.get_submodule(name)
            worst["weight"] = max(worst["weight"], _max_abs(ours.weight, theirs.weight))
            assert (ours.bias is None) == (theirs.bias is None), (name, ab, c, de)
            if ours.bias is not None:
                worst["bias"] = max(worst["bias"], _max_abs(ours.bias, theirs.bias))
        worst["peft_forward"] = max(worst["peft_forward"], _max_abs(peft_out, adapted))
        worst["peft_merged"] = max(worst["peft_merged"], _max_abs(merged_out, folded(x)))
    # Measured: 6e-8 on weights and biases (|W| < 1: one float32 rounding in peft's merge),
    # ~1e-6 on the 3-layer outputs; a formula difference would be ~1e-1.
    assert worst["weight"] < 5e-7 and worst["bias"] < 5e-7, worst
    assert worst["peft_forward"] < 1e-5 and worst["peft_merged"] < 1e-5, worst


def test_peft_drops_c_d_e_on_bias_free_layers():
    """Known peft behaviour: no bias → C and E are silently ignored (glorac `bias add` keeps them)."""
    base, supernet = _supernet("add")
    x = _input()
    ab, c, de = "lora", "lora", "vector"
    structure = Structure(layers={n: _glorac_choice(supernet, n, ab, c, de) for n in ADAPTED})
    assert structure.layers["fc2"].C.kind == "lora" and structure.layers["fc2"].E.kind == "vector"
    assert structure.layers["fc2"].D.kind == "none"  # nothing to scale: dropped by glorac too
    folded = glorac.fold(supernet, structure)
    merged = _peft_model(base, supernet, ab, c, de).merge_and_unload()
    ours, theirs = folded.fc2, merged.fc2
    assert theirs.bias is None  # peft: C, D, E gone, no trace, no warning
    assert ours.bias is not None  # glorac: the bias that C and E create, as the spec asked
    # The weights agree; the whole difference is glorac's new bias W0·C + E.
    assert _max_abs(ours.weight, theirs.weight) < 5e-6
    params = dict(supernet.adapters["fc2"].named_parameters())
    _, want_bias = reference_weight_bias(params, structure.layers["fc2"], base.fc2.weight, None, "paper")
    assert _max_abs(ours.bias, want_bias) < 5e-6
    assert want_bias.abs().max() > 1e-2, "C and E must matter for this to show anything"
    h = F.gelu(base.fc1(x)).detach()  # any input to fc2
    with torch.no_grad():
        assert _max_abs(ours(h), theirs(h) + want_bias.float()) < 1e-5
        assert _max_abs(ours(h), theirs(h)) > 1e-2
    # the biased layers agree as usual
    for name in ("fc1", "fc3"):
        assert _max_abs(folded.get_submodule(name).bias, merged.get_submodule(name).bias) < 5e-6


def test_peft_unmerge_divides_and_gives_nan_at_a_minus_one():
    """Known peft behaviour: unmerge computes (W − B) / (1 + A); glorac never divides."""
    base, supernet = _supernet("preserve")
    with torch.no_grad():
        supernet.adapters["fc1"].A_out[0, 0] = -1.0  # A scalar = −1 → W' = B
    ab, c, de = "constant", "none", "none"
    structure = Structure(layers={n: _glorac_choice(supernet, n, ab, c, de) for n in ADAPTED})
    folded = glorac.fold(supernet, structure)
    assert torch.isfinite(folded.fc1.weight).all()
    b_scalar = supernet.adapters["fc1"].B_out[0, 0].detach()
    assert torch.equal(folded.fc1.weight, torch.full_like(folded.fc1.weight, b_scalar.item()))

    pm = _peft_model(base, supernet, ab, c, de)
    pm.merge_adapter()
    assert _max_abs(pm.base_model.model.fc1.base_layer.weight, folded.fc1.weight) < 5e-6
    pm.unmerge_adapter()
    w = pm.base_model.model.fc1.base_layer.weight
    # (W' − B)/(1 + A) = 0/0 where W' rounded back to B exactly, ±inf where it did not
    assert not torch.isfinite(w).any(), "peft's unmerge at A = −1 divides by zero"
    assert torch.isnan(w).any()
    assert not torch.isfinite(pm(_input())).all()
