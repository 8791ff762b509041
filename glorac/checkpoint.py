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
(or takes one) and refuses it when its digest differs from the one recorded. A supernet
compiled from an ``nn.Module`` object has no reference: its checkpoint loads with
``glorac.load(path, model=the_same_model)``.

:func:`save_adapters` writes the same content as two files in a directory, for tools
that expect that shape (the Hugging Face Trainer's checkpoint folders, PEFT users):
``glorac_adapter.safetensors`` (every table above, keys prefixed ``adapter.``,
``trained.`` and ``resume.``) and ``glorac_adapter.json`` (format, version and the
metadata, readable). :func:`read_checkpoint` and so every command accept either.
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
from .safeio import atomic_write, atomic_write_text, check_output, tensor_digest
from .supernet import Supernet
from .version import __version__

FORMAT = "glorac.supernet"
FORMAT_VERSION = 3
#: The adapters-only directory (save_adapters): its two files and its format tag.
ADAPTER_WEIGHTS = "glorac_adapter.safetensors"
ADAPTER_CONFIG = "glorac_adapter.json"
ADAPTER_FORMAT = "glorac.adapters"
#: Safetensors key prefixes of the checkpoint's tensor tables.
_TABLES = {"adapter": "adapters", "trained": "trained", "resume": "extra_tensors"}
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
    model_ref: Optional[ModelRef] = None  # None: compiled from an nn.Module object
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

    def model_ref(self) -> ModelRef:
        """The base model's reference; CheckpointError when the supernet had none."""
        if self.meta.model_ref is None:
            raise CheckpointError(
                f"{self.path} was saved from a supernet compiled from an nn.Module object, so it names no "
                "model to rebuild. Load it in Python with glorac.load(path, model=YOUR_MODEL) (the same "
                "weights), or compile from a reference (--model package.module:factory, hf:DIR or a timm "
                "name) to use it from the command line.")
        return self.meta.model_ref


def base_digest(model: nn.Module, trained: tuple[str, ...]) -> str:
    """Digest of the frozen base weights (the `train` modules excluded: they change)."""
    state = model.state_dict()
    return tensor_digest((k, v) for k, v in state.items() if not under(k, trained))


def checkpoint_meta(supernet: Supernet) -> CheckpointMeta:
    """What a checkpoint of ``supernet`` says about itself (its digest computed once)."""
    if supernet.spec is None:
        raise CheckpointError("this supernet has no spec (it was not built by glorac.build_supernet), "
                              "so a checkpoint could not rebuild it; build it with glorac.build_supernet.")
    if supernet.base_digest is None:
        supernet.base_digest = base_digest(supernet.base_model, supernet.plan.trained)
    return CheckpointMeta(glorac_version=__version__, spec=supernet.spec, spec_sources=_sources(supernet.spec),
                          model_ref=supernet.model_ref, plan=supernet.plan, base_digest=supernet.base_digest,
                          structure=supernet.structure, history=supernet.history)


def _tables(supernet: Supernet, extra_tensors: Optional[dict[str, torch.Tensor]]) -> dict[str, dict]:
    """The checkpoint's tensor tables, on the CPU and contiguous (as files need them)."""
    def plain(tensors: dict) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    return {"adapters": plain(supernet.adapter_state_dict()), "trained": plain(supernet.trained_state_dict()),
            "extra_tensors": plain(extra_tensors or {})}


def save(supernet: Supernet, path: Union[str, Path], *, force: bool = False,
         extra_tensors: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Write ``supernet`` (with its structure and history) atomically as one ``.pt`` file;
    an existing file is kept unless ``force``. ``extra_tensors``: a training run's resume
    state. The base weights are not written (see the module docstring)."""
    meta = checkpoint_meta(supernet)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta.model_dump_json(),
               **_tables(supernet, extra_tensors)}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), force=force)


def save_adapters(supernet: Supernet, directory: Union[str, Path], *, force: bool = False,
                  extra_tensors: Optional[dict[str, torch.Tensor]] = None) -> Path:
    """Write ``supernet`` as ``glorac_adapter.safetensors`` + ``glorac_adapter.json`` in
    ``directory`` (created if needed; other files in it are left alone). Returns the
    directory. Each file is written atomically, the JSON last, so a directory with the
    JSON is complete. Existing glorac files are kept unless ``force``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"output {directory} is a file; save_adapters writes a directory (name one).")
    weights, config = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
    for path in (weights, config):
        check_output(path, force=force, what="adapter file")
    meta = checkpoint_meta(supernet)
    flat = {f"{prefix}.{key}": tensor for prefix, table in _TABLES.items()
            for key, tensor in _tables(supernet, extra_tensors)[table].items()}
    atomic_write(weights, lambda tmp: save_file(flat, str(tmp), metadata={"format": ADAPTER_FORMAT}), force=force)
    text = json.dumps({"format": ADAPTER_FORMAT, "format_version": FORMAT_VERSION,
                       "meta": json.loads(meta.model_dump_json())}, indent=1)
    atomic_write_text(config, text + "\n", force=force)
    return directory


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
    payload = _read_adapter_dir(path) if (path / ADAPTER_CONFIG).is_file() else _read_payload(path, mmap)
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


def _read_adapter_dir(path: Path) -> dict:
    """An adapters-only directory (save_adapters) as the payload a .pt file holds."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    try:
        head = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(head, dict) or head.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"its format is {head.get('format') if isinstance(head, dict) else head!r}")
        flat = load_file(str(weights))
    except FileNotFoundError:
        raise CheckpointError(f"{path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; the save was interrupted "
                              "or the file was removed. Save the adapters again.") from None
    except (OSError, UnicodeDecodeError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{path} is a damaged glorac adapter directory ({str(exc)[:200]}); "
                              "save the adapters again.") from None
    payload = {"format": FORMAT, "format_version": head.get("format_version"),
               "meta": json.dumps(head.get("meta")), **{table: {} for table in _TABLES.values()}}
    for key, tensor in flat.items():
        prefix, _, name = key.partition(".")
        if prefix not in _TABLES:
            raise CheckpointError(f"{weights}: unexpected tensor {key!r}; it was not written by glorac.")
        payload[_TABLES[prefix]][name] = tensor
    _check_version(path, payload)
    return payload


def _check_version(path: Path, payload: dict) -> None:
    if payload.get("format_version") not in (1, 2, FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}, this glorac "
            f"reads version {FORMAT_VERSION}; use the glorac version that wrote it.")


def _read_payload(path: Path, mmap: bool) -> dict:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory without {ADAPTER_CONFIG}; pass a .pt file "
                              "or a directory written by glorac.save_adapters.")
    if path.suffix == ".safetensors":  # most likely glorac fold's output
        raise CheckpointError(
            f"{path} is a .safetensors weights file (what `glorac fold` writes), not a supernet checkpoint. "
            "Pass a checkpoint written by `glorac compile`, `glorac train` or `glorac search` (.pt, or a "
            "directory from glorac.save_adapters); a folded model is evaluated with `glorac eval`.")
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
    _check_version(path, payload)
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
    base = model if model is not None else resolve_ref(ckpt.model_ref(), device=device)
    digest = base_digest(base, meta.plan.trained)
    if digest != meta.base_digest:
        ref = meta.model_ref
        which = (f"model {ref.name!r}, num_classes={ref.num_classes}, weights={ref.weights}" if ref is not None
                 else "an nn.Module object")
        raise CheckpointError(
            f"{ckpt.path}: the base model's weights differ from those the checkpoint was made with "
            f"({which}). The adapters only make sense on the same base weights: pass the same --weights "
            "file / model.")
    supernet = build_supernet(meta.spec, base, front_end=meta.plan.front_end, extra_trained=meta.plan.trained)
    if (supernet.plan.layers, supernet.plan.trained) != (meta.plan.layers, meta.plan.trained):
        raise CheckpointError(f"{ckpt.path}: the plan rebuilt from the stored spec differs from the stored "
                              "plan; the model's architecture changed since the checkpoint was written.")
    supernet.plan = meta.plan  # keeps what was recorded (why tracing failed, a budget override)
    supernet.model_ref = meta.model_ref
    supernet.base_digest = digest
    supernet.history = meta.history
    load_tensors(supernet, ckpt)
    if meta.structure is not None:
        try:
            supernet.select(meta.structure)
        except GloraError as exc:
            raise CheckpointError(f"{ckpt.path}: stored structure does not fit the supernet: {exc}") from None
    return supernet


def load(path: Union[str, Path], *, model: Optional[nn.Module] = None, device: str = "cpu") -> Supernet:
    """Rebuild the supernet stored at ``path`` (the base model from its reference unless given)."""
    return load_checkpoint(path, model=model, device=device)[0]


def load_tensors(supernet: Supernet, ckpt: Checkpoint) -> None:
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
