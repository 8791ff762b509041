"""The demo's specs are valid at both of its scales (a bad setting would only show at run time)."""

from __future__ import annotations

import inspect

import pytest

from glorac.demo import LORA8, QUICK, _spec, run_demo
from glorac.dsl import loads_spec


def _defaults() -> dict:
    return {k: p.default for k, p in inspect.signature(run_demo).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("space", [LORA8, "paper(r=8)"])
def test_demo_spec_checks(space, quick):
    d = QUICK if quick else _defaults()
    epochs, generations, population = d["epochs"], d["generations"], d["population"]
    spec = loads_spec(_spec(space, 182_272, epochs, generations, population))
    assert spec.budget.params == 182_272
    assert spec.training.parametrization == "balanced" and spec.training.sampling == "sandwich"
    assert spec.search.fill
