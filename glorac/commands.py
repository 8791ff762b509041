"""Torch-side CLI commands (plan, compile, ...), registered into the main parser.

torch is imported inside each command, so `glorac check` and `glorac fmt` stay fast.
"""

from __future__ import annotations

import json
import sys

from .errors import ModelError


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
    p.add_argument("--choice", default=None, help="structure JSON (from `glorac search`)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the numeric check of folded vs adapted outputs")
    p.set_defaults(func=cmd_fold)


def _spec_and_model_args(p) -> None:
    p.add_argument("spec", metavar="SPEC", help=".glora spec file")
    p.add_argument("--model", "-m", help="timm name, hf:DIR_OR_ID, or package.module:factory "
                                         "(default: the spec's `model` line)")
    p.add_argument("--num-classes", type=int, default=None, help="replace the classifier head")
    p.add_argument("--weights", default=None, help="base weights (.safetensors or torch file)")
    p.add_argument("--pretrained", action="store_true", help="use the library's pretrained weights")


def _load(args, device: str = "cpu"):
    from .dsl import load_spec
    from .models import resolve_model

    spec = load_spec(args.spec)
    name = args.model or spec.model
    if not name:
        raise ModelError(f"{args.spec} has no `model` line and no --model was given; "
                         "pass --model NAME (e.g. --model vit_base_patch16_224).")
    model, ref = resolve_model(name, num_classes=args.num_classes, pretrained=args.pretrained,
                               weights=None if device == "meta" else args.weights, device=device)
    return spec, model, ref


def cmd_plan(args) -> int:
    from .graph.plan import plan

    spec, model, ref = _load(args, device=args.device)
    result = plan(spec, model)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        from .report import print_plan

        print_plan(result, title=f"{args.spec} on {ref.name}")
    return 0


def cmd_compile(args) -> int:
    from .checkpoint import save
    from .supernet import compile as compile_supernet

    spec, model, ref = _load(args)
    supernet = compile_supernet(spec, model, seed=args.seed)
    supernet.model_ref = ref
    path = save(supernet, args.output, force=args.force)
    p = supernet.plan
    print(f"wrote {path}: {len(p.layers)} adapted layers ({p.front_end} front end), "
          f"{p.supernet_params:,} trainable parameters, base weights not stored")
    return 0


def cmd_fold(args) -> int:
    from .export import check_fold_output, fold_checkpoint

    check_fold_output(args.checkpoint, args.output, force=args.force)
    result = fold_checkpoint(args.checkpoint, args.output, choice=args.choice, force=args.force,
                             verify=args.verify)
    from .report import print_fold_report

    print_fold_report(result.report)
    print(f"wrote {result.output} (+ {result.sidecar.name}): loads into the stock "
          f"{result.model_name} with strict=True")
    return 0
