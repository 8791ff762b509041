"""``glorac.to_peft``: a glorac structure as a PEFT LoRA adapter directory (docs/peft.md).

What maps, per adapted layer: A, C, D none; B = lora(r) (→ a LoRA layer of rank r) or none
(the layer is left out of ``target_modules``); E = none or vector (→ ``lora_bias``). The
parametrization's constant is folded into lora_B and every layer gets PEFT scaling 1
(``lora_alpha`` = r, and ``alpha_pattern`` = ``rank_pattern`` for the other ranks), so
``PeftModel.from_pretrained(base, DIR)`` computes what the supernet computes. The spec's
``train`` modules become ``modules_to_save``. Anything else is refused, naming the layer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from torch import Tensor

from .ir import NONE, Kind, LayerChoice, Structure
from .kinds import kind_scale
from .folding.files import write_directory
from .peft_format import (
    ADAPTER_WEIGHTS, KEY_PREFIX, PeftMappingError, glorac_weight, lora_layer_problem,
    peft_factors, require_peft,
)
from .planning import LayerPlan
from .supernet import Supernet

#: The rank of a layer that PEFT must target only to carry its lora_bias (glorac: B none,
#: E vector): its factors are zero, so the rank does not matter.
_BIAS_ONLY_RANK = 1


@dataclass(frozen=True)
class _Layer:
    """One exported LoRA layer: its PEFT tensors (keys relative to the module) and rank."""

    name: str
    rank: int
    transposed: bool
    tensors: dict[str, Tensor]


def to_peft(supernet: Supernet, out_dir: Union[str, Path], *, structure: Optional[Structure] = None,
            force: bool = False) -> Path:
    """Write ``structure`` (default: the supernet's selected one, or the only one its spaces
    allow) as a PEFT LoRA adapter directory ``out_dir``; PeftMappingError when PEFT cannot
    express it exactly. An existing ``out_dir`` is replaced only with ``force``."""
    peft = require_peft()
    chosen = supernet.plan.resolve_structure(structure, supernet.structure)
    layers = [lay for lp in supernet.plan.layers
              if (lay := _export_layer(supernet, lp, chosen.layers[lp.qualname])) is not None]
    if not layers:
        raise PeftMappingError("the structure adapts no layer (B and E are none everywhere), so there is no LoRA "
                               "adapter to write; pick a structure with B = lora(r) somewhere.")
    layers = _with_common_bias(supernet, layers)
    trained = _modules_to_save(supernet)
    config = peft.LoraConfig(**_config_fields(layers, trained, supernet))
    tensors = {f"{KEY_PREFIX}{lay.name}.{key}": t for lay in layers for key, t in lay.tensors.items()}
    tensors.update({f"{KEY_PREFIX}{key}": t for key, t in supernet.trained_state_dict().items()})
    return write_directory(Path(out_dir), lambda staging: _fill(staging, config, tensors), force=force)


def _fill(staging: Path, config, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    config.save_pretrained(str(staging))
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(staging / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})


def _refusal(lp: LayerPlan, tensor: str, kind: Kind, need: str) -> PeftMappingError:
    return PeftMappingError(
        f"layer `{lp.qualname}` has {tensor} = {kind} in the structure, which PEFT LoRA cannot express: {need}. "
        "PEFT LoRA maps only A = none, B = lora(r) or none, C = none, D = none, E = none or vector (lora_bias); "
        "search (or write) a structure within that space, or fold the structure with `glorac fold` instead.")


def _check_choice(lp: LayerPlan, choice: LayerChoice) -> None:
    """Refuse the first tensor of ``choice`` that PEFT LoRA has no place for."""
    needs = {"A": "LoRA has no elementwise scaling of W0 (that is GLoRA's A)",
             "C": "LoRA has no bias term W0·C",
             "D": "LoRA has no scaling of the base bias"}
    for tensor in ("A", "B", "C", "D", "E"):
        kind = choice.tensor(tensor)
        if tensor in needs and kind != NONE:
            raise _refusal(lp, tensor, kind, needs[tensor])
    if choice.B.kind not in ("lora", "none"):
        raise _refusal(lp, "B", choice.B, "LoRA's weight update is a low-rank product, not a broadcast vector "
                                          "or scalar")
    if choice.E.kind == "scalar":
        raise _refusal(lp, "E", choice.E, "lora_bias is one value per output, not one shared scalar")


def _export_layer(supernet: Supernet, lp: LayerPlan, choice: LayerChoice) -> Optional[_Layer]:
    """The PEFT tensors of one layer (None when it is left out: B and E none)."""
    _check_choice(lp, choice)
    if choice.B == NONE and choice.E == NONE:
        return None
    if lp.site.functional:
        raise PeftMappingError(f"layer `{lp.qualname}` is a functional F.linear call (adapted through the fx "
                               "graph), not a module; PEFT targets modules only, so it cannot carry this adapter. "
                               "Exclude it from the spec's adapt rules to export the rest.")
    module = supernet.base_model.get_submodule(lp.qualname)
    problem = lora_layer_problem(module)
    if problem is not None:
        raise PeftMappingError(f"layer `{lp.qualname}` cannot be a PEFT LoRA layer: {problem}. Exclude it from "
                               "the spec's adapt rules (or give it B = none, E = none) to export the rest.")
    adapter = supernet.adapters[lp.qualname]
    weight = glorac_weight(module).detach()
    rank = choice.B.rank or _BIAS_ONLY_RANK
    u, v = _b_factors(adapter, choice.B, rank, weight)
    lora_a, lora_b = peft_factors(u, v, weight)
    tensors = {"lora_A.weight": lora_a, "lora_B.weight": lora_b}
    if choice.E != NONE:
        tensors["lora_B.bias"] = adapter.E.detach().float() * kind_scale("E", choice.E, adapter.geom,
                                                                         adapter.parametrization)
    return _Layer(lp.qualname, rank, lp.site.transposed, tensors)


def _with_common_bias(supernet: Supernet, layers: list[_Layer]) -> list[_Layer]:
    """``lora_bias`` is one switch for the whole adapter: once a layer has E, every exported
    layer gets a lora_B bias (zero where E is none), and each must have a bias of its own,
    because PEFT cannot merge a lora_bias into a bias-free layer (merge_and_unload raises)."""
    if not any("lora_B.bias" in lay.tensors for lay in layers):
        return layers
    with_e = next(lay.name for lay in layers if "lora_B.bias" in lay.tensors)
    for lay in layers:
        if supernet.base_model.get_submodule(lay.name).bias is None:
            raise PeftMappingError(
                f"layer `{with_e}` has E = vector, which needs PEFT's lora_bias, and lora_bias then puts a bias on "
                f"every LoRA layer, but layer `{lay.name}` has no bias of its own: PEFT could load the adapter but "
                "not merge it (merge_and_unload raises). Use E = none everywhere, or exclude the bias-free layers, "
                "or fold with `glorac fold` instead.")
    return [lay if "lora_B.bias" in lay.tensors else _Layer(lay.name, lay.rank, lay.transposed, {
        **lay.tensors, "lora_B.bias": lay.tensors["lora_B.weight"].new_zeros(lay.tensors["lora_B.weight"].shape[0])})
        for lay in layers]


def _b_factors(adapter, kind: Kind, rank: int, weight: Tensor) -> tuple[Tensor, Tensor]:
    """(U, V) of B with the parametrization's constant in U; zeros for B = none."""
    fan_in = adapter.geom.fan_in
    if kind == NONE:
        return weight.new_zeros(adapter.geom.out, rank).float(), weight.new_zeros(rank, fan_in).float()
    scale = kind_scale("B", kind, adapter.geom, adapter.parametrization)
    u = adapter.B_out.detach()[:, :rank].float() * scale
    return u, adapter.B_in.detach()[:rank, :].float()


