"""FSDP2 under torchrun (2 CPU processes, Gloo): the frozen base sharded, the adapters
replicated; training and search give what one process gives, within float tolerance."""

from __future__ import annotations

import pytest
import torch

import glorac
from glorac.checkpoint import read_checkpoint
from tests.reference import rel_err, run_cli, run_torchrun
from tests.test_causal_lm import lm_dir  # noqa: F401 - the tiny LLaMA, its tokenizer and JSONL data

transformers = pytest.importorskip("transformers")


def _trained_tensors(path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(path)
    return {**ckpt.adapters, **ckpt.trained}


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def _digits_supernet(tmp_path):
    """tests.test_train's digits MLP (no dropout) compiled to a checkpoint."""
    from tests.test_train import SPEC

    spec = tmp_path / "digits.glora"
    spec.write_text(SPEC)
    sn = tmp_path / "sn.pt"
    assert glorac.cli.main(["compile", str(spec), "--model", "tests.test_train:digit_net_no_dropout",
                            "-o", str(sn)]) == 0
    return sn


def test_fsdp_trains_and_searches_a_causal_lm_like_one_process(capsys, lm_dir, tmp_path):  # noqa: F811
    root, base, data = lm_dir
    spec = root / "lm.glora"
    from tests.test_causal_lm import SPEC

    spec.write_text(SPEC)
    sn = tmp_path / "sn.pt"
    assert run_cli(capsys, "compile", spec, "--model", f"hf:{base}", "--task", "causal-lm", "-o", sn)[0] == 0
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    code, _, err = run_cli(capsys, "train", sn, "--data", data, "-o", one, "--epochs", "1", "--no-progress")
    assert code == 0, err
    proc = run_torchrun("train", sn, "--data", data, "-o", two, "--epochs", "1", "--fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_checkpoint(two).meta.history.train
    assert (record.world, record.sharding) == (2, "fsdp")
    # The loss is the mean over all ranks' label tokens, so 2 processes compute the
    # one-process gradient (the ranks' token counts differ).
    _assert_same_tensors(_trained_tensors(one), _trained_tensors(two))

    # Search: every rank scores every candidate on its share of the val set. Batch 23 of
    # 24 examples leaves rank 1 an empty share of the last batch (it runs uncounted).
    searched_one, searched_two = tmp_path / "s1.pt", tmp_path / "s2.pt"
    code, _, err = run_cli(capsys, "search", one, "--data", data, "-o", searched_one, "--batch-size", "23",
                           "--no-progress")
    assert code == 0, err
    proc = run_torchrun("search", one, "--data", data, "-o", searched_two, "--batch-size", "23", "--fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_checkpoint(searched_one).meta, read_checkpoint(searched_two).meta
    assert b.history.search.best_accuracy == pytest.approx(a.history.search.best_accuracy, abs=1e-5)
    assert a.structure == b.structure

    # What 2 FSDP processes wrote folds on one and serves with plain transformers.
    folded = tmp_path / "folded"
    code, _, err = run_cli(capsys, "fold", searched_two, "-o", folded)
    assert code == 0, err
    served = transformers.AutoModelForCausalLM.from_pretrained(folded).eval()
    supernet = glorac.load(searched_two).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        want = supernet(input_ids=ids).logits
        got = served(input_ids=ids).logits
    assert rel_err(got, want) <= 1e-5


def test_fsdp_shards_the_base_of_a_traced_model(tmp_path):
    """A traced (fx) classifier: one FSDP unit per called layer; the same tensors as one process."""
    from tests.test_train import DATA

    sn = _digits_supernet(tmp_path)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    args = (*DATA, "--epochs", "1", "--warmup-epochs", "0")
    assert glorac.cli.main(["train", str(sn), *args, "-o", str(one), "--no-progress"]) == 0
    proc = run_torchrun("train", sn, *args, "-o", two, "--fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_tensors(_trained_tensors(one), _trained_tensors(two))


def test_shard_units_follow_the_model():
    from glorac.sharding import shard_units

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=1)
    llama = transformers.LlamaForCausalLM(config)
    assert [type(u).__name__ for u in shard_units(llama)] == ["LlamaDecoderLayer"] * 3

    class Stack(torch.nn.Module):  # no Hugging Face metadata: the longest ModuleList's elements
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
            self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(3)])

    stack = Stack()
    assert shard_units(stack) == list(stack.blocks)


def test_fsdp_on_one_process_changes_nothing(tmp_path):
    """--fsdp without torchrun trains as a single process does (nothing to shard over)."""
    from tests.test_train import DATA

    sn = _digits_supernet(tmp_path)
    outs = {}
    for flags in ((), ("--fsdp",)):
        outs[flags] = tmp_path / f"t{len(flags)}.pt"
        assert glorac.cli.main(["train", str(sn), *DATA, "--epochs", "1", "--warmup-epochs", "0",
                                "-o", str(outs[flags]), "--no-progress", *flags]) == 0
    a, b = (_trained_tensors(p) for p in outs.values())
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_checkpoint(outs[("--fsdp",)]).meta.history.train.sharding is None
