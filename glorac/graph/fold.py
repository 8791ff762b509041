"""Fold the chosen GLoRA structure into plain base weights (``glorac.fold``).

After folding, the model *is* the base architecture with new numbers: every adapted
layer gets ``W' = W0 + W0⊙A + B`` and ``b' = b0 + b0⊙D + E + W0·C`` (accumulated in
float64 from the original W0, cast back to the base dtype), and no GLoRA op remains.
Folding is one-way: nothing is ever divided back out.

Verification measures, per layer, max |Δ| between the folded layer and the supernet
layer on a probe input, and end to end ``max|Δ| / max|y|`` of the whole model on a probe
batch; :data:`TOLERANCE` gives the bound per base dtype.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..errors import FoldError, GloraError
from ..ir import LayerChoice, Structure
from ..kinds import choice_param_count

#: End-to-end bound on max|Δ| / max|y|. Two fp32 computations of one ViT output in a
#: different order already differ by ~1e-5, hence 1e-4; half precision rounds each
#: folded weight to 8 (bf16) or 11 (fp16) significant bits.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


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
        return (f"{what}, above the {self.dtype} tolerance {self.tolerance:g}; {where}. Nothing was written.")


def resolve_structure(supernet, choice: Union[Structure, dict, None] = None) -> Structure:
    """The structure to fold: given, chosen earlier (search), or implied by one-choice spaces."""
    if choice is not None:
        structure = choice if isinstance(choice, Structure) else Structure(layers=dict(choice))
        supernet.set_choice(structure)  # validates names and kinds against each layer's space
        return structure
    if supernet.structure is not None:
        return supernet.structure
    spaces = supernet.choices()
    open_layers = [n for n, s in spaces.items() if s.size() > 1]
    if open_layers:
        raise FoldError(
            f"the supernet still has a choice to make in {len(open_layers)} layer(s) (e.g. "
            f"{open_layers[0]}: {spaces[open_layers[0]]}); run `glorac search` to pick a structure, "
            "or pass one with --choice FILE (a JSON structure).")
    return Structure(layers={n: LayerChoice(**{t: ks[0] for t, ks in s.items()}) for n, s in spaces.items()})


def folded_layer(supernet, name: str, choice: LayerChoice):
    """(W', b') of one layer, refusing non-finite numbers."""
    owner = supernet.base_model.get_submodule(name)
    w, b = supernet.adapters[name].fold(owner.weight, owner.bias, choice)
    if not torch.isfinite(w).all() or (b is not None and not torch.isfinite(b).all()):
        raise FoldError(f"folding layer `{name}` ({choice}) gives non-finite weights; the adapter "
                        "tensors hold inf/NaN (a diverged training run?). Nothing was written.")
    return w, b


def check_finite_adapters(supernet) -> None:
    """Refuse before writing anything: a non-finite adapter gives non-finite weights."""
    for name, adapter in supernet.adapters.items():
        for pname, p in adapter.named_parameters():
            if not torch.isfinite(p).all():
                raise FoldError(f"adapter tensor {pname} of layer `{name}` holds inf/NaN (a diverged training "
                                "run?); folding would give non-finite weights. Nothing was written.")


def _layer_probe(owner: nn.Module, adapter, w: torch.Tensor, b, generator) -> tuple[float, float]:
    """(max |folded(x) − supernet_layer(x)|, that over max |supernet_layer(x)|) on a random input."""
    dtype, device = owner.weight.dtype, owner.weight.device
    if adapter.layer == "linear":
        x = torch.randn(4, w.shape[1], generator=generator).to(device, dtype)
        folded = F.linear(x, w, b)
    else:
        size = max(8, *w.shape[2:])
        x = torch.randn(1, w.shape[1] * adapter.conv["groups"], size, size, generator=generator).to(device, dtype)
        folded = F.conv2d(x, w, b, **adapter.conv)
    with torch.no_grad():
        reference = adapter(x, owner.weight, owner.bias).float()
    delta = (folded.float() - reference).abs().max().item()
    return delta, delta / max(reference.abs().max().item(), 1e-12)


def fold(supernet, choice: Union[Structure, dict, None] = None, *, inplace: bool = False,
         probe: Optional[tuple] = None, verify: bool = False) -> nn.Module:
    """A model of the original module classes only, with the structure folded in.

    ``inplace=True`` writes into the supernet's base model (no second copy of the
    weights; the supernet is unusable afterwards). With ``verify=True`` a
    :class:`FoldReport` is attached as ``model.glorac_fold_report`` and a model whose
    end-to-end error exceeds the tolerance raises :class:`FoldError`.
    """
    model, report = fold_with_report(supernet, choice, inplace=inplace, probe=probe, measure=verify)
    if verify and not report.ok:
        raise FoldError(report.failure())
    model.glorac_fold_report = report
    return model


def fold_with_report(supernet, choice=None, *, inplace: bool = False, probe: Optional[tuple] = None,
                     measure: bool = True) -> tuple[nn.Module, FoldReport]:
    structure = resolve_structure(supernet, choice)
    supernet.set_choice(structure)
    check_finite_adapters(supernet)
    probe = default_probe(supernet.base_model) if probe is None and measure else probe
    adapted_out = _run(supernet, probe) if measure and probe is not None else None
    model = supernet.base_model if inplace else copy.deepcopy(supernet.base_model)
    generator = torch.Generator().manual_seed(0)
    layers = []
    for name, adapter in supernet.adapters.items():
        layer_choice = structure.layers[name]
        w, b = folded_layer(supernet, name, layer_choice)
        source = supernet.base_model.get_submodule(name)
        delta, rel = _layer_probe(source, adapter, w, b, generator) if measure else (float("nan"),) * 2
        write_folded_layer(model.get_submodule(name), w, b)
        layers.append(LayerFold(layer=name, structure=str(layer_choice), rel_delta=rel,
                                params=choice_param_count(layer_choice, adapter.geom), max_abs_delta=delta))
    model.eval()
    dtype = next(model.parameters()).dtype
    report = FoldReport(layers=tuple(layers), dtype=str(dtype).replace("torch.", ""),
                        tolerance=TOLERANCE.get(dtype, 1e-4))
    if adapted_out is not None:
        folded_out = _run(model, probe)
        abs_err = (folded_out - adapted_out).abs().max().item()
        rel = abs_err / max(adapted_out.abs().max().item(), 1e-12)
        worst = report.worst
        report = report.model_copy(update={"max_abs_error": abs_err, "rel_error": rel,
                                           "worst_layer": worst.layer if worst else None})
    elif measure:
        report = report.model_copy(update={"note": "no probe input known for this model: end-to-end "
                                                   "error not measured (per-layer deltas are)"})
    return model, report


def write_folded_layer(owner: nn.Module, w: torch.Tensor, b: Optional[torch.Tensor]) -> None:
    with torch.no_grad():
        owner.weight.copy_(w)
        if b is None:
            return
        if owner.bias is None:  # `bias add`: the spec opted in to a new bias
            owner.bias = nn.Parameter(b.clone(), requires_grad=False)
        else:
            owner.bias.copy_(b)


def output_tensor(out: Any) -> torch.Tensor:
    """The main tensor of a model output (timm: the tensor; Hugging Face: logits/hidden state)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise GloraError(f"cannot find the output tensor in a {type(out).__name__}")


def _run(model: nn.Module, probe: tuple) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(model(*probe)).double()


def default_probe(model: nn.Module, batch: int = 2) -> Optional[tuple]:
    """A deterministic input for a timm image model or a Hugging Face text model."""
    g = torch.Generator().manual_seed(0)
    param = next(model.parameters())
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        size = tuple(cfg["input_size"])
        # A timm model built with img_size=... differs from its config's default size.
        own = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if own is not None:
            size = (size[0], *own)
        return (torch.randn(batch, *size, generator=g).to(param.device, param.dtype),)
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab:
        ids = torch.randint(1, vocab, (batch, 16), generator=g).to(param.device)
        return (ids,)
    return None

