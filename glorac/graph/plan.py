"""Resolve a spec's rules against a model's sites into a :class:`Plan` (pure data).

The plan is computed before anything is mutated: per adapted layer, the space after the
bias policy and rank limits, and the rule that decided it. It works on ``meta`` models
(shapes only), so a 7B architecture is planned without allocating its weights.
"""

from __future__ import annotations

import difflib
import math
from typing import Literal, Optional

import torch.fx as fx
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..errors import PlanError
from ..ir import NONE, Budget, Kind, Origin, Rule, Space, Spec
from ..kinds import choice_param_count, max_choice, min_choice, storage_param_count
from ..selectors import matches_any
from .sites import Site, functional_sites, module_sites
from .trace import trace


class LayerPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    site: Site
    space: Space
    space_name: Optional[str] = None
    rule: Origin
    notes: tuple[str, ...] = ()

    @property
    def qualname(self) -> str:
        return self.site.qualname

    @property
    def supernet_params(self) -> int:
        return storage_param_count(self.space, self.site.geometry)

    @property
    def min_params(self) -> int:
        return choice_param_count(min_choice(self.space, self.site.geometry), self.site.geometry)

    @property
    def max_params(self) -> int:
        return choice_param_count(max_choice(self.space, self.site.geometry), self.site.geometry)


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    front_end: Literal["fx", "modules"]
    trace_failure: Optional[str] = None
    layers: tuple[LayerPlan, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (qualname, why) for matched layers left alone
    trained: tuple[str, ...] = ()
    trained_params: int = 0
    bias: Literal["preserve", "add"] = "preserve"
    budget: Optional[Budget] = None

    def layer(self, qualname: str) -> LayerPlan:
        for lp in self.layers:
            if lp.qualname == qualname:
                return lp
        raise KeyError(qualname)

    @property
    def supernet_params(self) -> int:
        """Trainable parameters of the whole supernet: adapter storage plus trained modules."""
        return sum(lp.supernet_params for lp in self.layers) + self.trained_params

    def _counted_extra(self) -> int:
        return self.trained_params if self.budget and self.budget.include_trained else 0

    @property
    def min_params(self) -> int:
        return sum(lp.min_params for lp in self.layers) + self._counted_extra()

    @property
    def max_params(self) -> int:
        return sum(lp.max_params for lp in self.layers) + self._counted_extra()

    @property
    def log10_structures(self) -> float:
        return sum(math.log10(lp.space.size()) for lp in self.layers)

    @property
    def budget_feasible(self) -> Optional[bool]:
        return None if self.budget is None else self.min_params <= self.budget.params


def plan(spec: Spec, model: nn.Module, *, front_end: str = "auto") -> Plan:
    """The plan for ``model`` under ``spec``; raises PlanError when a rule fits nothing."""
    return plan_with_graph(spec, model, front_end=front_end)[0]


def plan_with_graph(
    spec: Spec, model: nn.Module, *, front_end: str = "auto"
) -> tuple[Plan, Optional[fx.GraphModule]]:
    gm, failure = (None, None)
    if front_end in ("auto", "fx"):
        gm, failure = trace(model)
        if gm is None and front_end == "fx":
            raise PlanError(f"cannot trace {type(model).__name__} with torch.fx {failure}; "
                            "use the module front end (front_end='modules')")
    sites = module_sites(model) + (functional_sites(gm, model) if gm is not None else [])
    layers, skipped = _resolve_rules(spec, sites)
    trained, trained_params = _resolve_trained(spec, model, layers)
    result = Plan(
        front_end="fx" if gm is not None else "modules",
        trace_failure=None if failure is None else str(failure),
        layers=tuple(layers),
        skipped=tuple(skipped),
        trained=tuple(trained),
        trained_params=trained_params,
        bias=spec.bias,
        budget=spec.budget,
    )
    return result, gm


# ---------------------------------------------------------------- rules → layers


def rule_selects(rule: Rule, site: Site) -> bool:
    sel = rule.selector
    return (
        matches_any(sel.patterns, site.qualname)
        and (not sel.types or any(site.is_type(t) for t in sel.types))
        and not matches_any(sel.exclude, site.qualname)
    )


def _resolve_rules(spec: Spec, sites: list[Site]) -> tuple[list[LayerPlan], list[tuple[str, str]]]:
    hits = {id(rule): 0 for rule in spec.rules}
    layers, skipped = [], []
    for site in sites:
        winner = None
        for rule in spec.rules:  # the last matching rule wins
            if rule_selects(rule, site):
                hits[id(rule)] += 1
                winner = rule
        if winner is None or winner.action == "exclude":
            continue
        if site.unsupported:
            skipped.append((site.qualname, f"not supported: {site.unsupported}"))
            continue
        space, notes = apply_policies(winner.space, site, spec.bias)
        if all(kinds == (NONE,) for _, kinds in space.items()):
            skipped.append((site.qualname, "; ".join(notes) or "nothing left to adapt"))
            continue
        layers.append(LayerPlan(site=site, space=space, space_name=winner.space_name,
                                rule=winner.origin, notes=tuple(notes)))
    unmatched = [r for r in spec.rules if hits[id(r)] == 0]
    if unmatched:
        raise PlanError("\n".join(_no_match_message(r, sites) for r in unmatched))
    return layers, skipped


def apply_policies(space: Space, site: Site, bias: str) -> tuple[Space, list[str]]:
    """The space a layer really gets: bias policy for bias-free layers, rank limits."""
    geom, notes, fields = site.geometry, [], {}
    limits = {"A": min(geom.out, geom.fan_in), "B": min(geom.out, geom.fan_in), "C": geom.c_len}
    for t, kinds in space.items():
        if not site.has_bias and t in "CDE" and kinds != (NONE,):
            if t == "D" or bias == "preserve":
                kinds = (NONE,)
                why = "nothing to scale" if t == "D" else "bias preserve"
                notes.append(f"{t} dropped: no bias ({why})")
        if t in limits:
            kinds, lowered = _limit_ranks(kinds, limits[t])
            if lowered:
                notes.append(f"{t} ranks {lowered} lowered to {limits[t]}")
        fields[t] = kinds
    return Space(**fields), notes


def _limit_ranks(kinds: tuple[Kind, ...], limit: int) -> tuple[tuple[Kind, ...], list[int]]:
    lowered = sorted({k.rank for k in kinds if k.kind == "lora" and k.rank > limit})
    if not lowered:
        return kinds, []
    out: list[Kind] = []
    for k in kinds:
        k = Kind(kind="lora", rank=limit) if k.kind == "lora" and k.rank > limit else k
        if k not in out:
            out.append(k)
    return tuple(out), lowered


def _no_match_message(rule: Rule, sites: list[Site]) -> str:
    sel = rule.selector
    names = [s.qualname for s in sites if not sel.types or any(s.is_type(t) for t in sel.types)]
    probe = sel.patterns[0].replace("**", "").replace("*", "0")
    close = difflib.get_close_matches(probe, names, n=4, cutoff=0.0) if names else []
    types = f" of type {'|'.join(sel.types)}" if sel.types else ""
    listing = ", ".join(close) if close else "(the model has no such layers)"
    return (f"{rule.origin}: rule `{rule.action} {', '.join(sel.patterns)}` matches no layer{types} "
            f"of this model. Closest layer names: {listing}. Check the pattern (globs match the "
            f"whole dotted name) or whether the spec is for another architecture.")


def _resolve_trained(spec: Spec, model: nn.Module, layers: list[LayerPlan]) -> tuple[list[str], int]:
    modules = [(n, m) for n, m in model.named_modules() if n]
    names: list[str] = []
    problems = []
    for rule in spec.trained:
        found = [n for n, _ in modules if matches_any(rule.patterns, n)]
        if not found:
            close = difflib.get_close_matches(rule.patterns[0], [n for n, _ in modules], n=4, cutoff=0.0)
            problems.append(f"{rule.origin}: `train {', '.join(rule.patterns)}` matches no module. "
                            f"Closest module names: {', '.join(close) or '(none)'}.")
        names.extend(n for n in found if n not in names)
    # Keep only the outermost trained modules (training `head` covers `head.fc`).
    names = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    for lp in layers:
        owner = next((n for n in names if lp.qualname == n or lp.qualname.startswith(n + ".")), None)
        if owner is not None:
            problems.append(f"{lp.rule}: layer `{lp.qualname}` is adapted but also inside the trained "
                            f"module `{owner}`; exclude it from the adapt rule or train something else.")
    if problems:
        raise PlanError("\n".join(problems))
    lookup = dict(modules)
    seen, total = set(), 0
    for n in names:
        for p in lookup[n].parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return names, total
