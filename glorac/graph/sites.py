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

from ..planning import Site

_LINEAR_FUNCTIONS = {F.linear}


def module_sites(model: nn.Module) -> list[Site]:
    sites = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            sites.append(Site(qualname=name, type="Linear", in_features=m.in_features,
                              out_features=m.out_features, has_bias=m.bias is not None))
        elif isinstance(m, nn.Conv2d):
            reason = None if m.padding_mode == "zeros" else f"padding_mode={m.padding_mode!r}"
            sites.append(Site(qualname=name, type="Conv2d", in_features=m.in_channels,
                              out_features=m.out_channels, kernel=tuple(m.kernel_size),
                              groups=m.groups, has_bias=m.bias is not None, unsupported=reason))
    return sites


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
