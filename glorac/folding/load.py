"""Read back what ``glorac fold`` wrote, as the stock model (for ``glorac eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError
from ..models import quiet_transformers, resolve_model, resolve_ref
from .files import HF_SIDECAR, FoldSidecar, sidecar_path


def load_folded(path: Path, *, device: str = "cpu") -> tuple[nn.Module, str, Optional[str]]:
    """(model, what it is, its task) of a folded Hugging Face directory or ``.safetensors`` file."""
    if path.is_dir():
        task = FoldSidecar.read(path / HF_SIDECAR).model_ref.task
        with quiet_transformers():  # glorac wrote it: transformers' load report has nothing to add
            model, _ = resolve_model(f"hf:{path}", device=device, task=task)
        return model, "Hugging Face directory", task
    return _load_file(path, device), "folded file", None


def _load_file(path: Path, device: str) -> nn.Module:
    side = sidecar_path(path)
    if not side.exists():
        raise CheckpointError(f"{path} has no sidecar {side.name}, so its architecture is unknown; "
                              "evaluate folded files written by `glorac fold`.")
    sidecar = FoldSidecar.read(side)
    ref = sidecar.model_ref.model_copy(update={"pretrained": False, "weights": None})
    model = resolve_ref(ref, device=device)
    for key in sidecar.added_biases:  # `bias add`: the stock module has no bias to load into
        layer = model.get_submodule(key.rsplit(".", 1)[0])
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
    try:
        model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path} does not load into {ref.name}: {str(exc).splitlines()[0]}") from None
    return model.eval()
