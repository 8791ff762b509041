"""Fold a Hugging Face safetensors directory file by file, never building the model.

Used by :func:`glorac.folding.export.fold_checkpoint` when the checkpoint's model is a
local ``hf:DIR`` loaded as it is (no ``--weights`` file, no ``--num-classes`` head:
those change the weights away from what the files hold), saved as one
``model.safetensors`` or as shards with ``model.safetensors.index.json``. Both layouts
take this one path, so they give the same directory (the weights in the source's own
layout, every other file copied):

1. the checkpoint is read without building a model; its adapters are rebuilt from the
   stored plan and tensors (:func:`glorac.checkpoint.load_adapters`);
2. the architecture is built on the ``meta`` device (no memory) for its state-dict key
   names, dtypes and tied parameters; each key is matched to a key of the files
   (directly, or with/without the model's ``base_model_prefix``: ``hf:DIR`` of a
   ``LlamaForCausalLM`` builds the ``LlamaModel`` backbone, whose ``layers.0...`` are
   ``model.layers.0...`` in the files);
3. the base weights are checked against the checkpoint's digest by streaming the files'
   tensors one at a time in sorted-name order (what :func:`glorac.checkpoint.base_digest`
   records);
4. every file is loaded alone; the layers it holds are folded by
   :func:`glorac.folding.core.fold_tensors` (reading a weight's bias from another file
   when it lies there), the `train` modules' tensors replaced by the checkpoint's, and
   it is written under its own name with its own metadata.

Peak memory is one file plus the checkpoint's adapter and trained tensors (plus one
layer's float64 fold temporaries).

**File keys versus digest keys** (what ``save_pretrained`` really writes, tiny LLaMA):

* ``tie_word_embeddings=False``: the files hold the backbone's tensors (as ``model.*``)
  plus ``lm_head.weight``; ``hf:DIR`` builds the backbone, so the digest covers the
  backbone and ``lm_head.weight`` is an *extra* file key;
* ``tie_word_embeddings=True``: ``save_pretrained`` omits ``lm_head.weight`` (it is
  ``embed_tokens.weight``); the files hold exactly the backbone's tensors.

Hence the rule: a file key the base model does not have (an LM head beside the backbone
the adapters were trained in) is copied unchanged and named in the report's note; a key
of the base model that the files lack is accepted when the model ties it to a key they
hold (the digest then hashes that key's bytes under its name, as the real model's state
dict does); any other missing key makes the digest impossible to check: CheckpointError,
unless ``verify=False`` (then the base weights are not checked, and the note says so).
Adapting a tied weight is refused: folding it would change its twin as well.

There is no model in memory, so the end-to-end probe of the whole-model fold is not
available; each layer's folded output is compared with the adapted layer's on a probe
input against the dtype's tolerance, and the fold stops at the first layer above it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Iterator, Mapping, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import Checkpoint, check_tensor_table
from ..errors import CheckpointError, FoldError
from ..models import ModelRef, resolve_ref
from ..op import GloraAdapter
from ..planning import LayerPlan, Plan, under
from ..safeio import tensor_digest
from .core import FoldReport, LayerFold, fold_tensors

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


# The file reader and writer, module-level so tests can watch what is held in memory.
def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path), device="cpu")


def _save_shard(tensors: dict[str, torch.Tensor], path: Path, metadata: Optional[dict]) -> None:
    save_file(tensors, str(path), metadata=metadata)


# ------------------------------------------------------------------------------ when

def source_dir(ref: ModelRef) -> Optional[Path]:
    """The safetensors directory a model reference loads as is, or None."""
    if ref.source != "hf" or ref.weights is not None or ref.num_classes is not None:
        return None
    directory = Path(ref.name[len("hf:"):].strip()).expanduser()
    return directory if (directory / INDEX).is_file() or (directory / SINGLE).is_file() else None


# ------------------------------------------------------------------------------ files

class SourceFiles:
    """The weight files of one directory, opened lazily; one tensor read at a time."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.index = _read_index(directory)
        self.weight_map: dict[str, str] = self.index["weight_map"]
        self._stack = contextlib.ExitStack()
        self._open: dict[str, object] = {}

    @property
    def files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def handle(self, file: str):
        if file not in self._open:
            try:
                self._open[file] = self._stack.enter_context(
                    safe_open(str(self.directory / file), framework="pt", device="cpu"))
            except Exception as exc:
                raise CheckpointError(f"cannot read {self.directory / file} ({exc}); the model "
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


def _read_index(src: Path) -> dict:
    """The sharded index, or one made up for a single ``model.safetensors``."""
    path = src / INDEX
    if not path.is_file():
        try:
            with safe_open(str(src / SINGLE), framework="pt", device="cpu") as f:
                return {"weight_map": {k: SINGLE for k in f.keys()}}
        except Exception as exc:
            raise CheckpointError(f"cannot read {src / SINGLE} ({exc}); the model directory is "
                                  "incomplete or corrupt.") from None
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


class _Lazy:
    """A file tensor read only when :func:`tensor_digest` asks for its data."""

    is_meta = False

    def __init__(self, files: SourceFiles, file_key: str, dtype: torch.dtype):
        self._files, self._key, self._dtype = files, file_key, dtype
        self.shape = torch.Size(files.shape(file_key))

    def detach(self) -> torch.Tensor:
        return self._files.get(self._key).to(self._dtype)


class KeyMap:
    """Base-model state-dict keys ↔ file keys."""

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


class _FileState(Mapping[str, torch.Tensor]):
    """Base-model keys → tensors: from the file in memory, else read from its own file."""

    def __init__(self, keys: KeyMap, files: SourceFiles, loaded: dict[str, torch.Tensor]):
        self.keys, self.files, self.loaded = keys, files, loaded

    def __getitem__(self, key: str) -> torch.Tensor:
        file_key = self.keys.file_key[key]
        return self.loaded[file_key] if file_key in self.loaded else self.files.get(file_key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys.file_key)

    def __len__(self) -> int:
        return len(self.keys.file_key)


# ------------------------------------------------------------------------------ checks

def check_layers(plan: Plan, keys: KeyMap, files: SourceFiles) -> None:
    for lp in plan.layers:
        wkey = f"{lp.qualname}.weight"
        if wkey in keys.tied:
            raise FoldError(f"layer `{lp.qualname}` is adapted, but its weight is tied to "
                            f"{', '.join(k for k in keys.tied[wkey] if k != wkey)}: folding it would change "
                            "those too. Exclude the layer from the spec's adapt rule.")
        if wkey not in keys.file_key:
            raise CheckpointError(f"the model's files hold no weight for adapted layer `{lp.qualname}` "
                                  f"(looked for {wkey}); the directory does not match the checkpoint's model.")
        shape = files.shape(keys.file_key[wkey])
        if shape != lp.site.weight_shape:
            raise CheckpointError(f"adapted layer `{lp.qualname}` has shape {shape} in the files, the plan "
                                  f"says {lp.site.weight_shape}; the model's architecture changed since the "
                                  "checkpoint was written.")


def trained_by_file_key(plan: Plan, keys: KeyMap, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The `train` modules' tensors by file key."""
    own = [k for k in keys.shapes if under(k, plan.trained)]
    check_tensor_table({k: keys.shapes[k] for k in own}, ckpt.trained, ckpt.path, "trained-module")
    nowhere = [k for k in own if k not in keys.file_key]
    if nowhere:
        raise FoldError(f"the model's files have no place for the trained tensor(s) "
                        f"{', '.join(nowhere[:3])}; this model cannot be folded file by file.")
    return {keys.file_key[k]: ckpt.trained[k] for k in own}


def check_base(ckpt: Checkpoint, keys: KeyMap, files: SourceFiles, verify: bool) -> str:
    """Compare the files with the checkpoint's base digest, streaming; returns a note."""
    covered = [k for k in keys.shapes if not under(k, ckpt.meta.plan.trained)]
    missing = [k for k in covered if k in keys.missing]
    if missing:
        what = (f"the files lack {len(missing)} tensor(s) of the base model the checkpoint was made with "
                f"(e.g. {', '.join(missing[:3])}), and no tensor they hold is tied to them")
        if verify:
            raise CheckpointError(f"{ckpt.path}: {what}, so the base weights cannot be checked against the "
                                  "checkpoint. Pass --no-verify to fold without that check.")
        return f"base weights NOT checked: {what}"
    got = tensor_digest((k, _Lazy(files, keys.file_key[k], keys.dtypes[k])) for k in covered)
    if got != ckpt.meta.base_digest:
        raise CheckpointError(
            f"{ckpt.path}: the base model's weights in {files.directory} differ from those the checkpoint "
            "was made with. The adapters only make sense on the same base weights: pass the same model.")
    tied = [k for k in covered if k in keys.tied_to]
    return "base weights match the checkpoint" + (
        f" ({len(tied)} tied tensor(s) read through their saved twin)" if tied else "")


def base_keys(model_ref: ModelRef, files: SourceFiles) -> KeyMap:
    """The key map of the architecture, built on ``meta`` (nothing allocated)."""
    return KeyMap(resolve_ref(model_ref, device="meta"), set(files.weight_map))


# ------------------------------------------------------------------------------ fold

def fold_files(files: SourceFiles, staging: Path, plan: Plan, adapters: Mapping[str, GloraAdapter], structure,
               keys: KeyMap, trained: dict[str, torch.Tensor], *, probe: bool) -> tuple[list[str], FoldReport]:
    """Write every weight file, folded, into ``staging``: (added bias keys, report)."""
    weight_map, fk = files.weight_map, keys.file_key
    by_file: dict[str, list[LayerPlan]] = {}
    for lp in plan.layers:  # a layer is folded with each file that holds its weight or bias
        for key in (f"{lp.qualname}.weight", f"{lp.qualname}.bias"):
            if key in fk and lp not in by_file.setdefault(weight_map[fk[key]], []):
                by_file[weight_map[fk[key]]].append(lp)
    rows: dict[str, LayerFold] = {}
    new_map, added, added_bytes = dict(weight_map), [], 0
    for file in files.files:
        tensors = _load_shard(files.directory / file)
        layers = by_file.get(file, [])
        state = _FileState(keys, files, tensors)
        for lp, entries, row in fold_tensors(state, layers, adapters, structure, probe=probe):
            for key, value in entries.items():
                file_key = fk.get(key) or fk[f"{lp.qualname}.weight"][: -len("weight")] + "bias"
                if key not in fk:  # `bias add`: a new tensor beside its weight
                    new_map[file_key] = file
                    added.append(key)
                    added_bytes += value.numel() * value.element_size()
                if new_map[file_key] == file:
                    tensors[file_key] = value.contiguous()
            rows.setdefault(lp.qualname, row)
            check = FoldReport.of([row], keys.dtypes[f"{lp.qualname}.weight"])  # no second read
            if not check.ok:  # stop at the first bad layer, before more files are read
                raise FoldError(check.failure())
        for key, value in trained.items():
            if weight_map[key] == file:
                tensors[key] = value.detach().to(tensors[key].dtype).contiguous()
        _save_shard(tensors, staging / file, files.metadata(file))
        del tensors  # before the next file is read
    _write_index(files, staging, new_map, added_bytes)
    dtype = keys.dtypes[f"{plan.layers[0].qualname}.weight"] if plan.layers else torch.float32
    return added, FoldReport.of((rows[lp.qualname] for lp in plan.layers), dtype)


def _write_index(files: SourceFiles, staging: Path, weight_map: dict[str, str], added_bytes: int) -> None:
    source = files.directory / INDEX
    if not source.is_file():
        return  # one model.safetensors: no index, as save_pretrained writes it
    if weight_map == files.weight_map:
        shutil.copy2(source, staging / INDEX)
        return
    index = dict(files.index, weight_map=dict(sorted(weight_map.items())))
    meta = index.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("total_size"), int):
        index["metadata"] = dict(meta, total_size=meta["total_size"] + added_bytes)
    (staging / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def extra_note(keys: KeyMap) -> str:
    if not keys.extra:
        return ""
    return (f"{len(keys.extra)} file tensor(s) not part of the base model (e.g. {', '.join(keys.extra[:3])}) "
            "copied unchanged, unchecked by the base digest")
