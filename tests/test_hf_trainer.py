"""glorac in the Hugging Face Trainer (glorac.hf_trainer.GloraTrainer) and the
adapters-only directory format (glorac.save_adapters), on a tiny LLaMA on CPU."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

import glorac
from glorac.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_checkpoint
from tests.reference import perturb, rel_err, run_cli
from tests.test_causal_lm import SPEC, lm_dir  # noqa: F401 - the tiny LLaMA, its tokenizer and JSONL data

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


class TokenRows(torch.utils.data.Dataset):
    """The LM data's train split as the dicts a Trainer expects, plus a `text` column the
    model does not take (the Trainer must drop it by looking at forward's signature)."""

    def __init__(self, data, split: str):
        self.rows = data.splits[split]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        ids, labels = self.rows[i]
        return {"input_ids": ids, "labels": labels, "text": "not a model input"}


def _collate(rows):
    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), longest), 2)
    labels = torch.full((len(rows), longest), -100)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for k, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[k, :n], labels[k, :n], mask[k, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _supernet_and_data(lm_dir):
    root, base, data_dir = lm_dir
    spec = glorac.loads_spec(SPEC)
    supernet = glorac.build_supernet(spec, f"hf:{base}", task="causal-lm")
    data = glorac.data.load_data(str(data_dir), model=None, task="causal-lm", tokenizer_source=str(base))
    return supernet, data


def _args(out, **kw):
    defaults = dict(output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=2, learning_rate=3e-3,
                    logging_steps=1, save_strategy="epoch", report_to=[], use_cpu=True, seed=1,
                    disable_tqdm=True)
    return transformers.TrainingArguments(**{**defaults, **kw})


def test_forward_shows_the_wrapped_models_signature(lm_dir):  # noqa: F811
    supernet, _ = _supernet_and_data(lm_dir)
    params = inspect.signature(supernet.forward).parameters
    assert {"input_ids", "attention_mask", "labels"} <= set(params)
    assert "args" not in params  # the model's own parameters, not the wrapper's (*args, **kwargs)
    assert inspect.signature(supernet.forward) == inspect.signature(supernet.base_model.forward)
    ids = torch.tensor([[1, 5, 6, 7]])
    torch.testing.assert_close(supernet.forward(input_ids=ids).logits, supernet(input_ids=ids).logits)


def test_glora_trainer_trains_per_step_structures_and_saves_adapters_only(lm_dir, tmp_path, capsys):  # noqa: F811
    from glorac.hf_trainer import GloraTrainer

    supernet, data = _supernet_and_data(lm_dir)
    seen = {}

    class Record(transformers.TrainerCallback):  # the structure active in each step's last forward
        def on_step_end(self, args, state, control, **kw):
            seen[state.global_step - 1] = supernet.active_structure()

    trainer = GloraTrainer(model=supernet, args=_args(tmp_path / "run"), train_dataset=TokenRows(data, "train"),
                           data_collator=_collate, sampling="uniform", callbacks=[Record()])
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert sum(losses[-3:]) < sum(losses[:3]), losses  # it learns
    assert seen and all(seen[step] == trainer.sampler(step) for step in seen)  # the sampler's draw, per step
    assert len({str(s) for s in seen.values()}) > 1

    # Each checkpoint directory holds the adapters, never the base weights.
    ckpts = sorted((tmp_path / "run").glob("checkpoint-*"))
    assert ckpts
    files = {p.name for p in ckpts[-1].iterdir()}
    assert {ADAPTER_WEIGHTS, ADAPTER_CONFIG} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "adapter_model.safetensors"}
    base_bytes = sum(p.numel() * p.element_size() for p in supernet.base_model.parameters())
    assert (ckpts[-1] / ADAPTER_WEIGHTS).stat().st_size < base_bytes / 2
    stored = read_checkpoint(ckpts[-1])
    for key, value in supernet.adapter_state_dict().items():
        assert torch.equal(stored.adapters[key], value), key

    # glorac's own commands take the directory as they take a .pt checkpoint.
    root, base, data_dir = lm_dir
    searched, folded = tmp_path / "s.pt", tmp_path / "folded"
    code, out, err = run_cli(capsys, "search", ckpts[-1], "--data", data_dir, "-o", searched, "--no-progress")
    assert code == 0, err
    code, out, err = run_cli(capsys, "fold", searched, "-o", folded)
    assert code == 0, err
    served = transformers.AutoModelForCausalLM.from_pretrained(folded)
    chosen = glorac.load(searched).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert rel_err(served(input_ids=ids).logits, chosen(input_ids=ids).logits) <= 1e-5


