"""Supernet checkpoints: ``glorac.save`` / ``glorac.load``.

A checkpoint is one ``torch.save`` file that ``torch.load(weights_only=True)`` reads (no
pickled code): a dict of plain strings and tensors.

* ``format`` / ``format_version``: what this is;
* ``meta``: a JSON string, :class:`CheckpointMeta`: the spec IR and source texts, the
  model reference, the plan, a SHA-256 of the base weights, the chosen structure (if
  any) and the :class:`~glorac.history.RunHistory` (training progress, search results);
* ``adapters``: every support tensor, keyed ``<layer>.<param>``;
* ``trained``: the `train` modules' tensors, keyed as in the base model's state dict;
* ``extra_tensors``: what a resumed training run needs (optimizer moments, RNG state).

The base weights are *not* stored: :func:`load` rebuilds the model from its reference
(or takes one) and refuses it when its digest differs from the one recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from .errors import CheckpointError, GloraError
from .history import RunHistory
from .ir import Spec, Structure
from .models import ModelRef
from .op import GloraAdapter
from .planning import LayerPlan, Plan, under
from .safeio import atomic_write, tensor_digest
from .supernet import Supernet
from .version import __version__

FORMAT = "glorac.supernet"
FORMAT_VERSION = 3
#: Version 2 kept the run history as a free-form ``extra`` dict (read into RunHistory).
#: Version 1 predates `parametrization` and `sampling`: its adapter tensors are the
#: authors' unscaled ones (docs/parametrization.md), so reading one pins those settings.
_VERSION_1_TRAINING = {"parametrization": "paper", "sampling": "uniform"}




class CheckpointMeta(BaseModel):
    """Everything a checkpoint says about itself besides its tensors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    glorac_version: str
    spec: Spec
    spec_sources: dict[str, str] = {}
    model_ref: ModelRef
    plan: Plan
    base_digest: str
    structure: Optional[Structure] = None
    history: RunHistory = RunHistory()


@dataclass
class Checkpoint:
    """A checkpoint as read from disk: its metadata and tensor tables (nothing built)."""

    path: Path
    meta: CheckpointMeta
    adapters: dict[str, torch.Tensor]
    trained: dict[str, torch.Tensor]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def base_digest(model: nn.Module, trained: tuple[str, ...]) -> str:
    """Digest of the frozen base weights (the `train` modules excluded: they change)."""
    state = model.state_dict()
    return tensor_digest((k, v) for k, v in state.items() if not under(k, trained))


