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
