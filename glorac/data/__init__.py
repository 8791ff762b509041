"""Labelled data for training, search and evaluation: one entry point, :func:`load_data`.

Accepted sources (told apart by what is on disk):

* ``DIR/train/<class>/*.png`` (+ ``val``/``valid``/``validation``, ``test``), or
  ``DIR/<class>/*.png`` (a train split only);
* VTAB-1k list files ``DIR/train800.txt``, ``val200.txt``, ``train800val200.txt``,
  ``test.txt`` with lines ``relative/path label``;
* text: ``DIR/train.jsonl|csv``, ``val...``, ``test...``, or one ``.jsonl``/``.csv`` file
  (train only), records with ``text`` and ``label``;
* ``builtin:mnist5k``, ``builtin:digits``, ``builtin:chatterbot`` (shipped in pip packages);
* causal language modelling (``task="causal-lm"``): ``DIR/train.jsonl`` (+ ``val.jsonl``,
  ``test.jsonl``) or one ``.jsonl`` file (train only), records ``{"text": ...}`` or
  ``{"prompt": ..., "completion": ...}`` (see :mod:`glorac.data.lm`).

Splits are kept apart exactly as given: nothing here ever moves examples between them.
Image preprocessing comes from the model's own (timm) data config; text is tokenised
with the model's tokenizer. Every bad input is a :class:`~glorac.errors.DataError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from glorac.errors import DataError

from .builtin import builtin_names, read_builtin
from .core import (Batch, LabelSites, RawTask, TaskData, check_labels, check_limit, few, label_sites, require_split,
                   limit_indices)
from .folders import (find_split_dirs, has_class_dirs, has_vtab_lists, read_class_folders,
                      read_split_folders, read_vtab, visible_children)
from .images import (IMAGE_SUFFIXES, ArrayImageDataset, ImageFileDataset, collate_images, drop_unreadable,
                     image_prep)
from .lm import TASKS, LMCollate, LMDataset, load_lm_data
from .text import (TEXT_SUFFIXES, TextCollate, TextDataset, checked_max_length, find_text_files,
                   load_tokenizer, read_text_task)

__all__ = ["Batch", "LabelSites", "TaskData", "check_source", "load_data", "make_loader", "require_split",
           "check_num_classes", "LMDataset", "LMCollate"]

_ACCEPTED = (
    "class folders DIR/train/<class>/*.png (plus DIR/val/, DIR/test/) or DIR/<class>/*.png "
    "(train only); VTAB-1k list files DIR/train800.txt, val200.txt, train800val200.txt, test.txt "
    "(lines `relative/path label`); text files DIR/train.jsonl|csv, val.jsonl|csv, test.jsonl|csv "
    "(fields text and label); a single .jsonl or .csv file; or "
    + ", ".join(f"builtin:{n}" for n in builtin_names())
)


def load_data(
    source: str,
    *,
    model: nn.Module | None,
    task: Literal["classification", "causal-lm"] = "classification",
    kind: Literal["image", "text"] | None = None,
    image_size: int | None = None,
    tokenizer_source: str | None = None,
    max_length: int = 128,
    limit: dict[str, int] | None = None,
    seed: int = 0,
    on_corrupt: Literal["skip", "stop"] = "skip",
) -> TaskData:
    """Read ``source`` into a :class:`TaskData` with model-ready splits.

    ``limit`` caps examples per split (a seeded, stratified sample; class count and names
    still come from all the data). Labels are checked first: fewer than two classes, or
    integer class ids with a gap, are refused naming the file and line. Every image file is
    then decoded once up front (so none can fail mid-epoch); unreadable ones are skipped and
    listed in ``skipped`` (``on_corrupt="skip"``; :meth:`TaskData.skipped_report` words it
    for the user) or stop the load.

    ``task="causal-lm"`` reads JSONL text or prompt/completion records instead (see
    :mod:`glorac.data.lm`): no classes (``num_classes`` 0), every split tokenised up front,
    batches ``Batch({"input_ids", "attention_mask"}, labels)`` with labels per token.
    ``image_size`` and ``on_corrupt`` do not apply to it; ``limit`` takes a seeded sample.
    """
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}.")
    if kind not in (None, "image", "text"):
        raise DataError(f"data kind must be 'image' or 'text', got {kind!r}.")
    if on_corrupt not in ("skip", "stop"):
        raise DataError(f"on_corrupt must be 'skip' or 'stop', got {on_corrupt!r}.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise DataError(f"max_length must be a positive integer, got {max_length!r}.")
    limits = check_limit(limit)
    if task == "causal-lm":
        if kind == "image":
            raise DataError("causal-LM data is text; kind 'image' does not apply to it.")
        return load_lm_data(source, model=model, tokenizer_source=tokenizer_source,
                            max_length=max_length, limits=limits, seed=seed)
    raw = read_source(source, kind)
    if kind is not None and raw.kind != kind:
        raise DataError(f"{source} holds {raw.kind} data ({raw.layout}), but {kind} data was asked for.")
    sites = label_sites(raw)
    check_labels(raw, str(source), sites)  # before any image is decoded: it is cheap
    splits, skipped = _datasets(raw, model, image_size, limits, seed, on_corrupt)
    if raw.kind == "image":
        collate: Callable[[list], Batch] = collate_images
    else:
        tokenizer = load_tokenizer(model, tokenizer_source)
        collate = TextCollate(tokenizer, checked_max_length(tokenizer, max_length))
    return TaskData(raw.kind, len(raw.class_names), list(raw.class_names), splits, collate,
                    str(source), skipped, raw.layout, raw.split_hint, on_corrupt, sites)


def check_source(source: str) -> None:
    """The cheap part of reading ``source``: it is given, and the built-in name or the path
    exists. Nothing is read, so callers run it before building a model."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise DataError(f"no data source given (got {source!r}); pass {_ACCEPTED}.")
    source = str(source)
    if source.startswith("builtin:"):
        name = source[len("builtin:"):].strip()
        if name not in builtin_names():
            raise DataError(f"unknown built-in data set `builtin:{name}`; built-ins are "
                            f"{', '.join('builtin:' + n for n in builtin_names())}.")
    elif not Path(source).expanduser().exists():
        hint = f" Did you mean builtin:{source}?" if source in builtin_names() else ""
        raise DataError(f"data path {source} does not exist; check the path.{hint} Accepted: {_ACCEPTED}.")


