"""Evolutionary structure search under a parameter budget (DESIGN.md §2), pure Python.

The paper's procedure: a random initial population, then per generation keep the top
``parents`` by fitness and add ``mutations`` children (a random parent with every
(layer, tensor) choice re-drawn with probability ``mutation_prob``) and ``crossovers``
children (each (layer, tensor) from one of two distinct parents with probability 0.5).
Fitness is whatever ``evaluate`` says (val accuracy of the supernet as it is); it is
called once per generation with every new structure, so the caller decides how to batch
or distribute the work.

Invariants the caller can rely on:

* a structure over the budget is never evaluated nor returned;
* no structure is evaluated twice (a cache keyed by the per-slot kind indices);
* the same inputs and ``settings.seed`` give the same result (one ``random.Random``,
  layers in mapping order, tensors in A..E order, no set iteration anywhere);
* ``settings.fill = False`` draws exactly the structures the paper's procedure drew
  before fill existed (pinned by tests/test_search_fill.py).

Internally a structure is a *genome*: one index per (layer, tensor) slot into that
slot's de-duplicated kinds, so the canonical key is the genome itself. Slots with a
single kind (``C``/``D``/``E`` of bias-free layers, say) never consume random numbers.

Budget repair. When the budget is tight almost every random draw is over it, so a draw
that does not fit is *repaired* instead of rejected: pick a random slot that can still
get cheaper (weighted by its cost above its cheapest kind), replace its kind by a random
strictly cheaper kind of the same tensor, repeat until the structure fits. Every step
lowers the count, so this ends; it ends inside the budget because the minimal structure
fits (checked up front). Weighting by excess cost spends the cuts where the parameters
are, so cheap choices (scalars, vectors) survive. Mutation children are repaired only in
the slots the mutation re-drew (their parent fits, so setting those slots to their
cheapest kind always fits): the child stays a child of its parent. Crossover children
may touch any slot.

Budget fill (``settings.fill``, default on). A repaired random draw spends about half of a
tight budget, so "the same budget as LoRA" would not buy the same capacity. With fill,
a structure that fits is then *grown*: pick a random slot (uniformly) that has a strictly
richer kind whose upgrade still fits, upgrade it to a random such kind, repeat until no
upgrade fits. Every step raises the count and stays within the budget, so this ends, and
ends with less room left than the cheapest upgrade of any slot it may change (on the
paper space, scalars make that a few parameters: initial populations measured at 99.9%
of a budget of 40% of the largest structure, against 71% without fill). Like repair it
is confined to the slots a child
is allowed to change: all free slots for the initial population, the re-drawn slots for a
mutation child, the slots where the two parents differ for a crossover child (what both
parents agree on is inherited). ``fill = false`` skips the step and consumes no random
numbers: the paper's procedure, the same structures for the same seed as before fill
existed. Without a budget, or with one that the largest structure fits (it admits the
same structures), fill does nothing. Fill narrows the search to structures that spend
the budget: the closer the budget is to the largest structure, the fewer such structures
there are, and a search may then stop early for want of new ones.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from .errors import GloraError
from .ir import TENSORS, Kind, LayerChoice, SearchSettings, Space, Structure
from .kinds import Geometry, choice_param_count, param_count
from .planning import budget_problem

#: Draws allowed per wanted child (or initial member) before a generation settles for
#: fewer: duplicates are re-drawn, but a nearly exhausted space must not hang the search.
MAX_TRIES_PER_CHILD = 20

Genome = tuple[int, ...]


class SearchError(GloraError):
    """The search cannot run: budget below the smallest structure, missing geometry, a bad evaluator."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Candidate(_Frozen):
    """One evaluated structure. ``params`` counts what the budget counts (incl. ``extra_params``)."""

    structure: Structure
    params: int
    fitness: float
    generation: int


class SearchResult(_Frozen):
    """Outcome of :func:`evolve`.

    ``evaluated``: every structure evaluated, once each, in evaluation order.
    ``top``: the best ``settings.parents`` candidates, best first (``top[0] is best``).
    ``min_params``: the smallest structure's count (what the budget had to allow).
    ``extra_params``: trained parameters counted in every candidate's ``params``.
    """

    best: Candidate
    evaluated: tuple[Candidate, ...]
    top: tuple[Candidate, ...]
    budget: Optional[int]
    settings: SearchSettings
    min_params: int
    extra_params: int = 0


