"""The data types every loader produces, and the seeded, stratified index arithmetic.

Nothing here knows about images or text: a split is a :class:`LabeledDataset` (items plus
integer targets), a batch is a :class:`Batch`, a task is a :class:`TaskData`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from glorac.errors import DataError

SPLITS = ("train", "val", "test", "trainval")


@dataclass
class Batch:
    """One collated batch: ``model(*inputs)`` for a tuple, ``model(**inputs)`` for a dict."""

    inputs: tuple | dict
    labels: torch.Tensor  # int64, shape (batch,)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this on custom batches
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        def one(value: Any) -> Any:
            return fn(value) if isinstance(value, torch.Tensor) else value

        if isinstance(self.inputs, dict):
            inputs: tuple | dict = {k: one(v) for k, v in self.inputs.items()}
        else:
            inputs = tuple(one(v) for v in self.inputs)
        return Batch(inputs, one(self.labels))


@dataclass
class TaskData:
    """A labelled task with explicit splits (never mixed: search uses val, never test)."""

    kind: Literal["image", "text"]
    num_classes: int
    class_names: list[str]
    splits: dict[str, Dataset]
    collate: Callable[[list], Batch]
    source: str
    skipped: list[str] = field(default_factory=list)
    # Which layout was recognised ("class folders", "VTAB list files", ...): used in messages.
    layout: str = ""
    # How to add a missing split to this layout ({split} is filled in); see require_split.
    split_hint: str = field(default="", repr=False)

    def describe(self) -> str:
        sizes = " / ".join(f"{name} {len(ds)}" for name, ds in self.splits.items())
        extra = f", {len(self.skipped)} unreadable file(s) skipped" if self.skipped else ""
        return f"{self.source}: {self.kind}, {self.num_classes} classes, {sizes}{extra}"


@dataclass
class RawSplit:
    """A split before preprocessing: image paths, an image array, or texts; plus targets.
    ``where`` names its folder or file for messages."""

    items: list | np.ndarray
    targets: list[int]
    where: str


@dataclass
class RawTask:
    """What a layout reader found; :func:`glorac.data.load_data` makes datasets of it."""

    kind: Literal["image", "text"]
    class_names: list[str]
    splits: dict[str, RawSplit]
    layout: str
    # How to add a split this layout lacks, {split} filled in (for require_split).
    split_hint: str = ""


class LabeledDataset(Dataset):
    """Items plus integer targets; subclasses turn one item into a model-ready sample.

    Keeping the targets outside the items lets limits and checks work on labels without
    decoding a single image.
    """

    def __init__(self, items: Sequence | np.ndarray, targets: Sequence[int]):
        if len(items) != len(targets):
            raise ValueError("items and targets differ in length")
        self.items = items
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, indices: Sequence[int]) -> "LabeledDataset":
        """A copy holding only ``indices`` (in that order)."""
        new = copy.copy(self)
        if isinstance(self.items, np.ndarray):
            new.items = self.items[np.asarray(indices, dtype=np.int64)]
        else:
            new.items = [self.items[i] for i in indices]
        new.targets = [self.targets[i] for i in indices]
        return new


def apportion(counts: dict[int, int], total: int) -> dict[int, int]:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder, exact
    integer arithmetic; ties go to the smaller class id). Never exceeds a class's count."""
    available = sum(counts.values())
    if total >= available:
        return dict(counts)
    take = {c: n * total // available for c, n in counts.items()}
    remainder = {c: n * total % available for c, n in counts.items()}
    short = total - sum(take.values())
    for c in sorted(counts, key=lambda c: (-remainder[c], c))[:short]:
        take[c] += 1
    return take


def stratified_partition(labels: Sequence[int], sizes: Sequence[int], seed: int) -> list[list[int]]:
    """Partition indices ``0..len(labels)-1`` into parts of exactly ``sizes``, each with the
    class proportions of the whole (as nearly as integers allow). Deterministic in ``seed``;
    each part's indices are sorted."""
    labels = np.asarray(labels)
    if sum(sizes) != len(labels):
        raise ValueError(f"sizes {list(sizes)} do not add up to {len(labels)}")
    rng = np.random.default_rng(seed)
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    parts = []
    for size in sizes:
        take = apportion({c: len(p) for c, p in pools.items()}, size)
        part: list[int] = []
        for c, n in take.items():
            part += [int(i) for i in pools[c][:n]]
            pools[c] = pools[c][n:]
        parts.append(sorted(part))
    return parts


def fraction_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Sizes for a 60/20/20-style split of ``n``; the last part takes the rounding rest."""
    sizes = [round(n * f) for f in fractions[:-1]]
    return sizes + [n - sum(sizes)]


def check_limit(limit: dict[str, int] | None) -> dict[str, int]:
    if limit is None:
        return {}
    if not isinstance(limit, dict):
        raise DataError(f"limit must map split names to counts, e.g. {{'train': 500}}; got {limit!r}.")
    for split, n in limit.items():
        if split not in SPLITS:
            raise DataError(f"limit names an unknown split {split!r}; splits are {', '.join(SPLITS)}.")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"limit for split {split!r} must be a positive integer, got {n!r}.")
    return dict(limit)


def limit_indices(targets: Sequence[int], n: int | None, seed: int) -> list[int]:
    """At most ``n`` indices, a seeded stratified sample (all of them when ``n`` is None)."""
    if n is None or n >= len(targets):
        return list(range(len(targets)))
    return stratified_partition(targets, [n, len(targets) - n], seed)[0]


def few(items: Sequence[str], shown: int = 3) -> str:
    """`a, b, c (+N more)` for messages that must stay one paragraph."""
    text = ", ".join(str(i) for i in items[:shown])
    return text + (f" (+{len(items) - shown} more)" if len(items) > shown else "")


def short_error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:200] + " …"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_utf8(path) -> str:
    """A text file's contents; a non-UTF-8 file is a DataError naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {short_error(exc)}.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}). "
            f"Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}."
        ) from None