def _exact(name: str) -> str:
    """A PEFT pattern key that matches exactly ``name``: PEFT tries ``(.*\\.)?(KEY)$`` from the
    start, so a bare name would also match every module whose name ends in ``.name``."""
    return f"^{re.escape(name)}$"


def _config_fields(layers: list[_Layer], trained: list[str], supernet: Supernet) -> dict:
    # Scaling alpha/r = 1 everywhere: glorac's factors already hold the whole update.
    default = Counter(lay.rank for lay in layers).most_common(1)[0][0]
    others = {_exact(lay.name): lay.rank for lay in layers if lay.rank != default}
    ref = supernet.model_ref
    return {
        "r": default, "lora_alpha": default, "rank_pattern": others, "alpha_pattern": dict(others),
        # A regex is matched with re.fullmatch: exactly these modules (a list would match suffixes).
        "target_modules": "|".join(re.escape(lay.name) for lay in layers),
        "lora_bias": any("lora_B.bias" in lay.tensors for lay in layers),
        "fan_in_fan_out": all(lay.transposed for lay in layers),
        "lora_dropout": 0.0, "bias": "none", "inference_mode": True,
        "modules_to_save": trained or None,
        "task_type": "CAUSAL_LM" if ref is not None and ref.task == "causal-lm" else None,
        "base_model_name_or_path": ref.name[3:] if ref is not None and ref.source == "hf" else None,
    }


def _modules_to_save(supernet: Supernet) -> list[str]:
    """The spec's `train` modules, which PEFT finds by name suffix (``key.endswith(name)``):
    refused when such a suffix would also pick another module."""
    names = [n for n, _ in supernet.base_model.named_modules() if n]
    for module in supernet.plan.trained:
        others = [n for n in names if n.endswith(module) and n != module]
        if others:
            raise PeftMappingError(
                f"the trained module `{module}` cannot be a PEFT modules_to_save entry: PEFT matches those by "
                f"name suffix, and `{others[0]}` ends in it too, so PEFT would replace that module as well. "
                "Rename the module, or fold the checkpoint with `glorac fold` instead.")
    return list(supernet.plan.trained)
