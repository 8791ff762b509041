"""What a model returns, as one tensor: the convention every run-time stage shares.

timm models return a tensor; Hugging Face models a ModelOutput with ``logits`` or
``last_hidden_state``; some models a tuple whose first item is the tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .data import Batch
from .errors import GloraError


def output_tensor(out: Any) -> torch.Tensor:
    """The main tensor of a model output (timm: the tensor; Hugging Face: logits/hidden state)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise GloraError(f"cannot find the output tensor in a {type(out).__name__}")


def forward_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Call ``model`` on a batch's inputs (keyword inputs for text, positional for images)."""
    out = model(**batch.inputs) if isinstance(batch.inputs, dict) else model(*batch.inputs)
    return output_tensor(out)
