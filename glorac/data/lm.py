"""Causal language-modelling data: JSONL records ``{"text": ...}`` or
``{"prompt": ..., "completion": ...}``, tokenised once up front with the model's tokenizer.

A source is a directory holding ``train.jsonl`` (plus ``val.jsonl``/``valid``/``validation``,
``test.jsonl``) or a single ``.jsonl`` file (the train split only). Each file holds one kind
of record, and every file of a source the same kind.

One example is ``[BOS] + tokens + [EOS]``: BOS only when the tokenizer itself puts one in
front of a text (Llama-style; GPT-2 does not), EOS whenever the tokenizer has one; then cut
at ``max_length`` (a cut text loses its EOS: it does not end there). A prompt and its
completion are tokenised separately and joined, so the boundary is exact (put the space
between them at the start of the completion: ``" Paris"``). Labels are the input ids,
unshifted (the trainer compares ``logits[:, :-1]`` with ``labels[:, 1:]``), with -100 on
the BOS, on every prompt token and on padding: a prompt/completion example is scored on
its completion (and EOS) only.

Batches are padded on the right to their longest example. The order of examples is the
trainer's (seeded); its ``group_by_length`` setting batches examples of similar length
(``LMDataset.lengths``) to cut the padding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from glorac.errors import DataError

from .core import Batch, TaskData, few, limit_indices, read_utf8
from .text import TEXT_SUFFIXES, checked_max_length, find_text_files, jsonl_rows, load_tokenizer, model_configs

IGNORE = -100  # the label torch's cross_entropy (and transformers) ignore
TASKS = ("classification", "causal-lm")
TEXT, PAIR = "text", "prompt/completion"
_RECORD = {TEXT: '{"text": ...}', PAIR: '{"prompt": ..., "completion": ...}'}
_SHAPES = f'{_RECORD[TEXT]} or {_RECORD[PAIR]}'


# ------------------------------------------------------------------------ records


@dataclass
class LMSplit:
    """One split's records as read: ``prompts[i]`` is None for text records."""

    where: str
    kind: str  # TEXT or PAIR
    texts: list[str] = field(default_factory=list)  # the text, or the completion
    prompts: list[str | None] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


@dataclass
class LMRaw:
    splits: dict[str, LMSplit]
    layout: str
    split_hint: str
    kind: str


