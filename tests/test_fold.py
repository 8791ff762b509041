"""``glorac.fold``: exact, verifiable, boring (DESIGN.md §1, §3; issue 4).

Every adapter tensor holds non-zero values (``perturb``) before any comparison: with the
zero init of the out-side factors a fold that ignored the adapters would "pass".

* every structure of the paper space (rank 4), on Linear / 1×1 conv / strided, padded
  3×3 conv (plus a non-square, dilated and a grouped conv), with and without bias and
  under both bias policies: folded layer == supernet layer == the independent formula;
* the zoo end to end: the folded model holds no glorac class, its state dict loads with
  ``strict=True`` into a fresh stock model and computes what the supernet computes;
* dtypes (float64 accumulation, bf16 base), ``inplace``, structure resolution,
  non-finite adapters and ``verify``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.errors import FoldError, GloraError, PlanError
from glorac.folding import core as fold_module
from glorac.folding.core import TOLERANCE, fold_layer
from glorac.folding.model import default_probe, fold_with_report


def folded_layer(supernet, name, choice):
    """(W', b') of one layer through the fold core, from the supernet's base tensors."""
    owner = supernet.base_model.get_submodule(name)
    return fold_layer(name, supernet.adapters[name], choice, owner.weight, owner.bias)
from glorac.ir import TENSORS, Kind, LayerChoice, Structure
from tests.reference import perturb, random_structure, reference_weight_bias, rel_err, scale_of
from tests.zoo import zoo_entry


K = Kind.parse
NONE = K("none")
PAPER_KINDS = {
    "A": (K("lora(4)"), K("vector"), K("scalar"), NONE),
    "B": (K("lora(4)"), K("vector"), K("scalar"), NONE),
    "C": (K("lora(4)"), K("vector"), NONE),
    "D": (K("vector"), K("scalar"), NONE),
    "E": (K("vector"), K("scalar"), NONE),
}
PAPER_STRUCTURES = [LayerChoice(**dict(zip(TENSORS, ks)))
                    for ks in itertools.product(*(PAPER_KINDS[t] for t in TENSORS))]
assert len(PAPER_STRUCTURES) == 4 * 4 * 3 * 3 * 3 == 432

# Layers the zoo does not list but fold must handle too (the functional F.linear site).
EXTRA_ADAPT = {"functional": ("mix",)}


def spec_text(patterns, *, bias: str = "preserve", rank: int = 4, train=()) -> str:
    quoted = ", ".join(f'"{p}"' for p in patterns)
    text = PAPER_SPACE + f"\nadapt {quoted} with paper(r={rank})\nbias {bias}\n"
    if train:
        text += "train " + ", ".join(f'"{h}"' for h in train) + "\n"
    return text


def zoo_spec(entry, *, bias: str = "preserve") -> str:
    return spec_text(entry.adapt + EXTRA_ADAPT.get(entry.name, ()), bias=bias, train=entry.head)




def ulps(got: torch.Tensor, want64: torch.Tensor) -> int:
    """Largest distance in units in the last place of ``got``'s dtype between got and want64."""
    want = want64.to(got.dtype)
    if got.dtype == torch.float32:
        as_int = lambda t: t.contiguous().view(torch.int32).long()  # noqa: E731
    else:  # bf16/fp16: 16-bit patterns
        as_int = lambda t: t.contiguous().view(torch.int16).long()  # noqa: E731
    # Same-sign values only matter here (a sign flip near 0 shows up as a huge number).
    return int((as_int(got) - as_int(want)).abs().max().item()) if got.numel() else 0


# --------------------------------------------------------------------------- one-layer models

class Layers(nn.Module):
    """Independent layers, one of each geometry fold handles; forward returns each output."""

    def __init__(self, bias: bool):
        super().__init__()
        self.lin = nn.Linear(6, 5, bias=bias)
        self.pw = nn.Conv2d(8, 5, 1, bias=bias)  # 1×1: a Linear over channels
        self.conv = nn.Conv2d(8, 5, 3, stride=2, padding=1, bias=bias)
        self.odd = nn.Conv2d(8, 5, (3, 2), stride=(1, 2), padding=(2, 0), dilation=(2, 1), bias=bias)
        self.grouped = nn.Conv2d(8, 4, 3, padding=1, groups=2, bias=bias)  # C has in/groups = 4 entries

    def forward(self, x, img):
        return self.lin(x), self.pw(img), self.conv(img), self.odd(img), self.grouped(img)


