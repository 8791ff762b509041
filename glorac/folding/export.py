"""``glorac fold CHECKPOINT -o OUT``: fold a checkpoint into files the stock model loads.

* timm / factory models: one ``.safetensors`` state dict with exactly the base model's
  keys, shapes and dtypes (plus new ``*.bias`` entries where the spec said ``bias add``),
  and a sidecar ``OUT.glorac.json``;
* Hugging Face models: a directory ``from_pretrained`` loads, with ``glorac_fold.json``
  inside. A local directory loaded as is (one file or shards) is folded file by file
  (:mod:`.shards`), keeping its layout, its LM head and its tokenizer; any other (a new
  head, a ``--weights`` file, a hub id) is folded in memory and written by
  ``save_pretrained``, with the source directory's other files copied.

Nothing is written when anything fails; outputs appear atomically.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..checkpoint import Checkpoint, load_adapters, read_checkpoint, supernet_from
from ..errors import CheckpointError, FoldError, GloraError
from ..ir import Structure
from ..safeio import check_output
from ..structure_files import read_structure
from .core import FoldReport, check_finite_adapters
from .files import FoldSidecar, other_weight_files, write_hf_directory, write_safetensors
from ..models import resolve_model
from .model import adapted_probe, default_probe, fold_with_report, run_probe
from .shards import INDEX, SourceFiles, base_keys, check_base, check_layers, extra_note, fold_files, source_dir, \
    trained_by_file_key


#: Below this many bytes of weights a file-by-file fold is also checked end to end: the
#: supernet and the written directory are both built and compared on a probe batch
#: (the whole-model fold's check). Above it the fold never holds the model at all.
END_TO_END_BYTES = 1 << 30


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
    check_output(dst, force=True, directory=dst.is_dir())


def fold_checkpoint(checkpoint: str, output: str, *, structure: Optional[str] = None, force: bool = False,
                    verify: bool = True, allow_added_biases: bool = False) -> FoldResult:
    """Fold the checkpoint's structure (or the one in the ``structure`` file) into ``output``.

    A structure that creates biases in bias-free layers (``bias add``) is refused for
    Hugging Face models, because ``from_pretrained`` drops biases its config does not
    declare; ``allow_added_biases=True`` writes them anyway, for other loaders.
    """
    ckpt = read_checkpoint(checkpoint)
    given = read_structure(structure) if structure else None
    src = source_dir(ckpt.model_ref())
    if src is None:
        # In memory: the base model is rebuilt (and its digest checked) first.
        supernet = supernet_from(ckpt)
        chosen = _resolve(ckpt, given, structure)
        _refuse_hf_added_biases(ckpt, chosen, allow_added_biases)
        return _fold_in_memory(ckpt, supernet, Path(output), chosen, force=force, verify=verify)
    chosen = _resolve(ckpt, given, structure)
    _refuse_hf_added_biases(ckpt, chosen, allow_added_biases)
    out = Path(output)
    if out.exists() and out.is_dir() and os.path.samefile(out, src):
        raise FoldError(f"output {out} is the base model directory itself; choose another output path.")
    return _fold_files(ckpt, src, out, chosen, force=force, verify=verify)


def _resolve(ckpt: Checkpoint, given: Optional[Structure], file: Optional[str]) -> Structure:
    try:
        return ckpt.meta.plan.resolve_structure(given, ckpt.meta.structure)
    except GloraError as exc:
        if file is None:
            raise
        raise type(exc)(f"{file}: {exc}") from None


def _refuse_hf_added_biases(ckpt: Checkpoint, structure: Structure, allowed: bool) -> None:
    added = ckpt.meta.plan.added_biases(structure)
    if ckpt.meta.model_ref.source == "hf" and added and not allowed:
        raise FoldError(
            f"`bias add` created biases in {len(added)} bias-free layer(s) (e.g. {added[0]}), but a Hugging "
            "Face config cannot declare per-layer biases, so from_pretrained would silently drop them. Use "
            "`bias preserve` for Hugging Face models. Nothing was written.")


def _end_to_end(ckpt: Checkpoint, structure: Structure, staging: Path, report: FoldReport) -> FoldReport:
    """The report with the whole-model check: the written directory against the supernet."""
    supernet = supernet_from(ckpt)
    probe = default_probe(supernet.base_model)
    want = None if probe is None else adapted_probe(supernet, structure, probe)
    if want is None:
        return report
    folded, _ = resolve_model(f"hf:{staging}", task=ckpt.meta.model_ref.task)
    abs_err = (run_probe(folded, probe) - want).abs().max().item()
    report = report.model_copy(update={"max_abs_error": abs_err,
                                       "rel_error": abs_err / max(want.abs().max().item(), 1e-12)})
    if not report.ok:
        raise FoldError(report.failure())
    return report


def _verify_note(verify: bool, report: FoldReport, small: bool, added: bool) -> str:
    if not verify:
        return "file-by-file fold, --no-verify: layer probes skipped"
    if report.rel_error is not None:
        return "file-by-file fold; end to end measured on the written directory"
    why = ("the model is too large to hold twice" if not small else
           "from_pretrained drops the added biases" if added else "no probe input is known for this model")
    return (f"file-by-file fold: {why}, so the end-to-end error was not measured; each layer's probe delta "
            "was checked against the tolerance")


def _sidecar(ckpt: Checkpoint, structure: Structure, added: list[str], report: FoldReport) -> FoldSidecar:
    meta = ckpt.meta
    return FoldSidecar(model_ref=meta.model_ref, structure=structure, added_biases=tuple(added), report=report,
                       spec_sha256=hashlib.sha256(meta.spec.model_dump_json().encode()).hexdigest())


def _fold_in_memory(ckpt: Checkpoint, supernet, out: Path, structure: Structure, *, force: bool,
                    verify: bool) -> FoldResult:
    model, report = fold_with_report(supernet, structure, inplace=True, measure=verify)
    if verify and not report.ok:
        raise FoldError(report.failure())
    sidecar = _sidecar(ckpt, structure, ckpt.meta.plan.added_biases(structure), report)
    ref = ckpt.meta.model_ref
    if ref.source == "hf":
        local = Path(ref.name[len("hf:"):].strip()).expanduser()

        side = write_hf_directory(out, lambda staging: model.save_pretrained(staging, safe_serialization=True),
                                  lambda _: sidecar, force=force, source=local if local.is_dir() else None,
                                  label_names=ckpt.meta.history.class_names)
    else:
        side = write_safetensors(out, model.state_dict(), sidecar, force=force)
    return FoldResult(out, side, report, ref.name)


def _fold_files(ckpt: Checkpoint, src: Path, out: Path, structure: Structure, *, force: bool,
                verify: bool) -> FoldResult:
    if out.exists() and not force:  # before the base weights are streamed
        raise CheckpointError(f"output {out} already exists; pass --force to overwrite it.")
    adapters = load_adapters(ckpt)
    check_finite_adapters(adapters)
    files = SourceFiles(src)
    try:
        keys = base_keys(ckpt.meta.model_ref, files)
        check_layers(ckpt.meta.plan, keys, files)
        trained = trained_by_file_key(ckpt.meta.plan, keys, ckpt)
        base_note = check_base(ckpt, keys, files, verify)

        written: dict = {}

        def fill(staging: Path) -> None:
            written["added"], written["report"] = fold_files(files, staging, ckpt.meta.plan, adapters, structure,
                                                             keys, trained, probe=verify)

        def describe(staging: Path) -> FoldSidecar:
            added, report = written["added"], written["report"]
            small = sum((src / f).stat().st_size for f in files.files) <= END_TO_END_BYTES
            if verify and small and not added:  # from_pretrained drops added biases: nothing to compare
                report = _end_to_end(ckpt, structure, staging, report)
            skipped = other_weight_files(src, set(files.files) | {INDEX})
            notes = [_verify_note(verify, report, small, bool(added)),
                     base_note, extra_note(keys),
                     f"{len(added)} new bias tensor(s) written (bias add, allowed explicitly); from_pretrained "
                     "drops biases the model's config does not declare" if added else "",
                     f"other weight files not copied: {', '.join(skipped[:3])}" if skipped else ""]
            written["report"] = report.model_copy(update={"note": "; ".join(n for n in notes if n) + "."})
            return _sidecar(ckpt, structure, added, written["report"])

        side = write_hf_directory(out, fill, describe, force=force, source=src,
                                  label_names=ckpt.meta.history.class_names)
    finally:
        files.close()
    return FoldResult(out, side, written["report"], ckpt.meta.model_ref.name)
