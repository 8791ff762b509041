"""The fold core: adapter tensors plus base tensors → plain base tensors, on state dicts.

Everything that folds goes through here: the whole-model fold (:mod:`.model`), the
shard-by-shard fold of Hugging Face directories (:mod:`.shards`) and the search's
candidate evaluator (:class:`glorac.scoring.FoldedEvaluator`). Like torch's
``fuse_conv_bn_weights`` under ``fuse_conv_bn_eval``, the math works on tensors only;
the callers decide where the tensors come from (a model, a shard, a scratch copy) and
where they go.

Per layer: ``W' = W0 + W0⊙A + B`` and ``b' = b0 + b0⊙D + E + W0·C``, accumulated in
float64 from the original W0 and cast back to the base dtype (:meth:`GloraAdapter.fold`);
non-finite results are refused naming the layer; optionally the folded layer is compared
with the adapted layer on a random probe input against :data:`TOLERANCE`.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from ..errors import FoldError
from ..ir import LayerChoice, Structure
from ..kinds import choice_param_count
from ..op import GloraAdapter
from ..planning import LayerPlan, Plan

#: Bound on max|Δ| / max|y|, per layer and end to end. Two fp32 computations of one ViT
#: output in a different order already differ by ~1e-5, hence 1e-4; half precision
#: rounds each folded weight to 8 (bf16) or 11 (fp16) significant bits.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

State = Mapping[str, Tensor]


class LayerFold(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: str
    structure: str
    params: int
    max_abs_delta: float
    rel_delta: float = float("nan")  # max|Δ| / max|y| of this layer's probe output


class FoldReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: tuple[LayerFold, ...]
    dtype: str
    tolerance: float
    max_abs_error: Optional[float] = None  # end to end, on the probe batch
    rel_error: Optional[float] = None
    worst_layer: Optional[str] = None
    note: Optional[str] = None

    @classmethod
    def of(cls, layers: Iterable[LayerFold], dtype: torch.dtype, **fields) -> "FoldReport":
        """A report over ``layers`` of a base in ``dtype``, with that dtype's tolerance."""
        layers = tuple(layers)
        report = cls(layers=layers, dtype=str(dtype).replace("torch.", ""),
                     tolerance=TOLERANCE.get(dtype, 1e-4), **fields)
        worst = report.worst
        return report.model_copy(update={"worst_layer": worst.layer if worst else None})

    @property
    def worst(self) -> Optional[LayerFold]:
        measured = [lf for lf in self.layers if lf.rel_delta == lf.rel_delta]  # skip NaN
        return max(measured, key=lambda lf: lf.rel_delta) if measured else None

    @property
    def ok(self) -> bool:
        """Within tolerance end to end (when measured) and at every layer's probe."""
        worst = self.worst
        layers_ok = worst is None or worst.rel_delta <= self.tolerance
        return layers_ok and (self.rel_error is None or self.rel_error <= self.tolerance)

    def failure(self) -> Optional[str]:
        """Why verification failed, in one sentence (None when it passed)."""
        if self.ok:
            return None
        worst = self.worst
        where = f"worst layer: {worst.layer} (layer error {worst.rel_delta:.3g})" if worst else ""
        if self.rel_error is not None and self.rel_error > self.tolerance:
            what = f"the folded model differs from the adapted one by {self.rel_error:.3g} (max|Δ|/max|y|)"
        else:
            what = "a folded layer differs from its adapted layer"
        return f"{what}, above the {self.dtype} tolerance {self.tolerance:g}; {where}. Nothing was written."


def check_finite_adapters(adapters: Mapping[str, GloraAdapter]) -> None:
    """Refuse before writing anything: a non-finite adapter gives non-finite weights."""
    for name, adapter in adapters.items():
        for pname, p in adapter.named_parameters():
            if not torch.isfinite(p).all():
                raise FoldError(f"adapter tensor {pname} of layer `{name}` holds inf/NaN (a diverged training "
                                "run?); folding would give non-finite weights. Nothing was written.")


