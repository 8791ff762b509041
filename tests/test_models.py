"""Model resolution (glorac.models), safe weight I/O (glorac.safeio) and the test zoo."""

from __future__ import annotations

import errno
import json
import re
import sys
import textwrap

import pytest
import torch
import torch.fx
from torch import nn

from glorac.errors import CheckpointError, GloraError, ModelError
from glorac.models import ModelRef, model_source, resolve_model, resolve_ref
from glorac.safeio import atomic_write, load_state_dict_file, tensor_digest
from tests.zoo import ZOO, available

SMALL_TIMM = "test_vit"  # timm's own tiny test ViT (0.3M params)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def assert_clean(err: pytest.ExceptionInfo) -> None:
    """A user error carries no chained traceback and no internal repr noise."""
    exc = err.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    assert "Traceback" not in str(err.value)


@pytest.fixture
def offline(monkeypatch):
    """Make hub downloads fail at once instead of retrying for a minute."""
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


# ------------------------------------------------------------------------ timm


def test_resolve_timm_name():
    model, ref = resolve_model(SMALL_TIMM, num_classes=3)
    assert ref == ModelRef(name=SMALL_TIMM, source="timm", num_classes=3, pretrained=False)
    assert not model.training
    assert model.get_classifier().out_features == 3
    assert model(torch.randn(1, 3, 160, 160)).shape == (1, 3)


def test_num_classes_none_keeps_default_head():
    model, ref = resolve_model(SMALL_TIMM)
    assert model.get_classifier().out_features == 1000 and ref.num_classes is None


def test_resolve_is_deterministic_and_leaves_caller_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = resolve_model(SMALL_TIMM, num_classes=3)
    assert torch.equal(torch.rand(3), expected_next)
    b, _ = resolve_model(SMALL_TIMM, num_classes=3)
    c, _ = resolve_model(SMALL_TIMM, num_classes=3, init_seed=1)
    assert same_state(a, b)
    assert not same_state(a, c)


def test_resolve_ref_rebuilds_the_same_model():
    model, ref = resolve_model(SMALL_TIMM, num_classes=2, init_seed=7)
    again = resolve_ref(ModelRef.model_validate_json(ref.model_dump_json()))
    assert same_state(model, again)


def test_meta_device_allocates_nothing():
    model, ref = resolve_model("vit_large_patch16_224", device="meta", pretrained=True)
    assert ref.pretrained  # recorded, but nothing was downloaded
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.is_meta for t in tensors)
    assert sum(p.numel() for p in model.parameters()) > 300e6


@pytest.mark.parametrize(
    "name, close",
    [("vit_bse_patch16_224", "vit_base_patch16_224"), ("resnet81", "resnet18"), ("convnxt_tiny", "convnext_tiny")],
)
def test_unknown_timm_name_lists_close_names(name, close):
    with pytest.raises(ModelError) as err:
        resolve_model(name)
    listed = re.search(r"Closest timm names: ([^.]+(?:\.[^ ][^.]*)*)\.", str(err.value))
    assert listed and close in listed.group(1).split(", ")
    assert len(listed.group(1).split(", ")) == 5
    assert_clean(err)


def test_unknown_pretrained_tag_lists_known_tags():
    with pytest.raises(ModelError, match=r"unknown pretrained tag `bogus`.*augreg_in21k"):
        resolve_model("vit_base_patch16_224.bogus")
    _, ref = resolve_model("vit_base_patch16_224.augreg_in21k", device="meta")
    assert ref.name == "vit_base_patch16_224.augreg_in21k"


def test_pretrained_offline_fails_clearly(offline):
    with pytest.raises(ModelError) as err:
        resolve_model(SMALL_TIMM, pretrained=True)
    assert "download" in str(err.value) and "--weights FILE" in str(err.value)
    assert_clean(err)


@pytest.mark.parametrize(
    "name, source",
    [("vit_base_patch16_224", "timm"), ("hf:org/model", "hf"), ("pkg.mod:make", "factory"),
     ("hf-hub:timm/vit_tiny_patch16_224", "timm"), ("vit_base_patch16_224.augreg_in21k", "timm")],
)
def test_model_source(name, source):
    assert model_source(name) == source


def test_bad_device_and_empty_name():
    with pytest.raises(ModelError, match="invalid device"):
        resolve_model(SMALL_TIMM, device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="cannot move the model to cuda"):
            resolve_model(SMALL_TIMM, device="cuda")
    with pytest.raises(ModelError, match="empty model reference"):
        resolve_model("  ")


# --------------------------------------------------------------------- factory

