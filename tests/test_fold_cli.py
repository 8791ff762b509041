"""``glorac fold CHECKPOINT -o OUT``: files a stock model loads, and every bad input refused.

The checkpoints are made the way a user makes them (``glorac compile --model
tests.zoo:vit``), then given non-zero adapters (as training would) before folding; a
freshly compiled checkpoint folds to the base weights and would prove nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.cli import main
from glorac.folding import core as fold_module
from glorac.ir import Kind, LayerChoice, Structure
from tests.reference import perturb, random_structure, rel_err, run_cli
from tests.zoo import ZOO, available

REPO = Path(__file__).resolve().parents[1]



def spec_for(entry) -> str:
    patterns = ", ".join(f'"{p}"' for p in entry.adapt)
    heads = ", ".join(f'"{h}"' for h in entry.head)
    return PAPER_SPACE + f"\nadapt {patterns} with paper(r=4)\ntrain {heads}\n"




def _train_like(checkpoint: Path, seed: int, *, select: Structure | None = None) -> Structure:
    """Give the checkpoint's adapters and trained head new values (as training would).

    Returns a random structure; ``select`` stores one in the checkpoint (as search does).
    """
    supernet = glorac.load(checkpoint)
    perturb(supernet, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in supernet.plan.trained:  # the head trains fully; fold must carry it over
            for p in supernet.base_model.get_submodule(name).parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    structure = random_structure(supernet, seed=seed + 1)
    if select is not None:
        supernet.select(select)
    glorac.save(supernet, checkpoint, force=True)
    return structure


def _adapted_output(checkpoint: Path, structure: Structure, x: tuple):
    supernet = glorac.load(checkpoint)
    supernet.activate(structure)
    with torch.no_grad():
        return supernet(*x)


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    """(checkpoint, structure file, structure): compiled via the CLI from `tests.zoo:vit`."""
    root = tmp_path_factory.mktemp("vit")
    spec = root / "vit.glora"
    spec.write_text(spec_for(ZOO["vit"]))
    ckpt = root / "supernet.pt"
    assert main(["compile", str(spec), "--model", "tests.zoo:vit", "-o", str(ckpt)]) == 0
    structure = _train_like(ckpt, seed=7)
    choice = root / "choice.json"
    choice.write_text(structure.model_dump_json())
    return ckpt, choice, structure


@pytest.fixture
def work(tmp_path, vit_checkpoint):
    """A private copy of the module's checkpoint (tests that damage or rewrite it)."""
    ckpt, choice, structure = vit_checkpoint
    local = tmp_path / "supernet.pt"
    shutil.copy(ckpt, local)
    return local, choice, structure


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------ happy paths

def test_fold_writes_safetensors_that_the_stock_model_loads_strictly(capsys, work, tmp_path):
    ckpt, choice, structure = work
    out = tmp_path / "vit.safetensors"
    code, stdout, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice)
    assert code == 0, err
    assert "vit.safetensors" in stdout and "strict=True" in stdout
    state = load_file(str(out))
    stock = ZOO["vit"].build()
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == \
           {k: (tuple(v.shape), v.dtype) for k, v in stock.state_dict().items()}
    stock.load_state_dict(state, strict=True)
    import timm

    timm_stock = timm.create_model(ZOO["vit"].timm_name, **ZOO["vit"].create_kwargs).eval()
    timm_stock.load_state_dict(state, strict=True)
    x = ZOO["vit"].example_input()
    want = _adapted_output(ckpt, structure, x)
    base = ZOO["vit"].build()
    with torch.no_grad():
        assert rel_err(want, base(*x)) > 1e-3, "the trained checkpoint must matter"
        assert rel_err(stock(*x), want) <= 1e-4
        assert rel_err(timm_stock(*x), want) <= 1e-4

    sidecar = tmp_path / "vit.glorac.json"
    assert sidecar.is_file()
    data = json.loads(sidecar.read_text())
    assert data["model_ref"]["name"] == "tests.zoo:vit" and data["model_ref"]["source"] == "factory"
    assert Structure.model_validate(data["structure"]) == structure
    supernet = glorac.load(ckpt)
    assert data["spec_sha256"] == hashlib.sha256(supernet.spec.model_dump_json().encode()).hexdigest()
    assert data["added_biases"] == []
    report = data["report"]
    assert [lf["layer"] for lf in report["layers"]] == list(supernet.adapters)
    assert report["dtype"] == "float32" and 0 < report["rel_error"] <= report["tolerance"]
    assert not _leftovers(tmp_path)


