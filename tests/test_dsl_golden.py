"""The reference specs in specs/: their IR is pinned in tests/golden/<name>.json.

Regenerate after an intended change with ``GLORAC_UPDATE_GOLDEN=1 pytest tests/test_dsl_golden.py``
and review the diff. File paths in the IR are made relative to the repository root so
the goldens do not depend on where the checkout lives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydantic
import pytest

import glorac
from glorac import ir
from glorac.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.glora"))
# Test fixtures that use what the reference specs do not (exclude, except, inline
# spaces, every setting, include chains, settings overridden by the including file).
FIXTURES = sorted((Path(__file__).resolve().parent / "specs").glob("*.glora"))
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("GLORAC_UPDATE_GOLDEN") == "1"


def relative_to_root(path: str) -> str:  # also used by tests/test_plan_golden.py
    return Path(os.path.relpath(os.path.abspath(path), ROOT)).as_posix()


def with_relative_files(node):
    """JSON data with every ``file`` value made relative to the repository root."""
    if isinstance(node, dict):
        return {k: (relative_to_root(v) if k == "file" and isinstance(v, str) else with_relative_files(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [with_relative_files(v) for v in node]
    return node


def normalised_ir(spec: ir.Spec) -> dict:
    """The IR as JSON data with every file path relative to the repository root."""
    data = with_relative_files(spec.model_dump(mode="json"))
    data["files"] = [relative_to_root(f) for f in spec.files]
    return data


def test_there_are_reference_specs():
    assert len(SPECS) >= 5
    assert {p.stem for p in SPECS} >= {"paper", "vit"}


@pytest.mark.parametrize("path", SPECS + FIXTURES, ids=lambda p: p.stem)
def test_golden_ir(path):
    golden = GOLDEN / f"{path.stem}.json"
    data = normalised_ir(glorac.load_spec(path))
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    if not golden.exists():
        pytest.fail(f"no golden for {path.name}; run with GLORAC_UPDATE_GOLDEN=1 to create it")
    assert data == json.loads(golden.read_text(encoding="utf-8"))
    # The golden is the JSON of a valid Spec, not just any JSON.
    assert isinstance(ir.Spec.model_validate_json(golden.read_text(encoding="utf-8")), ir.Spec)


def test_goldens_have_specs():
    """A golden whose spec was removed or renamed is stale."""
    stale = {p.stem for p in GOLDEN.glob("*.json")} - {p.stem for p in SPECS + FIXTURES}
    assert not stale
    assert len({p.stem for p in SPECS + FIXTURES}) == len(SPECS + FIXTURES)


def test_golden_ir_is_machine_independent(tmp_path):
    """The normalisation really removes the checkout's location."""
    data = normalised_ir(glorac.load_spec(ROOT / "specs" / "vit.glora"))
    assert data["files"] == ["specs/vit.glora", "specs/paper.glora"]
    assert data["rules"][0]["origin"]["file"] == "specs/vit.glora"
    assert str(ROOT) not in json.dumps(data)


def test_everything_fixture_semantics():
    """Spot checks that the golden for the kitchen-sink fixture pins what it should."""
    spec = glorac.load_spec(FIXTURES[0].parent / "everything.glora")
    assert spec.model == "hf:./my models/minilm"
    assert spec.budget.params == 1_250_000 and spec.budget.include_trained
    assert spec.bias == "add"  # the including file wins over shared.glora
    assert spec.training.epochs == 30 and spec.training.seed == 7
    assert [r.action for r in spec.rules] == ["exclude", "adapt", "adapt", "adapt", "adapt",
                                              "exclude", "exclude"]
    wide = spec.rules[2].space
    assert [str(k) for k in wide.A] == ["lora(2)", "lora(4)", "vector", "none"]
    assert [str(k) for k in wide.B] == ["lora(2)", "lora(4)", "scalar"]  # 4 listed twice via r
    assert spec.rules[3].space_name is None and str(spec.rules[3].space.B[0]) == "lora(16)"


def test_include_relative_to_cwd_independent(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    a = glorac.load_spec(ROOT / "specs" / "vit.glora")
    monkeypatch.chdir(ROOT)
    b = glorac.load_spec(Path("specs") / "vit.glora")
    assert normalised_ir(a) == normalised_ir(b)


@pytest.mark.parametrize("path", SPECS + FIXTURES, ids=lambda p: p.stem)
def test_reference_spec_checks_and_is_canonical(path, capsys):
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok") and err == ""
    assert main(["fmt", "--check", str(path)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["fmt", str(path)]) == 0
    assert capsys.readouterr().out == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", SPECS + FIXTURES, ids=lambda p: p.stem)
def test_json_round_trip(path, capsys):
    spec = glorac.load_spec(path)
    assert ir.Spec.model_validate_json(spec.model_dump_json()) == spec
    assert ir.Spec.model_validate(spec.model_dump()) == spec
    assert main(["check", "--json", str(path)]) == 0
    assert ir.Spec.model_validate_json(capsys.readouterr().out) == spec


def test_ir_models_are_frozen():
    spec = glorac.load_spec(ROOT / "specs" / "vit.glora")
    with pytest.raises(pydantic.ValidationError):
        spec.model = "other"
    with pytest.raises(pydantic.ValidationError):
        spec.rules[0].selector.patterns = ("x",)
    with pytest.raises(pydantic.ValidationError):
        spec.training.lr = 1.0
    with pytest.raises(pydantic.ValidationError):
        spec.rules[0].space.A[0].rank = 99
    assert hash(spec.rules[0].space) == hash(spec.rules[0].space.model_copy())


MODELS = [
    ir.Spec,
    ir.Rule,
    ir.Selector,
    ir.Space,
    ir.Kind,
    ir.LayerChoice,
    ir.Origin,
    ir.TrainRule,
    ir.Budget,
    ir.SearchSettings,
    ir.TrainSettings,
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_ir_models_forbid_extra_fields_and_are_frozen(model):
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "forbid"


def test_extra_field_is_rejected_in_json():
    spec = glorac.load_spec(ROOT / "specs" / "vit.glora")
    data = json.loads(spec.model_dump_json())
    data["rules"][0]["selector"]["typo"] = 1
    with pytest.raises(pydantic.ValidationError, match="typo"):
        ir.Spec.model_validate(data)
    data = json.loads(spec.model_dump_json())
    data["surprise"] = True
    with pytest.raises(pydantic.ValidationError, match="surprise"):
        ir.Spec.model_validate(data)


def test_ir_validators_guard_the_json():
    with pytest.raises(pydantic.ValidationError):
        ir.Kind(kind="lora")  # lora needs a rank
    with pytest.raises(pydantic.ValidationError):
        ir.Kind(kind="vector", rank=4)
    with pytest.raises(pydantic.ValidationError):
        ir.Kind(kind="lora", rank=0)
    with pytest.raises(pydantic.ValidationError):
        ir.SearchSettings(mutation_prob=1.5)


def test_library_paper_space_matches_the_reference_spec():
    """glorac.dsl.library.PAPER_SPACE and specs/paper.glora define the same space."""
    from glorac.dsl.library import PAPER_SPACE

    body = 'adapt "x" with paper(r=3)\n'
    ours = glorac.loads_spec(PAPER_SPACE + body)
    ref = glorac.loads_spec(f'include "{ROOT / "specs" / "paper.glora"}"\n' + body)
    assert ours.rules[0].space == ref.rules[0].space
