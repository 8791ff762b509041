"""`glorac fmt`: the canonical form, case by case, and the --check / --write modes."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from glorac import SpecError, loads_spec
from glorac.cli import main
from glorac.dsl import format_source


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


CASES = {
    "omitted-tensors-are-none": (
        "space s { B: lora(8) }\n",
        """
        space s {
            A: none
            B: lora(8)
            C: none
            D: none
            E: none
        }
        """,
    ),
    "tensor-and-kind-order": (
        "space   s(r=8,q) {E:none|vector  B: none|scalar|lora(r|q)|vector\nA:vector}\n",
        """
        space s(r=8, q) {
            A: vector
            B: lora(r|q) | vector | scalar | none
            C: none
            D: none
            E: vector | none
        }
        """,
    ),
    "comments-everywhere": (
        """
        # leading comment


        space s {   # on the header
          # above E (written first)
          E: vector
          # above B
          B: none | lora(8)   # after B
          # at the end of the block
        }    # after the brace
        # between
        adapt "a" with s  # trailing
        # last words
        """,
        """
        # leading comment

        space s {  # on the header
            A: none
            # above B
            B: lora(8) | none  # after B
            C: none
            D: none
            # above E (written first)
            E: vector
            # at the end of the block
        }  # after the brace
        # between
        adapt "a" with s  # trailing
        # last words
        """,
    ),
    "comment-inside-one-line-construct-moves-above": (
        'space s { B: lora(4) }\nadapt "a",  # first\n    "b"  # second\n    with s  # third\n',
        """
        space s {
            A: none
            B: lora(4)
            C: none
            D: none
            E: none
        }
        # first
        # second
        adapt "a", "b" with s  # third
        """,
    ),
    "comment-in-multi-line-tensor-stays-with-it": (
        "space s {\n  B: vector\n  A: lora(8) |   # about A\n     vector\n}\n",
        """
        space s {
            # about A
            A: lora(8) | vector
            B: vector
            C: none
            D: none
            E: none
        }
        """,
    ),
    "blank-lines-collapse-to-one": (
        "\n\n\nbudget 1M\n\n\n\n\nbias add\nmodel x\n\n\n# tail\n\n\n",
        """
        budget 1M

        bias add
        model x

        # tail
        """,
    ),
    "long-rule-broken-per-clause": (
        'space paper(r=8) { A: vector }\nadapt "blocks.*.attn.qkv", "blocks.*.attn.proj", '
        '"blocks.*.mlp.fc1", "blocks.*.mlp.fc2" type Linear except "blocks.0.**" with paper(r=4)\n',
        """
        space paper(r=8) {
            A: vector
            B: none
            C: none
            D: none
            E: none
        }
        adapt "blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"
            type Linear
            except "blocks.0.**"
            with paper(r=4)
        """,
    ),
    "very-long-pattern-list-one-per-line": (
        'exclude "a.very.long.module.name.that.goes.on.and.on.and.on", '
        '"another.very.long.module.name.that.goes.on", "x" type Linear\n',
        """
        exclude "a.very.long.module.name.that.goes.on.and.on.and.on",
                "another.very.long.module.name.that.goes.on",
                "x"
            type Linear
        """,
    ),
    "short-multi-line-rule-joined": (
        'space s { B: lora(4) }\nadapt\n  "a"\n  type\n  Linear|Conv1x1\n  with\n  s\n',
        """
        space s {
            A: none
            B: lora(4)
            C: none
            D: none
            E: none
        }
        adapt "a" type Linear | Conv1x1 with s
        """,
    ),
    "inline-space-is-a-block": (
        'adapt "head"   with {E:vector B: lora(4)}  # head\n',
        """
        adapt "head" with {
            A: none
            B: lora(4)
            C: none
            D: none
            E: vector
        }  # head
        """,
    ),
    "inline-space-comments-stay-inside": (
        'adapt "x"  # on the rule\n  with {  # open\n    # about B\n    B: lora(4)  # b\n}\n',
        """
        # on the rule
        adapt "x" with {  # open
            A: none
            # about B
            B: lora(4)  # b
            C: none
            D: none
            E: none
        }
        """,
    ),
    "inline-space-in-long-rule": (
        'adapt "blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2" '
        "type Linear with { B: lora(4) }\n",
        """
        adapt "blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"
            type Linear
            with {
                A: none
                B: lora(4)
                C: none
                D: none
                E: none
            }
        """,
    ),
    "settings-one-per-line": (
        "search{population=40 parents=4} training {schedule=linear lr=1e-3 # fast\n}\n",
        """
        search {
            population = 40
            parents = 4
        }
        training {
            schedule = linear
            lr = 1e-3  # fast
        }
        """,
    ),
    "model-quoting": (
        'model "vit_base_patch16_224"\n',
        """
        model vit_base_patch16_224
        """,
    ),
    "model-needs-quotes": (
        'model "two words"\n',
        """
        model "two words"
        """,
    ),
    "budget-and-args-spacing": (
        "space s(r=8) { B: lora(r) }\nbudget   0.86M   including   head\n"
        'adapt "a" with s( 4 )\nadapt "b" with s(r = 2)\n',
        """
        space s(r=8) {
            A: none
            B: lora(r)
            C: none
            D: none
            E: none
        }
        budget 0.86M including head
        adapt "a" with s(4)
        adapt "b" with s(r=2)
        """,
    ),
    "several-statements-on-one-line": (
        "budget 1M bias add  # both\n",
        """
        budget 1M
        bias add  # both
        """,
    ),
    "tabs-and-crlf": (
        "bias\tadd\r\n#\tnote\r\nbudget 2K\r\n",
        """
        bias add
        #\tnote
        budget 2K
        """,
    ),
    "only-comments": ("# just\n\n\n# notes\n", "# just\n\n# notes\n"),
    "empty": ("", ""),
    "only-blank-lines": ("\n\n  \n", ""),
}


@pytest.mark.parametrize("source, expected", CASES.values(), ids=CASES.keys())
def test_fmt(source, expected):
    source = dedent(source) if source.startswith("\n") else source
    expected = dedent(expected) if expected.startswith("\n") else expected
    out = format_source(source)
    assert out == expected
    assert format_source(out) == out  # idempotent
    assert without_origins(loads_spec(source)) == without_origins(loads_spec(out))


def without_origins(spec):
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "origin"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(spec.model_dump(mode="json"))


def test_fmt_refuses_invalid_text():
    with pytest.raises(SpecError):
        format_source("space s { C: scalar }\n")
    with pytest.raises(SpecError):
        format_source("adapt 'x' with s\n")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_fmt_prints_to_stdout(tmp_path, capsys):
    f = write(tmp_path, "a.glora", "bias   add\n")
    assert main(["fmt", str(f)]) == 0
    assert capsys.readouterr().out == "bias add\n"
    assert f.read_text() == "bias   add\n"  # never touched without --write


def test_fmt_check_exit_codes(tmp_path, capsys):
    good = write(tmp_path, "good.glora", "bias add\n")
    bad = write(tmp_path, "bad.glora", "bias   add\n")
    no_newline = write(tmp_path, "nonl.glora", "bias add")
    assert main(["fmt", "--check", str(good)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["fmt", "--check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "not canonical" in err
    assert main(["fmt", "--check", str(no_newline)]) == 1
    assert main(["fmt", "--check", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and str(good) not in err
    assert bad.read_text() == "bias   add\n"  # --check never writes


def test_fmt_check_invalid_spec_exit_2(tmp_path, capsys):
    bad = write(tmp_path, "bad.glora", "bias keep\n")
    assert main(["fmt", "--check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1:6: error: unknown bias policy" in err
    assert "Traceback" not in err


def _has_atomic_write_text() -> bool:
    if importlib.util.find_spec("glorac.safeio") is None:
        return False
    import glorac.safeio

    return hasattr(glorac.safeio, "atomic_write_text")


def test_fmt_write_is_atomic(tmp_path, capsys):
    if not _has_atomic_write_text():
        pytest.skip("glorac.safeio.atomic_write_text is not there yet (needed by fmt --write)")
    f = write(tmp_path, "a.glora", "# keep\nbias   add\nspace s{B:lora(4)}\n")
    canonical = write(tmp_path, "b.glora", "bias add\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    mtime = canonical.stat().st_mtime_ns
    assert main(["fmt", "--write", str(f), str(canonical)]) == 0
    assert f.read_text() == format_source("# keep\nbias   add\nspace s{B:lora(4)}\n")
    assert f.read_text().startswith("# keep\nbias add\nspace s {\n")
    assert canonical.stat().st_mtime_ns == mtime  # canonical files are left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary files left
    out = capsys.readouterr().out
    assert f"{f}: formatted" in out and str(canonical) not in out
    assert main(["fmt", "--check", str(f)]) == 0


def test_fmt_write_leaves_invalid_file_alone(tmp_path, capsys):
    f = write(tmp_path, "a.glora", "bias   keep\n")
    assert main(["fmt", "--write", str(f)]) == 2
    assert f.read_text() == "bias   keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.glora"]


def test_fmt_keeps_included_file_reference(tmp_path, capsys):
    write(tmp_path, "inc.glora", "space s { B: lora(4) }\n")
    f = write(tmp_path, "top.glora", 'include   "inc.glora"\nadapt "a" with s\n')
    assert main(["fmt", str(f)]) == 0
    assert capsys.readouterr().out == 'include "inc.glora"\nadapt "a" with s\n'
