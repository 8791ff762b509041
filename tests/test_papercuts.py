"""Small CLI papercuts: --version, eval's progress bar and device, search's progress,
per-epoch validation (with --keep-best), and transformers' load report shown once."""

from __future__ import annotations

import io
import json
from importlib.metadata import version

import pytest
import torch

import glorac
from glorac.structure_files import write_structure
from glorac.trainer import validation_structure
from tests.reference import run_cli
from tests import test_causal_lm, test_train
from tests.test_train import DATA, _adapters

# The tiny models' fixtures, shared with their own tests.
lm_dir, supernet_file = test_causal_lm.lm_dir, test_train.supernet_file


@pytest.fixture()
def terminal(monkeypatch):
    """rich draws its bars as on a terminal (the captured streams are not TTYs)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture()
def rich_console(monkeypatch):
    """rich's default console (where the train and search bars draw) as a wide terminal
    writing into a buffer."""
    import rich
    from rich.console import Console

    buffer = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=buffer, force_terminal=True, width=200))
    return buffer


def _largest_structure_file(checkpoint, path):
    """The structure supernet training validates on, as a file eval and finetune take."""
    write_structure(validation_structure(glorac.load(checkpoint), None), path)
    return path


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- --version


def test_version_prints_glorac_and_torch_on_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(capsys, "--version")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out == f"glorac {glorac.__version__} (torch {version('torch')})\n"


# ----------------------------------------------------------------------------- eval


def test_accuracy_reports_the_running_score_after_every_batch():
    from glorac.data import Batch
    from glorac.scoring import accuracy

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    batches = [Batch(inputs=(torch.randn(5, 4),), labels=torch.randint(0, 3, (5,))) for _ in range(3)]
    running: list[dict] = []
    result = accuracy(model, batches, on_batch=running.append)
    assert [r["n"] for r in running] == [5, 10, 15]
    assert running[-1] == result == accuracy(model, batches)


def test_eval_progress_draws_batches_and_running_accuracy_or_perplexity():
    from rich.console import Console

    from glorac.progress import EvalProgress

    assert EvalProgress(False, 3, "classification").on_batch is None  # off: no per-batch sync
    for task, score, shown in (("classification", {"accuracy": 0.75, "loss": 0.5}, "acc 0.7500  loss 0.5000"),
                               ("causal-lm", {"loss": 2.0, "perplexity": 7.389}, "loss 2.0000  ppl 7.389")):
        buffer = io.StringIO()
        with EvalProgress(True, 2, task, console=Console(file=buffer, force_terminal=True, width=150)) as bar:
            bar.on_batch(score)
            bar.on_batch(score)
        drawn = buffer.getvalue()
        assert "eval" in drawn and "2/2" in drawn and shown in drawn


def test_eval_shows_progress_on_stderr_only_and_defaults_to_cuda(supernet_file, tmp_path, capsys,
                                                                 terminal, monkeypatch):
    structure = _largest_structure_file(supernet_file, tmp_path / "largest.json")
    code, out, err = run_cli(capsys, "eval", supernet_file, *DATA, "--structure", structure, "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 360  # stdout holds the result alone, on the CPU (no GPU here)
    assert "eval" in err and "acc " in err and "6/6" in err
    code, out, err = run_cli(capsys, "eval", supernet_file, *DATA, "--structure", structure, "--no-progress")
    assert code == 0 and "top-1" in out and err == ""

    import glorac.workflow

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(glorac.workflow, "evaluate_path",
                        lambda *a, **k: seen.update(k) or {"what": "x", "accuracy": 1, "correct": 1, "n": 1, "loss": 0})
    assert run_cli(capsys, "eval", supernet_file, *DATA)[0] == 0
    assert seen["device"] == "cuda"  # as --help says: cuda when available
    assert run_cli(capsys, "eval", supernet_file, *DATA, "--device", "cpu")[0] == 0
    assert seen["device"] == "cpu"


# ----------------------------------------------------------------------------- search


def test_search_progress_shows_the_best_from_the_first_candidate(rich_console):
    from glorac.progress import SearchProgress

    with SearchProgress(True, 5, 2) as bar:
        bar.next_generation()
        bar.advance(0.25)
        assert "gen 0/2  best 0.2500" in bar.bar.tasks[0].fields["info"]
        bar.advance(0.125)
        assert "best 0.2500" in bar.bar.tasks[0].fields["info"]
        bar.next_generation()
        bar.advance(0.5, count=2)
        assert "gen 1/2  best 0.5000" in bar.bar.tasks[0].fields["info"]


def test_search_prints_its_progress(supernet_file, tmp_path, capsys, rich_console, monkeypatch):
    from glorac.progress import SearchProgress

    shown, advance = [], SearchProgress.advance

    def recorded(self, fitness, count=1):
        advance(self, fitness, count)
        shown.append(self.bar.tasks[0].fields["info"])

    monkeypatch.setattr(SearchProgress, "advance", recorded)
    code, _, err = run_cli(capsys, "search", supernet_file, *DATA, "-o", tmp_path / "s.pt",
                           "--population", "4", "--generations", "1")
    assert code == 0, err
    assert len(shown) == 12 and shown[0].startswith("gen 0/1  best 0.") and shown[-1].startswith("gen 1/1  best")
    drawn = rich_console.getvalue()  # what a terminal got
    assert "search" in drawn and "12/12" in drawn and "best 0." in drawn

# ----------------------------------------------------------------------------- validation


def test_validation_logs_every_epoch_and_leaves_the_trained_tensors_bit_identical(
        supernet_file, tmp_path, capsys, monkeypatch, rich_console):
    from glorac import trainer

    real = trainer.accuracy

    def drawing_accuracy(*args, **kwargs):  # a validation that uses the RNG must not shift dropout's draws
        torch.rand(100)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "accuracy", drawing_accuracy)
    plain, validated = tmp_path / "plain.pt", tmp_path / "validated.pt"
    code, _, err = run_cli(capsys, "train", supernet_file, *DATA, "-o", plain, "--no-validate", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", supernet_file, *DATA, "-o", validated)
    assert code == 0, err
    a, b = _adapters(plain), _adapters(validated)
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [r for r in _log(tmp_path / "validated.metrics.jsonl") if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["val_accuracy"] <= 1 and r["val_loss"] > 0 for r in epochs)
    assert [r for r in glorac.load(validated).history.train.log if "epoch" in r] == epochs
    assert not any("val_loss" in r for r in _log(tmp_path / "plain.metrics.jsonl"))
    assert "epoch 2 val acc " in rich_console.getvalue()  # on the progress line

    # Supernet training validates the largest structure: eval of it on val gives the same numbers.
    structure = _largest_structure_file(validated, tmp_path / "largest.json")
    score = glorac.workflow.evaluate_path(str(validated), "builtin:digits", split="val", structure=str(structure),
                                          data_options={"image_size": 8})
    assert score["accuracy"] == epochs[-1]["val_accuracy"]
    assert score["loss"] == pytest.approx(epochs[-1]["val_loss"], rel=1e-6)


def test_keep_best_writes_the_best_epochs_checkpoint(supernet_file, tmp_path, capsys, monkeypatch):
    from glorac import trainer

    scores = iter([0.6, 0.2, 0.9])  # val accuracy of epochs 1, 2, 3: the best is 1, then 3
    kept = []

    def scripted(self):
        return {"accuracy": next(scores), "loss": 1.0}

    def save(self, *, best=False, original=trainer.Trainer.save):
        original(self, best=best)
        kept.append(glorac.load(trainer.best_path(self.output)).history.train.epochs_done)

    monkeypatch.setattr(trainer.Trainer, "_val_score", scripted)
    monkeypatch.setattr(trainer.Trainer, "save", save)
    out = tmp_path / "run.pt"
    code, stdout, err = run_cli(capsys, "train", supernet_file, *DATA, "-o", out, "--epochs", "3", "--keep-best",
                                "--no-progress")
    assert code == 0, err
    assert kept == [1, 1, 3] and (tmp_path / "run.best.pt").is_file()
    assert f"wrote {tmp_path / 'run.best.pt'}" in stdout
    assert trainer.val_fitness("causal-lm", {"val_loss": 1.0}) > trainer.val_fitness("causal-lm", {"val_loss": 2.0})


def test_validation_options_are_checked(supernet_file, tmp_path, capsys, monkeypatch):
    from glorac.data import load_data
    from glorac.distributed import Dist
    from glorac.trainer import validation_shares

    import glorac.workflow

    monkeypatch.setattr(glorac.workflow, "supernet_from", lambda *a, **k: pytest.fail("the model was built"))
    code, _, err = run_cli(capsys, "train", supernet_file, *DATA, "--keep-best", "--no-validate", "--no-progress")
    assert code == 1 and "--keep-best" in err and "--no-validate" in err
    assert not (tmp_path / "sn.trained.pt").exists()
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        run_cli(capsys, "train", supernet_file, *DATA, "--val-batches", "0")
    assert "--val-batches: '0' is not a whole number ≥ 1" in capsys.readouterr().err
    data = load_data("builtin:digits", model=None, image_size=8)
    assert [len(b.labels) for b, _ in validation_shares(data, 48, 2, Dist())] == [48, 48]
    assert len(validation_shares(data, 48, None, Dist())) == 8  # 359 examples


def test_data_without_a_val_split_trains_without_validation(tmp_path):
    import dataclasses

    from glorac.data import load_data
    from glorac.errors import GloraError
    from glorac.trainer import Trainer, Validation

    supernet = glorac.build_supernet(glorac.loads_spec(test_train.SPEC), test_train.DigitNet())
    data = load_data("builtin:digits", model=None, image_size=8)
    data = dataclasses.replace(data, splits={"train": torch.utils.data.Subset(data.splits["train"], range(96))})
    with pytest.raises(GloraError, match="has no val split"):
        Trainer(supernet, data, supernet.spec.training, output=tmp_path / "x.pt", validation=Validation(keep_best=True))
    state = Trainer(supernet, data, supernet.spec.training, progress=False).fit()
    assert [r for r in state.history if "epoch" in r] == [{"epoch": 1, "step": 2}, {"epoch": 2, "step": 4}]


def test_finetune_validates_the_structure_it_trains(supernet_file, tmp_path, capsys):
    from glorac.distributed import Dist
    from glorac.scoring import accuracy
    from glorac.trainer import validation_shares

    structure = _largest_structure_file(supernet_file, tmp_path / "largest.json")
    out = tmp_path / "ft.pt"
    code, _, err = run_cli(capsys, "finetune", supernet_file, *DATA, "--structure", structure, "-o", out,
                           "--epochs", "1", "--warmup-epochs", "0", "--val-batches", "2", "--no-progress")
    assert code == 0, err
    [epoch] = [r for r in _log(tmp_path / "ft.metrics.jsonl") if "epoch" in r]
    finetuned = glorac.load(out)
    finetuned.activate(finetuned.structure)  # the structure fine-tuned, kept selected
    data = glorac.workflow.data_for(finetuned, "builtin:digits", image_size=8)
    score = accuracy(finetuned, [batch for batch, _ in validation_shares(data, 48, 2, Dist())])
    assert score["n"] == 96 and score["accuracy"] == epoch["val_accuracy"]
    assert score["loss"] == pytest.approx(epoch["val_loss"], rel=1e-6)


def test_validation_puts_back_frozen_batch_norm():
    from glorac.trainer import freeze_norm_statistics, modes_kept

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5)).train()
    freeze_norm_statistics(model)
    with modes_kept(model):
        model.eval()
        model.train()  # what evaluation does afterwards: it would unfreeze the statistics
    assert [m.training for m in model] == [True, False, True] and model.training


# ----------------------------------------------------------------------------- transformers' report


def test_transformers_load_report_is_shown_at_compile_only(lm_dir, tmp_path, capsys):
    """compile (where the model is chosen) shows transformers' weight-loading bar and its
    UNEXPECTED/MISSING report; train, eval and fold rebuild that base silently, and leave
    transformers' own settings as they found them."""
    import logging

    from transformers.utils import logging as hf_logging

    from tests.test_causal_lm import SPEC

    _, base, _ = lm_dir
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        rows = [{"text": ["the cat sat", "Q: yes A: no"][i % 2], "label": i % 2} for i in range(8)]
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = tmp_path / "cls.glora"
    spec.write_text(SPEC.replace("budget 4K", "budget 40K"))
    settings = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    # transformers' handler keeps the stderr of when it was made; read its log here instead.
    report = logging.StreamHandler(io.StringIO())
    hf_logging.add_handler(report)
    try:
        sn, structure, folded = tmp_path / "sn.pt", tmp_path / "s.json", tmp_path / "folded"
        code, _, err = run_cli(capsys, "compile", spec, "--model", f"hf:{base}", "--num-classes", "2", "-o", sn)
        assert code == 0, err
        shown = report.stream.getvalue()
        assert "Loading weights" in err and "LOAD REPORT" in shown and "UNEXPECTED" in shown and "MISSING" in shown
        _largest_structure_file(sn, structure)
        text = ["--data", data, "--tokenizer", base]
        for argv in (["train", sn, *text, "--epochs", "1", "--no-progress", "-o", tmp_path / "t.pt"],
                     ["eval", sn, *text, "--structure", structure, "--no-progress"],
                     ["fold", sn, "--structure", structure, "-o", folded],
                     ["eval", folded, *text, "--no-progress"]):
            code, _, err = run_cli(capsys, *argv)
            assert code == 0, err
            assert "Loading weights" not in err and "Writing" not in err, argv[0]
        assert report.stream.getvalue() == shown, argv[0]  # nothing logged since compile
    finally:
        hf_logging.remove_handler(report)
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == settings
