"""Source text → :class:`~glorac.dsl.ast.Module`, collecting every syntax error.

Every statement starts with a keyword at the beginning of a line, so the text is cut
into statement-sized chunks before parsing: a mistake in one statement is reported
once, at its own line and column, and the parser goes on with the next statement
instead of stopping at the first error (or cascading into nonsense).

Newlines mean nothing to the language, so a line only starts a new chunk when the
previous line could end a statement (not after `with`, `type`, `|`, `,`, `(`...): a
statement may be broken anywhere. Keywords are whole words (`withs` is a name), and
they are read from the grammar (glorac.dsl.grammar.keywords), never listed here.

File reading lives in glorac.dsl.files; this module only turns text into an AST.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterator

from lark import Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ..errors import Diagnostic
from . import ast
from .grammar import describe_terminal, keywords, parser

MAX_SPEC_BYTES = 1 << 20  # a spec is a page of text; anything larger is a mistake
KEYWORDS = keywords().statements  # in grammar order, which is the order hints list them
_STATEMENT_START = re.compile(r"[ \t]*(" + "|".join(KEYWORDS) + r")(?![A-Za-z0-9_])")


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


_CONTINUATION = keywords().clauses  # `with`, `type`...: they never start a statement
_WORD = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)")


def _chunks(lines: list[str]) -> Iterator[tuple[int, int]]:
    """(first, last) 0-based line ranges, each holding one statement or more.

    A chunk starts at a line that begins with a statement keyword, or with any other
    word outside braces that cannot continue a statement (a misspelt keyword), so a
    typo costs one statement, not its neighbours too.
    """
    starts, depth, open_end = [], 0, False
    for i, line in enumerate(lines):
        code = _code_part(line)
        word = _WORD.match(code)
        if _STATEMENT_START.match(code) or (
            depth <= 0 and not open_end and word and word.group(1) not in _CONTINUATION
        ):
            starts.append(i)
            depth = 0
        depth += _brace_balance(code)
        if code.strip():
            open_end = _ends_open(code)
    if not starts or any(_code_part(l).strip() for l in lines[: starts[0]]):
        starts.insert(0, 0)  # text before the first statement is itself a (bad) statement
    for first, last in zip(starts, starts[1:] + [len(lines)]):
        yield first, last


_OPEN_PUNCT = ",|(=:{"
_LAST_WORD = re.compile(r"(?:^|[\s(){}|,])([A-Za-z_][A-Za-z0-9_]*)$")


def _ends_open(code: str) -> bool:
    """Whether a line's code stops where no statement can end (`with`, `,`, `|`, `(`...).

    The language ignores newlines, so the next line continues that statement even when
    it starts with a plain word (`type Linear |` / `Conv2d`, `with` / `paper(r=8)`).
    """
    code = code.rstrip()
    if not code or code.endswith('"'):
        return False
    if code[-1] in _OPEN_PUNCT:
        return True
    last = _LAST_WORD.search(code)
    return last is not None and last.group(1) in KEYWORDS + _CONTINUATION


def _brace_balance(code: str) -> int:
    in_string, balance = False, 0
    for ch in code:
        if ch == '"':
            in_string = not in_string
        elif not in_string:
            balance += (ch == "{") - (ch == "}")
    return balance


# ---------------------------------------------------------------- syntax errors


def _syntax_diagnostic(
    exc: UnexpectedInput, lines: list[str], first: int, last: int, file: str
) -> Diagnostic:
    if isinstance(exc, UnexpectedCharacters):
        line, col = exc.line + first, exc.column
        char = lines[line - 1][col - 1 : col] or "?"
        if char == '"':  # the STRING token failed: its closing quote is missing
            hint = 'a string ends with `"` on the same line'
            return _diag(file, lines, line, col, col + 1, "string is never closed", hint)
        hint = "strings use double quotes" if char == "'" else None
        if hint is None and char.isprintable() and not char.isspace():
            hint = _expected(getattr(exc, "allowed", None), _statement_at(lines, first, line, col))
        shown = f"`{char}`" if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"
        if not char.isprintable() or char.isspace():
            hint = "an invisible character; delete it (and retype the text around it)"
        return _diag(file, lines, line, col, col + 1, f"unexpected character {shown}", hint)
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    expected = _accepts(exc)
    if token.type == "$END":
        statement = _statement_at(lines, first, last, len(lines[last - 1]) + 1)
        return _unexpected_end(file, lines, first, last, expected, statement)
    line, col = token.line + first, token.column
    end = token.end_column if token.end_line == token.line else col + len(token.value)
    hint = _expected(expected, _statement_at(lines, first, line, col))
    statement_here = not expected.isdisjoint(keywords().statement_terminals)  # a new statement could start here
    if statement_here:
        hint = "a statement starts with one of: " + ", ".join(KEYWORDS)
    message = f"unexpected `{token.value}`"
    if token.type in ("NAME", "MODEL_REF"):
        # A word where a keyword could go: most likely a misspelt (or glued) keyword.
        words = [word for n in expected for word in keywords().by_terminal.get(n, ())]
        close = difflib.get_close_matches(token.value, words, n=1, cutoff=0.6)
        clauses = sorted(k for k in words if k not in KEYWORDS)  # e.g. `including`
        if close:
            hint = f"did you mean `{close[0]}`?"
        elif clauses and statement_here:
            listed = ", ".join(f"`{k}`" for k in clauses)
            hint = f"expected {listed} or a new statement ({', '.join(KEYWORDS)})"
        if statement_here and (close[0] in KEYWORDS if close else not clauses):
            message = f"unknown statement `{token.value}`"
    return _diag(file, lines, line, col, end, message, hint)


_ACCEPTS_CACHE: dict[tuple, frozenset] = {}


def _accepts(exc: UnexpectedToken) -> frozenset:
    """The terminals the parser would really take at the error (``exc.accepts``).

    Lark computes that by trying every candidate terminal on a copy of the parser, which
    costs milliseconds; it depends only on the state stack, so it is cached per stack
    (a file with thousands of the same mistake stays linear).
    """
    ip = exc.interactive_parser
    if ip is None:
        return frozenset(exc.expected)
    key = tuple(ip.parser_state.state_stack)
    found = _ACCEPTS_CACHE.get(key)
    if found is None:
        found = frozenset(exc.accepts or exc.expected)
        if len(_ACCEPTS_CACHE) > 4096:
            _ACCEPTS_CACHE.clear()
        _ACCEPTS_CACHE[key] = found
    return found


def _unexpected_end(file, lines, first, last, expected, statement) -> Diagnostic:
    open_braces: list[tuple[int, int]] = []  # (line, col) of each `{` not yet closed
    for number in range(first, last):
        in_string = False
        for col, ch in enumerate(_code_part(lines[number]), start=1):
            if ch == '"':
                in_string = not in_string  # `{` inside a glob is not a block
            elif in_string:
                continue
            elif ch == "{":
                open_braces.append((number + 1, col))
            elif ch == "}" and open_braces:
                open_braces.pop()
    if open_braces:
        line, col = open_braces[-1]
        hint = "add the matching `}` after the block's last line"
        return _diag(file, lines, line, col, col + 1, "`{` is never closed", hint)
    # Point just past the statement's last piece of code.
    for number in range(last - 1, first - 1, -1):
        code = _code_part(lines[number]).rstrip()
        if code:
            col = len(code) + 1
            hint = _expected(expected, statement)
            return _diag(file, lines, number + 1, col, col + 1, "statement ends too early", hint)
    hint = _expected(expected, statement)
    return _diag(file, lines, first + 1, 1, 2, "statement ends too early", hint)


_STRING_IN = {
    "model": "a double-quoted model name",
    "include": 'a double-quoted file name like "paper.glora"',
    "search": "a double-quoted string",
    "training": "a double-quoted string",
}
_STRING_LITERAL = re.compile(r'"[^"\n]*"?')
_KEYWORD_WORD = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(KEYWORDS) + r")(?![A-Za-z0-9_])")


def _statement_at(lines: list[str], first: int, line: int, col: int) -> str | None:
    """The keyword of the statement that the position (1-based) is in, if any."""
    text = "\n".join(_code_part(l) for l in lines[first : line - 1])
    text += "\n" + _code_part(lines[line - 1])[: col - 1] if 0 < line <= len(lines) else ""
    words = _KEYWORD_WORD.findall(_STRING_LITERAL.sub('""', text))
    return words[-1] if words else None


def _expected(names, statement: str | None = None) -> str | None:
    if not names:
        return None
    strings = _STRING_IN.get(statement or "")

    def describe(name: str) -> str:
        return strings if name == "STRING" and strings else describe_terminal(name)

    described = sorted({describe(n) for n in names if not n.startswith("__")})
    if len(described) > 8:
        return None
    return "expected " + (described[0] if len(described) == 1 else "one of: " + ", ".join(described))


def _diag(file, lines, line, col, end, message, hint) -> Diagnostic:
    src = lines[line - 1] if 0 < line <= len(lines) else None
    return Diagnostic(file, line, col, shorten_quoted(message), end, hint, src)


_QUOTED = re.compile(r"`([^`]{41,})`")


def shorten_quoted(message: str) -> str:
    """Cut quoted source text in a message to 40 characters (a token can be huge)."""
    return _QUOTED.sub(lambda m: f"`{m.group(1)[:37]}...`", message)


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

    def pattern(self, t: Tree) -> ast.Pattern:
        string, optional = t.children  # `"glob"` and its `?` (None when not optional)
        return ast.Pattern(str(string)[1:-1], self.loc(string), optional is not None)

    def _selector(self, children) -> tuple[tuple, tuple, tuple, list]:
        patterns, types, excepts, rest = None, (), (), []
        for child in children:
            if isinstance(child, Tree) and child.data == "patterns":
                patterns = tuple(map(self.pattern, child.children))
            elif isinstance(child, Tree) and child.data == "type_filter":
                types = tuple(self.ident(n) for n in child.children)
            elif isinstance(child, Tree) and child.data == "except_clause":
                excepts = tuple(map(self.pattern, child.children[0].children))
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
