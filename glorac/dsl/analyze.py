"""Check a spec and build the IR :class:`~glorac.ir.Spec`, collecting every error.

The loader (:mod:`glorac.dsl.loader`) reads the entry file and its includes into one
list of placed statements; then the checks run as passes, in the order of ``PASSES``,
in the manner of sqlglot's optimizer rules. A pass is a plain function whose
parameters name what it reads: ``placed``, ``incomplete`` or ``diagnostics`` from the
loader, or an earlier pass's result by that pass's name. What it returns is kept under
its own name, and it reports problems by appending to ``diagnostics``.

The language reference (docs/language.md) describes the semantics each pass checks.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import warnings
from typing import Any, Callable, Optional, Union

from ..errors import Diagnostic, SpecError
from ..ir import Spec
from .files import decode_spec_bytes
from .loader import Loaded, load_path, load_text
from .parser import KEYWORDS
from .rules import build_rules, build_trained
from .singletons import check_settings, collect_singletons
from .spaces import define_spaces

PASSES: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("spaces", define_spaces),
    ("rules", build_rules),
    ("trained", build_trained),
    ("singletons", collect_singletons),
    ("settings", check_settings),
)

PathLike = Union[str, "os.PathLike[str]"]


def run_passes(loaded: Loaded, passes=PASSES) -> dict[str, Any]:
    """Every pass's result by name (diagnostics land in ``loaded.diagnostics``)."""
    results: dict[str, Any] = {
        "placed": loaded.placed,
        "diagnostics": loaded.diagnostics,
        # Syntax errors do not stop the checks of the statements that did parse, so one
        # run reports everything; only "undefined space" is muted, since the space's own
        # definition may be the statement that failed to parse.
        "incomplete": bool(loaded.diagnostics),
    }
    for name, check in passes:
        results[name] = check(**{p: results[p] for p in _inputs(check)})
    return results


@functools.lru_cache(maxsize=None)
def _inputs(check: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(inspect.signature(check).parameters)


def _check(loaded: Loaded) -> tuple[Optional[Spec], list[Diagnostic]]:
    results = run_passes(loaded)
    order = {f: i for i, f in enumerate(loaded.files)}
    diagnostics = sorted(loaded.diagnostics, key=lambda d: (order.get(d.file, -1), d.line, d.column))
    if diagnostics:
        return None, diagnostics
    spec = Spec(rules=results["rules"], trained=results["trained"], files=tuple(loaded.files),
                **results["singletons"].plain(), **results["settings"])
    return spec, diagnostics


# ---------------------------------------------------------------- the public entry points


def analyze(path: PathLike, *, name: Optional[str] = None) -> tuple[Optional[Spec], list[Diagnostic]]:
    """Parse and check a spec file; never raises for bad input.

    Deprecated: a str that does not look like a file name is checked as spec text (with
    a DeprecationWarning; use :func:`analyze_text`). ``name`` only applies to that form.
    """
    if isinstance(path, str) and not looks_like_path(path):
        _deprecated("analyze", "analyze_text")
        return analyze_text(path, name=name or "<string>")
    return _check(load_path(path))


def analyze_text(text: Union[str, bytes], *, name: str = "<string>") -> tuple[Optional[Spec], list[Diagnostic]]:
    """Parse and check spec text (or UTF-8 bytes); ``name`` is its file name in diagnostics.

    Includes in the text resolve next to ``name`` when it is a path, else in the cwd.
    """
    if isinstance(text, bytes):
        text, diagnostics = decode_spec_bytes(text, name)
        if text is None:
            return None, diagnostics
    return _check(load_text(text, name))


def load_spec(path: PathLike, *, name: Optional[str] = None) -> Spec:
    """Load a spec file; raises :class:`SpecError` listing every problem.

    Deprecated: spec text (a str that does not look like a file name, or bytes) still
    loads, with a DeprecationWarning; use :func:`loads_spec`. ``name`` only applies to it.
    """
    if isinstance(path, bytes) or (isinstance(path, str) and not looks_like_path(path)):
        _deprecated("load_spec", "loads_spec")
        return loads_spec(path, name=name or "<string>")
    return _raise_on_error(analyze(path))


def loads_spec(text: Union[str, bytes], *, name: str = "<string>") -> Spec:
    """Load a spec from its text (or UTF-8 bytes); raises :class:`SpecError` listing every problem."""
    return _raise_on_error(analyze_text(text, name=name))


def _raise_on_error(result: tuple[Optional[Spec], list[Diagnostic]]) -> Spec:
    spec, diagnostics = result
    if diagnostics or spec is None:
        raise SpecError(diagnostics)
    return spec


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old}() with spec text is deprecated; call {new}(text) instead "
                  f"({old} takes a path)", DeprecationWarning, stacklevel=3)


def looks_like_path(source: Union[str, os.PathLike]) -> bool:
    """Whether a str names a file rather than holding spec text (the rule of the deprecated forms).

    A Path is a file; a str is spec text unless it reads as a file name. Text that starts
    with a statement keyword is always text (``include paper.glora`` is a one-line spec
    with a mistake in it, not a file name).
    """
    if not isinstance(source, str):
        return True
    if "\n" in source or "{" in source or '"' in source or _KEYWORD_THEN_SPACE.match(source):
        return False
    return source.endswith(".glora") or os.path.exists(source)


_KEYWORD_THEN_SPACE = re.compile(r"\s*(?:" + "|".join(KEYWORDS) + r")(?:\s|$)")
