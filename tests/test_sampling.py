"""Structure sampling rules (glorac.sampling): uniform (the paper) and sandwich."""

from __future__ import annotations

import pytest
import torch

import glorac
from glorac.kinds import max_choice, min_choice
from glorac.sampling import StructureSampler
from glorac.trainer import Trainer
from glorac.data import load_data
from glorac.distributed import Dist
from tests.test_train import SPEC


def _supernet(sampling: str):
    return glorac.build_supernet(glorac.loads_spec(SPEC.replace("seed = 3 }", f"seed = 3  sampling = {sampling} }}")), "tests.test_train:digit_net")


def test_sandwich_adds_the_largest_and_smallest_structure():
    sn = _supernet("sandwich")
    geoms = {n: a.geom for n, a in sn.adapters.items()}
    uniform = StructureSampler(sn.spaces(), seed=2)
    sandwich = StructureSampler(sn.spaces(), seed=2, rule="sandwich", geoms=geoms)
    for step in range(5):
        drawn, largest, smallest = sandwich.step_structures(step)
        assert drawn == uniform(step) and uniform.step_structures(step) == [drawn]
        assert largest.layers == {n: max_choice(s, geoms[n]) for n, s in sn.spaces().items()}
        assert smallest.layers == {n: min_choice(s, geoms[n]) for n, s in sn.spaces().items()}
    with pytest.raises(ValueError, match="geometry"):
        StructureSampler(sn.spaces(), rule="sandwich")
    with pytest.raises(ValueError, match="sampling rule"):
        StructureSampler(sn.spaces(), rule="greedy")


def test_sandwich_step_trains_every_out_side_factor(tmp_path):
    """The largest structure reads all shared storage, so one step moves every out-side factor."""
    moved = {}
    for rule in ("uniform", "sandwich"):
        sn = _supernet(rule)
        before = {k: v.clone() for k, v in sn.adapter_state_dict().items()}
        data = load_data("builtin:digits", model=sn.base_model, image_size=8)
        # One epoch of one batch: exactly one optimiser step.
        settings = sn.spec.training.model_copy(update={"epochs": 1, "warmup_epochs": 0, "batch_size": 4096})
        Trainer(sn, data, settings, Dist(), tmp_path / f"{rule}.pt", progress=False).fit()
        after = sn.adapter_state_dict()
        out_side = [k for k in before if not k.endswith("_in")]
        moved[rule] = {k for k in out_side if not torch.equal(before[k], after[k])}
        if rule == "sandwich":
            assert moved[rule] == set(out_side)
    assert moved["uniform"] < moved["sandwich"]
