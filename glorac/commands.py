"""Torch-side CLI commands (plan, compile, ...), registered into the main parser.

torch is imported inside each command, so `glorac check` and `glorac fmt` stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ModelError
from .ir import SearchSettings, TrainSettings
from .overrides import add_setting_flags, setting_overrides


#: Training settings a flag may override: all but the parametrization (fixed when the
#: adapters were built); fine-tuning one structure has no sampling rule either.
TRAIN_FLAGS = tuple(n for n in TrainSettings.model_fields if n != "parametrization")
FINETUNE_FLAGS = tuple(n for n in TRAIN_FLAGS if n != "sampling")


def register(sub) -> None:
    p = sub.add_parser("plan", help="show which layer gets which space (no weights needed)")
    _spec_and_model_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--device", default="meta",
                   help="where to build the model; the default 'meta' allocates no weights")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("compile", help="rewrite a model into a GLoRA supernet checkpoint")
    _spec_and_model_args(p)
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--seed", type=int, default=None, help="adapter init seed (default: the spec's)")
    p.set_defaults(func=cmd_compile)


    p = sub.add_parser("fold", help="fold the chosen structure into plain base weights")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="supernet checkpoint (.pt)")
    p.add_argument("-o", "--output", required=True,
                   help="output .safetensors file (a directory for Hugging Face models)")
    _structure_arg(p, "structure JSON to fold (default: the one the checkpoint has selected)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the numeric check of folded vs adapted outputs")
    p.set_defaults(func=cmd_fold)


    p = sub.add_parser("train", help="one-shot supernet training on a data set")
    p.add_argument("checkpoint", metavar="SUPERNET", help="checkpoint from `glorac compile` (or a training run)")
    _data_args(p)
    p.add_argument("-o", "--output", default=None, help="checkpoint to write (default: SUPERNET.trained.pt)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output")
    p.add_argument("--force", action="store_true", help="overwrite an existing output and start over")
    add_setting_flags(p, TrainSettings, TRAIN_FLAGS)
    _validation_args(p)
    _parallel_args(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune the searched structure (optional; not in the GLoRA paper)")
    p.add_argument("checkpoint", metavar="SEARCHED", help="checkpoint from `glorac search` (or any, with --structure)")
    _data_args(p)
    p.add_argument("-o", "--output", default=None, help="checkpoint to write (default: SEARCHED.finetuned.pt)")
    p.add_argument("--structure", default=None,
                   help="structure JSON to fine-tune (default: the one the checkpoint has selected)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    add_setting_flags(p, TrainSettings, FINETUNE_FLAGS)
    _validation_args(p)
    _parallel_args(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("search", help="evolutionary structure search under a parameter budget")
    p.add_argument("checkpoint", metavar="SUPERNET", help="trained supernet checkpoint")
    _data_args(p)
    p.add_argument("-o", "--output", required=True, help="checkpoint with the chosen structure")
    p.add_argument("--budget", default=None, help="adapter parameter cap, e.g. 0.86M (default: the spec's)")
    p.add_argument("--structure", default=None, help="also write the chosen structure as JSON")
    p.add_argument("--plot", default=None, help="PNG: accuracy vs parameters, and the chosen structure")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    add_setting_flags(p, SearchSettings)
    _parallel_args(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="top-1 accuracy of a supernet structure or a folded model")
    p.add_argument("path", metavar="CHECKPOINT_OR_FOLDED")
    _data_args(p)
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    _structure_arg(p, "structure JSON for a supernet checkpoint (default: its selected one)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (on stderr)")
    p.set_defaults(func=cmd_eval)


    p = sub.add_parser("demo", help="the whole pipeline offline: EfficientNet-Lite0 on MNIST-5k")
    p.add_argument("--out", default="glorac-demo", help="directory for the demo's files")
    p.add_argument("--force", action="store_true", help="replace an existing demo directory")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run (tiny settings)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .report import print_demo

    print_demo(run_demo(args.out, force=args.force, quick=args.quick))
    return 0


def _structure_arg(p, help_text: str) -> None:
    p.add_argument("--structure", default=None, metavar="FILE", help=help_text)
    # The old spelling, kept for one release (a structure is what the file holds).
    p.add_argument("--choice", dest="old_choice", default=None, help=argparse.SUPPRESS)


def _structure_file(args):
    if args.old_choice is None:
        return args.structure
    print("glorac: --choice is deprecated and will be removed in the next release; use --structure",
          file=sys.stderr)
    return args.structure or args.old_choice


def _data_args(p) -> None:
    p.add_argument("--data", required=True, help="DIR (class folders or VTAB lists), FILE.jsonl/csv, "
                                                  "or builtin:mnist5k|digits|chatterbot")
    p.add_argument("--image-size", type=int, default=None, help="override the model's input size")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory for text data")
    p.add_argument("--on-corrupt", choices=("skip", "stop"), default="skip",
                   help="unreadable images: skip and count them (default) or stop")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")


def _validation_args(p) -> None:
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the validation on the val split at every epoch end")
    p.add_argument("--val-batches", type=_positive_int, default=None, metavar="N",
                   help="validate on the first N val batches only (default: the whole val split)")
    p.add_argument("--keep-best", action="store_true",
                   help="also write OUTPUT.best.pt whenever the val metric improves")


def _positive_int(text: str) -> int:
    """argparse type of a count: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return value


