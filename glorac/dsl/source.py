"""Pointing back into the source: diagnostics and IR origins from AST positions."""

from __future__ import annotations

from typing import Optional

from ..errors import Diagnostic
from ..ir import Origin
from . import ast
from .parser import shorten_quoted


def error_at(module: ast.Module, loc: ast.Loc, message: str, hint: Optional[str] = None) -> Diagnostic:
    """An error at ``loc`` in ``module``, with its source line so it renders without the file."""
    # A span that runs onto later lines is shown as its first character only.
    end = loc.end_col if loc.end_line == loc.line and loc.end_col > loc.col else loc.col + 1
    src = module.lines[loc.line - 1] if 0 < loc.line <= len(module.lines) else None
    return Diagnostic(module.file, loc.line, loc.col, shorten_quoted(message), end, hint, src)


def origin_of(module: ast.Module, loc: ast.Loc) -> Origin:
    return Origin(file=module.file, line=loc.line, column=loc.col)
