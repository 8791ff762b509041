"""Set-up shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import torch


def pick_device(args) -> tuple[torch.device, bool]:
    """The benchmark's device (cuda when available) and CPU thread count from ``args``."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    if args.quick and not gpu and args.threads is None:
        args.threads = 1  # a smoke run should not depend on how busy the other cores are
    if args.threads:
        torch.set_num_threads(args.threads)
    return device, gpu


#: --optimizer choices: torch's AdamW implementations. `fused` is what glorac's trainer
#: uses (glorac.trainer.adamw) and the Hugging Face Trainer's default (adamw_torch_fused).
OPTIMIZERS = ("fused", "foreach", "loop")


def add_optimizer_arg(ap) -> None:
    ap.add_argument("--optimizer", choices=OPTIMIZERS, default="fused",
                    help="AdamW implementation, the same for every variant (default: fused, as glorac's "
                         "trainer and the Hugging Face Trainer use)")


def adamw(params, kind: str, lr: float = 1e-4) -> torch.optim.AdamW:
    """AdamW over ``params`` in one implementation (the same for every variant of a run)."""
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[kind]
    return torch.optim.AdamW(params, lr=lr, **options)
