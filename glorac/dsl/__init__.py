"""The .glora spec language: parse (parser), check and lower to IR (analyze), print (printer)."""

from .analyze import analyze, load_spec
from .parser import parse_text, read_spec_file
from .printer import format_module

__all__ = ["analyze", "load_spec", "parse_text", "read_spec_file", "format_module", "format_source"]


def format_source(text: str, file: str = "<string>") -> str:
    """The canonical form of spec text; raises SpecError when the text does not check.

    Only syntax matters for printing, but a file that does not check is refused so that
    fmt never has to guess what a broken statement meant.
    """
    from ..errors import SpecError

    module, diagnostics = parse_text(text, file)
    if not diagnostics:
        _, diagnostics = analyze(text, name=file)
    if diagnostics:
        raise SpecError(diagnostics)
    return format_module(module)