LAYERS = ("lin", "pw", "conv", "odd", "grouped")


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 6, generator=g), torch.randn(2, 8, 7, 7, generator=g)


def _layer_op(module: nn.Module):
    if isinstance(module, nn.Linear):
        return lambda x, w, b: F.linear(x, w, b)
    conv = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)
    return lambda x, w, b: F.conv2d(x, w, b, **conv)


def _layers_supernet(bias: bool, policy: str, seed: int = 11):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Layers(bias).eval()
    supernet = glorac.build_supernet(glorac.loads_spec(spec_text(LAYERS, bias=policy)), model)
    perturb(supernet, seed=seed)
    return model, supernet


def _allowed(space) -> list[LayerChoice]:
    return [c for c in PAPER_STRUCTURES if all(c.tensor(t) in space.tensor(t) for t in TENSORS)]


# (layer has a bias, spec's bias policy, structures the plan must leave per layer)
CASES = {
    "bias": (True, "preserve", 432),
    "nobias-preserve": (False, "preserve", 16),  # C, D, E dropped: 4·4
    "nobias-add": (False, "add", 4 * 4 * 3 * 1 * 3),  # D dropped (nothing to scale)
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_structure_folds_to_the_formula(case):
    has_bias, policy, expected = CASES[case]
    model, supernet = _layers_supernet(has_bias, policy)
    x, img = _inputs()
    inputs = {n: (x if n == "lin" else img) for n in LAYERS}
    base = {n: (model.get_submodule(n).weight.detach().clone(),
                None if model.get_submodule(n).bias is None else model.get_submodule(n).bias.detach().clone())
            for n in LAYERS}
    params = {n: dict(a.named_parameters()) for n, a in supernet.adapters.items()}
    ops = {n: _layer_op(model.get_submodule(n)) for n in LAYERS}
    allowed = {n: _allowed(supernet.spaces()[n]) for n in LAYERS}
    assert {n: len(c) for n, c in allowed.items()} == {n: expected for n in LAYERS}
    for n in LAYERS:
        assert supernet.spaces()[n].size() == expected

    worst = {"ulp_w": 0, "ulp_b": 0, "folded_vs_ref": 0.0, "adapted_vs_ref": 0.0}
    for i in range(expected):
        structure = Structure(layers={n: allowed[n][i] for n in LAYERS})
        folded, report = fold_with_report(supernet, structure, measure=False)
        assert [lf.layer for lf in report.layers] == list(LAYERS)
        supernet.activate(structure)  # folding takes the structure as an argument; it activates nothing
        with torch.no_grad():
            adapted_out = dict(zip(LAYERS, supernet(x, img)))
            folded_out = dict(zip(LAYERS, folded(x, img)))
        for n in LAYERS:
            choice = structure.layers[n]
            w0, b0 = base[n]
            ref_w, ref_b = reference_weight_bias(params[n], choice, w0, b0)
            layer = folded.get_submodule(n)
            assert type(layer) is type(model.get_submodule(n))
            assert layer.weight.dtype == w0.dtype and layer.weight.shape == w0.shape
            assert (layer.bias is None) == (ref_b is None), f"{n} {choice}: bias presence"
            worst["ulp_w"] = max(worst["ulp_w"], ulps(layer.weight.detach(), ref_w))
            if ref_b is not None:
                worst["ulp_b"] = max(worst["ulp_b"], ulps(layer.bias.detach(), ref_b))
            # The same weights through glorac's own helper (used by the CLI and fold).
            w_api, b_api = folded_layer(supernet, n, choice)
            assert torch.equal(w_api, layer.weight) and (b_api is None or torch.equal(b_api, layer.bias))
            want = ops[n](inputs[n].double(), ref_w, ref_b)
            worst["folded_vs_ref"] = max(worst["folded_vs_ref"], rel_err(folded_out[n], want))
            worst["adapted_vs_ref"] = max(worst["adapted_vs_ref"], rel_err(adapted_out[n], want))
            if all(k == NONE for _, k in choice.items()):
                assert torch.equal(layer.weight, w0), "the empty structure must give W0 bit for bit"
    # Folded in float64 and rounded once: at most one unit in the last place off the formula.
    assert worst["ulp_w"] <= 1 and worst["ulp_b"] <= 1, worst
    assert worst["folded_vs_ref"] < 1e-5 and worst["adapted_vs_ref"] < 1e-5, worst
    # The base model itself was never touched by all these folds.
    for n in LAYERS:
        assert torch.equal(model.get_submodule(n).weight, base[n][0])


@pytest.mark.parametrize("policy", ["preserve", "add"])
def test_structures_dropped_by_the_bias_policy_are_rejected(policy):
    _, supernet = _layers_supernet(False, policy)
    space = supernet.spaces()["lin"]
    allowed = set(_allowed(space))
    dropped = [c for c in PAPER_STRUCTURES if c not in allowed]
    assert len(dropped) == 432 - CASES[f"nobias-{policy}"][2]
    for choice in dropped:
        with pytest.raises(PlanError, match="outside this layer's space"):
            supernet.activate({"lin": choice}, partial=True)
    # through fold too: a dropped structure never folds silently
    choice = dropped[0]
    structure = Structure(layers={n: (choice if n == "lin" else _allowed(supernet.spaces()[n])[0]) for n in LAYERS})
    with pytest.raises(GloraError):
        glorac.fold(supernet, structure)
    # D is always dropped on a bias-free layer (nothing to scale)
    assert space.D == (NONE,)
    if policy == "preserve":
        assert space.C == space.E == (NONE,)


def test_bias_uses_the_original_weight_and_accumulates_in_float64():
    """b' = b0 + b0⊙D + E + W0·C with the ORIGINAL W0, not W'; W' rounded once from float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48)).eval()
    supernet = glorac.build_supernet(glorac.loads_spec(spec_text(["0"])), model)
    perturb(supernet, seed=3, scale=0.5)
    choice = LayerChoice(A=K("lora(4)"), B=K("lora(4)"), C=K("vector"), D=K("vector"), E=K("scalar"))
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    w, b = folded_layer(supernet, "0", choice)
    ref_w, ref_b = reference_weight_bias(dict(supernet.adapters["0"].named_parameters()), choice, w0, b0)
    assert torch.equal(w, ref_w.float())
    assert ulps(b, ref_b) <= 1
    c = supernet.adapters["0"].C_out[:, 0].double()
    with_updated_w = ref_b - w0.double() @ c + ref_w @ c  # the §3 bug: W'·C
    assert (b.double() - with_updated_w).abs().max() > 1e-3
    # A float32 computation of the same formula rounds differently in many places.
    params = {k: v.detach() for k, v in supernet.adapters["0"].named_parameters()}
    a32 = params["A_out"] @ params["A_in"]
    w32 = w0 + w0 * a32 + params["B_out"] @ params["B_in"]
    assert not torch.equal(w32, w), "test cannot tell float64 from float32 accumulation"


def test_fold_never_divides_a_minus_one():
    """A = −1 makes W' = B exactly: a one-way fold has no (1 + A) to divide by."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6)).eval()
    supernet = glorac.build_supernet(glorac.loads_spec(spec_text(["0"])), model)
    perturb(supernet, seed=4)
    adapter = supernet.adapters["0"]
    with torch.no_grad():
        adapter.A_out[0, 0] = -1.0
    choice = LayerChoice(A=K("scalar"), B=K("vector"), C=K("vector"), D=K("scalar"), E=K("none"))
    folded = glorac.fold(supernet, Structure(layers={"0": choice}))
    w = folded[0].weight.detach()
    assert torch.isfinite(w).all() and torch.isfinite(folded[0].bias).all()
    b_vector = adapter.B_out[:, :1].detach() * scale_of("B", K("vector"), 8, adapter.parametrization)
    torch.testing.assert_close(w, b_vector.expand_as(w), rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- the zoo, end to end

def _no_glorac_class(model: nn.Module) -> list[str]:
    return [f"{n or '<root>'}: {type(m).__module__}.{type(m).__name__}" for n, m in model.named_modules()
            if type(m).__module__.startswith("glorac")]


def _fresh_stock_models(entry, folded):
    """Stock models of this entry's architecture, with their own (different) random weights."""
    yield "zoo build", entry.build()
    if entry.timm_name:
        import timm

        yield "timm.create_model", timm.create_model(entry.timm_name, **entry.create_kwargs).eval()
    if entry.hf_config is not None:
        cls = type(folded)
        yield "hf class from zoo config", cls(entry.hf_config()).eval()


ZOO_E2E = ["vit", "deit", "swin", "convnext", "resnet", "efficientnet", "bert", "llama",
           "custom_biasfree", "functional", "untraceable"]


@pytest.mark.parametrize("name", ZOO_E2E)
def test_zoo_fold_loads_strictly_into_the_stock_model(name, tmp_path):
    entry = zoo_entry(name)
    model = entry.build()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    x = entry.example_input()
    with torch.no_grad():
        base_out = entry.output(model(*x))
    supernet = glorac.build_supernet(glorac.loads_spec(zoo_spec(entry)), model)
    perturb(supernet, seed=21)
    structure = random_structure(supernet, seed=22)
    supernet.activate(structure)
    with torch.no_grad():
        adapted = entry.output(supernet(*x))
    assert rel_err(adapted, base_out) > 1e-4, "perturbed adapters must change the output"

    folded = glorac.fold(supernet, structure)
    assert not _no_glorac_class(folded), _no_glorac_class(folded)
    assert isinstance(folded, type(model))
    state = folded.state_dict()
    # bias preserve: exactly the base model's keys, shapes and dtypes
    assert list(state) == list(base_state)
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == \
           {k: (tuple(v.shape), v.dtype) for k, v in base_state.items()}
    # the non-adapted tensors are the base model's, bit for bit; adapted ones changed
    adapted_keys = {f"{n}.{p}" for n in supernet.adapters for p in ("weight", "bias")}
    for k, v in state.items():
        if k not in adapted_keys:
            assert torch.equal(v, base_state[k]), k
    assert any(not torch.equal(state[k], base_state[k]) for k in adapted_keys if k in state)
    # the supernet's base model is untouched (inplace=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, base_state[k]), k

    for how, stock in _fresh_stock_models(entry, folded):
        stock.load_state_dict(state, strict=True)
        with torch.no_grad():
            got = entry.output(stock(*x))
        assert rel_err(got, adapted) <= 1e-4, how
    if entry.hf_config is not None:
        import transformers

        folded.save_pretrained(tmp_path / "folded")
        reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "folded").eval()
        assert type(reloaded) is type(model)
        with torch.no_grad():
            assert rel_err(entry.output(reloaded(*x)), adapted) <= 1e-4


@pytest.mark.parametrize("name", ["custom_biasfree", "llama", "efficientnet"])
def test_bias_add_emits_exactly_the_new_bias_keys(name):
    entry = zoo_entry(name)
    model = entry.build()
    base_keys = dict(model.state_dict())
    supernet = glorac.build_supernet(glorac.loads_spec(zoo_spec(entry, bias="add")), model)
    perturb(supernet, seed=31)
    # C or E set on every bias-free layer (so each gets a bias), random elsewhere
    rnd = random_structure(supernet, seed=32)
    layers = {}
    for n, choice in rnd.layers.items():
        lp = supernet.plan.layer(n)
        if not lp.site.has_bias:
            choice = choice.model_copy(update={"E": K("vector")})
        layers[n] = choice
    structure = Structure(layers=layers)
    supernet.activate(structure)
    x = entry.example_input()
    with torch.no_grad():
        adapted = entry.output(supernet(*x))
    folded = glorac.fold(supernet, structure)
    assert not _no_glorac_class(folded)
    state = folded.state_dict()
    bias_free = {n for n in supernet.adapters if not supernet.plan.layer(n).site.has_bias}
    assert bias_free
    assert set(state) - set(base_keys) == {f"{n}.bias" for n in bias_free}
    assert set(base_keys) <= set(state)
    for n in bias_free:
        assert state[f"{n}.bias"].dtype == state[f"{n}.weight"].dtype
    stock = entry.build()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        stock.load_state_dict(state, strict=True)
    for n in bias_free:  # what a user does to take the new biases: give those layers one
        layer = stock.get_submodule(n)
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
    stock.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert rel_err(entry.output(stock(*x)), adapted) <= 1e-4


def test_bias_add_without_c_or_e_creates_no_bias():
    entry = zoo_entry("custom_biasfree")
    model = entry.build()
    supernet = glorac.build_supernet(glorac.loads_spec(zoo_spec(entry, bias="add")), model)
    perturb(supernet, seed=33)
    choice = LayerChoice(A=K("vector"), B=K("lora(4)"))
    folded = glorac.fold(supernet, Structure(layers={n: choice for n in supernet.adapters}))
    assert set(folded.state_dict()) == set(model.state_dict())


# --------------------------------------------------------------------------- dtypes

def _bf16_vit():
    entry = zoo_entry("vit")
    model = entry.build().to(torch.bfloat16)
    supernet = glorac.build_supernet(glorac.loads_spec(zoo_spec(entry)), model)
    perturb(supernet, seed=41)
    return entry, model, supernet


def test_bf16_base_folds_to_bf16_within_tolerance():
    entry, model, supernet = _bf16_vit()
    structure = random_structure(supernet, seed=42)
    folded = glorac.fold(supernet, structure, verify=True)
    report = folded.glorac_fold_report
    assert report.dtype == "bfloat16" and report.tolerance == TOLERANCE[torch.bfloat16]
    assert report.rel_error is not None and 0 < report.rel_error <= TOLERANCE[torch.bfloat16]
    assert all(v.dtype == torch.bfloat16 for v in folded.state_dict().values() if v.is_floating_point())
    # each weight is the float64 formula rounded once to bf16
    for n, adapter in supernet.adapters.items():
        owner = model.get_submodule(n)
        ref_w, ref_b = reference_weight_bias(dict(adapter.named_parameters()), structure.layers[n],
                                             owner.weight, owner.bias)
        assert ulps(folded.get_submodule(n).weight.detach(), ref_w) <= 1, n
        assert ulps(folded.get_submodule(n).bias.detach(), ref_b) <= 1, n
    stock = entry.build().to(torch.bfloat16)
    stock.load_state_dict(folded.state_dict(), strict=True)


def test_float32_report_is_tight():
    entry = zoo_entry("vit")
    model = entry.build()
    supernet = glorac.build_supernet(glorac.loads_spec(zoo_spec(entry)), model)
    perturb(supernet, seed=43)
    structure = random_structure(supernet, seed=44)
    folded = glorac.fold(supernet, structure, verify=True)
    report = folded.glorac_fold_report
    assert report.dtype == "float32" and report.tolerance == TOLERANCE[torch.float32]
    assert report.ok and 0 < report.rel_error <= 1e-5
    assert len(report.layers) == len(supernet.adapters)
    assert all(lf.max_abs_delta < 1e-4 and lf.params > 0 for lf in report.layers)
    assert report.worst_layer in supernet.adapters
    assert sum(lf.params for lf in report.layers) == supernet.structure_params(structure)
    # bf16 is looser than fp32 is looser than fp64
    assert TOLERANCE[torch.float64] < TOLERANCE[torch.float32] < TOLERANCE[torch.float16] \
        <= TOLERANCE[torch.bfloat16]


# --------------------------------------------------------------------------- inplace

def _vit_supernet(seed=51):
    entry = zoo_entry("vit")
    model = entry.build()
    supernet = glorac.build_supernet(glorac.loads_spec(zoo_spec(entry)), model)
    perturb(supernet, seed=seed)
    structure = random_structure(supernet, seed=seed + 1)
    supernet.activate(structure)
    return entry, model, supernet, structure


def test_fold_copy_leaves_the_supernet_usable():
    entry, model, supernet, structure = _vit_supernet()
    x = entry.example_input()
    with torch.no_grad():
        before = supernet(*x)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapters = {k: v.clone() for k, v in supernet.adapter_state_dict().items()}
    folded = glorac.fold(supernet, structure, inplace=False)
    assert folded is not model
    with torch.no_grad():
        assert torch.equal(supernet(*x), before)
        assert rel_err(folded(*x), before) <= 1e-5
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n]), n
    for k, v in supernet.adapter_state_dict().items():
        assert torch.equal(v, adapters[k]), k
    # storage is not shared with the supernet's base
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not ptrs & {p.data_ptr() for p in folded.parameters()}