def test_fold_uses_the_structure_stored_by_search(capsys, work, tmp_path):
    ckpt, _, _ = work
    supernet = glorac.load(ckpt)
    chosen = random_structure(supernet, seed=99)
    _train_like(ckpt, seed=8, select=chosen)
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 0, err
    data = json.loads((tmp_path / "m.glorac.json").read_text())
    assert Structure.model_validate(data["structure"]) == chosen
    stock = ZOO["vit"].build()
    stock.load_state_dict(load_file(str(out)), strict=True)
    x = ZOO["vit"].example_input()
    with torch.no_grad():
        assert rel_err(stock(*x), _adapted_output(ckpt, chosen, x)) <= 1e-4


def test_open_space_without_choice_says_how_to_pick_one(capsys, work, tmp_path):
    ckpt, _, _ = work
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 1
    assert "glorac search" in err and "--structure" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "m.glorac.json").exists()


def test_no_verify_skips_the_measurement(capsys, work, tmp_path):
    ckpt, choice, structure = work
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice, "--no-verify")
    assert code == 0, err
    report = json.loads((tmp_path / "m.glorac.json").read_text())["report"]
    assert report["rel_error"] is None
    stock = ZOO["vit"].build()
    stock.load_state_dict(load_file(str(out)), strict=True)


def test_failed_verification_writes_nothing(capsys, work, tmp_path, monkeypatch):
    ckpt, choice, _ = work
    monkeypatch.setitem(fold_module.TOLERANCE, torch.float32, 1e-15)
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice)
    assert code == 1 and "worst layer" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "m.glorac.json").exists()
    assert not _leftovers(tmp_path)


def test_force_overwrites_an_existing_output(capsys, work, tmp_path):
    ckpt, choice, _ = work
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice, "--force")
    assert code == 0, err
    assert load_file(str(out))  # a real safetensors file now
    assert not _leftovers(tmp_path)


