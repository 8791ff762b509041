"""A Hugging Face causal LM end to end through the CLI: compile --task causal-lm → train →
search (by val loss) → fold → eval (perplexity) → plain transformers loads and generates."""

from __future__ import annotations

import json
import random

import pytest
import torch

import glorac
from glorac.dsl.library import PAPER_SPACE
from tests.reference import rel_err, run_cli
from tests.test_data_lm import ID, make_tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

SPEC = PAPER_SPACE + """
adapt "model.layers.*.self_attn.{q_proj,v_proj}", "model.layers.*.mlp.down_proj" with paper(r=4)
budget 4K
training { epochs = 3  lr = 3e-3  batch_size = 8  warmup_epochs = 0  seed = 1 }
search { population = 6  generations = 1  parents = 3  mutations = 3  crossovers = 3  seed = 2 }
"""


def _records(n: int, seed: int) -> list[dict]:
    """A tiny language: `the cat sat on a mat` / `Q: yes A: no` patterns the model can learn."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append({"text": " ".join(rng.choice([["the", "cat", "sat", "on", "a", "mat"],
                                                     ["the", "dog", "ran", "on", "a", "mat"]]))})
        else:
            out.append({"text": "Q: yes A: no" if rng.random() < 0.5 else "Q: no A: yes"})
    return out


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    base = root / "base"
    config = transformers.LlamaConfig(vocab_size=len(ID), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False, bos_token_id=ID["<bos>"], eos_token_id=ID["<eos>"],
                                      pad_token_id=ID["<eos>"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(config).save_pretrained(base)
    make_tokenizer(base)  # the tokenizer lives beside the weights, as on the hub
    data = root / "data"
    data.mkdir()
    for split, n, seed in (("train", 96, 0), ("val", 24, 1), ("test", 24, 2)):
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in _records(n, seed)) + "\n")
    return root, base, data


def test_causal_lm_from_compile_to_a_folded_model_that_plain_transformers_serves(capsys, lm_dir):
    root, base, data = lm_dir
    spec = root / "lm.glora"
    spec.write_text(SPEC)
    sn, trained, searched, folded = (root / n for n in ("sn.pt", "sn.trained.pt", "s.pt", "folded"))
    code, out, err = run_cli(capsys, "compile", spec, "--model", f"hf:{base}", "--task", "causal-lm", "-o", sn)
    assert code == 0, err
    assert glorac.load(sn).model_ref.task == "causal-lm"

    code, out, err = run_cli(capsys, "train", sn, "--data", data, "--no-progress")
    assert code == 0, err
    log = [json.loads(x) for x in (root / "sn.trained.metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0], losses  # it learns the tiny language

    code, out, err = run_cli(capsys, "search", trained, "--data", data, "-o", searched, "--no-progress")
    assert code == 0, err
    assert "best: val loss" in out
    assert "val accuracy" not in out  # the table's fitness column is minus the loss, and says so
    history = glorac.load(searched).history.search
    assert history.task == "causal-lm" and history.best_accuracy < 0  # minus the val token loss

    code, out, err = run_cli(capsys, "fold", searched, "-o", folded)
    assert code == 0, err
    assert (folded / "tokenizer.json").is_file() and (folded / "generation_config.json").is_file()

    code, out, err = run_cli(capsys, "eval", folded, "--data", data, "--split", "test")
    assert code == 0, err
    assert "perplexity" in out and "tokens" in out
    code, out, err = run_cli(capsys, "eval", folded, "--data", data, "--split", "test", "--json")
    folded_eval = json.loads(out)
    code, out, err = run_cli(capsys, "eval", searched, "--data", data, "--split", "test", "--json")
    assert abs(json.loads(out)["loss"] - folded_eval["loss"]) < 1e-4  # the fold computes what the supernet does

    # plain transformers: the right class, the same logits as the supernet, the same generation
    model = transformers.AutoModelForCausalLM.from_pretrained(folded).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folded)
    assert type(model).__name__ == "LlamaForCausalLM"
    supernet = glorac.load(searched).eval()
    ids = tokenizer("the cat sat", return_tensors="pt").input_ids
    with torch.no_grad():
        assert rel_err(model(ids).logits, supernet(input_ids=ids).logits) <= 1e-5
        generated = model.generate(ids, max_new_tokens=4, do_sample=False)
        reference = ids
        for _ in range(4):  # greedy decoding through the supernet itself
            nxt = supernet(input_ids=reference).logits[:, -1].argmax(-1, keepdim=True)
            reference = torch.cat([reference, nxt], 1)
    assert torch.equal(generated[:, :reference.shape[1]], reference[:, :generated.shape[1]])


def test_gradient_checkpointing_trains_the_same_tensors(capsys, lm_dir):
    root, base, data = lm_dir
    spec = root / "gc.glora"
    spec.write_text(SPEC.replace("epochs = 3", "epochs = 1"))
    sn = root / "gc.pt"
    code, _, err = run_cli(capsys, "compile", spec, "--model", f"hf:{base}", "--task", "causal-lm", "-o", sn)
    assert code == 0, err
    outs = {}
    for flag in ("--no-gradient-checkpointing", "--gradient-checkpointing"):
        outs[flag] = root / f"gc{flag}.pt"
        code, _, err = run_cli(capsys, "train", sn, "--data", data, "-o", outs[flag], flag, "--no-progress")
        assert code == 0, err
    plain, checkpointed = (glorac.load(p).adapter_state_dict() for p in outs.values())
    assert glorac.load(outs["--gradient-checkpointing"]).history.train.settings.gradient_checkpointing
    assert any(v.abs().sum() > 0 for k, v in plain.items() if not k.endswith("_in"))  # it trained
    for key in plain:
        assert torch.allclose(plain[key], checkpointed[key], rtol=1e-5, atol=1e-7), key


def test_gradient_checkpointing_is_refused_for_a_traced_model(capsys, tmp_path):
    spec = tmp_path / "s.glora"
    spec.write_text(PAPER_SPACE + 'adapt "body.*" type Linear with paper(r=2)\ntrain "head"\n')
    sn = tmp_path / "sn.pt"
    code, _, err = run_cli(capsys, "compile", spec, "--model", "tests.test_train:digit_net", "-o", sn)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", sn, "--data", "builtin:digits", "--image-size", "8",
                           "--gradient-checkpointing", "--no-progress")
    assert code == 1 and "gradient_checkpointing works for Hugging Face models" in err
    assert not (tmp_path / "sn.trained.pt").exists()


def test_group_by_length_trains_with_less_padding(capsys, lm_dir):
    from glorac.trainer import batch_order

    root, base, data = lm_dir
    spec = root / "grouped.glora"
    spec.write_text(SPEC)
    sn = root / "grouped.pt"
    assert run_cli(capsys, "compile", spec, "--model", f"hf:{base}", "--task", "causal-lm", "-o", sn)[0] == 0
    out = root / "grouped.trained.pt"
    code, _, err = run_cli(capsys, "train", sn, "--data", data, "-o", out, "--group-by-length", "--no-progress")
    assert code == 0, err
    supernet = glorac.load(out)
    assert supernet.history.train.settings.group_by_length
    log = [r["loss"] for r in supernet.history.train.log if "loss" in r]
    assert log[-1] < log[0], log

    # On this data (two text lengths), grouping pads less than the plain order does.
    lengths = glorac.data.load_data(str(data), model=None, task="causal-lm",
                                    tokenizer_source=str(base)).splits["train"].lengths

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b.tolist()) - sum(lengths[i] for i in b.tolist())
                   for b in batches)

    assert padding(batch_order(len(lengths), 8, 1, 0, lengths)) < padding(batch_order(len(lengths), 8, 1, 0))


def test_group_by_length_is_refused_for_classification_before_the_model_is_built(capsys, tmp_path, monkeypatch):
    spec = tmp_path / "s.glora"
    spec.write_text(PAPER_SPACE + 'adapt "body.*" type Linear with paper(r=2)\ntrain "head"\n')
    sn = tmp_path / "sn.pt"
    assert run_cli(capsys, "compile", spec, "--model", "tests.test_train:digit_net", "-o", sn)[0] == 0
    import glorac.workflow

    monkeypatch.setattr(glorac.workflow, "supernet_from", lambda *a, **k: pytest.fail("the model was built"))
    code, _, err = run_cli(capsys, "train", sn, "--data", "builtin:digits", "--image-size", "8",
                           "--group-by-length", "--no-progress")
    assert code == 1 and "only causal-LM data" in err and "--no-group-by-length" in err
    assert not (tmp_path / "sn.trained.pt").exists()
