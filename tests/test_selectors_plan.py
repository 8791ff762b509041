"""Every pattern of a rule must select something when planned (issue 10, "Selectors").

A mistyped pattern in a multi-pattern rule, an `except` pattern that removes nothing and a
`train` pattern that names no module are errors at the pattern's own line and column, with
the closest real names; a pattern that names modules of a type glorac cannot adapt says so;
a `?` after the closing quote makes a pattern optional.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import glorac
from glorac import ir
from glorac.cli import main
from glorac.dsl import format_source
from glorac.errors import PlanError

SPACE = "{ B: lora(2) }"


class Conv1D(nn.Module):
    """Like transformers' GPT-2 Conv1D: a linear map that is not an nn.Linear (nor F.linear)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.1)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = Conv1D(8, 8)
        self.qkv = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(self.qkv(self.c_attn(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.act = nn.GELU()

    def forward(self, x):
        return x + self.act(self.attn(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.conv = nn.Conv2d(3, 3, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def net() -> Net:
    return Net()


def plan_of(text: str, model: nn.Module | None = None):
    return glorac.plan(glorac.loads_spec(text), model or Net())


def plan_error(text: str, model: nn.Module | None = None) -> str:
    with pytest.raises(PlanError) as err:
        plan_of(text, model)
    return str(err.value)


# ---------------------------------------------------------------- required patterns


def test_typo_in_second_pattern_is_an_error_at_its_column():
    msg = plan_error(f'adapt "blocks.*.attn.qkv", "blocks.*.atn.proj" with {SPACE}')
    assert msg.count("\n") == 0  # one problem, one paragraph
    assert msg.startswith('<string>:1:28: pattern "blocks.*.atn.proj"')
    assert "at <string>:1:1" in msg  # and the rule it belongs to
    assert "Closest layer names: blocks.0.attn.proj" in msg
    assert 'pattern "blocks.*.attn.qkv"' not in msg  # the good pattern is not blamed


def test_pattern_on_a_later_line_is_reported_there():
    text = f'adapt "blocks.*.attn.qkv",\n      "blocks.*.attn.prj"\n    with {SPACE}'
    assert plan_error(text).startswith('<string>:2:7: pattern "blocks.*.attn.prj"')


def test_every_problem_is_reported_in_one_error():
    msg = plan_error(f'adapt "blocks.*.attn.qvk", "head" with {SPACE}\n'
                     f'exclude "blocks.1.attn.prj" except "blocks.1.attn.qkv"\n'
                     f'adapt "blocks.0.attn.proj" except "blocks.0.attn.pro" with {SPACE}')
    lines = msg.split("\n")
    assert len(lines) == 3
    assert lines[0].startswith('<string>:1:7: pattern "blocks.*.attn.qvk"')
    assert lines[1].startswith('<string>:2:9: pattern "blocks.1.attn.prj"')
    assert lines[2].startswith('<string>:3:35: `except` pattern "blocks.0.attn.pro"')


def test_single_pattern_rule_still_names_the_rule_and_close_layers():
    msg = plan_error(f'adapt "blocks.*.mpl" with {SPACE}')
    assert msg.startswith('<string>:1:7: pattern "blocks.*.mpl" (in `adapt "blocks.*.mpl"` at <string>:1:1)')
    assert "matches no layer of this model" in msg and "Closest layer names:" in msg
    assert "`?`" in msg  # says how to mark a pattern for other architectures


def test_pattern_whose_layers_are_all_of_another_type():
    msg = plan_error(f'adapt "blocks.*.attn.qkv", "conv" type Linear with {SPACE}')
    assert msg.startswith('<string>:1:28: pattern "conv"')
    assert "matches no layer of type Linear" in msg and "conv: Conv2d 3→3 3×3" in msg


def test_pattern_whose_layers_the_except_removes_entirely():
    msg = plan_error(f'adapt "blocks.*.attn.qkv", "head" except "head" with {SPACE}')
    assert msg.startswith('<string>:1:28: pattern "head"') and "`except` removes (head)" in msg


# ---------------------------------------------------------------- except patterns


def test_unmatched_except_pattern_is_an_error():
    msg = plan_error(f'adapt "blocks.*.attn.*" type Linear except "blocks.*.attn.porj" with {SPACE}')
    assert msg.startswith('<string>:1:44: `except` pattern "blocks.*.attn.porj"')
    assert "removes nothing" in msg and "blocks.0.attn.proj" in msg.split("Closest")[1]


def test_except_pattern_outside_what_the_rule_selects_says_so():
    msg = plan_error(f'adapt "blocks.*.attn.qkv" except "head" with {SPACE}')
    assert msg.startswith('<string>:1:34: `except` pattern "head"')
    assert "It matches head, which the rule's patterns do not select" in msg


def test_except_patterns_of_a_rule_that_selects_nothing_are_not_reported_twice():
    msg = plan_error(f'adapt "blocks.*.atn.qkv" except "blocks.0.**" with {SPACE}')
    assert msg.count("\n") == 0 and "`except`" not in msg.split("(in")[0]


# ---------------------------------------------------------------- train patterns


def test_train_typo_in_second_pattern():
    msg = plan_error(f'adapt "blocks.*.attn.qkv" with {SPACE}\ntrain "head", "conv", "clasifier"')
    assert msg.startswith('<string>:2:23: pattern "clasifier" (in `train "head", "conv", "clasifier"` '
                          'at <string>:2:1) matches no module')
    assert "Closest module names:" in msg and msg.count("\n") == 0


def test_train_patterns_match_any_module():
    p = plan_of(f'adapt "blocks.*.attn.qkv" with {SPACE}\ntrain "blocks.*.act", "head"')
    assert p.trained == ("blocks.0.act", "blocks.1.act", "head")


# ---------------------------------------------------------------- optional patterns


def test_optional_patterns_may_match_nothing():
    p = plan_of(f'adapt "blocks.*.attn.qkv", "blocks.*.attn.q_proj"? with {SPACE}\n'
                f'exclude "blocks.1.**" except "blocks.1.attn.k_proj"?, "blocks.1.attn.qkv"\n'
                f'train "head", "classifier"?')
    assert [lp.qualname for lp in p.layers] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert p.trained == ("head",)


def test_a_rule_of_optional_patterns_may_select_nothing():
    p = plan_of(f'adapt "layers.*.q_proj"?, "layers.*.v_proj"? except "layers.0.**" with {SPACE}\n'
                f'adapt "head" with {SPACE}')
    assert [lp.qualname for lp in p.layers] == ["head"]


def test_optional_does_not_excuse_the_other_patterns():
    msg = plan_error(f'adapt "blocks.*.attn.q_proj"?, "blocks.*.attn.prj" with {SPACE}')
    assert msg.startswith('<string>:1:32: pattern "blocks.*.attn.prj" (in `adapt "blocks.*.attn.q_proj"?, ')


# ---------------------------------------------------------------- unsupported types


def test_pattern_naming_a_module_glorac_cannot_adapt_says_which_type():
    msg = plan_error(f'adapt "blocks.*.attn.qkv", "blocks.*.attn.c_attn" with {SPACE}')
    assert msg.startswith('<string>:1:28: pattern "blocks.*.attn.c_attn"')
    assert ("matches 2 modules of type Conv1D (e.g. blocks.0.attn.c_attn), which glorac cannot adapt: "
            "only nn.Linear and nn.Conv2d layers (and functional F.linear weights) are sites") in msg
    assert "Check the pattern" not in msg  # not a typo


def test_pattern_naming_containers_suggests_the_layers_inside():
    msg = plan_error(f'adapt "blocks.*.attn" type Linear with {SPACE}')
    assert "matches 2 modules of type Attention (e.g. blocks.0.attn)" in msg
    assert "blocks.0.attn.qkv" in msg and '"blocks.*.attn.**" selects those' in msg


def test_mixed_module_types_are_counted_per_type():
    msg = plan_error(f'adapt "blocks.*.{{act,attn}}" with {SPACE}')
    assert "2 modules of type Attention (e.g. blocks.0.attn) and 2 of type GELU (e.g. blocks.0.act)" in msg


def test_real_gpt2_conv1d():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2Model(config)
    # Conv1D is a Linear stored transposed: adapted as one.
    plan = glorac.plan(glorac.loads_spec(f'adapt "h.*.attn.c_attn" with {SPACE}'), model)
    assert [(lp.qualname, lp.site.transposed, lp.site.shape) for lp in plan.layers] == [
        ("h.0.attn.c_attn", True, "16→48"), ("h.1.attn.c_attn", True, "16→48")]
    msg = plan_error(f'adapt "h.*.ln_1" with {SPACE}', model)
    assert "matches 2 modules of type LayerNorm (e.g. h.0.ln_1), which glorac cannot adapt" in msg


def test_cli_plan_reports_the_pattern(tmp_path, capsys):
    spec = tmp_path / "s.glora"
    spec.write_text(f'adapt "blocks.*.attn.qkv", "blocks.*.attn.prj" with {SPACE}\n')
    assert main(["plan", str(spec), "--model", "tests.test_selectors_plan:net"]) != 0
    err = capsys.readouterr().err
    assert f'{spec}:1:28: pattern "blocks.*.attn.prj"' in err and "Traceback" not in err


# ---------------------------------------------------------------- the language and the IR


def test_optional_is_parsed_into_the_ir_with_each_pattern_position():
    spec = glorac.loads_spec(f'adapt "a", "b"? type Linear except "c"?, "d" with {SPACE}\ntrain "h"?, "k"')
    sel = spec.rules[0].selector
    assert [(i.origin.line, i.origin.column, i.optional) for i in sel.pattern_info] == [(1, 7, False),
                                                                                         (1, 12, True)]
    assert [(i.origin.column, i.optional) for i in sel.exclude_info] == [(36, True), (42, False)]
    assert spec.rules[0].origin == ir.Origin(file="<string>", line=1, column=1)  # unchanged
    assert [(i.origin.column, i.optional) for i in spec.trained[0].pattern_info] == [(7, True), (13, False)]


def test_fmt_round_trips_the_question_mark():
    source = f'adapt "a" ?, "b" type Linear except "c"\n    ? with {SPACE}\ntrain "h"?\nexclude "x"?, "y"?\n'
    out = format_source(source)
    assert out.splitlines()[0] == 'adapt "a"?, "b" type Linear except "c"? with {'
    assert 'train "h"?' in out and 'exclude "x"?, "y"?' in out
    assert format_source(out) == out
    before, after = glorac.loads_spec(source), glorac.loads_spec(out)
    assert [i.optional for i in before.rules[0].selector.pattern_info] == [True, False]
    assert [[i.optional for i in r.selector.pattern_info] for r in after.rules] == [[True, False], [True, True]]
    assert [i.optional for i in after.rules[0].selector.exclude_info] == [True]


def test_long_rule_wraps_with_its_question_marks():
    patterns = ", ".join(f'"blocks.*.attention.layer_{i}.projection"?' for i in range(4))
    out = format_source(f"adapt {patterns} with {SPACE}")
    assert out.count('"?') == 4 and format_source(out) == out


@pytest.mark.parametrize("text, where", [
    ('adapt "a"?? with s', "1:11"),
    ('adapt ?"a" with s', "1:7"),
    ('budget 1M?', "1:10"),
    ('include "x.glora"?', "1:18"),
])
def test_question_mark_elsewhere_is_a_syntax_error(text, where):
    with pytest.raises(glorac.SpecError) as err:
        glorac.loads_spec(text)
    assert f"<string>:{where}" in err.value.render() and "`?`" in err.value.render()


def test_old_spec_json_without_pattern_info_still_validates():
    """Checkpoints store the Spec IR: JSON written before per-pattern data must load."""
    data = json.loads(glorac.loads_spec(f'adapt "a", "b" except "c" with {SPACE}\ntrain "h"').model_dump_json())
    for rule in data["rules"]:
        del rule["selector"]["pattern_info"], rule["selector"]["exclude_info"]
    for rule in data["trained"]:
        del rule["pattern_info"]
    spec = ir.Spec.model_validate(data)
    assert spec.rules[0].selector.pattern_info == () and spec.trained[0].pattern_info == ()
    assert ir.Spec.model_validate_json(json.dumps(data)) == spec


def test_old_spec_is_planned_as_before_rule_by_rule():
    """IR without per-pattern data (an old checkpoint's spec) keeps the old check: a rule
    must select something as a whole, so a checkpoint that planned before still does."""
    new = glorac.loads_spec(f'adapt "blocks.*.attn.qkv", "blocks.*.atn.proj" with {SPACE}\n'
                            f'train "head", "clasifier"')
    data = json.loads(new.model_dump_json())
    del data["rules"][0]["selector"]["pattern_info"], data["rules"][0]["selector"]["exclude_info"]
    del data["trained"][0]["pattern_info"]
    old = ir.Spec.model_validate(data)
    p = glorac.plan(old, Net())
    assert [lp.qualname for lp in p.layers] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert p.trained == ("head",)
    nothing = {**data, "rules": [{**data["rules"][0], "selector": {"patterns": ["nothing.here"]}}]}
    with pytest.raises(PlanError, match="rule `adapt nothing.here` matches no layer"):
        glorac.plan(ir.Spec.model_validate(nothing), Net())


def test_pattern_info_must_align_with_the_patterns():
    origin = ir.Origin(file="f", line=1, column=7)
    with pytest.raises(Exception, match="pattern_info"):
        ir.Selector(patterns=("a", "b"), pattern_info=(ir.PatternInfo(origin=origin),))
    with pytest.raises(Exception, match="exclude_info"):
        ir.Selector(patterns=("a",), exclude_info=(ir.PatternInfo(),))
    with pytest.raises(Exception, match="pattern_info"):
        ir.TrainRule(patterns=("a",), origin=origin, pattern_info=(ir.PatternInfo(),) * 2)