def test_python_m_glorac_fold_end_to_end(work, tmp_path):
    ckpt, choice, structure = work
    out = tmp_path / "sub.safetensors"
    proc = subprocess.run([sys.executable, "-m", "glorac", "fold", str(ckpt), "-o", str(out), "--choice", str(choice)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--choice is deprecated" in proc.stderr and "--structure" in proc.stderr  # the old spelling still works
    stock = ZOO["vit"].build()
    stock.load_state_dict(load_file(str(out)), strict=True)
    x = ZOO["vit"].example_input()
    with torch.no_grad():
        assert rel_err(stock(*x), _adapted_output(ckpt, structure, x)) <= 1e-4


def test_python_m_glorac_fold_junk_has_no_traceback(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    out = tmp_path / "m.safetensors"
    proc = subprocess.run([sys.executable, "-m", "glorac", "fold", str(junk), "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert "junk.pt" in proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------ bad checkpoints

def _refused(capsys, ckpt, out, *extra, expect: str) -> str:
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, *extra)
    assert code == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert expect.lower() in err.lower(), err
    assert not Path(out).exists()
    return err


def test_truncated_checkpoint(capsys, work, tmp_path):
    ckpt, _, _ = work
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    _refused(capsys, ckpt, tmp_path / "m.safetensors", expect="truncated")


def test_junk_checkpoint(capsys, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01not a checkpoint" * 100)
    _refused(capsys, junk, tmp_path / "m.safetensors", expect="not a readable glorac checkpoint")


def test_plain_state_dict_is_foreign(capsys, tmp_path):
    foreign = tmp_path / "weights.pt"
    torch.save(ZOO["vit"].build().state_dict(), foreign)
    _refused(capsys, foreign, tmp_path / "m.safetensors", expect="not a glorac supernet checkpoint")


def test_missing_checkpoint(capsys, tmp_path):
    _refused(capsys, tmp_path / "nope.pt", tmp_path / "m.safetensors", expect="does not exist")


def test_checkpoint_for_another_base(capsys, tmp_path):
    """Compiled on one set of base weights; the weights file has changed since."""
    spec = tmp_path / "vit.glora"
    spec.write_text(spec_for(ZOO["vit"]))
    weights = tmp_path / "base.pt"
    torch.save(ZOO["vit"].build().state_dict(), weights)
    ckpt = tmp_path / "supernet.pt"
    code, _, err = run_cli(capsys, "compile", spec, "--model", "tests.zoo:vit", "--weights", weights, "-o", ckpt)
    assert code == 0, err
    other = {k: v + 0.01 for k, v in ZOO["vit"].build().state_dict().items()}
    torch.save(other, weights)
    _refused(capsys, ckpt, tmp_path / "m.safetensors", expect="weights differ")


# ------------------------------------------------------------------------------ bad structures

def _structure_file(tmp_path, text: str) -> Path:
    path = tmp_path / "choice.json"
    path.write_text(text)
    return path


def test_structure_with_unknown_layers(capsys, work, tmp_path):
    ckpt, _, structure = work
    layers = dict(structure.layers)
    layers["blocks.7.attn.qkv"] = LayerChoice()
    bad = _structure_file(tmp_path, Structure(layers=layers).model_dump_json())
    err = _refused(capsys, ckpt, tmp_path / "m.safetensors", "--structure", bad, expect="blocks.7.attn.qkv")
    assert "does not adapt" in err


def test_structure_missing_a_layer(capsys, work, tmp_path):
    ckpt, _, structure = work
    layers = dict(structure.layers)
    dropped = layers.pop("blocks.1.mlp.fc2")
    assert dropped
    bad = _structure_file(tmp_path, Structure(layers=layers).model_dump_json())
    _refused(capsys, ckpt, tmp_path / "m.safetensors", "--structure", bad, expect="blocks.1.mlp.fc2")


@pytest.mark.parametrize("update", [{"A": "lora(8)"}, {"C": "scalar"}, {"D": "lora(4)"}])
def test_structure_with_kinds_outside_the_space(capsys, work, tmp_path, update):
    ckpt, _, structure = work
    layers = dict(structure.layers)
    layers["blocks.0.attn.qkv"] = layers["blocks.0.attn.qkv"].model_copy(
        update={t: Kind.parse(k) for t, k in update.items()})
    bad = _structure_file(tmp_path, Structure(layers=layers).model_dump_json())
    err = _refused(capsys, ckpt, tmp_path / "m.safetensors", "--structure", bad, expect="outside")
    assert str(bad) in err


@pytest.mark.parametrize("text, expect", [
    ('{"layers": {"blocks.0.attn.qkv": {"A": ', "not a glorac structure file"),
    ("[1, 2, 3]", "not a glorac structure file"),
    ('{"layers": {"blocks.0.attn.qkv": {"A": {"kind": "huge"}}}}', "not a glorac structure file"),
    ("\xff\xfe garbage", "structure"),
])
def test_malformed_structure_file(capsys, work, tmp_path, text, expect):
    ckpt, _, _ = work
    path = tmp_path / "choice.json"
    path.write_bytes(text.encode("latin-1"))
    _refused(capsys, ckpt, tmp_path / "m.safetensors", "--structure", path, expect=expect)


def test_structure_file_missing(capsys, work, tmp_path):
    ckpt, _, _ = work
    _refused(capsys, ckpt, tmp_path / "m.safetensors", "--structure", tmp_path / "none.json", expect="does not exist")


# ------------------------------------------------------------------------------ outputs

def test_output_equal_to_the_input_is_refused(capsys, work):
    ckpt, choice, _ = work
    before = ckpt.read_bytes()
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", ckpt, "--structure", choice, "--force")
    assert code == 1 and "checkpoint itself" in err
    assert ckpt.read_bytes() == before


def test_existing_output_without_force_is_untouched(capsys, work, tmp_path):
    ckpt, choice, _ = work
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    os.utime(out, (1_000_000, 1_000_000))
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice)
    assert code == 1 and "--force" in err and "Traceback" not in err
    assert out.read_bytes() == b"precious" and out.stat().st_mtime == 1_000_000
    assert not (tmp_path / "m.glorac.json").exists()


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_while_writing_weights(capsys, work, tmp_path, monkeypatch, existing):
    ckpt, choice, _ = work
    out = tmp_path / "m.safetensors"
    if existing:
        out.write_bytes(b"old weights")
    import glorac.folding.files

    def partial_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 1000)  # half a file, then the disk is full
        _disk_full()

    monkeypatch.setattr(glorac.folding.files, "save_file", partial_then_full)
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice, "--force")
    assert code == 1, err
    assert "No space left" in err and "Traceback" not in err
    assert (out.read_bytes() == b"old weights") if existing else not out.exists()
    assert not (tmp_path / "m.glorac.json").exists()
    assert not _leftovers(tmp_path), _leftovers(tmp_path)


def test_disk_full_while_writing_the_sidecar(capsys, work, tmp_path, monkeypatch):
    ckpt, choice, _ = work
    out, sidecar = tmp_path / "m.safetensors", tmp_path / "m.glorac.json"
    out.write_bytes(b"old weights")
    sidecar.write_text('{"old": true}')
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == sidecar.name:
            _disk_full()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice, "--force")
    assert code == 1, err
    assert not _leftovers(tmp_path), _leftovers(tmp_path)
    # "Nothing is written when anything fails": the old pair stays, consistent.
    assert out.read_bytes() == b"old weights"
    assert json.loads(sidecar.read_text()) == {"old": True}


# ------------------------------------------------------------------------------ Hugging Face

@pytest.fixture
def bert_checkpoint(tmp_path, capsys):
    entry = ZOO["bert"]
    if not available(entry):
        pytest.skip("transformers not installed")
    base_dir = tmp_path / "tiny-bert"
    entry.build().save_pretrained(base_dir)
    spec = tmp_path / "bert.glora"
    spec.write_text(spec_for(entry))
    ckpt = tmp_path / "supernet.pt"
    code, _, err = run_cli(capsys, "compile", spec, "--model", f"hf:{base_dir}", "-o", ckpt)
    assert code == 0, err
    structure = _train_like(ckpt, seed=17)
    choice = tmp_path / "choice.json"
    choice.write_text(structure.model_dump_json())
    return ckpt, choice, structure


def test_hf_fold_writes_a_from_pretrained_directory(capsys, bert_checkpoint, tmp_path):
    import transformers

    ckpt, choice, structure = bert_checkpoint
    out = tmp_path / "folded-bert"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice)
    assert code == 0, err
    assert out.is_dir() and (out / "config.json").is_file()
    data = json.loads((out / "glorac_fold.json").read_text())
    assert Structure.model_validate(data["structure"]) == structure
    assert data["model_ref"]["source"] == "hf"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "BertForSequenceClassification"
    x = ZOO["bert"].example_input()
    want = _adapted_output(ckpt, structure, x).logits
    with torch.no_grad():
        base = ZOO["bert"].build()(*x).logits
        assert rel_err(want, base) > 1e-3, "the trained checkpoint must matter"
        assert rel_err(model(*x).logits, want) <= 1e-4
    # the same directory again: refused without --force, replaced with it
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice)
    assert code == 1 and "--force" in err
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice, "--force")
    assert code == 0, err
    assert not _leftovers(tmp_path), _leftovers(tmp_path)
    transformers.AutoModelForSequenceClassification.from_pretrained(out)


