"""Image layouts on disk: class-per-folder directories (with or without split folders) and
VTAB-1k list files (the layout of the GLoRA/NOAH code)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from glorac.errors import DataError

from .core import RawSplit, RawTask, few, read_utf8
from .images import IMAGE_SUFFIXES

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
VTAB_LISTS = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt",
              "test": "test.txt"}
_SUFFIXES = " ".join(IMAGE_SUFFIXES)


def visible_children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}.") from None


def images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted; hidden files and folders are ignored."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent, f) for f in files
                  if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def find_split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in visible_children(root):
        split = SPLIT_DIRS.get(child.name.lower())
        if split is None or not child.is_dir():
            continue
        if split in found:
            raise DataError(
                f"{root} has two folders for the {split} split ({found[split].name}/ and "
                f"{child.name}/); keep one of them."
            )
        found[split] = child
    return found


def has_class_dirs(root: Path) -> bool:
    return any(c.is_dir() and images_under(c) for c in visible_children(root))


def has_vtab_lists(root: Path) -> bool:
    return any((root / name).is_file() for name in VTAB_LISTS.values())


def read_split_folders(root: Path, dirs: dict[str, Path]) -> RawTask:
    per_split = {split: _classes_of(folder) for split, folder in dirs.items()}
    names = sorted(set().union(*(set(c) for c in per_split.values())))
    index = {name: i for i, name in enumerate(names)}
    if "train" in per_split:
        unseen = sorted(set(names) - set(per_split["train"]))
        if unseen:
            warnings.warn(f"{root}: classes {few(unseen)} have no folder in train/; the model "
                          "never sees them in training.", stacklevel=3)
    splits = {}
    for split in ("train", "val", "test"):
        if split in per_split:
            paths = [p for name in per_split[split] for p in per_split[split][name]]
            targets = [index[name] for name in per_split[split] for _ in per_split[split][name]]
            splits[split] = RawSplit(paths, targets, f"{dirs[split]}/")
    return RawTask("image", names, splits, "class folders with split folders",
                   split_hint=f"put its images in {root}/{{split}}/<class>/ (one folder per class).",
                   labels="folders")


def read_class_folders(root: Path) -> RawTask:
    """``DIR/<class>/*.png`` with no split folders: all of it is the train split."""
    classes = _classes_of(root)
    names = sorted(classes)
    paths = [p for name in names for p in classes[name]]
    targets = [i for i, name in enumerate(names) for _ in classes[name]]
    return RawTask(
        "image", names, {"train": RawSplit(paths, targets, f"{root}/")}, "class folders (train only)",
        split_hint=(f"{root} holds class folders directly, so all of it is the train split. Move "
                    f"them into {root}/train/ and put {{split}} images in {root}/{{split}}/<class>/."),
        labels="folders",
    )


def _classes_of(folder: Path) -> dict[str, list[Path]]:
    children = visible_children(folder)
    classes = {c.name: images_under(c) for c in children if c.is_dir()}
    count = sum(len(v) for v in classes.values())
    if count == 0:
        loose = [c.name for c in children if c.is_file() and c.name.lower().endswith(IMAGE_SUFFIXES)]
        if loose:
            raise DataError(
                f"{folder} holds images directly ({few(loose)}) but no class folders; put each "
                f"image in {folder}/<class name>/ so that its folder names its class."
            )
        raise DataError(
            f"split folder {folder} has no images: expected {folder}/<class>/ folders holding "
            f"{_SUFFIXES} files."
        )
    empty = sorted(name for name, paths in classes.items() if not paths)
    if empty:
        warnings.warn(f"{folder}: class folder(s) {few(empty)} hold no images.", stacklevel=4)
    return classes


def read_vtab(root: Path) -> RawTask:
    lists = {split: root / name for split, name in VTAB_LISTS.items() if (root / name).is_file()}
    splits = {split: _read_list_file(path, root) for split, path in lists.items()}
    num_classes = max(max(s.targets) for s in splits.values()) + 1
    ordered = {s: splits[s] for s in ("train", "val", "trainval", "test") if s in splits}
    _check_one_label_per_image(ordered, root)
    return RawTask("image", [str(i) for i in range(num_classes)], ordered, "VTAB-1k list files",
                   split_hint=f"add a list file for it next to the others in {root} "
                              f"({', '.join(f'{s}: {n}' for s, n in VTAB_LISTS.items())}).",
                   labels="ids")


def _check_one_label_per_image(splits: dict[str, RawSplit], root: Path) -> None:
    """An image listed twice (in one list file, or in train800.txt and train800val200.txt)
    must have the same label each time."""
    seen: dict[Path, tuple[int, str]] = {}
    for split in splits.values():
        name = Path(split.where).name
        for path, target, line in zip(split.items, split.targets, split.lines or []):
            first = seen.setdefault(path, (target, f"{name} line {line}"))
            if first[0] != target:
                raise DataError(
                    f"{name} line {line}: {os.path.relpath(path, root)} has label {target}, but "
                    f"{first[1]} gives the "
                    f"same image label {first[0]}; an image has one class. Fix one of the two lines."
                )


def _read_list_file(path: Path, root: Path) -> RawSplit:
    paths, targets, lines, missing = [], [], [], []
    for lineno, line in enumerate(read_utf8(path).splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: malformed line {text!r}; each line must be "
                            "`relative/path label` (an image path, a space, an integer class id).")
        relative, label = parts
        try:
            target = int(label)
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {label!r} is not an integer class id; each "
                            "line must be `relative/path label`.") from None
        if target < 0:
            raise DataError(f"{path}:{lineno}: negative label {target}; class ids start at 0.")
        file = root / relative
        if not file.is_file():
            missing.append(f"{path.name}:{lineno} {relative}")
        paths.append(file)
        targets.append(target)
        lines.append(lineno)
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {path} do not exist: {few(missing)}. Paths in a "
            f"list file are relative to the folder that holds it ({root}); check that the images "
            "were extracted there."
        )
    if not paths:
        raise DataError(f"list file {path} lists no images; expected lines `relative/path label`.")
    return RawSplit(paths, targets, str(path), lines)
