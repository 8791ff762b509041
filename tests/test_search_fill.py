"""glorac.evolution: budget fill (``search { fill = ... }``) and the best's share of the budget."""

from __future__ import annotations

import hashlib
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import glorac
from glorac.dsl import analyze_text
from glorac.ir import TENSORS, SearchSettings, Structure
from glorac.kinds import Geometry, param_count
from glorac.evolution import evolve
from glorac.evolution import _Codec, _crossover, describe_best
from tests.test_search_core import SMALL, Recorder, key, paper_space, similarity, spaces_st, geoms_st, vit_like


def mixed(n: int = 30, rank: int = 8):
    """``n`` layers of the paper space on ViT-like Linears and 1×1, depthwise and 3×3 convs."""
    shapes = [Geometry.linear(768, 2304), Geometry.linear(768, 768), Geometry.linear(768, 3072),
              Geometry.linear(3072, 768), Geometry.conv2d(32, 96, 1), Geometry.conv2d(96, 96, 3, groups=96),
              Geometry.conv2d(64, 128, 3)]
    spaces = {f"l{i}": paper_space(rank) for i in range(n)}
    geoms = {f"l{i}": shapes[i % len(shapes)] for i in range(n)}
    return spaces, geoms


def max_params(spaces, geoms) -> int:
    return sum(max(param_count(t, k, geoms[n]) for k in spaces[n].tensor(t)) for n in spaces for t in TENSORS)


def pseudo_fitness(s: Structure) -> float:
    """A fixed pseudo-random fitness (the same in every process, unlike ``hash``)."""
    return int(hashlib.sha256(repr(key(s)).encode()).hexdigest()[:8], 16) / 2**32


def run_digest(res) -> str:
    h = hashlib.sha256()
    for c in res.evaluated:
        h.update(f"{key(c.structure)}|{c.params}|{c.generation}|{c.fitness}\n".encode())
    return h.hexdigest()[:16]


# Digests of every evaluated structure (in order, with params, generation and fitness),
# computed with the search as it was before fill existed: fill=false is that procedure.
PAPER_RUNS = [
    ("vit3", lambda: vit_like(3, width=32), 3000, SMALL.model_copy(update={"seed": 5}), "ce38390a159660ac"),
    ("mixed", mixed, 250_000, SearchSettings(population=20, generations=3, parents=5, mutations=10, crossovers=10,
                                             seed=1), "038251c03d5dbc8a"),
    ("tight", lambda: vit_like(12), 2304, SearchSettings(population=16, generations=4, parents=4, mutations=8,
                                                         crossovers=8, seed=2), "b5466c532763e5f1"),
]


@pytest.mark.parametrize("name, make, budget, settings_, digest", PAPER_RUNS, ids=[r[0] for r in PAPER_RUNS])
def test_fill_false_reproduces_the_paper_procedure(name, make, budget, settings_, digest):
    spaces, geoms = make()
    res = evolve(spaces, geoms, budget=budget, settings=settings_.model_copy(update={"fill": False}),
                 evaluate=lambda ss: [pseudo_fitness(s) for s in ss])
    assert run_digest(res) == digest


def test_fill_spends_the_budget_from_the_first_generation():
    spaces, geoms = mixed()
    budget = int(0.4 * max_params(spaces, geoms))
    for seed in range(3):
        runs = {}
        for fill in (False, True):
            ev = Recorder(pseudo_fitness)
            res = evolve(spaces, geoms, budget=budget, evaluate=ev,
                         settings=SearchSettings(population=50, generations=3, seed=seed, fill=fill))
            assert max(c.params for c in res.evaluated) <= budget
            runs[fill] = [c.params for c in res.evaluated if c.generation == 0]
            assert len(runs[fill]) == 50
        assert statistics.mean(runs[True]) >= 0.9 * budget
        assert min(runs[True]) >= 0.9 * budget
        assert statistics.mean(runs[True]) > statistics.mean(runs[False])


def test_filled_children_stay_near_the_budget():
    spaces, geoms = mixed()
    budget = int(0.1 * max_params(spaces, geoms))
    res = evolve(spaces, geoms, budget=budget, evaluate=lambda ss: [pseudo_fitness(s) for s in ss],
                 settings=SearchSettings(population=30, generations=4, parents=8, mutations=15, crossovers=15))
    children = [c.params for c in res.evaluated if c.generation > 0]
    assert children and max(children) <= budget and statistics.mean(children) >= 0.9 * budget


def test_fill_is_deterministic_and_seeded():
    spaces, geoms = mixed(12)
    budget = int(0.3 * max_params(spaces, geoms))

    def run(seed):
        return evolve(spaces, geoms, budget=budget, evaluate=lambda ss: [pseudo_fitness(s) for s in ss],
                      settings=SMALL.model_copy(update={"seed": seed}))

    a, b, c = run(4), run(4), run(5)
    assert a == b and run_digest(a) == run_digest(b)
    assert run_digest(a) != run_digest(c)


def test_without_a_budget_fill_changes_nothing():
    spaces, geoms = vit_like(2, width=16)
    runs = [evolve(spaces, geoms, budget=None, evaluate=lambda ss: [pseudo_fitness(s) for s in ss],
                   settings=SMALL.model_copy(update={"fill": fill})) for fill in (False, True)]
    assert run_digest(runs[0]) == run_digest(runs[1])


