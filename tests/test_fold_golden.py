"""The fold report of a fixed structure on small zoo models, pinned in tests/golden/fold/.

What a fold reports per layer (the structure folded and the parameters it holds), the
base dtype and its tolerance, and which layers gain a bias, for a seeded structure on a
timm ViT and a Conv model: a change to the fold core or the planning before it shows up
as a diff. The measured deltas depend on the BLAS build, so they are checked against the
tolerance instead of pinned. Regenerate after an intended change with
``GLORAC_UPDATE_GOLDEN=1 python -m pytest tests/test_fold_golden.py`` and review the diff.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

import glorac
from tests.reference import perturb, random_structure
from tests.zoo import zoo_entry

GOLDEN = Path(__file__).resolve().parent / "golden" / "fold"
UPDATE = os.environ.get("GLORAC_UPDATE_GOLDEN") == "1"
CASES = {"vit": "preserve", "custom_biasfree": "add"}


def _report(name: str, bias: str) -> dict:
    from tests.test_fold_cli import spec_for

    entry = zoo_entry(name)
    model = entry.build()
    supernet = glorac.build_supernet(glorac.loads_spec(spec_for(entry) + f"bias {bias}\n"), model)
    perturb(supernet, seed=7)
    structure = random_structure(supernet, seed=8)
    folded = glorac.fold(supernet, structure, verify=True, probe=entry.example_input())
    report = folded.glorac_fold_report
    assert report.ok and all(lf.rel_delta <= report.tolerance for lf in report.layers)
    return {"dtype": report.dtype, "tolerance": report.tolerance,
            "layers": [{"layer": lf.layer, "structure": lf.structure, "params": lf.params} for lf in report.layers],
            "added_biases": supernet.plan.added_biases(structure)}


def _diff(want: str, got: str, path: Path) -> str:
    lines = difflib.unified_diff(want.splitlines(), got.splitlines(), f"{path.name} (golden)", "now", lineterm="")
    return "\n".join(lines) + "\nRegenerate with GLORAC_UPDATE_GOLDEN=1 python -m pytest tests/test_fold_golden.py"


@pytest.mark.parametrize("name", CASES)
def test_fold_report_matches_its_golden(name):
    got = json.dumps(_report(name, CASES[name]), indent=2) + "\n"
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"no golden {path}; create it with GLORAC_UPDATE_GOLDEN=1"
    want = path.read_text()
    assert got == want, _diff(want, got, path)


def test_a_changed_fold_report_shows_as_a_diff():
    golden = (GOLDEN / "vit.json").read_text()
    changed = golden.replace('"params": ', '"params": 1', 1)
    message = _diff(golden, changed, GOLDEN / "vit.json")
    assert changed != golden and message.count("\n-") >= 1 and "GLORAC_UPDATE_GOLDEN=1" in message
