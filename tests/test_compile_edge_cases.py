"""Layers a model uses in other ways than calling them: each compiles to the base model at
init, moves when the adapters do, folds to what the supernet computes, and leaves the
caller's model untouched; or it is excluded at plan time with the reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glorac
from tests.reference import perturb, random_structure, rel_err

SPACE = "space s { A: lora(2)|vector|none  B: lora(2)|vector|none  C: lora(2)|vector|none  D: vector|none  E: vector|none }\n"


def _spec(rule: str = 'adapt "**" type Linear|Conv2d with s\n', extra: str = "bias add\n"):
    return glorac.loads_spec(SPACE + rule + extra)


def _snapshot(model: nn.Module) -> dict:
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "modules": [(n, type(m)) for n, m in model.named_modules()]}


def _unchanged(model: nn.Module, before: dict) -> bool:
    state = model.state_dict()
    return (before["modules"] == [(n, type(m)) for n, m in model.named_modules()]
            and state.keys() == before["state"].keys()
            and all(torch.equal(state[k], before["state"][k]) for k in state))


def _contract(model: nn.Module, x: tuple, spec=None, *, seed: int = 0):
    """Compile, check init, move the adapters, fold: returns the supernet."""
    model.eval()
    before = _snapshot(model)
    with torch.no_grad():
        base = model(*x)
    supernet = glorac.build_supernet(spec or _spec(), model)
    assert _unchanged(model, before), "compiling changed the caller's model"
    with torch.no_grad():
        assert rel_err(supernet(*x), base) <= 1e-6
    perturb(supernet, seed=seed, scale=0.3)
    structure = random_structure(supernet, seed=seed + 1)
    supernet.activate(structure)
    with torch.no_grad():
        adapted = supernet(*x)
        assert rel_err(adapted, base) > 1e-3, "the adapters must matter"
        assert rel_err(glorac.fold(supernet, structure)(*x), adapted) <= 1e-5
    assert _unchanged(model, before), "training-free use of the supernet changed the caller's model"
    return supernet


class FusedQKV(nn.Module):
    """BEiT's attention: the qkv weight read into F.linear with a bias built from q/v biases."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.v_bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.proj = nn.Linear(3 * dim, 4)

    def forward(self, x):
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        return self.proj(F.linear(x, self.qkv.weight, bias).relu())


def test_a_weight_read_into_f_linear_sees_the_adapted_value():
    supernet = _contract(FusedQKV(), (torch.randn(3, 8, generator=torch.Generator().manual_seed(0)),))
    qkv = supernet.plan.layer("qkv")
    assert qkv.site.computed_bias and all(qkv.space.tensor(t) == (glorac.Kind(kind="none"),) for t in "CDE")
    assert any("computes this layer's bias" in n for n in qkv.notes)


class WithAttention(nn.Module):
    """nn.MultiheadAttention is an fx leaf that reads out_proj.weight/bias itself."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_layers_inside_a_leaf_module_are_adapted_without_touching_the_callers_model():
    model = WithAttention()
    supernet = _contract(model, (torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1)),))
    assert supernet.plan.front_end == "fx"
    assert "attn.out_proj" in supernet.adapters
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


class ReadsDtype(nn.Module):
    """Hugging Face T5 style: code that reads a layer's weight metadata."""

    def __init__(self):
        super().__init__()
        self.wi, self.wo = nn.Linear(6, 12), nn.Linear(12, 6)

    def forward(self, x):
        h = self.wi(x).relu()
        return self.wo(h.to(self.wo.weight.dtype)) + self.wo.in_features * 0


def test_metadata_reads_of_an_adapted_layer_keep_working():
    _contract(ReadsDtype(), (torch.randn(4, 6, generator=torch.Generator().manual_seed(2)),))


def test_conv_subclasses_with_their_own_forward_are_excluded_with_the_reason():
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(timm_layers.StdConv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))  # materialise the lazy layer
    supernet = glorac.build_supernet(_spec(), model)
    assert dict(supernet.plan.skipped)["0"].startswith("not supported: timm.layers.std_conv.StdConv2d computes its own forward")
    assert [lp.qualname for lp in supernet.plan.layers] == ["2"]