def save(supernet: Supernet, path: Union[str, Path], *, force: bool = False,
         extra_tensors: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Write ``supernet`` (with its structure and history) atomically; an existing file is
    kept unless ``force``. ``extra_tensors``: a training run's resume state."""
    if supernet.spec is None or supernet.model_ref is None:
        raise CheckpointError(
            "this supernet was compiled from an nn.Module object, so a checkpoint could not "
            "rebuild its base model; compile from a model reference (timm name, hf:PATH or "
            "package.module:factory) to save it")
    if supernet.base_digest is None:
        supernet.base_digest = base_digest(supernet.base_model, supernet.plan.trained)
    meta = CheckpointMeta(glorac_version=__version__, spec=supernet.spec, spec_sources=_sources(supernet.spec),
                          model_ref=supernet.model_ref, plan=supernet.plan, base_digest=supernet.base_digest,
                          structure=supernet.structure, history=supernet.history)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta.model_dump_json(),
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


def read_checkpoint(path: Union[str, Path], *, mmap: bool = False) -> Checkpoint:
    """A checkpoint's metadata and tensors, validated; CheckpointError for anything else.

    ``mmap``: map the file instead of reading it (for a look at the metadata only).
    """
    path = Path(path)
    payload = _read_payload(path, mmap)
    try:
        meta = json.loads(payload["meta"])
        if not isinstance(payload["adapters"], dict) or not isinstance(payload["trained"], dict):
            raise TypeError("tensor tables are not dicts")
        meta = _upgrade(meta, payload["format_version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged glorac checkpoint ({exc}); recreate it.") from None
    try:
        typed = CheckpointMeta.model_validate(meta)
    except ValidationError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata does not validate ({exc.error_count()} "
                              "problem(s)); it was written by another glorac version or damaged.") from None
    return Checkpoint(path, typed, payload["adapters"], payload["trained"], payload.get("extra_tensors") or {})


def _read_payload(path: Path, mmap: bool) -> dict:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the .pt file.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
    if payload.get("format_version") not in (1, 2, FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}, this glorac "
            f"reads version {FORMAT_VERSION}; use the glorac version that wrote it.")
    return payload


def _upgrade(meta: dict, version: int) -> dict:
    """Older metadata in today's form (the meaning of their tensors kept)."""
    for key in ("spec", "model_ref", "plan", "base_digest"):
        meta[key]  # noqa: B018 - presence check: KeyError is "damaged"
    if version == 1:
        training = meta["spec"].setdefault("training", {})
        for key, value in _VERSION_1_TRAINING.items():
            training.setdefault(key, value)
    if "extra" in meta:  # before the history was typed it was a free-form `extra` dict
        meta["history"] = meta.pop("extra") or {}
    return meta


def load_checkpoint(path: Union[str, Path], *, model: Optional[nn.Module] = None,
                    device: str = "cpu") -> tuple[Supernet, Checkpoint]:
    """The supernet stored at ``path`` and the checkpoint it came from."""
    ckpt = read_checkpoint(path)
    return supernet_from(ckpt, model=model, device=device), ckpt


def supernet_from(ckpt: Checkpoint, *, model: Optional[nn.Module] = None, device: str = "cpu") -> Supernet:
    """The supernet a read checkpoint describes: the base model rebuilt from its reference
    (unless given) and refused when its weights differ from the recorded digest."""
    from .models import resolve_ref
    from .supernet import build_supernet

    meta = ckpt.meta
    base = model if model is not None else resolve_ref(meta.model_ref, device=device)
    digest = base_digest(base, meta.plan.trained)
    if digest != meta.base_digest:
        ref = meta.model_ref
        raise CheckpointError(
            f"{ckpt.path}: the base model's weights differ from those the checkpoint was made with "
            f"(model {ref.name!r}, num_classes={ref.num_classes}, weights={ref.weights}). The adapters "
            "only make sense on the same base weights: pass the same --weights file / model.")
    supernet = build_supernet(meta.spec, base, front_end=meta.plan.front_end, extra_trained=meta.plan.trained)
    if (supernet.plan.layers, supernet.plan.trained) != (meta.plan.layers, meta.plan.trained):
        raise CheckpointError(f"{ckpt.path}: the plan rebuilt from the stored spec differs from the stored "
                              "plan; the model's architecture changed since the checkpoint was written.")
    supernet.plan = meta.plan  # keeps what was recorded (why tracing failed, a budget override)
    supernet.model_ref = meta.model_ref
    supernet.base_digest = digest
    supernet.history = meta.history
    _load_tensors(supernet, ckpt)
    if meta.structure is not None:
        try:
            supernet.select(meta.structure)
        except GloraError as exc:
            raise CheckpointError(f"{ckpt.path}: stored structure does not fit the supernet: {exc}") from None
    return supernet


def load(path: Union[str, Path], *, model: Optional[nn.Module] = None, device: str = "cpu") -> Supernet:
    """Rebuild the supernet stored at ``path`` (the base model from its reference unless given)."""
    return load_checkpoint(path, model=model, device=device)[0]


def _load_tensors(supernet: Supernet, ckpt: Checkpoint) -> None:
    own = {f"{n}.{p}": t for n, a in supernet.adapters.items() for p, t in a.named_parameters()}
    copy_tensors(own, ckpt.adapters, ckpt.path, "adapter")
    base_state = dict(supernet.base_model.named_parameters())
    base_state.update(dict(supernet.base_model.named_buffers()))
    own_trained = {k: base_state[k] for k in supernet.trained_state_dict() if k in base_state}
    copy_tensors(own_trained, ckpt.trained, ckpt.path, "trained-module")


def load_adapters(ckpt: Checkpoint) -> dict[str, GloraAdapter]:
    """The checkpoint's adapters rebuilt from its plan alone, frozen (no model needed)."""
    plan, parametrization = ckpt.meta.plan, ckpt.meta.spec.training.parametrization
    adapters = {lp.qualname: _adapter_for(lp, parametrization) for lp in plan.layers}
    own = {f"{n}.{p}": t for n, a in adapters.items() for p, t in a.named_parameters()}
    copy_tensors(own, ckpt.adapters, ckpt.path, "adapter")
    for a in adapters.values():
        a.requires_grad_(False)
    return adapters


def _adapter_for(lp: LayerPlan, parametrization: str) -> GloraAdapter:
    site = lp.site
    if site.type == "Linear":
        return GloraAdapter(lp.space, site.geometry, layer="linear", parametrization=parametrization)
    # Stride/padding/dilation do not enter the folded weights; groups do (and the probe).
    return GloraAdapter(lp.space, site.geometry, layer="conv2d", conv={"groups": site.groups},
                        parametrization=parametrization)


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


def copy_tensors(own: dict[str, torch.Tensor], stored: dict, path: Path, what: str) -> None:
    """Copy ``stored`` into ``own`` (same names and shapes, else CheckpointError)."""
    check_tensor_table({k: t.shape for k, t in own.items()}, stored, path, what)
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(stored[k].to(t.dtype))