def read_source(source: str, kind: str | None = None) -> RawTask:
    """Recognise the layout of ``source`` and read its file lists/texts and labels."""
    check_source(source)
    source = str(source)
    if source.startswith("builtin:"):
        return read_builtin(source[len("builtin:"):].strip())
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() in TEXT_SUFFIXES:
            return read_text_task({"train": path}, "single text file", (
                f"a single file is the train split only; pass a directory holding train{path.suffix} "
                f"and {{split}}{path.suffix} instead."))
        raise DataError(f"{path} is a file glorac cannot read as data (only .jsonl/.csv files are); "
                        f"accepted: {_ACCEPTED}.")
    children = visible_children(path)
    if not children:
        raise DataError(f"data directory {path} is empty; accepted layouts: {_ACCEPTED}.")
    layouts = [(k, read) for k, read in _layouts(path) if kind in (None, k)]
    if not layouts:
        found = few([c.name + ("/" if c.is_dir() else "") for c in children], 6)
        wanted = f"{kind} data" if kind else "data"
        loose = any(c.is_file() and c.name.lower().endswith(IMAGE_SUFFIXES) for c in children)
        hint = (" It holds image files directly: put each in a folder named after its class "
                "(DIR/<class>/ or DIR/train/<class>/)." if loose and kind != "text" else "")
        raise DataError(f"no recognised {wanted} layout in {path} (it holds {found}).{hint} "
                        f"Accepted: {_ACCEPTED}.")
    return layouts[0][1]()


