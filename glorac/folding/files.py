"""What ``glorac fold`` writes: one sidecar model, one writer per output form.

* a single ``.safetensors`` state dict (timm and factory models) with ``OUT.glorac.json``
  beside it: :func:`write_safetensors`;
* a Hugging Face directory (``from_pretrained`` loads it) with ``glorac_fold.json``
  inside: :func:`write_hf_directory`. Whatever filled the weights, every other file of
  the source directory (tokenizer, generation config, ...) is copied, so a folded
  directory is as complete as the one it came from.

Both appear atomically: nothing is written when anything fails, and an existing output
is replaced (with ``force``) only once the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..ir import Structure
from ..models import ModelRef
from ..safeio import atomic_write, umask_mode
from .core import FoldReport

HF_SIDECAR = "glorac_fold.json"
#: Files never copied from a source directory: other (unfolded) copies of the weights.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


class FoldSidecar(BaseModel):
    """What a folded output records about itself (``OUT.glorac.json`` / ``glorac_fold.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    glorac_fold: Literal[1] = 1
    model_ref: ModelRef
    structure: Structure
    spec_sha256: str
    added_biases: tuple[str, ...] = ()
    report: FoldReport

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def read(cls, path: Path) -> "FoldSidecar":
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}.") from None
        except ValidationError as exc:
            raise CheckpointError(f"{path} is not a glorac fold sidecar ({exc.error_count()} problem(s)); "
                                  "it was damaged or written by another tool. Fold the checkpoint again.") from None


def sidecar_path(weights: Path) -> Path:
    """``m.safetensors`` → ``m.glorac.json``."""
    return weights.with_name(weights.name.rsplit(".", 1)[0] + ".glorac.json")


def plain_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors contiguous, aliased ones copied (safetensors refuses shared storage)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, t in state.items():
        t = t.detach().contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        out[key] = t.clone() if ident in seen else t
        seen.add(ident)
    return out


def write_safetensors(out: Path, state: Mapping[str, torch.Tensor], sidecar: FoldSidecar, *,
                      force: bool) -> Path:
    """``out`` and its sidecar as a pair; returns the sidecar's path."""
    side = sidecar_path(out)
    if side.exists() and not force:
        raise CheckpointError(f"{side} already exists; pass --force to overwrite it.")

    def write_both(tmp: Path) -> None:
        # The weights are complete on disk before the sidecar is replaced, and the weights
        # are renamed into place only after the sidecar is: a failure in either write
        # leaves both old files as they were.
        save_file(plain_state(state), str(tmp), metadata={"format": "pt"})
        atomic_write(side, lambda t: t.write_text(sidecar.to_json()), force=True)

    atomic_write(out, write_both, force=force)
    return side


def write_hf_directory(out: Path, fill: Callable[[Path], None], describe: Callable[[Path], FoldSidecar], *,
                       force: bool, source: Optional[Path] = None, label_names: tuple[str, ...] = ()) -> Path:
    """A Hugging Face directory at ``out``; returns the sidecar's path.

    ``fill(staging)`` writes the weights (and whatever else it owns, e.g. a config);
    ``describe(staging)``, called on the complete directory, returns its sidecar.
    Then every other file of ``source`` is copied unless ``fill`` wrote one of that
    name; weight files of ``source`` are never copied (they hold unfolded weights). The
    config gets ``label_names`` as id2label/label2id when it has that many labels.
    """
    def complete(staging: Path) -> None:
        fill(staging)
        if source is not None:
            copy_other_files(source, staging, out)
        write_label_names(staging, label_names)
        (staging / HF_SIDECAR).write_text(describe(staging).to_json(), encoding="utf-8")

    write_directory(out, complete, force=force,
                    not_a_directory="Hugging Face models are written as a directory that from_pretrained loads")
    return out / HF_SIDECAR


def write_directory(out: Path, fill: Callable[[Path], None], *, force: bool,
                    not_a_directory: str = "name a directory") -> Path:
    """Create directory ``out`` with what ``fill(staging)`` writes, all or nothing.

    The files go into a hidden staging directory beside ``out``, which is renamed into
    place once complete (an existing ``out`` is replaced only with ``force``, and only
    then); on any error the staging directory is removed and ``out`` left as it was.
    Modes follow the umask (tempfile's 0600/0700 would hide the output from its users)."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output {out} exists and is not a directory; {not_a_directory}.")
    if out.exists() and not force:
        raise CheckpointError(f"output {out} already exists; pass --force to overwrite it.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise CheckpointError(f"cannot write {out}: {exc}; check the directory.") from None
    try:
        fill(staging)
        for path in staging.iterdir():
            if path.is_file():
                os.chmod(path, umask_mode(0o666))
        os.chmod(staging, umask_mode(0o777))
        replace_dir(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(f"writing {out} failed ({exc}); nothing was written.") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def write_label_names(directory: Path, names: tuple[str, ...]) -> bool:
    """Put the data's class names into ``directory/config.json`` as ``id2label``/``label2id``
    when the config has that many labels; True when it did. (Otherwise transformers
    invents LABEL_0..K-1 and a pipeline answers in those.)"""
    path = directory / "config.json"
    if not names or not path.is_file():
        return False
    config = json.loads(path.read_text(encoding="utf-8"))
    # transformers 5 leaves id2label out of a config that has its default two labels.
    labels = len(config.get("id2label") or {}) or config.get("num_labels") or 2
    if labels != len(names):
        return False
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def replace_dir(staging: Path, out: Path) -> None:
    if out.exists():  # --force: move the old directory aside only once the new one is complete
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "x")
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def other_weight_files(source: Path, own: set[str]) -> list[str]:
    """Weight files of ``source`` besides ``own`` (those the fold rewrites): never copied."""
    return [rel for p in _files(source) if _is_weight_file(p.name)
            and (rel := p.relative_to(source).as_posix()) not in own]


def copy_other_files(source: Path, staging: Path, out: Path) -> None:
    """Everything in ``source`` but weights (config, generation config, tokenizer, ...),
    unchanged, where ``staging`` has no file of that name yet.

    Hidden entries (``.git``, caches, staging directories) and an output directory
    placed inside the source are left out."""
    out = out.resolve()
    for path in _files(source):
        if path.resolve().is_relative_to(out) or path.resolve().is_relative_to(staging.resolve()):
            continue
        rel = path.relative_to(source)
        target = staging / rel
        if target.exists() or _is_weight_file(path.name) or rel.as_posix() == HF_SIDECAR:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _files(source: Path) -> list[Path]:
    """Plain files under ``source``, hidden entries (ours included: staging) left out."""
    return [p for p in sorted(source.rglob("*")) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(source).parts)]


def _is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")
