"""GloraAdapter against an independent dense reference of DESIGN.md §1.

Every adapter parameter is filled with random values before a comparison: with the
zero init of the out-side factors almost any formula would "match" the base layer.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode

from glorac.errors import PlanError
from glorac.ir import TENSORS, Kind, LayerChoice, Space
from glorac.kinds import Geometry, storage_shapes
from glorac.op import GloraAdapter, GloraConv2d, GloraLinear, build_adapter_for
from tests.reference import scale_of

K = Kind.parse
NONE, VEC, SCA = K("none"), K("vector"), K("scalar")
FULL = Space(  # the paper's space: 4·4·3·3·3 = 432 structures
    A=(K("lora(4)"), VEC, SCA, NONE),
    B=(K("lora(4)"), VEC, SCA, NONE),
    C=(K("lora(4)"), VEC, NONE),
    D=(VEC, SCA, NONE),
    E=(VEC, SCA, NONE),
)
MULTI = Space(  # several ranks share one rank-4 storage: 5·5·4·3·3 = 900 structures
    A=(K("lora(2)"), K("lora(4)"), VEC, SCA, NONE),
    B=(K("lora(2)"), K("lora(4)"), VEC, SCA, NONE),
    C=(K("lora(2)"), K("lora(4)"), VEC, NONE),
    D=(VEC, SCA, NONE),
    E=(VEC, SCA, NONE),
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Every tensor here is tiny: a second OpenMP thread only adds sync cost, and on a
    # busy 2-core machine it made these sweeps 10-20x slower (measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def all_choices(space: Space) -> list[LayerChoice]:
    return [
        LayerChoice(**dict(zip(TENSORS, kinds)))
        for kinds in itertools.product(*(space.tensor(t) for t in TENSORS))
    ]


# ------------------------------------------------------------ the reference
def _ab(p, t, kind, out, fan_in):
    if kind.kind == "lora":
        return p[f"{t}_out"][:, : kind.rank] @ p[f"{t}_in"][: kind.rank, :]
    if kind.kind == "vector":
        return p[f"{t}_out"][:, 0:1].expand(out, fan_in)
    if kind.kind == "scalar":
        return p[f"{t}_out"][0, 0] * torch.ones(out, fan_in, dtype=torch.float64)
    return torch.zeros(out, fan_in, dtype=torch.float64)


def _c(p, kind, c_len):
    if kind.kind == "lora":
        return (p["C_out"][:, : kind.rank] @ p["C_in"][: kind.rank, :])[:, 0]
    if kind.kind == "vector":
        return p["C_out"][:, 0]
    return torch.zeros(c_len, dtype=torch.float64)


def _de(p, t, kind, out):
    if kind.kind == "vector":
        return p[t]
    if kind.kind == "scalar":
        return p[t][0] * torch.ones(out, dtype=torch.float64)
    return torch.zeros(out, dtype=torch.float64)


def reference(adapter, choice, x, weight, bias):
    """Dense float64 W', b' and y straight from the formula (autograd flows to params)."""
    out, fan_in, c_len = adapter.geom.out, adapter.geom.fan_in, adapter.geom.c_len
    p = {n: v.double() for n, v in adapter.named_parameters()}
    for t in ("A", "B", "C"):  # the parametrization's constants scale the out-side factor
        if f"{t}_out" in p:
            p[f"{t}_out"] = p[f"{t}_out"] * scale_of(t, choice.tensor(t), fan_in, adapter.parametrization)
    w0 = weight.double()
    w_mat = w0.reshape(out, fan_in)
    w_eff = w_mat + w_mat * _ab(p, "A", choice.A, out, fan_in) + _ab(p, "B", choice.B, out, fan_in)
    b0 = torch.zeros(out, dtype=torch.float64) if bias is None else bias.double()
    window_sum = w0.reshape(out, c_len, -1).sum(-1)  # W0 summed over its kernel window
    b_eff = (
        b0 + b0 * _de(p, "D", choice.D, out) + _de(p, "E", choice.E, out)
        + window_sum @ _c(p, choice.C, c_len)
    )
    if bias is None and choice.C == NONE and choice.E == NONE:
        b_eff = None
    w_eff = w_eff.reshape(weight.shape)
    if adapter.conv is None:
        y = F.linear(x.double(), w_eff, b_eff)
    else:
        y = F.conv2d(x.double(), w_eff, b_eff, **adapter.conv)
    return y, w_eff, b_eff


# ------------------------------------------------------------------ layers
@dataclass
class Case:
    module: nn.Module
    x: torch.Tensor


def make_case(name: str, dtype=torch.float32) -> Case:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    specs = {
        "linear": (lambda: nn.Linear(10, 6), (3, 10)),
        "linear_nobias_3d": (lambda: nn.Linear(10, 6, bias=False), (2, 3, 10)),
        "conv1x1": (lambda: nn.Conv2d(5, 6, 1), (2, 5, 4, 4)),
        "conv3x3_s2p1": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 7, 7)),
        "conv3x3_dil_nobias": (lambda: nn.Conv2d(4, 6, (3, 2), padding=2, dilation=2, bias=False), (2, 4, 6, 6)),
        "depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), (2, 6, 5, 5)),
        "grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2), (2, 4, 5, 5)),
    }
    build, x_shape = specs[name]
    module = build()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    module.requires_grad_(False)  # the base is frozen, as in training
    return Case(module.to(dtype), torch.randn(x_shape, generator=g).to(dtype))


def perturb(adapter: GloraAdapter, seed: int = 0, scale: float = 0.5) -> GloraAdapter:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return adapter


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1.0)).item()


CASES = ["linear", "linear_nobias_3d", "conv1x1", "conv3x3_s2p1", "conv3x3_dil_nobias", "depthwise", "grouped"]


def sweep(case_name: str, space: Space, choices=None):
    case = make_case(case_name)
    w, b = case.module.weight, case.module.bias
    adapter = perturb(build_adapter_for(case.module, space))
    failures = []
    for choice in choices or all_choices(space):
        adapter.set_choice(choice)
        y = adapter(case.x, w, b)
        y_ref, w_ref, b_ref = reference(adapter, choice, case.x, w, b)
        w_fold, b_fold = adapter.fold(w, b)
        ok = rel_err(y, y_ref) < 1e-5 and rel_err(w_fold, w_ref) < 1e-6
        ok = ok and w_fold.shape == w.shape and (b_fold is None) == (b_ref is None)
        ok = ok and (b_ref is None or rel_err(b_fold, b_ref) < 1e-6)
        if not ok:
            failures.append(str(choice))
    assert not failures, f"{len(failures)} structures disagree with the reference, e.g. {failures[:5]}"


@pytest.mark.parametrize("case_name", CASES)
def test_all_432_structures_match_reference(case_name):
    # The extra conv variants take every 3rd structure to keep the file fast.
    full = case_name in ("linear", "linear_nobias_3d", "conv1x1", "conv3x3_s2p1", "depthwise")
    sweep(case_name, FULL, None if full else all_choices(FULL)[::3])


@pytest.mark.parametrize("case_name, stride", [("linear", 1), ("conv3x3_s2p1", 2)])
def test_several_ranks_share_storage(case_name, stride):
    sweep(case_name, MULTI, all_choices(MULTI)[::stride])


def test_unbatched_conv_input():
    case = make_case("conv3x3_s2p1")
    picks = [c for c in all_choices(FULL) if c.A.kind != "lora"][::7]
    case.x = case.x[0]
    adapter = perturb(build_adapter_for(case.module, FULL))
    for choice in picks:
        adapter.set_choice(choice)
        y_ref = reference(adapter, choice, case.x, case.module.weight, case.module.bias)[0]
        assert rel_err(adapter(case.x, case.module.weight, case.module.bias), y_ref) < 1e-5, str(choice)


# -------------------------------------------------------------------- init
@pytest.mark.parametrize("case_name", CASES)
def test_fresh_adapter_is_the_base_layer(case_name):
    case = make_case(case_name)
    adapter = build_adapter_for(case.module, FULL, generator=torch.Generator().manual_seed(0))
    assert adapter.choice == LayerChoice()  # the cheapest structure: the base op alone
    richest = LayerChoice(A=K("lora(4)"), B=K("lora(4)"), C=K("lora(4)"), D=VEC, E=VEC)
    base = case.module(case.x)
    for choice in all_choices(FULL)[::5] + [adapter.choice, richest]:
        adapter.set_choice(choice)
        y = adapter(case.x, case.module.weight, case.module.bias)
        assert (y - base).abs().max() <= 1e-6, str(choice)
    w_fold, b_fold = adapter.fold(case.module.weight, case.module.bias)
    assert torch.equal(w_fold, case.module.weight)


def test_init_is_deterministic_and_in_side_only():
    def make(seed):
        return GloraAdapter(FULL, Geometry.linear(10, 6), layer="linear", generator=torch.Generator().manual_seed(seed))

    a, b, c = make(1), make(1), make(2)
    for name, p in a.named_parameters():
        assert torch.equal(p, b.get_parameter(name))
        if name.endswith("_in"):
            assert p.abs().max() > 0 and p.abs().max() <= 1 / p.shape[1] ** 0.5
            assert not torch.equal(p, c.get_parameter(name))
        else:
            assert not p.any(), f"{name} must start at zero"


# ------------------------------------------------------------ parameters
@pytest.mark.parametrize(
    "space",
    [FULL, MULTI, Space(A=(VEC, SCA, NONE), B=(VEC, SCA, NONE), C=(VEC, NONE), D=(SCA,)), Space(A=(SCA,)), Space()],
)
def test_adapter_allocates_exactly_the_storage(space):
    geom = Geometry.conv2d(4, 6, 3, 1)
    adapter = GloraAdapter(space, geom, layer="conv2d", conv={"padding": 1})
    shapes = {n: tuple(p.shape) for n, p in adapter.named_parameters()}
    assert shapes == storage_shapes(space, geom)
    assert not list(adapter.buffers())  # the base weight is never copied in
    if not any(k.kind == "lora" for k in space.A + space.B):
        assert all(p.numel() < geom.out * geom.fan_in for p in adapter.parameters())


def used_params(choice: LayerChoice, has_bias: bool) -> set[str]:
    """Which storage a choice reads, written out independently of kinds.py."""
    used = set()
    for t in "ABC":
        kind = choice.tensor(t).kind
        used |= {f"{t}_out", f"{t}_in"} if kind == "lora" else {f"{t}_out"} if kind != "none" else set()
    if choice.D.kind != "none" and has_bias:  # D scales b0; without b0 it reads nothing
        used.add("D")
    if choice.E.kind != "none":
        used.add("E")
    return used


@pytest.mark.parametrize(
    "case_name, space, stride",
    [("linear", FULL, 2), ("linear_nobias_3d", MULTI, 5), ("conv3x3_s2p1", FULL, 3), ("grouped", FULL, 5)],
)
def test_gradients_reach_only_used_params_and_match_reference(case_name, space, stride):
    case = make_case(case_name)
    w, b = case.module.weight, case.module.bias
    adapter = perturb(build_adapter_for(case.module, space), seed=3)
    x = case.x.clone().requires_grad_(True)
    for choice in all_choices(space)[::stride]:
        adapter.set_choice(choice)
        adapter.zero_grad(set_to_none=True)
        x.grad = None
        y = adapter(x, w, b)
        g_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
        (y * g_out).sum().backward()
        got = {n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None}
        x_grad = x.grad.clone()
        assert set(got) == used_params(choice, b is not None), str(choice)
        assert w.grad is None and (b is None or b.grad is None)
        adapter.zero_grad(set_to_none=True)
        x.grad = None
        y_ref = reference(adapter, choice, x, w, b)[0]
        (y_ref * g_out.double()).sum().backward()
        for name, grad in got.items():
            want = adapter.get_parameter(name).grad
            assert rel_err(grad, want) < 1e-5, f"{choice}: d{name}"
            assert grad.abs().max() > 0 or not want.abs().max() > 0
        assert rel_err(x_grad, x.grad) < 1e-5, str(choice)


def test_smaller_rank_trains_only_its_slice():
    case = make_case("linear")
    adapter = perturb(build_adapter_for(case.module, MULTI))
    adapter.set_choice(LayerChoice(A=K("lora(2)"), B=K("lora(2)"), C=K("lora(2)")))
    adapter(case.x, case.module.weight, case.module.bias).square().sum().backward()
    for t in "ABC":
        out_grad, in_grad = adapter.get_parameter(f"{t}_out").grad, adapter.get_parameter(f"{t}_in").grad
        assert out_grad[:, :2].abs().max() > 0 and in_grad[:2].abs().max() > 0
        assert not out_grad[:, 2:].any() and not in_grad[2:].any()


# --------------------------------------------------- cheapest computation
class OpRecorder(TorchDispatchMode):
    """Records (op, inputs, fresh outputs) of every aten op, backward included.

    Outputs that alias an input (views such as ``t`` of the weight) cost nothing and
    are left out, so "weight-sized output" means a newly computed weight-sized tensor.
    """

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        seen = {i.untyped_storage().data_ptr() for i in ins}
        outs = [
            o for o in tree_flatten(result)[0]
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in seen
        ]
        self.calls.append((func.overloadpacket.__name__, ins, outs))
        return result


@pytest.mark.parametrize("case_name", ["linear_nobias_3d", "conv3x3_s2p1"])
def test_one_full_matmul_and_no_weight_sized_tensor_unless_a_is_lora(case_name):
    # Sizes are chosen so that no activation has as many elements as the weight.
    case = make_case(case_name)
    if case_name == "linear_nobias_3d":
        case.x = torch.randn(2, 7, 10)
    w, b = case.module.weight, case.module.bias
    adapter = perturb(build_adapter_for(case.module, FULL))
    x = case.x.requires_grad_(True)
    y_numel = case.module(case.x).numel()
    assert y_numel != w.numel()
    for choice in all_choices(FULL)[::5]:
        adapter.set_choice(choice)
        with OpRecorder() as rec:
            y = adapter(x, w, b)
        full_gemms = [
            op for op, ins, outs in rec.calls
            if op in ("mm", "addmm", "bmm", "convolution")
            and any(i.numel() == w.numel() for i in ins) and outs and outs[0].numel() == y_numel
        ]
        assert len(full_gemms) == 1, f"{choice}: {full_gemms}"
        with rec:
            y.square().sum().backward()
        if choice.A.kind != "lora":
            sized = [op for op, _, outs in rec.calls for o in outs if o.numel() == w.numel()]
            assert not sized, f"{choice}: weight-sized tensors from {sized}"


# ------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("case_name", ["linear", "conv3x3_s2p1", "depthwise"])
def test_low_precision_base_with_fp32_adapter(case_name, dtype, tol):
    case = make_case(case_name, dtype)
    w, b = case.module.weight, case.module.bias
    adapter = perturb(build_adapter_for(case.module, FULL))
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    eps = torch.finfo(dtype).eps
    for choice in all_choices(FULL)[::4]:
        adapter.set_choice(choice)
        y = adapter(case.x, w, b)
        y_ref, w_ref, b_ref = reference(adapter, choice, case.x, w, b)
        assert y.dtype == dtype and rel_err(y, y_ref) < tol, f"{choice}: {rel_err(y, y_ref)}"
        w_fold, b_fold = adapter.fold(w, b)
        assert w_fold.dtype == dtype and b_fold.dtype == dtype
        # fold accumulates in float64: only the final rounding to `dtype` remains
        assert ((w_fold.double() - w_ref).abs() <= eps * w_ref.abs() + 1e-30).all(), str(choice)


@pytest.mark.parametrize("case_name", ["linear", "conv3x3_s2p1"])
def test_cpu_autocast_keeps_the_autocast_dtype(case_name):
    case = make_case(case_name)
    w, b = case.module.weight, case.module.bias
    adapter = perturb(build_adapter_for(case.module, FULL))
    for choice in all_choices(FULL)[::9]:
        adapter.set_choice(choice)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = adapter(case.x, w, b)
        y_ref = reference(adapter, choice, case.x, w, b)[0]
        assert y.dtype == torch.bfloat16 and rel_err(y, y_ref) < 2e-2, str(choice)


# ------------------------------------------------------------------- fold
def test_fold_uses_the_original_weight_for_c():
    case = make_case("linear")
    w, b = case.module.weight, case.module.bias
    adapter = perturb(build_adapter_for(case.module, FULL))
    choice = LayerChoice(A=K("lora(4)"), B=VEC, C=VEC)
    w_fold, b_fold = adapter.fold(w, b, choice)
    c = adapter.C_out[:, 0].detach()
    torch.testing.assert_close(b_fold, b + w @ c)
    assert (b_fold - (b + w_fold @ c)).abs().max() > 1e-3  # the known bug would differ


def test_fold_is_pure_and_bias_only_when_created():
    case = make_case("linear_nobias_3d")
    w = case.module.weight.clone().double()
    adapter = perturb(build_adapter_for(case.module, FULL))
    before_w = w.clone()
    before_p = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    current = adapter.choice
    w_fold, b_none = adapter.fold(w, None, LayerChoice(A=VEC, D=VEC))
    assert b_none is None and w_fold.dtype == torch.float64 and w_fold.data_ptr() != w.data_ptr()
    _, b_new = adapter.fold(w, None, LayerChoice(E=SCA))
    assert b_new.shape == (6,) and torch.allclose(b_new, adapter.E[0].double().expand(6))
    same, _ = adapter.fold(w, None, LayerChoice())
    assert torch.equal(same, w) and same.data_ptr() != w.data_ptr()
    assert torch.equal(w, before_w) and adapter.choice == current
    assert all(torch.equal(p, before_p[n]) for n, p in adapter.named_parameters())
    assert not w_fold.requires_grad


def test_bias_free_layer_without_c_or_e_passes_no_bias():
    case = make_case("conv3x3_dil_nobias")
    adapter = perturb(build_adapter_for(case.module, FULL))
    adapter.set_choice(LayerChoice(A=SCA, D=VEC))  # D has nothing to scale
    y = adapter(case.x, case.module.weight, None)
    expected = case.module(case.x) * (1 + adapter.A_out[0, 0].item())
    torch.testing.assert_close(y, expected)
    assert adapter.fold(case.module.weight, None)[1] is None


# ------------------------------------------------------------ choice & misc
def test_set_choice_outside_space_raises_plan_error():
    adapter = GloraAdapter(Space(A=(K("lora(4)"), VEC), E=(SCA, NONE)), Geometry.linear(10, 6), layer="linear")
    before = adapter.choice
    for bad in (LayerChoice(A=SCA), LayerChoice(A=K("lora(8)")), LayerChoice(A=VEC, E=VEC)):
        with pytest.raises(PlanError, match="outside this layer's space"):
            adapter.set_choice(bad)
        with pytest.raises(PlanError):
            adapter.fold(torch.randn(6, 10), None, bad)
    assert adapter.choice == before
    adapter.set_choice(LayerChoice(A=VEC, E=SCA))
    assert "A=vector" in repr(adapter) and "E=scalar" in repr(adapter)


def test_wrappers_and_builder():
    lin = make_case("linear")
    ad = perturb(build_adapter_for(lin.module, FULL))
    torch.testing.assert_close(GloraLinear(lin.module, ad)(lin.x), ad(lin.x, lin.module.weight, lin.module.bias))
    conv = make_case("conv3x3_s2p1")
    cad = perturb(build_adapter_for(conv.module, FULL))
    assert cad.conv == {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    wrapped = GloraConv2d(conv.module, cad)
    torch.testing.assert_close(wrapped(conv.x), cad(conv.x, conv.module.weight, conv.module.bias))
    assert {n for n, _ in wrapped.named_parameters()} >= {"base.weight", "adapter.A_out"}
    with pytest.raises(PlanError):
        GloraLinear(nn.Linear(10, 7), ad)
    with pytest.raises(PlanError):
        GloraConv2d(nn.Conv2d(4, 6, 3, stride=1, padding=1), cad)  # stride differs
    with pytest.raises(PlanError, match="padding_mode"):
        build_adapter_for(nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), FULL)
    with pytest.raises(PlanError):
        build_adapter_for(nn.Conv1d(4, 6, 3), FULL)


# ---------------------------------------------------------------- compile
def test_torch_compile_fullgraph_per_choice():
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    for case_name in ("linear", "conv3x3_s2p1"):
        case = make_case(case_name)
        w, b = case.module.weight, case.module.bias
        adapter = perturb(build_adapter_for(case.module, FULL))
        compiled = torch.compile(adapter, backend="eager", fullgraph=True)
        picks = [adapter.choice, LayerChoice(A=VEC, B=K("lora(4)"), C=VEC, D=SCA, E=VEC), LayerChoice(B=VEC, E=SCA)]
        for choice in picks if case_name == "linear" else picks[1:2]:
            adapter.set_choice(choice)  # a new choice must recompile, not reuse a stale graph
            torch.testing.assert_close(compiled(case.x, w, b), adapter(case.x, w, b))


def _compiled_matches_eager(case_name: str, choices, backend: str, tol: float) -> None:
    """compile_op gives eager's output and gradients (input and adapter tensors), per choice."""
    case = make_case(case_name)
    w, b = case.module.weight, case.module.bias
    adapter = perturb(build_adapter_for(case.module, FULL))
    for choice in choices:
        adapter.set_choice(choice)
        results = []
        for run in (None, backend):
            adapter.compile_op(run)
            x = case.x.clone().requires_grad_(True)
            adapter.zero_grad(set_to_none=True)
            y = adapter(x, w, b)
            y.pow(2).sum().backward()
            grads = {n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None}
            results.append((y.detach(), x.grad, grads))
        (y0, gx0, g0), (y1, gx1, g1) = results
        assert g0.keys() == g1.keys() and g0, choice
        assert rel_err(y1, y0) < tol and rel_err(gx1, gx0) < tol, choice
        for n in g0:
            assert rel_err(g1[n], g0[n]) < tol, (choice, n)
    adapter.compile_op(None)
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] >= len(choices)  # it did compile, once per structure


