"""Candidate evaluation speed of the search: FoldedEvaluator vs the unfolded supernet.

    python benchmarks/search.py [--model vit_small_patch16_224] [--images N] [--batch 64]
                                [--candidates N] [--sequence random|search]
                                [--device cpu|cuda] [--threads N]
    python benchmarks/search.py --quick       # 64 images, 3 candidates, 1 CPU thread

The supernet is a timm model (random weights) compiled with the paper space at rank 8
on blocks.*.attn.qkv, attn.proj, mlp.fc1, mlp.fc2 (48 layers on a 12-block ViT), with
non-zero adapter values (a trained supernet, not a fresh one). The candidates are
random structures (StructureSampler, seeded; ``--sequence random``) or, with
``--sequence search``, the children a real search evaluates, in its order (glorac.evolution
.evolve with the paper's settings, a budget of 40% of the largest structure and a fixed
pseudo-random fitness): children of shared parents, so consecutive candidates share
layers. The validation set is random images
preprocessed once into batches (glorac.data.Batch), labelled by default with the base
model's own predictions so that accuracies differ between candidates (``--labels
random`` for random labels).

Every candidate is evaluated twice, alternating which runs first:

  folded    glorac.scoring.FoldedEvaluator: fold the layers whose choice changed since
            the previous candidate into a scratch copy of the base model, then plain
            forwards (under torch.inference_mode);
  unfolded  glorac.scoring.supernet_accuracy: activate on the supernet, then its
            forwards (the adapted layers do the GLoRA op on every batch).

Prints candidates/s of both, their ratio, the plain base-model time over the same
batches (the floor the folded evaluator approaches), and checks that both give the
same correct-count for every candidate (and loss within 1e-4 relative): they must.
Last, the fold alone (no forwards) per candidate: every layer re-folded vs only the
layers that changed since the previous candidate (what FoldedEvaluator does).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time

import timm
import torch

import glorac
from common import pick_device
from glorac.data import Batch
from glorac.dsl.library import PAPER_SPACE
from glorac.scoring import FoldedEvaluator, accuracy, supernet_accuracy
from glorac.ir import SearchSettings, Structure
from glorac.kinds import max_choice
from glorac.sampling import StructureSampler
from glorac.evolution import evolve, structure_params

SPEC = PAPER_SPACE + """
adapt "blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2" with paper
train "head"
"""


def trained_like(supernet, seed: int = 0, scale: float = 1e-3) -> None:
    """Non-zero adapter values everywhere (a fresh supernet evaluates as the base model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in supernet.adapters.values():
            for p in adapter.parameters():
                p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.device, p.dtype))


def search_sequence(supernet, n: int, seed: int) -> list:
    """The first ``n`` children a paper-settings search evaluates (budget: 40% of the largest structure)."""
    spaces = supernet.spaces()
    geoms = {name: a.geom for name, a in supernet.adapters.items()}
    largest = structure_params(Structure(layers={k: max_choice(sp, geoms[k]) for k, sp in spaces.items()}),
                               geoms)

    def fitness(structures):  # fixed and pseudo-random: no model needed to pick the parents
        return [int(hashlib.sha256(s.model_dump_json().encode()).hexdigest()[:8], 16) / 2**32 for s in structures]

    settings = SearchSettings(seed=seed)
    result = evolve(spaces, geoms, budget=int(0.4 * largest), settings=settings, evaluate=fitness)
    children = [c.structure for c in result.evaluated if c.generation > 0]
    return children[:n]


def changed_layers(a, b) -> int:
    return sum(a.layers[n] != b.layers[n] for n in b.layers)


