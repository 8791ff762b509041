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
import re
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
    # transformers' Conv1D (GPT-2): a Linear whose weight is stored transposed, (in, out).
    transposed: bool = False
    # The forward passes a bias built from other parameters (BEiT's q_bias/v_bias), not
    # the layer's own: b′ would have no place to be folded into, so C, D, E are dropped.
    computed_bias: bool = False
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
            return (self.in_features, self.out_features) if self.transposed else (self.out_features, self.in_features)
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
                            f"{', '.join(list(spaces)[:3])}. Use a structure written for this checkpoint "
                            "(`glorac search ... --structure FILE` on it).")
        missing = [n for n in spaces if n not in layers]
        if missing and not partial:
            raise PlanError(f"structure lacks {len(missing)} adapted layer(s), e.g. {missing[0]}; "
                            "give a choice for every layer (or partial=True), e.g. use the structure file "
                            "`glorac search --structure FILE` wrote for this checkpoint")
        for name, choice in layers.items():
            space = spaces[name]
            if not choice_in_space(choice, space):
                bad = "; ".join(f"{t}={k} is not allowed, {t} may be {' | '.join(map(str, space.tensor(t)))}"
                                for t, k in choice.items() if k not in space.tensor(t))
                raise PlanError(f"layer `{name}`: {bad} (outside this layer's space); pick kinds (and lora "
                                "ranks) that the space lists")
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
        and _of_type(rule, site)
        and not matches_any(sel.exclude, site.qualname)
    )


def _of_type(rule: Rule, site: Site) -> bool:
    """Whether the rule's `type` filter (if any) lets ``site`` through."""
    types = rule.selector.types
    return not types or any(site.is_type(t) for t in types)


def resolve_rules(spec: Spec, sites: list[Site], modules: Mapping[str, str] = {}
                  ) -> tuple[list[LayerPlan], list[tuple[str, str]]]:
    """(adapted layers, skipped (name, why)): the last matching rule wins per site.

    Raises PlanError naming every pattern that selects nothing: each pattern of a rule
    must select a layer (of the `type` filter's types, not removed by `except`), and each
    `except` pattern one of the layers the rule's patterns select, unless it is optional
    (``"..."?``). ``modules`` (every module's name → its type name) lets the error say when
    a pattern names modules that exist but are not sites (an HF Conv1D, a container).
    A selector without per-pattern data (IR written before it existed) is checked as a
    whole, as it was then: the rule must select some layer."""
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
    problems = [p for r in spec.rules for p in _rule_problems(r, sites, modules, hits[id(r)])]
    if problems:
        raise PlanError("\n".join(problems))
    return layers, skipped


def _rule_problems(rule: Rule, sites: list[Site], modules: Mapping[str, str], hits: int) -> list[str]:
    """One message per required pattern (or `except` pattern) of ``rule`` that selects nothing."""
    sel = rule.selector
    if not sel.pattern_info:  # IR from before per-pattern data: the rule as a whole
        return [] if hits else [_no_match_message(rule, sites, modules)]
    typed = [s for s in sites if _of_type(rule, s)]
    problems = []
    for pattern, info in zip(sel.patterns, sel.pattern_info):
        kept = [s for s in typed if matches_any((pattern,), s.qualname)
                and not matches_any(sel.exclude, s.qualname)]
        if not kept and not info.optional:
            problems.append(_no_match_message(rule, sites, modules, pattern, info.origin))
    selected = [s for s in typed if matches_any(sel.patterns, s.qualname)]
    if not selected:  # the rule selects nothing (its patterns are optional, or reported above)
        return problems
    for i, pattern in enumerate(sel.exclude):
        info = sel.exclude_info[i] if sel.exclude_info else None
        if (info is None or not info.optional) and not any(matches_any((pattern,), s.qualname)
                                                            for s in selected):
            problems.append(_except_message(rule, pattern, info and info.origin, sites, selected))
    return problems


