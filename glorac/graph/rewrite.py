"""Rewrite a model so that every planned layer runs through a GLoRA adapter.

Two front ends, one result (same plan, same :class:`~glorac.op.GloraAdapter`, same numbers):

* **fx**: in the traced GraphModules (one per mode where they differ), module call
  sites get a wrapper module and functional ``F.linear`` call nodes are replaced by a
  call to the adapter with the original weight/bias nodes as inputs.
* **modules**: for models that do not trace, a structural clone of the model (sharing
  every tensor, so the caller's model is not mutated) gets the wrappers by name.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..op import GloraAdapter, GloraConv1D, GloraConv2d, GloraLinear, build_adapter_for
from ..planning import Plan
from .trace import ModeGraphs

ADAPTER_SUFFIX = "glora_adapter"  # submodule name of a functional site's adapter


def rewrite(
    model: nn.Module,
    plan: Plan,
    graphs: Optional[ModeGraphs] = None,
    *,
    generator: Optional[torch.Generator] = None,
    adapter_dtype: torch.dtype = torch.float32,
    parametrization: str = "balanced",
) -> tuple[nn.Module, dict[str, GloraAdapter]]:
    """Returns the rewritten module and the adapters by qualified name (plan order).

    The caller's model is never modified: every module on the way to a swapped layer that
    the caller's model owns is replaced by a shallow copy first (copy on write), so only
    the rewritten model sees the wrappers; the tensors stay shared.
    """
    if plan.front_end == "fx" and graphs is None:
        raise ValueError("the fx front end needs the traced graphs")
    targets = graphs.graphs if plan.front_end == "fx" else [clone_structure(model)]
    owned = {id(m) for m in model.modules()}
    adapters: dict[str, GloraAdapter] = {}
    for lp in plan.layers:
        if lp.site.functional:
            weight = model.get_parameter(f"{lp.qualname}.weight")
            adapter = GloraAdapter(lp.space, lp.site.geometry, layer="linear", dtype=adapter_dtype,
                                   device=weight.device, generator=generator, parametrization=parametrization)
            for gm in targets:
                _reroute_functional(gm, lp.qualname, adapter)
        else:
            base = model.get_submodule(lp.qualname)
            adapter = build_adapter_for(base, lp.space, dtype=adapter_dtype, generator=generator,
                                        parametrization=parametrization)
            wrapper = (GloraConv1D(base, adapter) if lp.site.transposed else
                       GloraLinear(base, adapter) if isinstance(base, nn.Linear) else GloraConv2d(base, adapter))
            for target in targets:
                set_submodule(target, lp.qualname, wrapper, owned)
        adapters[lp.qualname] = adapter
    if graphs is not None and plan.front_end == "fx":
        graphs.recompile()
        return graphs, adapters
    return targets[0], adapters


def set_submodule(root: nn.Module, qualname: str, module: nn.Module, owned: set[int] = frozenset()) -> None:
    """``root.<qualname> = module``, copying on the way every module in ``owned`` (the
    caller's) so that none of them is modified. A path the graph never reaches (a module
    the forward does not use) is left alone."""
    *path, child = qualname.split(".")
    parent = root
    for part in path:
        nxt = parent._modules.get(part)
        if nxt is None:
            return  # not part of what this graph runs
        if id(nxt) in owned:
            nxt = _shallow_copy(nxt)
            parent._modules[part] = nxt
        parent = nxt
    if child in parent._modules or not isinstance(root, fx.GraphModule):
        parent._modules[child] = module


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object with the same attributes, tensors and children (not copied)."""
    copy = module.__class__.__new__(module.__class__)
    copy.__dict__ = dict(module.__dict__)
    copy._parameters = dict(module._parameters)
    copy._buffers = dict(module._buffers)
    copy._modules = dict(module._modules)
    return copy


def clone_structure(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the *same* tensors."""
    clone = _shallow_copy(module)
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
