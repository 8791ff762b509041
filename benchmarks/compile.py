"""Compile-time and at-init forward overhead of glorac on timm ViTs.

    python benchmarks/compile.py [--model vit_base_patch16_224] [--batch 4] [--repeats 10]

Prints (1) trace + plan + rewrite time (model construction excluded) for vit_base and its
growth with depth 12/24/48; (2) the compiled supernet's forward at initialisation vs
the base model's forward, alternating runs in one process (ratio target ≤ 1.03).
The supernet's structure for (2) is the cheapest exact one for the paper space's
largest choice per layer, i.e. what a fresh supernet runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import glorac
from glorac.dsl.library import PAPER_SPACE

SPEC = PAPER_SPACE + """
adapt "blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2" with paper
train "head"
"""


def compile_time(name: str, depth: int, repeats: int) -> float:
    spec = glorac.loads_spec(SPEC)
    times = []
    for _ in range(repeats):
        model = timm.create_model(name, depth=depth).eval()
        start = time.perf_counter()
        glorac.build_supernet(spec, model)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_ratio(name: str, batch: int, repeats: int, structure: str) -> tuple[float, float]:
    model = timm.create_model(name).eval()
    supernet = glorac.build_supernet(glorac.loads_spec(SPEC), model)
    if structure == "factored":  # A vector: the common cheap path
        choice = {n: glorac.LayerChoice(A=glorac.Kind(kind="vector"), B=glorac.Kind(kind="lora", rank=8),
                                        C=glorac.Kind(kind="vector"), D=glorac.Kind(kind="vector"),
                                        E=glorac.Kind(kind="vector"))
                  for n in supernet.spaces()}
        supernet.activate(choice)
    x = torch.randn(batch, 3, 224, 224)
    base_t, glorac_t = [], []
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            model(x), supernet(x)
        for _ in range(repeats):  # alternate so drift hits both alike
            t0 = time.perf_counter(); model(x); t1 = time.perf_counter()
            supernet(x); t2 = time.perf_counter()
            base_t.append(t1 - t0); glorac_t.append(t2 - t1)
    return statistics.median(base_t), statistics.median(glorac_t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}")
    base = None
    for depth in (12, 24, 48):
        t = compile_time(args.model, depth, repeats=3)
        base = base or t
        print(f"compile (trace+plan+rewrite) depth {depth:2d}: {t * 1e3:7.1f} ms   ×{t / base:.2f} vs depth 12")
    for structure in ("at init", "factored"):
        b, g = forward_ratio(args.model, args.batch, args.repeats, structure)
        print(f"forward batch {args.batch}, structure {structure:8s}: base {b * 1e3:.1f} ms, "
              f"glorac {g * 1e3:.1f} ms, ratio {g / b:.3f}")


if __name__ == "__main__":
    main()