#: One structure per computation path of GloraAdapter.forward: W′ materialised (A lora),
#: factored (A vector / scalar, B lora side path), B vector side path, bias terms only.
PATHS = [LayerChoice(A=K("lora(4)"), B=K("lora(4)"), C=K("lora(4)"), D=VEC, E=VEC),
         LayerChoice(A=VEC, B=K("lora(4)"), C=VEC, D=VEC, E=VEC),
         LayerChoice(A=SCA, B=VEC, E=SCA),
         LayerChoice(C=VEC, D=SCA, E=VEC)]


@pytest.mark.parametrize("case_name", ["linear", "linear_nobias_3d", "conv3x3_s2p1", "grouped"])
def test_compiled_op_matches_eager_on_every_path(case_name):
    pytest.importorskip("torch._dynamo").reset()
    _compiled_matches_eager(case_name, PATHS, "aot_eager", 1e-6)


def test_compiled_op_shares_graphs_between_layers_of_one_shape_and_structure():
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    layers = [nn.Linear(10, 6) for _ in range(3)] + [nn.Linear(10, 4)]
    adapters = [perturb(build_adapter_for(m, FULL), seed=i) for i, m in enumerate(layers)]
    structure = PATHS[1]
    x = torch.randn(3, 10)
    from glorac import op

    op._compiled_run.cache_clear()
    for a, m in zip(adapters, layers):
        a.set_choice(structure)
        a.compile_op(counting)
        torch.testing.assert_close(a(x, m.weight, m.bias), (a.compile_op(None), a(x, m.weight, m.bias))[1])
        a.compile_op(counting)
    assert len(graphs) == 2  # one graph per shape: three 10→6 layers share one
    adapters[0].set_choice(PATHS[2])  # another structure is another graph, never a stale one
    torch.testing.assert_close(adapters[0](x, layers[0].weight, layers[0].bias),
                               adapters[0]._run(x, layers[0].weight, layers[0].bias, adapters[0]._kinds))
    assert len(graphs) == 3
    op._compiled_run.cache_clear()


