"""PEFT LoRA interchange (docs/peft.md): glorac → PEFT directory and PEFT directory → glorac.

Every comparison uses non-identity adapters (perturbed glorac tensors, PEFT LoRA with a
non-zero lora_B), so no round trip passes because an adapter does nothing.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

import glorac
from glorac.cli import main
from glorac.ir import Kind, LayerChoice, Structure
from tests.reference import perturb

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TOL = 1e-5  # max|Δ| / max|y|, float32


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # PEFT warns about its own lora_B.bias shape check, fan_in_fan_out, ...
        warnings.simplefilter("ignore")
        yield


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


class ConvNet(nn.Module):
    """A conv, two Linears and a head: what PEFT LoRA targets in a vision model."""

    def __init__(self, fc2_bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 8, bias=fc2_bias)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1)))
        return self.head(torch.relu(self.fc2(h)))


def _conv_net(fc2_bias: bool = True) -> ConvNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ConvNet(fc2_bias).eval()


X = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
SPACE = """space s(r=4) { A: vector | none  B: lora(r) | vector | none  E: vector | scalar | none }
adapt "conv", "fc1" with s
adapt "fc2" with s(r=2)
train "head"
bias add
"""


def _choice(a="none", b="lora(4)", e="none") -> LayerChoice:
    return LayerChoice(A=Kind.parse(a), B=Kind.parse(b), E=Kind.parse(e))


def _plain_lora() -> dict[str, LayerChoice]:
    return {"conv": _choice(), "fc1": _choice(), "fc2": _choice(b="lora(2)")}


def _supernet(base: nn.Module, spec: str = SPACE):
    supernet = glorac.build_supernet(glorac.loads_spec(spec), copy.deepcopy(base))
    perturb(supernet, seed=3, scale=0.3)
    with torch.no_grad():
        supernet.base_model.head.weight.add_(0.5)  # a trained head that differs from the base's
    return supernet


def _lora_tensors_random(model, seed: int = 0) -> None:
    """PEFT initialises lora_B (and its bias) to zero: give every LoRA tensor a value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ------------------------------------------------------------------------------ glorac → PEFT


def test_export_loads_in_peft_with_the_same_outputs_and_comes_back(tmp_path):
    base = _conv_net()
    supernet = _supernet(base)
    # Different ranks (rank_pattern), E vector (lora_bias), a layer with only E (rank-1 zero factors).
    structure = Structure(layers={"conv": _choice(e="vector"), "fc1": _choice(b="none", e="vector"),
                                  "fc2": _choice(b="lora(2)")})
    supernet.select(structure)
    out = glorac.to_peft(supernet, tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == "conv|fc1|fc2" and config["lora_bias"] is True
    assert config["modules_to_save"] == ["head"] and config["r"] == config["lora_alpha"]
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out)).eval()
    with torch.no_grad():
        want = supernet(X)
        assert _rel(peft_model(X), want) < TOL
        assert _rel(base(X), want) > 1e-2  # the adapters matter
    back = glorac.from_peft(out, copy.deepcopy(base))
    with torch.no_grad():
        assert _rel(back(X), want) < TOL
        assert _rel(glorac.fold(back, back.structure)(X), peft_model.merge_and_unload()(X)) < TOL


def test_export_targets_exactly_the_named_modules(tmp_path):
    """A bare name in a PEFT list matches by suffix; the export's regex must not."""

    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.block = nn.Sequential()
            self.block.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.block.fc(self.fc(x))

    torch.manual_seed(0)
    base = Nested().eval()
    spec = 'space s(r=2) { B: lora(r) }\nadapt "fc" with s(r=1)\nadapt "block.fc" with s\n'
    supernet = glorac.build_supernet(glorac.loads_spec(spec), copy.deepcopy(base))
    perturb(supernet, seed=1)
    supernet.select(Structure(layers={"fc": LayerChoice(B=Kind.parse("lora(1)")),
                                      "block.fc": LayerChoice(B=Kind.parse("lora(2)"))}))
    out = glorac.to_peft(supernet, tmp_path / "a")
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out)).eval()
    ranks = {n: m.r["default"] for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "r")}
    assert ranks == {"fc": 1, "block.fc": 2}
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert _rel(peft_model(x), supernet(x)) < TOL