def test_fold_inplace_writes_the_base_weights_without_copying():
    entry, model, supernet, structure = _vit_supernet()
    x = entry.example_input()
    with torch.no_grad():
        adapted = supernet(*x)
    params = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
    folded = glorac.fold(supernet, structure, inplace=True)
    assert folded is model
    for n, p in folded.named_parameters():
        obj, ptr = params[n]
        assert p is obj and p.data_ptr() == ptr, f"{n} was replaced, not written"
    assert not _no_glorac_class(folded)
    with torch.no_grad():
        assert rel_err(folded(*x), adapted) <= 1e-5


# --------------------------------------------------------------------------- structure resolution

def test_open_space_without_a_structure_is_refused():
    entry, model, supernet, _ = _vit_supernet()
    assert supernet.structure is None
    with pytest.raises(FoldError) as info:
        glorac.fold(supernet)
    message = str(info.value)
    assert "glorac search" in message and "--structure" in message
    # a structure chosen earlier (search / select) is used
    structure = random_structure(supernet, seed=5)
    supernet.select(structure)
    supernet.activate(random_structure(supernet, seed=6))  # something else is active now
    folded = glorac.fold(supernet)
    assert [lf.structure for lf in folded.glorac_fold_report.layers] == \
           [str(structure.layers[n]) for n in supernet.adapters]


