"""Supernet training, search and eval on real (offline) data with a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.checkpoint import read_checkpoint
from glorac.cli import main
from glorac.sampling import StructureSampler
from tests.reference import run_torchrun

DATA = ["--data", "builtin:digits", "--image-size", "8"]

SPEC = PAPER_SPACE + """
adapt "body.*" type Linear with paper(r=2)
train "head"
budget 3K
training { epochs = 2  lr = 3e-3  batch_size = 48  warmup_epochs = 1  seed = 3 }
search { population = 8  generations = 2  parents = 4  mutations = 4  crossovers = 4  seed = 1 }
"""


class DigitNet(nn.Module):
    """An MLP over 3×8×8 images, with dropout so that the RNG state matters on resume."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(192, 48), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(48, 48), nn.ReLU())
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def digit_net(num_classes: int = 10) -> nn.Module:
    return DigitNet(num_classes)


def digit_net_no_dropout(num_classes: int = 10) -> nn.Module:
    # Dropout masks depend on how the batch is split across processes.
    return DigitNet(num_classes, dropout=0.0)


@pytest.fixture()
def supernet_file(tmp_path):
    spec = tmp_path / "digits.glora"
    spec.write_text(SPEC)
    out = tmp_path / "sn.pt"
    assert main(["compile", str(spec), "--model", "tests.test_train:digit_net", "-o", str(out)]) == 0
    return out