def test_same_padding_convs_are_adapted_exactly():
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    model = nn.Sequential(timm_layers.Conv2dSame(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 2, 1))
    supernet = _contract(model, (torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(3)),))
    assert "0" in supernet.adapters


class TrainOnlyDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)
        self.p = 0.5

    def forward(self, x):
        h = self.fc1(x).relu()
        if self.training:  # traced into the graph as it was at trace time
            h = F.dropout(h, self.p)
        return self.fc2(h)


@pytest.mark.parametrize("traced_in", ["eval", "train"])
def test_train_and_eval_behaviour_follow_the_mode_after_compile(traced_in):
    model = TrainOnlyDropout().train(traced_in == "train")
    supernet = glorac.build_supernet(_spec(), model)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(4))
    supernet.eval()
    with torch.no_grad():
        assert torch.equal(supernet(x), supernet(x))
        model.eval()
        assert rel_err(supernet(x), model(x)) <= 1e-6
    supernet.train()
    with torch.no_grad():
        assert not torch.equal(supernet(x), supernet(x)), "dropout must apply in train mode"


class OptionalMask(nn.Module):
    """Hiera style: an optional argument that changes the computation when given."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x, mask=None, scale: float = 1.0):
        h = self.fc(x)
        if mask is not None:
            h = h * mask
        return self.head(h * scale)


def test_optional_arguments_are_traced_at_their_defaults():
    supernet = _contract(OptionalMask(), (torch.randn(3, 6, generator=torch.Generator().manual_seed(5)),))
    assert supernet.plan.front_end == "fx"


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.body = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(self.body(self.embed(ids)))


def test_tied_weights_are_excluded_naming_both_tensors():
    model = Tied()
    supernet = _contract(model, (torch.randint(0, 10, (2, 4), generator=torch.Generator().manual_seed(6)),))
    why = dict(supernet.plan.skipped)["out"]
    assert "tied to embed.weight" in why
    assert list(supernet.adapters) == ["body"]


class DifferentWhenTraced(nn.Module):
    """A forward that knows it is being traced: the graph computes another shape."""

    pretrained_cfg = {"input_size": (4,)}  # what glorac's probe reads, as on a timm model

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return h[:, :2] if torch.fx._symbolic_trace.is_fx_tracing() else h


def test_a_graph_that_does_not_reproduce_the_model_falls_back_to_the_module_front_end():
    plan = glorac.plan(_spec(extra=""), DifferentWhenTraced())
    assert plan.front_end == "modules" and [lp.qualname for lp in plan.layers] == ["fc"]
    assert "computes a (1, 2) torch.float32 output where the model computes (1, 4)" in plan.trace_failure


def test_a_head_created_for_num_classes_is_trained_by_default(tmp_path, capsys):
    from tests.reference import run_cli

    spec = tmp_path / "s.glora"
    spec.write_text(SPACE + 'adapt "**" type Linear with s\n')  # no `train` line; the rule matches the head too
    out = tmp_path / "sn.pt"
    code, _, err = run_cli(capsys, "compile", spec, "--model", "tests.test_train:digit_net", "--num-classes", "5",
                           "-o", out)
    assert code == 0, err
    supernet = glorac.load(out)
    assert supernet.plan.trained == ("head",) and "head" not in supernet.adapters
    assert dict(supernet.plan.skipped)["head"] == "not supported: trained fully (the new task head)"
    assert all(p.requires_grad for p in supernet.base_model.head.parameters())
    # a spec that trains something else still gets the new head trained
    spec.write_text(SPACE + 'adapt "body.4" with s\ntrain "body.1"\n')
    code, _, err = run_cli(capsys, "compile", spec, "--model", "tests.test_train:digit_net", "--num-classes", "5",
                           "-o", out, "--force")
    assert code == 0, err
    assert glorac.load(out).plan.trained == ("body.1", "head")