def _validation(args):
    from .trainer import Validation

    return Validation(enabled=args.validate, max_batches=args.val_batches, keep_best=args.keep_best)


def _print_best(out: Path, args) -> None:
    """Where --keep-best left the best epoch's checkpoint."""
    from .trainer import best_path

    if args.keep_best and best_path(out).exists():
        print(f"wrote {best_path(out)}: the epoch with the best val metric")


def _parallel_args(p) -> None:
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun, shard the frozen base over the processes with FSDP2 (adapters stay "
                        "whole on each); without it every process holds the whole model (DDP)")


def _setup(args):
    """This process's place in a torchrun group (or the single process), as the flags ask."""
    from .distributed import setup

    return setup(args.device, sharding="fsdp" if getattr(args, "fsdp", False) else "ddp")


def _data_options(args) -> dict:
    return {"image_size": args.image_size, "tokenizer_source": args.tokenizer, "on_corrupt": args.on_corrupt}


def cmd_train(args) -> int:
    from .distributed import teardown
    from .workflow import train_checkpoint

    from .trainer import TrainingInterrupted

    d = _setup(args)
    try:
        _, state, out = train_checkpoint(
            args.checkpoint, args.data, output=args.output, resume=args.resume, force=args.force, dist=d,
            overrides=setting_overrides(args, TrainSettings, TRAIN_FLAGS),
            data_options=_data_options(args), progress=args.progress, validation=_validation(args))
        if d.main:
            print(f"wrote {out} after {state.epochs_done} epoch(s), {state.step} steps")
            _print_best(out, args)
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(exc.output, exc.step, exc.total).with_hint(
            f"Resume it exactly where it stopped with: {_resume_command(args.argv)}") from None
    finally:
        teardown(d)
    return 0


def _resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted `glorac train` run."""
    import shlex

    kept = [a for a in argv if a != "--force"]
    return shlex.join(["glorac", *kept, *([] if "--resume" in kept else ["--resume"])])


def cmd_finetune(args) -> int:
    import time

    from .distributed import teardown
    from .workflow import finetune_checkpoint

    from .trainer import TrainingInterrupted

    d = _setup(args)
    try:
        start = time.perf_counter()
        supernet, state, out = finetune_checkpoint(
            args.checkpoint, args.data, output=args.output, structure=args.structure, force=args.force,
            dist=d, overrides=setting_overrides(args, TrainSettings, FINETUNE_FLAGS),
            data_options=_data_options(args), progress=args.progress, validation=_validation(args))
        seconds = time.perf_counter() - start
        if d.main:
            rates = [r["examples_per_s"] for r in state.history if "examples_per_s" in r]
            speed = f", {sum(rates) / len(rates):.1f} examples/s" if rates else ""
            print(f"wrote {out}: {supernet.structure_params():,} adapter parameters fine-tuned for "
                  f"{state.epochs_done} epoch(s), {state.step} steps in {seconds:.1f} s{speed}")
            _print_best(out, args)
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(exc.output, exc.step, exc.total).with_hint(
            "Fine-tuning does not resume: rerun the same command with --force to start it again.") from None
    finally:
        teardown(d)
    return 0


def cmd_search(args) -> int:
    from .distributed import teardown
    from .workflow import search_checkpoint

    d = _setup(args)
    try:
        supernet, result = search_checkpoint(
            args.checkpoint, args.data, output=args.output, budget=args.budget, structure_out=args.structure,
            plot=args.plot, force=args.force, dist=d, batch_size=args.batch_size,
            overrides=setting_overrides(args, SearchSettings),
            data_options=_data_options(args), progress=args.progress)
        if d.main:
            from .report import print_search
            from .evolution import describe_best

            print_search(result, task=supernet.history.search.task)
            print(describe_best(result, supernet.history.search.task))
            print(f"wrote {args.output}" + (f", {args.structure}" if args.structure else "")
                  + (f", {args.plot}" if args.plot else ""))
    finally:
        teardown(d)
    return 0


def _default_device() -> str:
    """--device left out: the GPU when there is one, as train and search choose (glorac.distributed)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_eval(args) -> int:
    from .workflow import evaluate_path

    result = evaluate_path(args.path, args.data, split=args.split, structure=_structure_file(args),
                           batch_size=args.batch_size, device=args.device or _default_device(),
                           data_options=_data_options(args), progress=args.progress)
    if args.json:
        print(json.dumps(result))
    else:
        if "perplexity" in result:  # a causal LM: per label token
            print(f"{args.path} ({result['what']}), {args.split} split: perplexity {result['perplexity']:.3f}, "
                  f"loss {result['loss']:.4f} per token over {result['n']:,} tokens, next-token accuracy "
                  f"{result['accuracy']:.4f}")
        else:
            print(f"{args.path} ({result['what']}), {args.split} split: top-1 {result['accuracy']:.4f} "
                  f"({result['correct']}/{result['n']}), loss {result['loss']:.4f}")
    return 0


