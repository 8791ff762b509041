"""Globs over dotted module names (``blocks.*.attn.qkv``, ``blocks.[0-5].mlp.*``, ``**``).

A pattern is matched against the *whole* qualified name, segment by segment (never as a
suffix: ``proj`` does not hit ``patch_embed.proj``). Per segment:

* ``*`` any run of characters within one segment, ``?`` one character;
* ``[0-5]`` / ``[0-3,7,10-11]`` a decimal integer in the listed ranges (the whole
  segment, or a part of it, e.g. ``layer[1-3]``);
* ``{qkv,proj}`` one of the listed alternatives;
* ``**`` as a whole segment: any number of segments, including none.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable


class GlobError(ValueError):
    """An invalid pattern; ``offset`` is the 0-based character where the problem is."""

    def __init__(self, message: str, offset: int, hint: str | None = None):
        super().__init__(message)
        self.offset = offset
        self.hint = hint


_INT_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


def _int_alternatives(body: str, offset: int) -> str:
    if not _INT_LIST.fullmatch(body):
        raise GlobError(
            f"`[{body}]` is not an index range",
            offset,
            "brackets hold integer ranges such as [0-5] or [0,2,4-7]",
        )
    numbers: list[str] = []
    for part in body.split(","):
        lo, _, hi = part.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
        if lo_i > hi_i:
            raise GlobError(f"empty range `{part}`", offset, f"write [{hi_i}-{lo_i}]")
        if hi_i - lo_i > 100_000:
            raise GlobError(f"range `{part}` is too large", offset)
        numbers.extend(str(i) for i in range(lo_i, hi_i + 1))
    return "(?:" + "|".join(numbers) + ")"


def _segment_regex(seg: str, offset: int) -> str:
    out, i = [], 0
    while i < len(seg):
        ch = seg[i]
        if ch == "*":
            if seg[i : i + 2] == "**":
                raise GlobError(
                    "`**` must be a whole segment", offset + i, "write `a.**.b`, not `a**`"
                )
            out.append("[^.]*")
        elif ch == "?":
            out.append("[^.]")
        elif ch in "[{":
            close = "]" if ch == "[" else "}"
            end = seg.find(close, i)
            if end < 0:
                raise GlobError(f"`{ch}` is never closed", offset + i, f"add `{close}`")
            body = seg[i + 1 : end]
            if ch == "[":
                out.append(_int_alternatives(body, offset + i))
            else:
                alts = body.split(",")
                if not all(alts):
                    raise GlobError("empty alternative in `{...}`", offset + i)
                out.append("(?:" + "|".join(re.escape(a) for a in alts) + ")")
            i = end
        elif ch in "]}":
            raise GlobError(f"unmatched `{ch}`", offset + i)
        elif not (ch.isalnum() or ch in "_-:"):
            raise GlobError(
                f"character `{ch}` cannot appear in a module name",
                offset + i,
                "names are dotted Python identifiers or indices, e.g. blocks.0.attn.qkv",
            )
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a pattern; raises :class:`GlobError` pointing at the offending character."""
    if not pattern:
        raise GlobError("empty pattern", 0, 'use "**" to mean every layer')
    parts: list[str] = []
    offset = 0
    # Braces may hold commas but never dots, so splitting on '.' is safe.
    for seg in pattern.split("."):
        if not seg:
            raise GlobError("empty name segment (`..`, or a leading/trailing dot)", offset)
        # Each segment consumes its own leading dot, which lets `**` match zero segments.
        parts.append(r"(?:\.[^.]+)*" if seg == "**" else r"\." + _segment_regex(seg, offset))
        offset += len(seg) + 1
    return re.compile("^" + "".join(parts) + "$")


def matches(pattern: str, qualname: str) -> bool:
    return compile_glob(pattern).match("." + qualname) is not None


def matches_any(patterns: Iterable[str], qualname: str) -> bool:
    return any(matches(p, qualname) for p in patterns)
