"""Fold a sharded safetensors Hugging Face model shard by shard (``glorac fold`` on large models).

Used by :func:`glorac.export.fold_checkpoint` when the checkpoint's model is ``hf:DIR``
with ``DIR/model.safetensors.index.json`` (and no ``--weights`` file or ``--num-classes``
head replacement: those change the weights away from what the shards hold, so such
checkpoints go through the whole-model path). The base model is never built with weights:

1. the checkpoint is read without building a model; each adapted layer's
   :class:`~glorac.op.GloraAdapter` is rebuilt from the stored plan and adapter tensors;
2. the architecture is built on the ``meta`` device (no memory) for its state-dict key
   names, dtypes and tied parameters; each key is matched to a key of the shards
   (directly, or with/without the model's ``base_model_prefix``: ``hf:DIR`` of a
   ``LlamaForCausalLM`` builds the ``LlamaModel`` backbone, whose ``layers.0...`` are
   ``model.layers.0...`` in the files);
3. the base weights are checked against the checkpoint's digest by streaming the shards'
   tensors one at a time in sorted-name order (the digest :func:`glorac.checkpoint.base_digest`
   records);
4. every shard is loaded alone, its adapted weights (and biases) are replaced by the
   folded ones and the `train` modules' tensors by the checkpoint's, and it is written
   under its own file name; the index and every other non-weight file of the directory
   (config, tokenizer, ...) are copied;
5. the finished directory replaces the output atomically (as the whole-model path does).

Peak memory is one shard plus the checkpoint's adapter and trained tensors (plus one
layer's float64 fold temporaries, and one extra tensor where a weight and its bias lie in
different shards).

**Shard keys versus digest keys** (what ``save_pretrained`` really writes, tiny LLaMA):

* ``tie_word_embeddings=False``: the shards hold the backbone's 20 tensors (as
  ``model.*``) plus ``lm_head.weight``; ``hf:DIR`` builds the backbone, so the digest
  covers the 20 and ``lm_head.weight`` is an *extra* file key;
* ``tie_word_embeddings=True``: ``save_pretrained`` omits ``lm_head.weight`` (it is
  ``embed_tokens.weight``); the shards hold exactly the backbone's 20 tensors.

Hence the rule: a file key the base model does not have (an LM head beside the backbone
the adapters were trained in) is copied unchanged and named in the report's note; a key
of the base model that the shards lack is accepted when the model ties it to a key they
hold (the digest then hashes that key's bytes under its name, as the real model's state
dict does); any other missing key makes the digest impossible to check: CheckpointError,
unless ``verify=False`` (then the base weights are not checked, and the note says so).
Adapting a tied weight is refused: folding it would change its twin as well.

There is no model in memory, so the end-to-end probe of the whole-model path is not
available; each layer's folded output is compared with the adapted layer's on a probe
input (:func:`glorac.graph.fold._layer_probe`) against the dtype's :data:`TOLERANCE`, and
the fold stops at the first layer above it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import _copy_into, check_tensor_table, read_checkpoint
from .errors import CheckpointError, FoldError, GloraError
from .export import FoldResult, _write_hf_dir
from .graph import fold as _fold
from .graph.fold import FoldReport, LayerFold, resolve_structure
from .graph.plan import LayerPlan, Plan
from .ir import Spec, Structure
from .kinds import choice_param_count
from .models import ModelRef, resolve_ref
from .op import GloraAdapter
from .safeio import tensor_digest
from .supernet import Supernet, _under

INDEX = "model.safetensors.index.json"
#: Files never copied from the source directory: other (unfolded) copies of the weights.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_SIDECAR = "glorac_fold.json"

PathLike = Union[str, os.PathLike]


# The shard reader and writer, module-level so tests can watch what is held in memory.
def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path), device="cpu")


def _save_shard(tensors: dict[str, torch.Tensor], path: Path, metadata: Optional[dict]) -> None:
    save_file(tensors, str(path), metadata=metadata)


# ------------------------------------------------------------------------------ when

def source_dir(ref: ModelRef) -> Optional[Path]:
    """The sharded safetensors directory a model reference loads from, or None."""
    if ref.source != "hf" or ref.weights is not None or ref.num_classes is not None:
        return None
    directory = Path(ref.name[len("hf:"):].strip()).expanduser()
    return directory if (directory / INDEX).is_file() else None


def sharded_source(checkpoint: PathLike) -> Optional[Path]:
    """:func:`source_dir` of a checkpoint's model; None for anything unreadable (the
    whole-model path then reports the problem). Memory-maps the file: reads only meta."""
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        ref = ModelRef.model_validate(json.loads(payload["meta"])["model_ref"])
    except Exception:
        return None
    return source_dir(ref)


# ------------------------------------------------------------------------------ keys

class _Shards:
    """Lazily opened shards of one directory; one tensor read at a time."""

    def __init__(self, directory: Path, weight_map: dict[str, str]):
        self.directory, self.weight_map = directory, weight_map
        self._stack = contextlib.ExitStack()
        self._open: dict[str, object] = {}

    def handle(self, file: str):
        if file not in self._open:
            try:
                self._open[file] = self._stack.enter_context(
                    safe_open(str(self.directory / file), framework="pt", device="cpu"))
            except Exception as exc:
                raise CheckpointError(f"cannot read shard {self.directory / file} ({exc}); the model "
                                      "directory is incomplete or corrupt.") from None
        return self._open[file]

    def get(self, key: str) -> torch.Tensor:
        return self.handle(self.weight_map[key]).get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handle(self.weight_map[key]).get_slice(key).get_shape())

    def metadata(self, file: str) -> Optional[dict]:
        return self.handle(file).metadata()

    def close(self) -> None:
        self._stack.close()
        self._open.clear()


class _Lazy:
    """A shard tensor read only when :func:`tensor_digest` asks for its data."""

    is_meta = False

    def __init__(self, shards: _Shards, file_key: str, dtype: torch.dtype):
        self._shards, self._key, self._dtype = shards, file_key, dtype
        self.shape = torch.Size(shards.shape(file_key))

    def detach(self) -> torch.Tensor:
        return self._shards.get(self._key).to(self._dtype)


class _KeyMap:
    """Base-model state-dict keys ↔ shard keys."""

    def __init__(self, model: nn.Module, file_keys: set[str]):
        state = model.state_dict(keep_vars=True)  # keep_vars: tied entries are one object
        self.dtypes = {k: v.dtype for k, v in state.items()}
        self.shapes = {k: tuple(v.shape) for k, v in state.items()}
        prefix = getattr(model, "base_model_prefix", "") or ""
        modes = [lambda k: k]
        if prefix:
            modes += [lambda k: f"{prefix}.{k}",
                      lambda k: k[len(prefix) + 1:] if k.startswith(prefix + ".") else None]
        best = max(modes, key=lambda m: sum(m(k) in file_keys for k in state))
        self.file_key = {k: best(k) for k in state if best(k) in file_keys}
        groups: dict[int, list[str]] = {}
        for k, v in state.items():
            groups.setdefault(id(v), []).append(k)
        self.tied = {k: g for g in groups.values() if len(g) > 1 for k in g}
        self.tied_to: dict[str, str] = {}  # key missing from the files → the file key of its twin
        self.missing = []
        for k in state:
            if k in self.file_key:
                continue
            twin = next((self.file_key[t] for t in self.tied.get(k, ()) if t in self.file_key), None)
            if twin is None:
                self.missing.append(k)
            else:
                self.file_key[k] = self.tied_to[k] = twin
        self.extra = sorted(file_keys - set(self.file_key.values()))


# ------------------------------------------------------------------------------ fold

def fold_sharded(checkpoint_path: PathLike, output_dir: PathLike, *, structure: Optional[Structure] = None,
                 force: bool = False, verify: bool = True, choice_name: Optional[str] = None,
                 allow_added_biases: bool = False) -> FoldResult:
    """Fold the checkpoint's structure into its sharded base model, one shard at a time.

    ``structure``: the structure to fold (else the checkpoint's, else implied by one-choice
    spaces). ``choice_name`` names where it came from in error messages. A structure that
    creates biases in bias-free layers (``bias add``) is refused, as in the whole-model
    path, because ``from_pretrained`` drops biases its config does not declare;
    ``allow_added_biases=True`` writes them anyway (beside their weights, in the index's
    weight map), for loaders other than ``from_pretrained``. Returns the same
    :class:`~glorac.export.FoldResult` as the whole-model path.
    """
    ckpt, out = Path(checkpoint_path), Path(output_dir)
    meta, payload = read_checkpoint(ckpt)
    payload.pop("extra_tensors", None)  # search results etc.: not needed, not held
    spec, plan, ref, stored = _parse_meta(meta, ckpt)
    src = source_dir(ref)
    if src is None:
        raise FoldError(f"{ckpt}: model {ref.name!r} is not a local directory of sharded safetensors "
                        f"({INDEX}) loaded as is; fold it with the whole-model path.")
    if out.exists() and not force:
        raise CheckpointError(f"output {out} already exists; pass --force to overwrite it.")
    if out.exists() and out.is_dir() and os.path.samefile(out, src):
        raise FoldError(f"output {out} is the base model directory itself; choose another output path.")

    adapters = _build_adapters(plan, payload["adapters"], ckpt, spec.training.parametrization)
    supernet = Supernet(nn.Module(), None, plan, adapters, spec=spec, model_ref=ref)  # no model: choices only
    if stored is not None:
        try:
            supernet.select(stored)
        except GloraError as exc:
            raise CheckpointError(f"{ckpt}: stored structure does not fit the supernet: {exc}") from None
    if structure is not None:
        try:
            supernet.set_choice(structure)
        except GloraError as exc:
            raise FoldError(f"{choice_name or 'structure'}: {exc}") from None
    chosen = resolve_structure(supernet, structure)
    supernet.set_choice(chosen)
    _fold.check_finite_adapters(supernet)
    new_biases = [f"{lp.qualname}.bias" for lp in plan.layers if not lp.site.has_bias
                  and any(getattr(chosen.layers[lp.qualname], t).kind != "none" for t in "CE")]
    if new_biases and not allow_added_biases:
        raise FoldError(
            f"`bias add` created biases in {len(new_biases)} bias-free layer(s) (e.g. {new_biases[0]}), but a "
            "Hugging Face config cannot declare per-layer biases, so from_pretrained would silently drop "
            "them. Use `bias preserve` for Hugging Face models. Nothing was written.")

    index = _read_index(src)
    weight_map: dict[str, str] = index["weight_map"]
    model = resolve_ref(ref, device="meta")
    keys = _KeyMap(model, set(weight_map))
    del model
    shards = _Shards(src, weight_map)
    try:
        _check_layers(plan, keys, shards)
        trained = _check_trained(plan, keys, payload["trained"], ckpt)
        base_note = _check_base(meta["base_digest"], plan, keys, shards, ckpt, verify)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging.", dir=_parent(out)))
        try:
            layers, added, dtype = _fold_shards(src, staging, index, plan, adapters, chosen, keys, shards,
                                                trained, verify)
            skipped = _copy_other_files(src, staging, set(weight_map.values()), out)
            notes = ["streaming fold (shard by shard): no model in memory, so the end-to-end error "
                     "was not measured; each layer's probe delta was checked against the tolerance"
                     if verify else "streaming fold (shard by shard), --no-verify: layer probes skipped"]
            notes += [n for n in (base_note, _extra_note(keys), _added_note(added), _skipped_note(skipped)) if n]
            report = _report(layers, dtype)
            worst = report.worst
            report = report.model_copy(update={"worst_layer": worst.layer if worst else None,
                                               "note": "; ".join(notes) + "."})
            sidecar_data = {
                "glorac_fold": 1,
                "model_ref": ref.model_dump(mode="json"),
                "structure": chosen.model_dump(mode="json"),
                "spec_sha256": hashlib.sha256(spec.model_dump_json().encode()).hexdigest(),
                "added_biases": added,
                "report": report.model_dump(mode="json"),
            }
            sidecar = _write_hf_dir(_Staged(staging), out, sidecar_data, force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        shards.close()
    return FoldResult(out, sidecar, report, ref.name)


class _Staged:
    """What :func:`glorac.export._write_hf_dir` writes: a finished directory, moved in."""

    def __init__(self, staging: Path):
        self.staging = staging

    def save_pretrained(self, directory, safe_serialization: bool = True) -> None:
        for entry in self.staging.iterdir():
            os.replace(entry, Path(directory) / entry.name)


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _parse_meta(meta: dict, path: Path) -> tuple[Spec, Plan, ModelRef, Optional[Structure]]:
    try:
        return (Spec.model_validate(meta["spec"]), Plan.model_validate(meta["plan"]),
                ModelRef.model_validate(meta["model_ref"]),
                Structure.model_validate(meta["structure"]) if meta.get("structure") else None)
    except ValidationError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata does not validate ({exc.error_count()} "
                              "problem(s)); it was written by another glorac version or damaged.") from None


def _adapter_for(lp: LayerPlan, parametrization: str) -> GloraAdapter:
    site = lp.site
    if site.type == "Linear":
        return GloraAdapter(lp.space, site.geometry, layer="linear", parametrization=parametrization)
    # Stride/padding/dilation do not enter the folded weights; groups do (and the probe).
    return GloraAdapter(lp.space, site.geometry, layer="conv2d", conv={"groups": site.groups},
                        parametrization=parametrization)


def _build_adapters(plan: Plan, stored: dict, path: Path, parametrization: str) -> dict[str, GloraAdapter]:
    adapters = {lp.qualname: _adapter_for(lp, parametrization) for lp in plan.layers}
    own = {f"{n}.{p}": t for n, a in adapters.items() for p, t in a.named_parameters()}
    _copy_into(own, stored, path, "adapter")
    for a in adapters.values():
        a.requires_grad_(False)
    return adapters


def _read_index(src: Path) -> dict:
    path = src / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not a name → file table")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc}); the model directory is damaged.") from None
    missing = sorted({f for f in weight_map.values() if not (src / f).is_file()})
    if missing:
        raise CheckpointError(f"{path} names shard(s) that do not exist: {', '.join(missing[:3])}; "
                              "the model directory is incomplete.")
    return index


def _expected_shape(lp: LayerPlan) -> tuple[int, ...]:
    s = lp.site
    if s.type == "Linear":
        return (s.out_features, s.in_features)
    return (s.out_features, s.in_features // s.groups, *s.kernel)


def _check_layers(plan: Plan, keys: _KeyMap, shards: _Shards) -> None:
    for lp in plan.layers:
        wkey = f"{lp.qualname}.weight"
        if wkey in keys.tied:
            raise FoldError(f"layer `{lp.qualname}` is adapted, but its weight is tied to "
                            f"{', '.join(k for k in keys.tied[wkey] if k != wkey)}: folding it would change "
                            "those too. Exclude the layer from the spec's adapt rule.")
        if wkey not in keys.file_key:
            raise CheckpointError(f"the model's shards hold no weight for adapted layer `{lp.qualname}` "
                                  f"(looked for {wkey}); the directory does not match the checkpoint's model.")
        shape = shards.shape(keys.file_key[wkey])
        if shape != _expected_shape(lp):
            raise CheckpointError(f"adapted layer `{lp.qualname}` has shape {shape} in the shards, the plan "
                                  f"says {_expected_shape(lp)}; the model's architecture changed since the "
                                  "checkpoint was written.")


def _check_trained(plan: Plan, keys: _KeyMap, stored: dict, path: Path) -> dict[str, torch.Tensor]:
    """The `train` modules' tensors by shard key."""
    own = [k for k in keys.shapes if _under(k, plan.trained)]
    check_tensor_table({k: keys.shapes[k] for k in own}, stored, path, "trained-module")
    nowhere = [k for k in own if k not in keys.file_key]
    if nowhere:
        raise FoldError(f"the model's shards have no place for the trained tensor(s) "
                        f"{', '.join(nowhere[:3])}; this model cannot be folded shard by shard.")
    return {keys.file_key[k]: stored[k] for k in own}


