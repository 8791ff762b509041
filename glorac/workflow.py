"""The run-time stages on paths: what the CLI commands call.

Each function reads a checkpoint, runs the object-level stage of :mod:`glorac.stages`
and writes what it produced; on one process or, under ``torchrun``, on every rank (rank
0 alone writes files). Outputs are checked before any work starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from torch import nn

from . import stages
from .checkpoint import load_checkpoint, read_checkpoint, save, supernet_from
from .data import TaskData, check_source, load_data, require_split
from .distributed import Dist, barrier
from .errors import CheckpointError, GloraError
from .history import FinetuneRecord
from .ir import Structure, TrainSettings
from .overrides import apply_overrides
from .safeio import check_output
from .structure_files import read_structure, write_structure


def data_for(model_or_supernet, source: str, **kwargs) -> TaskData:
    """The task data for a model (preprocessing from its config); files skipped as
    unreadable are reported on stderr before any work starts."""
    from .supernet import Supernet

    supernet = model_or_supernet if isinstance(model_or_supernet, Supernet) else None
    base = supernet.base_model if supernet is not None else model_or_supernet
    if kwargs.get("task") is None:  # the task the model was compiled for
        kwargs["task"] = (supernet.model_ref.task if supernet is not None and supernet.model_ref else None) \
            or "classification"
    data = load_data(source, model=base, **kwargs)
    stages.check_head(base, data)
    report = data.skipped_report()
    if report:
        print(f"glorac: {report}", file=sys.stderr)
    return data


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise GloraError(f"--batch-size {batch_size}: the evaluation batch size must be a whole number ≥ 1; "
                         "pass e.g. --batch-size 64, or leave it out.")


def default_train_output(checkpoint: Path) -> Path:
    stem = checkpoint.name.rsplit(".", 1)[0]
    return checkpoint.with_name(stem.removesuffix(".trained") + ".trained.pt")


def train_checkpoint(checkpoint: str, data_source: str, *, output: Optional[str] = None, resume: bool = False,
                     force: bool = False, overrides: Optional[dict] = None, dist: Dist = Dist(),
                     data_options: Optional[dict] = None, progress: bool = True, validation=None):
    """Train the supernet stored at ``checkpoint``; returns (supernet, TrainState, output path).
    ``validation``: a :class:`glorac.trainer.Validation` (default: validate every epoch)."""
    from .trainer import Trainer, metrics_path

    out = Path(output) if output else default_train_output(Path(checkpoint))
    source = out if resume else Path(checkpoint)
    if resume and not out.exists():
        raise CheckpointError(f"--resume: {out} does not exist yet; start without --resume.")
    if not resume and out.exists() and not force:
        raise CheckpointError(f"{out} already exists; pass --resume to continue that run or --force "
                              "to start over.")
    check_output(out, force=True, what="output")
    check_output(metrics_path(out), force=True, what="metrics log")
    ckpt = read_checkpoint(source)  # cheap: the model is built only once everything else checks out
    stored = ckpt.meta.history.train
    if resume and ckpt.meta.history.finetune is not None:
        raise CheckpointError(f"--resume: {out} was written by `glorac finetune`, which trains one structure; "
                              "rerun that command with --force instead.")
    settings = stored.settings if resume and stored else ckpt.meta.spec.training
    settings = apply_overrides(settings, overrides or {})
    check_settings_for_task(settings, ckpt.meta.model_ref)
    if resume and stored and stored.world != dist.world:
        raise CheckpointError(f"{out} was written by a run with {stored.world} process(es); resume it "
                              f"with the same number (now {dist.world}).")
    check_source(data_source)  # a wrong --data path is reported before the model is built
    supernet = supernet_from(ckpt, device=str(dist.device))
    if not resume:  # a fresh run starts a fresh record
        supernet.history = supernet.history.model_copy(update={"train": None})
    data = data_for(supernet, data_source, **(data_options or {}))
    require_split(data, "train")
    trainer = Trainer(supernet, data, settings, dist, out, progress=progress, validation=validation)
    if resume and stored:
        trainer.restore(stored, ckpt.extra_tensors)
    state = trainer.fit()
    return supernet, state, out


def check_settings_for_task(settings: TrainSettings, model_ref) -> None:
    """Training settings that need a task the checkpoint's model does not have, refused
    before the model is built."""
    if settings.group_by_length and (model_ref is None or model_ref.task != "causal-lm"):
        raise GloraError("group_by_length groups examples by their token count, which only causal-LM data "
                         "has (this checkpoint's task is classification); turn it off (--no-group-by-length "
                         "or group_by_length = false in the spec).")


def default_finetune_output(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.rsplit(".", 1)[0] + ".finetuned.pt")


def _check_finetune_output(checkpoint: Path, out: Path, force: bool) -> None:
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise CheckpointError(f"output {out} is the input checkpoint itself; choose another -o path.")
    if out.exists() and not force:
        raise CheckpointError(f"{out} already exists; pass --force to overwrite it.")


def _finetune_structure(supernet, checkpoint: str, structure: Optional[Structure]) -> Structure:
    """The structure to fine-tune: the one given, else the one the checkpoint has selected."""
    if structure is not None:
        return structure
    if supernet.structure is None:
        raise GloraError(
            f"{checkpoint} has no selected structure to fine-tune: it is a supernet (from `glorac compile` "
            "or `glorac train`). Run `glorac search` on it first and fine-tune the checkpoint that writes "
            "(-o SEARCHED.pt), or pass --structure FILE (the JSON of `glorac search --structure`).")
    return supernet.structure


def finetune_checkpoint(checkpoint: str, data_source: str, *, output: Optional[str] = None,
                        structure: Optional[str] = None, overrides: Optional[dict] = None, force: bool = False,
                        dist: Dist = Dist(), data_options: Optional[dict] = None, progress: bool = True,
                        validation=None):
    """Fine-tune one structure of the checkpoint on the train split (not part of the GLoRA paper).

    The structure is ``structure`` (a JSON file) or the one ``glorac search`` selected. Only
    the adapter tensors it uses and the spec's ``train`` modules learn, with the spec's
    training settings updated by ``overrides``. The output keeps the structure selected, so
    fold and eval take it as it is. ``validation`` as for :func:`train_checkpoint`. Returns
    (supernet, TrainState, output path).
    """
    from .trainer import metrics_path

    out = Path(output) if output else default_finetune_output(Path(checkpoint))
    _check_finetune_output(Path(checkpoint), out, force)
    check_output(out, force=True, what="output")
    check_output(metrics_path(out), force=True, what="metrics log")
    ckpt = read_checkpoint(checkpoint)
    settings = apply_overrides(ckpt.meta.spec.training, overrides or {})
    check_settings_for_task(settings, ckpt.meta.model_ref)
    given = read_structure(structure) if structure is not None else None
    check_source(data_source)
    supernet = supernet_from(ckpt, device=str(dist.device))
    chosen = _finetune_structure(supernet, checkpoint, given)
    # The trainer records its own progress under `train`; keep the supernet run's record.
    history = supernet.history
    record = FinetuneRecord(source=str(checkpoint), structure=structure or "selected in the checkpoint",
                            data=data_source, supernet_train=history.train)
    supernet.history = history.model_copy(update={"finetune": record, "train": None})
    data = data_for(supernet, data_source, **(data_options or {}))
    try:
        state = stages.train(supernet, data, settings, structure=chosen, output=out, dist=dist, progress=progress,
                             validation=validation)
    except GloraError as exc:  # e.g. the structure does not fit this supernet's spaces
        raise type(exc)(f"{structure or checkpoint}: {exc}") from None
    return supernet, state, out


def parse_budget(text: Optional[str]) -> Optional[int]:
    """``--budget 0.86M`` → 860000, read as the spec language reads `budget`."""
    if text is None:
        return None
    from .dsl.values import read_param_count

    value, problem = read_param_count(text.strip())
    if problem:
        raise GloraError(f"--budget {text}: {problem[0]}" + (f" ({problem[1]})" if problem[1] else ""))
    return value


def search_checkpoint(checkpoint: str, data_source: str, *, output: str, budget: Optional[str] = None,
                      overrides: Optional[dict] = None, structure_out: Optional[str] = None,
                      plot: Optional[str] = None, force: bool = False, dist: Dist = Dist(),
                      batch_size: int = 64, data_options: Optional[dict] = None, progress: bool = True):
    """Evolutionary search on the val split; writes a checkpoint with the chosen structure."""
    check_batch_size(batch_size)
    for path, what in ((output, "output"), (structure_out, "structure file"), (plot, "plot")):
        if path:
            check_output(path, force=force, what=what)
    cap = parse_budget(budget)
    ckpt = read_checkpoint(checkpoint)
    settings = apply_overrides(ckpt.meta.spec.search, overrides or {})
    check_source(data_source)
    supernet = supernet_from(ckpt, device=str(dist.device))
    data = data_for(supernet, data_source, **(data_options or {}))
    try:
        result = stages.search(supernet, data, budget=cap, settings=settings, batch_size=batch_size, dist=dist,
                               progress=progress, data_name=data_source)
    except GloraError as exc:
        raise type(exc)(f"{checkpoint}: {exc}") from None
    if dist.main:
        save(supernet, output, force=force)
        if structure_out:
            write_structure(result.best.structure, structure_out, force=force)
        if plot:
            from .search_plots import plot_search

            plot_search(result, plot, task=supernet.history.search.task)
    barrier(dist)
    return supernet, result


def load_for_eval(path: str, *, structure: Optional[str] = None,
                  device: str = "cpu") -> tuple[nn.Module, str, Optional[str]]:
    """(model, what it is, its task): a supernet checkpoint (with its structure) or a
    folded model, ready to evaluate."""
    from .folding.files import HF_SIDECAR
    from .folding.load import load_folded

    p = Path(path)
    if (p.is_dir() and (p / HF_SIDECAR).exists()) or p.suffix == ".safetensors":
        return load_folded(p, device=device)
    supernet, _ = load_checkpoint(p, device=device)
    chosen = supernet.plan.resolve_structure(read_structure(structure) if structure else None, supernet.structure)
    supernet.activate(chosen)
    return supernet, "supernet", supernet.model_ref.task


def evaluate_path(path: str, data_source: str, *, split: str = "test", structure: Optional[str] = None,
                  batch_size: int = 64, device: str = "cpu", data_options: Optional[dict] = None,
                  progress: bool = False) -> dict:
    check_batch_size(batch_size)
    check_source(data_source)
    model, what, task = load_for_eval(path, structure=structure, device=device)
    data = data_for(model, data_source, task=task, **(data_options or {}))
    result = stages.evaluate(model, data, split, batch_size=batch_size, device=device, progress=progress)
    result.update(what=what, split=split)
    return result
