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
    comments = sorted(module.comments, key=lambda c: c.line)
    out: list[str] = []
    prev_end = 0
    for index, stmt in enumerate(module.statements):
        own = [c for c in comments if prev_end < c.line <= stmt.loc.end_line]
        leading = [c for c in own if c.line < stmt.loc.line]
        first_line = leading[0].line if leading else stmt.loc.line
        if index and first_line in module.blank_before:
            out.append("")
        out.extend(c.text for c in leading)
        out.extend(_statement(stmt, [c for c in own if c.line >= stmt.loc.line]))
        prev_end = stmt.loc.end_line
    tail = [c for c in comments if c.line > prev_end]
    if tail and out and tail[0].line >= 2 and not module.lines[tail[0].line - 2].strip():
        out.append("")
    out.extend(c.text for c in tail)
    return "\n".join(out) + "\n" if out else ""


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
        return _block(f"space {stmt.name.name}{params} {{", stmt, _decl_items(stmt.decls), comments)
    if isinstance(stmt, ast.SettingsBlock):
        items = [
            _Item([_Line(f"{s.key.name} = {_value(s.value)}")], s.loc.line, s.loc.end_line)
            for s in stmt.settings
        ]
        return _block(f"{stmt.block.name} {{", stmt, items, comments)
    item = _Item([_Line(t) for t in _flat(stmt)], stmt.loc.line, stmt.loc.end_line)
    for c in comments:  # comments inside a one-statement construct move above it,
        if c.line == stmt.loc.end_line:  # except one at the end of its last line
            item.lines[-1].trailing = c.text
        else:
            item.leading.append(c.text)
    return _render([item], "")


def _block(header: str, stmt, items: list[_Item], comments: list[ast.Comment]) -> list[str]:
    """A braced block: comments go to the item on their line, else to the next item."""
    head = _Line(header)
    close = _Item([_Line("}")], stmt.close_loc.line, stmt.close_loc.line)
    end_comments: list[str] = []
    for c in comments:
        ending_here = [i for i in items if i.last == c.line]
        if ending_here:
            ending_here[-1].lines[-1].trailing = c.text
        elif c.line == stmt.loc.line:
            head.trailing = c.text
        elif c.line == stmt.close_loc.line:
            close.lines[0].trailing = c.text
        else:
            following = [i for i in items if i.first > c.line]
            (following[0].leading if following else end_comments).append(c.text)
    body = _render([_Item([head], 0, 0)], "") + _render(items, INDENT)
    return body + [INDENT + c for c in end_comments] + _render([close], "")


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


def _strings(strings) -> list[str]:
    return [f'"{s.value}"' for s in strings]


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
    clauses = []
    if stmt.types:
        clauses.append("type " + " | ".join(t.name for t in stmt.types))
    if stmt.excepts:
        clauses.append("except " + ", ".join(_strings(stmt.excepts)))
    if isinstance(stmt, ast.ExcludeStmt):
        return _wrapped("exclude", _strings(stmt.patterns), clauses)
    space = stmt.space
    if isinstance(space, ast.InlineSpace):
        decls = [i.lines[0].text for i in _decl_items(space.decls)]
        lines = _wrapped("adapt", _strings(stmt.patterns), clauses + ["with {"])
        depth = INDENT if len(lines) > 1 else ""
        return lines + [depth + INDENT + d for d in decls] + [depth + "}"]
    args = "" if space.args is None else "(" + ", ".join(
        (f"{a.name.name}={a.value.text}" if a.name else a.value.text) for a in space.args
    ) + ")"
    return _wrapped("adapt", _strings(stmt.patterns), clauses + [f"with {space.name.name}{args}"])


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
