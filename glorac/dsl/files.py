"""Spec files and bytes → text: the one place the spec front end reads the file system.

Every file-level problem (missing, a directory, too large, binary, not UTF-8) becomes a
diagnostic, so that a bad file is reported like any other mistake in a spec.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import Diagnostic
from .parser import MAX_SPEC_BYTES


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
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows editors)
        data = data[3:]
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

