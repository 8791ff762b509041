"""The one registry of support-tensor kinds: geometry, parameter counts, storage shapes.

Pure Python (no torch): the planner, the cost model and the search all count parameters
without building modules, and :class:`glorac.op.GloraAdapter` allocates exactly what
:func:`storage_shapes` says, so a plan's numbers and a built supernet cannot disagree.

Sharing rule (authors' code, DESIGN.md §1): every kind of one tensor reads the same
storage, sized for the richest kind in the space. For A and B with a lora kind of max
rank R the storage is ``A_out`` (out×R) and ``A_in`` (R×fan_in); ``lora(r)`` reads the
first r columns/rows, ``vector`` reads column 0 of ``A_out`` and ``scalar`` its [0, 0].
``none`` never owns anything.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from math import prod
from typing import Sequence, Union

from .ir import ALLOWED_KINDS, TENSORS, Kind, LayerChoice, Space

#: Ordering used to break parameter-count ties in min/max choice (richer kind wins max).
_RICHNESS = {"none": 0, "scalar": 1, "vector": 2, "lora": 3}


@dataclass(frozen=True)
class Geometry:
    """What an adapter needs to know about its layer.

    ``out``: output features/channels. ``fan_in``: columns of the weight viewed as a
    matrix (Linear: in; Conv2d: in/groups·kh·kw). ``c_len``: length of C (Linear: in;
    Conv2d: in/groups, because W0·C sums the weight over its kernel window).
    """

    out: int
    fan_in: int
    c_len: int

    def __post_init__(self) -> None:
        if min(self.out, self.fan_in, self.c_len) < 1 or self.fan_in % self.c_len:
            raise ValueError(f"inconsistent layer geometry {self}")

    @classmethod
    def linear(cls, in_features: int, out_features: int) -> "Geometry":
        return cls(out=out_features, fan_in=in_features, c_len=in_features)

    @classmethod
    def conv2d(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Sequence[int]],
        groups: int = 1,
    ) -> "Geometry":
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        c_len = in_channels // groups
        return cls(out=out_channels, fan_in=c_len * kh * kw, c_len=c_len)


def _check_allowed(tensor: str, kind: Kind) -> None:
    if tensor not in ALLOWED_KINDS:
        raise ValueError(f"unknown support tensor {tensor!r}; expected one of {TENSORS}")
    if kind.kind not in ALLOWED_KINDS[tensor]:
        raise ValueError(
            f"{tensor} cannot be `{kind}`; allowed: {', '.join(ALLOWED_KINDS[tensor])}"
        )


def param_count(tensor: str, kind: Kind, geom: Geometry) -> int:
    """How many adapter values ``tensor`` really reads when it has ``kind``."""
    _check_allowed(tensor, kind)
    if kind.kind == "none":
        return 0
    if kind.kind == "scalar":
        return 1
    if tensor in ("A", "B"):
        return kind.rank * (geom.out + geom.fan_in) if kind.kind == "lora" else geom.out
    if tensor == "C":
        return kind.rank * (geom.c_len + 1) if kind.kind == "lora" else geom.c_len
    return geom.out  # D, E vector


def choice_param_count(choice: LayerChoice, geom: Geometry) -> int:
    """Adapter values one structure reads (what a search budget counts)."""
    return sum(param_count(t, k, geom) for t, k in choice.items())


def _storage_for(tensor: str, kinds: Sequence[Kind], geom: Geometry) -> dict[str, tuple[int, ...]]:
    names = {k.kind for k in kinds}
    rank = max((k.rank or 0) for k in kinds)
    if tensor in ("A", "B"):
        if rank:
            return {f"{tensor}_out": (geom.out, rank), f"{tensor}_in": (rank, geom.fan_in)}
        if "vector" in names:
            return {f"{tensor}_out": (geom.out, 1)}
        return {f"{tensor}_out": (1, 1)} if "scalar" in names else {}
    if tensor == "C":
        if rank:
            return {"C_out": (geom.c_len, rank), "C_in": (rank, 1)}
        return {"C_out": (geom.c_len, 1)} if "vector" in names else {}
    if "vector" in names:  # D, E
        return {tensor: (geom.out,)}
    return {tensor: (1,)} if "scalar" in names else {}


def storage_shapes(space: Space, geom: Geometry) -> dict[str, tuple[int, ...]]:
    """Parameter name → shape: exactly what a GloraAdapter for ``space`` allocates."""
    shapes: dict[str, tuple[int, ...]] = {}
    for tensor, kinds in space.items():
        for kind in kinds:
            _check_allowed(tensor, kind)
        shapes.update(_storage_for(tensor, kinds, geom))
    return shapes


def storage_param_count(space: Space, geom: Geometry) -> int:
    """Trainable values of a supernet layer (the shared storage, all kinds together)."""
    return sum(prod(shape) for shape in storage_shapes(space, geom).values())


def _extreme_choice(space: Space, geom: Geometry, sign: int) -> LayerChoice:
    # Tensors are counted independently, so the per-tensor extreme is the global one.
    def key(item: tuple[str, Kind]) -> tuple[int, int, int]:
        tensor, kind = item
        return (param_count(tensor, kind, geom), _RICHNESS[kind.kind], kind.rank or 0)

    picks = {}
    for tensor, kinds in space.items():
        ranked = sorted(((tensor, k) for k in kinds), key=key)
        picks[tensor] = (ranked[-1] if sign > 0 else ranked[0])[1]
    return LayerChoice(**picks)


def min_choice(space: Space, geom: Geometry) -> LayerChoice:
    """The structure with the fewest adapter values (ties: the simplest kinds)."""
    return _extreme_choice(space, geom, -1)


def max_choice(space: Space, geom: Geometry) -> LayerChoice:
    """The structure with the most adapter values (ties: the richest kinds)."""
    return _extreme_choice(space, geom, +1)


#: How adapter parameters map to support tensors (DESIGN.md §1, docs/parametrization.md).
PARAMETRIZATIONS: tuple[str, ...] = ("balanced", "paper")


def kind_scale(tensor: str, kind: Kind, geom: Geometry, parametrization: str = "balanced") -> float:
    """The constant a kind's stored values are multiplied by before they enter W' and b'.

    ``paper`` is the authors' code: every scale is 1. ``balanced`` picks, per kind, the
    constant that makes one optimiser step move the layer's output by a comparable
    amount whatever the kind (measured in docs/parametrization.md): a broadcast B
    (``vector``/``scalar``) adds ``b · Σ_j x_j`` over the whole fan-in, so it is read
    as a rank-1 product with the unit-norm in-side vector ``1/√fan_in``; A = lora(r)
    multiplies W0 elementwise, so its product is brought to O(1) entries like A's
    vector and scalar kinds (``√(fan_in/r)``); C = lora(r) has an r×1 in-side factor
    with O(1) entries, so its r terms are averaged (``1/r``). Everything else is 1.

    A constant folds exactly into W' and b' (like LoRA's α/r); it changes how training
    moves, never which functions a structure can express or its parameter count.
    """
    _check_allowed(tensor, kind)
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {parametrization!r}; expected one of {PARAMETRIZATIONS}")
    if parametrization == "paper" or kind.kind == "none":
        return 1.0
    if tensor == "A" and kind.kind == "lora":
        return math.sqrt(geom.fan_in / kind.rank)
    if tensor == "B" and kind.kind in ("vector", "scalar"):
        return 1.0 / math.sqrt(geom.fan_in)
    if tensor == "C" and kind.kind == "lora":
        return 1.0 / kind.rank
    return 1.0


def choice_in_space(choice: LayerChoice, space: Space) -> bool:
    return all(choice.tensor(t) in space.tensor(t) for t in TENSORS)
