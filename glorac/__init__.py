"""glorac: a compiler for GLoRA (Generalized LoRA) adapters.

Pipeline (each stage a public function): ``load_spec`` → ``plan`` → ``build_supernet``
→ ``train`` → ``search`` → ``fold`` (→ ``evaluate``). The spec stages never import torch, so ``glorac check`` stays fast;
the torch-side API is imported on first use.
"""

from __future__ import annotations

from .dsl import load_spec, loads_spec
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
from .ir import Kind, LayerChoice, Space, Spec, Structure
from .version import __version__

_LAZY = {
    "plan": "glorac.graph.planner",
    "build_supernet": "glorac.supernet",
    "compile": "glorac.supernet",  # deprecated name of build_supernet
    "Supernet": "glorac.supernet",
    "StructureSampler": "glorac.sampling",
    "train": "glorac.stages",
    "search": "glorac.stages",
    "evaluate": "glorac.stages",
    "save": "glorac.checkpoint",
    "save_adapters": "glorac.checkpoint",
    "load": "glorac.checkpoint",
    "fold": "glorac.folding.model",
    "fold_state": "glorac.folding.core",
    "to_peft": "glorac.peft_export",
    "from_peft": "glorac.peft_import",
}

__all__ = [
    "load_spec",
    "loads_spec",
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
    "Structure",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glorac' has no attribute {name!r}")