def test_one_choice_space_folds_without_a_structure():
    entry = zoo_entry("vit")
    model = entry.build()
    spec = """
space fixed { A: vector  B: lora(2)  C: vector  D: scalar  E: vector }
adapt "blocks.*.attn.qkv", "blocks.*.mlp.fc2" with fixed
train "head"
"""
    x = entry.example_input()
    with torch.no_grad():
        base_out = model(*x)
    supernet = glorac.build_supernet(glorac.loads_spec(spec), model)
    perturb(supernet, seed=61)
    with torch.no_grad():
        adapted = supernet(*x)
    assert rel_err(adapted, base_out) > 1e-4
    folded = glorac.fold(supernet)
    with torch.no_grad():
        assert rel_err(folded(*x), adapted) <= 1e-5


# --------------------------------------------------------------------------- failures

@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_adapter_is_refused_naming_the_layer(value):
    entry, model, supernet, structure = _vit_supernet()
    last = list(supernet.adapters)[-1]
    with torch.no_grad():
        supernet.adapters[last].E[2] = value
    layers = dict(structure.layers)
    layers[last] = layers[last].model_copy(update={"E": K("vector")})
    with pytest.raises(FoldError, match=rf"`{last}`"):
        glorac.fold(supernet, Structure(layers=layers))


