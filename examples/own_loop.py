"""GLoRA in your own PyTorch training loop (the PEFT-style workflow, with glorac).

    python examples/own_loop.py --quick

1. build a supernet from a spec and any nn.Module (here a small MLP on sklearn's digits);
2. train it in a plain loop: a structure per step from glorac.StructureSampler, AdamW over
   supernet.trainable_parameters();
3. save the adapters only (glorac.save_adapters: a safetensors file and a JSON config,
   no base weights) and load them back onto the same base model;
4. pick a structure under a parameter budget with your own validation loop;
5. fold it into the plain MLP (no glorac left at inference) and check the outputs.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from safetensors.torch import save_file
from torch import nn

import glorac

# The paper's search space on every Linear of `body`; the head is trained as a whole.
SPEC = """
space paper(r) {
  A: lora(r) | vector | none
  B: lora(r) | vector | none
  C: lora(r) | vector | none
  D: vector | scalar | none
  E: vector | scalar | none
}
adapt "body.*" type Linear with paper(r=4)
train "head"
"""


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.body(x))


def digits(seed: int):
    """sklearn's 1797 8×8 digits, scaled to [0, 1] and split 1200 / 597 (train / val)."""
    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x = torch.tensor(x, dtype=torch.float32)[order] / 16
    y = torch.tensor(y)[order]
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="glorac-examples/own_loop", help="directory for the files written")
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer steps and candidates")
    args = parser.parse_args()
    out = Path(args.out)
    torch.manual_seed(0)
    (x, y), (vx, vy) = digits(seed=0)

    # A stand-in for a pretrained model: briefly trained, then frozen by glorac.
    base = MLP()
    opt = torch.optim.AdamW(base.parameters(), lr=3e-3)
    for _ in range(20 if args.quick else 100):
        opt.zero_grad()
        F.cross_entropy(base(x), y).backward()
        opt.step()
    print(f"base model: val accuracy {accuracy(base, vx, vy):.3f}")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}  # to rebuild the same base later

    # 1. The supernet: base weights frozen and shared with `base`, adapters at identity.
    supernet = glorac.build_supernet(glorac.loads_spec(SPEC), base)
    print(f"adapted layers: {len(supernet.adapters)}; trainable tensors: "
          f"{sum(p.numel() for p in supernet.trainable_parameters()):,} values")

    # 2. Your loop. The sampler is a function of (seed, step): every rank of a DDP job
    #    draws the same structure, and a resumed run continues the same sequence.
    sampler = glorac.StructureSampler(supernet.spaces(), seed=0)
    opt = torch.optim.AdamW(supernet.trainable_parameters(), lr=3e-3, weight_decay=1e-4)
    steps, batch = (60, 64) if args.quick else (600, 64)
    supernet.train()
    for step in range(steps):
        idx = torch.randint(len(y), (batch,))
        supernet.activate(sampler(step))
        loss = F.cross_entropy(supernet(x[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(f"trained {steps} steps; last loss {loss.item():.3f}")

    # 3. Adapters only: a few KB, never the base weights.
    saved = glorac.save_adapters(supernet, out / "adapters", force=True)
    size = sum(p.stat().st_size for p in saved.iterdir())
    print(f"wrote {saved}/ ({size:,} bytes: {', '.join(sorted(p.name for p in saved.iterdir()))})")
    same_base = MLP()
    same_base.load_state_dict(base_state)
    supernet = glorac.load(saved, model=same_base)  # refused if the base weights differ

    # 4. A structure under a budget of adapter parameters, by your own validation.
    budget = 2_000
    best = None
    rng = random.Random(0)
    for k in range(20 if args.quick else 200):
        candidate = sampler(10_000 + rng.randrange(10**6))
        if supernet.structure_params(candidate) > budget:
            continue
        with supernet.activated(candidate):
            score = accuracy(supernet, vx, vy)
        if best is None or score > best[0]:
            best = (score, candidate)
    score, structure = best
    supernet.select(structure)
    print(f"chosen structure: {supernet.structure_params():,} adapter parameters, val accuracy {score:.3f}")

    # 5. Fold: the stock MLP class with W′ and b′ in its weights.
    folded = glorac.fold(supernet)
    print(f"folded: {type(folded).__name__}, val accuracy {accuracy(folded, vx, vy):.3f}")
    with torch.no_grad():
        gap = (folded(vx) - supernet.eval()(vx)).abs().max().item()
    print(f"max |folded - supernet| = {gap:.2e}")
    assert gap < 1e-4, "the fold must compute what the supernet computes"
    save_file(folded.state_dict(), str(out / "folded_mlp.safetensors"))  # plain weights, no pickle


if __name__ == "__main__":
    main()