def _adapters(path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(path)
    return {**ckpt.adapters, **ckpt.trained}


def test_train_changes_only_adapters_and_head_and_logs(supernet_file, tmp_path):
    before = _adapters(supernet_file)
    assert main(["train", str(supernet_file), *DATA, "--no-progress"]) == 0
    trained = tmp_path / "sn.trained.pt"
    after = _adapters(trained)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # Loading re-checks the base digest: base weights were not touched.
    sn = glorac.load(trained)
    record = sn.history.train
    assert record.epochs_done == 2 and record.step == 2 * -(-1078 // 48)
    lines = [json.loads(x) for x in (tmp_path / "sn.trained.metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert losses and all(r.get("lr", 1) > 0 for r in lines)
    assert losses[-1] < losses[0]  # it learns


def test_interrupted_and_resumed_run_equals_uninterrupted(supernet_file, tmp_path, monkeypatch, capsys):
    import shlex

    from glorac import trainer as train_mod

    full = tmp_path / "full.pt"
    assert main(["train", str(supernet_file), *DATA, "-o", str(full), "--no-progress"]) == 0
    part = tmp_path / "part.pt"
    original = train_mod.Trainer._step

    def interrupt_at_step_7(self, indices, bar):  # a Ctrl-C arriving mid-epoch
        original(self, indices, bar)
        if self.state.step == 7:
            self._stop_requested = True

    monkeypatch.setattr(train_mod.Trainer, "_step", interrupt_at_step_7)
    capsys.readouterr()
    assert main(["train", str(supernet_file), *DATA, "-o", str(part), "--no-progress", "--force"]) == 130
    err = capsys.readouterr().err
    assert f"interrupted after step 7 of 46; the run's state (adapters, optimizer, RNG) is saved to {part}" in err
    assert glorac.load(part).history.train.step == 7
    monkeypatch.setattr(train_mod.Trainer, "_step", original)
    command = shlex.split(err.split("Resume it exactly where it stopped with: ")[1].strip())
    assert command[0] == "glorac" and "--resume" in command and "--force" not in command
    assert main(command[1:]) == 0  # the command the message gives, as it gives it
    a, b = _adapters(full), _adapters(part)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(supernet_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run.pt"
    assert main(["train", str(supernet_file), *DATA, "-o", str(out), "--epochs", "1", "--warmup-epochs", "0", "--no-progress"]) == 0
    good = out.read_bytes()
    from glorac import trainer as train_mod

    def nan_loss(*args, **kwargs):
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(train_mod.F, "cross_entropy", nan_loss)
    assert main(["train", str(supernet_file), *DATA, "-o", str(out), "--force", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "loss became nan" in err and "Traceback" not in err
    assert out.read_bytes() == good


def test_existing_output_needs_resume_or_force(supernet_file, tmp_path, capsys):
    out = tmp_path / "run.pt"
    out.write_bytes(b"precious")
    assert main(["train", str(supernet_file), *DATA, "-o", str(out), "--no-progress"]) == 1
    assert "--resume" in capsys.readouterr().err and out.read_bytes() == b"precious"


def test_sampler_is_a_function_of_seed_and_step():
    spaces = glorac.build_supernet(glorac.loads_spec(SPEC), DigitNet()).spaces()
    a, b = StructureSampler(spaces, seed=5), StructureSampler(spaces, seed=5)
    assert [a(s) for s in range(20)] == [b(s) for s in reversed(range(20))][::-1]
    assert len({a(s).model_dump_json() for s in range(20)}) > 10
    assert StructureSampler(spaces, seed=6)(0) != a(0) or StructureSampler(spaces, seed=6)(1) != a(1)


def test_search_fold_eval_pipeline(supernet_file, tmp_path):
    assert main(["train", str(supernet_file), *DATA, "--no-progress"]) == 0
    trained = tmp_path / "sn.trained.pt"
    searched, structure, plot = tmp_path / "s.pt", tmp_path / "s.json", tmp_path / "s.png"
    assert main(["search", str(trained), *DATA, "-o", str(searched), "--structure", str(structure),
                 "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sn = glorac.load(searched)
    search = sn.history.search
    assert search.best_params <= 3000 and sn.structure_params() == search.best_params
    # The structure file is what `fold --structure` takes; folding it gives the same numbers.
    folded = tmp_path / "f.safetensors"
    assert main(["fold", str(trained), "--structure", str(structure), "-o", str(folded)]) == 0
    r1 = glorac.workflow.evaluate_path(str(folded), "builtin:digits", data_options={"image_size": 8})
    r2 = glorac.workflow.evaluate_path(str(searched), "builtin:digits", data_options={"image_size": 8})
    assert r1["n"] == r2["n"] == 360
    assert r1["correct"] == r2["correct"] and r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
    # Same seed, same search.
    again = tmp_path / "again.pt"
    assert main(["search", str(trained), *DATA, "-o", str(again)]) == 0
    assert glorac.load(again).structure == sn.structure


def test_search_budget_below_minimum_names_it(supernet_file, tmp_path, capsys):
    spec = tmp_path / "tight.glora"
    spec.write_text(SPEC.replace("A: lora(r) | vector | scalar | none", "A: vector"))
    out = tmp_path / "tight.pt"
    assert main(["compile", str(spec), "--model", "tests.test_train:digit_net", "-o", str(out)]) == 0
    assert main(["search", str(out), *DATA, "-o", str(tmp_path / "x.pt"), "--budget", "10"]) == 1
    err = capsys.readouterr().err
    assert "below the smallest structure (96" in err and "Traceback" not in err


@pytest.mark.parametrize("data, fragment", [
    (["--data", "/nonexistent/dir"], "does not exist"),
    (["--data", "builtin:nosuch"], "builtin"),
])
def test_bad_data_is_a_clear_error(supernet_file, data, fragment, capsys):
    assert main(["train", str(supernet_file), *data, "--image-size", "8", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_class_count_mismatch(tmp_path, capsys):
    spec = tmp_path / "digits.glora"
    spec.write_text(SPEC)
    out = tmp_path / "sn7.pt"
    assert main(["compile", str(spec), "--model", "tests.test_train:digit_net", "--num-classes", "7",
                 "-o", str(out)]) == 0
    assert main(["train", str(out), *DATA, "--no-progress"]) != 0
    assert "10 classes" in capsys.readouterr().err


def test_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU processes == 1 process with the same global batch."""
    spec = tmp_path / "digits.glora"
    spec.write_text(SPEC)
    supernet_file = tmp_path / "sn.pt"
    assert main(["compile", str(spec), "--model", "tests.test_train:digit_net_no_dropout", "-o",
                 str(supernet_file)]) == 0
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    assert main(["train", str(supernet_file), *DATA, "-o", str(one), "--epochs", "1", "--warmup-epochs", "0", "--no-progress"]) == 0
    proc = run_torchrun("train", supernet_file, *DATA, "-o", two, "--epochs", "1", "--warmup-epochs", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _adapters(one), _adapters(two)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # Each process validates its share of the val split; the sums are added over both.
    [val_one], [val_two] = ([r for r in glorac.load(p).history.train.log if "val_loss" in r] for p in (one, two))
    assert val_one["val_accuracy"] == pytest.approx(val_two["val_accuracy"], abs=1 / 359)
    assert val_one["val_loss"] == pytest.approx(val_two["val_loss"], rel=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_on_the_cpu(supernet_file, tmp_path, precision):
    from glorac.trainer import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    out = tmp_path / f"{precision}.pt"
    assert main(["train", str(supernet_file), *DATA, "-o", str(out), "--epochs", "1", "--warmup-epochs", "0",
                 "--precision", precision, "--no-progress"]) == 0
    record = glorac.load(out).history.train
    assert record.settings.precision == precision
    losses = [r["loss"] for r in record.log if "loss" in r]
    assert losses and all(l == l and l < 10 for l in losses)  # finite, sane


def test_length_grouped_batches_cover_every_example_once_longest_first():
    from glorac.trainer import LENGTH_WINDOW, batch_order

    lengths = [(i * 7919) % 97 + 1 for i in range(1000)]
    batches = batch_order(len(lengths), 8, seed=3, epoch=1, lengths=lengths)
    flat = torch.cat(batches).tolist()
    assert sorted(flat) == list(range(1000))  # a permutation: nothing lost, nothing twice
    assert max(lengths[i] for i in batches[0].tolist()) == max(lengths)
    assert [b.tolist() for b in batch_order(1000, 8, 3, 1, lengths)] == [b.tolist() for b in batches]
    assert [b.tolist() for b in batch_order(1000, 8, 3, 2, lengths)] != [b.tolist() for b in batches]
    # Within a batch the lengths are close: the spread is far below that of random batches.
    spread = sum(max(lengths[i] for i in b.tolist()) - min(lengths[i] for i in b.tolist()) for b in batches)
    plain = sum(max(lengths[i] for i in b.tolist()) - min(lengths[i] for i in b.tolist())
                for b in batch_order(1000, 8, 3, 1))
    assert spread < plain / 4
    assert LENGTH_WINDOW * 8 < 1000  # more than one window here, so the windows are exercised


def test_compile_adapters_trains_the_same_tensors(supernet_file, tmp_path, monkeypatch):
    """training { compile_adapters = true } runs the adapter op compiled (here through
    AOTAutograd without code generation, which the real backend adds on a GPU) and trains
    the tensors the eager op does, then hands the supernet back eager."""
    from glorac.supernet import Supernet

    compiled = []
    original = Supernet.compile_adapters

    def compile_with_aot_eager(self, backend="inductor"):
        compiled.append(backend)
        original(self, None if backend is None else "aot_eager")

    monkeypatch.setattr(Supernet, "compile_adapters", compile_with_aot_eager)
    outs = {}
    for flag in ("--no-compile-adapters", "--compile-adapters"):
        outs[flag] = tmp_path / f"{flag}.pt"
        assert main(["train", str(supernet_file), *DATA, "-o", str(outs[flag]), "--epochs", "1",
                     "--warmup-epochs", "0", "--no-progress", flag]) == 0
    assert compiled == ["inductor", None]  # on for the run, off after it
    a, b = _adapters(outs["--no-compile-adapters"]), _adapters(outs["--compile-adapters"])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