def describe_best(result: SearchResult, task: str = "classification") -> str:
    """One line: the best's fitness and its share of the budget (did the search use what it was given?)."""
    best = result.best
    counted = (f"{best.params:,} params (incl. {result.extra_params:,} trained)" if result.extra_params
               else f"{best.params:,} adapter params")
    # A language model's fitness is minus its val token loss (glorac.objectives.fitness).
    score = f"val loss {-best.fitness:.4f}" if task == "causal-lm" else f"val acc {best.fitness:.4f}"
    if result.budget is None:
        return f"best: {score}, {counted} (no budget)"
    return (f"best: {score}, {counted} of a {result.budget:,} budget "
            f"({100 * best.params / result.budget:.1f}%)")


def structure_params(structure: Structure, geoms: Mapping[str, Geometry], extra: int = 0) -> int:
    """Exact number of adapter values ``structure`` reads, plus ``extra`` (e.g. a trained head)."""
    missing = [name for name in structure.layers if name not in geoms]
    if missing:
        raise SearchError(f"no geometry for layer(s) {', '.join(missing[:5])}")
    return extra + sum(choice_param_count(choice, geoms[name]) for name, choice in structure.layers.items())


# ---------------------------------------------------------------------- genome codec
@dataclass(frozen=True)
class _Codec:
    """Slots (layer-major, tensors A..E), their kinds and parameter costs."""

    names: tuple[str, ...]
    kinds: tuple[tuple[Kind, ...], ...]
    costs: tuple[tuple[int, ...], ...]
    free: tuple[int, ...]  # slots with more than one kind: the only ones that vary
    extra: int
    min_cost: tuple[int, ...] = ()
    # step_up[i][g]: cost of slot i's cheapest strictly richer kind minus kind g's (None: g is the richest)
    step_up: tuple[tuple[Optional[int], ...], ...] = ()
    _choices: dict = field(default_factory=dict, compare=False, repr=False)  # (layer, genes) → LayerChoice

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_cost", tuple(min(c) for c in self.costs))
        object.__setattr__(self, "step_up", tuple(tuple(_step_up(c, own) for own in c) for c in self.costs))

    @classmethod
    def build(cls, spaces: Mapping[str, Space], geoms: Mapping[str, Geometry], extra: int) -> "_Codec":
        if not spaces:
            raise SearchError("nothing to search: no adapted layers")
        missing = [name for name in spaces if name not in geoms]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise SearchError(f"no geometry for layer(s) {', '.join(missing[:5])}{more}")
        kinds, costs = [], []
        for name, space in spaces.items():
            for tensor in TENSORS:
                options = tuple(dict.fromkeys(space.tensor(tensor)))  # de-duplicate, keep order
                try:
                    costs.append(tuple(param_count(tensor, k, geoms[name]) for k in options))
                except ValueError as exc:
                    raise SearchError(f"layer {name}: {exc}") from None
                kinds.append(options)
        free = tuple(i for i, options in enumerate(kinds) if len(options) > 1)
        return cls(tuple(spaces), tuple(kinds), tuple(costs), free, extra)

    @property
    def min_params(self) -> int:
        return self.extra + sum(self.min_cost)

    @property
    def max_params(self) -> int:
        return self.extra + sum(max(c) for c in self.costs)

    def size(self) -> int:
        """Number of distinct structures, budget ignored."""
        return math.prod(len(self.kinds[i]) for i in self.free)

    def params(self, genome: Sequence[int]) -> int:
        return self.extra + sum(c[g] for c, g in zip(self.costs, genome))

    def structure(self, genome: Genome) -> Structure:
        layers, n = {}, len(TENSORS)
        for li, name in enumerate(self.names):
            key = (li, tuple(genome[li * n:(li + 1) * n]))
            choice = self._choices.get(key)
            if choice is None:
                picks = {t: self.kinds[li * n + ti][g] for ti, (t, g) in enumerate(zip(TENSORS, key[1]))}
                choice = self._choices[key] = LayerChoice(**picks)
            layers[name] = choice
        # Every LayerChoice above is validated and the names are strings: skip re-validation.
        return Structure.model_construct(layers=layers)

    def random(self, rng: random.Random) -> list[int]:
        genome = [0] * len(self.kinds)
        for i in self.free:
            genome[i] = rng.randrange(len(self.kinds[i]))
        return genome

    def repair(self, genome: list[int], budget: Optional[int], rng: random.Random,
               slots: Sequence[int]) -> list[int]:
        """Downgrade random ``slots`` to random cheaper kinds until the genome fits ``budget``.

        A slot is picked with probability proportional to what it costs above its cheapest
        kind, so the parameters go where they are (a lora on a wide layer) and cheap
        choices (a scalar) survive; picking uniformly would knock most scalars and vectors
        down to none before the few expensive slots, starving tight budgets of diversity.
        """
        if budget is None:
            return genome
        total = self.params(genome)
        open_ = [i for i in slots if self.costs[i][genome[i]] > self.min_cost[i]]
        excess = [self.costs[i][genome[i]] - self.min_cost[i] for i in open_]
        while total > budget:
            if not open_:  # callers only pass slots whose minimum fits; never reached
                raise AssertionError("budget repair ran out of slots to downgrade")
            j = rng.choices(range(len(open_)), weights=excess)[0]
            i = open_[j]
            cost = self.costs[i][genome[i]]
            genome[i] = rng.choice([k for k, c in enumerate(self.costs[i]) if c < cost])
            total += self.costs[i][genome[i]] - cost
            excess[j] = self.costs[i][genome[i]] - self.min_cost[i]
            if not excess[j]:
                open_[j], excess[j] = open_[-1], excess[-1]
                open_.pop()
                excess.pop()
        return genome

    def grow(self, genome: list[int], budget: Optional[int], rng: random.Random,
             slots: Sequence[int]) -> list[int]:
        """Upgrade random ``slots`` to random richer kinds while an upgrade still fits ``budget``.

        ``genome`` must fit already. The room left only shrinks, so a slot whose cheapest
        upgrade no longer fits never will again (unless it is itself upgraded): such slots
        are dropped when picked, which keeps each step O(kinds) and the pick uniform over
        the slots that can still grow.
        """
        if budget is None:
            return genome
        room = budget - self.params(genome)
        open_ = [i for i in slots if self._fits_up(i, genome[i], room)]
        while open_:
            j = rng.randrange(len(open_))
            i = open_[j]
            if not self._fits_up(i, genome[i], room):
                open_[j] = open_[-1]
                open_.pop()
                continue
            cost = self.costs[i][genome[i]]
            genome[i] = rng.choice([k for k, c in enumerate(self.costs[i]) if cost < c <= cost + room])
            room -= self.costs[i][genome[i]] - cost
        return genome

    def _fits_up(self, slot: int, gene: int, room: int) -> bool:
        step = self.step_up[slot][gene]
        return step is not None and step <= room