# ------------------------------------------------------------------------------ bias add

def _bias_add_checkpoint(tmp_path, capsys, entry, model_ref: str) -> tuple[Path, Structure]:
    spec = tmp_path / "s.glora"
    spec.write_text(spec_for(entry) + "bias add\n")
    ckpt = tmp_path / "supernet.pt"
    code, _, err = run_cli(capsys, "compile", spec, "--model", model_ref, "-o", ckpt)
    assert code == 0, err
    supernet = glorac.load(ckpt)
    # E on every layer: each bias-free one gets a bias
    structure = Structure(layers={n: c.model_copy(update={"E": Kind(kind="vector")})
                                  for n, c in random_structure(supernet, seed=4).layers.items()})
    _train_like(ckpt, seed=3, select=structure)
    return ckpt, structure


def test_bias_add_writes_the_new_biases_and_lists_them(capsys, tmp_path):
    entry = ZOO["custom_biasfree"]
    ckpt, structure = _bias_add_checkpoint(tmp_path, capsys, entry, "tests.zoo:custom_biasfree")
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 0, err
    state = load_file(str(out))
    stock = entry.build()
    added = set(state) - set(stock.state_dict())
    assert added == {"fc1.bias", "fc2.bias"}
    assert set(json.loads((tmp_path / "m.glorac.json").read_text())["added_biases"]) == added
    for key in added:
        layer = stock.get_submodule(key.rsplit(".", 1)[0])
        layer.bias = torch.nn.Parameter(torch.zeros(layer.out_features))
    stock.load_state_dict(state, strict=True)
    x = entry.example_input()
    with torch.no_grad():
        assert rel_err(stock(*x), _adapted_output(ckpt, structure, x)) <= 1e-4