@pytest.mark.parametrize("layer, choice, words", [
    ("fc1", _choice(a="vector"), "A = vector"),
    ("fc1", _choice(b="vector"), "B = vector"),
    ("fc2", _choice(b="lora(2)", e="scalar"), "E = scalar"),
])
def test_export_refuses_what_lora_cannot_express(tmp_path, layer, choice, words):
    supernet = _supernet(_conv_net())
    structure = Structure(layers={**_plain_lora(), layer: choice})
    with pytest.raises(glorac.GloraError, match=f"layer `{layer}` has {words}"):
        glorac.to_peft(supernet, tmp_path / "a", structure=structure)
    assert not (tmp_path / "a").exists()


def test_export_refuses_lora_bias_with_a_bias_free_target(tmp_path):
    supernet = _supernet(_conv_net(fc2_bias=False))
    structure = Structure(layers={**_plain_lora(), "conv": _choice(e="vector")})
    with pytest.raises(glorac.GloraError, match="`fc2` has no bias of its own"):
        glorac.to_peft(supernet, tmp_path / "a", structure=structure)


def test_export_never_overwrites_without_force(tmp_path):
    supernet = _supernet(_conv_net())
    supernet.select(Structure(layers=_plain_lora()))
    (tmp_path / "a").mkdir()
    with pytest.raises(glorac.GloraError, match="already exists"):
        glorac.to_peft(supernet, tmp_path / "a")
    glorac.to_peft(supernet, tmp_path / "a", force=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


# ------------------------------------------------------------------------------ PEFT → glorac


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    return path


def _load_llama(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def _peft_adapter(base, out, **config):
    model = peft.get_peft_model(base, peft.LoraConfig(**config))
    _lora_tensors_random(model)
    model.save_pretrained(out)
    return model.eval()


IDS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("options", [
    {"r": 4, "lora_alpha": 16, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"layers.1.self_attn.q_proj": 3}},
    {"r": 4, "lora_alpha": 6, "use_rslora": True},
], ids=["patterns", "rslora"])
def test_import_computes_what_peft_computes_and_folds_to_its_merge(tmp_path, llama_dir, options):
    targets = ["q_proj", "v_proj", "down_proj"]
    peft_model = _peft_adapter(_load_llama(llama_dir), tmp_path / "a", target_modules=targets,
                               task_type="CAUSAL_LM", **options)
    supernet = glorac.from_peft(tmp_path / "a", f"hf:{llama_dir}")
    assert len(supernet.plan.layers) == 3 * 2
    assert supernet.structure.layers["model.layers.0.self_attn.v_proj"].B == Kind.parse(
        "lora(2)" if "rank_pattern" in options else "lora(4)")
    with torch.no_grad():
        want = peft_model(IDS).logits
        assert _rel(supernet(IDS).logits, want) < TOL
        assert _rel(_load_llama(llama_dir)(IDS).logits, want) > 1e-3
        merged = peft_model.merge_and_unload()(IDS).logits
        assert _rel(glorac.fold(supernet, supernet.structure)(IDS).logits, merged) < TOL


def test_import_maps_lora_bias_and_modules_to_save(tmp_path):
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(config).eval()
    peft_model = _peft_adapter(copy.deepcopy(base), tmp_path / "a", r=4, lora_alpha=8, task_type="SEQ_CLS",
                               target_modules=["query", "value", "dense"], lora_bias=True)
    supernet = glorac.from_peft(tmp_path / "a", copy.deepcopy(base))
    assert supernet.plan.trained == ("classifier",)
    ids = IDS % 50
    with torch.no_grad():
        assert _rel(supernet(ids).logits, peft_model(ids).logits) < TOL
        folded = glorac.fold(supernet, supernet.structure)
        assert _rel(folded(ids).logits, peft_model.merge_and_unload()(ids).logits) < TOL


def test_import_maps_gpt2_conv1d(tmp_path):
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(config).eval()
    peft_model = _peft_adapter(copy.deepcopy(base), tmp_path / "a", r=2, lora_alpha=4, fan_in_fan_out=True,
                               target_modules=["c_attn", "c_proj"])
    supernet = glorac.from_peft(tmp_path / "a", copy.deepcopy(base))
    with torch.no_grad():
        assert _rel(supernet(IDS).logits, peft_model(IDS).logits) < TOL
    glorac.to_peft(supernet, tmp_path / "b")  # and back: Conv1D layers export as fan_in_fan_out
    again = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "b")).eval()
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    with torch.no_grad():
        assert _rel(again(IDS).logits, peft_model(IDS).logits) < TOL


