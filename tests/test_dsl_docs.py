"""The examples in docs/language.md are real: every ```glora block checks.

A block may list alternatives of a once-per-file setting (`budget 0.86M` and
`budget 1.2M including head`); such a block is checked one statement at a time. Blocks
that use the paper's space without defining it get `specs/paper.glora` included.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from glorac import loads_spec
from glorac.dsl import analyze_text, format_source
from glorac.dsl.parser import _STATEMENT_START

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```glora\n(.*?)```", DOC, flags=re.S)
# Checked as if written next to the reference specs, so `include "paper.glora"` resolves.
AS_IF = str(ROOT / "specs" / "doc-example.glora")


def with_paper(text: str) -> str:
    if re.search(r"\bwith paper\b", text) and "space paper" not in text and "include" not in text:
        return 'include "paper.glora"\n' + text
    return text


def statements(text: str) -> list[str]:
    """Split a block into its statements (each starts a line with a keyword)."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _STATEMENT_START.match(line)]
    return ["\n".join(lines[a:b]) for a, b in zip(starts, starts[1:] + [len(lines)])]


def test_doc_has_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_doc_block_checks(block):
    spec, diags = analyze_text(with_paper(block), name=AS_IF)
    if diags and all("already set in this file" in d.message for d in diags):
        for stmt in statements(block):  # alternatives: each one must check on its own
            _, sub = analyze_text(with_paper(stmt), name=AS_IF)
            assert not sub, "\n".join(d.render() for d in sub) + "\n---\n" + stmt
        return
    assert not diags, "\n".join(d.render() for d in diags) + "\n---\n" + block
    assert format_source(with_paper(block), AS_IF)  # and prints


INLINE_SPACES = re.findall(r"`(space [^`]*\})`", DOC)


@pytest.mark.parametrize("text", INLINE_SPACES)
def test_inline_space_examples_check(text):
    loads_spec(text)


def test_doc_claim_omitted_tensors_print_as_none():
    out = format_source("space s { B: lora(8) }")
    assert [line.strip() for line in out.splitlines()[1:-1]] == [
        "A: none",
        "B: lora(8)",
        "C: none",
        "D: none",
        "E: none",
    ]


def test_doc_claim_settings_defaults_match_the_ir():
    """The settings block in the doc lists the defaults; the IR must agree."""
    block = next(b for b in BLOCKS if b.lstrip().startswith("search {"))
    spec, default = loads_spec(block), loads_spec("")
    assert spec.search == default.search
    # grad_clip and head_lr are shown with a value but are absent by default
    assert default.training.grad_clip is None and spec.training.grad_clip == 1.0
    assert default.training.head_lr is None and spec.training.head_lr == 1e-3
    assert spec.training.model_copy(update={"grad_clip": None, "head_lr": None}) == default.training