def test_hf_bias_add_is_loadable_or_refused(capsys, tmp_path):
    import transformers

    entry = ZOO["llama"]
    if not available(entry):
        pytest.skip("transformers not installed")
    base_dir = tmp_path / "tiny-llama"
    entry.build().save_pretrained(base_dir)
    ckpt, structure = _bias_add_checkpoint(tmp_path, capsys, entry, f"hf:{base_dir}")
    out = tmp_path / "folded"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    if code != 0:  # refusing is fine, if it says why and writes nothing
        assert code == 1 and "bias" in err and "Traceback" not in err
        assert not out.exists()
        return
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    x = entry.example_input()
    with torch.no_grad():
        assert rel_err(model(*x).logits, _adapted_output(ckpt, structure, x).logits) <= 1e-4


def test_hf_fold_names_the_classes_the_head_was_trained_on(capsys, bert_checkpoint, tmp_path):
    import transformers

    ckpt, choice, structure = bert_checkpoint
    supernet = glorac.load(ckpt)
    names = ("greeting", "question", "thanks")  # what training records from the data
    supernet.history = supernet.history.model_copy(update={"class_names": names})
    glorac.save(supernet, ckpt, force=True)
    out = tmp_path / "named"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out, "--structure", choice)
    assert code == 0, err
    config = transformers.AutoConfig.from_pretrained(out)
    assert config.id2label == dict(enumerate(names)) and config.label2id == {n: i for i, n in enumerate(names)}


def test_label_names_fill_a_config_that_leaves_its_default_two_labels_out(tmp_path):
    """transformers 5 writes no id2label for the default two labels; the names still land."""
    from glorac.folding.files import write_label_names

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert write_label_names(tmp_path, ("negative", "positive"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert not write_label_names(tmp_path, ("a", "b", "c"))  # three names for two outputs: left alone


def test_python_fold_names_the_labels_of_a_classifier():
    """glorac.fold (not only the CLI) gives the folded classifier the data's class names."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    supernet = glorac.build_supernet(REPO / "specs" / "bert.glora", model)
    supernet.history = supernet.history.model_copy(update={"class_names": ("cat", "dog", "fox")})
    folded = glorac.fold(supernet, supernet.largest_structure())
    assert folded.config.id2label == {0: "cat", 1: "dog", 2: "fox"} and folded.config.label2id["fox"] == 2
    assert model.config.id2label[0] == "LABEL_0"  # the fold's copy is named, the caller's model untouched