def _spec_and_model_args(p) -> None:
    p.add_argument("spec", metavar="SPEC", help=".glora spec file")
    p.add_argument("--model", "-m", help="timm name, hf:DIR_OR_ID, or package.module:factory "
                                         "(default: the spec's `model` line)")
    p.add_argument("--num-classes", type=int, default=None, help="replace the classifier head")
    p.add_argument("--task", choices=("classification", "causal-lm"), default=None,
                   help="what to fine-tune for (default: as saved; a Hugging Face language model needs "
                        "causal-lm to keep its LM head)")
    p.add_argument("--weights", default=None, help="base weights (.safetensors or torch file)")
    p.add_argument("--pretrained", action="store_true", help="use the library's pretrained weights")


def _load(args, device: str = "cpu"):
    from .dsl import load_spec
    from .models import resolve_model

    spec = load_spec(Path(args.spec))
    name = args.model or spec.model
    if not name:
        raise ModelError(f"{args.spec} has no `model` line and no --model was given; "
                         "pass --model NAME (e.g. --model vit_base_patch16_224).")
    model, ref = resolve_model(name, num_classes=args.num_classes, pretrained=args.pretrained,
                               weights=None if device == "meta" else args.weights, device=device,
                               task=args.task)
    return spec, model, ref


def cmd_plan(args) -> int:
    from .graph.planner import plan

    from .models import new_head_to_train

    spec, model, ref = _load(args, device=args.device)
    result = plan(spec, model, extra_trained=new_head_to_train(model, ref, spec))
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        from .report import BaseSize, print_plan

        print_plan(result, title=f"{args.spec} on {ref.name}", base=BaseSize.of(model))
    _warn_frozen_head(model, result)
    return 0


def cmd_compile(args) -> int:
    from .checkpoint import save
    from .supernet import build_supernet

    from .safeio import check_output

    check_output(args.output, force=args.force)
    from .models import new_head_to_train

    spec, model, ref = _load(args)
    supernet = build_supernet(spec, model, seed=args.seed, extra_trained=new_head_to_train(model, ref, spec))
    supernet.model_ref = ref
    path = save(supernet, args.output, force=args.force)
    p = supernet.plan
    _warn_frozen_head(model, p)
    print(f"wrote {path}: {len(p.layers)} adapted layers ({p.front_end} front end), "
          f"{p.supernet_params:,} trainable parameters, base weights not stored")
    return 0


def _warn_frozen_head(model, plan) -> None:
    """A classifier whose head neither trains nor adapts ends training at chance: say so."""
    from .models import head_module
    from .planning import under
    from .stages import head_size

    head = head_module(model, head_size(model))
    if head is None or under(head + ".x", plan.trained) or any(lp.qualname == head for lp in plan.layers):
        return
    print(f"glorac: warning: the task head `{head}` stays frozen (the spec neither trains nor adapts it), so a "
          f"new task cannot be learnt; add `train \"{head}\"` to the spec, or compile with --num-classes N, "
          "which trains the new head by default.", file=sys.stderr)


def cmd_fold(args) -> int:
    from .folding.export import check_fold_output, fold_checkpoint
    from .models import quiet_transformers

    check_fold_output(args.checkpoint, args.output, force=args.force)
    # Fold rebuilds the base and reloads what it wrote to verify it: transformers' bars and
    # load report would repeat what compile showed (glorac prints its own fold report).
    with quiet_transformers():
        result = fold_checkpoint(args.checkpoint, args.output, structure=_structure_file(args),
                                 force=args.force, verify=args.verify)
    from .report import print_fold_report

    print_fold_report(result.report)
    print(f"wrote {result.output} (+ {result.sidecar.name}): loads into the stock "
          f"{result.model_name} with strict=True")
    return 0
