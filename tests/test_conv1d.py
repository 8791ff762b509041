"""transformers' Conv1D (GPT-2): adapted as the Linear it is, folded back into Conv1D."""

from __future__ import annotations

import pytest
import torch

import glorac
from glorac.dsl.library import PAPER_SPACE
from tests.reference import perturb, random_structure, rel_err, run_cli

transformers = pytest.importorskip("transformers")

SPEC = PAPER_SPACE + 'adapt "transformer.h.*.attn.{c_attn,c_proj}", "transformer.h.*.mlp.*" with paper(r=2)\n'


def _gpt2():
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config).eval()


def _ids():
    return torch.randint(1, 64, (2, 10), generator=torch.Generator().manual_seed(0))


def test_conv1d_layers_are_sites_and_fold_exactly():
    model = _gpt2()
    supernet = glorac.build_supernet(glorac.loads_spec(SPEC), model)
    assert len(supernet.adapters) == 8 and all(lp.site.transposed for lp in supernet.plan.layers)
    x = _ids()
    with torch.no_grad():
        base = model(x).logits
        assert rel_err(supernet(x).logits, base) <= 1e-6
    perturb(supernet, seed=1, scale=0.3)
    structure = random_structure(supernet, seed=2)
    supernet.activate(structure)
    with torch.no_grad():
        adapted = supernet(x).logits
        assert rel_err(adapted, base) > 1e-3
        # code reading the weight sees W′ in Conv1D's (in, out) layout
        layer = supernet.model.get_submodule("transformer.h.0.attn.c_attn")
        assert layer.weight.shape == model.transformer.h[0].attn.c_attn.weight.shape
        folded = glorac.fold(supernet, structure)
        assert type(folded.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
        assert rel_err(folded(x).logits, adapted) <= 1e-5


def test_a_gpt2_directory_folds_to_one_that_from_pretrained_loads(capsys, tmp_path):
    base_dir = tmp_path / "gpt2"
    _gpt2().save_pretrained(base_dir)
    spec = tmp_path / "s.glora"
    spec.write_text(SPEC.replace('"transformer.h', '"h'))  # hf:DIR builds the backbone (GPT2Model)
    ckpt = tmp_path / "sn.pt"
    code, _, err = run_cli(capsys, "compile", spec, "--model", f"hf:{base_dir}", "-o", ckpt)
    assert code == 0, err
    supernet = glorac.load(ckpt)
    perturb(supernet, seed=3, scale=0.3)
    structure = random_structure(supernet, seed=4)
    supernet.select(structure)
    glorac.save(supernet, ckpt, force=True)
    out = tmp_path / "folded"
    code, _, err = run_cli(capsys, "fold", ckpt, "-o", out)
    assert code == 0, err
    x = _ids()
    folded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    source = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        want = source.lm_head(supernet(x).last_hidden_state)
        assert rel_err(folded(x).logits, want) <= 1e-5
