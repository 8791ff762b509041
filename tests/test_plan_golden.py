"""The reference specs' plans on small zoo models: pinned in tests/golden/plan/<spec>__<model>.json.

``glorac plan SPEC --model tests.zoo:MODEL --device meta --json`` is run in-process for
every reference spec in specs/ and a test-zoo model of the family its globs are written
for, so that a change to planning (sites, rule resolution, bias policy, notes, trained
modules, budget) shows up as a diff. Regenerate after an intended change with
``GLORAC_UPDATE_GOLDEN=1 python -m pytest tests/test_plan_golden.py`` and review the diff.

Normalised before comparing (so the goldens do not depend on the machine):

* every ``file`` (a layer's rule origin, the budget's origin) is made relative to the
  repository root;
* ``trace_failure`` (set when torch.fx cannot trace the model, e.g. Hugging Face models)
  carries the text of an exception raised inside torch/transformers, which changes with
  their versions; it is replaced by a placeholder. ``front_end`` still pins that tracing
  failed.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path

import pytest

from glorac.selectors import matches_any
from tests.test_dsl_golden import relative_to_root, with_relative_files
from tests.zoo import ZOO, zoo_entry

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.glora"))
GOLDEN = Path(__file__).resolve().parent / "golden" / "plan"
UPDATE = os.environ.get("GLORAC_UPDATE_GOLDEN") == "1"
REGENERATE = "GLORAC_UPDATE_GOLDEN=1 python -m pytest tests/test_plan_golden.py"
TRACE_FAILED = "<trace failed; the reason depends on the torch/transformers versions>"

# (spec stem, zoo entry): each zoo entry is the small model of the family the spec's
# globs are written for (timm ViT/Swin/ConvNeXt/EfficientNet-Lite, HF BERT/LLaMA task
# models). paper.glora only defines spaces (no rules): its plan on any model is empty,
# which is pinned on the ViT of the paper's main setting.
CASES = [
    ("bert", "bert"),
    ("convnext", "convnext"),
    ("efficientnet", "efficientnet"),
    ("llama", "llama"),
    ("paper", "vit"),
    ("swin", "swin"),
    ("vit", "vit"),
]


def _id(case) -> str:
    return f"{case[0]}__{case[1]}"


def normalised_plan(data: dict) -> dict:
    """The plan's JSON data with every file path relative to the repository root and
    the (library-version dependent) trace failure text replaced by a placeholder."""
    data = with_relative_files(data)
    if data.get("trace_failure") is not None:
        data["trace_failure"] = TRACE_FAILED
    return data


def golden_text(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def plan_json(capsys, spec: str, model: str) -> dict:
    """``glorac plan specs/SPEC.glora --model tests.zoo:MODEL --device meta --json``, parsed."""
    from glorac.cli import main

    capsys.readouterr()  # drop anything printed before
    code = main(["plan", str(ROOT / "specs" / f"{spec}.glora"), "--model", f"tests.zoo:{model}",
                 "--device", "meta", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # The only thing on stderr may be the warning that a classifier's head stays frozen
    # (llama.glora has no `train` line; paper.glora adapts nothing).
    assert all(line.startswith("glorac: warning: the task head") for line in err.splitlines()), err
    return json.loads(out)


def compare_with_golden(golden: Path, text: str) -> None:
    """Raise AssertionError with a unified diff (golden → now) when ``text`` differs."""
    if not golden.exists():
        raise AssertionError(f"no golden {golden.name}; create it with {REGENERATE}")
    expected = golden.read_text(encoding="utf-8")
    if expected == text:
        return
    diff = "".join(difflib.unified_diff(
        expected.splitlines(keepends=True), text.splitlines(keepends=True),
        fromfile=f"golden/plan/{golden.name}", tofile="glorac plan --json (now)", n=3))
    raise AssertionError(
        f"the plan differs from {relative_to_root(str(golden))}:\n{diff}\n"
        f"If the change is intended, regenerate with\n    {REGENERATE}\nand review the diff.")


def test_every_reference_spec_has_a_case():
    assert {p.stem for p in SPECS} == {spec for spec, _ in CASES}
    assert all(model in ZOO for _, model in CASES)
    assert len({_id(c) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_golden_plan(case, capsys):
    spec, model = case
    entry = zoo_entry(model)  # skips when transformers is missing
    raw = plan_json(capsys, spec, model)
    if raw["front_end"] == "modules":
        assert raw["trace_failure"]  # the placeholder stands for a real message
    data = normalised_plan(raw)
    text = golden_text(data)
    assert str(ROOT) not in text
    golden = GOLDEN / f"{_id(case)}.json"
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    compare_with_golden(golden, text)

    # The golden is the JSON of a valid Plan, not just any JSON.
    from glorac.planning import Plan

    assert Plan.model_validate_json(golden.read_text(encoding="utf-8")).front_end == data["front_end"]

    # The spec's rules hit exactly the layers the zoo says should be adapted, each from
    # the spec itself (not an included file); the trained modules are the zoo's head.
    adapted = [lp["site"]["qualname"] for lp in data["layers"]]
    if spec == "paper":
        assert adapted == [] and data["trained"] == [] and data["budget"] is None
        return
    expected = [n for n in _module_names(entry) if matches_any(entry.adapt, n)]
    assert adapted == expected
    assert {lp["rule"]["file"] for lp in data["layers"]} == {f"specs/{spec}.glora"}
    assert data["trained"] == ([] if spec == "llama" else list(entry.head))  # llama.glora trains nothing


def _module_names(entry) -> list[str]:
    import torch

    with torch.device("meta"):
        model = entry.build()
    return [n for n, _ in model.named_modules()]


def test_goldens_have_cases():
    """A golden whose spec or model was removed or renamed is stale."""
    stale = {p.stem for p in GOLDEN.glob("*.json")} - {_id(c) for c in CASES}
    assert not stale, f"stale goldens {sorted(stale)}: delete them"


def test_a_changed_plan_fails_with_a_diff(tmp_path, capsys):
    """The comparison really compares: an altered golden fails, with a readable diff."""
    data = normalised_plan(plan_json(capsys, "vit", "vit"))
    text = golden_text(data)
    golden = tmp_path / "vit__vit.json"
    golden.write_text(text, encoding="utf-8")
    compare_with_golden(golden, text)  # identical: passes

    altered = copy.deepcopy(data)
    altered["layers"][0]["site"]["out_features"] = 97
    altered["layers"][1]["space"]["A"].pop(0)
    golden.write_text(golden_text(altered), encoding="utf-8")
    with pytest.raises(AssertionError) as info:
        compare_with_golden(golden, text)
    message = str(info.value)
    assert '-        "out_features": 97,' in message
    assert '+        "out_features": 96,' in message
    assert "--- golden/plan/vit__vit.json" in message and "+++ glorac plan --json (now)" in message
    assert REGENERATE in message

    with pytest.raises(AssertionError, match="no golden"):
        compare_with_golden(tmp_path / "missing.json", text)


def test_normalisation_removes_the_checkout():
    """Absolute paths become repository-relative; a trace failure's text is not pinned."""
    origin = {"file": str(ROOT / "specs" / "vit.glora"), "line": 8, "column": 1}
    data = {"front_end": "modules", "trace_failure": "in module `x`: TypeError: ...",
            "layers": [{"rule": dict(origin)}], "budget": {"origin": dict(origin)}}
    out = normalised_plan(data)
    assert out["layers"][0]["rule"]["file"] == "specs/vit.glora"
    assert out["budget"]["origin"]["file"] == "specs/vit.glora"
    assert out["trace_failure"] == TRACE_FAILED
    assert data["layers"][0]["rule"]["file"] == origin["file"]  # the input is not modified
    assert normalised_plan({"trace_failure": None})["trace_failure"] is None