def _step_up(costs: Sequence[int], own: int) -> Optional[int]:
    richer = [c - own for c in costs if c > own]
    return min(richer) if richer else None


# ---------------------------------------------------------------------- the search
class _State:
    """Evaluation cache and ranking; one per :func:`evolve` call."""

    def __init__(self, codec: _Codec, evaluate: Callable[[list[Structure]], list[float]]):
        self.codec, self.evaluate = codec, evaluate
        self.seen: dict[Genome, int] = {}  # genome → index in evaluated
        self.evaluated: list[Candidate] = []

    def rank_key(self, genome: Genome) -> tuple[float, int, int]:
        order = self.seen[genome]
        cand = self.evaluated[order]
        return (-cand.fitness, cand.params, order)

    def run(self, genomes: list[Genome], generation: int) -> None:
        structures = [self.codec.structure(g) for g in genomes]
        fitness = list(self.evaluate(structures))
        if len(fitness) != len(structures):
            raise SearchError(f"evaluate returned {len(fitness)} fitness values for {len(structures)} structures")
        for genome, structure, value in zip(genomes, structures, fitness):
            value = float(value)
            if math.isnan(value):
                raise SearchError(f"evaluate returned NaN fitness for structure {len(self.evaluated)}")
            self.seen[genome] = len(self.evaluated)
            self.evaluated.append(Candidate(structure=structure, params=self.codec.params(genome),
                                            fitness=value, generation=generation))


def _initial_population(codec: _Codec, budget: Optional[int], n: int, rng: random.Random,
                        fill: bool) -> tuple[list[Genome], bool]:
    """``n`` distinct random structures within budget (grown to it with ``fill``); True when that is the whole space."""
    if codec.size() <= n:  # tiny space: take all of it, in random order
        genomes = []
        for values in itertools.product(*(range(len(codec.kinds[i])) for i in codec.free)):
            genome = [0] * len(codec.kinds)
            for i, v in zip(codec.free, values):
                genome[i] = v
            if budget is None or codec.params(genome) <= budget:
                genomes.append(tuple(genome))
        rng.shuffle(genomes)
        return genomes, True
    found: dict[Genome, None] = {}
    for _ in range(n * MAX_TRIES_PER_CHILD):
        if len(found) == n:
            break
        genome = codec.repair(codec.random(rng), budget, rng, codec.free)
        if fill:
            codec.grow(genome, budget, rng, codec.free)
        found.setdefault(tuple(genome), None)
    return list(found), False


