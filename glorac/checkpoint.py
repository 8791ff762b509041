"""Supernet checkpoints: ``glorac.save`` / ``glorac.load``.

A checkpoint is one ``torch.save`` file that ``torch.load(weights_only=True)`` reads (no
pickled code): a dict of plain strings and tensors.

* ``format`` / ``format_version``: what this is;
* ``meta``: a JSON string holding the spec IR and source texts, the model reference, the
  plan, a SHA-256 of the base weights, the chosen structure (if any), free-form extras
  (training progress, search results);
* ``adapters``: every support tensor, keyed ``<layer>.<param>``;
* ``trained``: the `train` modules' tensors, keyed as in the base model's state dict.

The base weights are *not* stored: :func:`load` rebuilds the model from its reference
(or takes one) and refuses it when its digest differs from the one recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from pydantic import ValidationError
from torch import nn

from . import __version__
from .errors import CheckpointError, GloraError
from .graph.plan import Plan
from .ir import Spec, Structure
from .safeio import atomic_write, tensor_digest
from .supernet import Supernet, _under

FORMAT = "glorac.supernet"
FORMAT_VERSION = 2
#: Version 1 predates `parametrization` and `sampling`: its adapter tensors are the
#: authors' unscaled ones (docs/parametrization.md), so reading one pins those settings.
_VERSION_1_TRAINING = {"parametrization": "paper", "sampling": "uniform"}


def base_digest(model: nn.Module, trained: tuple[str, ...]) -> str:
    """Digest of the frozen base weights (the `train` modules excluded: they change)."""
    state = model.state_dict()
    return tensor_digest((k, v) for k, v in state.items() if not _under(k, trained))


def save(supernet: Supernet, path: Union[str, Path], *, force: bool = False,
         extra: Optional[dict[str, Any]] = None, extra_tensors: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Write ``supernet`` atomically; an existing file is kept unless ``force``."""
    if supernet.spec is None or supernet.model_ref is None:
        raise CheckpointError(
            "this supernet was compiled from an nn.Module object, so a checkpoint could not "
            "rebuild its base model; compile from a model reference (timm name, hf:PATH or "
            "package.module:factory) to save it")
    if supernet.base_digest is None:
        supernet.base_digest = base_digest(supernet.base_model, supernet.plan.trained)
    meta = {
        "glorac_version": __version__,
        "spec": supernet.spec.model_dump(mode="json"),
        "spec_sources": _sources(supernet.spec),
        "model_ref": supernet.model_ref.model_dump(mode="json"),
        "plan": supernet.plan.model_dump(mode="json"),
        "base_digest": supernet.base_digest,
        "structure": None if supernet.structure is None else supernet.structure.model_dump(mode="json"),
        "extra": extra or {},
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": json.dumps(meta),
        "adapters": {k: v.detach().cpu().contiguous() for k, v in supernet.adapter_state_dict().items()},
        "trained": {k: v.detach().cpu().contiguous() for k, v in supernet.trained_state_dict().items()},
        "extra_tensors": {k: v.detach().cpu() for k, v in (extra_tensors or {}).items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), force=force)


def _sources(spec: Spec) -> dict[str, str]:
    out = {}
    for file in spec.files:
        try:
            out[file] = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass  # provenance only; the IR alone rebuilds the supernet
    return out


