"""The data types every loader produces, and the seeded, stratified index arithmetic.

Nothing here knows about images or text: a split is a :class:`LabeledDataset` (items plus
integer targets), a batch is a :class:`Batch`, a task is a :class:`TaskData`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

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
    # What was done with unreadable image files ("skip" or "stop"); see skipped_report.
    on_corrupt: str = "skip"
    # Class id -> where it was written (list files, CSV/JSONL), from all of the data (before
    # any limit); empty when labels come from folder names or a built-in.
    label_sites: dict[int, "LabelSites"] = field(default_factory=dict, repr=False)
    # "classification" (integer targets, one per example) or "causal-lm" (labels per token,
    # -100 where no loss is taken; then num_classes is 0 and class_names empty).
    task: str = "classification"

    def describe(self) -> str:
        sizes = " / ".join(f"{name} {len(ds)}" for name, ds in self.splits.items())
        if self.task == "causal-lm":
            tokens = " / ".join(f"{name} {self.tokens(name)}" for name in self.splits)
            return f"{self.source}: causal-LM text, {self.layout}, examples {sizes}, scored tokens {tokens}"
        extra = f", {len(self.skipped)} unreadable file(s) skipped" if self.skipped else ""
        return f"{self.source}: {self.kind}, {self.num_classes} classes, {sizes}{extra}"

    def tokens(self, split: str, shifted: bool = True) -> int:
        """Causal-LM data: how many label tokens of ``split`` the loss is taken on (labels
        other than -100), for perplexity: exp(summed token loss / tokens). ``shifted`` (the
        default) counts what the shifted loss (logits[:, :-1] against labels[:, 1:]) scores,
        leaving out each example's position 0, which nothing predicts; ``shifted=False``
        counts every label other than -100."""
        if split not in self.splits:
            require_split(self, split)  # the message that says how to add it
        count = getattr(self.splits[split], "label_tokens", None)
        if self.task != "causal-lm" or count is None:
            raise DataError(f"{self.source} is {self.task} data; token counts exist for causal-LM "
                            "data only.")
        return int(count(shifted))

    def skipped_report(self, shown: int = 3) -> Optional[str]:
        """One paragraph naming the image files left out as unreadable (their count, the
        first ``shown`` with the reason), for the user to read before work starts; None when
        nothing was skipped."""
        if not self.skipped:
            return None
        root = os.path.join(str(Path(self.source).expanduser()), "")
        names = [entry[len(root):] if entry.startswith(root) else entry for entry in self.skipped]
        listing = "; ".join(names[:shown])
        if len(names) > shown:
            listing += f"; and {len(names) - shown} more"
        return (f"skipped {len(self.skipped)} unreadable image(s) in {self.source} "
                f"(on_corrupt={self.on_corrupt}): {listing}. Remove or fix them, or pass "
                "--on-corrupt stop to refuse them.")


@dataclass
class RawSplit:
    """A split before preprocessing: image paths, an image array, or texts; plus targets.
    ``where`` names its folder or file for messages."""

    items: list | np.ndarray
    targets: list[int]
    where: str
    # The line of the file ``where`` each item was read from (list files, CSV/JSONL), for
    # messages that name the line of a bad label; None when items do not come from lines.
    lines: list[int] | None = None


@dataclass
class RawTask:
    """What a layout reader found; :func:`glorac.data.load_data` makes datasets of it."""

    kind: Literal["image", "text"]
    class_names: list[str]
    splits: dict[str, RawSplit]
    layout: str
    # How to add a split this layout lacks, {split} filled in (for require_split).
    split_hint: str = ""
    # How the files name classes: "ids" (integer class ids, written by the user: gaps are
    # possible), "names" (class names in the files), "folders" (class folder names) or ""
    # (a built-in).
    labels: str = ""


@dataclass
class LabelSites:
    """Where one class id was written: on how many lines, and the first few of them
    (``train800.txt line 412``), in reading order."""

    count: int = 0
    first: list[str] = field(default_factory=list)


def label_sites(raw: RawTask, keep: int = 3) -> dict[int, LabelSites]:
    """Class id -> its :class:`LabelSites`, over the splits read from lines of a file. The
    dict is ordered by first appearance (splits in order, lines in order)."""
    sites: dict[int, LabelSites] = {}
    for split in raw.splits.values():
        if split.lines is None:
            continue
        name = Path(split.where).name
        for target, line in zip(split.targets, split.lines):
            site = sites.setdefault(int(target), LabelSites())
            site.count += 1
            if len(site.first) < keep:
                site.first.append(f"{name} line {line}")
    return sites


def check_labels(raw: RawTask, source: str, sites: dict[int, LabelSites]) -> None:
    """Refuse labels no classifier should train on: fewer than two classes, and class ids
    with a gap (some id never appears although a larger one does): the message names the
    file and line of the label past the gap."""
    used = sorted({int(t) for split in raw.splits.values() for t in split.targets})
    if len(used) < 2:
        what = {"ids": "label", "folders": "class folder", "names": "label"}.get(raw.labels, "class")
        name = raw.class_names[used[0]] if used else "none"
        shown = f"{name!r}" if raw.labels == "names" else f"{name}/" if raw.labels == "folders" else name
        raise DataError(
            f"{source} has only 1 class ({what} {shown}); a classifier needs at least two. Add "
            "examples of at least one more class."
        )
    if raw.labels != "ids":
        return
    missing = sorted(set(range(used[-1] + 1)) - set(used))
    if not missing:
        return
    gap = missing[0]
    label = min(u for u in used if u > gap)
    site = sites.get(label)
    where = site.first[0] if site else source
    below = ("" if gap == 0 else "label 0 is used and " if gap == 1 else f"labels 0–{gap - 1} are used and ")
    never = f"{gap} never appears" if len(missing) == 1 else f"{few([str(m) for m in missing], 5)} never appear"
    if not below:
        never = "label " + never if len(missing) == 1 else "labels " + never
    files = "the list files" if raw.layout == "VTAB-1k list files" else "the labels"
    on = (f" Label {label} is on {site.count} line(s): {few(site.first)}." if site else "")
    fix = (" Class ids start at 0: if yours start at 1, subtract 1 from every label." if gap == 0 else
           " If that label is a mistake, fix it; if not, renumber the classes "
           f"0–{len(used) - 1} so that no id is missing.")
    raise DataError(
        f"{where}: label {label}, but {below}{never}; {files} in {source} give {len(used)} "
        f"classes with a gap, and class ids must be 0..K-1 with every id used.{on}{fix}"
    )


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


def require_split(data: TaskData, split: str) -> Dataset:
    """The ``split`` dataset, or a DataError saying it is missing and how to add it."""
    if split in data.splits:
        return data.splits[split]
    have = ", ".join(data.splits) or "none"
    if split == "trainval" and data.layout != "VTAB-1k list files":
        hint = "a trainval split comes only with VTAB-1k list files (train800val200.txt); use train."
    elif data.split_hint:
        hint = data.split_hint.replace("{split}", split)  # not format(): paths may hold braces
    else:
        hint = f"add a {split} split."
    measure = "val loss (perplexity)" if data.task == "causal-lm" else "val accuracy"
    why = (f" The structure search measures {measure} and never looks at test, so it needs "
           "val." if split == "val" else "")
    raise DataError(f"{data.source} has no {split} split (it has: {have}).{why} To add one: {hint}")
