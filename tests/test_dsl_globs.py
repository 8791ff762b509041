"""Layer-name globs (glorac/selectors.py): the table in docs/language.md, a reference
matcher compared on random patterns and names, and no pathological slowness."""

from __future__ import annotations

import fnmatch
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glorac.selectors import GlobError, compile_glob, matches, matches_any

TABLE = [
    ("blocks.*.attn.qkv", "blocks.0.attn.qkv", True),
    ("blocks.*.attn.qkv", "blocks.0.attn.proj", False),
    ("blocks.*.attn.qkv", "blocks.0.1.attn.qkv", False),  # `*` stays within a segment
    ("proj", "patch_embed.proj", False),  # whole names, never a suffix
    ("proj", "proj", True),
    ("**.fc1", "fc1", True),  # `**` may be no segment at all
    ("**.fc1", "blocks.3.mlp.fc1", True),
    ("blocks.**", "blocks", True),
    ("blocks.**", "blocks.1.x", True),
    ("blocks.**", "blocksX.1", False),
    ("**", "anything.at.all", True),
    ("a.**.b", "a.b", True),
    ("a.**.b", "a.x.y.b", True),
    ("a.**.b", "a.x.y.c", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("a?c", "a.c", False),
    ("blocks.[0-5].mlp.fc1", "blocks.5.mlp.fc1", True),
    ("blocks.[0-5].mlp.fc1", "blocks.6.mlp.fc1", False),
    ("blocks.[0-5].mlp.fc1", "blocks.05.mlp.fc1", False),  # decimal index, as written
    ("blocks.[0,2,8-11].x", "blocks.10.x", True),
    ("blocks.[0,2,8-11].x", "blocks.7.x", False),
    ("layer[1-3].conv", "layer2.conv", True),
    ("layer[1-3].conv", "layer4.conv", False),
    ("attn.{qkv,proj}", "attn.proj", True),
    ("attn.{qkv,proj}", "attn.qk", False),
    ("**.attn.{q,k,v}_proj", "model.layers.0.self_attn.q_proj", False),
    ("**.self_attn.{q,k,v}_proj", "model.layers.0.self_attn.k_proj", True),
    ("*", "a.b", False),
    ("stages.*.blocks.*.mlp.fc1", "stages.1.blocks.2.mlp.fc1", True),
]


@pytest.mark.parametrize("pattern, name, expected", TABLE)
def test_glob_table(pattern, name, expected):
    assert matches(pattern, name) is expected


def test_matches_any():
    assert matches_any(["a", "b.*"], "b.c")
    assert not matches_any(["a", "b.*"], "c")
    assert not matches_any([], "a")


def test_glob_error_offsets_point_at_the_problem():
    for pattern, offset in [("a..b", 2), ("blocks.[5-2]", 7), ("a.b**", 3), ("x.{a,}", 2),
                            ("x.y/z", 3), ("", 0), ("q.[0-1", 2), ("ab]", 2)]:
        with pytest.raises(GlobError) as err:
            compile_glob(pattern)
        assert err.value.offset == offset, (pattern, str(err.value))


def test_many_double_stars_do_not_backtrack_exponentially():
    # A backtracking matcher needs ~26^12 steps here (the test would never finish).
    name = ".".join("abcdefghijklmnopqrstuvwxyz")
    for pattern in [".".join(["**"] * 12 + ["zzz"]), ".".join(["**", "*"] * 12 + ["zzz"])]:
        assert not matches(pattern, name)


# ---------------------------------------------------------------- a reference matcher


def _expand(segment: str) -> list[str]:
    """All fnmatch patterns (only * and ?) a glob segment stands for."""
    parts: list[list[str]] = []
    for token in re.split(r"(\[[^\]]*\]|\{[^}]*\})", segment):
        if token.startswith("["):
            numbers = []
            for rng in token[1:-1].split(","):
                lo, _, hi = rng.partition("-")
                numbers += [str(i) for i in range(int(lo), int(hi or lo) + 1)]
            parts.append(numbers)
        elif token.startswith("{"):
            parts.append(token[1:-1].split(","))
        else:
            parts.append([token])
    return ["".join(p) for p in itertools.product(*parts)]


def reference_match(pattern: str, name: str) -> bool:
    pats, names = pattern.split("."), name.split(".")

    def go(i: int, j: int) -> bool:
        if i == len(pats):
            return j == len(names)
        if pats[i] == "**":
            return any(go(i + 1, k) for k in range(j, len(names) + 1))
        return j < len(names) and any(
            fnmatch.fnmatchcase(names[j], p) for p in _expand(pats[i])
        ) and go(i + 1, j + 1)

    return go(0, 0)


WORDS = ["blocks", "attn", "qkv", "proj", "fc1", "0", "1", "5", "11", "layer2", "x-y", "a:b"]
pattern_segments = st.one_of(
    st.sampled_from(WORDS + ["*", "**", "?", "fc?", "*1", "layer[1-3]", "[0-5]", "[0,11]",
                             "{qkv,proj}", "{0,1}1", "*[1-2]", "b*s"]),
)
name_segments = st.sampled_from(WORDS + ["fc2", "layer3", "blocks1", "bs", "51"])


@settings(deadline=None, max_examples=400)
@given(
    st.lists(pattern_segments, min_size=1, max_size=5).map(".".join),
    st.lists(name_segments, min_size=1, max_size=6).map(".".join),
)
def test_matches_agrees_with_reference(pattern, name):
    assert matches(pattern, name) == reference_match(pattern, name)
