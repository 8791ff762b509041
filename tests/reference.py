"""An independent reference of the GLoRA formula, written from the math (DESIGN.md §1).

It reads an adapter's parameters by the documented sharing rule and materialises every
support tensor densely in float64, without using glorac.op, so that tests compare
glorac's factored/fused computations against the plain formula:

    W' = W0 + W0 ⊙ A + B        b' = b0 + b0 ⊙ D + E + W0 · C
"""

from __future__ import annotations

import copy
import random
from typing import Optional

import torch
from torch import nn

from glorac.ir import LayerChoice, Structure


def scale_of(tensor: str, kind, fan_in: int, parametrization: str) -> float:
    """The documented constants (docs/parametrization.md), written out again here."""
    if parametrization == "paper":
        return 1.0
    if (tensor, kind.kind) == ("A", "lora"):
        return (fan_in / kind.rank) ** 0.5
    if tensor == "B" and kind.kind in ("vector", "scalar"):
        return fan_in ** -0.5
    if (tensor, kind.kind) == ("C", "lora"):
        return 1.0 / kind.rank
    return 1.0


def _dense_ab(params: dict, t: str, kind, out: int, fan_in: int, parametrization: str) -> torch.Tensor:
    if kind.kind == "none":
        return torch.zeros(out, fan_in, dtype=torch.float64)
    u = params[f"{t}_out"].double() * scale_of(t, kind, fan_in, parametrization)
    if kind.kind == "lora":
        return u[:, : kind.rank] @ params[f"{t}_in"].double()[: kind.rank, :]
    if kind.kind == "vector":
        return u[:, :1].expand(out, fan_in)
    return u[0, 0].expand(out, fan_in)  # scalar


def _dense_c(params: dict, kind, c_len: int, parametrization: str) -> torch.Tensor:
    if kind.kind == "none":
        return torch.zeros(c_len, dtype=torch.float64)
    u = params["C_out"].double() * scale_of("C", kind, c_len, parametrization)
    if kind.kind == "lora":
        return (u[:, : kind.rank] @ params["C_in"].double()[: kind.rank, :])[:, 0]
    return u[:, 0]


def _dense_de(params: dict, t: str, kind, out: int) -> torch.Tensor:
    if kind.kind == "none":
        return torch.zeros(out, dtype=torch.float64)
    v = params[t].double()
    return v.expand(out) if kind.kind == "vector" else v[0].expand(out)


def reference_weight_bias(params: dict[str, torch.Tensor], choice: LayerChoice,
                          weight: torch.Tensor, bias: Optional[torch.Tensor], parametrization: str = "balanced"):
    """(W', b') in float64 from the formula; b' is None when nothing creates a bias.

    ``parametrization`` must be the adapter's (glorac's default is ``balanced``).
    """
    w0 = weight.detach().double()
    out = w0.shape[0]
    w2 = w0.reshape(out, -1)
    fan_in = w2.shape[1]
    c_len = w0.shape[1]  # Linear: in; Conv2d: in/groups (C scales channels, summed over the window)
    a = _dense_ab(params, "A", choice.A, out, fan_in, parametrization)
    b = _dense_ab(params, "B", choice.B, out, fan_in, parametrization)
    w_new = (w2 + w2 * a + b).reshape(w0.shape)
    w_sum = w0 if w0.dim() == 2 else w0.sum(dim=(2, 3))
    c = _dense_c(params, choice.C, c_len, parametrization)
    d = _dense_de(params, "D", choice.D, out)
    e = _dense_de(params, "E", choice.E, out)
    b0 = torch.zeros(out, dtype=torch.float64) if bias is None else bias.detach().double()
    creates = bias is not None or choice.C.kind != "none" or choice.E.kind != "none"
    b_new = b0 + b0 * d + e + w_sum @ c
    return w_new, (b_new if creates else None)


def perturb(supernet, seed: int = 0, scale: float = 0.1) -> None:
    """Non-zero values in every adapter tensor (a zero adapter makes any check trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in supernet.adapters.values():
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def random_structure(supernet, seed: int = 0) -> Structure:
    rng = random.Random(seed)
    return Structure(layers={
        name: LayerChoice(**{t: rng.choice(kinds) for t, kinds in space.items()})
        for name, space in supernet.spaces().items()
    })


def reference_model(base: nn.Module, supernet, structure: Structure) -> nn.Module:
    """A deep copy of the base model with every adapted layer's W', b' written in."""
    model = copy.deepcopy(base)
    for name, adapter in supernet.adapters.items():
        owner = model.get_submodule(name)
        params = dict(adapter.named_parameters())
        w, b = reference_weight_bias(params, structure.layers[name], owner.weight, owner.bias,
                                     adapter.parametrization)
        dtype = owner.weight.dtype
        owner.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        if b is not None:
            owner.bias = nn.Parameter(b.to(dtype), requires_grad=False)
    return model


# ---------------------------------------------------------------- test helpers


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want|, in float64."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``glorac ARGV`` run in-process."""
    from glorac.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_torchrun(*argv, nproc: int = 2, timeout: int = 300):
    """``torchrun --standalone --nproc_per_node NPROC -m glorac ARGV`` on CPU (Gloo), from
    the repository root; returns the CompletedProcess (text output captured)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "glorac", *[str(a) for a in argv], "--device", "cpu", "--no-progress"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
