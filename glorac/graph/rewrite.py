"""Rewrite a model so that every planned layer runs through a GLoRA adapter.

Two front ends, one result (same plan, same :class:`~glorac.op.GloraAdapter`, same numbers):

* **fx**: in the traced GraphModule, module call sites get a wrapper module and
  functional ``F.linear`` call nodes are replaced by a call to the adapter with the
  original weight/bias nodes as inputs.
* **modules**: for models that do not trace, a structural clone of the model (sharing
  every tensor, so the caller's model is not mutated) gets the wrappers by name.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..op import GloraAdapter, GloraConv2d, GloraLinear, build_adapter_for
from ..planning import Plan

ADAPTER_SUFFIX = "glora_adapter"  # submodule name of a functional site's adapter


def rewrite(
    model: nn.Module,
    plan: Plan,
    gm: Optional[fx.GraphModule] = None,
    *,
    generator: Optional[torch.Generator] = None,
    adapter_dtype: torch.dtype = torch.float32,
    parametrization: str = "balanced",
) -> tuple[nn.Module, dict[str, GloraAdapter]]:
    """Returns the rewritten module and the adapters by qualified name (plan order)."""
    target = gm if plan.front_end == "fx" else clone_structure(model)
    if plan.front_end == "fx" and gm is None:
        raise ValueError("the fx front end needs the traced GraphModule")
    adapters: dict[str, GloraAdapter] = {}
    for lp in plan.layers:
        if lp.site.functional:
            weight = model.get_parameter(f"{lp.qualname}.weight")
            adapter = GloraAdapter(lp.space, lp.site.geometry, layer="linear", dtype=adapter_dtype,
                                   device=weight.device, generator=generator, parametrization=parametrization)
            _reroute_functional(target, lp.qualname, adapter)
        else:
            base = model.get_submodule(lp.qualname)
            adapter = build_adapter_for(base, lp.space, dtype=adapter_dtype, generator=generator,
                                        parametrization=parametrization)
            wrapper = GloraLinear(base, adapter) if isinstance(base, nn.Linear) else GloraConv2d(base, adapter)
            set_submodule(target, lp.qualname, wrapper)
        adapters[lp.qualname] = adapter
    if isinstance(target, fx.GraphModule):
        target.recompile()
    return target, adapters


def set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent_name, _, child = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def clone_structure(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the *same* tensors."""
    clone = module.__class__.__new__(module.__class__)
    clone.__dict__ = dict(module.__dict__)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {k: (None if m is None else clone_structure(m)) for k, m in module._modules.items()}
    return clone


def _reroute_functional(gm: fx.GraphModule, owner: str, adapter: GloraAdapter) -> None:
    """Replace every ``F.linear(x, owner.weight, owner.bias)`` by ``adapter(x, w, b)``."""
    target = f"{owner}.{ADAPTER_SUFFIX}"
    gm.add_submodule(target, adapter)
    weight_name = f"{owner}.weight"
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not F.linear:
            continue
        args = list(node.args) + [None] * (3 - len(node.args))
        x, w, b = args[0], node.kwargs.get("weight", args[1]), node.kwargs.get("bias", args[2])
        if not (isinstance(w, fx.Node) and w.op == "get_attr" and w.target == weight_name):
            continue
        with gm.graph.inserting_after(node):
            call = gm.graph.call_module(target, args=(x, w, b))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
