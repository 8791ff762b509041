"""Find and compile the Lark grammar once per process, and read its keywords.

The grammar file lives at the top of the repository (``grammars/glora.lark``) and is
copied into the wheel as ``glorac/grammars/glora.lark``; the installed copy is looked up
first so that a wheel install never depends on a source checkout.

The keywords (which words start a statement, which continue one) are read from the
compiled grammar, so adding a statement to ``glora.lark`` needs no Python edit.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from lark import Lark

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_CANDIDATES = (
    _PACKAGE_DIR / "grammars" / "glora.lark",  # installed wheel
    _PACKAGE_DIR.parent / "grammars" / "glora.lark",  # source checkout / editable install
)


def grammar_path() -> Path:
    for candidate in _CANDIDATES:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(c) for c in _CANDIDATES)
    raise RuntimeError(f"glorac is installed without its grammar (looked in: {searched})")


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    """The LALR parser (linear time); built once, when glorac.dsl.parser reads its keywords."""
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
    )


@functools.lru_cache(maxsize=None)
def describe_terminal(name: str) -> str:
    """A reader's name for a terminal: keywords as written, classes in words."""
    words = {
        "STRING": 'a quoted pattern like "blocks.*.attn.qkv"',
        "NAME": "a name",
        "NUMBER": "a number",
        "MODEL_REF": "a model name",
        "$END": "end of file",
    }
    if name in words:
        return words[name]
    words = keywords().by_terminal.get(name)
    if words:  # _WITH is `with`, SETTINGS is `search` or `training`
        return " or ".join(f"`{word}`" for word in words)
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return name
    return f"`{pattern.value}`" if pattern.type == "str" else name


# A keyword terminal is a whole-word regex: /with(?![A-Za-z0-9_])/ or /(search|training)(?!...)/.
_KEYWORD_PATTERN = re.compile(r"\(?([a-z]+(?:\|[a-z]+)*)\)?\(\?!\[A-Za-z0-9_\]\)")


@dataclass(frozen=True, eq=False)
class Keywords:
    """A grammar's keywords, read from its terminals and its ``_statement`` rule."""

    by_terminal: dict[str, tuple[str, ...]]  # _WITH → ("with",), SETTINGS → ("search", "training")
    statement_terminals: tuple[str, ...]  # what a statement starts with, in `_statement` order

    @property
    def statements(self) -> tuple[str, ...]:
        """``model``, ``include``, ... ``search``, ``training``: the words that start a statement."""
        return tuple(word for t in self.statement_terminals for word in self.by_terminal[t])

    @property
    def clauses(self) -> tuple[str, ...]:
        """``type``, ``with``, ...: the keywords that only continue a statement."""
        return tuple(word for t, words in self.by_terminal.items()
                     if t not in self.statement_terminals for word in words)


@functools.lru_cache(maxsize=1)
def keywords() -> Keywords:
    return keywords_of(parser())


def keywords_of(lark: Lark) -> Keywords:
    by_terminal = {}
    for terminal in lark.terminals:
        pattern = terminal.pattern
        match = _KEYWORD_PATTERN.fullmatch(pattern.value) if pattern.type == "re" else None
        if match:
            by_terminal[terminal.name] = tuple(match.group(1).split("|"))
    firsts = [t for rule in lark.rules if rule.origin.name == "_statement"
              for t in _first_terminals(rule.expansion[0], lark.rules)]
    starts = tuple(dict.fromkeys(firsts))  # in order, each once
    # The parser cuts text into statements at these words (glorac.dsl.parser._chunks).
    odd = [t for t in starts if t not in by_terminal]
    if odd:
        raise RuntimeError(f"grammar: every statement must start with a keyword, not {', '.join(odd)}")
    return Keywords(by_terminal, starts)


def _first_terminals(symbol, rules, seen: frozenset = frozenset()) -> list[str]:
    """The terminals a symbol can start with (every statement starts with one)."""
    if symbol.is_term:
        return [symbol.name]
    if symbol.name in seen:  # left recursion adds nothing new
        return []
    return [
        t
        for rule in rules
        if rule.origin.name == symbol.name and rule.expansion
        for t in _first_terminals(rule.expansion[0], rules, seen | {symbol.name})
    ]
