"""``glorac fold`` on a sharded safetensors Hugging Face model: shard by shard.

Tiny models are saved with ``save_pretrained(max_shard_size=...)`` so they span many
shards; checkpoints are compiled from the ``hf:DIR`` reference, given non-zero adapters
and trained tensors (a zero adapter folds to the base weights and proves nothing), and
folded through the CLI. The folded directory must load with ``from_pretrained`` and
compute what the supernet computes, hold the same shard files, and be produced while
holding at most one shard in memory.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.folding import export
from glorac.folding import shards as sharded
from glorac.errors import CheckpointError, FoldError
from glorac.ir import Kind, Structure
from glorac.models import resolve_model
from tests.reference import perturb, random_structure, rel_err, run_cli
from tests.zoo import ZOO

transformers = pytest.importorskip("transformers")

SPACE = PAPER_SPACE
LLAMA_SPEC = SPACE + """
adapt "**.layers.*.self_attn.{q_proj,k_proj,v_proj,o_proj}",
      "**.layers.*.mlp.{gate_proj,up_proj,down_proj}" with paper(r=4)
train "norm"
"""




def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _tokens() -> torch.Tensor:
    return torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0))


def _llama(*, tied: bool):
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=tied,
        initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(config)


def _save_llama(directory: Path, *, tied: bool) -> Path:
    _llama(tied=tied).save_pretrained(directory, max_shard_size="40KB")
    assert len(_shard_files(directory)) >= 3
    return directory


def _shard_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.safetensors"))


def _compile(root: Path, base_dir: Path, spec_text: str, *, seed: int, select: bool = True,
             structure: Structure | None = None, name: str = "supernet.pt"):
    """(checkpoint, supernet, structure): compiled from hf:DIR, adapters and trained tensors moved."""
    spec = root / f"{name}.glora"
    spec.write_text(spec_text)
    model, ref = resolve_model(f"hf:{base_dir}")
    supernet = glorac.build_supernet(spec, model)
    supernet.model_ref = ref
    perturb(supernet, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in supernet.plan.trained:
            for p in supernet.base_model.get_submodule(module).parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    structure = structure or random_structure(supernet, seed=seed + 1)
    if select:
        supernet.select(structure)
    ckpt = glorac.save(supernet, root / name)
    supernet.activate(structure)
    return ckpt, supernet, structure


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def llama(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"llama-{'tied' if request.param else 'untied'}")
    base_dir = _save_llama(root / "base", tied=request.param)
    ckpt, supernet, structure = _compile(root, base_dir, LLAMA_SPEC, seed=5)
    return base_dir, ckpt, supernet, structure


class _Watch:
    """Wraps the module's shard reader/writer; records the most tensor bytes held at once."""

    def __init__(self, monkeypatch):
        self.alive: list[weakref.ref] = []
        self.peak = self.loads = self.saves = 0
        load, save = sharded._load_shard, sharded._save_shard

        def watched_load(path):
            tensors = load(path)
            self.loads += 1
            self._track(tensors.values())
            return tensors

        def watched_save(tensors, path, metadata):
            self.saves += 1
            self._track(tensors.values())
            save(tensors, path, metadata)

        monkeypatch.setattr(sharded, "_load_shard", watched_load)
        monkeypatch.setattr(sharded, "_save_shard", watched_save)

    def _track(self, tensors) -> None:
        self.alive += [weakref.ref(t) for t in tensors]
        storages = {}
        for ref in self.alive:
            t = ref()
            if t is not None:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        self.peak = max(self.peak, sum(storages.values()))


def _shard_bytes(directory: Path) -> list[int]:
    return [sum(t.numel() * t.element_size() for t in load_file(str(p)).values())
            for p in sorted(directory.glob("*.safetensors"))]


# ------------------------------------------------------------------------------ happy path

