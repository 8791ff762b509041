"""``glorac.from_peft``: a PEFT LoRA adapter directory as a glorac supernet (docs/peft.md).

Every layer the adapter file holds LoRA factors for becomes an adapted layer with the
one-kind space B = lora(r) (plus E = vector with ``lora_bias``), under the ``paper``
parametrization (every constant 1). PEFT's scaling (``lora_alpha``/r, ``alpha_pattern``,
``rank_pattern``, rsLoRA's alpha/√r) is folded into the out-side factor, so the supernet
computes what ``PeftModel`` computes and ``glorac fold`` deploys it. ``modules_to_save``
become the spec's `train` modules. What plain LoRA-in-glorac cannot express is refused.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .checkpoint import copy_tensors
from .errors import CheckpointError
from .ir import NONE, Kind, LayerChoice, Origin, Rule, Selector, Space, Spec, Structure, TrainRule, TrainSettings
from .kinds import kind_scale
from .models import ModelRef, model_source, resolve_model
from .peft_format import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, KEY_PREFIX, PeftMappingError, glorac_factors, glorac_weight,
    lora_layer_problem, require_peft,
)
from .safeio import load_state_dict_file
from .supernet import Supernet, build_supernet

#: Config fields glorac reads or that do not change what a loaded adapter computes in
#: eval mode (which modules are targeted is read from the weights file itself).
_HANDLED = frozenset({
    "peft_type", "r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "lora_bias", "use_dora",
    "bias", "modules_to_save", "init_lora_weights", "target_modules", "exclude_modules", "layers_to_transform",
    "layers_pattern", "fan_in_fan_out", "task_type", "base_model_name_or_path", "revision", "inference_mode",
    "lora_dropout", "peft_version", "auto_mapping",
})
#: Initialisations that leave the base weights as they are (PiSSA, OLoRA, CorDA, LoftQ, ...
#: subtract the initial update from W0, so their adapters fit only that modified base).
_PLAIN_INITS = (True, False, "gaussian", "orthogonal", "eva")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias)$")
_TASKS = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "classification"}


@dataclass(frozen=True)
class _Lora:
    """One LoRA layer of the adapter file: its factors and PEFT's scaling for it."""

    name: str
    lora_a: Tensor
    lora_b: Tensor
    bias: Optional[Tensor]
    scaling: float

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]

    @property
    def choice(self) -> LayerChoice:
        e = Kind(kind="vector") if self.bias is not None else NONE
        return LayerChoice(B=Kind(kind="lora", rank=self.rank), E=e)


def from_peft(adapter_dir: Union[str, Path], model: Union[nn.Module, str], *, device: str = "cpu") -> Supernet:
    """The supernet (structure selected) that computes what ``PeftModel.from_pretrained(model,
    adapter_dir)`` computes. ``model``: the base ``nn.Module`` (its `modules_to_save` modules
    get the adapter's values) or a reference such as ``hf:DIR``, which ``glorac.save`` needs."""
    peft = require_peft()
    directory = Path(adapter_dir)
    config = read_adapter_config(directory)
    _check_config(config, peft)
    state = _read_weights(directory)
    module, ref = _resolve(model, config, device)
    layers, saved = _split_state(state, directory)
    loras = [_lora(name, parts, module, config, peft) for name, parts in layers.items()]
    trained = _trained_modules(module, config, saved)
    spec = _spec(loras, trained, module, directory)
    supernet = build_supernet(spec, module)
    supernet.model_ref = ref
    _check_plan(supernet, loras)
    _load_factors(supernet, loras)
    _load_trained(supernet, saved, directory)
    supernet.select(Structure(layers={lora.name: lora.choice for lora in loras}))
    return supernet


def read_adapter_config(directory: Path) -> dict:
    """``adapter_config.json`` of a PEFT adapter directory, as a dict; GloraError otherwise."""
    if not directory.is_dir():
        raise CheckpointError(f"PEFT adapter directory {directory} does not exist (or is not a directory); pass "
                              "the directory PeftModel.save_pretrained wrote.")
    path = directory / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no {ADAPTER_CONFIG}; pass the directory PeftModel.save_pretrained "
                              "wrote.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc}); re-save the adapter.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a PEFT adapter config (not a JSON object); re-save the adapter.")
    return config


