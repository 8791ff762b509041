"""Source text → :class:`~glorac.dsl.ast.Module`, collecting every syntax error.

Every statement starts with a keyword at the beginning of a line, so the text is cut
into statement-sized chunks before parsing: a mistake in one statement is reported
once, at its own line and column, and the parser goes on with the next statement
instead of stopping at the first error (or cascading into nonsense).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from lark import Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ..errors import Diagnostic, did_you_mean
from . import ast
from .grammar import describe_terminal, parser

MAX_SPEC_BYTES = 1 << 20  # a spec is a page of text; anything larger is a mistake
KEYWORDS = (
    "model",
    "include",
    "space",
    "adapt",
    "exclude",
    "train",
    "budget",
    "bias",
    "search",
    "training",
)
_STATEMENT_START = re.compile(r"[ \t]*(" + "|".join(KEYWORDS) + r")(?![A-Za-z0-9_])")


def read_spec_file(path: str | Path) -> tuple[str | None, list[Diagnostic]]:
    """Read a spec as UTF-8 text, turning every file-level problem into a diagnostic."""
    name = str(path)

    def fail(message: str, hint: str | None = None, line: int = 0, col: int = 0, src=None):
        return None, [Diagnostic(name, line, col, message, hint=hint, source_line=src)]

    p = Path(path)
    try:
        if p.is_dir():
            return fail("is a directory, not a spec file", "pass a .glora file")
        size = p.stat().st_size
        if size > MAX_SPEC_BYTES:
            return fail(
                f"file is too large ({size / 2**20:.1f} MiB); specs are limited to 1 MiB",
                "is this really a .glora spec?",
            )
        data = p.read_bytes()
    except FileNotFoundError:
        return fail("no such file", "check the path (includes are relative to the including file)")
    except PermissionError:
        return fail("permission denied", "make the file readable")
    except OSError as exc:
        return fail(f"cannot read file: {exc.strerror or exc}")
    return decode_spec_bytes(data, name)


def decode_spec_bytes(data: bytes, name: str) -> tuple[str | None, list[Diagnostic]]:
    if b"\x00" in data:
        return None, [Diagnostic(name, 0, 0, "binary data (NUL bytes): not a text spec")]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        src = data.split(b"\n")[line - 1].decode("utf-8", errors="replace")
        diag = Diagnostic(
            name, line, col, "invalid UTF-8", col + 1, "save the spec as UTF-8 text", src
        )
        return None, [diag]


def parse_text(text: str, file: str = "<string>") -> tuple[ast.Module, list[Diagnostic]]:
    """Parse a whole file. Returns the statements that parsed and one diagnostic per bad one."""
    lines = text.split("\n")
    module = ast.Module(file=file, lines=lines)
    module.comments = list(_comments(lines))
    diagnostics: list[Diagnostic] = []
    if len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        too_big = "text is too large for a spec (limit 1 MiB)"
        return module, [Diagnostic(file, 0, 0, too_big)]
    for first, last in _chunks(lines):
        chunk = "\n".join(lines[first:last])
        try:
            tree = parser().parse(chunk)
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(exc, lines, first, last, file))
            continue
        module.statements.extend(_Builder(first).statements(tree))
    module.blank_before = _blank_preceded(lines, module)
    return module, diagnostics


# ---------------------------------------------------------------- chunking and comments


def _code_part(line: str) -> str:
    """The line without its comment (a '#' inside a string is not a comment)."""
    in_string = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_string = not in_string
        elif ch == "#" and not in_string:
            return line[:i]
    return line


def _comments(lines: list[str]) -> Iterator[ast.Comment]:
    for number, line in enumerate(lines, start=1):
        code = _code_part(line)
        if len(code) < len(line):
            yield ast.Comment(line[len(code) :].rstrip(), number, len(code) + 1)


_CONTINUATION = ("type", "with", "except", "including")
_WORD = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)")


def _chunks(lines: list[str]) -> Iterator[tuple[int, int]]:
    """(first, last) 0-based line ranges, each holding one statement or more.

    A chunk starts at a line that begins with a statement keyword, or with any other
    word outside braces that cannot continue a statement (a misspelt keyword), so a
    typo costs one statement, not its neighbours too.
    """
    starts, depth = [], 0
    for i, line in enumerate(lines):
        code = _code_part(line)
        word = _WORD.match(code)
        if _STATEMENT_START.match(code) or (
            depth <= 0 and word and word.group(1) not in _CONTINUATION
        ):
            starts.append(i)
            depth = 0
        depth += _brace_balance(code)
    if not starts or any(_code_part(l).strip() for l in lines[: starts[0]]):
        starts.insert(0, 0)  # text before the first statement is itself a (bad) statement
    for first, last in zip(starts, starts[1:] + [len(lines)]):
        yield first, last


def _brace_balance(code: str) -> int:
    in_string, balance = False, 0
    for ch in code:
        if ch == '"':
            in_string = not in_string
        elif not in_string:
            balance += (ch == "{") - (ch == "}")
    return balance


def _blank_preceded(lines: list[str], module: ast.Module) -> set[int]:
    """Lines of statements (or their leading comments) that follow a blank line."""
    firsts = {s.loc.line for s in module.statements}
    firsts |= {c.line for c in module.comments if c.col == _indent(lines[c.line - 1]) + 1}
    return {n for n in firsts if n >= 2 and not lines[n - 2].strip()}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


# ---------------------------------------------------------------- syntax errors


def _syntax_diagnostic(
    exc: UnexpectedInput, lines: list[str], first: int, last: int, file: str
) -> Diagnostic:
    if isinstance(exc, UnexpectedCharacters):
        line, col = exc.line + first, exc.column
        char = lines[line - 1][col - 1 : col] or "?"
        hint = "strings use double quotes" if char == "'" else None
        if hint is None and char.isprintable() and not char.isspace():
            hint = _expected(getattr(exc, "allowed", None))
        return _diag(file, lines, line, col, col + 1, f"unexpected character `{char}`", hint)
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    expected = exc.accepts or exc.expected
    if token.type == "$END":
        return _unexpected_end(file, lines, first, last, expected)
    line, col = token.line + first, token.column
    end = token.end_column if token.end_line == token.line else col + len(token.value)
    hint = _expected(expected)
    if token.type in ("NAME", "MODEL_REF") and "MODEL" in expected:
        # A word where a statement should start: most likely a misspelt keyword.
        hint = did_you_mean(token.value, KEYWORDS) or hint
        message = f"unknown statement `{token.value}`"
    else:
        message = f"unexpected `{token.value}`"
    return _diag(file, lines, line, col, end, message, hint)


def _unexpected_end(file, lines, first, last, expected) -> Diagnostic:
    depth, opener = 0, None
    for number in range(first, last):
        code = _code_part(lines[number])
        for col, ch in enumerate(code, start=1):
            if ch == "{":
                depth, opener = depth + 1, (number + 1, col)
            elif ch == "}":
                depth -= 1
    if depth > 0 and opener:
        line, col = opener
        hint = "add the matching `}` after the block's last line"
        return _diag(file, lines, line, col, col + 1, "`{` is never closed", hint)
    # Point just past the statement's last piece of code.
    for number in range(last - 1, first - 1, -1):
        code = _code_part(lines[number]).rstrip()
        if code:
            col = len(code) + 1
            return _diag(
                file, lines, number + 1, col, col + 1, "statement ends too early", _expected(expected)
            )
    return _diag(file, lines, first + 1, 1, 2, "statement ends too early", _expected(expected))


def _expected(names) -> str | None:
    if not names:
        return None
    described = sorted({describe_terminal(n) for n in names if not n.startswith("__")})
    if len(described) > 8:
        return None
    return "expected " + (described[0] if len(described) == 1 else "one of: " + ", ".join(described))


def _diag(file, lines, line, col, end, message, hint) -> Diagnostic:
    src = lines[line - 1] if 0 < line <= len(lines) else None
    return Diagnostic(file, line, col, message, end, hint, src)


# ---------------------------------------------------------------- tree → AST


class _Builder:
    """Builds AST nodes from a Lark tree, shifting line numbers by the chunk's offset."""

    def __init__(self, line_offset: int):
        self.offset = line_offset

    def loc(self, node: Tree | Token) -> ast.Loc:
        if isinstance(node, Token):
            return ast.Loc(
                node.line + self.offset,
                node.column,
                node.end_line + self.offset,
                node.end_column,
            )
        m = node.meta
        return ast.Loc(m.line + self.offset, m.column, m.end_line + self.offset, m.end_column)

    def ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self.loc(tok))

    def value(self, tok: Token):
        if tok.type == "NUMBER":
            return ast.Num(str(tok), self.loc(tok))
        if tok.type == "STRING":
            return ast.Str(str(tok)[1:-1], self.loc(tok))
        return self.ident(tok)

    def statements(self, tree: Tree) -> list[ast.Statement]:
        return [getattr(self, child.data)(child) for child in tree.children]

    def model_stmt(self, t: Tree) -> ast.ModelStmt:
        tok = t.children[0]
        quoted = tok.type == "STRING"
        return ast.ModelStmt(str(tok)[1:-1] if quoted else str(tok), quoted, self.loc(t))

    def include_stmt(self, t: Tree) -> ast.IncludeStmt:
        return ast.IncludeStmt(self.value(t.children[0]), self.loc(t))

    def space_def(self, t: Tree) -> ast.SpaceDef:
        name, params, *decls = t.children
        params_ast = None
        if params is not None:
            params_ast = tuple(
                ast.Param(self.ident(p.children[0]), self._opt_num(p.children[1]))
                for p in params.children
                if p is not None
            )
        close = ast.Loc(t.meta.end_line + self.offset, t.meta.end_column - 1, 0, 0)
        return ast.SpaceDef(
            self.ident(name), params_ast, tuple(map(self.tensor_decl, decls)), self.loc(t), close
        )

    def _opt_num(self, tok) -> ast.Num | None:
        return None if tok is None else ast.Num(str(tok), self.loc(tok))

    def tensor_decl(self, t: Tree) -> ast.TensorDecl:
        name, *kinds = t.children
        return ast.TensorDecl(self.ident(name), tuple(map(self.kind, kinds)), self.loc(t))

    def kind(self, t: Tree) -> ast.KindExpr:
        name, *ranks = t.children
        ranks_ast = tuple(self.value(r) for r in ranks if r is not None) if len(ranks) else None
        return ast.KindExpr(self.ident(name), ranks_ast, self.loc(t))

    def _selector(self, children) -> tuple[tuple, tuple, tuple, list]:
        patterns, types, excepts, rest = None, (), (), []
        for child in children:
            if isinstance(child, Tree) and child.data == "patterns":
                patterns = tuple(self.value(s) for s in child.children)
            elif isinstance(child, Tree) and child.data == "type_filter":
                types = tuple(self.ident(n) for n in child.children)
            elif isinstance(child, Tree) and child.data == "except_clause":
                excepts = tuple(self.value(s) for s in child.children[0].children)
            elif child is not None:
                rest.append(child)
        return patterns, types, excepts, rest

    def adapt_stmt(self, t: Tree) -> ast.AdaptStmt:
        patterns, types, excepts, (space,) = self._selector(t.children)
        if space.data == "space_ref":
            name, args = space.children
            args_ast = None if args is None else tuple(self.arg(a) for a in args.children if a is not None)
            space_ast = ast.SpaceRef(self.ident(name), args_ast, self.loc(space))
        else:
            space_ast = ast.InlineSpace(tuple(map(self.tensor_decl, space.children)), self.loc(space))
        return ast.AdaptStmt(patterns, types, excepts, space_ast, self.loc(t))

    def arg(self, t: Tree) -> ast.Arg:
        if t.data == "named_arg":
            return ast.Arg(self.ident(t.children[0]), self.value(t.children[1]))
        return ast.Arg(None, self.value(t.children[0]))

    def exclude_stmt(self, t: Tree) -> ast.ExcludeStmt:
        patterns, types, excepts, _ = self._selector(t.children)
        return ast.ExcludeStmt(patterns, types, excepts, self.loc(t))

    def train_stmt(self, t: Tree) -> ast.TrainStmt:
        patterns, *_ = self._selector(t.children)
        return ast.TrainStmt(patterns, self.loc(t))

    def budget_stmt(self, t: Tree) -> ast.BudgetStmt:
        amount, including = t.children
        inc = None if including is None else self.ident(including)
        return ast.BudgetStmt(self.value(amount), inc, self.loc(t))

    def bias_stmt(self, t: Tree) -> ast.BiasStmt:
        return ast.BiasStmt(self.ident(t.children[0]), self.loc(t))

    def settings_block(self, t: Tree) -> ast.SettingsBlock:
        block, *settings = t.children
        items = tuple(
            ast.Setting(self.ident(s.children[0]), self.value(s.children[1]), self.loc(s))
            for s in settings
        )
        close = ast.Loc(t.meta.end_line + self.offset, t.meta.end_column - 1, 0, 0)
        return ast.SettingsBlock(self.ident(block), items, self.loc(t), close)
