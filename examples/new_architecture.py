"""Write a GLoRA spec for your own `nn.Module`: mistakes, diagnostics, the plan, and exactness checks.

The model is a small MLP-Mixer defined below (any nn.Module works the same way). The script

1. loads a spec with a typo in a kind name and one in a layer selector, and prints glorac's
   diagnostics: the first is caught when the spec is read, the second when it meets the model;
2. fixes both and prints the plan (the table `glorac plan` prints);
3. compiles the model into a supernet and checks that at init it computes the base model;
4. trains it on 8x8 digits, searches a structure under the budget, folds it and reports the
   folded model's test accuracy;
5. puts random values in every adapter tensor, folds random structures, and checks that each
   folded model (a plain TinyMixer) gives the same logits as the supernet.

    python examples/new_architecture.py --quick     # about 15 s on 2 CPU cores
    python examples/new_architecture.py             # wider model, more training and checks
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import glorac
from glorac.data import load_data
from glorac.report import print_plan


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Gate(nn.Module):
    """A layer written with F.linear on its own parameters, not an nn.Linear: module-swapping
    tools never see it; glorac finds it in the traced graph (a "functional" site)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) / dim ** 0.5)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return x * torch.sigmoid(F.linear(x, self.weight, self.bias))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = Mlp(tokens, 2 * tokens)  # mixes across patches
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, 2 * dim)      # mixes across features
        self.gate = Gate(dim)

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return self.gate(x + self.channel_mlp(self.norm2(x)))


class TinyMixer(nn.Module):
    """(B, 3, 8, 8) images -> 16 patches of 2x2 pixels -> mixer blocks -> mean -> classes."""

    def __init__(self, dim: int = 32, depth: int = 2, num_classes: int = 10, patch: int = 2, size: int = 8):
        super().__init__()
        self.patch, self.size = patch, size
        self.tokens = (size // patch) ** 2
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.blocks = nn.Sequential(*[MixerBlock(self.tokens, dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        p, n = self.patch, self.size // self.patch
        x = x.reshape(x.shape[0], 3, n, p, n, p).permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], self.tokens, -1)
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


SPACE = """\
space paper(r=4) {
    A: lora(r) | vector | scalar | none
    B: lora(r) | vector | scalar | none
    C: lora(r) | vector | none
    D: vector | scalar | none
    E: vector | scalar | none
}
"""

SPEC = SPACE + """
# Token and channel MLPs and the functional gate of every block. Globs match the whole
# dotted module name; `type Linear` also matches an F.linear site.
adapt "blocks.*.token_mlp.fc{1,2}", "blocks.*.channel_mlp.fc{1,2}", "blocks.*.gate" type Linear with paper(r=4)

# The classifier trains fully; it is not counted in the budget.
train "head"

budget BUDGET

training {
    epochs = EPOCHS
    warmup_epochs = 1
    lr = 1e-2
    batch_size = 32
}

search {
    population = 8
    generations = 2
    parents = 4
    mutations = 4
    crossovers = 4
}
"""

FULL = dict(dim=64, depth=4, budget="20K", epochs=12, structures=20, limit=None)
QUICK = dict(dim=32, depth=2, budget="4K", epochs=8, structures=3, limit={"train": 400, "val": 150, "test": 200})


def show_error(title: str, spec_text: str, model: nn.Module) -> None:
    """Load the spec and plan it against the model; print the diagnostic glorac raises."""
    try:
        glorac.plan(glorac.loads_spec(spec_text, name="mixer.glora"), model)
    except glorac.SpecError as err:  # the spec text itself is wrong: compiler-style, with a caret
        print(f"--- {title}: SpecError from glorac.loads_spec ---\n{err.render()}\n")
    except glorac.PlanError as err:  # valid spec, but it does not fit this model
        print(f"--- {title}: PlanError from glorac.plan ---\n{err.render()}\n")
    else:
        raise SystemExit(f"{title}: expected glorac to refuse this spec")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="glorac-examples/new_architecture", help="directory for this run's files")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of about 15 s")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(0)
    model = TinyMixer(size["dim"], size["depth"]).eval()
    spec_text = SPEC.replace("BUDGET", size["budget"]).replace("EPOCHS", str(size["epochs"]))

    # 1. Two typical mistakes, each caught where it can first be seen.
    show_error("a kind typo", spec_text.replace("B: lora(r) | vector", "B: lora(r) | vectr"), model)
    show_error("a selector typo", spec_text.replace("channel_mlp", "chanel_mlp"), model)

    # 2. The fixed spec, and the plan: which layer gets which space, what is trained, the budget.
    (out / "mixer.glora").write_text(spec_text)
    spec = glorac.load_spec(out / "mixer.glora")
    plan = glorac.plan(spec, model)
    print_plan(plan, title="mixer.glora on TinyMixer")

    # 3. Compile. The supernet shares the model's tensors, frozen except the `train` modules
    #    (the head, which training updates in place); the model's modules stay as they are.
    supernet = glorac.build_supernet(spec, model).eval()
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        same = torch.equal(supernet(x), model(x))
    print(f"\nat init the supernet computes the base model exactly: {same}")
    if not same:
        raise SystemExit("the fresh supernet differs from the base model")

    # 4. Train (image_size: a plain nn.Module has no timm config that says its input size),
    #    search under the budget, fold the chosen structure, evaluate the plain model.
    data = load_data("builtin:digits", model=model, image_size=8, limit=size["limit"])
    glorac.train(supernet, data, progress=False)
    result = glorac.search(supernet, data, progress=False)
    test = glorac.evaluate(glorac.fold(supernet), data, "test")
    print(f"searched structure: {result.best.params:,} adapter parameters; folded test accuracy "
          f"{test['accuracy']:.3f} ({test['correct']}/{test['n']})")

    # 5. Exactness of the fold for any structure. Training leaves some adapter tensors near zero,
    #    which would hide a wrong fold, so every one gets random values (this overwrites the
    #    trained adapters: it is a check, done last).
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for adapter in supernet.adapters.values():
            for tensor in adapter.parameters():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    sampler = glorac.StructureSampler(supernet.spaces(), seed=2)  # the random draw training uses
    worst = 0.0
    for step in range(size["structures"]):
        structure = sampler(step)
        folded = glorac.fold(supernet, structure)  # a TinyMixer with W' and b' written in
        with torch.no_grad(), supernet.activated(structure):
            expected = supernet(x)
        with torch.no_grad():
            worst = max(worst, ((folded(x) - expected).abs().max() / expected.abs().max()).item())
    plain = type(folded) is TinyMixer and all(type(m).__module__ != "glorac" for m in folded.modules())
    ok = plain and worst <= 1e-5
    print(f"fold of {size['structures']} random structures with random adapters: "
          f"{'same logits' if ok else 'DIFFERENT logits'} as the supernet (max |Δ|/max|y| = {worst:.1e}); "
          f"{time.perf_counter() - start:.0f} s")
    if not ok:
        raise SystemExit("a folded model differs from its supernet")


if __name__ == "__main__":
    main()