def _layouts(path: Path) -> list[tuple[str, Callable[[], RawTask]]]:
    """Candidate readers in order of precedence (cheap checks; nothing is read yet)."""
    found: list[tuple[str, Callable[[], RawTask]]] = []
    if has_vtab_lists(path):
        found.append(("image", lambda: read_vtab(path)))
    text_files = find_text_files(path)
    if text_files:
        found.append(("text", lambda: read_text_task(text_files, "text split files", (
            f"add {path}/{{split}}.jsonl (or .csv) with the same fields as the others."))))
    split_dirs = find_split_dirs(path)
    if split_dirs:
        found.append(("image", lambda: read_split_folders(path, split_dirs)))
    elif has_class_dirs(path):
        found.append(("image", lambda: read_class_folders(path)))
    return found


def _datasets(
    raw: RawTask, model, image_size, limits, seed, on_corrupt,
) -> tuple[dict[str, Dataset], list[str]]:
    """Limit each split, check image files, and wrap the rest in model-ready datasets."""
    prep = image_prep(model, image_size) if raw.kind == "image" else None
    splits: dict[str, Dataset] = {}
    skipped: list[str] = []
    checked: dict = {}  # trainval repeats train and val: check each file once
    for name, split in raw.splits.items():
        keep = limit_indices(split.targets, limits.get(name), seed)
        items = _take(split.items, keep)
        targets = [split.targets[i] for i in keep]
        if raw.kind == "text":
            splits[name] = TextDataset(items, targets)
        elif isinstance(items, np.ndarray):
            splits[name] = ArrayImageDataset(items, targets, prep)
        else:
            paths, targets, bad = drop_unreadable(items, targets, on_corrupt, split.where, checked,
                                                  prep.mode)
            skipped += bad
            if not paths:
                raise DataError(f"no readable images in {split.where}: all {len(bad)} are corrupt or "
                                f"unreadable ({few(bad)}). Replace the files.")
            splits[name] = ImageFileDataset(paths, targets, prep)
    return splits, list(dict.fromkeys(skipped))


def _take(items, indices: list[int]):
    if isinstance(items, np.ndarray):
        return items[np.asarray(indices, dtype=np.int64)]
    return [items[i] for i in indices]


def check_num_classes(data: TaskData, num_classes: int) -> None:
    """The model's head must have exactly as many outputs as the data has classes. When the
    labels were read from lines of files, a label the head cannot score is named by file and
    line (a stray label is more often the mistake than the head size).

    Causal-LM data has no classes: for it this checks nothing (the model's outputs are its
    vocabulary, which loading already checked against the tokenizer's ids)."""
    if data.task == "causal-lm" or num_classes == data.num_classes:
        return
    beyond = [(label, site) for label, site in data.label_sites.items() if label >= num_classes]
    if num_classes < data.num_classes and beyond and num_classes >= 1:
        label, site = beyond[0]  # the first such line read
        lines = sum(s.count for _, s in beyond)
        shown = few([f"{line} (label {t})" for t, s in beyond for line in s.first])
        raise DataError(
            f"{site.first[0]}: label {label}, but the model's head has {num_classes} outputs "
            f"(labels 0–{num_classes - 1}); {lines} line(s) in {data.source} have a label of "
            f"{num_classes} or more: {shown}. If those labels are mistakes, fix them; if the data "
            f"really has {data.num_classes} classes, pass --num-classes {data.num_classes} to "
            "glorac compile."
        )
    raise DataError(
        f"the data has {data.num_classes} classes but the model's head has {num_classes} "
        f"outputs; pass --num-classes {data.num_classes} to glorac compile."
    )


def make_loader(
    data: TaskData,
    split: str,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    sampler=None,
) -> DataLoader:
    """A DataLoader over one split. Shuffling draws from its own generator seeded by ``seed``
    (the global RNG is not touched), so a seed fixes the order of every epoch. With a
    ``sampler`` (e.g. DistributedSampler) the sampler decides the order and ``shuffle`` is
    ignored."""
    dataset = require_split(data, split)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}.")
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        collate_fn=data.collate, drop_last=drop_last, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
