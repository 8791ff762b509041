"""Per-step structure sampling for one-shot supernet training (DESIGN.md §3).

The structure of step ``s`` is a pure function of ``(seed, s)``: every rank draws the
same one without communicating, a resumed run continues the exact sequence, and nothing
random ever happens inside a forward pass.
"""

from __future__ import annotations

import random
from typing import Mapping

from .ir import LayerChoice, Space, Structure


class StructureSampler:
    def __init__(self, spaces: Mapping[str, Space], seed: int = 0):
        self.spaces = dict(spaces)
        self.seed = seed
        self._options = {n: [(t, ks) for t, ks in s.items()] for n, s in self.spaces.items()}

    @property
    def fixed(self) -> bool:
        """True when every layer has exactly one structure (plain GLoRA fine-tuning)."""
        return all(s.size() == 1 for s in self.spaces.values())

    def __call__(self, step: int) -> Structure:
        # Seeding by (seed, step) rather than drawing from one long stream makes the
        # draw independent of how many steps ran before in this process.
        rng = random.Random(f"glorac:{self.seed}:{step}")
        return Structure(layers={
            name: LayerChoice(**{t: (ks[0] if len(ks) == 1 else rng.choice(ks)) for t, ks in opts})
            for name, opts in self._options.items()
        })
