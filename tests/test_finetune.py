"""`glorac finetune` (the optional post-search stage) and the per-run adapter init seed.

Tiny supernets and the offline digits data of tests/test_train.py; everything on CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import glorac
from glorac.checkpoint import read_checkpoint
from glorac.cli import main
from glorac.ir import Kind, LayerChoice, Structure
from tests.reference import run_cli
from tests.test_train import DATA, SPEC

MODEL = "tests.test_train:digit_net"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """compile → train (1 epoch) → search, shared by the tests that only read these files."""
    d = tmp_path_factory.mktemp("finetune")
    spec = d / "digits.glora"
    spec.write_text(SPEC)
    files = {"compiled": d / "sn.pt", "trained": d / "sn.trained.pt", "searched": d / "searched.pt",
             "structure": d / "searched.json"}
    assert main(["compile", str(spec), "--model", MODEL, "-o", str(files["compiled"])]) == 0
    assert main(["train", str(files["compiled"]), *DATA, "--epochs", "1", "--warmup-epochs", "0", "--no-progress"]) == 0
    assert main(["search", str(files["trained"]), *DATA, "-o", str(files["searched"]),
                 "--structure", str(files["structure"])]) == 0
    return files


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(path)
    return {**ckpt.adapters, **ckpt.trained}


def _eval(path: Path) -> dict:
    return glorac.workflow.evaluate_path(str(path), "builtin:digits", data_options={"image_size": 8})


# ---------------------------------------------------------------- glorac finetune


def test_finetune_then_fold_and_eval_through_the_cli(pipeline, tmp_path, capsys):
    searched = tmp_path / "searched.pt"
    shutil.copy(pipeline["searched"], searched)
    code, out, err = run_cli(capsys, "finetune", searched, *DATA, "--epochs", "1", "--lr", "1e-3",
                             "--warmup-epochs", "0", "--no-progress")
    assert code == 0, err
    tuned = tmp_path / "searched.finetuned.pt"  # the default output name
    assert f"wrote {tuned}" in out and " s, " in out and "examples/s" in out
    sn = glorac.load(tuned)
    assert sn.structure == glorac.load(searched).structure  # still selected: fold/eval take it as is
    history = sn.history
    assert history.train.settings.epochs == 1 and history.train.settings.lr == 1e-3
    assert history.finetune.source == str(searched) and history.search is not None
    before, after = _tensors(searched), _tensors(tuned)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    folded = tmp_path / "f.safetensors"
    code, _, err = run_cli(capsys, "fold", tuned, "-o", folded)
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", folded, *DATA)
    assert code == 0 and "top-1" in out, err
    r_folded, r_tuned = _eval(folded), _eval(tuned)
    assert r_folded["correct"] == r_tuned["correct"]
    assert r_folded["loss"] == pytest.approx(r_tuned["loss"], rel=1e-5)


def test_missing_structure_is_a_clear_error_and_writes_nothing(pipeline, tmp_path, capsys):
    out = tmp_path / "tuned.pt"
    code, _, err = run_cli(capsys, "finetune", pipeline["trained"], *DATA, "-o", out, "--no-progress")
    assert code != 0 and "Traceback" not in err
    assert str(pipeline["trained"]) in err and "no selected structure" in err
    assert "glorac search" in err and "--structure FILE" in err
    assert not out.exists() and not out.with_name("tuned.metrics.jsonl").exists()


def test_existing_output_needs_force(pipeline, tmp_path, capsys):
    out = tmp_path / "tuned.pt"
    out.write_bytes(b"precious")
    code, _, err = run_cli(capsys, "finetune", pipeline["searched"], *DATA, "-o", out, "--no-progress")
    assert code != 0 and "--force" in err and out.read_bytes() == b"precious"


def _hand_structure(supernet) -> Structure:
    """A = vector, B = lora(2), D = vector: A_in, C_out, C_in and E go unused."""
    choice = LayerChoice(A=Kind(kind="vector"), B=Kind(kind="lora", rank=2), D=Kind(kind="vector"))
    return Structure(layers={name: choice for name in supernet.adapters})


def test_structure_file_trains_only_the_tensors_it_uses(pipeline, tmp_path, capsys):
    structure = _hand_structure(glorac.load(pipeline["trained"]))
    structure_file = tmp_path / "hand.json"
    structure_file.write_text(structure.model_dump_json())
    out = tmp_path / "tuned.pt"
    # A large weight decay: were AdamW to decay the unused tensors, they would visibly shrink.
    code, _, err = run_cli(capsys, "finetune", pipeline["trained"], *DATA, "--structure", structure_file,
                           "-o", out, "--epochs", "1", "--warmup-epochs", "0", "--weight-decay", "0.5", "--no-progress")
    assert code == 0, err
    assert glorac.load(out).structure == structure
    before, after = _tensors(pipeline["trained"]), _tensors(out)
    for key in before:
        param = key.rsplit(".", 1)[1]
        if param in ("A_in", "C_out", "C_in", "E"):
            assert before[key].abs().sum() > 0, key  # a non-zero tensor, so the check means something
            assert torch.equal(before[key], after[key]), key
        elif param in ("A_out", "B_out", "B_in", "D") or key.startswith("head."):
            assert not torch.equal(before[key], after[key]), key
    # A fine-tuned checkpoint is not a supernet run to resume.
    code, _, err = run_cli(capsys, "train", pipeline["trained"], *DATA, "-o", out, "--resume", "--no-progress")
    assert code != 0 and "glorac finetune" in err


def test_structure_outside_the_space_names_the_file(pipeline, tmp_path, capsys):
    sn = glorac.load(pipeline["trained"])
    bad = Structure(layers={n: LayerChoice(A=Kind(kind="lora", rank=5)) for n in sn.adapters})
    structure_file = tmp_path / "bad.json"
    structure_file.write_text(bad.model_dump_json())
    out = tmp_path / "tuned.pt"
    code, _, err = run_cli(capsys, "finetune", pipeline["trained"], *DATA, "--structure", structure_file,
                           "-o", out, "--no-progress")
    assert code != 0 and str(structure_file) in err and "outside" in err and not out.exists()


# ---------------------------------------------------------------- per-run init seed


def _first_step_in_factors(monkeypatch, checkpoint: Path, out: Path, *flags: str) -> dict[str, torch.Tensor]:
    """The in-side factors a `glorac train` run starts its first step from (it stops after it)."""
    from glorac import trainer as train_mod

    seen: dict[str, torch.Tensor] = {}
    original = train_mod.Trainer._step

    def snapshot_then_stop(self, indices, bar):
        if not seen:
            seen.update({k: v.clone() for k, v in self.supernet.adapter_state_dict().items() if k.endswith("_in")})
        original(self, indices, bar)
        self._stop_requested = True

    monkeypatch.setattr(train_mod.Trainer, "_step", snapshot_then_stop)
    assert main(["train", str(checkpoint), *DATA, "-o", str(out), "--no-progress", *flags]) == 130
    monkeypatch.setattr(train_mod.Trainer, "_step", original)
    return seen


def _in_factors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in _tensors(path).items() if k.endswith("_in")}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_seed_draws_the_in_side_factors(pipeline, tmp_path, monkeypatch):
    compiled = pipeline["compiled"]
    seed0 = _first_step_in_factors(monkeypatch, compiled, tmp_path / "a.pt", "--seed", "0")
    seed0_again = _first_step_in_factors(monkeypatch, compiled, tmp_path / "b.pt", "--seed", "0")
    seed1 = _first_step_in_factors(monkeypatch, compiled, tmp_path / "c.pt", "--seed", "1")
    assert seed0 and _same(seed0, seed0_again)
    assert all(not torch.equal(seed0[k], seed1[k]) for k in seed0)
    assert _same(_tensors(tmp_path / "a.pt"), _tensors(tmp_path / "b.pt"))  # same seed, same run
    # The spec's seed (3) is compile's, and the re-draw follows compile's order: same init.
    spec_seed = _first_step_in_factors(monkeypatch, compiled, tmp_path / "d.pt")
    assert _same(spec_seed, _in_factors(compiled))


def test_a_trained_supernet_is_not_redrawn(pipeline, tmp_path, monkeypatch):
    trained = pipeline["trained"]
    start = _first_step_in_factors(monkeypatch, trained, tmp_path / "again.pt", "--seed", "1")
    assert _same(start, _in_factors(trained))