def read_lm_source(source) -> LMRaw:
    """Recognise a causal-LM source and read its records (nothing is tokenised yet)."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise DataError(f"no data source given (got {source!r}); causal-LM data is a directory "
                        f"holding train.jsonl (and val.jsonl, test.jsonl) or one .jsonl file, with "
                        f"records {_SHAPES}.")
    text = str(source)
    if text.startswith("builtin:"):
        raise DataError(f"{text} is classification data; there is no built-in causal-LM data. Pass a "
                        f"directory holding train.jsonl and val.jsonl with records {_SHAPES}.")
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"data path {text} does not exist; check the path. Causal-LM data is a "
                        f"directory holding train.jsonl (and val.jsonl, test.jsonl) or one .jsonl file.")
    if path.is_file():
        _check_jsonl(path)
        files = {"train": path}
        layout = "single causal-LM JSONL file"
        hint = ("a single file is the train split only; pass a directory holding train.jsonl and "
                "{split}.jsonl instead.")
    else:
        files = find_text_files(path)
        if not files:
            children = sorted(c.name + ("/" if c.is_dir() else "") for c in path.iterdir()
                              if not c.name.startswith("."))
            held = f"it holds {few(children, 6)}" if children else "it is empty"
            raise DataError(f"no causal-LM data in {path} ({held}); expected train.jsonl (and "
                            f"val.jsonl, test.jsonl) with records {_SHAPES}.")
        for file in files.values():
            _check_jsonl(file)
        layout = "causal-LM JSONL files"
        hint = ""  # filled in below, once the record kind is known
    splits = {name: read_lm_records(files[name]) for name in ("train", "val", "test") if name in files}
    first = next(iter(splits.values()))
    for split in splits.values():
        if split.kind != first.kind:
            raise DataError(
                f"{split.where} holds {split.kind} records ({_RECORD[split.kind]}), but {first.where} "
                f"holds {first.kind} records ({_RECORD[first.kind]}); every split of a data set must "
                "hold the same kind, or val loss measures something other than what is trained."
            )
    if not hint:
        hint = f"add {path}/{{split}}.jsonl with {first.kind} records ({_RECORD[first.kind]}), like the others."
    return LMRaw(splits, layout, hint, first.kind)


def _check_jsonl(path: Path) -> None:
    if path.suffix.lower() == ".jsonl":
        return
    what = "a CSV file" if path.suffix.lower() in TEXT_SUFFIXES else "not a .jsonl file"
    raise DataError(f"{path} is {what}; causal-LM data is JSONL, one object a line: {_SHAPES}.")


def read_lm_records(path: Path) -> LMSplit:
    """The records of one JSONL file; every bad line is a DataError naming file and line."""
    split: LMSplit | None = None
    first_line = 0
    for lineno, where, row in jsonl_rows(path, read_utf8(path), _SHAPES):
        kind = _kind(row, where)
        if split is None:
            split, first_line = LMSplit(str(path), kind), lineno
        elif kind != split.kind:
            raise DataError(
                f"{where}: a {kind} record ({_RECORD[kind]}), but line {first_line} of "
                f"{path.name} is a {split.kind} record ({_RECORD[split.kind]}); one file holds "
                "one kind of record: write them all as text records or all as prompt/completion "
                "records."
            )
        if kind == TEXT:
            split.texts.append(_field(row, "text", where))
            split.prompts.append(None)
        else:
            split.prompts.append(_field(row, "prompt", where))
            split.texts.append(_field(row, "completion", where))
        split.lines.append(lineno)
    if split is None:
        raise DataError(f"{path} is empty: it holds no examples; expected one record a line, "
                        f"{_SHAPES}.")
    return split


def _kind(row, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object {_SHAPES}, got a {type(row).__name__}.")
    if "label" in row or "labels" in row:
        raise DataError(
            f"{where}: the record has a `label` field, but causal-LM records are {_SHAPES}: the "
            "text itself is what is learnt, nothing is a class. If this is classification data, "
            "load it as such (task 'classification', the default); otherwise drop the label fields."
        )
    has_text = "text" in row
    has_pair = "prompt" in row or "completion" in row
    if has_text and has_pair:
        raise DataError(f'{where}: the record has both "text" and "prompt"/"completion"; a record is '
                        f"either {_RECORD[TEXT]} or {_RECORD[PAIR]}.")
    if has_pair:
        missing = [k for k in ("prompt", "completion") if k not in row]
        if missing:
            raise DataError(f'{where}: the record has no "{missing[0]}" field; prompt/completion '
                            f"records need both: {_RECORD[PAIR]}.")
        return PAIR
    if has_text:
        return TEXT
    got = f"fields {few(sorted(row), 5)}" if row else "an empty object"
    raise DataError(f"{where}: expected an object {_SHAPES}, got {got}.")


def _field(row: dict, name: str, where: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: `{name}` must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise DataError(f"{where}: empty `{name}`; every record needs some {name} text.")
    return value


# ------------------------------------------------------------------ tokenisation


class LMDataset(Dataset):
    """Tokenised examples: ``self[i]`` is ``(input_ids, labels)``, two equal-length lists of
    ints (labels unshifted, -100 where no loss is taken)."""

    def __init__(self, ids: Sequence[list[int]], masked: Sequence[int], where: str = "",
                 lines: Sequence[int] | None = None):
        if len(ids) != len(masked):
            raise ValueError("ids and masked differ in length")
        self.ids = list(ids)
        self.masked = [int(m) for m in masked]  # leading tokens with label -100 (BOS, prompt)
        self.where = where
        self.lines = list(lines) if lines is not None else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[list[int], list[int]]:
        ids, masked = self.ids[index], self.masked[index]
        return list(ids), [IGNORE] * masked + list(ids[masked:])

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.ids]

    def label_tokens(self, shifted: bool = True) -> int:
        """How many labels are not -100; ``shifted``: only those the shifted loss scores (a
        label at position 0 is never predicted, as nothing comes before it)."""
        start = 1 if shifted else 0
        return sum(len(ids) - max(masked, start) for ids, masked in zip(self.ids, self.masked)
                   if len(ids) > max(masked, start))

    def select(self, indices: Sequence[int]) -> "LMDataset":
        """A copy holding only ``indices`` (in that order)."""
        lines = [self.lines[i] for i in indices] if self.lines is not None else None
        return LMDataset([self.ids[i] for i in indices], [self.masked[i] for i in indices],
                         self.where, lines)


class LMCollate:
    """Pad a batch on the right to its longest example: pad id in ``input_ids``, 0 in
    ``attention_mask``, -100 in ``labels``. A class, not a closure, so that DataLoader
    workers can pickle it."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, samples: list[tuple[list[int], list[int]]]) -> Batch:
        longest = max(len(ids) for ids, _ in samples)
        input_ids = torch.full((len(samples), longest), self.pad_id, dtype=torch.int64)
        attention = torch.zeros((len(samples), longest), dtype=torch.int64)
        labels = torch.full((len(samples), longest), IGNORE, dtype=torch.int64)
        for row, (ids, target) in enumerate(samples):
            n = len(ids)
            input_ids[row, :n] = torch.as_tensor(ids, dtype=torch.int64)
            attention[row, :n] = 1
            labels[row, :n] = torch.as_tensor(target, dtype=torch.int64)
        return Batch({"input_ids": input_ids, "attention_mask": attention}, labels)


