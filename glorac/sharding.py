"""FSDP2 for a supernet under ``torchrun``: the frozen base sharded, the adapters replicated.

``glorac train|finetune|search --fsdp`` shards every frozen base tensor over the
processes with ``torch.distributed.fsdp.fully_shard`` (one FSDP unit per transformer
block, or per called layer of a traced model; the rest in the root unit), so each
process holds 1/world of the base at rest and gathers one unit at a time in the
forward. Adapter tensors and the spec's ``train`` modules are FSDP's ``ignored_params``:
they are a small share of the model, so every process keeps them whole and their
gradients are averaged with one all-reduce per step (:func:`average_gradients`). That
keeps everything downstream (checkpoints with adapters only, the search's structure
changes, fold) working on plain tensors, and the optimizer step identical on every rank.

After :func:`shard_supernet` the base weights of the supernet (and of the model it was
compiled from, which shares them) are DTensor shards: use the supernet's forward, not
``base_model``, and do not fold in this process; fold the checkpoint afterwards on one
process (``glorac fold``), which rebuilds the base from its reference.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from .distributed import Dist
from .errors import GloraError


def _called_modules(graphs: list[torch.fx.GraphModule]) -> list[nn.Module]:
    """The modules traced graphs call, in graph order (blocks are inlined there, not called)."""
    seen, out = set(), []
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op == "call_module" and id(module := gm.get_submodule(node.target)) not in seen:
                seen.add(id(module))
                out.append(module)
    return out


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules each made one FSDP unit (none inside another), the root excluded.

    A Hugging Face model names its blocks (``_no_split_modules``); a traced model is
    sharded per called module, since a block there is never called as a module and so
    would never run FSDP's gather; any other model per element of its largest
    ``nn.ModuleList`` (the repeated blocks)."""
    graphs = [m for m in model.modules() if isinstance(m, torch.fx.GraphModule)]  # its train and eval traces
    if graphs:
        units = _called_modules(graphs)
    else:
        names = set(getattr(model, "_no_split_modules", None) or ())
        units = [m for m in model.modules() if type(m).__name__ in names]
        if not units:
            lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
            units = list(max(lists, key=len)) if lists else []
    # Outermost only: a unit inside another is gathered with it.
    inner = {id(sub) for u in units for sub in u.modules() if sub is not u}
    return [u for u in units if id(u) not in inner and u is not model]


def replicated_parameters(supernet) -> set[nn.Parameter]:
    """What stays whole on every process: every adapter tensor and every trainable one."""
    params = {p for a in supernet.adapters.values() for p in a.parameters()}
    return params | {p for p in supernet.model.parameters() if p.requires_grad}


def shard_supernet(supernet, d: Dist) -> nn.Module:
    """Shard the supernet's frozen base over the process group, in place; returns its model.

    A no-op on one process."""
    if not d.active:
        return supernet.model
    from torch.distributed.fsdp import fully_shard

    model = supernet.model
    if getattr(supernet, "_sharded", False):
        return model
    keep = replicated_parameters(supernet)
    dtypes = {p.dtype for p in model.parameters() if p not in keep}
    if len(dtypes) > 1:
        raise GloraError(f"--fsdp needs the frozen base in one dtype, and this one mixes "
                         f"{sorted(str(t) for t in dtypes)}; load the model in one dtype or train without --fsdp.")
    mesh = torch.distributed.device_mesh.init_device_mesh(d.device.type, (d.world,))
    units = shard_units(model)
    # A tensor two units use (tied weights) belongs to neither: the root unit holds it,
    # gathered for its whole forward, so both users see it whole.
    uses: dict[nn.Parameter, int] = {}
    for unit in units:
        for p in set(unit.parameters()):
            uses[p] = uses.get(p, 0) + 1
    shared = {p for p, n in uses.items() if n > 1}
    for unit in units:
        if any(p not in keep and p not in shared for p in unit.parameters()):
            fully_shard(unit, mesh=mesh, ignored_params=keep | shared)
    fully_shard(model, mesh=mesh, ignored_params=keep)
    supernet.__dict__["_sharded"] = True
    return model


def average_gradients(params: Iterable[nn.Parameter], d: Dist) -> None:
    """Average the replicated parameters' gradients over the processes (one all-reduce).

    Every rank runs the same structure, so the same parameters have gradients on every
    rank; the ones without (a kind the structure does not use) are skipped everywhere."""
    if not d.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
