"""Fold time, and what folding buys at inference, on a timm ViT-B/16 (random weights).

    python benchmarks/fold.py [--model vit_base_patch16_224] [--batch 4] [--repeats 5]
                              [--threads N] [--device cpu|cuda]

Prints:

1. the time of ``glorac.fold`` (copy and inplace, without verification) and of
   ``fold(..., verify=True)`` for the paper space at rank 8 and one random structure
   (non-zero adapter values: a trained supernet, not a fresh one);
2. forward latency of the folded model vs the base model on the same input, runs
   alternated in one process (ABBA order) so that machine drift hits both alike; the
   target is a ratio of 1.00 ± 0.02 (same architecture, new numbers);
3. forward latency of the adapted supernet (unfolded, at that structure) vs the folded
   model: what the fold saves per inference call.

Forward timings give median and min ratios; on a shared machine read the ratios (the min
ones first), not the absolute numbers.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import timm
import torch

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.folding.model import fold_with_report
from glorac.ir import LayerChoice, Structure

SPEC = PAPER_SPACE + """
adapt "blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2" with paper
train "head"
"""


def trained_like(supernet, seed: int = 0, scale: float = 0.02) -> None:
    """Non-zero adapter values everywhere (a fresh supernet folds to the base weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in supernet.adapters.values():
            for p in adapter.parameters():
                p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.device, p.dtype))


def random_structure(supernet, seed: int = 0) -> Structure:
    rng = random.Random(seed)
    return Structure(layers={
        name: LayerChoice(**{t: rng.choice(kinds) for t, kinds in space.items()})
        for name, space in supernet.spaces().items()
    })


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(a, b, x, repeats: int, device: str) -> tuple[list[float], list[float]]:
    """Forward times of a and b, run ABBA after two warm-up rounds."""
    ta, tb = [], []
    with torch.inference_mode():
        for _ in range(2):
            a(x), b(x)
        for i in range(repeats):
            pair = [(ta, a), (tb, b)] if i % 2 == 0 else [(tb, b), (ta, a)]
            for times, model in pair:
                times.append(timed(lambda m=model: m(x), device))
    return ta, tb


def compare(label_a: str, label_b: str, ta: list[float], tb: list[float], target: str = "") -> None:
    """Median and min: on a shared machine the min is the less disturbed estimate."""
    med_a, med_b = statistics.median(ta), statistics.median(tb)
    print(f"forward {label_a:>7} {med_a * 1e3:8.1f} ms | {label_b} {med_b * 1e3:8.1f} ms (medians) | "
          f"{label_a}/{label_b} = {med_a / med_b:.3f} median, {min(ta) / min(tb):.3f} min{target}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fold-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = args.device
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, model {args.model}, batch {args.batch}")

    base = timm.create_model(args.model).eval().to(dev)
    supernet = glorac.build_supernet(glorac.loads_spec(SPEC), base)
    trained_like(supernet, seed=1)
    structure = random_structure(supernet, seed=2)
    supernet.activate(structure)
    print(f"{len(supernet.adapters)} adapted layers, structure uses {supernet.structure_params():,} "
          f"adapter parameters (rank 8 paper space, random structure)")

    # 1. fold time
    copy_t = statistics.median(timed(lambda: glorac.fold(supernet, structure), dev)
                               for _ in range(args.fold_repeats))
    verify_t = statistics.median(timed(lambda: glorac.fold(supernet, structure, verify=True), dev)
                                 for _ in range(args.fold_repeats))
    deepcopy_t = statistics.median(timed(lambda: copy.deepcopy(base), dev) for _ in range(args.fold_repeats))
    victim = copy.deepcopy(supernet)  # inplace consumes a supernet
    inplace_t = timed(lambda: glorac.fold(victim, structure, inplace=True), dev)
    victim = None  # free its weights before timing forwards
    folded, report = fold_with_report(supernet, structure)
    print(f"fold (copy):          {copy_t * 1e3:8.1f} ms   (of which deepcopy of the base ≈ {deepcopy_t * 1e3:.1f} ms)")
    print(f"fold (inplace):       {inplace_t * 1e3:8.1f} ms")
    print(f"fold (copy, verify):  {verify_t * 1e3:8.1f} ms   end-to-end max|Δ|/max|y| = {report.rel_error:.2e} "
          f"(tolerance {report.tolerance:g}, batch-2 probe)")

    # 2. folded vs base, 3. adapted vs folded
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    with torch.inference_mode():
        adapted_y, folded_y = supernet(x), folded(x)
    rel = ((folded_y - adapted_y).abs().max() / adapted_y.abs().max()).item()
    print(f"folded vs adapted output on the timing input: max|Δ|/max|y| = {rel:.2e}")
    folded_t, base_t = alternate(folded, base, x, args.repeats, dev)
    compare("folded", "base", folded_t, base_t, "  (target 1.00 ± 0.02)")
    adapted_t, folded_t2 = alternate(supernet, folded, x, args.repeats, dev)
    compare("adapted", "folded", adapted_t, folded_t2)


if __name__ == "__main__":
    main()
