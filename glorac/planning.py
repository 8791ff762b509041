"""The plan: which layer gets which space, decided before anything is mutated (pure data).

A :class:`Plan` is computed from a spec and a model's *sites* (one weight matrix each,
found by :mod:`glorac.graph.sites`) by :func:`resolve`; the torch side only produces
sites and consumes plans. Downstream, the plan is the single source for what a layer
may learn (its space after the bias policy and rank limits), whether folding a structure
gives a layer a new bias (:func:`creates_bias`), and the budget and its feasibility
(:func:`budget_problem`, shared with the search). Nothing here imports torch, so a 7B
architecture is planned from its ``meta`` model and a plan is checked without weights.
"""

from __future__ import annotations

import difflib
import math
from typing import Iterable, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict

from .errors import FoldError, PlanError
from .ir import NONE, Budget, Kind, LayerChoice, Origin, Rule, Space, Spec, Structure
from .kinds import Geometry, choice_in_space, choice_param_count, max_choice, min_choice, storage_param_count
from .selectors import matches_any


class Site(BaseModel):
    """One adaptable weight matrix: a Linear or Conv2d module, or a functional ``F.linear``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    qualname: str
    type: Literal["Linear", "Conv2d"]
    in_features: int  # in_channels for Conv2d
    out_features: int  # out_channels for Conv2d
    kernel: Optional[tuple[int, int]] = None
    groups: int = 1
    has_bias: bool
    functional: bool = False
    unsupported: Optional[str] = None  # why glorac cannot adapt it, if it cannot

    @property
    def geometry(self) -> Geometry:
        if self.type == "Linear":
            return Geometry.linear(self.in_features, self.out_features)
        return Geometry.conv2d(self.in_features, self.out_features, self.kernel, self.groups)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the weight tensor this site reads."""
        if self.type == "Linear":
            return (self.out_features, self.in_features)
        return (self.out_features, self.in_features // self.groups, *self.kernel)

    def is_type(self, name: str) -> bool:
        """The spec's `type` filter: Linear, Conv2d, or Conv1x1 (1×1 kernel, one group)."""
        if name == "Conv1x1":
            return self.type == "Conv2d" and self.kernel == (1, 1) and self.groups == 1
        return self.type == name

    @property
    def shape(self) -> str:
        if self.type == "Linear":
            return f"{self.in_features}→{self.out_features}"
        g = f" g{self.groups}" if self.groups > 1 else ""
        return f"{self.in_features}→{self.out_features} {self.kernel[0]}×{self.kernel[1]}{g}"


def creates_bias(site: Site, choice: LayerChoice) -> bool:
    """Whether folding ``choice`` gives a bias-free layer a bias (`bias add` with C or E used).

    D only scales an existing bias, so it never creates one.
    """
    return not site.has_bias and (choice.C.kind != "none" or choice.E.kind != "none")


def budget_problem(min_params: int, budget: int, extra_params: int = 0) -> Optional[str]:
    """Why no structure fits ``budget`` (None when the smallest one does).

    ``min_params`` is the smallest structure's count including ``extra_params`` (the
    trained modules, when the budget counts them): the plan and the search both ask here.
    """
    if min_params <= budget:
        return None
    trained = f", including {extra_params} trained parameters" if extra_params else ""
    return (f"budget {budget} is below the smallest structure ({min_params} adapter parameters{trained}); "
            "raise the budget, or adapt fewer layers or offer cheaper kinds (none, scalar)")


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

    def with_budget(self, budget: Optional[Budget]) -> "Plan":
        """This plan under another budget (a command-line override): the search reads it here."""
        return self.model_copy(update={"budget": budget})

    def check_structure(self, structure: Union[Structure, Mapping[str, LayerChoice]], *,
                        partial: bool = False) -> dict[str, LayerChoice]:
        """The structure's layer choices, validated against every layer's space. Every
        adapted layer must be given unless ``partial``; PlanError names the layer."""
        layers = structure.layers if isinstance(structure, Structure) else dict(structure)
        spaces = {lp.qualname: lp.space for lp in self.layers}
        unknown = sorted(set(layers) - set(spaces))
        if unknown:
            raise PlanError(f"structure names layers this supernet does not adapt: {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''}; it adapts e.g. "
                            f"{', '.join(list(spaces)[:3])}")
        missing = [n for n in spaces if n not in layers]
        if missing and not partial:
            raise PlanError(f"structure lacks {len(missing)} adapted layer(s), e.g. {missing[0]}; "
                            "give a choice for every layer (or partial=True)")
        for name, choice in layers.items():
            space = spaces[name]
            if not choice_in_space(choice, space):
                bad = [f"{t}={k}" for t, k in choice.items() if k not in space.tensor(t)]
                raise PlanError(f"layer `{name}`: choice {', '.join(bad)} is outside this layer's space "
                                f"({space}); pick kinds (and lora ranks) that the space lists")
        return layers

    def resolve_structure(self, given: Optional[Structure], selected: Optional[Structure]) -> Structure:
        """The structure to deploy: ``given`` (validated), else ``selected`` (by search),
        else the one structure of one-choice spaces; FoldError when a choice is open."""
        if given is not None:
            self.check_structure(given)
            return given
        if selected is not None:
            return selected
        open_layers = [lp for lp in self.layers if lp.space.size() > 1]
        if open_layers:
            raise FoldError(
                f"the supernet still has a choice to make in {len(open_layers)} layer(s) (e.g. "
                f"{open_layers[0].qualname}: {open_layers[0].space}); run `glorac search` to pick a structure, "
                "or pass one with --structure FILE (a JSON structure).")
        return Structure(layers={lp.qualname: LayerChoice(**{t: ks[0] for t, ks in lp.space.items()})
                                 for lp in self.layers})

    def added_biases(self, structure: Structure) -> list[str]:
        """``<layer>.bias`` of every bias-free layer that folding ``structure`` gives a bias."""
        return [f"{lp.qualname}.bias" for lp in self.layers if creates_bias(lp.site, structure.layers[lp.qualname])]

    @property
    def supernet_params(self) -> int:
        """Trainable parameters of the whole supernet: adapter storage plus trained modules."""
        return sum(lp.supernet_params for lp in self.layers) + self.trained_params

    @property
    def counted_extra(self) -> int:
        """Parameters the budget counts besides the adapters (the trained modules, if it says so)."""
        return self.trained_params if self.budget and self.budget.include_trained else 0

    @property
    def min_params(self) -> int:
        return sum(lp.min_params for lp in self.layers) + self.counted_extra

    @property
    def max_params(self) -> int:
        return sum(lp.max_params for lp in self.layers) + self.counted_extra

    @property
    def log10_structures(self) -> float:
        return sum(math.log10(lp.space.size()) for lp in self.layers)

    @property
    def budget_problem(self) -> Optional[str]:
        """Why no structure fits the budget; None when one does or there is no budget."""
        if self.budget is None:
            return None
        return budget_problem(self.min_params, self.budget.params, self.counted_extra)

    @property
    def budget_feasible(self) -> Optional[bool]:
        return None if self.budget is None else self.budget_problem is None


# ---------------------------------------------------------------- rules → layers


def rule_selects(rule: Rule, site: Site) -> bool:
    sel = rule.selector
    return (
        matches_any(sel.patterns, site.qualname)
        and (not sel.types or any(site.is_type(t) for t in sel.types))
        and not matches_any(sel.exclude, site.qualname)
    )


def resolve_rules(spec: Spec, sites: list[Site]) -> tuple[list[LayerPlan], list[tuple[str, str]]]:
    """(adapted layers, skipped (name, why)): the last matching rule wins per site.

    Raises PlanError naming every rule that matches no site."""
    hits = {id(rule): 0 for rule in spec.rules}
    layers, skipped = [], []
    for site in sites:
        winner = None
        for rule in spec.rules:
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
    problems = [_no_match_message(r, sites) for r in spec.rules if hits[id(r)] == 0]
    if problems:
        raise PlanError("\n".join(problems))
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


def resolve_trained(spec: Spec, module_names: Iterable[str], layers: list[LayerPlan]) -> list[str]:
    """The outermost modules the spec's `train` rules name; PlanError for every rule that
    matches nothing and every adapted layer inside a trained module."""
    modules = [n for n in module_names if n]
    names: list[str] = []
    problems = []
    for rule in spec.trained:
        found = [n for n in modules if matches_any(rule.patterns, n)]
        if not found:
            close = difflib.get_close_matches(rule.patterns[0], modules, n=4, cutoff=0.0)
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
    return names


def under(key: str, modules: Iterable[str]) -> bool:
    """Whether state-dict ``key`` belongs to one of ``modules`` (the trained ones)."""
    return any(key.startswith(m + ".") for m in modules)
