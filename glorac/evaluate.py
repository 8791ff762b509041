"""Top-1 accuracy and loss of a model on a data split (``glorac eval``), and the fast
candidate evaluator used by the search: fold once per candidate, then plain forwards.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .data import Batch, TaskData
from .graph.fold import write_folded_layer
from .ir import Structure
from .train import forward_logits


def cached_batches(data: TaskData, split: str, batch_size: int, device, *, rank: int = 0,
                   world: int = 1) -> list[Batch]:
    """A split preprocessed once into batches (the search evaluates it many times)."""
    dataset = data.splits[split]
    indices = list(range(len(dataset)))[rank::world]
    return [data.collate([dataset[i] for i in indices[k:k + batch_size]]).to(device)
            for k in range(0, len(indices), batch_size)]


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[Batch], num_classes: Optional[int] = None) -> dict:
    """{"accuracy", "loss", "correct", "n"} of ``model`` over ``batches`` (eval mode)."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for batch in batches:
        logits = forward_logits(model, batch).float()
        if num_classes is not None and logits.shape[-1] != num_classes:
            from .errors import DataError

            raise DataError(f"the data has {num_classes} classes but the model outputs {logits.shape[-1]} "
                            f"scores; evaluate on data with the classes the model was trained on.")
        loss += F.cross_entropy(logits, batch.labels, reduction="sum").item()
        correct += (logits.argmax(-1) == batch.labels).sum().item()
        n += len(batch)
    model.train(was_training)
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "correct": correct, "n": n}


class FoldedEvaluator:
    """Evaluates structures by folding each into a scratch copy of the base model.

    The scratch copy is made once; per candidate only the adapted layers' weights are
    rewritten (always from the supernet's untouched base weights), so a candidate costs
    one fold of the adapted layers plus plain forwards at base-model speed.
    """

    def __init__(self, supernet, batches: list[Batch]):
        self.supernet, self.batches = supernet, batches
        self.scratch = copy.deepcopy(supernet.base_model).eval()
        self.layers = {n: self.scratch.get_submodule(n) for n in supernet.adapters}

    def __call__(self, structure: Structure) -> dict:
        for name, adapter in self.supernet.adapters.items():
            source = self.supernet.base_model.get_submodule(name)
            w, b = adapter.fold(source.weight, source.bias, structure.layers[name])
            target = self.layers[name]
            if b is None and target.bias is not None:
                target.bias = None  # an earlier candidate created it; this one does not
            write_folded_layer(target, w, b)
        return accuracy(self.scratch, self.batches)


def supernet_accuracy(supernet, batches: list[Batch], structure: Optional[Structure] = None) -> dict:
    """The same measure through the unfolded supernet (slower; a cross-check)."""
    if structure is not None:
        supernet.set_choice(structure)
    return accuracy(supernet, batches)