def _check_base(digest: str, plan: Plan, keys: _KeyMap, shards: _Shards, path: Path, verify: bool) -> str:
    """Compare the shards with the checkpoint's base digest, streaming; returns a note."""
    covered = [k for k in keys.shapes if not _under(k, plan.trained)]
    missing = [k for k in covered if k in keys.missing]
    if missing:
        what = (f"the shards lack {len(missing)} tensor(s) of the base model the checkpoint was made with "
                f"(e.g. {', '.join(missing[:3])}), and no tensor they hold is tied to them")
        if verify:
            raise CheckpointError(f"{path}: {what}, so the base weights cannot be checked against the "
                                  "checkpoint. Pass --no-verify to fold without that check.")
        return f"base weights NOT checked: {what}"
    got = tensor_digest((k, _Lazy(shards, keys.file_key[k], keys.dtypes[k])) for k in covered)
    if got != digest:
        raise CheckpointError(
            f"{path}: the base model's weights in {shards.directory} differ from those the checkpoint was "
            "made with. The adapters only make sense on the same base weights: pass the same model.")
    tied = [k for k in covered if k in keys.tied_to]
    return "base weights match the checkpoint" + (
        f" ({len(tied)} tied tensor(s) read through their saved twin)" if tied else "")


def _extra_note(keys: _KeyMap) -> str:
    if not keys.extra:
        return ""
    return (f"{len(keys.extra)} shard tensor(s) not part of the base model (e.g. {', '.join(keys.extra[:3])}) "
            "copied unchanged, unchecked by the base digest")


