"""Canonical printing of a parsed file (``glorac fmt``).

The canonical form: one statement per line (long rules broken before each clause),
four-space indentation in blocks, support tensors in A..E order with omitted ones
written out as ``none`` (their meaning), kinds in the order lora, vector, scalar, none,
at most one blank line between statements (kept where the source had one). Comments
are kept: a comment on its own line stays before the statement or block item that
follows it; a comment at the end of a line stays at the end of that line. Formatting
never changes meaning (the tests compare the IR before and after).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Union

from ..ir import KIND_NAMES, TENSORS
from . import ast

WIDTH = 88
INDENT = "    "
_BARE_MODEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/:@]*$")
_KIND_ORDER = {name: i for i, name in enumerate(KIND_NAMES)}


@dataclass
class _Line:
    text: str
    trailing: str | None = None


@dataclass
class _Item:
    """A printable unit with the source lines it covers, for comment placement."""

    lines: list[_Line]
    first: int
    last: int
    leading: list[str] = field(default_factory=list)


def format_module(module: ast.Module) -> str:
    statements = module.statements
    owned, tail = _assign_comments(module)
    out: list[str] = []

    def blank_above(line: int) -> bool:  # keep one blank line where the source had any
        return bool(out) and line >= 2 and not module.lines[line - 2].strip()

    prev_end = 0
    for stmt, comments in zip(statements, owned):
        for c in (c for c in comments if c.line < stmt.loc.line):
            out.extend([""] * blank_above(c.line) + [c.text])
        if stmt.loc.line > prev_end and blank_above(stmt.loc.line):
            out.append("")
        out.extend(_statement(stmt, [c for c in comments if c.line >= stmt.loc.line]))
        prev_end = stmt.loc.end_line
    for c in tail:
        out.extend([""] * blank_above(c.line) + [c.text])
    return "\n".join(out) + "\n" if out else ""


def _assign_comments(module: ast.Module) -> tuple[list[list[ast.Comment]], list[ast.Comment]]:
    """Each comment goes to the statement it is written in (the last one that starts
    before it and is still going on its line), else to the statement that follows it;
    comments after the last statement are the tail."""
    statements = module.statements
    starts = [(s.loc.line, s.loc.col) for s in statements]
    owned: list[list[ast.Comment]] = [[] for _ in statements]
    tail: list[ast.Comment] = []
    for c in sorted(module.comments, key=lambda c: (c.line, c.col)):
        i = bisect.bisect_left(starts, (c.line, c.col)) - 1  # last statement starting before
        if i >= 0 and statements[i].loc.end_line >= c.line:
            owned[i].append(c)
        elif i + 1 < len(statements):
            owned[i + 1].append(c)
        else:
            tail.append(c)
    return owned, tail


def _render(items: list[_Item], indent: str) -> list[str]:
    out = []
    for item in items:
        out.extend(indent + c for c in item.leading)
        for line in item.lines:
            text = indent + line.text
            out.append(f"{text}  {line.trailing}" if line.trailing else text)
    return out


# ---------------------------------------------------------------- statements


def _statement(stmt: ast.Statement, comments: list[ast.Comment]) -> list[str]:
    if isinstance(stmt, ast.SpaceDef):
        params = "" if stmt.params is None else "(" + ", ".join(map(_param, stmt.params)) + ")"
        header = [f"space {stmt.name.name}{params} {{"]
        return _block(header, stmt.loc.line, stmt.close_loc.line, _decl_items(stmt.decls), comments)
    if isinstance(stmt, ast.SettingsBlock):
        items = [
            _Item([_Line(f"{s.key.name} = {_value(s.value)}")], s.loc.line, s.loc.end_line)
            for s in stmt.settings
        ]
        header = [f"{stmt.block.name} {{"]
        return _block(header, stmt.loc.line, stmt.close_loc.line, items, comments)
    if isinstance(stmt, ast.AdaptStmt) and isinstance(stmt.space, ast.InlineSpace):
        # An inline space prints as a block, so comments inside it stay with its tensors.
        header = _wrapped("adapt", _strings(stmt.patterns), _clauses(stmt) + ["with {"])
        depth = INDENT if len(header) > 1 else ""
        space = stmt.space
        return _block(header, space.loc.line, space.loc.end_line, _decl_items(space.decls),
                      comments, depth)
    item = _Item([_Line(t) for t in _flat(stmt)], stmt.loc.line, stmt.loc.end_line)
    for c in comments:  # comments inside a one-statement construct move above it,
        if c.line == stmt.loc.end_line:  # except one at the end of its last line
            item.lines[-1].trailing = c.text
        else:
            item.leading.append(c.text)
    return _render([item], "")


def _block(
    header: list[str],
    open_line: int,
    close_line: int,
    items: list[_Item],
    comments: list[ast.Comment],
    depth: str = "",
) -> list[str]:
    """A braced block whose `{` is on source line ``open_line`` and `}` on ``close_line``.

    A comment goes to the item on its line, else to the item that follows it in the
    source; comments above the `{` line (inside a multi-line header) move above it all.
    """
    head = _Item([_Line(text) for text in header], 0, 0)
    close = _Item([_Line("}")], close_line, close_line)
    end_comments: list[str] = []
    written = [i for i in items if i.first > 0]  # items printed for omitted tensors have none
    for c in comments:
        ending_here = [i for i in written if i.last == c.line]
        inside = [i for i in written if i.first <= c.line < i.last]
        if c.line == close_line:  # a comment ends its line, so it follows the `}`
            close.lines[0].trailing = c.text
        elif ending_here:
            ending_here[-1].lines[-1].trailing = c.text
        elif inside:  # within a multi-line item: keep it with that item
            inside[0].leading.append(c.text)
        elif c.line < open_line:
            head.leading.append(c.text)
        elif c.line == open_line:
            head.lines[-1].trailing = c.text
        else:  # on its own line: it belongs to the item that follows it in the source
            following = [i for i in written if i.first > c.line]
            if following:
                min(following, key=lambda i: i.first).leading.append(c.text)
            else:
                end_comments.append(c.text)
    body = _render([head], "") + _render(items, depth + INDENT)
    return body + [depth + INDENT + c for c in end_comments] + _render([close], depth)


def _decl_items(decls: tuple[ast.TensorDecl, ...]) -> list[_Item]:
    by_name = {d.tensor.name: d for d in decls}
    items = []
    for t in TENSORS:  # omitted tensors are `none`; say so
        d = by_name.get(t)
        if d is None:
            items.append(_Item([_Line(f"{t}: none")], -1, -1))
        else:
            items.append(_Item([_Line(f"{t}: {_kinds(d.kinds)}")], d.loc.line, d.loc.end_line))
    # Unknown tensor names cannot reach here: fmt only prints files that check.
    return items


def _kinds(kinds: tuple[ast.KindExpr, ...]) -> str:
    ordered = sorted(kinds, key=lambda k: _KIND_ORDER.get(k.name.name, 99))
    return " | ".join(_kind(k) for k in ordered)


def _kind(k: ast.KindExpr) -> str:
    if k.ranks is None:
        return k.name.name
    return f"{k.name.name}(" + "|".join(_value(r) for r in k.ranks) + ")"


def _param(p: ast.Param) -> str:
    return p.name.name if p.default is None else f"{p.name.name}={p.default.text}"


def _value(v: Union[ast.Num, ast.Ident, ast.Str]) -> str:
    if isinstance(v, ast.Num):
        return v.text
    if isinstance(v, ast.Str):
        return f'"{v.value}"'
    return v.name


def _strings(patterns: tuple[ast.Pattern, ...]) -> list[str]:
    """Quoted patterns, an optional one with its `?` right after the closing quote."""
    return [f'"{p.value}"' + "?" * p.optional for p in patterns]


def _flat(stmt: ast.Statement) -> list[str]:
    """A non-block statement: one line when it fits, else one clause per line."""
    if isinstance(stmt, ast.ModelStmt):
        bare = _BARE_MODEL.match(stmt.ref) is not None
        return [f"model {stmt.ref}" if bare else f'model "{stmt.ref}"']
    if isinstance(stmt, ast.IncludeStmt):
        return [f'include "{stmt.path.value}"']
    if isinstance(stmt, ast.BudgetStmt):
        suffix = f" including {stmt.including.name}" if stmt.including else ""
        return [f"budget {stmt.amount.text}{suffix}"]
    if isinstance(stmt, ast.BiasStmt):
        return [f"bias {stmt.policy.name}"]
    if isinstance(stmt, ast.TrainStmt):
        return _wrapped("train", _strings(stmt.patterns), [])
    clauses = _clauses(stmt)
    if isinstance(stmt, ast.ExcludeStmt):
        return _wrapped("exclude", _strings(stmt.patterns), clauses)
    space = stmt.space
    assert isinstance(space, ast.SpaceRef)  # inline spaces print as blocks
    args = "" if space.args is None else "(" + ", ".join(
        (f"{a.name.name}={a.value.text}" if a.name else a.value.text) for a in space.args
    ) + ")"
    return _wrapped("adapt", _strings(stmt.patterns), clauses + [f"with {space.name.name}{args}"])


def _clauses(stmt: Union[ast.AdaptStmt, ast.ExcludeStmt]) -> list[str]:
    clauses = []
    if stmt.types:
        clauses.append("type " + " | ".join(t.name for t in stmt.types))
    if stmt.excepts:
        clauses.append("except " + ", ".join(_strings(stmt.excepts)))
    return clauses


def _wrapped(keyword: str, patterns: list[str], clauses: list[str]) -> list[str]:
    one_line = " ".join([keyword, ", ".join(patterns)] + clauses)
    if len(one_line) <= WIDTH:
        return [one_line]
    head = f"{keyword} " + ", ".join(patterns)
    if len(head) > WIDTH:
        pad = " " * (len(keyword) + 1)
        head_lines = [f"{keyword} {patterns[0]},"] + [f"{pad}{p}," for p in patterns[1:]]
        head_lines[-1] = head_lines[-1].rstrip(",")
    else:
        head_lines = [head]
    return head_lines + [INDENT + c for c in clauses]
