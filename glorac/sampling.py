"""Per-step structure sampling for one-shot supernet training (DESIGN.md §3).

The structures of step ``s`` are a pure function of ``(seed, s)``: every rank draws the
same ones without communicating, a resumed run continues the exact sequence, and nothing
random ever happens inside a forward pass.

Two rules (``training { sampling = ... }``):

* ``uniform`` (the paper): one structure per step, each (layer, tensor) kind drawn
  uniformly from its space.
* ``sandwich`` (slimmable-network practice): the uniform draw plus the largest and the
  smallest structure, their gradients summed into one optimiser step. The largest one
  trains every shared tensor at its full rank each step, which the uniform rule reaches
  for one layer in ~|space| steps; the smallest keeps the cheap kinds honest.
"""

from __future__ import annotations

import random
from typing import Mapping, Optional

from .ir import LayerChoice, Space, Structure
from .kinds import Geometry, max_choice, min_choice

SAMPLING_RULES: tuple[str, ...] = ("uniform", "sandwich")


class StructureSampler:
    def __init__(self, spaces: Mapping[str, Space], seed: int = 0, *, rule: str = "uniform",
                 geoms: Optional[Mapping[str, Geometry]] = None):
        if rule not in SAMPLING_RULES:
            raise ValueError(f"unknown sampling rule {rule!r}; expected one of {SAMPLING_RULES}")
        if rule == "sandwich" and geoms is None:
            raise ValueError("the sandwich rule needs each layer's geometry (to know its largest structure)")
        self.spaces = dict(spaces)
        self.seed, self.rule = seed, rule
        self._options = {n: [(t, ks) for t, ks in s.items()] for n, s in self.spaces.items()}
        self._extremes: tuple[Structure, ...] = ()
        if rule == "sandwich":
            self._extremes = tuple(
                Structure(layers={n: pick(s, geoms[n]) for n, s in self.spaces.items()})
                for pick in (max_choice, min_choice))

    @property
    def fixed(self) -> bool:
        """True when every layer has exactly one structure (plain GLoRA fine-tuning)."""
        return all(s.size() == 1 for s in self.spaces.values())

    def __call__(self, step: int) -> Structure:
        """The uniformly drawn structure of ``step``."""
        # Seeding by (seed, step) rather than drawing from one long stream makes the
        # draw independent of how many steps ran before in this process.
        rng = random.Random(f"glorac:{self.seed}:{step}")
        return Structure(layers={
            name: LayerChoice(**{t: (ks[0] if len(ks) == 1 else rng.choice(ks)) for t, ks in opts})
            for name, opts in self._options.items()
        })

    def step_structures(self, step: int) -> list[Structure]:
        """Every structure whose gradients go into the optimiser step ``step`` (distinct)."""
        if self.fixed:
            return [self(step)]
        drawn = [self(step), *self._extremes]
        return [s for i, s in enumerate(drawn) if s not in drawn[:i]]
