"""The run-time stages on paths: what the CLI commands call.

Each function reads a checkpoint, runs the object-level stage of :mod:`glorac.stages`
and writes what it produced; on one process or, under ``torchrun``, on every rank (rank
0 alone writes files). Outputs are checked before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import nn

from . import stages
from .checkpoint import load_checkpoint, save
from .data import TaskData, load_data, require_split
from .distributed import Dist, barrier
from .errors import CheckpointError, GloraError
from .history import FinetuneRecord
from .ir import Structure
from .overrides import apply_overrides
from .structure_files import read_structure, write_structure


def data_for(supernet, source: str, **kwargs) -> TaskData:
    """The task data for a supernet's base model (preprocessing from the model's config)."""
    data = load_data(source, model=supernet.base_model, **kwargs)
    stages.check_head(supernet.base_model, data)
    return data


def default_train_output(checkpoint: Path) -> Path:
    stem = checkpoint.name.rsplit(".", 1)[0]
    return checkpoint.with_name(stem.removesuffix(".trained") + ".trained.pt")


def train_checkpoint(checkpoint: str, data_source: str, *, output: Optional[str] = None, resume: bool = False,
                     force: bool = False, overrides: Optional[dict] = None, dist: Dist = Dist(),
                     data_options: Optional[dict] = None, progress: bool = True):
    """Train the supernet stored at ``checkpoint``; returns (supernet, TrainState, output path)."""
    from .trainer import Trainer

    out = Path(output) if output else default_train_output(Path(checkpoint))
    source = out if resume else Path(checkpoint)
    if resume and not out.exists():
        raise CheckpointError(f"--resume: {out} does not exist yet; start without --resume.")
    if not resume and out.exists() and not force:
        raise CheckpointError(f"{out} already exists; pass --resume to continue that run or --force "
                              "to start over.")
    supernet, ckpt = load_checkpoint(source, device=str(dist.device))
    stored = supernet.history.train
    if resume and supernet.history.finetune is not None:
        raise CheckpointError(f"--resume: {out} was written by `glorac finetune`, which trains one structure; "
                              "rerun that command with --force instead.")
    settings = stored.settings if resume and stored else supernet.spec.training
    settings = apply_overrides(settings, overrides or {})
    if not resume:  # a fresh run starts a fresh record
        supernet.history = supernet.history.model_copy(update={"train": None})
    data = data_for(supernet, data_source, **(data_options or {}))
    require_split(data, "train")
    trainer = Trainer(supernet, data, settings, dist, out, progress=progress)
    if resume and stored:
        if stored.world != dist.world:
            raise CheckpointError(f"{out} was written by a run with {stored.world} process(es); resume it "
                                  f"with the same number (now {dist.world}).")
        trainer.restore(stored, ckpt.extra_tensors)
    state = trainer.fit()
    return supernet, state, out


def default_finetune_output(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.rsplit(".", 1)[0] + ".finetuned.pt")


def _check_finetune_output(checkpoint: Path, out: Path, force: bool) -> None:
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise CheckpointError(f"output {out} is the input checkpoint itself; choose another -o path.")
    if out.exists() and not force:
        raise CheckpointError(f"{out} already exists; pass --force to overwrite it.")


def _finetune_structure(supernet, checkpoint: str, structure: Optional[str]) -> Structure:
    """The structure to fine-tune: the file given, else the one the checkpoint has selected."""
    if structure is not None:
        return read_structure(structure)
    if supernet.structure is None:
        raise GloraError(
            f"{checkpoint} has no selected structure to fine-tune: it is a supernet (from `glorac compile` "
            "or `glorac train`). Run `glorac search` on it first and fine-tune the checkpoint that writes "
            "(-o SEARCHED.pt), or pass --structure FILE (the JSON of `glorac search --structure`).")
    return supernet.structure


def finetune_checkpoint(checkpoint: str, data_source: str, *, output: Optional[str] = None,
                        structure: Optional[str] = None, overrides: Optional[dict] = None, force: bool = False,
                        dist: Dist = Dist(), data_options: Optional[dict] = None, progress: bool = True):
    """Fine-tune one structure of the checkpoint on the train split (not part of the GLoRA paper).

    The structure is ``structure`` (a JSON file) or the one ``glorac search`` selected. Only
    the adapter tensors it uses and the spec's ``train`` modules learn, with the spec's
    training settings updated by ``overrides``. The output keeps the structure selected, so
    fold and eval take it as it is. Returns (supernet, TrainState, output path).
    """
    out = Path(output) if output else default_finetune_output(Path(checkpoint))
    _check_finetune_output(Path(checkpoint), out, force)
    supernet, _ = load_checkpoint(checkpoint, device=str(dist.device))
    chosen = _finetune_structure(supernet, checkpoint, structure)
    settings = apply_overrides(supernet.spec.training, overrides or {})
    # The trainer records its own progress under `train`; keep the supernet run's record.
    history = supernet.history
    record = FinetuneRecord(source=str(checkpoint), structure=structure or "selected in the checkpoint",
                            data=data_source, supernet_train=history.train)
    supernet.history = history.model_copy(update={"finetune": record, "train": None})
    data = data_for(supernet, data_source, **(data_options or {}))
    try:
        state = stages.train(supernet, data, settings, structure=chosen, output=out, dist=dist, progress=progress)
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
    for path in (output, structure_out, plot):
        if path and Path(path).exists() and not force:
            raise CheckpointError(f"{path} already exists; pass --force to overwrite it.")
    cap = parse_budget(budget)
    supernet, _ = load_checkpoint(checkpoint, device=str(dist.device))
    settings = apply_overrides(supernet.spec.search, overrides or {})
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

            plot_search(result, plot)
    barrier(dist)
    return supernet, result


def load_for_eval(path: str, *, structure: Optional[str] = None, device: str = "cpu") -> tuple[nn.Module, str]:
    """A supernet checkpoint (with its structure) or a folded model, ready to evaluate."""
    from .folding.files import HF_SIDECAR
    from .folding.load import load_folded

    p = Path(path)
    if (p.is_dir() and (p / HF_SIDECAR).exists()) or p.suffix == ".safetensors":
        return load_folded(p, device=device)
    supernet, _ = load_checkpoint(p, device=device)
    chosen = supernet.plan.resolve_structure(read_structure(structure) if structure else None, supernet.structure)
    supernet.activate(chosen)
    return supernet, "supernet"


def evaluate_path(path: str, data_source: str, *, split: str = "test", structure: Optional[str] = None,
                  batch_size: int = 64, device: str = "cpu", data_options: Optional[dict] = None) -> dict:
    model, what = load_for_eval(path, structure=structure, device=device)
    from .supernet import Supernet

    base = model.base_model if isinstance(model, Supernet) else model
    data = load_data(data_source, model=base, **(data_options or {}))
    result = stages.evaluate(model, data, split, batch_size=batch_size, device=device)
    result.update(what=what, split=split)
    return result