def test_sharded_fold_loads_with_from_pretrained_and_matches_the_supernet(capsys, llama, tmp_path, monkeypatch):
    base_dir, ckpt, supernet, structure = llama
    watch = _Watch(monkeypatch)

    def no_whole_model(*_a, **_k):
        raise AssertionError("the streaming path must not build the whole model")

    monkeypatch.setattr(export, "supernet_from", no_whole_model)
    monkeypatch.setattr(export, "END_TO_END_BYTES", 0)  # as for a model too large to hold twice
    out = tmp_path / "folded"
    code, stdout, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 0, err
    assert "end-to-end error was not measured" in stdout

    # Same shard files, same index, every other file copied unchanged, sidecar inside.
    assert _shard_files(out) == _shard_files(base_dir)
    assert (json.loads((out / sharded.INDEX).read_text())["weight_map"]
            == json.loads((base_dir / sharded.INDEX).read_text())["weight_map"])
    for name in ("config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (base_dir / name).read_bytes()
    data = json.loads((out / "glorac_fold.json").read_text())
    assert Structure.model_validate(data["structure"]) == structure
    assert data["model_ref"]["source"] == "hf" and data["added_biases"] == []
    assert {lf["layer"] for lf in data["report"]["layers"]} == set(supernet.adapters)
    note = data["report"]["note"]
    assert "base weights match" in note
    assert ("lm_head.weight" in note) == (not supernet.base_model.config.tie_word_embeddings)
    assert not _leftovers(tmp_path)

    # The stock CausalLM on the folded directory == the supernet (the LlamaModel backbone
    # `hf:DIR` builds) followed by the directory's own LM head.
    folded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    source = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    x = _tokens()
    with torch.no_grad():
        want = source.lm_head(supernet(x).last_hidden_state)
        assert rel_err(source(x).logits, want) > 1e-3, "the adapters must matter"
        assert rel_err(folded(x).logits, want) <= 1e-4

    # One shard (plus the adapters) at a time, never the whole model.
    shard_bytes = _shard_bytes(base_dir)
    adapter_bytes = sum(p.numel() * p.element_size() for a in supernet.adapters.values() for p in a.parameters())
    assert watch.loads == watch.saves == len(shard_bytes)
    assert watch.peak <= max(shard_bytes) + adapter_bytes + 1024, (watch.peak, max(shard_bytes))
    assert watch.peak < sum(shard_bytes) / 2


def test_streaming_equals_the_whole_model_path_bit_for_bit(capsys, tmp_path, monkeypatch):
    """BERT (biased layers, a trained head): some weights and their biases lie in different
    shards; the streaming fold writes exactly what the whole-model fold writes."""
    entry = ZOO["bert"]
    base_dir = tmp_path / "bert"
    entry.build().save_pretrained(base_dir, max_shard_size="3KB")
    weight_map = json.loads((base_dir / sharded.INDEX).read_text())["weight_map"]
    split = [k for k in weight_map if k.endswith(".dense.weight") and weight_map[k] != weight_map[k[:-6] + "bias"]]
    assert split, "the test needs a weight and its bias in different shards"
    spec = SPACE + "adapt " + ", ".join(f'"{p}"' for p in entry.adapt) + " with paper(r=4)\ntrain \"classifier\"\n"
    ckpt, supernet, _ = _compile(tmp_path, base_dir, spec, seed=9)

    out = tmp_path / "streamed"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 0, err
    with monkeypatch.context() as m:  # the same checkpoint through the whole-model path
        m.setattr(export, "source_dir", lambda _ref: None)
        code, _, err = run_cli(capsys, "fold", ckpt, "-o", tmp_path / "whole")
        assert code == 0, err
    streamed = {k: v for p in out.glob("*.safetensors") for k, v in load_file(str(p)).items()}
    whole = {k: v for p in (tmp_path / "whole").glob("*.safetensors") for k, v in load_file(str(p)).items()}
    assert streamed.keys() == whole.keys()
    for key in streamed:
        assert torch.equal(streamed[key], whole[key]), key

    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    x = entry.example_input()
    with torch.no_grad():
        assert rel_err(model(*x).logits, supernet(*x).logits) <= 1e-4


def test_tied_tensors_are_digested_through_their_saved_twin(capsys, tmp_path):
    """T5's backbone holds one tensor under three names; save_pretrained writes it once."""
    config = transformers.T5Config(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                                   d_kv=16, vocab_size=64, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5", max_shard_size="20KB")
    weight_map = json.loads((tmp_path / "t5" / sharded.INDEX).read_text())["weight_map"]
    assert "shared.weight" in weight_map and "encoder.embed_tokens.weight" not in weight_map
    spec = SPACE + 'adapt "**.SelfAttention.{q,v}" with paper(r=4)\n'
    ckpt, supernet, _ = _compile(tmp_path, tmp_path / "t5", spec, seed=3)
    out = tmp_path / "folded"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 0, err
    note = json.loads((out / "glorac_fold.json").read_text())["report"]["note"]
    assert "tied tensor(s) read through their saved twin" in note
    model = transformers.AutoModel.from_pretrained(out).eval()
    ids = torch.randint(1, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = supernet(input_ids=ids, decoder_input_ids=ids).last_hidden_state
        assert rel_err(model(input_ids=ids, decoder_input_ids=ids).last_hidden_state, want) <= 1e-4


def test_bias_add_is_refused_or_written_beside_the_weights_on_request(capsys, tmp_path):
    base_dir = _save_llama(tmp_path / "base", tied=False)
    model, _ = resolve_model(f"hf:{base_dir}")
    probe = glorac.build_supernet(_spec_file(tmp_path, LLAMA_SPEC + "bias add\n"), model)
    # E on every layer, C none: each new bias is exactly E
    structure = Structure(layers={n: c.model_copy(update={"C": Kind(kind="none"), "E": Kind(kind="vector")})
                                  for n, c in random_structure(probe, seed=2).layers.items()})
    ckpt, supernet, _ = _compile(tmp_path, base_dir, LLAMA_SPEC + "bias add\n", seed=2, structure=structure)
    out = tmp_path / "folded"
    # from_pretrained would drop biases the config does not declare: refused, as in export
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 1 and "bias preserve" in err and not out.exists() and not _leftovers(tmp_path)
    export.fold_checkpoint(str(ckpt), str(out), allow_added_biases=True)  # explicit opt-in (other loaders)
    data = json.loads((out / "glorac_fold.json").read_text())
    assert set(data["added_biases"]) == {f"{n}.bias" for n in supernet.adapters}
    assert "new bias tensor(s) written" in data["report"]["note"]
    index = json.loads((out / sharded.INDEX).read_text())
    old = json.loads((base_dir / sharded.INDEX).read_text())
    for name in supernet.adapters:
        key = f"model.{name}.bias"
        assert index["weight_map"][key] == index["weight_map"][f"model.{name}.weight"]
        with safe_open(str(out / index["weight_map"][key]), "pt") as f:
            bias = f.get_tensor(key)
        assert torch.allclose(bias, supernet.adapters[name].E.detach(), atol=1e-6)
    added = sum(supernet.adapters[n].E.numel() * 4 for n in supernet.adapters)
    assert index["metadata"]["total_size"] == old["metadata"]["total_size"] + added


def _spec_file(root: Path, text: str) -> Path:
    path = root / "probe.glora"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ refusals

@pytest.fixture
def private(tmp_path):
    """A checkpoint of its own base directory (tests that damage the shards)."""
    base_dir = _save_llama(tmp_path / "base", tied=False)
    ckpt, supernet, structure = _compile(tmp_path, base_dir, LLAMA_SPEC, seed=11)
    return base_dir, ckpt, supernet, structure


def _edit_shard(base_dir: Path, key: str, edit) -> None:
    weight_map = json.loads((base_dir / sharded.INDEX).read_text())["weight_map"]
    path = base_dir / weight_map[key]
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def test_changed_base_weights_are_refused(capsys, private, tmp_path):
    base_dir, ckpt, _, _ = private
    key = "model.layers.1.post_attention_layernorm.weight"
    _edit_shard(base_dir, key, lambda t: t[key].add_(1e-3))
    out = tmp_path / "folded"
    with pytest.raises(CheckpointError, match="differ from those the checkpoint was made with"):
        export.fold_checkpoint(str(ckpt), str(out))
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 1 and "differ" in err and "Traceback" not in err
    assert not out.exists() and not _leftovers(tmp_path)


def test_a_missing_base_tensor_needs_no_verify(capsys, private, tmp_path):
    base_dir, ckpt, _, _ = private
    key = "model.layers.0.input_layernorm.weight"
    _edit_shard(base_dir, key, lambda t: t.pop(key))
    index = json.loads((base_dir / sharded.INDEX).read_text())
    del index["weight_map"][key]
    (base_dir / sharded.INDEX).write_text(json.dumps(index))
    out = tmp_path / "folded"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 1 and "layers.0.input_layernorm.weight" in err and "--no-verify" in err
    assert not out.exists()
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--no-verify")
    assert code == 0, err
    assert "base weights NOT checked" in json.loads((out / "glorac_fold.json").read_text())["report"]["note"]


def test_existing_output_needs_force(capsys, llama, tmp_path):
    _, ckpt, _, _ = llama
    out = tmp_path / "folded"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 1 and "--force" in err
    with pytest.raises(CheckpointError, match="--force"):
        export.fold_checkpoint(str(ckpt), str(out))
    assert (out / "keep.txt").read_text() == "old"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--force")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "glorac_fold.json").is_file()
    assert not _leftovers(tmp_path)


def test_open_structure_needs_a_choice(capsys, tmp_path):
    base_dir = _save_llama(tmp_path / "base", tied=True)
    ckpt, _, structure = _compile(tmp_path, base_dir, LLAMA_SPEC, seed=4, select=False)
    out = tmp_path / "folded"
    with pytest.raises(FoldError, match="glorac search"):
        export.fold_checkpoint(str(ckpt), str(out))
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 1 and "--structure" in err and not out.exists()
    choice = tmp_path / "choice.json"
    bad = Structure(layers={**structure.layers, "layers.9.mlp.up_proj": structure.layers["layers.0.mlp.up_proj"]})
    choice.write_text(bad.model_dump_json())
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice)
    assert code == 1 and str(choice) in err and "layers.9.mlp.up_proj" in err
    choice.write_text(structure.model_dump_json())
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice)
    assert code == 0, err
    assert Structure.model_validate(json.loads((out / "glorac_fold.json").read_text())["structure"]) == structure


def test_non_finite_adapters_are_refused_naming_the_layer(capsys, tmp_path):
    base_dir = _save_llama(tmp_path / "base", tied=False)
    model, ref = resolve_model(f"hf:{base_dir}")
    supernet = glorac.build_supernet(_spec_file(tmp_path, LLAMA_SPEC), model)
    supernet.model_ref = ref
    layer = "layers.1.mlp.down_proj"
    structure = random_structure(supernet, seed=1)
    structure = Structure(layers={**structure.layers, layer: structure.layers[layer].model_copy(
        update={"A": Kind(kind="vector")})})
    with torch.no_grad():
        supernet.adapters[layer].A_out.fill_(float("nan"))
    supernet.select(structure)
    ckpt = glorac.save(supernet, tmp_path / "nan.pt")
    out = tmp_path / "folded"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 1 and f"`{layer}`" in err and "inf/NaN" in err
    assert not out.exists() and not _leftovers(tmp_path)


def test_failed_layer_check_writes_nothing(capsys, llama, tmp_path, monkeypatch):
    _, ckpt, _, _ = llama
    monkeypatch.setitem(glorac.folding.core.TOLERANCE, torch.float32, 1e-15)
    out = tmp_path / "folded"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 1 and "worst layer: layers." in err and "tolerance" in err and "Traceback" not in err
    assert not out.exists() and not _leftovers(tmp_path)
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--no-verify")  # no layer probes
    assert code == 0, err


def test_one_file_and_sharded_directories_fold_to_the_same_directory(capsys, tmp_path):
    """The same model saved as one model.safetensors and as shards: both folds keep the LM
    head and the tokenizer, hold the same tensors bit for bit and the same other files."""
    model = _llama(tied=False)
    folded = {}
    for layout, shard in (("one", None), ("shards", "40KB")):
        base_dir = tmp_path / layout / "base"
        model.save_pretrained(base_dir, **({"max_shard_size": shard} if shard else {}))
        (base_dir / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
        assert ((base_dir / sharded.INDEX).exists()) == (shard is not None)
        ckpt, _, _ = _compile(tmp_path / layout, base_dir, LLAMA_SPEC, seed=5)
        out = tmp_path / layout / "folded"
        code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
        assert code == 0, err
        folded[layout] = out

    def tensors(directory: Path) -> dict[str, torch.Tensor]:
        return {k: v for p in directory.glob("*.safetensors") for k, v in load_file(str(p)).items()}

    def other_files(directory: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in directory.iterdir()
                if not p.name.endswith((".safetensors", ".index.json")) and p.name != "glorac_fold.json"}

    one, shards = tensors(folded["one"]), tensors(folded["shards"])
    assert one.keys() == shards.keys() and "lm_head.weight" in one
    assert all(torch.equal(one[k], shards[k]) for k in one)
    assert other_files(folded["one"]) == other_files(folded["shards"])
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= set(other_files(folded["one"]))
    sidecars = [json.loads((folded[k] / "glorac_fold.json").read_text()) for k in ("one", "shards")]
    for data in sidecars:  # the only differences: where the base and the spec file were
        assert data.pop("model_ref")["name"].endswith("/base") and data.pop("spec_sha256")
    assert sidecars[0] == sidecars[1]
    x = _tokens()
    with torch.no_grad():
        logits = [transformers.AutoModelForCausalLM.from_pretrained(folded[k]).eval()(x).logits for k in folded]
    assert torch.equal(logits[0], logits[1])
