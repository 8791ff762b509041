"""Torch-side CLI commands (plan, compile, fold, ...). Registered into the main parser."""

from __future__ import annotations


def register(sub) -> None:
    """Add the torch-side subcommands; each imports torch only when it runs."""