def test_a_budget_the_largest_structure_fits_is_no_budget():
    # It admits every structure, so the search must not change; filling to it would leave
    # only the largest structure to evaluate.
    spaces, geoms = vit_like(2, width=16)
    top = max_params(spaces, geoms)
    runs = [evolve(spaces, geoms, budget=budget, evaluate=lambda ss: [pseudo_fitness(s) for s in ss], settings=SMALL)
            for budget in (None, top, 10 * top)]
    assert run_digest(runs[0]) == run_digest(runs[1]) == run_digest(runs[2])
    assert len(runs[0].evaluated) > 1


def test_fill_finds_a_target_that_spends_the_budget():
    spaces, geoms = mixed(6, rank=2)
    rng = random.Random(0)
    codec = _Codec.build(spaces, geoms, 0)
    budget = int(0.3 * max_params(spaces, geoms))
    target = codec.structure(tuple(codec.grow(codec.repair(codec.random(rng), budget, rng, codec.free),
                                              budget, rng, codec.free)))
    res = evolve(spaces, geoms, budget=budget, evaluate=lambda ss: [similarity(target)(s) for s in ss],
                 settings=SearchSettings(population=30, generations=15, parents=8, mutations=15, crossovers=15))
    assert res.best.fitness >= 0.8


# ------------------------------------------------------------------ the codec's grow step
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(spaces_st, geoms_st), min_size=1, max_size=5), st.floats(0, 1), st.integers(0, 2**16),
       st.data())
def test_grow_fits_touches_only_its_slots_and_leaves_no_upgrade(layers, frac, seed, data):
    spaces = {f"m.{i}": s for i, (s, _) in enumerate(layers)}
    geoms = {f"m.{i}": g for i, (_, g) in enumerate(layers)}
    codec = _Codec.build(spaces, geoms, 0)
    budget = codec.min_params + int(frac * (sum(max(c) for c in codec.costs) - codec.min_params))
    rng = random.Random(seed)
    start = codec.repair(codec.random(rng), budget, rng, codec.free)
    slots = sorted(data.draw(st.sets(st.sampled_from(codec.free))) if codec.free else [])
    grown = codec.grow(list(start), budget, rng, slots)
    assert codec.params(start) <= codec.params(grown) <= budget
    room = budget - codec.params(grown)
    for i, (before, after) in enumerate(zip(start, grown)):
        if i not in slots:
            assert before == after
        else:
            assert codec.costs[i][after] >= codec.costs[i][before]
            assert not any(codec.costs[i][after] < c <= codec.costs[i][after] + room for c in codec.costs[i])
    again = codec.grow(list(start), budget, random.Random(seed), slots)
    assert again == codec.grow(list(start), budget, random.Random(seed), slots)


def test_crossover_grows_only_where_the_parents_differ():
    spaces, geoms = mixed(10)
    codec = _Codec.build(spaces, geoms, 0)
    budget = int(0.3 * max_params(spaces, geoms))
    rng = random.Random(3)
    parents = [tuple(codec.grow(codec.repair(codec.random(rng), budget, rng, codec.free), budget, rng, codec.free))
               for _ in range(2)]
    a, b = parents
    for _ in range(50):
        child = _crossover(codec, a, b, budget, rng, True)
        assert codec.params(child) <= budget
        for i in codec.free:
            if a[i] == b[i]:  # inherited: at most repaired down, never grown
                assert codec.costs[i][child[i]] <= codec.costs[i][a[i]]


# ------------------------------------------------------------------ the setting in a spec
def test_fill_setting_parses_and_defaults_to_true():
    assert SearchSettings().fill is True
    assert glorac.loads_spec("search { fill = false }").search.fill is False
    assert glorac.loads_spec("search { fill = true }").search.fill is True
    _, diags = analyze_text("search { fill = maybe }")
    assert [d.message for d in diags] == ["`fill` must be true or false, not `maybe`"]
    _, diags = analyze_text("search { fill = 1 }")
    assert diags and "`fill` expects a name" in diags[0].message


# ------------------------------------------------------------------ the report line
def test_describe_best_names_params_and_budget():
    spaces, geoms = mixed(8)
    budget = 182_000
    res = evolve(spaces, geoms, budget=budget, evaluate=lambda ss: [pseudo_fitness(s) for s in ss], settings=SMALL)
    line = describe_best(res)
    share = f"{100 * res.best.params / budget:.1f}%"
    assert line == (f"best: val acc {res.best.fitness:.4f}, {res.best.params:,} adapter params of a "
                    f"182,000 budget ({share})")
    free = evolve(spaces, geoms, budget=None, evaluate=lambda ss: [0.5] * len(ss), settings=SMALL)
    assert describe_best(free) == f"best: val acc 0.5000, {free.best.params:,} adapter params (no budget)"
    head = evolve(spaces, geoms, budget=budget, evaluate=lambda ss: [0.5] * len(ss), settings=SMALL,
                  extra_params=1000)
    assert describe_best(head).endswith(f"{head.best.params:,} params (incl. 1,000 trained) of a 182,000 budget "
                                        f"({100 * head.best.params / budget:.1f}%)")
