"""glorac.kinds: geometry, parameter counts, storage shapes, extreme choices."""

from __future__ import annotations

import itertools
from math import prod

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glorac.ir import ALLOWED_KINDS, TENSORS, Kind, LayerChoice, Space
from glorac.kinds import (
    Geometry,
    choice_in_space,
    choice_param_count,
    max_choice,
    min_choice,
    param_count,
    storage_param_count,
    storage_shapes,
)

K = Kind.parse
NONE, VEC, SCA = K("none"), K("vector"), K("scalar")
FULL = Space(
    A=(K("lora(4)"), VEC, SCA, NONE),
    B=(K("lora(4)"), VEC, SCA, NONE),
    C=(K("lora(4)"), VEC, NONE),
    D=(VEC, SCA, NONE),
    E=(VEC, SCA, NONE),
)


def all_choices(space: Space):
    for kinds in itertools.product(*(space.tensor(t) for t in TENSORS)):
        yield LayerChoice(**dict(zip(TENSORS, kinds)))


# ------------------------------------------------------------------ geometry
def test_geometry_linear():
    assert Geometry.linear(10, 6) == Geometry(out=6, fan_in=10, c_len=10)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((8, 16, 3, 1), Geometry(out=16, fan_in=72, c_len=8)),
        ((8, 16, (1, 5), 2), Geometry(out=16, fan_in=20, c_len=4)),
        ((8, 8, 3, 8), Geometry(out=8, fan_in=9, c_len=1)),  # depthwise
        ((3, 4, 1, 1), Geometry(out=4, fan_in=3, c_len=3)),
    ],
)
def test_geometry_conv2d(args, expected):
    assert Geometry.conv2d(*args) == expected


def test_geometry_rejects_nonsense():
    with pytest.raises(ValueError):
        Geometry.conv2d(6, 8, 3, groups=4)
    with pytest.raises(ValueError):
        Geometry(out=4, fan_in=10, c_len=3)


# ----------------------------------------------------------- param counts
G = Geometry(out=6, fan_in=20, c_len=5)


@pytest.mark.parametrize(
    "tensor, kind, expected",
    [
        ("A", "lora(3)", 3 * (6 + 20)),
        ("B", "lora(1)", 26),
        ("A", "vector", 6),
        ("B", "scalar", 1),
        ("A", "none", 0),
        ("C", "lora(2)", 2 * 5 + 2),
        ("C", "vector", 5),
        ("C", "none", 0),
        ("D", "vector", 6),
        ("E", "scalar", 1),
        ("E", "none", 0),
    ],
)
def test_param_count(tensor, kind, expected):
    assert param_count(tensor, K(kind), G) == expected


@pytest.mark.parametrize("tensor, kind", [("C", "scalar"), ("D", "lora(2)"), ("E", "lora(1)"), ("F", "vector")])
def test_param_count_rejects_disallowed_kinds(tensor, kind):
    with pytest.raises(ValueError):
        param_count(tensor, K(kind), G)


def test_choice_param_count_sums_tensors():
    choice = LayerChoice(A=K("lora(2)"), B=VEC, C=K("lora(3)"), D=SCA, E=VEC)
    assert choice_param_count(choice, G) == 2 * 26 + 6 + (3 * 5 + 3) + 1 + 6
    assert choice_param_count(LayerChoice(), G) == 0


# ---------------------------------------------------------- storage shapes
def test_storage_full_space():
    assert storage_shapes(FULL, G) == {
        "A_out": (6, 4), "A_in": (4, 20),
        "B_out": (6, 4), "B_in": (4, 20),
        "C_out": (5, 4), "C_in": (4, 1),
        "D": (6,), "E": (6,),
    }


def test_storage_sized_for_the_largest_rank():
    space = Space(A=(K("lora(2)"), K("lora(8)"), VEC), C=(K("lora(2)"), K("lora(3)")))
    assert storage_shapes(space, G) == {"A_out": (6, 8), "A_in": (8, 20), "C_out": (5, 3), "C_in": (3, 1)}


