"""What a task's loss and score are, from a model's output tensor and a batch's labels.

* ``classification``: one label per example, cross-entropy on the class scores; scored by
  top-1 accuracy.
* ``causal-lm``: one label per token (``-100`` where no loss is taken: padding, a prompt);
  next-token cross-entropy (the logits at position t predict the label at t+1, as
  transformers shifts them); scored by the mean token loss (perplexity = its exp), and
  a search maximises minus that loss.

Every function returns sums and counts, never means, so that callers can add batches and
processes before dividing.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Task = Literal["classification", "causal-lm"]
TASKS: tuple[str, ...] = ("classification", "causal-lm")
IGNORE = -100  # a label that takes no loss (transformers' convention)


class Sums(NamedTuple):
    loss: Tensor  # summed loss (float32, on the logits' device)
    correct: Tensor  # summed correct predictions
    count: Tensor  # examples (classification) or label tokens (causal LM)


def sums(task: str, logits: Tensor, labels: Tensor) -> Sums:
    """Loss, correct predictions and count of one batch."""
    if task == "causal-lm":
        scores, targets = logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten()
        keep = targets != IGNORE
        loss = F.cross_entropy(scores, targets, ignore_index=IGNORE, reduction="sum")
        correct = ((scores.argmax(-1) == targets) & keep).sum()
        return Sums(loss, correct, keep.sum())
    logits = logits.float()
    loss = F.cross_entropy(logits, labels, reduction="sum")
    return Sums(loss, (logits.argmax(-1) == labels).sum(), torch.tensor(len(labels), device=logits.device))


def fitness(task: str, score: dict) -> float:
    """What the search maximises: val accuracy, or minus the val token loss."""
    return -score["loss"] if task == "causal-lm" else score["accuracy"]


def fitness_label(task: str) -> str:
    """What a search's fitness column means, for tables and plots."""
    return "−val loss (per token)" if task == "causal-lm" else "val accuracy"


def metric_name(task: str) -> str:
    return "val loss" if task == "causal-lm" else "val acc"