def test_failed_inplace_fold_leaves_the_base_untouched():
    entry, model, supernet, structure = _vit_supernet()
    last = list(supernet.adapters)[-1]
    with torch.no_grad():
        supernet.adapters[last].E[0] = float("nan")
    layers = dict(structure.layers)
    layers[last] = layers[last].model_copy(update={"E": K("vector")})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FoldError):
        glorac.fold(supernet, Structure(layers=layers), inplace=True)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"an inplace fold that raised ('Nothing was written') changed {changed[:3]}"


def test_verify_names_the_worst_layer(monkeypatch):
    """One layer folded slightly wrong: verify refuses and names exactly that layer."""
    entry, model, supernet, structure = _vit_supernet()
    worst = "blocks.1.mlp.fc1"
    folded = glorac.fold(supernet, structure, verify=True)  # a correct fold passes
    assert folded.glorac_fold_report.ok
    real = fold_module.fold_layer

    def slightly_wrong(name, adapter, choice, w0, b0):
        w, b = real(name, adapter, choice, w0, b0)
        return (w * 1.01 if name == worst else w), b

    monkeypatch.setattr(fold_module, "fold_layer", slightly_wrong)
    with pytest.raises(FoldError, match=rf"worst layer: {worst}\b") as info:
        glorac.fold(supernet, structure, verify=True)
    assert "float32" in str(info.value) and "1e-04" in str(info.value) or "0.0001" in str(info.value)
    # verify=False folds anyway and only reports
    model2, report = fold_with_report(supernet, structure, measure=True)
    assert not report.ok and report.worst.layer == worst