FACTORY_SRC = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make(num_classes=4):
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def make_pre(pretrained=False):
        layer = nn.Linear(8, 2)
        if pretrained:
            nn.init.ones_(layer.weight)
        return layer

    def make_fixed():
        return nn.Linear(8, 2)

    def make_kwargs(**kwargs):
        return nn.Linear(8, kwargs.get("num_classes", 9))

    def boom(num_classes=None):
        raise RuntimeError("the factory exploded")

    def not_module():
        return {"weight": torch.zeros(2)}

    NOT_CALLABLE = 42
    """
)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "zoo_factories.py").write_text(FACTORY_SRC)
    (tmp_path / "broken_factory.py").write_text("import nonexistent_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "zoo_factories"
    for mod in ("zoo_factories", "broken_factory"):
        sys.modules.pop(mod, None)


def test_factory_reference(factories):
    model, ref = resolve_model(f"{factories}:make", num_classes=3)
    assert ref.source == "factory" and model[-1].out_features == 3 and not model.training
    default, _ = resolve_model(f"{factories}:make")
    assert default[-1].out_features == 4
    kw, _ = resolve_model(f"{factories}:make_kwargs", num_classes=5)
    assert kw.out_features == 5
    again, _ = resolve_model(f"{factories}:make", num_classes=3)
    assert same_state(model, again)
    meta, _ = resolve_model(f"{factories}:make", device="meta")
    assert all(p.is_meta for p in meta.parameters())


def test_factory_pretrained_is_passed_only_when_accepted(factories):
    model, ref = resolve_model(f"{factories}:make_pre", pretrained=True)
    assert ref.pretrained and torch.equal(model.weight, torch.ones(2, 8))
    with pytest.raises(ModelError, match="takes no `pretrained` argument"):
        resolve_model(f"{factories}:make_fixed", pretrained=True)


def test_factory_without_num_classes_parameter_warns(factories):
    with pytest.warns(UserWarning, match="takes no num_classes"):
        model, _ = resolve_model(f"{factories}:make_fixed", num_classes=3)
    assert model.out_features == 2


@pytest.mark.parametrize(
    "attr, message",
    [
        ("missing_fn", r"has no attribute `missing_fn`"),
        ("mak", r"Did you mean make"),
        ("NOT_CALLABLE", r"is of type int, not callable"),
        ("boom", r"raised RuntimeError: the factory exploded"),
        ("not_module", r"returned an object of type dict, not a torch.nn.Module"),
    ],
)
def test_factory_errors(factories, attr, message):
    with pytest.raises(ModelError, match=message) as err:
        resolve_model(f"{factories}:{attr}")
    assert_clean(err)


def test_factory_module_not_importable(factories):
    with pytest.raises(ModelError, match="cannot import module `no_such_pkg.models`"):
        resolve_model("no_such_pkg.models:build")
    with pytest.raises(ModelError, match=r"importing `broken_factory` raised ModuleNotFoundError|cannot import"):
        resolve_model("broken_factory:build")


# ------------------------------------------------------------- Hugging Face

needs_hf = pytest.mark.skipif(not available(ZOO["bert"]), reason="transformers not installed")


@pytest.fixture
def bert_dir(tmp_path):
    model = ZOO["bert"].build()
    model.save_pretrained(tmp_path / "bert")
    return model, tmp_path / "bert"


@needs_hf
def test_hf_local_directory_loads_its_weights(bert_dir):
    saved, path = bert_dir
    model, ref = resolve_model(f"hf:{path}", num_classes=3)
    assert ref.source == "hf" and ref.pretrained and not model.training
    assert same_state(model, saved)
    ids = ZOO["bert"].example_input()
    assert torch.equal(model(*ids).logits, saved(*ids).logits)
    # Without num_classes a saved classifier keeps its head; AutoModel would drop it.
    kept, _ = resolve_model(f"hf:{path}")
    assert same_state(kept, saved)
    meta, _ = resolve_model(f"hf:{path}", device="meta")  # the directory's weights stay unread
    assert all(p.is_meta for p in meta.parameters())


@needs_hf
def test_hf_new_head_size_is_seeded(bert_dir):
    saved, path = bert_dir
    a, _ = resolve_model(f"hf:{path}", num_classes=4)
    b, _ = resolve_model(f"hf:{path}", num_classes=4)
    assert a.classifier.out_features == 4 and same_state(a, b)
    assert torch.equal(a.bert.encoder.layer[0].output.dense.weight,
                       saved.bert.encoder.layer[0].output.dense.weight)


@needs_hf
def test_hf_config_only_directory_builds_seeded_random_model(tmp_path):
    ZOO["bert"].hf_config().save_pretrained(tmp_path)
    a, ref = resolve_model(f"hf:{tmp_path}", num_classes=2)
    b, _ = resolve_model(f"hf:{tmp_path}", num_classes=2)
    assert not ref.pretrained and a.classifier.out_features == 2 and same_state(a, b)
    backbone, _ = resolve_model(f"hf:{tmp_path}")  # a plain BertConfig names no classifier
    assert type(backbone).__name__ == "BertModel"
    with pytest.raises(ModelError, match="has a config but no weights"):
        resolve_model(f"hf:{tmp_path}", pretrained=True)


@needs_hf
def test_hf_meta_builds_a_7b_llama_without_memory(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, vocab_size=32000).save_pretrained(tmp_path)
    model, _ = resolve_model(f"hf:{tmp_path}", num_classes=2, device="meta")
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.is_meta for t in tensors)
    assert sum(p.numel() for p in model.parameters()) > 6e9


@needs_hf
def test_hf_errors(tmp_path, offline, monkeypatch):
    with pytest.raises(ModelError, match="no such directory"):
        resolve_model(f"hf:{tmp_path}/nope")
    with pytest.raises(ModelError, match="no config.json") as err:
        resolve_model(f"hf:{tmp_path}")
    assert_clean(err)
    with pytest.raises(ModelError, match=r"downloading hub model .*offline.*hf:DIR"):
        resolve_model("hf:someone/some-model", pretrained=True)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ModelError, match=re.escape("pip install 'glorac[hf]'")):
        resolve_model("hf:someone/some-model")


# ------------------------------------------------------------------ --weights


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "nested", "ddp"])
def test_weights_round_trip(tmp_path, fmt):
    source, _ = resolve_model(SMALL_TIMM, num_classes=3, init_seed=5)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        obj = {"module." + k: v for k, v in state.items()} if fmt == "ddp" else state
        torch.save({"state_dict": obj, "epoch": 3} if fmt == "nested" else obj, path)
    model, ref = resolve_model(SMALL_TIMM, num_classes=3, weights=path)
    assert same_state(model, source) and ref.weights == str(path)


@pytest.fixture
def vit_weights(tmp_path):
    source, _ = resolve_model(SMALL_TIMM, num_classes=3, init_seed=5)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    return source, path


def test_weights_head_of_other_size_is_skipped_only_with_num_classes(vit_weights):
    source, path = vit_weights
    with pytest.warns(UserWarning, match=r"classifier head not loaded.*head.weight"):
        model, _ = resolve_model(SMALL_TIMM, num_classes=4, weights=path)
    fresh, _ = resolve_model(SMALL_TIMM, num_classes=4)
    assert torch.equal(model.head.weight, fresh.head.weight)  # the seeded new head
    body = [k for k in source.state_dict() if not k.startswith("head.")]
    assert all(torch.equal(model.state_dict()[k], source.state_dict()[k]) for k in body)
    with pytest.raises(CheckpointError, match=r"shape mismatches: head.weight file \(3, .*\) vs model \(1000,"):
        resolve_model(SMALL_TIMM, weights=path)  # default 1000-class head: not a request


def test_weights_without_head_need_num_classes(vit_weights, tmp_path):
    source, _ = vit_weights
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    with pytest.warns(UserWarning, match=r"head.weight absent"):
        model, _ = resolve_model(SMALL_TIMM, num_classes=3, weights=tmp_path / "backbone.pt")
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    with pytest.raises(CheckpointError, match=r"2 missing keys: head.weight, head.bias.*--num-classes"):
        resolve_model(SMALL_TIMM, weights=tmp_path / "backbone.pt")


def test_weights_key_mismatch_lists_keys(vit_weights, tmp_path):
    source, _ = vit_weights
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["blocks.0.attn.qkv.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        resolve_model(SMALL_TIMM, num_classes=3, weights=tmp_path / "bad.pt")
    text = str(err.value)
    assert "missing keys: blocks.0.attn.qkv.weight" in text and "unexpected keys: extra.weight" in text
    assert_clean(err)


def test_weights_shape_mismatch_in_body(vit_weights, tmp_path):
    source, _ = vit_weights
    state = source.state_dict()
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(7, 7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"blocks.0.mlp.fc1.weight file \(7, 7\)"):
        resolve_model(SMALL_TIMM, num_classes=4, weights=tmp_path / "bad.pt")


# --------------------------------------------------------------------- safeio


class NeedsCode:
    def __init__(self):
        self.payload = torch.ones(2)


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "obj": NeedsCode()}, path)
    with pytest.raises(CheckpointError, match=r"needs code to unpickle.*NeedsCode") as err:
        load_state_dict_file(path)
    assert str(path) in str(err.value)
    assert_clean(err)
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module is code, too
    with pytest.raises(CheckpointError, match="needs code"):
        load_state_dict_file(path)


def test_corrupt_and_truncated_files(tmp_path):
    from safetensors.torch import save_file

    good_st, good_pt = tmp_path / "good.safetensors", tmp_path / "good.pt"
    save_file({"w": torch.randn(64, 64)}, good_st)
    torch.save({"w": torch.randn(64, 64)}, good_pt)
    cases = {
        "trunc.safetensors": good_st.read_bytes()[:200],
        "trunc.pt": good_pt.read_bytes()[:300],
        "junk.pt": b"definitely not a checkpoint",
        "junk.safetensors": b"\x00" * 64,
        "empty.pt": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(name)) as err:
            load_state_dict_file(tmp_path / name)
        assert_clean(err)
    # A safetensors file is recognised by its header whatever its suffix.
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(good_st.read_bytes())
    assert torch.equal(load_state_dict_file(renamed)["w"], load_state_dict_file(good_st)["w"])


def test_missing_file_directory_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_state_dict_file(tmp_path)
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_state_dict_file(tmp_path / "list.pt")
    torch.save({"w": torch.ones(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="entries step are not name"):
        load_state_dict_file(tmp_path / "mixed.pt")


def test_bf16_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    state = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.arange(5)}
    save_file(state, tmp_path / "x.safetensors")
    loaded = load_state_dict_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype for k in state)


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_refuses_existing_unless_forced(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, lambda p: p.write_text("one"))
    with pytest.raises(GloraError, match="already exists; pass --force"):
        atomic_write(target, lambda p: p.write_text("two"))
    assert target.read_text() == "one"
    atomic_write(target, lambda p: p.write_text("two"), force=True)
    assert target.read_text() == "two" and _leftovers(tmp_path) == []
    nested = atomic_write(tmp_path / "a" / "b" / "c.txt", lambda p: p.write_text("x"))
    assert nested.read_text() == "x"


@pytest.mark.parametrize(
    "exc, raised",
    [
        (RuntimeError("bug in writer"), RuntimeError),
        (KeyboardInterrupt(), KeyboardInterrupt),
        (OSError(errno.ENOSPC, "No space left on device"), CheckpointError),
    ],
)
def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, exc, raised):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old contents")

    def write_half_then_fail(path):
        path.write_bytes(b"partial new con")
        raise exc

    with pytest.raises(raised) as err:
        atomic_write(target, write_half_then_fail, force=True)
    assert target.read_bytes() == b"old contents"
    assert _leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == [target.name]
    if raised is CheckpointError:
        assert "No space left" in str(err.value) and "untouched" in str(err.value)


def test_tensor_digest_is_stable_and_sensitive():
    gen = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(4, 3, generator=gen), "b.bias": torch.randn(3, generator=gen)}
    digest = tensor_digest(tensors.items())
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert tensor_digest(reversed(list(tensors.items()))) == digest  # order-independent
    assert tensor_digest({k: v.clone() for k, v in tensors.items()}.items()) == digest
    nudged = tensors["a.weight"].clone()
    nudged[2, 1] = torch.nextafter(nudged[2, 1], torch.tensor(1e9))
    assert tensor_digest({**tensors, "a.weight": nudged}.items()) != digest
    assert tensor_digest({**tensors, "a.weight": tensors["a.weight"].reshape(3, 4)}.items()) != digest
    assert tensor_digest({**tensors, "a.weight": tensors["a.weight"].double()}.items()) != digest
    assert tensor_digest({"c.weight": tensors["a.weight"], "b.bias": tensors["b.bias"]}.items()) != digest
    transposed = tensors["a.weight"].t().contiguous().t()  # same values, other memory layout
    assert tensor_digest({**tensors, "a.weight": transposed}.items()) == digest


def test_tensor_digest_bf16_and_meta():
    x = torch.randn(5, 5).to(torch.bfloat16)
    y = x.clone()
    y[0, 0] += 1
    assert tensor_digest([("x", x)]) != tensor_digest([("x", y)])
    assert tensor_digest([("x", x)]) == tensor_digest([("x", x.clone())])
    assert tensor_digest([("s", torch.tensor(3.0)), ("e", torch.zeros(0))])
    with pytest.raises(ValueError, match="meta"):
        tensor_digest([("m", torch.empty(3, device="meta"))])


# ------------------------------------------------------------------------ zoo


def zoo_param(name):
    marks = [] if available(ZOO[name]) else [pytest.mark.skip(reason="transformers not installed")]
    return pytest.param(name, marks=marks)


ZOO_PARAMS = [zoo_param(name) for name in ZOO]


def glob_matches(pattern: str, qualname: str) -> bool:
    """Reference glob: `*` within one segment, `**` any number of whole segments."""
    parts = []
    for seg in pattern.split("."):
        parts.append(r"(?:[^.]+\.)*" if seg == "**" else re.escape(seg).replace(r"\*", "[^.]*") + r"\.")
    return re.fullmatch("".join(parts), qualname + ".") is not None


def test_glob_matcher_itself():
    assert glob_matches("blocks.*.attn.qkv", "blocks.3.attn.qkv")
    assert not glob_matches("blocks.*.attn.qkv", "blocks.3.x.attn.qkv")
    assert glob_matches("**.qkv", "a.b.qkv") and glob_matches("**.qkv", "qkv")
    assert not glob_matches("proj", "patch_embed.proj")


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_zoo_entry_builds_runs_and_is_deterministic(name):
    entry = ZOO[name]
    model = entry.build()  # the first build also pays for importing the library
    assert not model.training
    out = entry.output(model(*entry.example_input()))
    assert isinstance(out, torch.Tensor) and out.shape[0] == 2 and torch.isfinite(out).all()
    again = entry.build()
    assert same_state(model, again)
    assert torch.equal(entry.output(again(*entry.example_input())), out)


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_zoo_traceable_flag_is_true_to_fact(name):
    entry = ZOO[name]
    model = entry.build()
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:
        traced = None
    assert (traced is not None) == entry.traceable
    if traced is not None:
        x = entry.example_input()
        assert torch.allclose(entry.output(traced(*x)), entry.output(model(*x)))


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_zoo_adapt_patterns_and_head(name):
    entry = ZOO[name]
    modules = dict(entry.build().named_modules())
    hit = []
    for pattern in entry.adapt:
        matched = [q for q in modules if glob_matches(pattern, q)]
        assert matched, f"{pattern} matches nothing"
        assert all(isinstance(modules[q], (nn.Linear, nn.Conv2d)) for q in matched), pattern
        hit += matched
    assert all(h in modules for h in entry.head)
    assert not set(hit) & set(entry.head)
    assert any(modules[q].bias is None for q in hit) == entry.has_bias_free_layers


@pytest.mark.parametrize("name", ZOO_PARAMS)
def test_zoo_adapted_layers_are_visible_in_the_output(name):
    """Random-init tricks (layer scale 1e-6, zero-init last BN) can make a layer's weights
    irrelevant to the output, and then every adapter test on it passes trivially."""
    entry = ZOO[name]
    model = entry.build()
    x = entry.example_input()
    with torch.no_grad():
        base = entry.output(model(*x))
        for pattern in entry.adapt:
            nudged = entry.build()
            for qualname, module in nudged.named_modules():
                if glob_matches(pattern, qualname):
                    module.weight.mul_(1.5)
            change = (entry.output(nudged(*x)) - base).abs().max() / base.abs().max()
            assert change > 1e-3, f"{pattern}: output moved by only {change:.1e}"


@pytest.mark.parametrize("name", [n for n in ZOO if ZOO[n].timm_name])
def test_zoo_timm_entries_rebuild_from_name_and_kwargs(name):
    import timm

    entry = ZOO[name]
    stock = timm.create_model(entry.timm_name, **entry.create_kwargs)
    shapes = {k: v.shape for k, v in stock.state_dict().items()}
    assert shapes == {k: v.shape for k, v in entry.build().state_dict().items()}


@pytest.mark.parametrize("name", [zoo_param(n) for n in ZOO if ZOO[n].hf_config])
def test_zoo_hf_entries_rebuild_from_config(name, tmp_path):
    ZOO[name].hf_config().save_pretrained(tmp_path)
    model, _ = resolve_model(f"hf:{tmp_path}", num_classes=3)
    expected = {k: v.shape for k, v in ZOO[name].build().state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == expected


def test_zoo_entries_are_factory_references():
    model, ref = resolve_model("tests.zoo:custom_biasfree")
    assert ref.source == "factory" and same_state(model, ZOO["custom_biasfree"].build())


def test_zoo_documents_every_entry():
    assert all(entry.doc for entry in ZOO.values())
    assert json.dumps(sorted(ZOO))  # names are plain strings