def apply_policies(space: Space, site: Site, bias: str) -> tuple[Space, list[str]]:
    """The space a layer really gets: bias policy for bias-free layers, rank limits."""
    geom, notes, fields = site.geometry, [], {}
    limits = {"A": min(geom.out, geom.fan_in), "B": min(geom.out, geom.fan_in), "C": geom.c_len}
    for t, kinds in space.items():
        if site.computed_bias and t in "CDE" and kinds != (NONE,):
            kinds = (NONE,)
            notes.append(f"{t} dropped: the forward computes this layer's bias from other parameters")
        elif not site.has_bias and t in "CDE" and kinds != (NONE,):
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


_OPTIONAL_HINT = ("a pattern meant only for other architectures can be marked optional with "
                  "a `?` after its closing quote")


def _no_match_message(rule: Rule, sites: list[Site], modules: Mapping[str, str] = {},
                      pattern: Optional[str] = None, where: Optional[Origin] = None) -> str:
    """Why ``pattern`` of ``rule`` selects no layer (``pattern`` None: why the rule selects
    none, for IR without per-pattern data), with the closest real names."""
    sel = rule.selector
    names = [s.qualname for s in sites if _of_type(rule, s)]
    types = f" of type {'|'.join(sel.types)}" if sel.types else ""
    if pattern is None:
        close = _closest(sel.patterns[0], names)
        listing = ", ".join(close) if close else "(the model has no such layers)"
        return (f"{rule.origin}: rule `{rule.action} {', '.join(sel.patterns)}` matches no layer{types} "
                f"of this model. Closest layer names: {listing}. Check the pattern (globs match the "
                f"whole dotted name) or whether the spec is for another architecture.")
    head = f"{where or rule.origin}: pattern \"{pattern}\" (in `{_rule_text(rule)}` at {rule.origin})"
    named = [s for s in sites if matches_any((pattern,), s.qualname)]
    typed = [s for s in named if _of_type(rule, s)]
    if typed:  # all of them are removed by the rule's `except`
        return (f"{head} selects only layers that the rule's `except` removes "
                f"({_some(s.qualname for s in typed)}), so it selects nothing. Remove the pattern "
                f"or narrow the `except`.")
    if named:
        listing = _some(f"{s.qualname}: {s.type} {s.shape}" for s in named)
        return (f"{head} matches no layer{types} of this model: the layers it matches are of other "
                f"types ({listing}). Change the `type` filter, or the pattern.")
    found = _unsupported_modules(pattern, modules, {s.qualname for s in sites})
    if found:
        inside = [s.qualname for s in sites if _of_type(rule, s)
                  and any(s.qualname.startswith(m + ".") for m in found)]
        close = _closest(pattern, names)
        if inside:
            nearby = f" The layers inside them are e.g. {', '.join(inside[:3])}; \"{pattern}.**\" selects those."
        else:
            nearby = f" Closest layer names: {', '.join(close) if close else '(the model has no such layers)'}."
        return (f"{head} matches {_by_type(found)}, which glorac cannot adapt: only nn.Linear and "
                f"nn.Conv2d layers (and functional F.linear weights) are sites.{nearby}")
    close = _closest(pattern, names)
    listing = ", ".join(close) if close else "(the model has no such layers)"
    return (f"{head} matches no layer{types} of this model. Closest layer names: {listing}. Check "
            f"the pattern (globs match the whole dotted name) or whether the spec is for another "
            f"architecture; {_OPTIONAL_HINT}.")


def _except_message(rule: Rule, pattern: str, where: Optional[Origin], sites: list[Site],
                    selected: list[Site]) -> str:
    """Why an `except` pattern removes nothing from what its rule selects."""
    head = (f"{where or rule.origin}: `except` pattern \"{pattern}\" (in `{_rule_text(rule)}` at "
            f"{rule.origin}) matches none of the {len(selected)} layer(s) the rule selects, "
            f"so it removes nothing.")
    elsewhere = [s.qualname for s in sites if matches_any((pattern,), s.qualname)]
    if elsewhere:
        return (f"{head} It matches {_some(elsewhere)}, which the rule's patterns"
                f"{' and type filter' if rule.selector.types else ''} do not select.")
    close = _closest(pattern, [s.qualname for s in selected])
    return (f"{head} Closest selected layer names: {', '.join(close)}. Check the pattern, or mark it "
            f"optional with a `?` after its closing quote.")