def test_verify_catches_a_wrong_fold(monkeypatch):
    """A fold bug (here: a dropped B) is caught by verify, not shipped."""
    entry, model, supernet, structure = _vit_supernet()
    layers = {n: c.model_copy(update={"B": K("lora(4)")}) for n, c in structure.layers.items()}
    real = fold_module.fold_layer

    def broken(name, adapter, choice, w0, b0):
        return real(name, adapter, choice.model_copy(update={"B": NONE}), w0, b0)

    monkeypatch.setattr(fold_module, "fold_layer", broken)
    with pytest.raises(FoldError, match="worst layer"):
        glorac.fold(supernet, Structure(layers=layers), verify=True)


def _drop_b(monkeypatch):
    real = fold_module.fold_layer
    monkeypatch.setattr(fold_module, "fold_layer",
                        lambda name, adapter, choice, w0, b0: real(name, adapter, choice.model_copy(update={"B": NONE}),
                                                                   w0, b0))


def _custom_with_b(name: str = "untraceable"):
    entry = zoo_entry(name)
    model = entry.build()
    supernet = glorac.build_supernet(glorac.loads_spec(zoo_spec(entry)), model)
    perturb(supernet, seed=71)
    layers = {n: c.model_copy(update={"B": K("lora(4)")}) for n, c in random_structure(supernet, 72).layers.items()}
    return entry, supernet, Structure(layers=layers)


