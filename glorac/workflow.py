"""The run-time pipeline stages as plain functions: train, search, fine-tune, evaluate.

The CLI commands are thin shells over these; each works on one process or, under
``torchrun``, on every rank (rank 0 alone writes files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .checkpoint import load
from .data import TaskData, check_num_classes, load_data, require_split
from .distributed import Dist, all_gather_objects, barrier
from .errors import CheckpointError, GloraError
from .evaluate import FoldedEvaluator, accuracy, cached_batches
from .graph.fold import resolve_structure
from .ir import Structure, TrainSettings
from .safeio import atomic_write


def head_size(model: nn.Module) -> Optional[int]:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    return getattr(getattr(model, "config", None), "num_labels", None)


def data_for(supernet, source: str, **kwargs) -> TaskData:
    data = load_data(source, model=supernet.base_model, **kwargs)
    n = head_size(supernet.base_model)
    if n is not None:
        check_num_classes(data, n)
    return data


def default_train_output(checkpoint: Path) -> Path:
    stem = checkpoint.name.rsplit(".", 1)[0]
    return checkpoint.with_name(stem.removesuffix(".trained") + ".trained.pt")


def train_checkpoint(checkpoint: str, data_source: str, *, output: Optional[str] = None, resume: bool = False,
                     force: bool = False, overrides: Optional[dict] = None, dist: Dist = Dist(),
                     data_options: Optional[dict] = None, progress: bool = True):
    """Train the supernet stored at ``checkpoint``; returns (supernet, TrainState)."""
    from .train import Trainer

    out = Path(output) if output else default_train_output(Path(checkpoint))
    source = out if resume else Path(checkpoint)
    if resume and not out.exists():
        raise CheckpointError(f"--resume: {out} does not exist yet; start without --resume.")
    if not resume and out.exists() and not force:
        raise CheckpointError(f"{out} already exists; pass --resume to continue that run or --force "
                              "to start over.")
    supernet = load(source, device=str(dist.device))
    meta = supernet.checkpoint_meta
    if resume and "finetune" in meta.get("extra", {}):
        raise CheckpointError(f"--resume: {out} was written by `glorac finetune`, which trains one structure; "
                              "rerun that command with --force instead.")
    stored = meta.get("extra", {}).get("train")
    settings = supernet.spec.training
    if resume and stored:
        settings = TrainSettings.model_validate(stored["settings"])
    settings = settings.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
    supernet.checkpoint_extra = {k: v for k, v in meta.get("extra", {}).items() if k != "train"}
    data = data_for(supernet, data_source, **(data_options or {}))
    require_split(data, "train")
    trainer = Trainer(supernet, data, settings, dist, out, progress=progress)
    if resume and stored:
        if stored.get("world", 1) != dist.world:
            raise CheckpointError(f"{out} was written by a run with {stored['world']} process(es); resume it "
                                  f"with the same number (now {dist.world}).")
        trainer.restore(stored, supernet.checkpoint_extra_tensors)
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
    from .export import read_structure

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
    from .train import Trainer

    out = Path(output) if output else default_finetune_output(Path(checkpoint))
    _check_finetune_output(Path(checkpoint), out, force)
    supernet = load(checkpoint, device=str(dist.device))
    chosen = _finetune_structure(supernet, checkpoint, structure)
    settings = supernet.spec.training.model_copy(
        update={k: v for k, v in (overrides or {}).items() if v is not None})
    extra = dict(supernet.checkpoint_meta.get("extra", {}))
    # The trainer records its own progress under "train"; keep the supernet run's record.
    supernet_train = extra.pop("train", None)
    extra["finetune"] = {"from": str(checkpoint), "structure": structure or "selected in the checkpoint",
                         "data": data_source, "supernet_train": supernet_train}
    supernet.checkpoint_extra = extra
    data = data_for(supernet, data_source, **(data_options or {}))
    require_split(data, "train")
    try:
        trainer = Trainer(supernet, data, settings, dist, out, progress=progress, structure=chosen)
    except GloraError as exc:  # the structure does not fit this supernet's spaces
        raise GloraError(f"{structure or checkpoint}: {exc}") from None
    state = trainer.fit()
    return supernet, state, out


def parse_budget(text: Optional[str]) -> Optional[int]:
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
    from .checkpoint import save
    from .evaluate import SearchProgress
    from .search import evolve
    from .search.evolution import SearchError

    for path in (output, structure_out, plot):
        if path and Path(path).exists() and not force:
            raise CheckpointError(f"{path} already exists; pass --force to overwrite it.")
    supernet = load(checkpoint, device=str(dist.device))
    data = data_for(supernet, data_source, **(data_options or {}))
    require_split(data, "val")  # the search never looks at the test split
    spec_budget = supernet.spec.budget
    cap = parse_budget(budget) if budget else (spec_budget.params if spec_budget else None)
    include = bool(spec_budget and spec_budget.include_trained)
    settings = supernet.spec.search.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
    batches = cached_batches(data, "val", batch_size, dist.device)
    evaluator = FoldedEvaluator(supernet, batches)
    most = settings.population + settings.generations * (settings.mutations + settings.crossovers)
    bar = SearchProgress(progress and dist.main, most, settings.generations)

    def evaluate(structures: list[Structure]) -> list[float]:
        # evolve() calls this once per generation; the bar ticks per candidate.
        bar.next_generation()
        mine: dict[int, float] = {}
        for i, s in enumerate(structures):
            if i % dist.world == dist.rank:
                mine[i] = evaluator(s)["accuracy"]
                bar.advance(mine[i])
        merged: dict[int, float] = {}
        for part in all_gather_objects(dist, mine):
            merged.update(part)
        others = [v for i, v in merged.items() if i not in mine]
        if others:  # the other ranks' share of this generation
            bar.advance(max(others), count=len(others))
        return [merged[i] for i in range(len(structures))]

    geoms = {n: a.geom for n, a in supernet.adapters.items()}
    try:
        with bar:
            result = evolve(supernet.choices(), geoms, budget=cap, settings=settings, evaluate=evaluate,
                            extra_params=supernet.plan.trained_params if include else 0)
    except SearchError as exc:
        raise GloraError(f"{checkpoint}: {exc}") from None
    supernet.select(result.best.structure)
    if dist.main:
        extra = {k: v for k, v in supernet.checkpoint_meta.get("extra", {}).items()}
        extra["search"] = {"budget": cap, "best_accuracy": result.best.fitness, "best_params": result.best.params,
                           "evaluated": len(result.evaluated), "settings": settings.model_dump(mode="json"),
                           "data": data_source}
        save(supernet, output, force=force, extra=extra)
        if structure_out:
            text = result.best.structure.model_dump_json(indent=2)
            atomic_write(structure_out, lambda tmp: tmp.write_text(text), force=force)
        if plot:
            from .search.plots import plot_search

            plot_search(result, plot)
    barrier(dist)
    return supernet, result


def load_for_eval(path: str, *, choice: Optional[str] = None, device: str = "cpu") -> tuple[nn.Module, str]:
    """A supernet checkpoint (with its structure) or a folded model, ready to evaluate."""
    from .export import read_structure

    p = Path(path)
    if p.is_dir() and (p / "glorac_fold.json").exists():
        from .models import resolve_model

        model, _ = resolve_model(f"hf:{p}", device=device)
        return model, "folded (Hugging Face directory)"
    if p.suffix == ".safetensors":
        return _load_folded_file(p, device), "folded"
    supernet = load(p, device=device)
    supernet.set_choice(resolve_structure(supernet, read_structure(choice) if choice else None))
    return supernet, "supernet"


def _load_folded_file(path: Path, device: str) -> nn.Module:
    from safetensors.torch import load_file

    from .models import ModelRef, resolve_ref

    sidecar = path.with_name(path.name.rsplit(".", 1)[0] + ".glorac.json")
    if not sidecar.exists():
        raise CheckpointError(f"{path} has no sidecar {sidecar.name}, so its architecture is unknown; "
                              "evaluate folded files written by `glorac fold`.")
    info = json.loads(sidecar.read_text())
    ref = ModelRef.model_validate(info["model_ref"]).model_copy(update={"pretrained": False, "weights": None})
    model = resolve_ref(ref, device=device)
    for key in info.get("added_biases", []):
        layer = model.get_submodule(key.rsplit(".", 1)[0])
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
    try:
        model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path} does not load into {ref.name}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def evaluate_path(path: str, data_source: str, *, split: str = "test", choice: Optional[str] = None,
                  batch_size: int = 64, device: str = "cpu", data_options: Optional[dict] = None) -> dict:
    model, what = load_for_eval(path, choice=choice, device=device)
    from .supernet import Supernet

    base = model.base_model if isinstance(model, Supernet) else model
    data = load_data(data_source, model=base, **(data_options or {}))
    n = head_size(base)
    if n is not None:
        check_num_classes(data, n)
    require_split(data, split)
    result = accuracy(model, cached_batches(data, split, batch_size, torch.device(device)), data.num_classes)
    result.update(what=what, split=split)
    return result