@pytest.mark.slow
def test_inductor_compiled_op_matches_eager():
    """The real compiler (C++ code generation on a CPU: about half a minute per graph here)."""
    pytest.importorskip("torch._dynamo").reset()
    _compiled_matches_eager("linear", PATHS[:2], "inductor", 1e-5)


# ----------------------------------------------------------- random layers
@st.composite
def layers(draw):
    if draw(st.booleans()):
        module = nn.Linear(draw(st.integers(1, 9)), draw(st.integers(1, 9)), bias=draw(st.booleans()))
        x_shape = (draw(st.integers(1, 3)), module.in_features)
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
        k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        module = nn.Conv2d(cin, cout, k, stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, 2)),
                           groups=groups, bias=draw(st.booleans()))
        x_shape = (draw(st.integers(1, 2)), cin, draw(st.integers(3, 6)), draw(st.integers(3, 6)))
    choice = draw(st.sampled_from(all_choices(FULL)))
    return module.requires_grad_(False), x_shape, choice, draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None)
@given(layers())
def test_random_layers_match_reference(layer):
    module, x_shape, choice, seed = layer
    adapter = perturb(build_adapter_for(module, FULL), seed=seed)
    adapter.set_choice(choice)
    x = torch.randn(x_shape, generator=torch.Generator().manual_seed(seed))
    y_ref, w_ref, b_ref = reference(adapter, choice, x, module.weight, module.bias)
    assert rel_err(adapter(x, module.weight, module.bias), y_ref) < 1e-5
    w_fold, b_fold = adapter.fold(module.weight, module.bias)
    assert rel_err(w_fold, w_ref) < 1e-6 and (b_fold is None) == (b_ref is None)
