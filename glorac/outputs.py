"""What a model takes and returns: the conventions every run-time stage shares.

timm models return a tensor; Hugging Face models a ModelOutput with ``logits`` or
``last_hidden_state``; some models a tuple whose first item is the tensor. A probe is a
deterministic input guessed from the model's config (checks, not training).
"""

from __future__ import annotations

from typing import Any, Optional

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


def default_probe(model: nn.Module, batch: int = 2) -> Optional[tuple]:
    """A deterministic input for a timm image model or a Hugging Face text model."""
    g = torch.Generator().manual_seed(0)
    param = next(model.parameters())
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        size = tuple(cfg["input_size"])
        # A timm model built with img_size=... differs from its config's default size.
        own = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if own is not None:
            size = (size[0], *own)
        return (torch.randn(batch, *size, generator=g).to(param.device, param.dtype),)
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab:
        ids = torch.randint(1, vocab, (batch, 16), generator=g).to(param.device)
        return (ids,)
    return None