@pytest.mark.parametrize("options, words", [
    ({"use_dora": True}, "use_dora = true: DoRA"),
    ({"bias": "all"}, "bias = 'all'"),
    ({"target_modules": ["embed_tokens", "q_proj"]}, "embedding LoRA"),
], ids=["dora", "bias-all", "embedding"])
def test_import_refuses_what_glorac_cannot_express(tmp_path, llama_dir, options, words):
    config = {"r": 2, "target_modules": ["q_proj"], **options}
    _peft_adapter(_load_llama(llama_dir), tmp_path / "a", **config)
    with pytest.raises(glorac.GloraError, match=words):
        glorac.from_peft(tmp_path / "a", f"hf:{llama_dir}")


def test_import_names_a_model_whose_module_names_differ(tmp_path, llama_dir):
    _peft_adapter(_load_llama(llama_dir), tmp_path / "a", r=2, target_modules=["q_proj"])
    backbone = transformers.AutoModel.from_pretrained(llama_dir).eval()  # `layers.0...`, no `model.` prefix
    with pytest.raises(glorac.GloraError, match="model.layers.0.self_attn.q_proj`, which this model does not have"):
        glorac.from_peft(tmp_path / "a", backbone)


# ------------------------------------------------------------------------------ CLI


def test_cli_from_peft_fold_and_to_peft(tmp_path, llama_dir, capsys):
    peft_model = _peft_adapter(_load_llama(llama_dir), tmp_path / "a", r=2, lora_alpha=5,
                               target_modules=["q_proj", "o_proj"], task_type="CAUSAL_LM")
    ckpt = tmp_path / "imported.pt"
    assert main(["from-peft", str(tmp_path / "a"), "--model", f"hf:{llama_dir}", "-o", str(ckpt)]) == 0
    assert main(["fold", str(ckpt), "-o", str(tmp_path / "folded")]) == 0
    folded = _load_llama(tmp_path / "folded")
    with torch.no_grad():
        assert _rel(folded(IDS).logits, peft_model.merge_and_unload()(IDS).logits) < TOL
    assert main(["to-peft", str(ckpt), "-o", str(tmp_path / "b")]) == 0
    again = peft.PeftModel.from_pretrained(_load_llama(llama_dir), str(tmp_path / "b")).eval()
    with torch.no_grad():
        assert _rel(again(IDS).logits, folded(IDS).logits) < TOL
    capsys.readouterr()
    assert main(["to-peft", str(ckpt), "-o", str(tmp_path / "b")]) == 1  # exists, no --force
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err and "Traceback" not in err


def test_cli_from_peft_refuses_a_missing_adapter_before_building_the_model(tmp_path, capsys, monkeypatch):
    import glorac.models

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(glorac.models, "resolve_model", no_build)
    assert main(["from-peft", str(tmp_path / "nope"), "--model", "hf:x", "-o", str(tmp_path / "c.pt")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