def _check_config(config: dict, peft) -> None:
    """Refuse every setting that makes the adapter compute something else than plain LoRA."""
    where = "the adapter's config"
    if config.get("peft_type") != "LORA":
        raise PeftMappingError(f"{where} has peft_type {config.get('peft_type')!r}; glorac imports LoRA adapters "
                               "(peft_type LORA) only.")
    if config.get("use_dora"):
        raise PeftMappingError(f"{where} has use_dora = true: DoRA renormalises every column of W0 + ΔW by a "
                               "learnt magnitude, which no fixed GLoRA structure computes; import a plain LoRA "
                               "adapter, or merge the DoRA one with PEFT's merge_and_unload.")
    if config.get("bias", "none") != "none":
        raise PeftMappingError(f"{where} has bias = {config['bias']!r}: PEFT then also trains base biases, which "
                               "glorac does not import; retrain with bias='none' (lora_bias=True maps to E).")
    if config.get("init_lora_weights", True) not in _PLAIN_INITS:
        raise PeftMappingError(
            f"{where} has init_lora_weights = {config['init_lora_weights']!r}, which subtracts the initial update "
            "from the base weights, so the adapter fits only that modified base; convert it to a plain LoRA "
            "first (save_pretrained with path_initial_model_for_weight_conversion).")
    defaults = peft.LoraConfig()
    for field, value in config.items():
        if field in _HANDLED or value == getattr(defaults, field, None) or (value in (None, False, {}, [])):
            continue
        raise PeftMappingError(f"{where} sets {field} = {value!r}, a LoRA variant or option glorac cannot import "
                               "(it imports plain LoRA: r, lora_alpha, rank/alpha_pattern, use_rslora, lora_bias, "
                               "modules_to_save); import an adapter without it.")


def _read_weights(directory: Path) -> dict[str, Tensor]:
    for name in (ADAPTER_WEIGHTS, "adapter_model.bin"):
        if (directory / name).is_file():
            return load_state_dict_file(directory / name)
    raise CheckpointError(f"{directory} has no {ADAPTER_WEIGHTS} (nor adapter_model.bin); pass the directory "
                          "PeftModel.save_pretrained wrote.")


def _resolve(model: Union[nn.Module, str], config: dict, device: str) -> tuple[nn.Module, Optional[ModelRef]]:
    """The base model; a Hugging Face reference is built for the adapter's task, so that a
    causal LM keeps its head and its module names (``model.layers...``) are PEFT's."""
    if isinstance(model, nn.Module):
        return model, None
    task = _TASKS.get(config.get("task_type") or "") if model_source(model) == "hf" else None
    return resolve_model(model, device=device, task=task)


def _split_state(state: dict[str, Tensor], directory: Path) -> tuple[dict[str, dict[str, Tensor]], dict]:
    """({module: {lora part: tensor}}, {other key: tensor}) with PEFT's key prefix removed."""
    layers: dict[str, dict[str, Tensor]] = {}
    others = {}
    for key, tensor in state.items():
        if not key.startswith(KEY_PREFIX):
            raise PeftMappingError(f"{directory}: tensor `{key}` does not start with `{KEY_PREFIX}`; this is not a "
                                   "PeftModel.save_pretrained LoRA adapter.")
        key = key[len(KEY_PREFIX):]
        found = _LORA_KEY.match(key)
        if found:
            layers.setdefault(found["module"], {})[found["part"]] = tensor
        elif "lora_" in key:
            raise PeftMappingError(f"{directory}: tensor `{key}` is a LoRA tensor of a kind glorac does not import "
                                   "(embedding LoRA, DoRA magnitudes, ...); glorac imports Linear, Conv1D and "
                                   "Conv2d LoRA layers only.")
        else:
            others[key] = tensor
    return layers, others


def _lora(name: str, parts: dict[str, Tensor], model: nn.Module, config: dict, peft) -> _Lora:
    module = _target(model, name)
    problem = lora_layer_problem(module)
    if problem is not None:
        raise PeftMappingError(f"the adapter's LoRA layer `{name}` has no exact glorac form: {problem}.")
    if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
        raise PeftMappingError(f"the adapter file has an incomplete LoRA layer `{name}` (only {sorted(parts)}); "
                               "re-save the adapter.")
    if ("lora_B.bias" in parts) != bool(config.get("lora_bias")):
        state = "present" if "lora_B.bias" in parts else "absent"
        raise PeftMappingError(f"LoRA layer `{name}`: lora_B.bias is {state} but lora_bias = "
                               f"{config.get('lora_bias')}; re-save the adapter.")
    lora = _Lora(name, parts["lora_A.weight"], parts["lora_B.weight"], parts.get("lora_B.bias"),
                 _scaling(name, parts["lora_A.weight"].shape[0], config, peft))
    _check_shapes(lora, module)
    return lora


def _target(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
        raise PeftMappingError(
            f"the adapter has a LoRA layer `{name}`, which this model does not have (closest: "
            f"{', '.join(close) or 'none'}); pass the model PEFT wrapped (the same class: e.g. a causal LM with its "
            "head, not its bare backbone, whose module names lack the `model.` prefix).") from None


def _scaling(name: str, rank: int, config: dict, peft) -> float:
    """PEFT's scaling for layer ``name``, with its own pattern matching (peft.utils.other)."""
    from peft.utils.other import get_pattern_key

    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    want = rank_pattern.get(get_pattern_key(rank_pattern.keys(), name), config.get("r", 8))
    if want != rank:
        raise PeftMappingError(f"LoRA layer `{name}` has rank {rank} in the weights file but {want} in the config "
                               "(r / rank_pattern); the directory mixes two adapters: re-save it.")
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), name), config.get("lora_alpha", 8))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _check_shapes(lora: _Lora, module: nn.Module) -> None:
    weight = glorac_weight(module)
    u, v = glorac_factors(lora.lora_a, lora.lora_b)
    want = ((weight.shape[0], lora.rank), (lora.rank, weight[0].numel()))
    bias_ok = lora.bias is None or tuple(lora.bias.shape) == (weight.shape[0],)
    if (tuple(u.shape), tuple(v.shape)) != want or not bias_ok:
        raise PeftMappingError(f"LoRA layer `{lora.name}` has factors {tuple(lora.lora_b.shape)} · "
                               f"{tuple(lora.lora_a.shape)}, which do not fit the model's {tuple(weight.shape)} layer; "
                               "pass the model the adapter was trained on.")


