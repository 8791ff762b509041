"""The GLoRA op: one supernet layer's support tensors and the cheapest exact forward.

    W' = W0 + W0 ⊙ A + B            b' = b0 + b0 ⊙ D + E + W0 · C            (DESIGN.md §1)

The adapter owns only the shared support storage (see :mod:`glorac.kinds`); the frozen
base weight and bias are passed to :meth:`GloraAdapter.forward` by the caller, so one
adapter serves an ``nn.Linear`` module and a functional ``F.linear`` call site alike and
never copies the base. The structure used is the ``choice`` argument, or by default
``adapter.choice`` set with :meth:`~GloraAdapter.set_choice` (the supernet's active
structure while training; sampling belongs to the trainer, never inside forward).

Which computation runs (all exact, one full GEMM/conv per call):

* A = lora, or a grouped conv: materialise W' once, one matmul/conv with W' and b'.
* A ∈ {vector, scalar, none}: x·(W0 ⊙ (1+a))ᵀ is the base output scaled per output
  channel, so run the base op once, scale it, and add B as a side path
  (lora: x→V→U like LoRA; vector/scalar: rowsum(x) ⊗ b). No weight-sized tensor.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .errors import PlanError
from .ir import LayerChoice, Space
from .kinds import PARAMETRIZATIONS, Geometry, choice_in_space, kind_scale, min_choice, storage_shapes

#: A choice compiled to plain Python values: ((kind, rank, scale), ...) in TENSORS order,
#: ``scale`` being the parametrization's constant (:func:`glorac.kinds.kind_scale`).
#: forward branches only on these, so torch.compile specialises cleanly per choice.
_Kind = tuple[str, int, float]
_Kinds = tuple[_Kind, ...]

_CONV_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _normalise_conv(conv: Optional[dict]) -> dict:
    """Conv settings in nn.Conv2d's own form (pairs), so two spellings compare equal."""
    unknown = set(conv or {}) - set(_CONV_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown conv parameters {sorted(unknown)}; expected {sorted(_CONV_DEFAULTS)}")
    c = dict(_CONV_DEFAULTS, **(conv or {}))
    pad = c["padding"] if isinstance(c["padding"], str) else _pair(c["padding"])
    return {"stride": _pair(c["stride"]), "padding": pad, "dilation": _pair(c["dilation"]), "groups": int(c["groups"])}


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``; a tensor already in it is returned without a call into torch
    (a no-op ``.to`` still costs a dispatch, which adds up over a launch-bound step)."""
    return t if t.dtype == dtype else t.to(dtype)


def _compile_choice(choice: LayerChoice, geom: Geometry, parametrization: str) -> _Kinds:
    return tuple((k.kind, k.rank or 0, kind_scale(t, k, geom, parametrization)) for t, k in choice.items())


class GloraAdapter(nn.Module):
    """Shared support tensors of one layer plus the currently selected structure."""

    def __init__(
        self,
        space: Space,
        geom: Geometry,
        *,
        layer: Literal["linear", "conv2d"],
        conv: Optional[dict] = None,
        dtype: torch.dtype = torch.float32,
        device: Union[torch.device, str, None] = None,
        generator: Optional[torch.Generator] = None,
        parametrization: str = "balanced",
    ):
        super().__init__()
        if layer not in ("linear", "conv2d"):
            raise ValueError(f"layer must be 'linear' or 'conv2d', not {layer!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"unknown parametrization {parametrization!r}; expected one of {PARAMETRIZATIONS}")
        self.parametrization = parametrization
        if layer == "linear" and conv:
            raise ValueError("conv parameters given for a linear adapter")
        self.space, self.geom, self.layer = space, geom, layer
        self.conv = _normalise_conv(conv) if layer == "conv2d" else None
        for name, shape in storage_shapes(space, geom).items():
            self.register_parameter(name, nn.Parameter(self._init_value(name, shape, dtype, device, generator)))
        # Every structure computes the base layer while the out-side factors are zero, so
        # a fresh adapter runs the cheapest one (usually all `none`: the base op alone).
        self.set_choice(min_choice(space, geom))

    @staticmethod
    def _init_value(name, shape, dtype, device, generator) -> Tensor:
        # Out-side factors, D and E start at zero so a fresh adapter is the base layer;
        # in-side factors get nn.Linear's kaiming-uniform bound 1/sqrt(fan_in) so the
        # out-side factors receive non-zero gradients from the first step.
        value = torch.zeros(shape, dtype=dtype)
        if name.endswith("_in"):
            bound = 1.0 / math.sqrt(shape[1])
            # Drawn on the CPU: the seeded generator is a CPU one, and the same seed then
            # gives the same adapters on every device.
            value.uniform_(-bound, bound, generator=generator)
        return value.to(device) if device is not None else value

    def reset_in_factors(self, generator: Optional[torch.Generator] = None) -> None:
        """Re-draw every in-side factor (``*_in``) exactly as construction draws it.

        Same order and distribution as ``__init__``, so re-drawing all adapters of a
        supernet in plan order from a generator seeded like compile's reproduces its init.
        While the out-side factors are zero the layer still computes the base layer.
        """
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("_in"):
                    p.copy_(self._init_value(name, tuple(p.shape), p.dtype, None, generator))

    # ------------------------------------------------------------------ choice
    def set_choice(self, choice: LayerChoice) -> None:
        """Select the structure forward uses by default; it must lie in the space."""
        self._kinds: _Kinds = self._compile(choice)
        self.choice = choice

    def _compile(self, choice: LayerChoice) -> _Kinds:
        """``choice`` as plain values, refusing one outside the space."""
        if not isinstance(choice, LayerChoice):
            raise TypeError(f"expected a LayerChoice, got {type(choice).__name__}")
        if not choice_in_space(choice, self.space):
            bad = [f"{t}={k}" for t, k in choice.items() if k not in self.space.tensor(t)]
            raise PlanError(
                f"choice {', '.join(bad)} is outside this layer's space ({self.space}); "
                "pick kinds (and lora ranks) that the space lists"
            )
        return _compile_choice(choice, self.geom, self.parametrization)

    def extra_repr(self) -> str:
        g = self.geom
        return (f"{self.layer}, out={g.out}, fan_in={g.fan_in}, space=[{self.space}], choice=[{self.choice}], "
                f"parametrization={self.parametrization}")

    # ------------------------------------------------------ support tensors
    # The factors are read whole whenever the kind uses all of the storage: slicing
    # costs nothing forward, but its backward scatters into a zeroed full-size gradient
    # (two kernels per factor per step), which a view or the parameter itself avoids.
    def _lowrank(self, tensor: str, kind: _Kind, dtype, *, scaled: bool = True) -> tuple[Tensor, Tensor]:
        """(scale·U, V): the first r columns/rows of the max-rank factors. ``scaled=False``
        leaves the scale to the caller, which can fold it into an op's own multiplier
        (addmm's alpha, addcmul's value) rather than keep a scaled copy of U for the backward."""
        _, rank, scale = kind
        u, v = getattr(self, f"{tensor}_out"), getattr(self, f"{tensor}_in")
        u = _cast(u if u.shape[1] == rank else u[:, :rank], dtype)
        v = _cast(v if v.shape[0] == rank else v[:rank, :], dtype)
        return (u if scale == 1.0 or not scaled else u * scale), v

    def _column0(self, tensor: str, kind: _Kind, dtype) -> Tensor:
        """vector → scale · column 0 of the out-side factor (out,); scalar → its [0, 0] (0-d)."""
        name, _, scale = kind
        p = getattr(self, f"{tensor}_out")
        if name == "vector":
            col = p.view(-1) if p.shape[1] == 1 else p[:, 0]
        else:
            col = p.view(()) if p.numel() == 1 else p[0, 0]
        col = _cast(col, dtype)
        return col if scale == 1.0 else col * scale

    def _dense_ab(self, tensor: str, kind: _Kind, w: Tensor) -> Optional[Tensor]:
        """A or B as a tensor broadcastable to ``w`` (None for none)."""
        name = kind[0]
        if name == "none":
            return None
        if name == "lora":
            u, v = self._lowrank(tensor, kind, w.dtype)
            return (u @ v).view(w.shape)
        col = self._column0(tensor, kind, w.dtype)
        return col.view(-1, *[1] * (w.dim() - 1)) if name == "vector" else col

    def _c_vector(self, kind: _Kind, dtype) -> Tensor:
        if kind[0] == "lora":  # V is r×1: the product is one column, scaled after
            u, v = self._lowrank("C", kind, dtype, scaled=False)
            c = (u @ v).view(-1)
            return c if kind[2] == 1.0 else c * kind[2]
        return self._column0("C", kind, dtype)

    def _effective_weight(self, w: Tensor, kinds: _Kinds) -> Tensor:
        """W0 + W0⊙A + B in w's dtype and shape."""
        if kinds[0][0] == "lora":  # the constant rides on addcmul's multiplier
            u, v = self._lowrank("A", kinds[0], w.dtype, scaled=False)
            out = torch.addcmul(w, w, (u @ v).view(w.shape), value=kinds[0][2])
        else:
            a = self._dense_ab("A", kinds[0], w)
            out = w if a is None else torch.addcmul(w, w, a)
        if kinds[1][0] == "lora":  # fuse the low-rank product (and its constant) into the add
            u, v = self._lowrank("B", kinds[1], w.dtype, scaled=False)
            return torch.addmm(out.reshape(w.shape[0], -1), u, v, alpha=kinds[1][2]).view(w.shape)
        b = self._dense_ab("B", kinds[1], w)
        return out if b is None else out + b

    def _effective_bias(self, w: Tensor, bias: Optional[Tensor], kinds: _Kinds) -> Optional[Tensor]:
        """b0 + b0⊙D + E + W0·C from the parts that exist; None when nothing does.

        ``w`` must be the ORIGINAL weight: W0·C with the updated W' is a known bug.
        """
        kc, kd, ke = kinds[2][0], kinds[3][0], kinds[4][0]
        dtype, out = w.dtype, w.shape[0]
        acc = bias
        if bias is not None and kd != "none":  # D scales b0; without b0 it has no effect
            d = _cast(self.D if kd == "vector" else self.D[0], dtype)
            acc = torch.addcmul(bias, bias, d)
        if ke != "none":
            e = _cast(self.E if ke == "vector" else self.E[:1], dtype)
            acc = (e if ke == "vector" else e.repeat(out)) if acc is None else acc + e
        if kc != "none":
            c = self._c_vector(kinds[2], dtype)
            # Summing W0 over the kernel window then multiplying by C equals a
            # mat-vec of the flat weight with C repeated per window position; the
            # latter never allocates an out×c_len (weight-sized for Linear) tensor.
            window = w[0].numel() // c.shape[0]
            # (mm rather than mv: CPU autocast breaks mv with mixed dtypes)
            wc = (w.reshape(out, -1) @ (c.repeat_interleave(window) if window > 1 else c)[:, None])[:, 0]
            acc = wc if acc is None else acc + wc
        return acc

    def effective_weight(self, weight: Tensor, choice: Optional[LayerChoice] = None) -> Tensor:
        """W′ = W0 + W0⊙A + B under ``choice`` (default: the selected one), differentiable."""
        return self._effective_weight(weight, self._kinds if choice is None else self._compile(choice))

    def effective_bias(self, weight: Tensor, bias: Optional[Tensor],
                       choice: Optional[LayerChoice] = None) -> Optional[Tensor]:
        """b′ = b0 + b0⊙D + E + W0·C under ``choice`` (None when there is none), differentiable."""
        return self._effective_bias(weight, bias, self._kinds if choice is None else self._compile(choice))

    # --------------------------------------------------------------- forward
    def _base_op(self, x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
        if self.conv is None:
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, **self.conv)

    def _per_channel(self, t: Tensor) -> Tensor:
        """View an (out,) tensor so it broadcasts over the output's channel dim."""
        return t if self.conv is None or t.dim() == 0 else t.view(-1, 1, 1)

    def forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                choice: Optional[LayerChoice] = None) -> Tensor:
        """The layer's output under ``choice`` (default: the selected one, :meth:`set_choice`)."""
        kinds = self._kinds if choice is None else self._compile(choice)
        run = self.__dict__.get("_compiled_run") or GloraAdapter._run
        return run(self, x, weight, bias, kinds)

    def compile_op(self, backend: Optional[str] = "inductor") -> None:
        """Run the forward through ``torch.compile`` (``backend``; None: eager again).

        One compiled function serves every adapter of the process, its graphs keyed by the
        structure (a tuple of constants) and the shapes, so layers of one shape and
        structure share a graph: a fixed structure on a ViT or a LLaMA needs four. The
        cache is torch's own, bounded by ``torch._dynamo.config.recompile_limit`` (8
        graphs): a supernet that samples more structures than that runs the rest
        eagerly. Exact to float rounding (fusion reorders sums); tests/test_op.py."""
        self.__dict__["_compiled_run"] = None if backend is None else _compiled_run(backend)

    def _run(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], kinds: _Kinds) -> Tensor:
        b_eff = self._effective_bias(weight, bias, kinds)
        grouped = self.conv is not None and self.conv["groups"] != 1
        kind_a = kinds[0][0]
        if kind_a == "lora" or grouped:
            return self._base_op(x, self._effective_weight(weight, kinds), b_eff)
        # With A = none a Linear's bias rides along in its addmm. A conv's only while it
        # needs no gradient (the frozen base bias: C, D, E none), which also keeps such
        # a conv bit-identical to the base one: a trainable conv bias makes CPU
        # convolution_backward also compute the full (unwanted) weight gradient of the
        # frozen W0 (caught by test_op).
        fuse_bias = kind_a == "none" and (self.conv is None or b_eff is None or not b_eff.requires_grad)
        y = self._base_op(x, weight, b_eff if fuse_bias else None)
        b_eff = None if fuse_bias else b_eff
        side = self._b_side_path(x, weight, y.dtype, kinds[1])
        if b_eff is not None:
            b_eff = self._per_channel(_cast(b_eff, y.dtype))
            side = b_eff if side is None else side + b_eff
        if kind_a == "none":
            return y if side is None else y + side
        # y's dtype, not W0's: under autocast the base op may run in lower precision.
        a = self._per_channel(self._column0("A", kinds[0], y.dtype))
        return _ScaleAdd.apply(y, a, side)

    def _b_side_path(self, x: Tensor, w: Tensor, dtype, kind_b: _Kind) -> Optional[Tensor]:
        """x·Bᵀ for B ∈ {lora, vector, scalar} without materialising B (None for none)."""
        if kind_b[0] == "none":
            return None
        if kind_b[0] == "lora":
            u, v = self._lowrank("B", kind_b, w.dtype)
            if self.conv is None:
                return F.linear(F.linear(x, v), u)
            h = F.conv2d(x, v.reshape(kind_b[1], *w.shape[1:]), None, **self.conv)
            return F.conv2d(h, u[:, :, None, None])
        # x·(b 1ᵀ)ᵀ = rowsum(x) ⊗ b. For a conv, the window sum over all input channels
        # is a one-channel conv of the channel-summed input with a ones kernel.
        if self.conv is None:
            s = x.sum(-1, keepdim=True)
        else:
            ones = x.new_ones((1, 1, *w.shape[2:]))
            s = F.conv2d(x.sum(-3, keepdim=True), ones, None, **self.conv)
        return _cast(s, dtype) * self._per_channel(self._column0("B", kind_b, dtype))

    # ------------------------------------------------------------------ fold
    def fold(
        self, weight: Tensor, bias: Optional[Tensor], choice: Optional[LayerChoice] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Effective (W', b') of ``choice`` (default: the current one) for deployment.

        Accumulated in float64 from the original W0, cast back to the base dtypes; no
        autograd graph, inputs untouched. The bias is None only when none exists and
        the choice creates none (C and E both none).
        """
        kinds = self._kinds if choice is None else self._compile(choice)
        with torch.no_grad():
            w64 = weight.detach().to(torch.float64, copy=True)
            b64 = None if bias is None else bias.detach().to(torch.float64, copy=True)
            w_eff = self._effective_weight(w64, kinds)
            b_eff = self._effective_bias(w64, b64, kinds)
        b_dtype = weight.dtype if bias is None else bias.dtype
        return w_eff.to(weight.dtype), None if b_eff is None else b_eff.to(b_dtype)


@functools.lru_cache(maxsize=None)
def _compiled_run(backend: str):
    """GloraAdapter._run under torch.compile with ``backend``, made once per process."""
    return torch.compile(GloraAdapter._run, backend=backend, dynamic=False)


class _ScaleAdd(torch.autograd.Function):
    """``y + y·a + s`` in one output pass forward and two backward.

    Autograd's own graph for ``addcmul(y, y, a) + s`` walks the output-sized tensors about
    nine times per step; for the factored path (A = vector or scalar) those passes cost
    about as much as the base matmul itself. ``a`` broadcasts over all but y's channel
    dim (last for Linear, 1 for Conv2d, or a scalar); ``s`` (B's side path plus the bias)
    broadcasts to y or is None.
    """

    @staticmethod
    def forward(ctx, y: Tensor, a: Tensor, s: Optional[Tensor]) -> Tensor:
        out = torch.addcmul(y, y, a)
        if s is not None:
            out = out.add_(s) if s.shape == out.shape else out + s
        ctx.save_for_backward(y, a)
        ctx.s_shape = None if s is None else s.shape
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        y, a = ctx.saved_tensors
        gy = torch.addcmul(g, g, a) if ctx.needs_input_grad[0] else None
        ga = _reduce_to(g * y, a.shape) if ctx.needs_input_grad[1] else None
        gs = _reduce_to(g, ctx.s_shape) if ctx.s_shape is not None and ctx.needs_input_grad[2] else None
        return gy, ga, gs


def _reduce_to(t: Tensor, shape) -> Tensor:
    """Sum a broadcast gradient back to ``shape`` (autograd's rule for broadcasting)."""
    if t.shape == shape:
        return t
    lead = t.dim() - len(shape)
    dims = list(range(lead)) + [i + lead for i, n in enumerate(shape) if n == 1 and t.shape[i + lead] != 1]
    out = t.sum(dim=dims, keepdim=True) if dims else t
    return out.reshape(shape)


# ---------------------------------------------------------------- module front end
class _GloraLayer(nn.Module):
    """An adapted layer in place of the original module: ``base`` stays a submodule, untouched.

    Code that reads the layer's parameters instead of calling it (``F.linear(x,
    self.qkv.weight, bias)`` in BEiT, ``self.out_proj.weight`` in nn.MultiheadAttention,
    ``self.wo.weight.dtype`` in T5) gets the *adapted* values: ``weight`` and ``bias`` are
    W′ and b′ of the active choice (computed, differentiable), so such reads never bypass
    the adapter and metadata (dtype, shape, device) stays that of the base. Any other
    attribute (``in_features``, ``kernel_size``, ...) is the base module's.
    """

    def __init__(self, base: nn.Module, adapter: GloraAdapter):
        super().__init__()
        self.base, self.adapter = base, adapter

    @property
    def weight(self) -> Tensor:
        return self.adapter.effective_weight(self.base.weight)

    @property
    def bias(self) -> Optional[Tensor]:
        return self.adapter.effective_bias(self.base.weight, self.base.bias)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base", "adapter") or "base" not in self._modules:
                raise
            return getattr(self._modules["base"], name)


class GloraLinear(_GloraLayer):
    """An ``nn.Linear`` plus its adapter."""

    def __init__(self, base: nn.Linear, adapter: GloraAdapter):
        if adapter.layer != "linear" or adapter.geom != Geometry.linear(base.in_features, base.out_features):
            raise PlanError(f"adapter ({adapter.extra_repr()}) does not fit {base}")
        super().__init__(base, adapter)

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(x, self.base.weight, self.base.bias)


class GloraConv2d(_GloraLayer):
    """An ``nn.Conv2d`` (or timm's ``Conv2dSame``) plus its adapter; stride, padding,
    dilation and groups come from the base."""

    def __init__(self, base: nn.Conv2d, adapter: GloraAdapter):
        if base.padding_mode != "zeros":
            raise PlanError(f"{base}: padding_mode={base.padding_mode!r} is not supported (only 'zeros')")
        if adapter.layer != "conv2d" or adapter.geom != _conv_geometry(base) or adapter.conv != _conv_params(base):
            raise PlanError(f"adapter ({adapter.extra_repr()}, conv={adapter.conv}) does not fit {base}")
        super().__init__(base, adapter)
        # Conv2dSame pads the input at run time ("same" for its stride), then convolves
        # with padding 0: the adapter does the convolution, the padding stays the base's.
        self._same = same_padding_conv(base)

    def forward(self, x: Tensor) -> Tensor:
        if self._same:
            from timm.layers.padding import pad_same

            x = pad_same(x, self.base.kernel_size, self.base.stride, self.base.dilation)
        return self.adapter(x, self.base.weight, self.base.bias)


class GloraConv1D(_GloraLayer):
    """transformers' ``Conv1D`` (GPT-2) plus its adapter: ``x @ W + b`` with W stored
    (in, out), i.e. a Linear with weight ``W.T``. ``weight`` reads back in Conv1D's layout."""

    def __init__(self, base: nn.Module, adapter: GloraAdapter):
        nx, nf = base.weight.shape
        if adapter.layer != "linear" or adapter.geom != Geometry.linear(nx, nf):
            raise PlanError(f"adapter ({adapter.extra_repr()}) does not fit {base}")
        super().__init__(base, adapter)

    @property
    def weight(self) -> Tensor:
        return self.adapter.effective_weight(self.base.weight.t()).t()

    @property
    def bias(self) -> Optional[Tensor]:
        return self.adapter.effective_bias(self.base.weight.t(), self.base.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(x, self.base.weight.t(), self.base.bias)


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' Conv1D (without importing transformers)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.") and module.weight.dim() == 2


def same_padding_conv(module: nn.Module) -> bool:
    """Whether ``module`` is timm's Conv2dSame (run-time "same" padding, then a plain conv)."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:  # timm is a dependency, but a user model must not need it
        return False
    return type(module) is Conv2dSame


def unsupported_subclass(module: nn.Module) -> Optional[str]:
    """Why a Linear/Conv2d subclass cannot be adapted exactly (None when it can).

    A subclass with its own forward computes something else than F.linear/F.conv2d of
    its weight (weight standardisation, run-time padding, quantisation...): computing it
    as the plain op would be silently wrong, and a folded weight might not reproduce it.
    """
    if f"{type(module).__module__}.{type(module).__qualname__}" in _PLAIN_SUBCLASSES:
        return None
    base = nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d
    forward_of = getattr(type(module), "_conv_forward", None) if base is nn.Conv2d else None
    own_forward = type(module).forward is not base.forward
    own_conv = base is nn.Conv2d and forward_of is not nn.Conv2d._conv_forward
    if not (own_forward or own_conv) or same_padding_conv(module):
        return None
    return (f"{type(module).__module__}.{type(module).__qualname__} computes its own forward (not a plain "
            f"nn.{base.__name__}); adapting it as one would change its output")


#: Subclasses whose own forward is the plain op (timm's Linear only adds a TorchScript cast).
_PLAIN_SUBCLASSES = frozenset({"timm.layers.linear.Linear"})


def _conv_geometry(conv: nn.Conv2d) -> Geometry:
    return Geometry.conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.groups)


def _conv_params(conv: nn.Conv2d) -> dict:
    return _normalise_conv(
        {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups}
    )


def build_adapter_for(
    module: Union[nn.Linear, nn.Conv2d],
    space: Space,
    *,
    dtype: torch.dtype = torch.float32,
    generator: Optional[torch.Generator] = None,
    parametrization: str = "balanced",
) -> GloraAdapter:
    """An adapter whose geometry and conv parameters come from ``module`` (same device)."""
    device = module.weight.device
    if is_transposed_linear(module):
        nx, nf = module.weight.shape
        return GloraAdapter(space, Geometry.linear(nx, nf), layer="linear", dtype=dtype, device=device,
                            generator=generator, parametrization=parametrization)
    if isinstance(module, nn.Linear):
        geom = Geometry.linear(module.in_features, module.out_features)
        return GloraAdapter(space, geom, layer="linear", dtype=dtype, device=device, generator=generator,
                            parametrization=parametrization)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise PlanError(f"{module}: padding_mode={module.padding_mode!r} is not supported (only 'zeros')")
        return GloraAdapter(
            space, _conv_geometry(module), layer="conv2d", conv=_conv_params(module),
            dtype=dtype, device=device, generator=generator, parametrization=parametrization,
        )
    raise PlanError(f"cannot adapt a {type(module).__name__}: only nn.Linear and nn.Conv2d")
