"""``glorac fold CHECKPOINT -o OUT``: fold a checkpoint and write files the stock model loads.

* timm / factory models: one ``.safetensors`` state dict with exactly the base model's
  keys, shapes and dtypes (plus new ``*.bias`` entries where the spec said ``bias add``),
  and a sidecar ``OUT.glorac.json``;
* Hugging Face models: a directory written by ``save_pretrained`` (``from_pretrained``
  loads it), with ``glorac_fold.json`` inside.

Nothing is written when anything fails; outputs appear atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from .checkpoint import load
from .errors import CheckpointError, FoldError, GloraError
from .graph.fold import FoldReport, fold_with_report
from .ir import Structure
from .safeio import atomic_write


@dataclass
class FoldResult:
    output: Path
    sidecar: Path
    report: FoldReport
    model_name: str


def check_fold_output(checkpoint: str, output: str, *, force: bool) -> None:
    """Refuse before any work: output == input, or an existing output without --force."""
    src, dst = Path(checkpoint), Path(output)
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise FoldError(f"output {dst} is the checkpoint itself; choose another output path.")
    if dst.exists() and not force:
        raise CheckpointError(f"output {dst} already exists; pass --force to overwrite it.")


def read_structure(path: str) -> Structure:
    try:
        return Structure.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FoldError(f"structure file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FoldError(f"cannot read structure file {path}: {exc}.") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FoldError(f"{path} is not a glorac structure file ({exc.error_count()} problem(s); first at "
                        f"`{where}`: {first['msg']}). Use the JSON that `glorac search` writes.") from None


def fold_checkpoint(checkpoint: str, output: str, *, choice: Optional[str] = None, force: bool = False,
                    verify: bool = True) -> FoldResult:
    from .sharded import fold_sharded, sharded_source

    if sharded_source(checkpoint) is not None:  # hf:DIR of sharded safetensors: shard by shard
        structure = None if choice is None else read_structure(choice)
        return fold_sharded(checkpoint, output, structure=structure, force=force, verify=verify,
                            choice_name=choice)
    supernet = load(checkpoint)
    structure = None
    if choice is not None:
        structure = read_structure(choice)
        try:
            supernet.set_choice(structure)
        except GloraError as exc:
            raise FoldError(f"{choice}: {exc}") from None
    model, report = fold_with_report(supernet, structure, inplace=True, measure=verify)
    if verify and not report.ok:
        raise FoldError(report.failure())
    chosen = structure or supernet.choice()
    sidecar_data = {
        "glorac_fold": 1,
        "model_ref": supernet.model_ref.model_dump(mode="json"),
        "structure": chosen.model_dump(mode="json"),
        "spec_sha256": hashlib.sha256(supernet.spec.model_dump_json().encode()).hexdigest(),
        "added_biases": [f"{lf.layer}.bias" for lf in report.layers if _bias_added(supernet, lf.layer)],
        "report": report.model_dump(mode="json"),
    }
    out = Path(output)
    if supernet.model_ref.source == "hf":
        if sidecar_data["added_biases"]:
            raise FoldError(
                f"`bias add` created biases in {len(sidecar_data['added_biases'])} bias-free layer(s) (e.g. "
                f"{sidecar_data['added_biases'][0]}), but a Hugging Face config cannot declare per-layer "
                "biases, so from_pretrained would silently drop them. Use `bias preserve` for Hugging Face "
                "models. Nothing was written.")
        sidecar = _write_hf_dir(model, out, sidecar_data, force)
    else:
        sidecar = out.with_name(out.name.rsplit(".", 1)[0] + ".glorac.json")
        if sidecar.exists() and not force:
            raise CheckpointError(f"{sidecar} already exists; pass --force to overwrite it.")

        def write_both(tmp: Path) -> None:
            # The weights are complete on disk before the sidecar is replaced, and the
            # weights are renamed into place only after the sidecar is: a failure in either
            # write leaves both old files as they were.
            save_file(_plain_state(model), str(tmp), metadata={"format": "pt"})
            atomic_write(sidecar, lambda t: t.write_text(json.dumps(sidecar_data, indent=2)), force=True)

        atomic_write(out, write_both, force=force)
    return FoldResult(out, sidecar, report, supernet.model_ref.name)


def _bias_added(supernet, layer: str) -> bool:
    return not supernet.plan.layer(layer).site.has_bias and supernet.base_model.get_submodule(layer).bias is not None


def _plain_state(model) -> dict[str, torch.Tensor]:
    """The state dict, contiguous, with aliased tensors copied (safetensors refuses shared storage)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, t in model.state_dict().items():
        t = t.detach().contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        out[key] = t.clone() if ident in seen else t
        seen.add(ident)
    return out


def _write_hf_dir(model, out: Path, sidecar_data: dict, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output {out} exists and is not a directory; Hugging Face models are "
                              "written as a directory that from_pretrained loads.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "glorac_fold.json").write_text(json.dumps(sidecar_data, indent=2))
        if out.exists():  # --force: move the old directory aside only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"writing {out} failed ({exc}); nothing was written.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "glorac_fold.json"
