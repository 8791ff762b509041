"""The .glora spec language: read (files, loader), parse (parser), check and lower to IR
(analyze, with its passes in spaces, rules and singletons), print (printer)."""

from .analyze import analyze, analyze_text, load_spec, loads_spec
from .files import read_spec_file
from .parser import parse_text
from .printer import format_module

__all__ = [
    "analyze",
    "analyze_text",
    "load_spec",
    "loads_spec",
    "parse_text",
    "read_spec_file",
    "format_module",
    "format_source",
]


def format_source(text: str, file: str = "<string>") -> str:
    """The canonical form of spec text; raises SpecError when the text does not check.

    Only syntax matters for printing, but a file that does not check is refused so that
    fmt never has to guess what a broken statement meant.
    """
    from ..errors import SpecError

    module, diagnostics = parse_text(text, file)
    if not diagnostics:
        _, diagnostics = analyze_text(text, name=file)
    if diagnostics:
        raise SpecError(diagnostics)
    return format_module(module)
