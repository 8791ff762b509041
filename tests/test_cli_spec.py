"""`glorac check` / `glorac schema` from a user's chair: exit codes, what is printed,
robustness against junk, and the cost of parsing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from glorac.cli import main
from glorac.ir import Spec

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "specs" / "vit.glora"
HEADER = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.+)$")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, out, err


def parse_report(err: str) -> list[dict]:
    """Split rendered diagnostics into header / source / caret / hint records."""
    records, lines = [], err.splitlines()
    i = 0
    while i < len(lines):
        m = HEADER.match(lines[i])
        if not m:
            i += 1
            continue
        record = dict(m.groupdict(), source=None, caret=None, hint=None)
        j = i + 1
        if j + 1 < len(lines) and lines[j + 1].strip().startswith("^"):
            record["source"], record["caret"] = lines[j], lines[j + 1]
            j += 2
        if j < len(lines) and lines[j].startswith("  hint: "):
            record["hint"] = lines[j][len("  hint: ") :]
            j += 1
        records.append(record)
        i = j
    return records


# ---------------------------------------------------------------- check


def test_check_valid_exit_0(capsys):
    code, out, err = run_main(["check", VIT], capsys)
    assert code == 0 and err == ""
    assert out == f"{VIT}: ok (1 adapt rule(s), 1 trained module rule(s))\n"


def test_check_invalid_exit_2_and_format(tmp_path, capsys):
    f = write(
        tmp_path,
        "bad.glora",
        "space s {\n\tA: vectr\n}\nadapt \"blocks.[5-2].x\" type Linaer with s\nbias keep\n",
    )
    code, out, err = run_main(["check", f], capsys)
    assert code == 2 and out == ""
    records = parse_report(err)
    assert [(r["line"], r["col"]) for r in records] == [("2", "5"), ("4", "15"), ("4", "29"), ("5", "6")]
    source_lines = f.read_text().split("\n")
    for r in records:
        assert r["file"] == str(f)
        assert r["source"] is not None and r["caret"] is not None, r
        # The source line is printed (tabs shown as one space, so the caret lines up)...
        shown = source_lines[int(r["line"]) - 1].expandtabs(1)
        assert r["source"] == "    " + shown
        # ...and the caret sits under the reported column, as wide as the offending token.
        caret = r["caret"][4:]
        start = len(caret) - len(caret.lstrip(" "))
        assert start == int(r["col"]) - 1
        width = len(caret.strip())
        token = shown[start : start + width]
        assert token and not token.startswith(" ")
    assert records[0]["message"] == "unknown kind `vectr`"
    assert records[0]["hint"] == "did you mean `vector`?"
    assert records[2]["hint"] == "did you mean `Linear`?"
    assert err.rstrip().endswith("4 errors found")


def test_caret_spans_the_token(tmp_path, capsys):
    f = write(tmp_path, "bad.glora", "budget 12X\n")
    code, _, err = run_main(["check", f], capsys)
    r = parse_report(err)[0]
    assert code == 2
    assert r["source"] == "    budget 12X"
    assert r["caret"] == "           ^^^"


def test_check_several_files(tmp_path, capsys):
    bad1 = write(tmp_path, "bad1.glora", "bias keep\n")
    bad2 = write(tmp_path, "bad2.glora", "budget 0\n")
    code, out, err = run_main(["check", VIT, bad1, bad2], capsys)
    assert code == 2
    assert out.startswith(f"{VIT}: ok")
    assert [r["file"] for r in parse_report(err)] == [str(bad1), str(bad2)]
    code, out, err = run_main(["check", VIT, ROOT / "specs" / "swin.glora"], capsys)
    assert code == 0 and out.count(": ok") == 2


def test_check_json_is_the_ir(capsys):
    code, out, _ = run_main(["check", "--json", VIT], capsys)
    assert code == 0
    spec = Spec.model_validate_json(out)
    assert spec.model == "vit_base_patch16_224"
    assert spec.budget.params == 860_000
    assert json.loads(out)["rules"][0]["selector"]["types"] == ["Linear"]


def test_check_json_invalid_prints_no_json(tmp_path, capsys):
    f = write(tmp_path, "bad.glora", "bias keep\n")
    code, out, err = run_main(["check", "--json", f], capsys)
    assert code == 2 and out == "" and "unknown bias policy" in err


def test_schema_is_json_schema_of_the_ir(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    code, out, _ = run_main(["schema"], capsys)
    assert code == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) == set(Spec.model_fields)
    # The IR of a real spec validates against it; a broken one does not.
    _, ir_json, _ = run_main(["check", "--json", VIT], capsys)
    data = json.loads(ir_json)
    jsonschema.validate(data, schema)
    data["rules"][0]["action"] = "obliterate"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_python_dash_m(tmp_path):
    bad = write(tmp_path, "bad.glora", "adpat \"x\" with s\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ok = subprocess.run(
        [sys.executable, "-m", "glorac", "check", str(VIT)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert ": ok" in ok.stdout
    res = subprocess.run(
        [sys.executable, "-m", "glorac", "check", str(bad)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert res.returncode == 2
    assert f"{bad}:1:1: error: unknown statement `adpat`" in res.stderr
    assert "hint: did you mean `adapt`?" in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- junk never crashes


JUNK = {
    "binary": b"\x00\x01\x02\xff" * 100,
    "invalid-utf8": b"budget 1M\n\xc3\x28 bias add\n",
    "two-megabytes": b"# padding\n" * 210_000,
    "nested-braces": b"space s " + b"{" * 100_000,
    "closing-braces": b"}" * 100_000,
    "nested-parens": b'adapt "a" with s' + b"(" * 100_000,
    "long-line": b"budget " + b"9" * 500_000,
    "many-bars": b"space s { A: " + b"vector | " * 20_000 + b"}",
    "control-chars": bytes(range(1, 32)) * 10,
    "bom-in-the-middle": "bias add\n\ufeffbudget 1M\n".encode("utf-8"),
    "utf16": "bias add\n".encode("utf-16"),
    "lone-surrogate-bytes": b"bias \xed\xa0\x80\n",
    "unicode-identifiers": "space ş { A: vector }\nadapt \"ş\" with ş\n".encode("utf-8"),
}


@pytest.mark.parametrize("data", JUNK.values(), ids=JUNK.keys())
def test_junk_input_reports_cleanly(tmp_path, capsys, data):
    f = tmp_path / "junk.glora"
    f.write_bytes(data)
    code, out, err = run_main(["check", f], capsys)
    assert code == 2
    assert str(f) in err and "error" in err
    from glorac.dsl import analyze

    for d in analyze(f)[1]:
        assert len(d.message) < 200, d.message  # a huge token is not echoed in full
        assert d.hint is None or len(d.hint) < 300


def test_render_of_a_far_column_is_bounded(tmp_path, capsys):
    f = tmp_path / "long.glora"
    f.write_text("space s { A: " + "vector | " * 2_000 + "}\n")
    code, _, err = run_main(["check", f], capsys)
    assert code == 2
    assert max(len(line) for line in err.splitlines()) < 400


def test_utf8_byte_order_mark_is_accepted(tmp_path, capsys):
    f = tmp_path / "bom.glora"
    f.write_bytes("\ufeffbias add\n".encode("utf-8"))
    code, out, _ = run_main(["check", "--json", f], capsys)
    assert code == 0 and Spec.model_validate_json(out).bias == "add"


def test_empty_file_is_a_valid_empty_spec(tmp_path, capsys):
    f = write(tmp_path, "empty.glora", "")
    code, out, err = run_main(["check", f], capsys)
    assert code == 0 and "0 adapt rule(s)" in out
    code, out, _ = run_main(["check", "--json", f], capsys)
    assert Spec.model_validate_json(out) == Spec(files=(str(f),))


def test_directory_and_missing_file(tmp_path, capsys):
    code, _, err = run_main(["check", tmp_path], capsys)
    assert code == 2 and f"{tmp_path}: error: is a directory" in err
    code, _, err = run_main(["check", tmp_path / "missing.glora"], capsys)
    assert code == 2 and "no such file" in err


def test_unreadable_file(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    f = write(tmp_path, "secret.glora", "bias add\n")
    f.chmod(0)
    code, _, err = run_main(["check", f], capsys)
    assert code == 2 and "permission denied" in err


def test_fmt_on_junk(tmp_path, capsys):
    f = tmp_path / "junk.glora"
    f.write_bytes(b"\xff\xfe\x00")
    code, _, err = run_main(["fmt", f], capsys)
    assert code == 2 and str(f) in err


# ---------------------------------------------------------------- cost


def test_grammar_is_built_once_per_process(tmp_path):
    script = (
        "import glorac\n"
        "from glorac.dsl import grammar\n"
        "for i in range(5):\n"
        "    glorac.loads_spec(f'bias add\\nbudget {i + 1}K\\n')\n"
        f"glorac.load_spec({str(VIT)!r})\n"
        "try:\n"
        "    glorac.loads_spec('adpat x')\n"
        "except glorac.SpecError:\n"
        "    pass\n"
        "info = grammar.parser.cache_info()\n"
        "print(info.misses, info.hits, info.currsize)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stderr
    misses, hits, size = map(int, res.stdout.split())
    assert misses == 1 and size == 1 and hits >= 7


