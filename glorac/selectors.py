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


def _name_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_-:"


def _bad_char(ch: str, offset: int) -> GlobError:
    return GlobError(
        f"character `{ch}` cannot appear in a module name",
        offset,
        "names are dotted Python identifiers or indices, e.g. blocks.0.attn.qkv",
    )


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
                for j, c in enumerate(body):  # alternatives are literal names
                    if c != "," and not _name_char(c):
                        raise _bad_char(c, offset + i + 1 + j)
                out.append("(?:" + "|".join(re.escape(a) for a in alts) + ")")
            i = end
        elif ch in "]}":
            raise GlobError(f"unmatched `{ch}`", offset + i)
        elif not _name_char(ch):
            raise _bad_char(ch, offset + i)
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


class Glob:
    r"""A compiled pattern: one matcher per segment, ``None`` for ``**``.

    Matching walks the name's segments with the set of reachable pattern positions
    (O(segments × pattern)), so no pattern can make it backtrack exponentially, as a
    single regex with several ``(?:\.[^.]+)*`` groups (``**.**.**.x``) would.
    """

    __slots__ = ("pattern", "_segments")

    def __init__(self, pattern: str, segments: tuple):
        self.pattern = pattern
        self._segments = segments

    def match(self, qualname: str) -> bool:
        names = qualname.split(".")
        n = len(names)
        reach = {0}  # how many name segments the pattern so far can have consumed
        for seg in self._segments:
            if seg is None:  # `**`: any number of segments, including none
                reach = set(range(min(reach), n + 1))
            else:
                reach = {i + 1 for i in reach if i < n and seg(names[i])}
            if not reach:
                return False
        return n in reach

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


@functools.lru_cache(maxsize=4096)
def _segment_matcher(regex: str):
    return re.compile(regex).fullmatch


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    """Compile a pattern; raises :class:`GlobError` pointing at the offending character."""
    if not pattern:
        raise GlobError("empty pattern", 0, 'use "**" to mean every layer')
    segments: list = []
    offset = 0
    # Braces may hold commas but never dots, so splitting on '.' is safe.
    for seg in pattern.split("."):
        if not seg:
            raise GlobError("empty name segment (`..`, or a leading/trailing dot)", offset)
        if seg == "**":
            if not segments or segments[-1] is not None:  # `**.**` is the same as `**`
                segments.append(None)
        else:
            regex = _segment_regex(seg, offset)
            if regex == re.escape(seg):  # a plain name: compare, no regex needed
                segments.append(seg.__eq__)
            else:
                segments.append(_segment_matcher(regex))
        offset += len(seg) + 1
    return Glob(pattern, tuple(segments))


def matches(pattern: str, qualname: str) -> bool:
    return compile_glob(pattern).match(qualname)


def matches_any(patterns: Iterable[str], qualname: str) -> bool:
    return any(matches(p, qualname) for p in patterns)