def test_verify_with_an_explicit_probe_on_a_custom_model(monkeypatch):
    entry, supernet, structure = _custom_with_b()
    folded = glorac.fold(supernet, structure, verify=True, probe=entry.example_input())
    assert folded.glorac_fold_report.rel_error is not None and folded.glorac_fold_report.ok
    _drop_b(monkeypatch)
    with pytest.raises(FoldError, match="worst layer"):
        glorac.fold(supernet, structure, verify=True, probe=entry.example_input())


def test_verify_without_a_known_probe_still_catches_a_wrong_fold(monkeypatch):
    entry, supernet, structure = _custom_with_b()
    assert default_probe(supernet.base_model) is None
    _drop_b(monkeypatch)  # a fold bug: per-layer deltas ≈ 0.1–0.3, far above float32 rounding
    with pytest.raises(FoldError):
        glorac.fold(supernet, structure, verify=True)


def test_fold_state_merges_on_a_state_dict_like_fold():
    entry, model, supernet, structure = _vit_supernet()
    state = model.state_dict()
    merged, report = glorac.fold_state(state, supernet.plan, supernet.adapters, structure)
    folded = glorac.fold(supernet, structure).state_dict()
    assert merged.keys() == folded.keys() and [lf.layer for lf in report.layers] == list(supernet.adapters)
    for key, value in merged.items():
        assert torch.equal(value, folded[key]), key
        if key.rpartition(".")[0] not in supernet.adapters:
            assert value is state[key]  # what is not adapted passes through, not copied
    assert any(not torch.equal(merged[k], state[k]) for k in state)


def test_old_names_still_work_with_a_deprecation_warning():
    entry, model, supernet, structure = _vit_supernet()
    with pytest.warns(DeprecationWarning, match="Supernet.activate"):
        supernet.set_choice(structure)
    with pytest.warns(DeprecationWarning, match="active_structure"):
        assert supernet.choice() == structure
    with pytest.warns(DeprecationWarning, match="spaces"):
        assert supernet.choices() == supernet.spaces()
