"""``adapt`` / ``exclude`` rules and ``train`` rules: check selectors, build IR rules.

Whether each pattern matches something depends on the model, so that is checked when
planning (glorac.planning.resolve_rules); for that check, each pattern's position and its
`?` (optional) go into the IR here.

Rules keep source order (an included file's rules sit where its ``include`` line is);
for each layer the last matching rule wins, which is for the planner to apply.
"""

from __future__ import annotations

from typing import Optional, Union

from ..errors import Diagnostic, did_you_mean
from ..ir import LAYER_TYPES, Kind, PatternInfo, Rule, Selector, TrainRule
from ..selectors import GlobError, compile_glob
from . import ast
from .loader import Placed
from .source import error_at, origin_of
from .spaces import Spaces, resolve_space


def build_rules(placed: list[Placed], spaces: Spaces, incomplete: bool,
                diagnostics: list[Diagnostic]) -> tuple[Rule, ...]:
    """Pass: every ``adapt`` and ``exclude`` statement that checks, in source order."""
    rules = (_rule(p.module, p.stmt, spaces, incomplete, diagnostics)
             for p in placed if isinstance(p.stmt, (ast.AdaptStmt, ast.ExcludeStmt)))
    return tuple(rule for rule in rules if rule is not None)


def build_trained(placed: list[Placed], diagnostics: list[Diagnostic]) -> tuple[TrainRule, ...]:
    """Pass: the ``train`` statements (modules trained fully, such as a new head)."""
    return tuple(
        TrainRule(patterns=check_patterns(p.module, p.stmt.patterns, diagnostics),
                  origin=origin_of(p.module, p.stmt.loc),
                  pattern_info=pattern_info(p.module, p.stmt.patterns))
        for p in placed if isinstance(p.stmt, ast.TrainStmt)
    )


def _rule(module: ast.Module, stmt: Union[ast.AdaptStmt, ast.ExcludeStmt], spaces: Spaces,
          incomplete: bool, diagnostics: list[Diagnostic]) -> Optional[Rule]:
    before = len(diagnostics)
    selector = Selector(
        patterns=check_patterns(module, stmt.patterns, diagnostics),
        types=_check_types(module, stmt.types, diagnostics),
        exclude=check_patterns(module, stmt.excepts, diagnostics),
        pattern_info=pattern_info(module, stmt.patterns),
        exclude_info=pattern_info(module, stmt.excepts),
    )
    space, space_name = None, None
    if isinstance(stmt, ast.AdaptStmt):
        space, space_name = resolve_space(module, stmt.space, spaces, incomplete, diagnostics)
        if space is not None and all(k == (Kind(kind="none"),) for _, k in space.items()):
            diagnostics.append(error_at(module, stmt.space.loc, "this space allows only `none` for every tensor",
                                        'use `exclude "..."` to leave layers untouched'))
    if len(diagnostics) > before:
        return None
    action = "adapt" if isinstance(stmt, ast.AdaptStmt) else "exclude"
    return Rule(action=action, selector=selector, space=space, space_name=space_name,
                origin=origin_of(module, stmt.loc))


def check_patterns(module: ast.Module, strings, diagnostics: list[Diagnostic]) -> tuple[str, ...]:
    """The glob patterns as written, each reported at the character where it goes wrong."""
    for s in strings:
        try:
            compile_glob(s.value)
        except GlobError as exc:
            col = s.loc.col + 1 + exc.offset  # +1 for the opening quote
            loc = ast.Loc(s.loc.line, col, s.loc.line, col + 1)
            diagnostics.append(error_at(module, loc, f"invalid pattern: {exc}", exc.hint))
    return tuple(s.value for s in strings)


def pattern_info(module: ast.Module, patterns: tuple[ast.Pattern, ...]) -> tuple[PatternInfo, ...]:
    """Each pattern's position (its opening quote) and its `?`, for the plan's checks."""
    return tuple(PatternInfo(origin=origin_of(module, p.loc), optional=p.optional) for p in patterns)


def _check_types(module: ast.Module, idents, diagnostics: list[Diagnostic]) -> tuple[str, ...]:
    for t in idents:
        if t.name not in LAYER_TYPES:
            diagnostics.append(error_at(module, t.loc, f"unknown layer type `{t.name}`",
                                        did_you_mean(t.name, LAYER_TYPES, "layer types")))
    return tuple(t.name for t in idents if t.name in LAYER_TYPES)