def fold_layer(name: str, adapter: GloraAdapter, choice: LayerChoice, w0: Tensor,
               b0: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """(W', b') of one layer under ``choice``, refusing non-finite numbers."""
    w, b = adapter.fold(w0, b0, choice)
    if not torch.isfinite(w).all() or (b is not None and not torch.isfinite(b).all()):
        raise FoldError(f"folding layer `{name}` ({choice}) gives non-finite weights; the adapter "
                        "tensors hold inf/NaN (a diverged training run?). Nothing was written.")
    return w, b


def probe_layer(adapter: GloraAdapter, choice: LayerChoice, w0: Tensor, b0: Optional[Tensor], w: Tensor,
                b: Optional[Tensor], generator: torch.Generator) -> tuple[float, float]:
    """(max |folded(x) − adapted(x)|, that over max |adapted(x)|) on a random input."""
    dtype, device = w0.dtype, w0.device
    if adapter.layer == "linear":
        x = torch.randn(4, w.shape[1], generator=generator).to(device, dtype)
        folded = F.linear(x, w, b)
    else:
        size = max(8, *w.shape[2:])
        x = torch.randn(1, w.shape[1] * adapter.conv["groups"], size, size, generator=generator).to(device, dtype)
        folded = F.conv2d(x, w, b, **adapter.conv)
    with torch.no_grad():
        reference = adapter(x, w0, b0, choice).float()
    delta = (folded.float() - reference).abs().max().item()
    return delta, delta / max(reference.abs().max().item(), 1e-12)


def fold_tensors(state: State, layers: Iterable[LayerPlan], adapters: Mapping[str, GloraAdapter],
                 structure: Structure, *, probe: bool = True
                 ) -> Iterator[tuple[LayerPlan, dict[str, Tensor], LayerFold]]:
    """Fold ``layers`` one at a time: (layer, its new ``weight``/``bias`` entries, report row).

    ``state`` maps base-model keys to the *original* tensors (any Mapping: a state dict,
    or a lazy view of files); it is never modified. A generator, so that a caller holds
    one layer's results at a time. ``probe`` compares each folded layer with the adapted
    one (the rows' deltas are NaN otherwise).
    """
    for lp in layers:
        name, choice, adapter = lp.qualname, structure.layers[lp.qualname], adapters[lp.qualname]
        w0 = state[f"{name}.weight"]
        w0 = w0.t() if lp.site.transposed else w0  # Conv1D stores (in, out): fold its Linear view
        b0 = state[f"{name}.bias"] if lp.site.has_bias else None
        w, b = fold_layer(name, adapter, choice, w0, b0)
        delta = rel = float("nan")
        if probe:
            # Seeded by the layer's name: a layer gets the same probe whichever path folds
            # it and whatever was folded before it (a whole model, one file of shards).
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            delta, rel = probe_layer(adapter, choice, w0, b0, w, b, generator)
        w = w.t().contiguous() if lp.site.transposed else w
        entries = {f"{name}.weight": w} if b is None else {f"{name}.weight": w, f"{name}.bias": b}
        row = LayerFold(layer=name, structure=str(choice), params=choice_param_count(choice, adapter.geom),
                        max_abs_delta=delta, rel_delta=rel)
        yield lp, entries, row


def fold_state(state: State, plan: Plan, adapters: Mapping[str, GloraAdapter], structure: Structure,
               *, probe: bool = True) -> tuple[dict[str, Tensor], FoldReport]:
    """The base state dict with ``structure`` folded in, and the fold report.

    Every tensor that is not adapted is passed through unchanged (the same object);
    adapted weights and biases are new tensors, and `bias add` layers gain a
    ``<layer>.bias`` entry. The merge on a state dict, for users who keep weights as dicts.
    """
    check_finite_adapters(adapters)
    out = dict(state)
    rows = []
    for _, entries, row in fold_tensors(state, plan.layers, adapters, structure, probe=probe):
        out.update(entries)
        rows.append(row)
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    return out, FoldReport.of(rows, dtype)
