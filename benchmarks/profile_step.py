"""Where a training step's launches go: kernels (CUDA) or leaf aten ops (CPU) per phase.

    python benchmarks/profile_step.py [--model vit_small_patch16_224] [--batch 8] [--device cpu|cuda]
                                      [--variants full,lora,lowrank,factored,supernet,peft_lora,peft_glora]
    python benchmarks/profile_step.py --quick      # vit_tiny at 96 px, a few seconds on a CPU

A step is bound by kernel launches when its adapter adds many small ops per layer; this
counts them, with torch.profiler, for each variant of benchmarks/train_step.py (same
models, same specs), split into the forward (+ loss; for `supernet` also the structure
change), the backward and the optimizer step (AdamW + zero_grad). On CUDA the unit is
device kernels; on a CPU it is leaf aten ops (ops that call no other op) that compute
something (views, empty tensors and no-op casts left out: NO_KERNEL), each of which is a
kernel on a GPU. The `extra / layer` column is the variant's count
minus full fine-tuning's, per adapted layer: what an adapter adds to one layer's step.
`host calls` counts every aten op the Python side dispatches (views and casts too): when
a GPU step is bound by launches, the host pays for each of them.
Counts are per step, averaged over --steps profiled steps after one warm-up step. The
same numbers for every layer kind are in benchmarks/README.md; times are train_step.py's.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections import Counter

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # before torch: no profiler start/stop lines

import timm
import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from common import adamw, add_optimizer_arg, pick_device
from train_step import ALL_VARIANTS, LABELS, _peft_available, build_variant

PHASES = ("forward", "backward", "optimizer")
#: Leaf aten ops that only make a new view or an uninitialised tensor, or convert to the
#: dtype a tensor already has: no kernel on a GPU, so not counted on a CPU either.
NO_KERNEL = frozenset(f"aten::{n}" for n in (
    "view", "as_strided", "alias", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose", "permute",
    "expand", "expand_as", "slice", "select", "unsqueeze", "squeeze", "narrow", "unbind", "split", "chunk",
    "detach", "resolve_conj", "resolve_neg", "empty", "empty_like", "empty_strided", "to", "lift_fresh",
    "contiguous", "result_type", "numpy_T", "_has_compatible_shallow_copy_type"))


def _computes(evt) -> bool:
    return evt.name.startswith("aten::") and evt.name not in NO_KERNEL


def _calls_compute(evt) -> bool:
    """Whether an op calls (at any depth) another op that computes."""
    return any(_computes(c) or _calls_compute(c) for c in evt.cpu_children)


def _launches(prof, cuda: bool) -> tuple[int, int, Counter]:
    """(kernels, host op calls, kernels by name) of one profile. Kernels: device kernels
    (CUDA) or innermost computing aten ops (CPU). Host op calls: every aten op the Python
    side dispatches (top level: views included, what a launch-bound step pays for too)."""
    names: Counter = Counter()
    calls = 0
    for evt in prof.events():
        if evt.name.startswith("aten::") and (evt.cpu_parent is None or not evt.cpu_parent.name.startswith("aten::")):
            calls += 1
        if cuda:
            if evt.device_type == DeviceType.CUDA:
                names[evt.name] += 1
        elif _computes(evt) and not _calls_compute(evt):
            names[evt.name] += 1
    return sum(names.values()), calls, names


def profile_variant(v, x, y, device, steps: int) -> dict:
    """Mean launches per step in each phase, and the most frequent names of the forward."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    totals = {phase: [] for phase in PHASES}
    calls = []
    top: Counter = Counter()
    for step in range(steps + 1):  # step 0: warm-up (AdamW creates its state)
        phase_counts, phase_calls = {}, {}
        with profile(activities=activities) as prof:
            if v.before_step is not None:
                v.before_step(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = v.model(x)
            loss = F.cross_entropy(logits.float(), y)
            if cuda:
                torch.cuda.synchronize(device)
        phase_counts["forward"], phase_calls["forward"], names = _launches(prof, cuda)
        with profile(activities=activities) as prof:
            loss.backward()
            if cuda:
                torch.cuda.synchronize(device)
        phase_counts["backward"], phase_calls["backward"], _ = _launches(prof, cuda)
        with profile(activities=activities) as prof:
            v.optimizer.step()
            v.optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
        phase_counts["optimizer"], phase_calls["optimizer"], _ = _launches(prof, cuda)
        if step:
            for phase in PHASES:
                totals[phase].append(phase_counts[phase])
            calls.append(sum(phase_calls.values()))
            top.update(names)
    return {"phases": {p: statistics.mean(c) for p, c in totals.items()}, "calls": statistics.mean(calls),
            "top": top}


def adapted_layers(v) -> int:
    adapters = getattr(v.model, "adapters", None)
    if adapters is not None:
        return len(adapters)
    return sum(1 for n, _ in v.model.named_modules() if n.endswith(("lora_A", "glora_Ad")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="profiled steps per variant (after one warm-up)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", default="full,lora,lowrank,factored,supernet,peft_lora,peft_glora")
    ap.add_argument("--top", type=int, default=6, help="most frequent forward launches to list per variant")
    ap.add_argument("--quick", action="store_true", help="vit_tiny_patch16_224 at 96 px, batch 2")
    add_optimizer_arg(ap)
    args = ap.parse_args()
    device, cuda = pick_device(args)
    if args.quick:
        args.model, args.img_size, args.batch = "vit_tiny_patch16_224", args.img_size or 96, 2
    has_peft, has_glora = _peft_available()
    keys = [k for k in args.variants.split(",") if k in ALL_VARIANTS and
            not (k == "peft_lora" and not has_peft) and not (k == "peft_glora" and not has_glora)]

    torch.manual_seed(0)
    base = timm.create_model(args.model, **({"img_size": args.img_size} if args.img_size else {})).to(device)
    size = args.img_size or base.default_cfg.get("input_size", (3, 224, 224))[1]
    x = torch.randn(args.batch, 3, size, size, device=device)
    y = torch.randint(0, base.num_classes, (args.batch,), device=device)
    unit = "CUDA kernels" if cuda else "leaf aten ops (kernels on a GPU)"
    print(f"torch {torch.__version__}, {args.model} @ {size} px, batch {args.batch}, {device}; "
          f"{unit} per training step")
    print(f"{'variant':30s} {'forward':>8s} {'backward':>9s} {'optim':>7s} {'total':>7s} {'layers':>7s} "
          f"{'extra / layer':>14s} {'host calls':>11s} {'extra / layer':>14s}")
    results = {}
    for key in keys:
        v = build_variant(key, base)
        v.model.to(device).train()
        v.optimizer = adamw(v.params, args.optimizer)
        results[key] = (profile_variant(v, x, y, device, args.steps), adapted_layers(v))
        del v
    full = results.get("full", (None,))[0]

    def per_layer(value: float, reference: float | None, layers: int) -> str:
        return f"{(value - reference) / layers:14.1f}" if reference is not None and layers else f"{'-':>14s}"

    for key, (r, layers) in results.items():
        total = sum(r["phases"].values())
        f, b, o = (r["phases"][p] for p in PHASES)
        extra = per_layer(total, full and sum(full["phases"].values()), layers)
        print(f"{LABELS[key]:30s} {f:8.0f} {b:9.0f} {o:7.0f} {total:7.0f} {layers:7d} {extra} "
              f"{r['calls']:11.0f} {per_layer(r['calls'], full and full['calls'], layers)}")
    if args.top:
        print(f"\nmost frequent forward {unit} (per {args.steps} step(s)):")
        for key, (r, _) in results.items():
            common = ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in r["top"].most_common(args.top))
            print(f"  {key:10s} {common}")


if __name__ == "__main__":
    main()
