"""Plan a model: trace it, find its sites, and resolve the spec's rules against them.

This is the torch side of planning; the rules, policies and the :class:`~glorac.planning.Plan`
itself are torch-free (:mod:`glorac.planning`). It works on ``meta`` models (shapes
only), so a 7B architecture is planned without allocating its weights.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

from ..errors import PlanError
from ..ir import Spec
from ..planning import Plan, resolve_rules, resolve_trained, under
from ..outputs import default_probe, output_tensor
from .sites import computed_bias_layers, functional_sites, module_sites
from .trace import ModeGraphs, TraceFailure, preserved, trace


def plan(spec: Spec, model: nn.Module, *, front_end: str = "auto", extra_trained: tuple[str, ...] = ()) -> Plan:
    """The plan for ``model`` under ``spec``; raises PlanError when a rule fits nothing."""
    return plan_with_graph(spec, model, front_end=front_end, extra_trained=extra_trained)[0]


def plan_with_graph(
    spec: Spec, model: nn.Module, *, front_end: str = "auto", extra_trained: tuple[str, ...] = ()
) -> tuple[Plan, Optional[ModeGraphs]]:
    """The plan and the traced graphs it was made from (None on the module front end).

    ``extra_trained``: modules trained fully besides the spec's `train` rules (the new
    task head glorac created); layers inside them are not adapted."""
    gm, failure = (None, None)
    if front_end in ("auto", "fx"):
        gm, failure = trace(model)
        if gm is not None:
            failure = reproduces(gm, model)
            gm = None if failure is not None else gm
        if gm is None and front_end == "fx":
            raise PlanError(f"cannot trace {type(model).__name__} with torch.fx {failure}; "
                            "use the module front end (front_end='modules')")
    sites = [s.model_copy(update={"unsupported": "trained fully (the new task head)"})
             if under(s.qualname + ".x", extra_trained) else s for s in module_sites(model)]
    if gm is not None:
        computed = computed_bias_layers(gm.eval_graph, sites)
        sites = [s.model_copy(update={"computed_bias": True}) if s.qualname in computed else s for s in sites]
        sites += functional_sites(gm.eval_graph, model)
    layers, skipped = resolve_rules(spec, sites, {n: type(m).__name__ for n, m in model.named_modules() if n})
    trained = resolve_trained(spec, (n for n, _ in model.named_modules()), layers)
    trained += [t for t in extra_trained if t not in trained and not under(t, trained)]
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


def reproduces(graphs: ModeGraphs, model: nn.Module) -> Optional[TraceFailure]:
    """None when the eval-mode graph runs like the model on a probe input (or no probe can
    be run: a ``meta`` model, an unknown input, a model that keeps tensors outside its
    state dict); else why not.

    fx traces what one call did; a forward that depends on something the trace fixed (an
    optional argument, a shape, a flag) fails or computes another shape on a real input
    (Hiera traced with a mask, a hybrid ViT with 37 tokens instead of 50). Both run on
    the ``meta`` device, with the model's tensors swapped for meta ones of the same
    shapes (``torch.func.functional_call``): shapes, dtypes and errors without computing
    a value, at a fraction of a forward's cost. Nothing of the model is changed.
    """
    param = next(model.parameters(), None)
    probe = None if param is None or param.is_meta else default_probe(model, batch=1)
    if probe is None:
        return None
    state = {k: v.to("meta") for k, v in model.state_dict(keep_vars=True).items()}
    inputs = tuple(t.to("meta") for t in probe)
    with preserved(model), torch.no_grad():
        model.eval()
        try:
            want = output_tensor(functional_call(model, state, inputs, tie_weights=True, strict=False))
        except Exception:  # the model does not run on the guessed probe (or not on meta): nothing to compare
            return None
        try:
            got = output_tensor(functional_call(graphs.eval_graph, state, inputs, tie_weights=True, strict=False))
        except Exception as exc:
            return TraceFailure("", f"the traced graph fails on a probe input that the model "
                                    f"takes ({type(exc).__name__}: {exc})"[:300])
    if (got.shape, got.dtype) != (want.shape, want.dtype):
        return TraceFailure("", f"the traced graph computes a {tuple(got.shape)} {got.dtype} output where "
                                f"the model computes {tuple(want.shape)} {want.dtype} on a probe input")
    return None


def _parameter_count(model: nn.Module, modules: list[str]) -> int:
    """Parameters of ``modules``, each tensor counted once (tied weights are one tensor)."""
    seen, total = set(), 0
    for name in modules:
        for p in model.get_submodule(name).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
