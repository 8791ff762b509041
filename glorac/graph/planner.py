"""Plan a model: trace it, find its sites, and resolve the spec's rules against them.

This is the torch side of planning; the rules, policies and the :class:`~glorac.planning.Plan`
itself are torch-free (:mod:`glorac.planning`). It works on ``meta`` models (shapes
only), so a 7B architecture is planned without allocating its weights.
"""

from __future__ import annotations

from typing import Optional

import torch.fx as fx
from torch import nn

from ..errors import PlanError
from ..ir import Spec
from ..planning import Plan, resolve_rules, resolve_trained
from .sites import functional_sites, module_sites
from .trace import trace


def plan(spec: Spec, model: nn.Module, *, front_end: str = "auto") -> Plan:
    """The plan for ``model`` under ``spec``; raises PlanError when a rule fits nothing."""
    return plan_with_graph(spec, model, front_end=front_end)[0]


def plan_with_graph(
    spec: Spec, model: nn.Module, *, front_end: str = "auto"
) -> tuple[Plan, Optional[fx.GraphModule]]:
    """The plan and the traced graph it was made from (None on the module front end)."""
    gm, failure = (None, None)
    if front_end in ("auto", "fx"):
        gm, failure = trace(model)
        if gm is None and front_end == "fx":
            raise PlanError(f"cannot trace {type(model).__name__} with torch.fx {failure}; "
                            "use the module front end (front_end='modules')")
    sites = module_sites(model) + (functional_sites(gm, model) if gm is not None else [])
    layers, skipped = resolve_rules(spec, sites)
    trained = resolve_trained(spec, (n for n, _ in model.named_modules()), layers)
    result = Plan(
        front_end="fx" if gm is not None else "modules",
        trace_failure=None if failure is None else str(failure),
        layers=tuple(layers),
        skipped=tuple(skipped),
        trained=tuple(trained),
        trained_params=_parameter_count(model, trained),
        bias=spec.bias,
        budget=spec.budget,
    )
    return result, gm


def _parameter_count(model: nn.Module, modules: list[str]) -> int:
    """Parameters of ``modules``, each tensor counted once (tied weights are one tensor)."""
    seen, total = set(), 0
    for name in modules:
        for p in model.get_submodule(name).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
