"""Fold a supernet in memory (``glorac.fold``): a model of the original module classes only.

The numbers come from :mod:`.core`; this module picks the structure, writes the folded
tensors into a copy of the base model (or the base model itself) and measures the
whole model end to end on a probe batch: ``max|Δ| / max|y|`` against the dtype's
:data:`~glorac.folding.core.TOLERANCE`.
"""

from __future__ import annotations

import copy
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import FoldError
from ..ir import Structure
from ..outputs import default_probe, output_tensor
from ..planning import Plan
from .core import FoldReport, check_finite_adapters, fold_tensors


def resolve_structure(supernet, structure: Union[Structure, Mapping, None] = None) -> Structure:
    """The structure to fold: given (validated; nothing is activated), chosen earlier by
    search, or implied by one-choice spaces."""
    if structure is not None and not isinstance(structure, Structure):
        structure = Structure(layers=dict(structure))
    return supernet.plan.resolve_structure(structure, supernet.structure)


def write_layers(model: nn.Module, plan: Plan, entries: Mapping[str, Tensor], layers) -> None:
    """Write folded ``entries`` (``<layer>.weight``/``.bias``) into ``model``'s modules.

    A layer whose fold has no bias loses one it holds (one an earlier fold of another
    structure created: the search's scratch model); a `bias add` layer gains one.
    """
    with torch.no_grad():
        for name in layers:
            owner = model.get_submodule(name)
            owner.weight.copy_(entries[f"{name}.weight"])
            bias = entries.get(f"{name}.bias")
            if bias is None:
                if owner.bias is not None and not plan.layer(name).site.has_bias:
                    owner.bias = None
            elif owner.bias is None:
                owner.bias = nn.Parameter(bias.clone(), requires_grad=False)
            else:
                owner.bias.copy_(bias)


def fold(supernet, structure: Union[Structure, Mapping, None] = None, *, inplace: bool = False,
         probe: Optional[tuple] = None, verify: bool = False) -> nn.Module:
    """A model of the original module classes only, with the structure folded in.

    ``inplace=True`` writes into the supernet's base model (no second copy of the
    weights; the supernet is unusable afterwards). With ``verify=True`` a
    :class:`FoldReport` is attached as ``model.glorac_fold_report`` and a model whose
    end-to-end error exceeds the tolerance raises :class:`FoldError`.
    """
    model, report = fold_with_report(supernet, structure, inplace=inplace, probe=probe, measure=verify)
    if verify and not report.ok:
        raise FoldError(report.failure())
    model.glorac_fold_report = report
    return model


def fold_with_report(supernet, structure: Union[Structure, Mapping, None] = None, *, inplace: bool = False,
                     probe: Optional[tuple] = None, measure: bool = True) -> tuple[nn.Module, FoldReport]:
    """(folded model, report); ``measure`` runs the per-layer and end-to-end probes."""
    structure = resolve_structure(supernet, structure)
    check_finite_adapters(supernet.adapters)
    base = supernet.base_model
    guessed = probe is None
    probe = default_probe(base) if guessed and measure else probe
    adapted_out = None
    if measure and probe is not None:
        # A probe the caller gave must run; only a guessed one may not suit the model.
        adapted_out = adapted_probe(supernet, structure, probe, guessed=guessed)
    # With inplace, each layer's W0 and b0 are read (and probed) before that layer is
    # written, and no two adapted layers share a weight, so the live state is safe to read.
    state = base.state_dict()
    model = base if inplace else copy.deepcopy(base)
    rows = []
    for lp, entries, row in fold_tensors(state, supernet.plan.layers, supernet.adapters, structure, probe=measure):
        write_layers(model, supernet.plan, entries, [lp.qualname])
        rows.append(row)
    model.eval()
    name_labels(model, supernet.history.class_names)
    report = FoldReport.of(rows, next(model.parameters()).dtype)
    if adapted_out is not None:
        abs_err = (run_probe(model, probe) - adapted_out).abs().max().item()
        report = report.model_copy(update={"max_abs_error": abs_err,
                                           "rel_error": abs_err / max(adapted_out.abs().max().item(), 1e-12)})
    elif measure:
        report = report.model_copy(update={"note": "no probe input known for this model: end-to-end "
                                                   "error not measured (per-layer deltas are)"})
    return model, report


def name_labels(model: nn.Module, names: tuple[str, ...]) -> bool:
    """Give a Hugging Face classifier's config the data's class names (``id2label`` /
    ``label2id``) when it has that many labels; True when it did. Otherwise transformers
    answers in LABEL_0..K-1 (and a pipeline with it)."""
    config = getattr(model, "config", None)
    if not names or getattr(config, "num_labels", None) != len(names):
        return False
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    return True


def adapted_probe(supernet, structure: Structure, probe: tuple, *, guessed: bool = True) -> Optional[torch.Tensor]:
    """The supernet's output under ``structure`` on ``probe``; None when a ``guessed``
    probe does not suit the model (an encoder-decoder needs more than input ids)."""
    try:
        with supernet.activated(structure):
            return run_probe(supernet, probe)
    except (TypeError, ValueError):
        if not guessed:
            raise
        return None


def run_probe(model: nn.Module, probe: tuple) -> torch.Tensor:
    """The model's main output on ``probe``, in float64."""
    with torch.no_grad():
        return output_tensor(model(*probe)).double()
