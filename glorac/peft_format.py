"""What glorac and PEFT's LoRA share: the adapter directory's layout and which layers map.

A PEFT LoRA adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``
whose keys are ``base_model.model.<module>.lora_A.weight`` (r×in), ``….lora_B.weight``
(out×r) and, with ``lora_bias``, ``….lora_B.bias`` (out); PEFT adds
``scaling · lora_B(lora_A(x))`` to the base layer's output. glorac's B = lora(r) adds
``x·(U V)ᵀ`` with U = scale·B_out[:, :r], V = B_in[:r] (:func:`glorac.kinds.kind_scale`), so
the two are the same function when U = scaling·lora_B and V = lora_A, layer for layer.
Used by :mod:`glorac.peft_export` and :mod:`glorac.peft_import` (docs/peft.md).
"""

from __future__ import annotations

from typing import Optional


from torch import Tensor, nn

from .errors import GloraError
from .op import is_transposed_linear, same_padding_conv, unsupported_subclass

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: What PEFT puts before a module's name in a saved adapter (PeftModel.base_model.model).
KEY_PREFIX = "base_model.model."


class PeftMappingError(GloraError):
    """A glorac structure or a PEFT adapter that the other side cannot express exactly."""


def require_peft():
    """The ``peft`` package, or a GloraError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise GloraError("PEFT interchange needs the `peft` package, which is not installed; install it "
                         "with `pip install 'glorac[peft]'` (or `pip install peft`).") from None
    return peft


def lora_layer_problem(module: nn.Module) -> Optional[str]:
    """Why PEFT's LoRA layer for ``module`` would not compute glorac's B = lora(r) exactly
    (None when it would).

    PEFT's Conv2d LoRA runs lora_A as a conv with the base's kernel, stride and padding but
    neither its dilation nor its groups, then a 1×1 conv: the same as glorac's low-rank path
    only for an ungrouped, undilated conv.
    """
    if is_transposed_linear(module):
        return None
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        return f"it is a {kind}; glorac adapts only Linear, Conv2d and transformers' Conv1D layers"
    own = unsupported_subclass(module)
    if own is not None or same_padding_conv(module):
        return own or f"it is a {kind} (run-time 'same' padding), which PEFT's Conv2d LoRA does not reproduce"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or tuple(module.dilation) != (1, 1) or module.padding_mode != "zeros":
            return (f"it is a Conv2d with groups={module.groups}, dilation={tuple(module.dilation)}, "
                    f"padding_mode={module.padding_mode!r}; PEFT's Conv2d LoRA ignores groups and dilation, so "
                    "only groups=1, dilation=1, zero padding maps exactly")
    return None


def peft_factors(u: Tensor, v: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """(lora_A.weight, lora_B.weight) for glorac's (U, V) on a layer whose weight (in glorac's
    out×… layout) is ``weight``: a Conv2d's factors are convs (r×in×kh×kw and out×r×1×1)."""
    if weight.dim() == 4:
        return v.reshape(v.shape[0], *weight.shape[1:]), u[:, :, None, None]
    return v, u


def glorac_factors(lora_a: Tensor, lora_b: Tensor) -> tuple[Tensor, Tensor]:
    """(U, V) as glorac stores them (out×r, r×fan_in) from PEFT's lora_A/lora_B weights."""
    return lora_b.reshape(lora_b.shape[0], -1), lora_a.reshape(lora_a.shape[0], -1)


def glorac_weight(module: nn.Module) -> Tensor:
    """The layer's weight in glorac's layout (Conv1D stores it transposed, in×out)."""
    return module.weight.t() if is_transposed_linear(module) else module.weight

