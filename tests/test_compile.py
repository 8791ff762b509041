"""Compile every model of the test zoo into a supernet and check it against the formula."""

from __future__ import annotations

import pytest
import torch

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.kinds import max_choice
from glorac.checkpoint import load, save
from glorac.models import ModelRef
from tests.reference import perturb, random_structure, reference_model, rel_err
from tests.zoo import ZOO, zoo_entry



# Layers the zoo does not list but these tests adapt too (the functional F.linear site).
EXTRA_ADAPT = {"functional": ("mix",)}


def spec_for(entry, *, bias: str = "preserve", rank: int = 4) -> str:
    patterns = ", ".join(f'"{p}"' for p in entry.adapt + EXTRA_ADAPT.get(entry.name, ()))
    text = PAPER_SPACE + f"\nadapt {patterns} with paper(r={rank})\nbias {bias}\n"
    if entry.head:
        text += "train " + ", ".join(f'"{h}"' for h in entry.head) + "\n"
    return text



@pytest.mark.parametrize("name", sorted(ZOO))
def test_init_equals_base_and_structure_matches_reference(name):
    entry = zoo_entry(name)
    model = entry.build()
    x = entry.example_input()
    with torch.no_grad():
        base_out = entry.output(model(*x))
    supernet = glorac.build_supernet(glorac.loads_spec(spec_for(entry)), model)
    assert supernet.plan.front_end == ("fx" if entry.traceable else "modules")
    assert (supernet.plan.trace_failure is None) == entry.traceable
    with torch.no_grad():
        init_out = entry.output(supernet(*x))
    assert (init_out - base_out).abs().max().item() <= 1e-6

    perturb(supernet, seed=1)
    structure = random_structure(supernet, seed=2)
    supernet.activate(structure)
    reference = reference_model(model, supernet, structure)
    with torch.no_grad():
        got = entry.output(supernet(*x))
        want = entry.output(reference(*x))
    assert (got - base_out).abs().max() > 1e-4, "perturbed adapters must change the output"
    assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("name", sorted(ZOO))
def test_gradients_reach_only_adapters_and_head(name):
    entry = zoo_entry(name)
    model = entry.build()
    supernet = glorac.build_supernet(glorac.loads_spec(spec_for(entry)), model)
    perturb(supernet, seed=3)
    supernet.activate({n: max_choice(a.space, a.geom) for n, a in supernet.adapters.items()})
    supernet.train()
    out = entry.output(supernet(*entry.example_input()))
    out.float().pow(2).mean().backward()
    adapter_ids = {id(p) for a in supernet.adapters.values() for p in a.parameters()}
    head_ids = {id(p) for h in supernet.plan.trained for p in model.get_submodule(h).parameters()}
    with_grad = {id(p) for p in supernet.parameters() if p.grad is not None}
    with_grad |= {id(p) for p in model.parameters() if p.grad is not None}
    assert with_grad, "nothing received a gradient"
    assert with_grad <= adapter_ids | head_ids
    assert with_grad & adapter_ids, "no adapter received a gradient"
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in head_ids]
    assert not frozen


@pytest.mark.parametrize("name", ["vit", "functional", "untraceable", "custom_biasfree"])
def test_save_load_round_trip(name, tmp_path):
    entry = zoo_entry(name)
    model = entry.build()
    supernet = glorac.build_supernet(glorac.loads_spec(spec_for(entry)), model)
    supernet.model_ref = ModelRef(name=f"tests.zoo:{name}", source="factory")
    perturb(supernet, seed=4)
    structure = random_structure(supernet, seed=5)
    supernet.select(structure)
    x = entry.example_input()
    with torch.no_grad():
        want = entry.output(supernet(*x))
    path = save(supernet, tmp_path / "sn.pt")
    # Readable without executing pickled code, and holds no base weights.
    raw = torch.load(path, weights_only=True)
    base_keys = set(entry.build().state_dict())
    assert not (set(raw["adapters"]) & base_keys)
    assert set(raw["trained"]) <= base_keys
    loaded = load(path, model=entry.build())
    assert loaded.structure == structure
    with torch.no_grad():
        got = entry.output(loaded(*x))
    assert torch.equal(got, want)


def test_bias_add_creates_biases_on_bias_free_layers():
    entry = zoo_entry("custom_biasfree")
    model = entry.build()
    supernet = glorac.build_supernet(glorac.loads_spec(spec_for(entry, bias="add")), model)
    biasfree = [lp for lp in supernet.plan.layers if not lp.site.has_bias]
    assert biasfree
    for lp in biasfree:
        assert lp.space.D == (glorac.Kind(kind="none"),)  # nothing to scale
        assert any(k.kind != "none" for k in lp.space.E)
    perturb(supernet, seed=6)
    structure = random_structure(supernet, seed=7)
    supernet.activate(structure)
    x = entry.example_input()
    with torch.no_grad():
        assert rel_err(supernet(*x), reference_model(model, supernet, structure)(*x)) < 1e-4


def test_bias_preserve_drops_cde_and_says_so():
    entry = zoo_entry("custom_biasfree")
    p = glorac.plan(glorac.loads_spec(spec_for(entry)), entry.build())
    for lp in p.layers:
        if not lp.site.has_bias:
            assert lp.space.C == lp.space.D == lp.space.E == (glorac.Kind(kind="none"),)
            assert any("no bias" in n for n in lp.notes)


def test_functional_linear_is_a_site():
    entry = zoo_entry("functional")
    p = glorac.plan(glorac.loads_spec(spec_for(entry)), entry.build())
    assert any(lp.site.functional for lp in p.layers)