def _added_note(added: list[str]) -> str:
    if not added:
        return ""
    return (f"{len(added)} new bias tensor(s) written (bias add, allowed explicitly); from_pretrained "
            "drops biases the model's config does not declare")


def _skipped_note(skipped: list[str]) -> str:
    return f"other weight files not copied: {', '.join(skipped[:3])}" if skipped else ""


def _report(layers: tuple[LayerFold, ...], dtype: torch.dtype) -> FoldReport:
    return FoldReport(layers=layers, dtype=str(dtype).replace("torch.", ""),
                      tolerance=_fold.TOLERANCE.get(dtype, 1e-4))


def _fold_one(name: str, adapter: GloraAdapter, choice, w0: torch.Tensor, b0: Optional[torch.Tensor]):
    w, b = adapter.fold(w0, b0, choice)
    if not torch.isfinite(w).all() or (b is not None and not torch.isfinite(b).all()):
        raise FoldError(f"folding layer `{name}` ({choice}) gives non-finite weights; the adapter "
                        "tensors hold inf/NaN (a diverged training run?). Nothing was written.")
    return w, b


def _fold_shards(src: Path, staging: Path, index: dict, plan: Plan, adapters: dict[str, GloraAdapter],
                 structure: Structure, keys: _KeyMap, shards: _Shards, trained: dict[str, torch.Tensor],
                 verify: bool):
    weight_map = index["weight_map"]
    files = sorted(set(weight_map.values()))
    fk = keys.file_key
    by_file: dict[str, list[LayerPlan]] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}  # a folded bias saved in another shard than its weight
    for lp in plan.layers:
        wkey, bkey = fk[f"{lp.qualname}.weight"], fk.get(f"{lp.qualname}.bias")
        by_file.setdefault(weight_map[wkey], []).append(lp)
        if bkey is not None and weight_map[bkey] != weight_map[wkey]:
            _, b = _fold_one(lp.qualname, adapters[lp.qualname], structure.layers[lp.qualname],
                             shards.get(wkey), shards.get(bkey))
            pending.setdefault(weight_map[bkey], {})[bkey] = b
    probe_gen = torch.Generator().manual_seed(0)
    folds: dict[str, LayerFold] = {}
    added: list[str] = []
    new_weight_map = dict(weight_map)
    added_bytes, dtype = 0, None
    for file in files:
        tensors = _load_shard(src / file)
        for lp in by_file.get(file, ()):
            name, adapter, choice = lp.qualname, adapters[lp.qualname], structure.layers[lp.qualname]
            wkey, bkey = fk[f"{name}.weight"], fk.get(f"{name}.bias")
            w0 = tensors[wkey]
            b0 = None if bkey is None else tensors[bkey] if bkey in tensors else shards.get(bkey)
            w, b = _fold_one(name, adapter, choice, w0, b0)
            dtype = w0.dtype if dtype is None else dtype
            delta = rel = float("nan")
            if verify:
                adapter.set_choice(choice)
                delta, rel = _fold._layer_probe(SimpleNamespace(weight=w0, bias=b0), adapter, w, b, probe_gen)
            tensors[wkey] = w.contiguous()
            if b is not None:
                if bkey is None:  # `bias add`: a new tensor beside the weight
                    bkey = wkey[: -len("weight")] + "bias"
                    new_weight_map[bkey] = file
                    added.append(f"{name}.bias")
                    added_bytes += b.numel() * b.element_size()
                    tensors[bkey] = b.contiguous()
                elif weight_map[bkey] == file:
                    tensors[bkey] = b.contiguous()
                # else: written with its own shard (`pending`, folded before this loop)
            folds[name] = LayerFold(layer=name, structure=str(choice), rel_delta=rel,
                                    params=choice_param_count(choice, adapter.geom), max_abs_delta=delta)
            layer_report = _report((folds[name],), w0.dtype)
            if not layer_report.ok:  # stop at the first bad layer, before more shards are read
                raise FoldError(layer_report.failure())
            del w0, b0, w, b
        for key, value in trained.items():
            if weight_map[key] == file:
                tensors[key] = value.detach().to(tensors[key].dtype).contiguous()
        tensors.update(pending.pop(file, {}))
        _save_shard(tensors, staging / file, shards.metadata(file))
        del tensors  # before the next shard is read
    if added:
        index = dict(index, weight_map=dict(sorted(new_weight_map.items())))
        if isinstance(index.get("metadata"), dict) and isinstance(index["metadata"].get("total_size"), int):
            index["metadata"] = dict(index["metadata"], total_size=index["metadata"]["total_size"] + added_bytes)
        (staging / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    else:
        shutil.copy2(src / INDEX, staging / INDEX)
    layers = tuple(folds[lp.qualname] for lp in plan.layers)
    return layers, added, dtype or torch.float32


def _copy_other_files(src: Path, staging: Path, shard_files: set[str], out: Path) -> list[str]:
    """Everything but the weights (config, generation config, tokenizer, ...), unchanged.

    Hidden entries (``.git``, caches, our own staging directories) and an output directory
    placed inside the source are left out; other weight files are skipped and returned."""
    skipped = []
    out = out.resolve()
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (not path.is_file() or any(part.startswith(".") for part in rel.parts)
                or path.resolve().is_relative_to(out)):
            continue
        name = rel.as_posix()
        if name in shard_files or name in (INDEX, _SIDECAR):
            continue
        if path.name.endswith(_WEIGHT_SUFFIXES) or path.name.endswith(".index.json"):
            skipped.append(name)
            continue
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return skipped
