"""Check parsed files and build the IR :class:`~glorac.ir.Spec`, collecting every error.

Semantics (the language reference in docs/language.md says the same):

* ``include "f.glora"`` reads a file relative to the including file; its statements sit
  where the include line is. A file reached twice is read once; a cycle is an error.
* Space names are global across included files and must be unique.
* Rules keep source order; for each layer the last matching rule wins.
* Singletons (``model``, ``budget``, ``bias``, each search/training key) may be set once
  per file; the including file's value wins over an included file's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import Diagnostic, SpecError, did_you_mean
from ..ir import (
    ALLOWED_KINDS,
    KIND_NAMES,
    LAYER_TYPES,
    TENSORS,
    Budget,
    Kind,
    Origin,
    Rule,
    SearchSettings,
    Selector,
    Space,
    Spec,
    TrainRule,
    TrainSettings,
)
from ..selectors import GlobError, compile_glob
from . import ast
from .parser import (
    KEYWORDS,
    decode_spec_bytes,
    parse_text,
    read_spec_file,
    shorten_quoted,
)
from .values import SETTINGS, read_param_count, read_rank

_KIND_ORDER = {name: i for i, name in enumerate(KIND_NAMES)}


@dataclass
class _Placed:
    """A statement with the file it came from and its include depth (0 = entry file)."""

    module: ast.Module
    stmt: ast.Statement
    depth: int


class Analyzer:
    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []
        self.files: list[str] = []
        self._loaded: set[str] = set()
        self._stack: list[str] = []
        self.spaces: dict[str, tuple[ast.SpaceDef, ast.Module]] = {}
        self.invalid_spaces: set[str] = set()
        self.had_syntax_errors = False

    # ------------------------------------------------------------ diagnostics

    def error(self, module: ast.Module, loc: ast.Loc, message: str, hint: str | None = None):
        end = loc.end_col if loc.end_line == loc.line and loc.end_col > loc.col else loc.col + 1
        src = module.lines[loc.line - 1] if 0 < loc.line <= len(module.lines) else None
        message = shorten_quoted(message)
        self.diagnostics.append(Diagnostic(module.file, loc.line, loc.col, message, end, hint, src))

    # ------------------------------------------------------------ loading and includes

    def load_entry(self, text: str | None, file: str, real: str | None) -> list[_Placed]:
        if text is None:
            text, diags = read_spec_file(file)
            self.diagnostics.extend(diags)
            if text is None:
                return []
        return self._load(text, file, real, depth=0)

    def _load(self, text: str, file: str, real: str | None, depth: int) -> list[_Placed]:
        module, diags = parse_text(text, file)
        self.diagnostics.extend(diags)
        self.files.append(file)
        key = real or f"<text:{id(module)}>"
        self._loaded.add(key)
        self._stack.append(key)
        placed: list[_Placed] = []
        for stmt in module.statements:
            if isinstance(stmt, ast.IncludeStmt):
                placed.extend(self._include(module, stmt, file, depth))
            else:
                placed.append(_Placed(module, stmt, depth))
        self._stack.pop()
        return placed

    def _include(self, module, stmt: ast.IncludeStmt, file: str, depth: int) -> list[_Placed]:
        base = Path(file).parent if not file.startswith("<") else Path.cwd()
        target = base / stmt.path.value
        shown = os.path.normpath(str(target))
        real = os.path.realpath(target)
        if real in self._stack:
            chain = " → ".join(
                [os.path.basename(p) for p in self._stack[self._stack.index(real) :]]
                + [os.path.basename(real)]
            )
            self.error(module, stmt.path.loc, f"include cycle: {chain}", "remove one of the includes")
            return []
        if real in self._loaded:
            return []  # diamond includes: the file's statements are already in place
        text, diags = read_spec_file(target)
        if text is None:
            why = diags[0].message if diags else "cannot read"
            self.error(module, stmt.path.loc, f"cannot include `{stmt.path.value}`: {why}",
                       f"looked for {shown} (includes are relative to the including file)")
            return []
        return self._load(text, shown, real, depth + 1)

    # ------------------------------------------------------------ the whole spec

    def build(self, placed: list[_Placed]) -> Optional[Spec]:
        for p in placed:
            if isinstance(p.stmt, ast.SpaceDef):
                self._define_space(p.module, p.stmt)
        rules, trained = [], []
        for p in placed:
            if isinstance(p.stmt, (ast.AdaptStmt, ast.ExcludeStmt)):
                rule = self._rule(p.module, p.stmt)
                if rule is not None:
                    rules.append(rule)
            elif isinstance(p.stmt, ast.TrainStmt):
                patterns = self._patterns(p.module, p.stmt.patterns)
                trained.append(TrainRule(patterns=patterns, origin=self._origin(p.module, p.stmt.loc)))
        singles = self._singletons(placed)
        if self.diagnostics:
            return None
        return Spec(rules=tuple(rules), trained=tuple(trained), files=tuple(self.files), **singles)

    def _origin(self, module: ast.Module, loc: ast.Loc) -> Origin:
        return Origin(file=module.file, line=loc.line, column=loc.col)

    # ------------------------------------------------------------ spaces

    def _define_space(self, module: ast.Module, d: ast.SpaceDef) -> None:
        name = d.name.name
        if name in self.spaces:
            first, first_mod = self.spaces[name]
            self.error(module, d.name.loc, f"space `{name}` is defined twice",
                       f"first defined at {first_mod.file}:{first.loc.line}; rename one of them")
            return
        self.spaces[name] = (d, module)
        n_before = len(self.diagnostics)
        self._define_space_body(module, d)
        if len(self.diagnostics) > n_before:
            self.invalid_spaces.add(name)  # reported here; its uses are not checked further

    def _define_space_body(self, module: ast.Module, d: ast.SpaceDef) -> None:
        name = d.name.name
        seen: set[str] = set()
        for p in d.params or ():
            if p.name.name in seen:
                self.error(module, p.name.loc, f"parameter `{p.name.name}` is listed twice")
            seen.add(p.name.name)
            if p.default is not None:
                _, problem = read_rank(p.default.text)
                if problem:
                    self.error(module, p.default.loc, *problem)
        self._check_decls(module, d.decls, params=seen, where=f"space `{name}`")

    def _check_decls(self, module, decls, params: set[str], where: str) -> None:
        seen: dict[str, ast.TensorDecl] = {}
        for decl in decls:
            t = decl.tensor.name
            if t not in TENSORS:
                hint = (f"tensor names are upper case: `{t.upper()}`" if t.upper() in TENSORS
                        else "support tensors are A, B, C, D and E")
                self.error(module, decl.tensor.loc, f"unknown support tensor `{t}`", hint)
                continue
            if t in seen:
                self.error(module, decl.tensor.loc, f"tensor `{t}` is declared twice in {where}",
                           f"first declared at line {seen[t].loc.line}; list all kinds on one line")
                continue
            seen[t] = decl
            self._check_kinds(module, t, decl.kinds, params)

    def _check_kinds(self, module, tensor: str, kinds, params: set[str]) -> None:
        listed: set[str] = set()
        for k in kinds:
            name = k.name.name
            if name not in KIND_NAMES:
                self.error(module, k.name.loc, f"unknown kind `{name}`",
                           did_you_mean(name, KIND_NAMES, "kinds"))
                continue
            if name not in ALLOWED_KINDS[tensor]:
                self.error(module, k.name.loc, f"`{name}` is not allowed for {tensor}",
                           f"{tensor} may be: {', '.join(ALLOWED_KINDS[tensor])}")
            if name in listed:
                self.error(module, k.name.loc, f"`{name}` is listed twice for {tensor}")
            listed.add(name)
            if name == "lora" and not k.ranks:
                self.error(module, k.loc, "`lora` needs a rank", "write lora(8) or lora(2|4|8)")
            elif name != "lora" and k.ranks is not None:
                self.error(module, k.loc, f"`{name}` takes no rank", f"write `{name}`")
            written: set = set()  # parameter names and literal rank values
            for r in k.ranks or ():
                self._check_rank(module, r, params)
                key = r.name if isinstance(r, ast.Ident) else read_rank(r.text)[0]
                if key is not None and key in written:
                    shown = r.name if isinstance(r, ast.Ident) else r.text
                    self.error(module, r.loc, f"rank `{shown}` is listed twice for {tensor}",
                               "list each rank once")
                written.add(key)

    def _check_rank(self, module, r, params: set[str]) -> None:
        if isinstance(r, ast.Ident):
            if r.name not in params:
                hint = (f"parameters: {', '.join(sorted(params))}" if params
                        else "declare it: space NAME(r=8) { ... }")
                self.error(module, r.loc, f"rank `{r.name}` is not a parameter of this space", hint)
        else:
            _, problem = read_rank(r.text)
            if problem:
                self.error(module, r.loc, *problem)

    def _instantiate(self, module, decls, bindings: dict[str, int]) -> Space:
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
            fields[decl.tensor.name] = tuple(
                sorted(kinds, key=lambda k: (_KIND_ORDER[k.kind], k.rank or 0))
            )
        return Space(**fields)

    # ------------------------------------------------------------ rules

    def _rule(self, module, stmt: Union[ast.AdaptStmt, ast.ExcludeStmt]) -> Optional[Rule]:
        n_before = len(self.diagnostics)
        selector = Selector(
            patterns=self._patterns(module, stmt.patterns),
            types=tuple(self._types(module, stmt.types)),
            exclude=self._patterns(module, stmt.excepts),
        )
        space, space_name = None, None
        if isinstance(stmt, ast.AdaptStmt):
            space, space_name = self._space_use(module, stmt.space)
            if space is not None and all(k == (Kind(kind="none"),) for _, k in space.items()):
                self.error(module, stmt.space.loc, "this space allows only `none` for every tensor",
                           'use `exclude "..."` to leave layers untouched')
        if len(self.diagnostics) > n_before:
            return None
        action = "adapt" if isinstance(stmt, ast.AdaptStmt) else "exclude"
        return Rule(action=action, selector=selector, space=space, space_name=space_name,
                    origin=self._origin(module, stmt.loc))

    def _patterns(self, module, strings) -> tuple[str, ...]:
        for s in strings:
            try:
                compile_glob(s.value)
            except GlobError as exc:
                col = s.loc.col + 1 + exc.offset  # +1 for the opening quote
                loc = ast.Loc(s.loc.line, col, s.loc.line, col + 1)
                self.error(module, loc, f"invalid pattern: {exc}", exc.hint)
        return tuple(s.value for s in strings)

    def _types(self, module, idents):
        for t in idents:
            if t.name in LAYER_TYPES:
                yield t.name
            else:
                self.error(module, t.loc, f"unknown layer type `{t.name}`",
                           did_you_mean(t.name, LAYER_TYPES, "layer types"))

    def _space_use(self, module, use) -> tuple[Optional[Space], Optional[str]]:
        if isinstance(use, ast.InlineSpace):
            n = len(self.diagnostics)
            self._check_decls(module, use.decls, params=set(), where="this space")
            if len(self.diagnostics) > n:
                return None, None
            return self._instantiate(module, use.decls, {}), None
        name = use.name.name
        if name not in self.spaces:
            if self.had_syntax_errors:
                return None, None
            hint = did_you_mean(name, self.spaces) if self.spaces else "define it with `space NAME { ... }`"
            self.error(module, use.name.loc, f"space `{name}` is not defined", hint)
            return None, None
        definition, def_module = self.spaces[name]
        if name in self.invalid_spaces:
            return None, None
        bindings = self._bind(module, definition, use)
        if bindings is None:
            return None, None
        shown = name + (
            "(" + ", ".join(f"{k}={v}" for k, v in bindings.items()) + ")" if bindings else ""
        )
        return self._instantiate(def_module, definition.decls, bindings), shown

    def _bind(self, module, d: ast.SpaceDef, use: ast.SpaceRef) -> Optional[dict[str, int]]:
        params = [p.name.name for p in d.params or ()]
        defaults = {p.name.name: p.default for p in d.params or () if p.default is not None}
        bound: dict[str, Any] = {}
        ok = True
        for i, arg in enumerate(use.args or ()):
            if arg.name is None:
                if any(a.name is not None for a in (use.args or ())[:i]):
                    self.error(module, arg.value.loc, "positional argument after a named one")
                    ok = False
                    continue
                if i >= len(params):
                    self.error(module, arg.value.loc,
                               f"space `{d.name.name}` takes {len(params)} parameter(s), got more",
                               f"parameters: {', '.join(params) or 'none'}")
                    ok = False
                    continue
                key = params[i]
            else:
                key = arg.name.name
                if key not in params:
                    self.error(module, arg.name.loc,
                               f"space `{d.name.name}` has no parameter `{key}`",
                               did_you_mean(key, params, "parameters") if params else "it takes none")
                    ok = False
                    continue
            if key in bound:
                self.error(module, arg.value.loc, f"parameter `{key}` is given twice")
                ok = False
                continue
            value, problem = read_rank(arg.value.text)
            if problem:
                self.error(module, arg.value.loc, *problem)
                ok = False
            bound[key] = value
        for key in params:
            if key not in bound:
                if key in defaults:
                    bound[key] = read_rank(defaults[key].text)[0]
                else:
                    self.error(module, use.loc, f"space `{d.name.name}` needs a value for `{key}`",
                               f"write {d.name.name}({key}=8)")
                    ok = False
        if not ok or any(v is None for v in bound.values()):
            return None
        return {k: bound[k] for k in params}

    # ------------------------------------------------------------ singletons

    def _singletons(self, placed: list[_Placed]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        search: dict[str, Any] = {}
        training: dict[str, Any] = {}
        seen: dict[tuple[str, str], ast.Loc] = {}  # (file, key) → where it was set
        winner: dict[str, tuple[ast.Module, ast.Loc]] = {}  # key → the value in effect
        # Deeper includes first, so that the including file's values win.
        for p in sorted(placed, key=lambda p: -p.depth):
            items = self._singleton_items(p.module, p.stmt)
            for key, loc, value, value_loc in items:
                if (p.module.file, key) in seen:
                    first = seen[(p.module.file, key)]
                    self.error(p.module, loc, f"`{key}` is already set in this file",
                               f"first set at line {first.line}; keep one")
                    continue
                seen[(p.module.file, key)] = loc
                if value is None:
                    continue
                block, _, name = key.partition(".")
                target = {"search": search, "training": training}.get(block, out)
                target[name or key] = value
                winner[key] = (p.module, value_loc)
        self._cross_check(winner, search, training)
        out["search"] = SearchSettings(**search)
        if not self.diagnostics:
            out["training"] = TrainSettings(**training)
        return out

    def _singleton_items(self, module, stmt) -> list[tuple[str, ast.Loc, Any, ast.Loc]]:
        """(key, where the statement is, value or None when invalid, where the value is)."""
        if isinstance(stmt, ast.ModelStmt):
            if not stmt.ref.strip():
                self.error(module, stmt.loc, "empty model name", 'write model "vit_base_patch16_224"')
                return [("model", stmt.loc, None, stmt.loc)]
            return [("model", stmt.loc, stmt.ref, stmt.loc)]
        if isinstance(stmt, ast.BiasStmt):
            policy = stmt.policy.name
            if policy not in ("preserve", "add"):
                self.error(module, stmt.policy.loc, f"unknown bias policy `{policy}`",
                           did_you_mean(policy, ("preserve", "add"), "policies"))
                return [("bias", stmt.loc, None, stmt.policy.loc)]
            return [("bias", stmt.loc, policy, stmt.policy.loc)]
        if isinstance(stmt, ast.BudgetStmt):
            return [("budget", stmt.loc, self._budget(module, stmt), stmt.amount.loc)]
        if isinstance(stmt, ast.SettingsBlock):
            return [(f"{stmt.block.name}.{s.key.name}", s.loc,
                     self._setting(module, stmt.block.name, s), s.value.loc)
                    for s in stmt.settings]
        return []

    def _budget(self, module, stmt: ast.BudgetStmt) -> Optional[Budget]:
        params, problem = read_param_count(stmt.amount.text)
        if problem:
            self.error(module, stmt.amount.loc, *problem)
        including = stmt.including
        if including is not None and including.name != "head":
            self.error(module, including.loc, f"unknown budget option `{including.name}`",
                       "write `including head` to count the trained modules in the budget")
            return None
        if params is None:
            return None
        return Budget(params=params, include_trained=including is not None,
                      origin=self._origin(module, stmt.loc))

    def _setting(self, module, block: str, s: ast.Setting) -> Any:
        table = SETTINGS[block]
        key = s.key.name
        if key not in table:
            other = "training" if block == "search" else "search"
            hint = (f"`{key}` is a {other} setting; move it to the `{other} {{ ... }}` block"
                    if key in SETTINGS[other] else did_you_mean(key, table, "settings"))
            self.error(module, s.key.loc, f"unknown {block} setting `{key}`", hint)
            return None
        expected, reader = table[key]
        token_kind = "number" if isinstance(s.value, ast.Num) else "name"
        if token_kind != expected or isinstance(s.value, ast.Str):
            self.error(module, s.value.loc, f"`{key}` expects a {expected}")
            return None
        text = s.value.text if isinstance(s.value, ast.Num) else s.value.name
        value, problem = reader(text, f"`{key}`")
        if problem:
            self.error(module, s.value.loc, *problem)
        return value

    def _cross_check(self, where: dict, search: dict, training: dict) -> None:
        """Constraints between settings, reported at the value in effect that breaks them."""
        population = search.get("population", SearchSettings().population)
        parents = search.get("parents", SearchSettings().parents)
        if parents is not None and population is not None and parents > population:
            mod, loc = where.get("search.parents") or where["search.population"]
            self.error(mod, loc, f"parents ({parents}) exceed the population ({population})",
                       "parents are the best structures kept from the population")
        epochs = training.get("epochs", TrainSettings().epochs)
        warmup = training.get("warmup_epochs", TrainSettings().warmup_epochs)
        if epochs is not None and warmup is not None and warmup >= epochs:
            mod, loc = where.get("training.warmup_epochs") or where["training.epochs"]
            self.error(mod, loc, f"warm-up ({warmup} epochs) must be shorter than training ({epochs})",
                       "lower warmup_epochs or raise epochs")


def analyze(source: Union[str, Path], *, name: str | None = None) -> tuple[Optional[Spec], list[Diagnostic]]:
    """Parse and check a spec file or text; never raises for bad input."""
    analyzer = Analyzer()
    if _is_path(source):
        file = str(source)
        placed = analyzer.load_entry(None, file, os.path.realpath(file))
    else:
        placed = analyzer.load_entry(str(source), name or "<string>", None)
    # Syntax errors do not stop the checks of the statements that did parse, so one
    # run reports everything; only "undefined space" is muted, since the space's own
    # definition may be the statement that failed to parse.
    analyzer.had_syntax_errors = bool(analyzer.diagnostics)
    spec = analyzer.build(placed)
    order = {f: i for i, f in enumerate(analyzer.files)}
    analyzer.diagnostics.sort(key=lambda d: (order.get(d.file, -1), d.line, d.column))
    return spec, analyzer.diagnostics


def _is_path(source: Union[str, Path]) -> bool:
    """A Path is a file; a str is spec text unless it reads as a file name.

    Text that starts with a statement keyword is always text (``include paper.glora``
    is a one-line spec with a mistake in it, not a file name).
    """
    if isinstance(source, Path):
        return True
    if "\n" in source or "{" in source or '"' in source or _KEYWORD_THEN_SPACE.match(source):
        return False
    return source.endswith(".glora") or os.path.exists(source)


_KEYWORD_THEN_SPACE = re.compile(r"\s*(?:" + "|".join(KEYWORDS) + r")(?:\s|$)")


def load_spec(source: Union[str, Path, bytes], *, name: str | None = None) -> Spec:
    """Load a spec from a path or from spec text; raises :class:`SpecError` listing every problem."""
    if isinstance(source, bytes):
        text, diags = decode_spec_bytes(source, name or "<bytes>")
        if text is None:
            raise SpecError(diags)
        source = text
    spec, diagnostics = analyze(source, name=name)
    if diagnostics or spec is None:
        raise SpecError(diagnostics)
    return spec
