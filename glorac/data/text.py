"""Text classification data: JSONL/CSV files with ``text`` and ``label``, the tokenizer
(from ``--tokenizer`` or the model's own directory) and a padding collate function."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from glorac.errors import DataError

from .core import Batch, LabeledDataset, RawSplit, RawTask, few, read_utf8, short_error

TEXT_SUFFIXES = (".jsonl", ".csv", ".tsv")
_SPLIT_STEMS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_INT = re.compile(r"[+-]?\d+")

Record = tuple[str, "int | str", str, int]  # text, raw label, "file:line" for messages, line


class TextDataset(LabeledDataset):
    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.items[index], self.targets[index]


class TextCollate:
    """Tokenise a batch: pad to its longest example, truncate at ``max_length``. A class,
    not a closure, so that DataLoader workers can pickle it."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: list[tuple[str, int]]) -> Batch:
        texts, labels = zip(*samples)
        encoded = self.tokenizer(list(texts), padding="longest", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        inputs = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}
        return Batch(inputs, torch.tensor(labels, dtype=torch.int64))


def find_text_files(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        split = _SPLIT_STEMS.get(child.stem.lower())
        if split is None or child.suffix.lower() not in TEXT_SUFFIXES or not child.is_file():
            continue
        if split in found:
            raise DataError(f"{root} has two files for the {split} split ({found[split].name} and "
                            f"{child.name}); keep one of them.")
        found[split] = child
    return found


def read_text_task(files: dict[str, Path], layout: str, hint: str) -> RawTask:
    records = {split: read_records(path) for split, path in files.items()}
    names, targets, labels = _label_space(records)
    splits = {split: RawSplit([r[0] for r in records[split]], targets[split], str(files[split]),
                              [r[3] for r in records[split]])
              for split in ("train", "val", "test") if split in records}
    return RawTask("text", names, splits, layout, split_hint=hint, labels=labels)


def read_records(path: Path) -> list[Record]:
    text = read_utf8(path)
    records = _read_jsonl(path, text) if path.suffix.lower() == ".jsonl" else _read_csv(path, text)
    if not records:
        raise DataError(f"{path} is empty: it holds no examples; expected records with fields "
                        "`text` and `label`.")
    return records


def jsonl_rows(path: Path, text: str, example: str) -> Iterator[tuple[int, str, Any]]:
    """(line number, "file:line", parsed value) of every non-blank line of a JSONL text;
    a line that is not JSON is a DataError naming it (``example``: what a line should be)."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield lineno, where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line "
                            f"must be one object such as {example}.") from None


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for lineno, where, row in jsonl_rows(path, text, '{"text": "...", "label": 3}'):
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            got = f"fields {few(sorted(row), 5)}" if isinstance(row, dict) else f"a {type(row).__name__}"
            lm = isinstance(row, dict) and "label" not in row and ("text" in row or "prompt" in row)
            hint = (" Records without labels are language-modelling data: load them with "
                    "task 'causal-lm'." if lm else "")
            raise DataError(f'{where}: expected an object with fields "text" and "label", got {got}.{hint}')
        records.append(_record(row["text"], row["label"], where, lineno))
    return records


def _read_csv(path: Path, text: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""),
                            delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if not header:
        return []
    if "text" not in header or "label" not in header:
        raise DataError(f"{path}: the header row must name columns `text` and `label`; it has "
                        f"{few(reader.fieldnames, 8)}. Rename the columns in the first line.")
    text_key = reader.fieldnames[header.index("text")]
    label_key = reader.fieldnames[header.index("label")]
    records = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if row.get(text_key) is None or row.get(label_key) is None:
            raise DataError(f"{where}: the row has fewer columns than the header; quote texts "
                            'that contain the delimiter ("a, b").')
        records.append(_record(row[text_key], row[label_key], where, reader.line_num))
    return records


def _record(text, label, where: str, line: int) -> Record:
    if not isinstance(text, str):
        raise DataError(f"{where}: `text` must be a string, got {type(text).__name__}.")
    if isinstance(label, str):
        label = label.strip()
        if not label:
            raise DataError(f"{where}: empty label; every example needs a class.")
    elif isinstance(label, bool) or not isinstance(label, int):
        raise DataError(f"{where}: `label` must be an integer class id or a class name string, "
                        f"got {label!r}.")
    return text, label, where, line


def _label_space(records: dict[str, list[Record]]) -> tuple[list[str], dict[str, list[int]], str]:
    """(class names, targets per split, "ids" or "names"). Integer labels (ints or integer
    strings everywhere) are class ids; otherwise the sorted distinct strings are the
    classes. A mix of the two is refused, naming the first line of the rarer kind."""
    every = [r for rs in records.values() for r in rs]
    is_id = [isinstance(r[1], int) or bool(_INT.fullmatch(r[1])) for r in every]
    if all(is_id):
        negative = next((r for r in every if int(r[1]) < 0), None)
        if negative is not None:
            raise DataError(f"{negative[2]}: negative label {negative[1]}; class ids start at 0.")
        count = max(int(r[1]) for r in every) + 1
        targets = {s: [int(r[1]) for r in rs] for s, rs in records.items()}
        return [str(i) for i in range(count)], targets, "ids"
    ids = sum(is_id)
    if ids:
        odd_is_id = ids * 2 <= len(every)  # name the first label of the rarer kind
        odd = next(r for r, i in zip(every, is_id) if i == odd_is_id)
        other = next(r for r, i in zip(every, is_id) if i != odd_is_id)
        kinds = ("an integer class id", "a class name")
        raise DataError(
            f"{_site(odd)}: label {odd[1]!r} is {kinds[not odd_is_id]}, but {_site(other)} has "
            f"label {other[1]!r}, {kinds[odd_is_id]} ({ids} of {len(every)} labels are integer "
            "ids). Use one kind for every label: integer class ids 0..K-1, or class names."
        )
    names = sorted({str(r[1]) for r in every})
    index = {name: i for i, name in enumerate(names)}
    return names, {s: [index[str(r[1])] for r in rs] for s, rs in records.items()}, "names"


def _site(record: Record) -> str:
    """``train.csv line 12``: the file and line a record came from, for label messages."""
    return f"{Path(record[2].rsplit(':', 1)[0]).name} line {record[3]}"


# ------------------------------------------------------------------------- tokenizer


def load_tokenizer(model: nn.Module | None, tokenizer_source: str | None):
    source = str(tokenizer_source) if tokenizer_source else _model_directory(model)
    if source is None:
        named = _model_name(model)
        why = (f"the model names `{named}`, which is not a local directory" if named
               else "the model does not name the directory it was loaded from")
        raise DataError(
            f"text data needs a tokenizer, and {why}. Pass --tokenizer DIR (tokenizer_source=DIR): "
            "a Hugging Face tokenizer directory (tokenizer.json or vocab.txt with "
            "tokenizer_config.json), usually the same directory as --model hf:DIR."
        )
    try:
        import transformers
    except ImportError:
        raise DataError("text data needs Hugging Face transformers for its tokenizer; install it "
                        "with pip install 'glorac[hf]'.") from None
    path = Path(source[3:] if source.startswith("hf:") else source).expanduser()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.exists():
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            else:
                tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise DataError(
            f"cannot load a tokenizer from {source} ({short_error(exc)}). Pass --tokenizer DIR with "
            "a directory that holds tokenizer.json (or vocab.txt) and tokenizer_config.json."
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models ship no pad token
    return tokenizer


def checked_max_length(tokenizer, max_length: int) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < max_length:
        warnings.warn(f"max_length {max_length} exceeds the tokenizer's limit {limit}; using {limit}.",
                      stacklevel=3)
        return limit
    return max_length


def model_configs(model: nn.Module | None):
    if model is None:
        return
    for module in model.modules():  # a wrapped or rewritten model keeps the config inside
        config = getattr(module, "config", None)
        if config is not None:
            yield config


def _model_name(model: nn.Module | None) -> str | None:
    for config in model_configs(model):
        name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
        if isinstance(name, (str, os.PathLike)) and str(name):
            return str(name)
    return None


def _model_directory(model: nn.Module | None) -> str | None:
    name = _model_name(model)
    return name if name and Path(name).expanduser().is_dir() else None

