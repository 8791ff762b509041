"""glorac: a compiler for GLoRA (Generalized LoRA) adapters.

Pipeline (each stage a public function): ``load_spec`` → ``plan`` → ``compile`` →
train/search → ``fold``. The spec stages never import torch, so ``glorac check`` stays fast;
the torch-side API is imported on first use.
"""

from __future__ import annotations

from .dsl import load_spec
from .errors import (
    CheckpointError,
    DataError,
    Diagnostic,
    FoldError,
    GloraError,
    ModelError,
    PlanError,
    SpecError,
)
from .ir import Kind, LayerChoice, Space, Spec

__version__ = "0.1.0"

_LAZY = {
    "plan": "glorac.graph.plan",
    "compile": "glorac.supernet",
    "Supernet": "glorac.supernet",
    "save": "glorac.checkpoint",
    "load": "glorac.checkpoint",
    "fold": "glorac.graph.fold",
}

__all__ = [
    "load_spec",
    "GloraError",
    "SpecError",
    "CheckpointError",
    "ModelError",
    "PlanError",
    "FoldError",
    "DataError",
    "Diagnostic",
    "Kind",
    "LayerChoice",
    "Space",
    "Spec",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glorac' has no attribute {name!r}")