def _mutate(codec: _Codec, parent: Genome, prob: float, budget: Optional[int], rng: random.Random,
            fill: bool) -> Genome:
    child, redrawn = list(parent), []
    for i in codec.free:
        if rng.random() < prob:
            child[i] = rng.randrange(len(codec.kinds[i]))
            redrawn.append(i)
    # The parent fits, so its re-drawn slots at their cheapest always fit too.
    codec.repair(child, budget, rng, redrawn)
    if fill:
        codec.grow(child, budget, rng, redrawn)
    return tuple(child)


def _crossover(codec: _Codec, a: Genome, b: Genome, budget: Optional[int], rng: random.Random,
               fill: bool) -> Genome:
    child = list(a)
    for i in codec.free:
        if rng.random() >= 0.5:
            child[i] = b[i]
    codec.repair(child, budget, rng, codec.free)
    if fill:  # grow only where the parents disagree: what both chose is inherited
        codec.grow(child, budget, rng, [i for i in codec.free if a[i] != b[i]])
    return tuple(child)


def _children(codec: _Codec, parents: list[Genome], settings: SearchSettings, budget: Optional[int],
              rng: random.Random, seen: Mapping[Genome, int], fill: bool) -> list[Genome]:
    """New, unseen, in-budget children: mutations first, then crossovers (bounded re-draws)."""
    out: dict[Genome, None] = {}

    def breed(count: int, make: Callable[[], Genome]) -> None:
        wanted, misses = len(out) + count, 0
        # Bounded by consecutive misses, not by count: once (nearly) every structure within
        # budget has been seen, a huge count must not turn into a near-endless loop.
        while len(out) < wanted and misses < MAX_TRIES_PER_CHILD * 5:
            child = make()
            if child in seen or child in out:
                misses += 1
            else:
                out[child] = None
                misses = 0

    breed(settings.mutations,
          lambda: _mutate(codec, rng.choice(parents), settings.mutation_prob, budget, rng, fill))
    if len(parents) >= 2:
        breed(settings.crossovers, lambda: _crossover(codec, *rng.sample(parents, 2), budget, rng, fill))
    return list(out)


def evolve(
    spaces: Mapping[str, Space],
    geoms: Mapping[str, Geometry],
    *,
    budget: Optional[int],
    settings: SearchSettings,
    evaluate: Callable[[list[Structure]], list[float]],
    extra_params: int = 0,
    on_generation: Optional[Callable[[int, list[Candidate]], None]] = None,
) -> SearchResult:
    """Search per-layer structures maximising ``evaluate`` with at most ``budget`` parameters.

    ``budget`` counts :func:`structure_params` plus ``extra_params`` (None: no cap).
    ``on_generation(g, population)`` is called after generation g (0 = the initial
    population) with that generation's population ranked best first (its parents and
    children; ``population[0]`` is the best so far). Stops early when a generation finds
    no new structure (the space within budget is exhausted).
    """
    codec = _Codec.build(spaces, geoms, extra_params)
    problem = None if budget is None else budget_problem(codec.min_params, budget, extra_params)
    if problem:
        raise SearchError(problem)
    rng = random.Random(settings.seed)
    state = _State(codec, evaluate)

    # A budget that caps nothing admits what no budget admits: the search must not differ.
    fill = settings.fill and budget is not None and budget < codec.max_params
    population, exhausted = _initial_population(codec, budget, settings.population, rng, fill)
    state.run(population, 0)
    population.sort(key=state.rank_key)
    if on_generation:
        on_generation(0, [state.evaluated[state.seen[g]] for g in population])

    for generation in range(1, settings.generations + 1):
        parents = population[: settings.parents]
        exhausted = exhausted or len(state.seen) >= codec.size()
        children = [] if exhausted else _children(codec, parents, settings, budget, rng, state.seen, fill)
        if not children:
            break
        state.run(children, generation)
        population = sorted(parents + children, key=state.rank_key)
        if on_generation:
            on_generation(generation, [state.evaluated[state.seen[g]] for g in population])

    top = tuple(state.evaluated[state.seen[g]] for g in population[: settings.parents])
    return SearchResult(best=top[0], evaluated=tuple(state.evaluated), top=top, budget=budget,
                        settings=settings, min_params=codec.min_params, extra_params=extra_params)