def read_checkpoint(path: Union[str, Path]) -> tuple[dict, dict]:
    """(meta, payload) of a checkpoint, validated; CheckpointError for anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the .pt file.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle needing code, random bytes, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable glorac checkpoint ({first[:200]}); it may be truncated or "
            "corrupt, or not a checkpoint at all. Recreate it with `glorac compile` or `glorac train`."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a glorac supernet checkpoint (it is a torch file of another kind). "
            "Pass a file written by `glorac compile`, `glorac train` or `glorac search`.")
    if payload.get("format_version") not in (1, FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}, this glorac "
            f"reads version {FORMAT_VERSION}; use the glorac version that wrote it.")
    try:
        meta = json.loads(payload["meta"])
        for key in ("spec", "model_ref", "plan", "base_digest"):
            meta[key]  # noqa: B018 - presence check
        if not isinstance(payload["adapters"], dict) or not isinstance(payload["trained"], dict):
            raise TypeError("tensor tables are not dicts")
        if payload["format_version"] == 1:
            training = meta["spec"].setdefault("training", {})
            for key, value in _VERSION_1_TRAINING.items():
                training.setdefault(key, value)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged glorac checkpoint ({exc}); recreate it.") from None
    return meta, payload


def load(path: Union[str, Path], *, model: Optional[nn.Module] = None, device: str = "cpu") -> Supernet:
    """Rebuild the supernet stored at ``path`` (the base model from its reference unless given)."""
    from .models import ModelRef, resolve_ref
    from .supernet import compile as compile_supernet

    path = Path(path)
    meta, payload = read_checkpoint(path)
    try:
        spec = Spec.model_validate(meta["spec"])
        stored_plan = Plan.model_validate(meta["plan"])
        ref = ModelRef.model_validate(meta["model_ref"])
        structure = Structure.model_validate(meta["structure"]) if meta.get("structure") else None
    except ValidationError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata does not validate ({exc.error_count()} "
                              "problem(s)); it was written by another glorac version or damaged.") from None
    base = model if model is not None else resolve_ref(ref, device=device)
    digest = base_digest(base, stored_plan.trained)
    if digest != meta["base_digest"]:
        raise CheckpointError(
            f"{path}: the base model's weights differ from those the checkpoint was made with "
            f"(model {ref.name!r}, num_classes={ref.num_classes}, weights={ref.weights}). The adapters "
            "only make sense on the same base weights: pass the same --weights file / model.")
    supernet = compile_supernet(spec, base, front_end=stored_plan.front_end)
    if (supernet.plan.layers, supernet.plan.trained) != (stored_plan.layers, stored_plan.trained):
        raise CheckpointError(f"{path}: the plan rebuilt from the stored spec differs from the stored "
                              "plan; the model's architecture changed since the checkpoint was written.")
    supernet.plan = stored_plan  # keeps what was recorded at compile time (e.g. why tracing failed)
    supernet.model_ref = ref
    supernet.base_digest = digest
    _load_tensors(supernet, payload, path)
    if structure is not None:
        try:
            supernet.select(structure)
        except GloraError as exc:
            raise CheckpointError(f"{path}: stored structure does not fit the supernet: {exc}") from None
    supernet.checkpoint_meta = meta
    supernet.checkpoint_extra_tensors = payload.get("extra_tensors", {})
    return supernet


def _load_tensors(supernet: Supernet, payload: dict, path: Path) -> None:
    own = {f"{n}.{p}": t for n, a in supernet.adapters.items() for p, t in a.named_parameters()}
    _copy_into(own, payload["adapters"], path, "adapter")
    base_state = dict(supernet.base_model.named_parameters())
    base_state.update(dict(supernet.base_model.named_buffers()))
    own_trained = {k: base_state[k] for k in supernet.trained_state_dict() if k in base_state}
    _copy_into(own_trained, payload["trained"], path, "trained-module")


def check_tensor_table(shapes: dict[str, tuple], stored: dict, path: Path, what: str) -> None:
    """Stored tensors must be exactly the expected names with the expected shapes."""
    missing = sorted(set(shapes) - set(stored))
    unexpected = sorted(set(stored) - set(shapes))
    wrong = [k for k in shapes if k in stored and tuple(stored[k].shape) != tuple(shapes[k])]
    if missing or unexpected or wrong:
        detail = "; ".join(x for x in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            f"wrong shape {', '.join(wrong[:3])}" if wrong else "") if x)
        raise CheckpointError(f"{path}: {what} tensors do not match the supernet ({detail}); "
                              "the checkpoint belongs to another spec or model.")


def _copy_into(own: dict[str, torch.Tensor], stored: dict, path: Path, what: str) -> None:
    check_tensor_table({k: t.shape for k, t in own.items()}, stored, path, what)
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(stored[k].to(t.dtype))
