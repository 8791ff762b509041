"""Planning: rule precedence, policies, failure messages, and the CLI's plan/compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import glorac
from glorac.cli import main
from glorac.errors import CheckpointError, PlanError
from glorac.models import ModelRef
from tests.reference import perturb
from tests.zoo import ZOO

ROOT = Path(__file__).resolve().parent.parent


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)) for _ in range(3))
        self.narrow = nn.Linear(8, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(self.narrow(x))


def plan_of(text: str, model: nn.Module | None = None):
    return glorac.plan(glorac.loads_spec(text), model or Tiny())


def test_last_matching_rule_wins():
    p = plan_of("""
        adapt "**" type Linear except "head" with { B: lora(2) }
        exclude "blocks.1.**"
        adapt "blocks.1.2" with { E: vector }
    """)
    names = {lp.qualname: lp for lp in p.layers}
    assert "blocks.1.0" not in names  # excluded by the later rule
    assert names["blocks.1.2"].space.E == (glorac.Kind(kind="vector"),)
    assert names["blocks.1.2"].rule.line == 4
    assert names["blocks.0.0"].space.B == (glorac.Kind(kind="lora", rank=2),)
    assert "head" not in names


def test_index_ranges_and_alternatives():
    p = plan_of('adapt "blocks.[0-1].{0,2}" with { B: lora(2) }')
    assert sorted(lp.qualname for lp in p.layers) == ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2"]


def test_rank_above_layer_limit_is_lowered_and_reported():
    p = plan_of('adapt "narrow" with { A: lora(2|8) B: lora(8) C: lora(16) }')
    lp = p.layer("narrow")  # 8 → 3: A/B limit min(3, 8) = 3, C limit in = 8
    assert [k.rank for k in lp.space.A] == [2, 3]
    assert [k.rank for k in lp.space.B] == [3]
    assert [k.rank for k in lp.space.C] == [8]
    assert any("lowered to 3" in n for n in lp.notes)


def test_rule_matching_nothing_names_the_rule_and_close_layers():
    with pytest.raises(PlanError) as err:
        plan_of('adapt "blocks.*.1" with { B: lora(2) }\nadapt "blocks.0.0" with { B: lora(2) }', Tiny())
    msg = str(err.value)
    assert "<string>:1:1" in msg and "blocks.*.1" in msg and "blocks.0.0" in msg
    assert "blocks.0.0`" not in msg.split("Closest")[0]  # the good rule is not blamed


def test_spec_for_another_architecture_is_a_clear_error():
    spec = glorac.load_spec(ROOT / "specs" / "vit.glora")
    with pytest.raises(PlanError, match="matches no layer"):
        glorac.plan(spec, Tiny())


def test_train_rule_matching_nothing_and_overlap_with_adapt():
    with pytest.raises(PlanError, match="matches no module"):
        plan_of('adapt "narrow" with { B: lora(2) }\ntrain "classifier"')
    with pytest.raises(PlanError, match="also inside the trained module"):
        plan_of('adapt "head" with { B: lora(2) }\ntrain "head"')


def test_untraceable_model_falls_back_and_says_why():
    p = plan_of('adapt "fc1", "fc2" with { B: lora(2) }', ZOO["untraceable"].build())
    assert p.front_end == "modules"
    assert "control flow" in p.trace_failure or "Proxy" in p.trace_failure


def test_plan_totals_and_budget_feasibility():
    p = plan_of('adapt "blocks.*.0" with { A: lora(2) | none  E: vector | none }\nbudget 1K')
    per_layer = 2 * (8 + 8) + 8
    assert p.max_params == 3 * per_layer and p.min_params == 0
    assert p.supernet_params == 3 * per_layer
    assert p.budget_feasible is True
    assert p.log10_structures == pytest.approx(3 * torch.log10(torch.tensor(4.0)).item())
    assert glorac.plan(glorac.loads_spec('adapt "narrow" with { B: vector }\nbudget 1'), Tiny()).budget_feasible is False


def test_plan_json_round_trip():
    p = plan_of('adapt "blocks.*.0" with { B: lora(2) }\ntrain "head"')
    from glorac.planning import Plan

    assert Plan.model_validate_json(p.model_dump_json()) == p


# ---------------------------------------------------------------- checkpoints


def _saved(tmp_path, seed=0):
    model = ZOO["vit"].build()
    sn = glorac.build_supernet(ROOT / "specs" / "vit.glora", model)
    sn.model_ref = ModelRef(name="tests.zoo:vit", source="factory")
    perturb(sn, seed=seed)
    return glorac.save(sn, tmp_path / "sn.pt"), model


def test_checkpoint_refuses_other_base_weights(tmp_path):
    path, model = _saved(tmp_path)
    other = ZOO["vit"].build()
    with torch.no_grad():
        other.blocks[0].attn.qkv.weight[0, 0] += 1.0
    with pytest.raises(CheckpointError, match="weights differ"):
        glorac.load(path, model=other)


@pytest.mark.parametrize("damage", ["truncate", "junk", "foreign", "pickle_code", "empty"])
def test_damaged_or_foreign_checkpoints(tmp_path, damage):
    path, model = _saved(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "junk":
        path.write_bytes(os.urandom(4096))
    elif damage == "foreign":
        torch.save(model.state_dict(), path)
    elif damage == "pickle_code":
        torch.save({"format": "glorac.supernet", "x": Tiny()}, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        glorac.load(path, model=ZOO["vit"].build())


def test_save_refuses_to_overwrite(tmp_path):
    path, _ = _saved(tmp_path)
    before = path.read_bytes()
    model = ZOO["vit"].build()
    sn = glorac.build_supernet(ROOT / "specs" / "vit.glora", model)
    sn.model_ref = ModelRef(name="tests.zoo:vit", source="factory")
    with pytest.raises(CheckpointError, match="already exists"):
        glorac.save(sn, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sn.pt"]  # no temp file left


# ---------------------------------------------------------------- CLI


def test_cli_plan_and_compile(tmp_path, capsys):
    assert main(["plan", str(ROOT / "specs/vit.glora"), "--model", "vit_tiny_patch16_224", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["front_end"] == "fx" and len(plan["layers"]) == 48
    out = tmp_path / "sn.pt"
    argv = ["compile", str(ROOT / "specs/vit.glora"), "--model", "vit_tiny_patch16_224",
            "--num-classes", "7", "-o", str(out)]
    assert main(argv) == 0
    sn = glorac.load(out)
    assert sn.model_ref.num_classes == 7 and len(sn.adapters) == 48
    assert main(argv) == 1  # exists, no --force
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["plan", "specs/vit.glora", "--model", "vit_bsae_patch16_224"], "vit_base_patch16_224"),
    (["plan", "specs/bert.glora", "--model", "vit_tiny_patch16_224"], "matches no layer"),
    (["plan", "specs/bert.glora"], "no `model` line"),
    (["compile", "specs/vit.glora", "--model", "nosuchpkg.mod:make", "-o", "x.pt"], "nosuchpkg"),
])
def test_cli_errors_are_one_paragraph_without_traceback(argv, fragment):
    proc = subprocess.run([sys.executable, "-m", "glorac", *argv], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plan_7b_architecture_on_meta_allocates_nothing(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
    config.save_pretrained(tmp_path / "llama7b")
    code = (
        "import resource, json, glorac.cli as c, sys, io, contextlib\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        f"    rc = c.main(['plan', 'specs/llama.glora', '--model', 'hf:{tmp_path / 'llama7b'}', '--json'])\n"
        "p = json.loads(buf.getvalue())\n"
        "print(rc, len(p['layers']), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rc, layers, peak_mib = map(int, proc.stdout.split())
    assert rc == 0 and layers == 32 * 7
    assert peak_mib < 3000  # 7B fp32 weights would be ~27 GB
