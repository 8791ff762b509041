"""Top-1 accuracy and loss of a model on a data split (``glorac eval``), and the fast
candidate evaluator used by the search: fold what changed per candidate, then plain forwards.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch
from torch import nn

from .data import Batch, TaskData
from .folding.core import fold_tensors
from .folding.model import write_layers
from .ir import LayerChoice, Structure
from .objectives import sums
from .outputs import forward_logits


def cached_batches(data: TaskData, split: str, batch_size: int, device, *, rank: int = 0,
                   world: int = 1) -> list[Batch]:
    """A split preprocessed once into batches (the search evaluates it many times)."""
    dataset = data.splits[split]
    indices = list(range(len(dataset)))[rank::world]
    return [data.collate([dataset[i] for i in indices[k:k + batch_size]]).to(device)
            for k in range(0, len(indices), batch_size)]


#: ``forward(model, batch) -> logits``: how a batch becomes class scores.
Forward = Callable[[nn.Module, Batch], torch.Tensor]

#: ``on_batch(running)``: called after every batch with the result so far (what
#: :func:`accuracy` returns, over the batches done), e.g. by a progress bar.
OnBatch = Callable[[dict], None]


def _sums(model: nn.Module, batches: list[Batch], forward: Forward, num_classes: Optional[int],
          task: str = "classification", on_batch: Optional[OnBatch] = None) -> torch.Tensor:
    """(loss, correct, count) summed over ``batches``, as one float64 tensor on the device."""
    # Sums stay on the device (float64, the same numbers as Python floats) so that a GPU
    # synchronises once per call rather than twice per batch; an ``on_batch`` callback
    # reads them, so it costs one synchronisation per batch.
    total = None
    for batch in batches:
        logits = forward(model, batch).float()
        if task == "classification" and num_classes is not None and logits.shape[-1] != num_classes:
            from .errors import DataError

            raise DataError(f"the data has {num_classes} classes but the model outputs {logits.shape[-1]} "
                            f"scores; evaluate on data with the classes the model was trained on.")
        part = sums(task, logits, batch.labels)
        part = torch.stack([part.loss.double(), part.correct.double(), part.count.double()])
        total = part if total is None else total + part
        if on_batch is not None:
            on_batch(_result(total, task))
    return torch.zeros(3, dtype=torch.float64) if total is None else total


def _result(total: torch.Tensor, task: str) -> dict:
    loss, correct, n = total.tolist()
    correct, n = int(correct), int(n)
    result = {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "correct": correct, "n": n}
    if task == "causal-lm":  # n counts label tokens; accuracy is next-token accuracy
        result["perplexity"] = math.exp(min(result["loss"], 700.0))
    return result


def _score(model: nn.Module, batches: list[Batch], forward: Forward, num_classes: Optional[int],
           task: str = "classification", on_batch: Optional[OnBatch] = None) -> dict:
    return _result(_sums(model, batches, forward, num_classes, task, on_batch), task)


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[Batch], num_classes: Optional[int] = None,
             forward: Forward = forward_logits, task: str = "classification",
             on_batch: Optional[OnBatch] = None) -> dict:
    """{"accuracy", "loss", "correct", "n"} of ``model`` over ``batches`` (eval mode); for a
    causal LM per label token, with "perplexity". ``on_batch``: see :data:`OnBatch`."""
    was_training = model.training
    model.eval()
    try:
        return _score(model, batches, forward, num_classes, task, on_batch)
    finally:
        model.train(was_training)


class FoldedEvaluator:
    """Evaluates structures by folding each into a scratch copy of the base model.

    The scratch copy is made once. Per candidate only the adapted layers whose choice
    differs from what the scratch model already holds are re-folded (always from the
    supernet's untouched base weights, so the result does not depend on the order of
    candidates); then plain forwards at base-model speed, under ``torch.inference_mode``.
    Candidates that share layers with the previous one (a structure scored again, a
    child evaluated after its parent) skip those folds; consecutive children of different
    parents share few layers, so in a search's own order the saving is small, and the
    forwards dominate anyway (benchmarks/search.py prints both). The record of what was
    written assumes the supernet's adapter values do not change while the evaluator is in
    use: call :meth:`forget` after they do.

    ``forward(model, batch) -> logits`` turns a batch into class scores; the default,
    :func:`glorac.outputs.forward_logits`, calls the model on the batch's inputs. A user who
    compiled only a backbone passes the head here, e.g.
    ``FoldedEvaluator(supernet, batches, forward=lambda m, b: head(m(*b.inputs)))``.
    """

    def __init__(self, supernet, batches: list[Batch], forward: Optional[Forward] = None,
                 task: str = "classification"):
        self.supernet, self.batches, self.task = supernet, batches, task
        self.forward: Forward = forward or forward_logits
        self.scratch = copy.deepcopy(supernet.base_model).eval()
        self.base_state = supernet.base_model.state_dict()  # the untouched W0, b0 every fold reads
        self.written: dict[str, LayerChoice] = {}  # layer → the choice folded into the scratch copy

    def forget(self) -> None:
        """Re-fold every layer next time (the supernet's adapter values changed)."""
        self.written.clear()

    def __call__(self, structure: Structure) -> dict:
        self._fold_changed(structure)
        with torch.inference_mode():
            return _score(self.scratch, self.batches, self.forward, None, self.task)

    def _fold_changed(self, structure: Structure) -> None:
        changed = [lp for lp in self.supernet.plan.layers if self.written.get(lp.qualname) != structure.layers[lp.qualname]]
        # Outside inference mode: a bias created here must stay a normal tensor.
        for lp, entries, _ in fold_tensors(self.base_state, changed, self.supernet.adapters, structure, probe=False):
            self.written.pop(lp.qualname, None)  # a failed write must not leave a stale record
            write_layers(self.scratch, self.supernet.plan, entries, [lp.qualname])
            self.written[lp.qualname] = structure.layers[lp.qualname]


class ShardedEvaluator:
    """Evaluates structures through a supernet whose base is sharded over the processes
    (FSDP, :mod:`glorac.sharding`): every rank runs every candidate, on its share of each
    batch, and the sums are added over the ranks, so every rank gets the same score.

    Folding needs the whole base in one process, which FSDP is there to avoid; so this
    activates each structure in the supernet instead (adapter arithmetic per forward,
    slower than :class:`FoldedEvaluator`'s plain forwards). ``shares``: this rank's part of
    every global batch, the same number on every rank (every forward is collective)."""

    def __init__(self, supernet, model: nn.Module, shares: list[tuple[Batch, bool]],
                 forward: Optional[Forward] = None, task: str = "classification"):
        self.supernet, self.model, self.shares, self.task = supernet, model, shares, task
        self.forward: Forward = forward or forward_logits

    def __call__(self, structure: Structure) -> dict:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.supernet.activated(structure):
                total = _sums(self.model, [b for b, counted in self.shares if counted], self.forward, None,
                              self.task)
                for batch in (b for b, counted in self.shares if not counted):
                    self.forward(self.model, batch)  # only so that every rank runs as many forwards
            torch.distributed.all_reduce(total)
            return _result(total.cpu(), self.task)
        finally:
            self.model.train(was_training)


def sharded_batches(data: TaskData, split: str, batch_size: int, device, *, rank: int,
                    world: int) -> list[tuple[Batch, bool]]:
    """This rank's share of each global batch of ``split``, and whether it counts.

    A rank whose share of the last batch is empty (fewer examples than ranks) runs the
    batch's first example uncounted, so that every rank calls the model as often."""
    dataset = data.splits[split]
    out = []
    for k in range(0, len(dataset), batch_size):
        indices = list(range(k, min(k + batch_size, len(dataset))))[rank::world]
        counted = bool(indices)
        out.append((data.collate([dataset[i] for i in (indices or [k])]).to(device), counted))
    return out


def supernet_accuracy(supernet, batches: list[Batch], structure: Optional[Structure] = None,
                      forward: Forward = forward_logits) -> dict:
    """The same measure through the unfolded supernet (slower; a cross-check)."""
    if structure is None:
        return accuracy(supernet, batches, forward=forward)
    with supernet.activated(structure):
        return accuracy(supernet, batches, forward=forward)