@pytest.mark.parametrize(
    "space, expected",
    [
        (Space(A=(VEC, SCA, NONE), B=(VEC,)), {"A_out": (6, 1), "B_out": (6, 1)}),
        (Space(A=(SCA, NONE), B=(SCA,)), {"A_out": (1, 1), "B_out": (1, 1)}),
        (Space(C=(VEC, NONE), D=(SCA,), E=(SCA, VEC)), {"C_out": (5, 1), "D": (1,), "E": (6,)}),
        (Space(), {}),
    ],
)
def test_storage_without_lora_is_tiny(space, expected):
    shapes = storage_shapes(space, G)
    assert shapes == expected
    assert storage_param_count(space, G) == sum(prod(s) for s in expected.values())


def test_storage_param_count_full_space():
    assert storage_param_count(FULL, G) == 2 * (4 * 6 + 4 * 20) + (5 * 4 + 4) + 6 + 6


kinds_strategy = {
    t: st.lists(
        st.sampled_from([K(n) if n != "lora" else None for n in ALLOWED_KINDS[t]]).flatmap(
            lambda k: st.integers(1, 6).map(lambda r: Kind(kind="lora", rank=r)) if k is None else st.just(k)
        ),
        min_size=1, max_size=4, unique=True,
    )
    for t in TENSORS
}
spaces = st.builds(lambda **kw: Space(**{t: tuple(v) for t, v in kw.items()}), **kinds_strategy)
geoms = st.builds(
    lambda o, c, k: Geometry(out=o, fan_in=c * k, c_len=c), st.integers(1, 12), st.integers(1, 12), st.integers(1, 9)
)


@settings(max_examples=80, deadline=None)
@given(spaces, geoms)
def test_storage_invariants(space, geom):
    shapes = storage_shapes(space, geom)
    for t in TENSORS:
        kinds = space.tensor(t)
        owned = {n for n in shapes if n == t or n.startswith(t + "_")}
        if all(k.kind == "none" for k in kinds):
            assert not owned, "none must never allocate"
        has_lora = any(k.kind == "lora" for k in kinds)
        if t in "AB" and not has_lora:
            # The point of the factored kinds: no weight-sized (out×fan_in) storage.
            assert all(prod(shapes[n]) <= geom.out for n in owned)
    # Each choice reads no more values than the storage holds.
    cap = storage_param_count(space, geom)
    assert choice_param_count(max_choice(space, geom), geom) <= cap


# ---------------------------------------------------------- min/max choice
@settings(max_examples=60, deadline=None)
@given(spaces, geoms)
def test_min_max_choice_are_extremes_over_enumeration(space, geom):
    counts = [choice_param_count(c, geom) for c in all_choices(space)]
    lo, hi = min_choice(space, geom), max_choice(space, geom)
    assert choice_in_space(lo, space) and choice_in_space(hi, space)
    assert choice_param_count(lo, geom) == min(counts)
    assert choice_param_count(hi, geom) == max(counts)


def test_min_max_choice_of_full_space():
    assert max_choice(FULL, G) == LayerChoice(A=K("lora(4)"), B=K("lora(4)"), C=K("lora(4)"), D=VEC, E=VEC)
    assert min_choice(FULL, G) == LayerChoice()
    space = Space(A=(K("lora(2)"), K("lora(4)")), D=(SCA, VEC))
    assert min_choice(space, G) == LayerChoice(A=K("lora(2)"), D=SCA)


def test_tie_breaks_prefer_richer_for_max_and_simpler_for_min():
    one = Geometry(out=1, fan_in=3, c_len=3)  # out=1: vector and scalar both cost 1
    space = Space(D=(SCA, VEC), E=(VEC, SCA))
    assert max_choice(space, one) == LayerChoice(D=VEC, E=VEC)
    assert min_choice(space, one) == LayerChoice(D=SCA, E=SCA)


def test_choice_in_space():
    assert choice_in_space(LayerChoice(A=K("lora(4)"), D=SCA), FULL)
    assert not choice_in_space(LayerChoice(A=K("lora(8)")), FULL)  # rank not offered
    assert not choice_in_space(LayerChoice(A=VEC), Space(A=(SCA, NONE)))
    assert not choice_in_space(LayerChoice(), Space(A=(VEC,)))  # none not offered
