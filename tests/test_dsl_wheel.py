"""The built wheel carries the grammar and works without the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    pytest.importorskip("hatchling", reason="the wheel is built with hatchling (no isolation)")
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (whl,) = out.glob("glorac-*.whl")
    return whl


def test_wheel_contains_grammar(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "glorac/grammars/glora.lark" in names
    assert "glorac/dsl/grammar.py" in names
    packaged = zipfile.ZipFile(wheel).read("glorac/grammars/glora.lark").decode("utf-8")
    assert packaged == (ROOT / "grammars" / "glora.lark").read_text(encoding="utf-8")


def test_wheel_works_without_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    (work / "inc.glora").write_text("space s { B: lora(4) }\n", encoding="utf-8")
    script = (
        "import glorac, glorac.dsl.grammar as g\n"
        "spec = glorac.loads_spec('include \"inc.glora\"\\nadapt \"blocks.*\" with s\\nbudget 2K\\n')\n"
        "assert spec.budget.params == 2000 and spec.rules[0].space_name == 's'\n"
        "try:\n"
        "    glorac.loads_spec('adpat x')\n"
        "except glorac.SpecError as e:\n"
        "    assert 'did you mean `adapt`?' in e.render()\n"
        "print(glorac.__file__)\n"
        "print(g.grammar_path())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    module_file, grammar = (Path(line) for line in res.stdout.split())
    assert module_file.is_relative_to(site), "the source tree was imported instead of the wheel"
    assert grammar == site / "glorac" / "grammars" / "glora.lark"
