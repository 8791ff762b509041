"""One exception hierarchy for everything glorac reports to a user.

Every error a user can cause is a :class:`GloraError`. The CLI prints its message (one
paragraph: what, where, how to fix it) and exits non-zero without a traceback. Spec
errors additionally carry :class:`Diagnostic` records that point into the source text,
rendered the way a compiler does::

    specs/vit.glora:4:12: error: unknown kind `vectr`
        A: lora(8) | vectr
                     ^^^^^
      hint: did you mean `vector`?
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence


class GloraError(Exception):
    """Base class of every error glorac raises on purpose (bad input, not bugs)."""

    exit_code = 1

    def render(self) -> str:
        return str(self)


class CheckpointError(GloraError):
    """A checkpoint is missing, corrupt, foreign, or does not match the model."""


class ModelError(GloraError):
    """A model reference cannot be resolved, built, traced or loaded."""


class PlanError(GloraError):
    """A spec does not fit a model (a rule matches nothing, a module cannot be adapted)."""


class FoldError(GloraError):
    """Folding is impossible or would produce wrong numbers."""


class DataError(GloraError):
    """A data set is missing, empty, corrupt or inconsistent with the model."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a spec, anchored at a 1-based line and column span.

    ``source_line`` is the text of the offending line, kept with the diagnostic so it
    renders without the file (the file may be an include, a string, or gone).
    """

    file: str
    line: int
    column: int
    message: str
    end_column: int | None = None
    hint: str | None = None
    source_line: str | None = None
    severity: str = "error"

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file
        out = [f"{where}: {self.severity}: {self.message}"]
        if self.source_line is not None:
            text, caret_col = _window(self.source_line.expandtabs(1).rstrip("\r\n"), self.column)
            width = max(1, (self.end_column or self.column + 1) - self.column)
            width = min(width, max(1, len(text) - caret_col + 1), 80)
            out.append("    " + text)
            out.append("    " + " " * (caret_col - 1) + "^" * width)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


def _window(text: str, column: int, width: int = 160) -> tuple[str, int]:
    """A readable slice of a long line around ``column`` and the caret's column in it."""
    if len(text) <= width:
        return text, column
    start = max(0, min(column - 1 - width // 2, len(text) - width))
    prefix = "… " if start else ""
    suffix = " …" if start + width < len(text) else ""
    return prefix + text[start:start + width] + suffix, column - start + len(prefix)


class SpecError(GloraError):
    """A ``.glora`` spec is invalid. ``diagnostics`` lists every problem found."""

    exit_code = 2
    max_shown = 50

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = tuple(diagnostics)
        first = self.diagnostics[0] if self.diagnostics else None
        summary = (
            f"{first.file}:{first.line}:{first.column}: {first.message}"
            if first
            else "invalid spec"
        )
        super().__init__(summary)

    def render(self) -> str:
        shown = self.diagnostics[: self.max_shown]
        parts = [d.render() for d in shown]
        hidden = len(self.diagnostics) - len(shown)
        if hidden > 0:
            parts.append(f"... and {hidden} more error(s) not shown")
        n = len(self.diagnostics)
        parts.append(f"{n} error{'s' if n != 1 else ''} found")
        return "\n".join(parts)


def did_you_mean(word: str, candidates: Iterable[str], label: str = "defined") -> str | None:
    """A hint naming the closest candidate, or listing them all when nothing is close."""
    candidates = sorted(set(candidates))
    if not candidates:
        return None
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    listing = ", ".join(candidates[:12]) + (", ..." if len(candidates) > 12 else "")
    return f"{label}: {listing}"
