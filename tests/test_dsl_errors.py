"""Every kind of mistake in a .glora spec: where it is reported, what it says, the hint.

Each case is an invalid spec with the expected position (1-based line and column), a
fragment of the message and, where the language reference promises one, a fragment of
the hint. A case must produce exactly one diagnostic unless it says otherwise: a single
mistake that cascades into several complaints is itself a bug.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from glorac import SpecError, load_spec, loads_spec
from glorac.dsl import analyze, analyze_text

PAPER = "space paper(r=8) { A: lora(r) | vector | scalar | none  B: lora(r) | none }\n"
SPACES = PAPER + "space lr(r) { B: lora(r) }\nspace two(a=2, b=4) { A: lora(a)  B: lora(b) }\n"
S = "space s { B: lora(4) }\n"


def case(id, text, line, col, message, hint=None, count=1):
    return pytest.param(text, line, col, message, hint, count, id=id)


CASES = [
    # ------------------------------------------------------------ syntax
    case("missing-with", S + 'adapt "a" s', 2, 11, "unexpected `s`", "`with`"),
    case("missing-brace-space", "space s {\n    B: lora(4)\n\nadapt \"a\" with s", 1, 9,
         "`{` is never closed", "matching `}`"),
    case("missing-brace-settings", "search {\n    seed = 1\n", 1, 8, "`{` is never closed"),
    case("missing-brace-inline", 'adapt "a" with {\n  B: lora(4)\n', 1, 16, "`{` is never closed"),
    case("brace-in-glob-not-a-block", 'adapt "a.{b" with', 1, 18, "statement ends too early",
         "a name"),
    case("unexpected-token", "budget 1M 2M", 1, 11, "unexpected `2M`"),
    case("extra-closing-brace", S + "}", 2, 1, "unexpected `}`", "a statement starts with"),
    case("misspelt-adapt", S + 'adpat "a" with s', 2, 1, "unknown statement `adpat`",
         "did you mean `adapt`?"),
    case("misspelt-train", 'trian "head"', 1, 1, "unknown statement `trian`",
         "did you mean `train`?"),
    case("misspelt-budget-after-valid", S + "budgte 1M\nbias add", 2, 1,
         "unknown statement `budgte`", "did you mean `budget`?"),
    case("unknown-word", "frobnicate 3", 1, 1, "unknown statement `frobnicate`",
         "a statement starts with one of: model, include"),
    case("single-quotes", S + "adapt 'a' with s", 2, 7, "unexpected character `'`",
         "double quotes"),
    case("unclosed-string", S + 'adapt "a with s', 2, 7, "string is never closed", '`"`'),
    case("stray-dollar", "budget 1M $", 1, 11, "unexpected character `$`"),
    case("invisible-no-break-space", "bias\u00a0add", 1, 5, "unexpected character U+00A0",
         "invisible character"),
    case("stray-semicolon-in-block", "space s {\n  B: lora(4) ;\n}", 2, 14,
         "unexpected character `;`", "`}`"),
    case("ends-too-early-with", S + 'adapt "a" with', 2, 15, "statement ends too early",
         "a name"),
    case("ends-too-early-budget", "budget", 1, 7, "statement ends too early", "a number"),
    case("ends-too-early-type", S + 'exclude "a" type  # comment', 2, 17,
         "statement ends too early", "a name"),
    case("keyword-glued-to-name", S + 'adapt "a" withs', 2, 11, "unexpected `withs`",
         "did you mean `with`?"),
    case("keyword-glued-statement", "biasadd", 1, 1, "unknown statement `biasadd`",
         "did you mean `bias`?"),
    case("keyword-glued-including", "budget 1M includinghead", 1, 11,
         "unexpected `includinghead`", "did you mean `including`?"),
    case("misspelt-clause-keyword", 'exclude "a" tpye Linear', 1, 13, "unexpected `tpye`",
         "did you mean `type`?"),
    case("word-after-complete-statement", "budget 1M frob", 1, 11, "unexpected `frob`",
         "`including` or a new statement"),
    case("include-unquoted", "include paper.glora", 1, 9, "unexpected `paper.glora`",
         '"paper.glora"'),
    case("empty-rank-list", "space s { A: lora() }", 1, 19, "unexpected `)`", "a number"),
    # ------------------------------------------------------------ kinds and ranks
    case("unknown-kind", "space s { A: vectr }", 1, 14, "unknown kind `vectr`",
         "did you mean `vector`?"),
    case("unknown-kind-far", "space s { A: matrix }", 1, 14, "unknown kind `matrix`",
         "lora, none, scalar, vector"),
    case("C-scalar", "space s { C: scalar }", 1, 14, "`scalar` is not allowed for C",
         "C may be: lora, vector, none"),
    case("D-lora", "space s {\n  D: vector | lora(4)\n}", 2, 15, "`lora` is not allowed for D",
         "D may be: vector, scalar, none"),
    case("E-lora", "space s { E: lora(2) }", 1, 14, "`lora` is not allowed for E"),
    case("lora-without-rank", "space s { A: lora }", 1, 14, "`lora` needs a rank", "lora(8)"),
    case("rank-zero", "space s { A: lora(0) }", 1, 19, "invalid rank 0", "≥ 1"),
    case("rank-negative", "space s { B: lora(-2) }", 1, 19, "invalid rank -2", "≥ 1"),
    case("rank-fraction", "space s { B: lora(2.5) }", 1, 19, "must be an integer, not `2.5`"),
    case("rank-with-unit", "space s { B: lora(4K) }", 1, 19, "plain integer"),
    case("rank-in-list-zero", "space s { B: lora(2|0|8) }", 1, 21, "invalid rank 0"),
    case("rank-listed-twice", "space s { B: lora(4|8|4) }", 1, 23, "rank `4` is listed twice"),
    case("vector-with-rank", "space s { E: vector(4) }", 1, 14, "`vector` takes no rank",
         "write `vector`"),
    case("scalar-with-rank", "space s { A: scalar(1|2) }", 1, 14, "`scalar` takes no rank"),
    case("unknown-tensor", "space s { F: vector }", 1, 11, "unknown support tensor `F`",
         "A, B, C, D and E"),
    case("lower-case-tensor", "space s { b: vector }", 1, 11, "unknown support tensor `b`",
         "upper case: `B`"),
    case("duplicate-tensor", "space s {\n  A: vector\n  A: scalar\n}", 3, 3,
         "tensor `A` is declared twice", "first declared at line 2"),
    case("duplicate-kind", "space s { A: vector | scalar | vector }", 1, 32,
         "`vector` is listed twice for A"),
    case("inline-space-bad-kind", 'adapt "a" with { C: scalar }', 1, 21,
         "`scalar` is not allowed for C"),
    # ------------------------------------------------------------ spaces and arguments
    case("duplicate-space", "space s { A: vector }\n\nspace s { B: vector }", 3, 7,
         "space `s` is defined twice", "first defined at <string>:1"),
    case("unknown-space-close", PAPER + 'adapt "a" with papr', 2, 16,
         "space `papr` is not defined", "did you mean `paper`?"),
    case("unknown-space-list", SPACES + 'adapt "a" with zzz', 4, 16,
         "space `zzz` is not defined", "lr, paper, two"),
    case("unknown-space-none-defined", 'adapt "a" with s', 1, 16, "space `s` is not defined",
         "define it with `space NAME"),
    case("unknown-parameter", PAPER + 'adapt "a" with paper(q=3)', 2, 22,
         "space `paper` has no parameter `q`", "r"),
    case("parameter-on-plain-space", S + 'adapt "a" with s(r=3)', 2, 18,
         "has no parameter `r`", "it takes none"),
    case("too-many-positional", PAPER + 'adapt "a" with paper(3, 4)', 2, 25,
         "takes 1 parameter(s)", "parameters: r"),
    case("missing-value", SPACES + 'adapt "a" with lr', 4, 16,
         "space `lr` needs a value for `r`", "lr(r=8)"),
    case("missing-value-empty-args", SPACES + 'adapt "a" with lr()', 4, 16,
         "needs a value for `r`"),
    case("positional-after-named", SPACES + 'adapt "a" with two(a=3, 4)', 4, 25,
         "positional argument after a named one"),
    case("duplicate-named-argument", SPACES + 'adapt "a" with two(a=3, a=4)', 4, 27,
         "parameter `a` is given twice"),
    case("positional-then-same-named", SPACES + 'adapt "a" with two(3, a=4)', 4, 25,
         "parameter `a` is given twice"),
    case("argument-rank-zero", PAPER + 'adapt "a" with paper(r=0)', 2, 24, "invalid rank 0"),
    case("rank-name-not-parameter", "space s(r=8) { A: lora(q) }", 1, 24,
         "rank `q` is not a parameter of this space", "parameters: r"),
    case("rank-name-no-parameters", "space s { A: lora(r) }", 1, 19,
         "rank `r` is not a parameter", "declare it"),
    case("parameter-declared-twice", "space s(r=8, r=4) { A: lora(r) }", 1, 14,
         "parameter `r` is listed twice"),
    case("parameter-default-zero", "space s(r=0) { A: lora(r) }", 1, 11, "invalid rank 0"),
    # ------------------------------------------------------------ globs
    case("glob-empty-range", S + 'adapt "blocks.[5-2].x" with s', 2, 15, "empty range `5-2`",
         "[2-5]"),
    case("glob-letters-in-brackets", S + 'adapt "blocks.[a-b].x" with s', 2, 15,
         "`[a-b]` is not an index range", "[0-5]"),
    case("glob-unclosed-bracket", S + 'adapt "blocks.[0-5.x" with s', 2, 15,
         "`[` is never closed", "`]`"),
    case("glob-unclosed-brace", S + 'adapt "attn.{qkv,proj" with s', 2, 13,
         "`{` is never closed", "`}`"),
    case("glob-empty-segment", S + 'adapt "a..b" with s', 2, 10, "empty name segment"),
    case("glob-leading-dot", S + 'adapt ".a" with s', 2, 8, "empty name segment"),
    case("glob-double-star-inside", S + 'adapt "a**" with s', 2, 9,
         "`**` must be a whole segment", "a.**.b"),
    case("glob-illegal-char", S + 'adapt "a/b" with s', 2, 9, "character `/` cannot appear"),
    case("glob-space", S + 'adapt "blocks.0 .qkv" with s', 2, 16, "character ` ` cannot appear"),
    case("glob-empty", S + 'adapt "" with s', 2, 8, "empty pattern", '"**"'),
    case("glob-empty-alternative", S + 'adapt "a.{x,}" with s', 2, 10, "empty alternative"),
    case("glob-bad-char-in-alternative", S + 'adapt "a.{q*,k}" with s', 2, 12,
         "character `*` cannot appear"),
    case("glob-unmatched-close", S + 'adapt "a]" with s', 2, 9, "unmatched `]`"),
    case("glob-in-except", 'exclude "**" except "blocks.[x]"', 1, 29, "not an index range"),
    case("glob-in-train", 'train "he/ad"', 1, 10, "character `/` cannot appear"),
    case("glob-second-pattern", S + 'adapt "a", "b..c" with s', 2, 15, "empty name segment"),
    # ------------------------------------------------------------ rules
    case("unknown-type-close", S + 'adapt "a" type Linaer with s', 2, 16,
         "unknown layer type `Linaer`", "did you mean `Linear`?"),
    case("unknown-type-list", S + 'exclude "a" type Linear | Dense', 2, 27,
         "unknown layer type `Dense`", "Conv1x1, Conv2d, Linear"),
    case("all-none-space", "space z { A: none }\nadapt \"a\" with z", 2, 16,
         "allows only `none` for every tensor", "exclude"),
    case("all-none-inline", 'adapt "a" with { }', 1, 16, "allows only `none`", "exclude"),
    # ------------------------------------------------------------ budget
    case("budget-unknown-unit", "budget 5X", 1, 8, "unknown unit `X`", "K (thousand)"),
    case("budget-zero", "budget 0", 1, 8, "at least 1 parameter"),
    case("budget-negative", "budget -3K", 1, 8, "at least 1 parameter"),
    case("budget-fraction", "budget 1.5", 1, 8, "not a whole number of parameters"),
    case("budget-fraction-with-unit", "budget 1.0000001K", 1, 8, "not a whole number"),
    case("budget-huge", "budget 1e400", 1, 8, "too large"),
    case("budget-including-other", "budget 0.5K including tail", 1, 23,
         "unknown budget option `tail`", "including head"),
    # ------------------------------------------------------------ bias
    case("bias-unknown", "bias keep", 1, 6, "unknown bias policy `keep`", "add, preserve"),
    case("bias-misspelt", "bias presrve", 1, 6, "unknown bias policy", "did you mean `preserve`?"),
    # ------------------------------------------------------------ settings
    case("setting-unknown", "search {\n    populaton = 3\n}", 2, 5,
         "unknown search setting `populaton`", "did you mean `population`?"),
    case("setting-wrong-block", "search { epochs = 3 }", 1, 10, "unknown search setting `epochs`",
         "training setting"),
    case("setting-string-for-number", 'search { population = "3" }', 1, 23,
         "`population` expects a number"),
    case("setting-name-for-number", "training { lr = fast }", 1, 17, "`lr` expects a number"),
    case("setting-number-for-name", "training { schedule = 3 }", 1, 23,
         "`schedule` expects a name"),
    case("setting-bad-choice", "training { schedule = cosin }", 1, 23,
         "`cosin` is not a valid `schedule`", "did you mean `cosine`?"),
    case("setting-int-fraction", "training { batch_size = 1.5 }", 1, 25, "must be an integer"),
    case("setting-mutation-prob", "search { mutation_prob = 2 }", 1, 26, "must be ≤ 1"),
    case("setting-lr-zero", "training { lr = 0 }", 1, 17, "`lr` must be > 0"),
    case("setting-lr-infinite", "training { lr = 1e400 }", 1, 17, "too large"),
    case("setting-population-one", "search { population = 1 }", 1, 23, "must be ≥ 2"),
    case("setting-seed-negative", "search { seed = -1 }", 1, 17, "must be ≥ 0"),
    case("setting-seed-huge", "search { seed = 99999999999999999999999 }", 1, 17, "too large"),
    case("parents-over-population", "search {\n  population = 8\n  parents = 9\n}", 3, 13,
         "parents (9) exceed the population (8)"),
    case("default-parents-over-population", "search { population = 5 }", 1, 23,
         "parents (10) exceed the population (5)"),
    case("warmup-equals-epochs", "training { epochs = 5 warmup_epochs = 5 }", 1, 39,
         "warm-up (5 epochs) must be shorter than training (5)", "warmup_epochs"),
    case("warmup-over-default-epochs", "training { warmup_epochs = 900 }", 1, 28,
         "must be shorter than training (500)"),
    # ------------------------------------------------------------ singletons
    case("budget-twice", "budget 1M\nbudget 2M", 2, 1, "`budget` is already set in this file",
         "first set at line 1"),
    case("bias-twice", "bias add\n\nbias add", 3, 1, "`bias` is already set"),
    case("model-twice", "model a\nmodel b", 2, 1, "`model` is already set"),
    case("setting-twice-one-block", "search {\n  seed = 1\n  seed = 2\n}", 3, 3,
         "`search.seed` is already set", "first set at line 2"),
    case("setting-twice-two-blocks", "training { lr = 1e-3 }\ntraining { lr = 1e-3 }", 2, 12,
         "`training.lr` is already set"),
    case("empty-model", 'model ""', 1, 1, "empty model name"),
    case("blank-model", 'model "   "', 1, 1, "empty model name"),
    case("include-missing", 'include "no_such_file.glora"', 1, 9,
         "cannot include `no_such_file.glora`: no such file", "relative to the including file"),
]


def diagnostics_of(text: str):
    spec, diags = analyze_text(text)
    assert (spec is None) == bool(diags), "a spec must be returned exactly when there is no error"
    return diags


@pytest.mark.parametrize("text, line, col, message, hint, count", CASES)
def test_error(text, line, col, message, hint, count):
    diags = diagnostics_of(text)
    shown = "\n".join(d.render() for d in diags)
    assert len(diags) == count, shown
    d = diags[0]
    assert (d.line, d.column) == (line, col), shown
    assert message in d.message, shown
    if hint is not None:
        assert d.hint is not None and hint in d.hint, shown
    # Every diagnostic carries its source line, and the span stays on that line.
    assert d.source_line == text.split("\n")[line - 1]
    assert d.end_column is None or d.end_column > d.column
    with pytest.raises(SpecError) as err:
        loads_spec(text)
    assert err.value.diagnostics == tuple(diags)


def test_table_is_large():
    assert len(CASES) >= 45


def test_many_errors_reported_together_sorted():
    text = "\n".join(
        [
            "space s { A: vectr }",  # 1 unknown kind
            "space t { C: scalar }",  # 2 kind not allowed
            'adapt "a..b" with t',  # 3 bad glob
            "adpat x",  # 4 misspelt keyword (syntax)
            'adapt "x" type Dense with s',  # 5 unknown layer type
            "budget 5X",  # 6 unknown unit
            "bias keep",  # 7 unknown policy
            "search {",
            "    populaton = 3",  # 9 unknown setting
            "    mutation_prob = 2",  # 10 out of range
            "}",
            "training { lr = 0 }",  # 12
            "budget 1M",  # 13 budget twice
            "space s { B: vector }",  # 14 duplicate space
            "exclude 'q'",  # 15 single quotes (syntax)
        ]
    )
    diags = diagnostics_of(text)
    lines = [d.line for d in diags]
    assert lines == sorted(lines)
    assert lines == [1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13, 14, 15], "\n".join(
        d.render() for d in diags
    )
    with pytest.raises(SpecError) as err:
        loads_spec(text)
    assert len(err.value.diagnostics) == 13
    assert err.value.render().endswith("13 errors found")


def test_one_bad_statement_does_not_hide_the_next():
    text = S + 'adapt "a" wth s\nadapt "b" with s\nadapt "c" with nope\n'
    diags = diagnostics_of(text)
    # The syntax error is reported; "nope" is muted because a syntax error might be
    # where it was defined, but nothing else cascades from the broken line.
    assert [(d.line, d.column) for d in diags] == [(2, 11)]


def test_statement_may_continue_on_a_line_starting_with_a_word():
    """Newlines are insignificant: a clause may start its own line with any word."""
    text = (
        S
        + 'adapt "a" type Linear |\n    Conv2d with\n    s\n'
        + "bias\n  add\nbudget 1M including\n  head\n"
        + "space two(a=2,\n    b=4) { A: lora(a) }\nmodel\n  vit_base\n"
    )
    spec = loads_spec(text)
    assert spec.rules[0].selector.types == ("Linear", "Conv2d")
    assert spec.rules[0].space_name == "s"
    assert spec.bias == "add"
    assert spec.budget.include_trained
    assert spec.model == "vit_base"


# ---------------------------------------------------------------- files and includes


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def only(diags):
    assert len(diags) == 1, "\n".join(d.render() for d in diags)
    return diags[0]


def test_include_cycle(tmp_path):
    a = write(tmp_path / "a.glora", 'include "b.glora"\nspace s { B: lora(4) }\n')
    write(tmp_path / "b.glora", '# b\ninclude "a.glora"\nadapt "x" with s\n')
    d = only(analyze(a)[1])
    assert d.file == str(tmp_path / "b.glora")
    assert (d.line, d.column) == (2, 9)
    assert "include cycle: a.glora → b.glora → a.glora" in d.message


def test_include_self(tmp_path):
    a = write(tmp_path / "a.glora", 'include "./a.glora"\n')
    d = only(analyze(a)[1])
    assert "include cycle" in d.message and (d.line, d.column) == (1, 9)


def test_diamond_include_is_read_once(tmp_path):
    write(tmp_path / "base.glora", "space s { B: lora(4) }\n")
    write(tmp_path / "l.glora", 'include "base.glora"\n')
    write(tmp_path / "r.glora", 'include "base.glora"\n')
    top = write(tmp_path / "top.glora", 'include "l.glora"\ninclude "r.glora"\nadapt "x" with s\n')
    spec = load_spec(top)
    assert [os.path.basename(f) for f in spec.files] == [
        "top.glora",
        "l.glora",
        "base.glora",
        "r.glora",
    ]


def test_include_of_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    top = write(tmp_path / "top.glora", 'include "sub"\n')
    d = only(analyze(top)[1])
    assert "cannot include `sub`: is a directory" in d.message


def test_errors_in_included_file_point_into_it(tmp_path):
    write(tmp_path / "inc.glora", "# header\nspace s { C: scalar }\n")
    top = write(tmp_path / "top.glora", 'include "inc.glora"\nbudget 5X\n')
    diags = analyze(top)[1]
    assert [(os.path.basename(d.file), d.line, d.column) for d in diags] == [
        ("top.glora", 2, 8),
        ("inc.glora", 2, 14),
    ]


def test_including_file_wins_and_cross_check_points_at_the_winner(tmp_path):
    write(tmp_path / "base.glora", "training {\n    epochs = 5\n    warmup_epochs = 2\n}\nbudget 1M\n")
    top = write(tmp_path / "top.glora", 'training {\n    warmup_epochs = 7\n}\ninclude "base.glora"\n')
    d = only(analyze(top)[1])
    assert os.path.basename(d.file) == "top.glora" and (d.line, d.column) == (2, 21)
    assert "warm-up (7 epochs)" in d.message
    ok = write(tmp_path / "ok.glora", 'budget 2M\ninclude "base.glora"\ntraining { warmup_epochs = 3 }\n')
    spec = load_spec(ok)
    assert spec.budget.params == 2_000_000
    assert (spec.training.epochs, spec.training.warmup_epochs) == (5, 3)


def test_check_missing_path(tmp_path):
    d = only(analyze(tmp_path / "nope.glora")[1])
    assert "no such file" in d.message and d.line == 0


def test_check_directory(tmp_path):
    d = only(analyze(tmp_path)[1])
    assert "is a directory" in d.message


def test_invalid_utf8_is_located(tmp_path):
    f = tmp_path / "bad.glora"
    f.write_bytes(b"budget 1M\nbias \xff\n")
    d = only(analyze(f)[1])
    assert (d.line, d.column) == (2, 6) and "UTF-8" in d.message


def test_binary_file(tmp_path):
    f = tmp_path / "bin.glora"
    f.write_bytes(b"\x00\x01\x02budget")
    d = only(analyze(f)[1])
    assert "binary" in d.message


def test_too_large_file(tmp_path):
    f = tmp_path / "big.glora"
    f.write_text("# x\n" * 300_000)
    d = only(analyze(f)[1])
    assert "too large" in d.message


def test_load_spec_takes_a_path_and_loads_spec_takes_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "budget.glora", "bias add\n")  # a file named like a keyword
    assert load_spec("budget.glora").bias == "add"
    assert load_spec(Path("budget.glora")).bias == "add"
    assert loads_spec("bias add").bias == "add"
    assert loads_spec(b"bias add").bias == "add"
    with pytest.raises(SpecError):
        loads_spec("budget.glora")  # always text, even when it names a file
    with pytest.raises(SpecError) as err:
        loads_spec("include paper.glora")  # text with a mistake, not a file name
    assert err.value.diagnostics[0].message == "unexpected `paper.glora`"
    with pytest.raises(SpecError) as err:
        load_spec("missing.glora")
    assert "no such file" in err.value.diagnostics[0].message
    with pytest.raises(SpecError) as err:
        loads_spec("bias keep", name="mine.glora")
    assert err.value.diagnostics[0].file == "mine.glora"


def test_text_given_as_a_path_still_works_with_a_deprecation_warning(tmp_path, monkeypatch):
    """For one release `load_spec(str)` / `analyze(str)` still take spec text, and warn."""
    monkeypatch.chdir(tmp_path)
    with pytest.warns(DeprecationWarning, match=r"call loads_spec\(text\)"):
        assert load_spec("bias add").bias == "add"
    with pytest.warns(DeprecationWarning, match=r"loads_spec"):
        assert load_spec(b"bias add").bias == "add"
    with pytest.warns(DeprecationWarning, match=r"loads_spec"), pytest.raises(SpecError) as err:
        load_spec("include paper.glora")  # still text with a mistake, not a file name
    assert err.value.diagnostics[0].message == "unexpected `paper.glora`"
    with pytest.warns(DeprecationWarning, match=r"call analyze_text\(text\)"):
        spec, diags = analyze("bias keep")
    assert spec is None and diags == analyze_text("bias keep")[1]
