"""Evolutionary structure search (pure Python; plots load matplotlib on first use)."""

from __future__ import annotations

from .evolution import Candidate, SearchError, SearchResult, evolve, structure_params

_LAZY = {"plot_search": "glorac.search.plots", "pareto_front": "glorac.search.plots"}

__all__ = ["Candidate", "SearchError", "SearchResult", "evolve", "structure_params", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glorac.search' has no attribute {name!r}")
