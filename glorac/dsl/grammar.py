"""Find and compile the Lark grammar once per process.

The grammar file lives at the top of the repository (``grammars/glora.lark``) and is
copied into the wheel as ``glorac/grammars/glora.lark``; the installed copy is looked up
first so that a wheel install never depends on a source checkout.
"""

from __future__ import annotations

import functools
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
    """The LALR parser (linear time); built on first use and reused afterwards."""
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
        "SETTINGS": "`search` or `training`",
        "$END": "end of file",
    }
    if name in words:
        return words[name]
    if name.startswith("_") and name[1:].isalpha():  # a keyword: _WITH is `with`
        return f"`{name[1:].lower()}`"
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return name
    return f"`{pattern.value}`" if pattern.type == "str" else name