def _rule_text(rule: Rule) -> str:
    """The rule as written, without its space: `adapt "a", "b"? type Linear except "c"`."""
    sel = rule.selector

    def quoted(patterns, info) -> str:
        return ", ".join(f'"{p}"' + ("?" if info and info[i].optional else "") for i, p in enumerate(patterns))

    text = f"{rule.action} {quoted(sel.patterns, sel.pattern_info)}"
    if sel.types:
        text += " type " + " | ".join(sel.types)
    if sel.exclude:
        text += " except " + quoted(sel.exclude, sel.exclude_info)
    return text


def _probe(pattern: str) -> str:
    """A name-like string for a glob (difflib compares it with real names)."""
    probe = re.sub(r"\[(\d+)[^\]]*\]", r"\1", pattern)  # [0-5] → 0
    probe = re.sub(r"\{([^,}]*)[^}]*\}", r"\1", probe)  # {qkv,proj} → qkv
    probe = probe.replace("**.", "").replace(".**", "").replace("**", "")
    return probe.replace("*", "0").replace("?", "0")


def _closest(pattern: str, names: list[str]) -> list[str]:
    return difflib.get_close_matches(_probe(pattern), names, n=4, cutoff=0.0) if names else []


def _some(names: Iterable[str], shown: int = 3) -> str:
    """``a, b, c and 9 more``: a few of ``names``."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _unsupported_modules(pattern: str, modules: Mapping[str, str], sites: set[str]) -> dict[str, str]:
    """The modules (name → type) that ``pattern`` matches and that are not sites."""
    return {n: t for n, t in modules.items() if n and n not in sites and matches_any((pattern,), n)}


def _by_type(found: Mapping[str, str]) -> str:
    """``12 modules of type Conv1D (e.g. h.0.attn.c_attn) and 2 of type Dropout (e.g. ...)``."""
    groups: dict[str, list[str]] = {}
    for name, type_name in found.items():
        groups.setdefault(type_name, []).append(name)
    ordered = sorted(groups.items(), key=lambda g: -len(g[1]))
    parts = []
    for i, (type_name, names) in enumerate(ordered[:3]):
        noun = ("module" if len(names) == 1 else "modules") if i == 0 else ""
        example = names[0] if len(names) == 1 else f"e.g. {names[0]}"
        parts.append(f"{len(names)} {noun + ' ' if noun else ''}of type {type_name} ({example})")
    if len(ordered) > 3:
        parts.append(f"{sum(len(n) for _, n in ordered[3:])} of other types")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def resolve_trained(spec: Spec, module_names: Iterable[str], layers: list[LayerPlan]) -> list[str]:
    """The outermost modules the spec's `train` rules name; PlanError for every pattern
    that matches no module (unless optional, ``"..."?``) and every adapted layer inside a
    trained module. A rule without per-pattern data (older IR) is checked as a whole."""
    modules = [n for n in module_names if n]
    names: list[str] = []
    problems = []
    for rule in spec.trained:
        found = [n for n in modules if matches_any(rule.patterns, n)]
        if not rule.pattern_info and not found:
            close = difflib.get_close_matches(rule.patterns[0], modules, n=4, cutoff=0.0)
            problems.append(f"{rule.origin}: `train {', '.join(rule.patterns)}` matches no module. "
                            f"Closest module names: {', '.join(close) or '(none)'}.")
        for pattern, info in zip(rule.patterns, rule.pattern_info):
            if not info.optional and not any(matches_any((pattern,), n) for n in found):
                written = ", ".join(f'"{p}"' + "?" * i.optional for p, i in zip(rule.patterns, rule.pattern_info))
                close = _closest(pattern, modules)
                problems.append(f"{info.origin or rule.origin}: pattern \"{pattern}\" (in `train {written}` at "
                                f"{rule.origin}) matches no module of this model. Closest module names: "
                                f"{', '.join(close) or '(none)'}. Check the pattern (globs match the whole "
                                f"dotted name); {_OPTIONAL_HINT}.")
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