def _trained_modules(model: nn.Module, config: dict, saved: dict[str, Tensor]) -> list[str]:
    """The outermost modules PEFT's ``modules_to_save`` picks in ``model`` (its rule: the name
    ends with an entry), checked against the tensors the adapter saved for them."""
    entries = config.get("modules_to_save") or []
    picked = [n for n, _ in model.named_modules() if n and any(n.endswith(e) for e in entries)]
    picked = [n for n in picked if not any(n.startswith(o + ".") for o in picked if o != n)]
    want = {f"{n}.{k}": t for n in picked for k, t in model.get_submodule(n).state_dict().items()}
    if set(want) != set(saved):
        extra, missing = sorted(set(saved) - set(want)), sorted(set(want) - set(saved))
        raise PeftMappingError(f"the adapter's non-LoRA tensors ({', '.join(extra[:3]) or 'none extra'}) are not "
                               f"the modules_to_save {entries} of this model (missing: "
                               f"{', '.join(missing[:3]) or 'none'}); pass the model the adapter was trained on.")
    wrong = [k for k, t in want.items() if tuple(t.shape) != tuple(saved[k].shape)]
    if wrong:
        k = wrong[0]
        raise PeftMappingError(f"modules_to_save tensor `{k}` is {tuple(saved[k].shape)} in the adapter but "
                               f"{tuple(want[k].shape)} in the model; build the model with the same head (e.g. "
                               "num_labels) as the one the adapter was trained on.")
    return picked


def _spec(loras: list[_Lora], trained: list[str], model: nn.Module, directory: Path) -> Spec:
    """One adapt rule per (rank, lora_bias) group, each naming its layers exactly."""
    origin = Origin(file=str(directory / ADAPTER_CONFIG), line=1, column=1)
    groups: dict[LayerChoice, list[str]] = {}
    for lora in loras:
        groups.setdefault(lora.choice, []).append(lora.name)
    rules = tuple(Rule(action="adapt", selector=Selector(patterns=tuple(names)),
                       space=Space(B=(choice.B,), E=(choice.E,)), origin=origin) for choice, names in groups.items())
    # lora_bias on a bias-free layer creates a bias, which glorac does only when asked.
    creates = any(lora.bias is not None and model.get_submodule(lora.name).bias is None for lora in loras)
    return Spec(rules=rules, trained=(TrainRule(patterns=tuple(trained), origin=origin),) if trained else (),
                bias="add" if creates else "preserve", training=TrainSettings(parametrization="paper"))


def _check_plan(supernet: Supernet, loras: list[_Lora]) -> None:
    adapted = {lp.qualname for lp in supernet.plan.layers}
    left = [lora.name for lora in loras if lora.name not in adapted]
    if left:
        why = dict(supernet.plan.skipped).get(left[0], "it is not an adaptable layer here")
        raise PeftMappingError(f"the adapter's LoRA layer `{left[0]}` cannot be adapted by glorac: {why}.")


def _load_factors(supernet: Supernet, loras: list[_Lora]) -> None:
    """PEFT's factors into the adapters, its scaling (over glorac's constant) in B_out."""
    with torch.no_grad():
        for lora in loras:
            adapter = supernet.adapters[lora.name]
            choice = lora.choice
            u, v = glorac_factors(lora.lora_a.double(), lora.lora_b.double())
            adapter.B_out.copy_(u * (lora.scaling / kind_scale("B", choice.B, adapter.geom, adapter.parametrization)))
            adapter.B_in.copy_(v)
            if lora.bias is not None:
                e_scale = kind_scale("E", choice.E, adapter.geom, adapter.parametrization)
                adapter.E.copy_(lora.bias.double() * (lora.scaling / e_scale))


def _load_trained(supernet: Supernet, saved: dict[str, Tensor], directory: Path) -> None:
    """The modules_to_save values into the base model's trained modules (checked by name and shape)."""
    if not saved:
        return
    base = dict(supernet.base_model.named_parameters())
    base.update(dict(supernet.base_model.named_buffers()))
    own = {k: base[k] for k in supernet.trained_state_dict() if k in base}
    copy_tensors(own, saved, directory / ADAPTER_WEIGHTS, "modules_to_save")
