"""Search spaces: check ``space`` definitions and turn each use into an IR :class:`Space`.

Space names are global across included files and must be unique. A space whose
definition has errors is reported once, at the definition; its uses are not checked
further (they would only repeat the same complaint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..errors import Diagnostic, did_you_mean
from ..ir import ALLOWED_KINDS, KIND_NAMES, TENSORS, Kind, Space
from . import ast
from .loader import Placed
from .source import error_at
from .values import read_rank

_KIND_ORDER = {name: i for i, name in enumerate(KIND_NAMES)}


@dataclass
class Spaces:
    """The named spaces of a spec: each definition with its file, and which are broken."""

    defined: dict[str, tuple[ast.SpaceDef, ast.Module]] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)  # already reported at the definition


def define_spaces(placed: list[Placed], diagnostics: list[Diagnostic]) -> Spaces:
    """Pass: check every ``space`` definition (uses come later, with the rules)."""
    spaces = Spaces()
    for p in placed:
        if isinstance(p.stmt, ast.SpaceDef):
            _define(spaces, p.module, p.stmt, diagnostics)
    return spaces


def _define(spaces: Spaces, module: ast.Module, d: ast.SpaceDef, diagnostics: list[Diagnostic]) -> None:
    name = d.name.name
    if name in spaces.defined:
        first, first_module = spaces.defined[name]
        diagnostics.append(error_at(module, d.name.loc, f"space `{name}` is defined twice",
                                    f"first defined at {first_module.file}:{first.loc.line}; rename one of them"))
        return
    spaces.defined[name] = (d, module)
    before = len(diagnostics)
    params = _check_params(module, d, diagnostics)
    check_decls(module, d.decls, params, f"space `{name}`", diagnostics)
    if len(diagnostics) > before:
        spaces.invalid.add(name)


def _check_params(module: ast.Module, d: ast.SpaceDef, diagnostics: list[Diagnostic]) -> set[str]:
    seen: set[str] = set()
    for p in d.params or ():
        if p.name.name in seen:
            diagnostics.append(error_at(module, p.name.loc, f"parameter `{p.name.name}` is listed twice"))
        seen.add(p.name.name)
        if p.default is not None:
            _, problem = read_rank(p.default.text)
            if problem:
                diagnostics.append(error_at(module, p.default.loc, *problem))
    return seen


def check_decls(module: ast.Module, decls, params: set[str], where: str, diagnostics: list[Diagnostic]) -> None:
    """The ``A: lora(r) | vector`` lines of a space; ``params`` are the names a rank may use."""
    seen: dict[str, ast.TensorDecl] = {}
    for decl in decls:
        t = decl.tensor.name
        if t not in TENSORS:
            hint = (f"tensor names are upper case: `{t.upper()}`" if t.upper() in TENSORS
                    else "support tensors are A, B, C, D and E")
            diagnostics.append(error_at(module, decl.tensor.loc, f"unknown support tensor `{t}`", hint))
            continue
        if t in seen:
            diagnostics.append(error_at(module, decl.tensor.loc, f"tensor `{t}` is declared twice in {where}",
                                        f"first declared at line {seen[t].loc.line}; list all kinds on one line"))
            continue
        seen[t] = decl
        _check_kinds(module, t, decl.kinds, params, diagnostics)


def _check_kinds(module: ast.Module, tensor: str, kinds, params: set[str], diagnostics: list[Diagnostic]) -> None:
    listed: set[str] = set()
    for k in kinds:
        name = k.name.name
        if name not in KIND_NAMES:
            diagnostics.append(error_at(module, k.name.loc, f"unknown kind `{name}`",
                                        did_you_mean(name, KIND_NAMES, "kinds")))
            continue
        if name not in ALLOWED_KINDS[tensor]:
            diagnostics.append(error_at(module, k.name.loc, f"`{name}` is not allowed for {tensor}",
                                        f"{tensor} may be: {', '.join(ALLOWED_KINDS[tensor])}"))
        if name in listed:
            diagnostics.append(error_at(module, k.name.loc, f"`{name}` is listed twice for {tensor}"))
        listed.add(name)
        if name == "lora" and not k.ranks:
            diagnostics.append(error_at(module, k.loc, "`lora` needs a rank", "write lora(8) or lora(2|4|8)"))
        elif name != "lora" and k.ranks is not None:
            diagnostics.append(error_at(module, k.loc, f"`{name}` takes no rank", f"write `{name}`"))
        _check_ranks(module, tensor, k.ranks or (), params, diagnostics)


def _check_ranks(module: ast.Module, tensor: str, ranks, params: set[str], diagnostics: list[Diagnostic]) -> None:
    written: set = set()  # parameter names and literal rank values
    for r in ranks:
        _check_rank(module, r, params, diagnostics)
        key = r.name if isinstance(r, ast.Ident) else read_rank(r.text)[0]
        if key is not None and key in written:
            shown = r.name if isinstance(r, ast.Ident) else r.text
            diagnostics.append(error_at(module, r.loc, f"rank `{shown}` is listed twice for {tensor}",
                                        "list each rank once"))
        written.add(key)


def _check_rank(module: ast.Module, r, params: set[str], diagnostics: list[Diagnostic]) -> None:
    if isinstance(r, ast.Ident):
        if r.name not in params:
            hint = (f"parameters: {', '.join(sorted(params))}" if params
                    else "declare it: space NAME(r=8) { ... }")
            diagnostics.append(error_at(module, r.loc, f"rank `{r.name}` is not a parameter of this space", hint))
    else:
        _, problem = read_rank(r.text)
        if problem:
            diagnostics.append(error_at(module, r.loc, *problem))


def instantiate(decls, bindings: dict[str, int]) -> Space:
    """The IR space of checked declarations, with rank parameters bound to numbers."""
    fields: dict[str, tuple[Kind, ...]] = {}
    for decl in decls:
        kinds: set[Kind] = set()
        for k in decl.kinds:
            if k.name.name != "lora":
                kinds.add(Kind(kind=k.name.name))
                continue
            for r in k.ranks or ():
                rank = bindings[r.name] if isinstance(r, ast.Ident) else read_rank(r.text)[0]
                kinds.add(Kind(kind="lora", rank=rank))
        fields[decl.tensor.name] = tuple(sorted(kinds, key=lambda k: (_KIND_ORDER[k.kind], k.rank or 0)))
    return Space(**fields)


def resolve_space(
    module: ast.Module,
    use: Union[ast.InlineSpace, ast.SpaceRef],
    spaces: Spaces,
    incomplete: bool,
    diagnostics: list[Diagnostic],
) -> tuple[Optional[Space], Optional[str]]:
    """The space after ``with``, and its name as shown (``paper(r=4)``; None inline).

    ``incomplete``: some statements did not parse, so an undefined name is not reported
    (its definition may be the statement that failed).
    """
    if isinstance(use, ast.InlineSpace):
        before = len(diagnostics)
        check_decls(module, use.decls, set(), "this space", diagnostics)
        return (instantiate(use.decls, {}), None) if len(diagnostics) == before else (None, None)
    name = use.name.name
    if name not in spaces.defined:
        if not incomplete:
            hint = did_you_mean(name, spaces.defined) if spaces.defined else "define it with `space NAME { ... }`"
            diagnostics.append(error_at(module, use.name.loc, f"space `{name}` is not defined", hint))
        return None, None
    definition, def_module = spaces.defined[name]
    if name in spaces.invalid:
        return None, None
    bindings = _bind(module, definition, use, diagnostics)
    if bindings is None:
        return None, None
    shown = name + ("(" + ", ".join(f"{k}={v}" for k, v in bindings.items()) + ")" if bindings else "")
    return instantiate(definition.decls, bindings), shown


def _bind(module: ast.Module, d: ast.SpaceDef, use: ast.SpaceRef, diagnostics: list[Diagnostic]
          ) -> Optional[dict[str, int]]:
    """The rank parameters' values at a use: its arguments, then the defaults."""
    params = [p.name.name for p in d.params or ()]
    before = len(diagnostics)
    bound: dict[str, Any] = {}
    args = use.args or ()
    for i, arg in enumerate(args):
        key = _parameter_of(module, d, params, args, i, diagnostics)
        if key is None:
            continue
        if key in bound:
            diagnostics.append(error_at(module, arg.value.loc, f"parameter `{key}` is given twice"))
            continue
        value, problem = read_rank(arg.value.text)
        if problem:
            diagnostics.append(error_at(module, arg.value.loc, *problem))
        bound[key] = value
    defaults = {p.name.name: p.default for p in d.params or () if p.default is not None}
    for key in params:
        if key in bound:
            continue
        if key in defaults:
            bound[key] = read_rank(defaults[key].text)[0]
        else:
            diagnostics.append(error_at(module, use.loc, f"space `{d.name.name}` needs a value for `{key}`",
                                        f"write {d.name.name}({key}=8)"))
    if len(diagnostics) > before or any(v is None for v in bound.values()):
        return None
    return {k: bound[k] for k in params}


def _parameter_of(module: ast.Module, d: ast.SpaceDef, params: list[str], args, i: int,
                  diagnostics: list[Diagnostic]) -> Optional[str]:
    """The parameter that argument ``i`` gives a value to, or None after reporting why none."""
    arg = args[i]
    if arg.name is not None:
        key = arg.name.name
        if key in params:
            return key
        hint = did_you_mean(key, params, "parameters") if params else "it takes none"
        diagnostics.append(error_at(module, arg.name.loc, f"space `{d.name.name}` has no parameter `{key}`", hint))
        return None
    if any(a.name is not None for a in args[:i]):
        diagnostics.append(error_at(module, arg.value.loc, "positional argument after a named one"))
        return None
    if i >= len(params):
        diagnostics.append(error_at(module, arg.value.loc,
                                    f"space `{d.name.name}` takes {len(params)} parameter(s), got more",
                                    f"parameters: {', '.join(params) or 'none'}"))
        return None
    return params[i]
