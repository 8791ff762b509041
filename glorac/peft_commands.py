"""``glorac to-peft`` and ``glorac from-peft``: PEFT LoRA adapter interchange (docs/peft.md).

Arguments and outputs are checked before any model is built; the work is done by
:func:`glorac.peft_export.to_peft` and :func:`glorac.peft_import.from_peft`.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError


def register(sub) -> None:
    p = sub.add_parser("to-peft", help="write a checkpoint's structure as a PEFT LoRA adapter directory")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="supernet checkpoint (.pt, or a glorac adapter directory)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="adapter directory to write (PeftModel.from_pretrained(base, DIR) loads it)")
    p.add_argument("--structure", default=None, metavar="FILE",
                   help="structure JSON to export (default: the one the checkpoint has selected)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_to_peft)

    p = sub.add_parser("from-peft", help="import a PEFT LoRA adapter directory as a supernet checkpoint")
    p.add_argument("adapter", metavar="ADAPTER_DIR", help="directory PeftModel.save_pretrained wrote")
    p.add_argument("--model", "-m", required=True,
                   help="the adapter's base model: hf:DIR_OR_ID, a timm name or package.module:factory")
    p.add_argument("-o", "--output", required=True, metavar="CHECKPOINT", help="checkpoint to write (.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_from_peft)


def cmd_to_peft(args) -> int:
    from .checkpoint import ADAPTER_CONFIG, load
    from .peft_export import to_peft
    from .safeio import check_output
    from .structure_files import read_structure

    check_output(args.output, force=args.force, what="adapter directory", directory=True)
    source = Path(args.checkpoint)
    if not (source.is_file() or (source / ADAPTER_CONFIG).is_file()):
        raise CheckpointError(f"checkpoint {source} does not exist (it is neither a .pt file nor a directory "
                              "from glorac.save_adapters); check the path.")
    structure = read_structure(args.structure) if args.structure else None
    supernet = load(args.checkpoint)
    out = to_peft(supernet, args.output, structure=structure, force=args.force)
    print(f"wrote {out}: a PEFT LoRA adapter (load it with PeftModel.from_pretrained(base_model, {str(out)!r}))")
    return 0


def cmd_from_peft(args) -> int:
    from .checkpoint import save
    from .peft_import import from_peft, read_adapter_config
    from .safeio import check_output

    check_output(args.output, force=args.force, what="checkpoint")
    read_adapter_config(Path(args.adapter))  # a wrong directory is refused before the model is built
    supernet = from_peft(args.adapter, args.model)
    path = save(supernet, args.output, force=args.force)
    print(f"wrote {path}: {len(supernet.plan.layers)} LoRA layer(s) as B = lora(r), "
          f"{supernet.structure_params():,} adapter parameters; deploy it with `glorac fold {path} -o OUT`")
    return 0
