"""Once-per-file statements: ``model``, ``budget``, ``bias`` and each search/training key.

Each may be set once per file; the including file's value wins over an included
file's. Settings are read by the rules derived from the IR models
(:mod:`glorac.dsl.values`), and the constraints between settings are the models' own
(``SearchSettings.conflicts``), reported at the value in effect that breaks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel

from ..errors import Diagnostic, did_you_mean
from ..ir import Budget, SettingConflict
from . import ast
from .loader import Placed
from .source import error_at, origin_of
from .values import BLOCKS, SETTINGS, read_param_count

BIAS_POLICIES = ("preserve", "add")


@dataclass
class Singletons:
    """The values in effect, by key (``model``, ``budget``, ``search.seed``...), and where each is written."""

    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, tuple[ast.Module, ast.Loc]] = field(default_factory=dict)

    def plain(self) -> dict[str, Any]:
        """``model``, ``bias`` and ``budget``, as far as the spec sets them."""
        return {k: v for k, v in self.values.items() if "." not in k}

    def block(self, block: str) -> dict[str, Any]:
        """The settings of one block (``search``, ``training``) that the spec sets."""
        prefix = block + "."
        return {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}


def collect_singletons(placed: list[Placed], diagnostics: list[Diagnostic]) -> Singletons:
    """Pass: read every once-per-file statement; the including file's value wins."""
    found = Singletons()
    seen: dict[tuple[str, str], ast.Loc] = {}  # (file, key) → where it was set
    # Deeper includes first, so that the including file's values overwrite theirs.
    for p in sorted(placed, key=lambda p: -p.depth):
        for key, loc, value, value_loc in _items(p.module, p.stmt, diagnostics):
            first = seen.get((p.module.file, key))
            if first is not None:
                diagnostics.append(error_at(p.module, loc, f"`{key}` is already set in this file",
                                            f"first set at line {first.line}; keep one"))
                continue
            seen[(p.module.file, key)] = loc
            if value is not None:  # invalid: already reported
                found.values[key] = value
                found.where[key] = (p.module, value_loc)
    return found


def check_settings(singletons: Singletons, diagnostics: list[Diagnostic]) -> dict[str, BaseModel]:
    """Pass: each block's settings model, and the constraints between its settings."""
    settings = {}
    for block, model in BLOCKS.items():
        settings[block] = model(**singletons.block(block))  # every value was read by the model's rules
        for conflict in settings[block].conflicts():
            module, loc = _blamed(singletons, block, conflict)
            diagnostics.append(error_at(module, loc, conflict.message, conflict.hint))
    return settings


def _blamed(singletons: Singletons, block: str, conflict: SettingConflict) -> tuple[ast.Module, ast.Loc]:
    """Where the first of the conflicting settings that the spec sets is written.

    The defaults never conflict (a test says so), so the spec sets at least one of them.
    """
    keys = [f"{block}.{name}" for name in conflict.fields]
    return next(singletons.where[k] for k in keys if k in singletons.where)


_Item = tuple[str, ast.Loc, Any, ast.Loc]  # key, statement, value (None: invalid), value's place


def _items(module: ast.Module, stmt: ast.Statement, diagnostics: list[Diagnostic]) -> list[_Item]:
    if isinstance(stmt, ast.ModelStmt):
        return [("model", stmt.loc, _model(module, stmt, diagnostics), stmt.loc)]
    if isinstance(stmt, ast.BiasStmt):
        return [("bias", stmt.loc, _bias(module, stmt, diagnostics), stmt.policy.loc)]
    if isinstance(stmt, ast.BudgetStmt):
        return [("budget", stmt.loc, _budget(module, stmt, diagnostics), stmt.amount.loc)]
    if isinstance(stmt, ast.SettingsBlock):
        block = stmt.block.name
        return [(f"{block}.{s.key.name}", s.loc, check_setting(module, block, s, diagnostics), s.value.loc)
                for s in stmt.settings]
    return []


def _model(module: ast.Module, stmt: ast.ModelStmt, diagnostics: list[Diagnostic]) -> Optional[str]:
    if not stmt.ref.strip():
        diagnostics.append(error_at(module, stmt.loc, "empty model name", 'write model "vit_base_patch16_224"'))
        return None
    return stmt.ref


def _bias(module: ast.Module, stmt: ast.BiasStmt, diagnostics: list[Diagnostic]) -> Optional[str]:
    policy = stmt.policy.name
    if policy not in BIAS_POLICIES:
        diagnostics.append(error_at(module, stmt.policy.loc, f"unknown bias policy `{policy}`",
                                    did_you_mean(policy, BIAS_POLICIES, "policies")))
        return None
    return policy


def _budget(module: ast.Module, stmt: ast.BudgetStmt, diagnostics: list[Diagnostic]) -> Optional[Budget]:
    params, problem = read_param_count(stmt.amount.text)
    if problem:
        diagnostics.append(error_at(module, stmt.amount.loc, *problem))
    including = stmt.including
    if including is not None and including.name != "head":
        diagnostics.append(error_at(module, including.loc, f"unknown budget option `{including.name}`",
                                    "write `including head` to count the trained modules in the budget"))
        return None
    if params is None:
        return None
    return Budget(params=params, include_trained=including is not None, origin=origin_of(module, stmt.loc))


def check_setting(module: ast.Module, block: str, s: ast.Setting, diagnostics: list[Diagnostic]) -> Any:
    """One ``key = value`` of a settings block: its value, or None after reporting why not."""
    table, key = SETTINGS[block], s.key.name
    if key not in table:
        elsewhere = [other for other in SETTINGS if other != block and key in SETTINGS[other]]
        hint = (f"`{key}` is a {elsewhere[0]} setting; move it to the `{elsewhere[0]} {{ ... }}` block"
                if elsewhere else did_you_mean(key, table, "settings"))
        diagnostics.append(error_at(module, s.key.loc, f"unknown {block} setting `{key}`", hint))
        return None
    rule = table[key]
    token_kind = "number" if isinstance(s.value, ast.Num) else "name"
    if token_kind != rule.expected or isinstance(s.value, ast.Str):
        diagnostics.append(error_at(module, s.value.loc, f"`{key}` expects a {rule.expected}"))
        return None
    text = s.value.text if isinstance(s.value, ast.Num) else s.value.name
    value, problem = rule.read(text, f"`{key}`")
    if problem:
        diagnostics.append(error_at(module, s.value.loc, *problem))
    return value