def fold_only(supernet, candidates: list, device: torch.device) -> None:
    """Time the fold alone: every layer per candidate vs the changed layers only."""
    folder = FoldedEvaluator(supernet, [])  # no batches: a call is the fold
    if not hasattr(folder, "forget"):  # an evaluator that always folds every layer
        return
    times = {"every layer": [], "changed layers": []}
    for which, runs in times.items():
        folder.forget()
        for s in candidates:
            if which == "every layer":
                folder.forget()
            _sync(device)
            t0 = time.perf_counter()
            folder(s)
            _sync(device)
            runs.append(time.perf_counter() - t0)
    layers = [changed_layers(a, b) for a, b in zip(candidates, candidates[1:])]
    full, part = (statistics.median(times[k][1:]) * 1e3 for k in times)
    print(f"fold only (no forwards): every layer {full:.0f} ms/candidate, changed layers only "
          f"{part:.0f} ms/candidate; {statistics.mean(layers):.1f} of {len(supernet.adapters)} layers "
          f"differ from the previous candidate on average")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--images", type=int, default=None, help="validation images (default 128 CPU, 256 CUDA)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=None, help="random structures (default 4 CPU, 20 CUDA)")
    ap.add_argument("--labels", choices=("base", "random"), default="base")
    ap.add_argument("--sequence", choices=("random", "search"), default="random",
                    help="independent random structures, or the children of a real search in its order")
    ap.add_argument("--adapter-scale", type=float, default=1e-3,
                    help="std of the random adapter values (larger: candidates drift further from "
                         "the base model's predictions)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="64 images, 3 candidates (CPU: 1 thread unless --threads)")
    args = ap.parse_args()

    device, gpu = pick_device(args)
    if args.quick:
        args.images = args.images or 64
        args.candidates = args.candidates or 3
    args.images = args.images or (256 if gpu else 128)
    args.candidates = args.candidates or (20 if gpu else 4)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if gpu else ''}, "
          f"threads {torch.get_num_threads()}, load average {load:.2f}")
    if not gpu and torch.get_num_threads() > 1 and load + torch.get_num_threads() > (os.cpu_count() or 1) + 0.5:
        print("note: the CPU is busy; with more threads than free cores every parallel op waits for "
              "a time slice (small ops suffer most): consider --threads 1")

    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, num_classes=args.num_classes).to(device).eval()
    t0 = time.perf_counter()
    supernet = glorac.build_supernet(glorac.loads_spec(SPEC), model)
    print(f"{args.model}: {len(supernet.adapters)} adapted layers, compile {time.perf_counter() - t0:.1f}s")
    trained_like(supernet, args.seed, args.adapter_scale)
    supernet.to(device).eval()

    size = model.default_cfg.get("input_size", (3, 224, 224))
    g = torch.Generator().manual_seed(args.seed + 1)
    images = torch.randn(args.images, *size, generator=g)
    batches = []
    with torch.no_grad():
        for k in range(0, args.images, args.batch):
            x = images[k:k + args.batch].to(device)
            batches.append(Batch((x,), torch.zeros(len(x), dtype=torch.int64, device=device)))
    # Labels (base): the predictions of the evaluator's scratch copy of the base model,
    # taken before any candidate is folded into it.
    t0 = time.perf_counter()
    evaluator = FoldedEvaluator(supernet, batches)
    setup = time.perf_counter() - t0
    if args.labels == "base":
        with torch.no_grad():
            for b in batches:
                b.labels.copy_(evaluator.scratch(*b.inputs).argmax(-1))
    else:
        for b in batches:
            b.labels.copy_(torch.randint(0, args.num_classes, b.labels.shape, generator=g).to(device))

    if args.sequence == "search":
        candidates = search_sequence(supernet, args.candidates + 1, args.seed)  # the first one warms up
    else:
        sampler = StructureSampler(supernet.spaces(), seed=args.seed)
        candidates = [sampler(i) for i in range(args.candidates + 1)]
    print(f"{args.candidates} {args.sequence} candidates (+1 warm-up), {args.images} images in batches of "
          f"{args.batch}, labels: {args.labels}; FoldedEvaluator setup (one deepcopy) {setup * 1e3:.0f} ms\n")

    folded_t, unfolded_t, base_t, mismatches, max_dloss = [], [], [], 0, 0.0
    print(f"{'cand':>4s} {'folded s':>9s} {'unfolded s':>10s} {'base s':>7s} {'acc folded':>10s} "
          f"{'acc unfolded':>12s} {'same':>5s}")
    for i, structure in enumerate(candidates):
        runs = {}
        order = ("folded", "unfolded") if i % 2 == 0 else ("unfolded", "folded")
        for which in order:
            _sync(device)
            t0 = time.perf_counter()
            if which == "folded":
                runs[which] = evaluator(structure)
            else:
                runs[which] = supernet_accuracy(supernet, batches, structure)
            _sync(device)
            runs[which + "_t"] = time.perf_counter() - t0
        _sync(device)
        t0 = time.perf_counter()
        accuracy(evaluator.scratch, batches)  # plain forwards of the (already folded) scratch model
        _sync(device)
        base = time.perf_counter() - t0
        f, u = runs["folded"], runs["unfolded"]
        same = f["correct"] == u["correct"] and abs(f["loss"] - u["loss"]) <= 1e-4 * max(1.0, abs(u["loss"]))
        dloss = abs(f["loss"] - u["loss"])
        label = "warm" if i == 0 else f"{i:4d}"
        print(f"{label:>4s} {runs['folded_t']:9.3f} {runs['unfolded_t']:10.3f} {base:7.3f} "
              f"{f['accuracy']:10.4f} {u['accuracy']:12.4f} {'yes' if same else 'NO':>5s}")
        if i == 0:
            continue
        folded_t.append(runs["folded_t"])
        unfolded_t.append(runs["unfolded_t"])
        base_t.append(base)
        mismatches += not same
        max_dloss = max(max_dloss, dloss)

    n = len(folded_t)
    fold_cps, unfold_cps = n / sum(folded_t), n / sum(unfolded_t)
    print(f"\nfolded   (FoldedEvaluator):         {fold_cps:8.3f} candidates/s "
          f"(median {statistics.median(folded_t) * 1e3:.0f} ms/candidate)")
    print(f"unfolded (supernet_accuracy):       {unfold_cps:8.3f} candidates/s "
          f"(median {statistics.median(unfolded_t) * 1e3:.0f} ms/candidate)")
    print(f"base-model forwards only (floor):   {n / sum(base_t):8.3f} candidates/s "
          f"(median {statistics.median(base_t) * 1e3:.0f} ms)")
    print(f"speed-up folded / unfolded: {fold_cps / unfold_cps:.2f}x;  fold overhead per candidate "
          f"~{(statistics.median(folded_t) - statistics.median(base_t)) * 1e3:.0f} ms")
    print(f"identical accuracies: {n - mismatches}/{n} candidates "
          f"({'OK' if mismatches == 0 else 'MISMATCH'}), max |loss difference| {max_dloss:.2e}")
    fold_only(supernet, candidates, device)
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