def test_resumed_trainer_run_ends_with_the_same_adapters(lm_dir, tmp_path):  # noqa: F811
    from glorac.hf_trainer import GloraTrainer

    finals = []
    for resume in (False, True):
        supernet, data = _supernet_and_data(lm_dir)
        out = tmp_path / f"run{int(resume)}"
        args = _args(out, save_strategy="steps", save_steps=6, max_steps=12)
        trainer = GloraTrainer(model=supernet, args=args, train_dataset=TokenRows(data, "train"),
                               data_collator=_collate)
        if resume:
            trainer.train()  # writes checkpoint-6 and checkpoint-12; resume a fresh run from 6
            supernet, data = _supernet_and_data(lm_dir)
            trainer = GloraTrainer(model=supernet, args=args, train_dataset=TokenRows(data, "train"),
                                   data_collator=_collate)
            trainer.train(resume_from_checkpoint=str(out / "checkpoint-6"))
        else:
            trainer.train()
        finals.append(supernet.adapter_state_dict())
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], rtol=1e-5, atol=1e-7, msg=key)


def test_adapters_only_directory_round_trips_a_module_object_supernet(tmp_path):
    from tests.test_train import SPEC as DIGITS, digit_net

    torch.manual_seed(0)
    model = digit_net()
    supernet = glorac.build_supernet(glorac.loads_spec(DIGITS), model)
    perturb(supernet, seed=3)  # non-identity adapters
    structure = supernet.largest_structure()
    supernet.select(structure)
    glorac.save_adapters(supernet, tmp_path / "ad")
    pt = glorac.save(supernet, tmp_path / "sn.pt")  # the .pt form now takes module-object supernets too
    config = json.loads((tmp_path / "ad" / ADAPTER_CONFIG).read_text())
    assert config["format"] == "glorac.adapters" and config["meta"]["model_ref"] is None
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        want = supernet.eval()(x)
        for path in (tmp_path / "ad", pt):
            back = glorac.load(path, model=model).eval()
            assert back.structure == structure
            torch.testing.assert_close(back(x), want)

    # Without the model the checkpoint says how to load it, from Python and from the CLI.
    with pytest.raises(glorac.CheckpointError, match="glorac.load\\(path, model=YOUR_MODEL\\)"):
        glorac.load(tmp_path / "ad")
    # Another model's weights are refused by the digest.
    with pytest.raises(glorac.CheckpointError, match="weights differ"):
        glorac.load(tmp_path / "ad", model=digit_net())
    # Existing files are kept unless force.
    with pytest.raises(glorac.CheckpointError, match="already exists"):
        glorac.save_adapters(supernet, tmp_path / "ad")
    assert glorac.save_adapters(supernet, tmp_path / "ad", force=True) == tmp_path / "ad"


def test_cli_reads_adapter_directories_and_names_what_else_it_was_given(tmp_path, capsys):
    from tests.test_train import SPEC as DIGITS, digit_net

    supernet = glorac.build_supernet(glorac.loads_spec(DIGITS), digit_net())
    glorac.save_adapters(supernet, tmp_path / "ad")
    code, _, err = run_cli(capsys, "fold", tmp_path / "ad", "-o", tmp_path / "f.safetensors")
    assert code == 1 and "compiled from an nn.Module object" in err and "Traceback" not in err
    (tmp_path / "plain").mkdir()
    code, _, err = run_cli(capsys, "search", tmp_path / "plain", "--data", "builtin:digits", "-o", tmp_path / "x.pt")
    assert code == 1 and "without glorac_adapter.json" in err
    (tmp_path / "w.safetensors").write_bytes(b"x")
    code, _, err = run_cli(capsys, "search", tmp_path / "w.safetensors", "--data", "builtin:digits",
                           "-o", tmp_path / "x.pt")
    assert code == 1 and "what `glorac fold` writes" in err
    (tmp_path / "ad" / ADAPTER_WEIGHTS).unlink()
    code, _, err = run_cli(capsys, "fold", tmp_path / "ad", "-o", tmp_path / "g.safetensors")
    assert code == 1 and "no glorac_adapter.safetensors" in err
