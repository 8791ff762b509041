"""Find the layers GLoRA can adapt: every Linear and Conv2d, modules and functional calls.

A *site* (:class:`glorac.planning.Site`) is one weight matrix with its geometry. Module sites come from
``named_modules()``; functional sites (``F.linear(x, self.weight, self.bias)`` inside a
custom module, which module-swapping tools never see) come from the traced graph.
"""

from __future__ import annotations

from typing import Optional

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..op import is_transposed_linear, unsupported_subclass
from ..planning import Site

_LINEAR_FUNCTIONS = {F.linear}


def module_sites(model: nn.Module) -> list[Site]:
    """Every nn.Linear and nn.Conv2d (and transformers' Conv1D, a Linear stored transposed),
    with why it cannot be adapted where it cannot."""
    tied = tied_names(model)
    sites = []
    for name, m in model.named_modules():
        if is_transposed_linear(m):
            nx, nf = m.weight.shape
            sites.append(Site(qualname=name, type="Linear", in_features=nx, out_features=nf, transposed=True,
                              has_bias=m.bias is not None, unsupported=_tie_reason(f"{name}.weight", tied)))
            continue
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        reason = unsupported_subclass(m) or _tie_reason(f"{name}.weight", tied)
        if isinstance(m, nn.Linear):
            sites.append(Site(qualname=name, type="Linear", in_features=m.in_features,
                              out_features=m.out_features, has_bias=m.bias is not None, unsupported=reason))
        else:
            if reason is None and m.padding_mode != "zeros":
                reason = f"padding_mode={m.padding_mode!r}"
            sites.append(Site(qualname=name, type="Conv2d", in_features=m.in_channels,
                              out_features=m.out_channels, kernel=tuple(m.kernel_size),
                              groups=m.groups, has_bias=m.bias is not None, unsupported=reason))
    return sites


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Parameter name → the other names of the same tensor (tied weights), for tied ones only."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {n: [o for o in group if o != n] for group in names.values() if len(group) > 1 for n in group}


def _tie_reason(weight: str, tied: dict[str, list[str]]) -> Optional[str]:
    if weight not in tied:
        return None
    return (f"its weight is tied to {', '.join(tied[weight])}: folding it would change that tensor too "
            "(exclude the layer, or untie the weights)")


def computed_bias_layers(gm: fx.GraphModule, sites: list[Site]) -> set[str]:
    """Module sites whose weight the graph reads into ``F.linear`` with a bias that is not
    the layer's own (BEiT's ``F.linear(x, self.qkv.weight, cat(q_bias, 0, v_bias))``)."""
    modules = {s.qualname for s in sites if not s.functional}
    out = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _LINEAR_FUNCTIONS:
            continue
        weight = _get_attr_target(node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
        owner = weight.rpartition(".")[0] if weight else None
        if owner not in modules:
            continue
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if bias is not None and _get_attr_target(bias) != f"{owner}.bias":
            out.add(owner)
    return out


def functional_sites(gm: fx.GraphModule, model: nn.Module) -> list[Site]:
    """``F.linear(x, <param>, <param or None>)`` calls whose weight is a plain parameter."""
    params = dict(model.named_parameters())
    owned_by_modules = {
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    sites, seen = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _LINEAR_FUNCTIONS:
            continue
        weight = _get_attr_target(node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
        if weight is None or weight not in params or weight in owned_by_modules:
            continue
        owner = weight.rpartition(".")[0]
        if not owner or owner in seen or params[weight].dim() != 2:
            continue  # one adapter per weight; a weight used twice keeps its first call site
        seen.add(owner)
        bias_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        out_f, in_f = params[weight].shape
        sites.append(Site(qualname=owner, type="Linear", in_features=in_f, out_features=out_f,
                          has_bias=bias_node is not None, functional=True))
    return sites


def _get_attr_target(node) -> Optional[str]:
    return node.target if isinstance(node, fx.Node) and node.op == "get_attr" else None
