"""The run-time stages on objects: ``glorac.train``, ``glorac.search``, ``glorac.evaluate``.

Each takes a supernet (or a model) and a :class:`~glorac.data.TaskData` and returns a
typed result; nothing is read from or written to a path unless asked (``output=``).
The path-based functions in :mod:`glorac.workflow`, which the CLI calls, are thin
shells over these. Under ``torchrun`` pass the :class:`~glorac.distributed.Dist` of
this rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from .data import TaskData, check_num_classes, require_split
from .distributed import Dist, all_gather_objects
from .progress import EvalProgress, SearchProgress
from .scoring import FoldedEvaluator, Forward, ShardedEvaluator, accuracy, cached_batches, sharded_batches
from .history import SearchRecord
from .objectives import fitness
from .ir import Budget, SearchSettings, Structure, TrainSettings
from .outputs import forward_logits
from .evolution import SearchResult, evolve


def head_size(model: nn.Module) -> Optional[int]:
    """How many classes the model's own head scores (None when it has no known head)."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    return getattr(getattr(model, "config", None), "num_labels", None)


def check_head(model: nn.Module, data: TaskData) -> None:
    """The data's classes must be the model's outputs (when the model says how many)."""
    if data.task != "classification":
        return
    n = head_size(model)
    if n is not None:
        check_num_classes(data, n)


def train(supernet, data: TaskData, settings: Optional[TrainSettings] = None, *,
          structure: Optional[Structure] = None, output: Optional[Union[str, Path]] = None,
          dist: Dist = Dist(), progress: bool = True, validation=None):
    """Train the supernet (or, with ``structure``, fine-tune that one structure) on the
    train split; returns the :class:`~glorac.trainer.TrainState`.

    ``settings`` default to the spec's. ``output``: a checkpoint written at every epoch end
    (and on Ctrl-C); without it nothing is written. Progress lands in ``supernet.history``.
    ``validation``: a :class:`~glorac.trainer.Validation` (default: every epoch, on the val split).
    """
    from .trainer import Trainer

    check_head(supernet.base_model, data)
    require_split(data, "train")
    trainer = Trainer(supernet, data, settings or supernet.spec.training, dist, output, progress=progress,
                      structure=structure, validation=validation)
    return trainer.fit()


def search(supernet, data: TaskData, *, budget: Optional[int] = None, settings: Optional[SearchSettings] = None,
           batch_size: int = 64, dist: Dist = Dist(), progress: bool = True,
           forward: Optional[Forward] = None, data_name: str = "") -> SearchResult:
    """Evolutionary search on the val split under the plan's budget; selects the best.

    ``budget`` (adapter parameters) overrides the plan's and is written into it, so the
    supernet (and any checkpoint saved from it) records the budget searched under.
    ``forward(model, batch) -> logits`` for a supernet compiled from a backbone alone.
    """
    if budget is not None:
        old = supernet.plan.budget
        supernet.plan = supernet.plan.with_budget(Budget(params=budget, include_trained=bool(
            old and old.include_trained)))
    settings = settings or supernet.spec.search
    check_head(supernet.base_model, data)
    require_split(data, "val")  # the search never looks at the test split
    task = data.task
    plan = supernet.plan
    most = settings.population + settings.generations * (settings.mutations + settings.crossovers)
    bar = SearchProgress(progress and dist.main, most, settings.generations)
    if dist.sharded:
        from .sharding import shard_supernet

        # The base is in pieces: every rank scores every candidate, on its share of the data.
        model = shard_supernet(supernet, dist)
        shares = sharded_batches(data, "val", batch_size, dist.device, rank=dist.rank, world=dist.world)
        evaluate = _joint_evaluate(ShardedEvaluator(supernet, model, shares, forward=forward, task=task), bar, task)
    else:
        batches = cached_batches(data, "val", batch_size, dist.device)
        evaluate = _split_evaluate(FoldedEvaluator(supernet, batches, forward=forward, task=task), bar, dist, task)
    geoms = {n: a.geom for n, a in supernet.adapters.items()}
    with bar:
        result = evolve(supernet.spaces(), geoms, budget=plan.budget.params if plan.budget else None,
                        settings=settings, evaluate=evaluate, extra_params=plan.counted_extra)
    supernet.select(result.best.structure)
    record = SearchRecord(budget=result.budget, best_accuracy=result.best.fitness, task=task,
                          best_params=result.best.params, evaluated=len(result.evaluated), settings=settings,
                          data=data_name or data.source)
    supernet.history = supernet.history.model_copy(update={"search": record})
    return result


def _joint_evaluate(evaluator: "ShardedEvaluator", bar: SearchProgress,
                    task: str) -> Callable[[list[Structure]], list[float]]:
    """evolve()'s evaluate when all ranks score each candidate together (FSDP)."""

    def evaluate(structures: list[Structure]) -> list[float]:
        bar.next_generation()
        scores = []
        for s in structures:
            scores.append(fitness(task, evaluator(s)))
            bar.advance(scores[-1])
        return scores

    return evaluate


def _split_evaluate(evaluator: FoldedEvaluator, bar: SearchProgress, dist: Dist,
                    task: str) -> Callable[[list[Structure]], list[float]]:
    """evolve()'s evaluate: this rank's share of each generation, gathered from every rank."""

    def evaluate(structures: list[Structure]) -> list[float]:
        bar.next_generation()  # evolve() calls this once per generation; the bar ticks per candidate
        mine: dict[int, float] = {}
        for i, s in enumerate(structures):
            if i % dist.world == dist.rank:
                mine[i] = fitness(task, evaluator(s))
                bar.advance(mine[i])
        merged: dict[int, float] = {}
        for part in all_gather_objects(dist, mine):
            merged.update(part)
        others = [v for i, v in merged.items() if i not in mine]
        if others:  # the other ranks' share of this generation
            bar.advance(max(others), count=len(others))
        return [merged[i] for i in range(len(structures))]

    return evaluate


def evaluate(model: nn.Module, data: TaskData, split: str = "test", *, batch_size: int = 64,
             device: Union[str, torch.device] = "cpu", forward: Forward = forward_logits,
             progress: bool = False) -> dict:
    """{"accuracy", "loss", "correct", "n"} of a folded model or a supernet (its active
    structure) on one split. ``progress``: a progress bar on stderr (off by default: the
    library stays quiet; ``glorac eval`` turns it on)."""
    from .supernet import Supernet

    check_head(model.base_model if isinstance(model, Supernet) else model, data)
    require_split(data, split)
    batches = cached_batches(data, split, batch_size, torch.device(device))
    with EvalProgress(progress, len(batches), data.task) as bar:
        return accuracy(model, batches, data.num_classes, forward=forward, task=data.task, on_batch=bar.on_batch)
