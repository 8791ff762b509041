"""The syntax tree of one ``.glora`` file, exactly as written (before any checking).

The parser builds these nodes without judging them; :mod:`glorac.dsl.analyze` checks
them and produces the IR, and :mod:`glorac.dsl.printer` prints them back canonically.
Every node keeps its source span so a diagnostic can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass(frozen=True)
class Loc:
    """1-based line and column span; ``end_col`` is exclusive."""

    line: int
    col: int
    end_line: int
    end_col: int


@dataclass(frozen=True)
class Ident:
    name: str
    loc: Loc


@dataclass(frozen=True)
class Num:
    """A number as written, unit suffix included (``8``, ``1e-4``, ``0.86M``)."""

    text: str
    loc: Loc


@dataclass(frozen=True)
class Str:
    """A double-quoted string, without its quotes."""

    value: str
    loc: Loc


@dataclass(frozen=True)
class Pattern(Str):
    """A selector's glob (``loc`` is its string's); ``optional`` when a ``?`` follows the
    closing quote (``"blocks.*.attn.proj"?``): the pattern may then match nothing."""

    optional: bool = False


@dataclass(frozen=True)
class KindExpr:
    """``lora(2|r)``, ``vector``... ``ranks`` is None when no parentheses were written."""

    name: Ident
    ranks: Optional[tuple[Union[Num, Ident], ...]]
    loc: Loc


@dataclass(frozen=True)
class TensorDecl:
    tensor: Ident
    kinds: tuple[KindExpr, ...]
    loc: Loc


@dataclass(frozen=True)
class Param:
    name: Ident
    default: Optional[Num]


@dataclass(frozen=True)
class SpaceDef:
    name: Ident
    params: Optional[tuple[Param, ...]]
    decls: tuple[TensorDecl, ...]
    loc: Loc
    close_loc: Loc  # the closing brace, where block-end comments sit


@dataclass(frozen=True)
class Arg:
    name: Optional[Ident]
    value: Num


@dataclass(frozen=True)
class SpaceRef:
    name: Ident
    args: Optional[tuple[Arg, ...]]
    loc: Loc


@dataclass(frozen=True)
class InlineSpace:
    decls: tuple[TensorDecl, ...]
    loc: Loc


@dataclass(frozen=True)
class AdaptStmt:
    patterns: tuple[Pattern, ...]
    types: tuple[Ident, ...]
    excepts: tuple[Pattern, ...]
    space: Union[SpaceRef, InlineSpace]
    loc: Loc


@dataclass(frozen=True)
class ExcludeStmt:
    patterns: tuple[Pattern, ...]
    types: tuple[Ident, ...]
    excepts: tuple[Pattern, ...]
    loc: Loc


@dataclass(frozen=True)
class TrainStmt:
    patterns: tuple[Pattern, ...]
    loc: Loc


@dataclass(frozen=True)
class BudgetStmt:
    amount: Num
    including: Optional[Ident]
    loc: Loc


@dataclass(frozen=True)
class BiasStmt:
    policy: Ident
    loc: Loc


@dataclass(frozen=True)
class ModelStmt:
    ref: str
    quoted: bool
    loc: Loc


@dataclass(frozen=True)
class IncludeStmt:
    path: Str
    loc: Loc


@dataclass(frozen=True)
class Setting:
    key: Ident
    value: Union[Num, Ident, Str]
    loc: Loc


@dataclass(frozen=True)
class SettingsBlock:
    block: Ident  # "search" or "training"
    settings: tuple[Setting, ...]
    loc: Loc
    close_loc: Loc


Statement = Union[
    ModelStmt,
    IncludeStmt,
    SpaceDef,
    AdaptStmt,
    ExcludeStmt,
    TrainStmt,
    BudgetStmt,
    BiasStmt,
    SettingsBlock,
]


@dataclass(frozen=True)
class Comment:
    text: str  # including the leading '#'
    line: int
    col: int


@dataclass
class Module:
    """One parsed file: its statements in order, its comments, and its text lines."""

    file: str
    lines: list[str]
    statements: list[Statement] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
