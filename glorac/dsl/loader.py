"""Read the entry spec and its includes into one list of statements, before any check.

``include "f.glora"`` reads a file relative to the including file; its statements sit
where the include line is. A file reached twice is read once (diamond includes); a
cycle is an error at the include that closes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from ..errors import Diagnostic
from . import ast
from .files import read_spec_file
from .parser import parse_text
from .source import error_at


@dataclass(frozen=True)
class Placed:
    """A statement with the file it came from and its include depth (0 = entry file)."""

    module: ast.Module
    stmt: ast.Statement
    depth: int


@dataclass
class Loaded:
    """The entry file with its includes expanded in place, and what went wrong reading it."""

    placed: list[Placed] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # as shown in diagnostics, in reading order
    diagnostics: list[Diagnostic] = field(default_factory=list)  # syntax and file errors


def load_path(path: Union[str, os.PathLike]) -> Loaded:
    file = os.fspath(path)
    loaded = Loaded()
    text, diagnostics = read_spec_file(file)
    loaded.diagnostics.extend(diagnostics)
    if text is not None:
        loaded.placed = _Reader(loaded).read(text, file, os.path.realpath(file), depth=0)
    return loaded


def load_text(text: str, name: str) -> Loaded:
    """Spec text; ``name`` is its file name in diagnostics (includes resolve next to it)."""
    loaded = Loaded()
    loaded.placed = _Reader(loaded).read(text, name, None, depth=0)
    return loaded


class _Reader:
    """The bookkeeping of one load: the files read so far and the chain of open includes."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.done: set[str] = set()  # real paths (or a stand-in for text) already read
        self.open: list[str] = []  # the include chain being read, for cycle messages

    def read(self, text: str, file: str, real: str | None, depth: int) -> list[Placed]:
        module, diagnostics = parse_text(text, file)
        self.loaded.diagnostics.extend(diagnostics)
        self.loaded.files.append(file)
        key = real or f"<text:{id(module)}>"
        self.done.add(key)
        self.open.append(key)
        placed: list[Placed] = []
        for stmt in module.statements:
            if isinstance(stmt, ast.IncludeStmt):
                placed.extend(self.include(module, stmt, depth))
            else:
                placed.append(Placed(module, stmt, depth))
        self.open.pop()
        return placed

    def include(self, module: ast.Module, stmt: ast.IncludeStmt, depth: int) -> list[Placed]:
        # Text has no directory of its own, so its includes are relative to the cwd.
        base = Path(module.file).parent if not module.file.startswith("<") else Path.cwd()
        target = base / stmt.path.value
        shown = os.path.normpath(str(target))
        real = os.path.realpath(target)
        if real in self.open:
            chain = [os.path.basename(p) for p in self.open[self.open.index(real):]]
            self.error(module, stmt, f"include cycle: {' → '.join(chain + [os.path.basename(real)])}",
                       "remove one of the includes")
            return []
        if real in self.done:
            return []  # diamond includes: the file's statements are already in place
        text, diagnostics = read_spec_file(target)
        if text is None:
            why = diagnostics[0].message if diagnostics else "cannot read"
            self.error(module, stmt, f"cannot include `{stmt.path.value}`: {why}",
                       f"looked for {shown} (includes are relative to the including file)")
            return []
        return self.read(text, shown, real, depth + 1)

    def error(self, module: ast.Module, stmt: ast.IncludeStmt, message: str, hint: str) -> None:
        self.loaded.diagnostics.append(error_at(module, stmt.path.loc, message, hint))