def special_ids(tokenizer) -> tuple[int | None, int | None]:
    """(BOS id if the tokenizer itself puts one in front of a text, EOS id or None)."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    if bos is not None:
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        if with_special[:1] != [bos] or plain[:1] == [bos]:
            bos = None
    return bos, eos


def encode_split(split: LMSplit, tokenizer, max_length: int) -> LMDataset:
    """Tokenise one split: ``[BOS] + prompt + completion|text + [EOS]``, cut at ``max_length``."""
    bos, eos = special_ids(tokenizer)
    head = [bos] if bos is not None else []
    tail = [eos] if eos is not None else []

    def tokens(texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        # Each part is cut at max_length already (the joined example is cut again below):
        # the same tokens as a full encoding, without the "longer than the maximum" warning.
        return tokenizer(texts, add_special_tokens=False, truncation=True,
                         max_length=max_length)["input_ids"]

    bodies = tokens(split.texts)
    pairs = [i for i, p in enumerate(split.prompts) if p is not None]
    prompts = dict(zip(pairs, tokens([split.prompts[i] for i in pairs])))
    ids, masked, unscored = [], [], []
    for i, body in enumerate(bodies):
        prompt = prompts.get(i)
        lead = head + (list(prompt) if prompt is not None else [])
        example = (lead + list(body) + tail)[:max_length]
        n_masked = len(lead) if prompt is not None else len(head)
        if prompt is not None and n_masked >= len(example):
            unscored.append(i)
        ids.append(example)
        masked.append(min(n_masked, len(example)))
    if unscored:
        name = Path(split.where).name
        first = split.lines[unscored[0]]
        sites = few([f"line {split.lines[i]}" for i in unscored])
        raise DataError(
            f"{split.where}:{first}: the prompt fills all of max_length {max_length} tokens, so no "
            f"completion token is left to learn from; {len(unscored)} record(s) of {name} are like "
            f"this ({sites}). Raise max_length (--max-length), or shorten those prompts."
        )
    return LMDataset(ids, masked, split.where, split.lines)


def _vocab_size(model: nn.Module | None) -> int | None:
    for config in model_configs(model):
        size = getattr(config, "vocab_size", None)
        if isinstance(size, int) and size > 0:
            return size
    return None


def load_lm_data(source, *, model: nn.Module | None, tokenizer_source: str | None,
                 max_length: int, limits: dict[str, int], seed: int) -> TaskData:
    """:func:`glorac.data.load_data` for ``task="causal-lm"`` (arguments already checked)."""
    if max_length < 2:
        raise DataError(f"max_length must be at least 2 for causal-LM data (one token predicts the "
                        f"next), got {max_length}.")
    raw = read_lm_source(source)
    tokenizer = load_tokenizer(model, tokenizer_source)
    max_length = checked_max_length(tokenizer, max_length)
    vocab = _vocab_size(model)
    splits: dict[str, Dataset] = {}
    for name, split in raw.splits.items():
        keep = limit_indices([0] * len(split.texts), limits.get(name), seed)
        kept = LMSplit(split.where, split.kind, [split.texts[i] for i in keep],
                       [split.prompts[i] for i in keep], [split.lines[i] for i in keep])
        dataset = encode_split(kept, tokenizer, max_length)
        top = max((max(ids) for ids in dataset.ids if ids), default=-1)
        if vocab is not None and top >= vocab:
            raise DataError(
                f"{split.where}: the tokenizer gives token id {top}, but the model's vocabulary has "
                f"{vocab} tokens; the tokenizer is not the model's. Pass the model's own tokenizer "
                "directory (--tokenizer DIR)."
            )
        splits[name] = dataset
    pad = tokenizer.pad_token_id  # load_tokenizer made EOS the pad token when there was none
    collate = LMCollate(pad if pad is not None else 0)  # any id: padding is masked out
    return TaskData("text", 0, [], splits, collate, str(source), layout=f"{raw.layout} ({raw.kind} records)",
                    split_hint=raw.split_hint, task="causal-lm")
