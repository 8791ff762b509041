"""What the spec language derives instead of repeating: settings rules from the IR models,
keywords from the grammar, and the analyzer's passes."""

from __future__ import annotations

import pydantic
import pytest
from lark import Lark

from glorac.dsl import analyze_text
from glorac.dsl.analyze import PASSES
from glorac.dsl.grammar import describe_terminal, grammar_path, keywords, keywords_of
from glorac.dsl.parser import _CONTINUATION, KEYWORDS
from glorac.dsl.values import BLOCKS, SETTINGS, settings_table
from glorac.ir import SearchSettings, Spec, TrainSettings

SAMPLES = ["0", "1", "2", "-1", "0.5", "1.0", "1e-4", "-1e-4", "1e400", "2.5", "3K", "abc", "true",
           "false", "cosine", "linear", "paper", "sandwich", "9223372036854775808", ".5", "+3"]


def test_settings_tables_are_the_model_fields():
    assert list(BLOCKS) == ["search", "training"]
    for block, model in BLOCKS.items():
        assert list(SETTINGS[block]) == list(model.model_fields)
        assert Spec.model_fields[block].annotation is model  # the block keyword is the Spec field


@pytest.mark.parametrize("model", [SearchSettings, TrainSettings])
def test_a_value_the_spec_reads_is_a_value_the_model_takes(model):
    """Readers and pydantic limits agree: what one accepts the other does, for every sample."""
    for key, rule in settings_table(model).items():
        for text in SAMPLES:
            value, problem = rule.read(text, f"`{key}`")
            if problem is None:
                model.model_validate({key: value})
                continue
            out_of_limits = any(f"`{key}` must be {rel} " in problem[0] for rel in ("≥", ">", "≤"))
            if out_of_limits:
                with pytest.raises(pydantic.ValidationError):  # refused for its limit, by both
                    model.model_validate({key: _number(text)})


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def test_settings_rules_word_the_limits():
    rules = SETTINGS["training"]
    assert rules["lr"].read("0", "`lr`") == (None, ("`lr` must be > 0, got 0", None))
    assert rules["grad_clip"].expected == "number" and rules["grad_clip"].type is float
    assert rules["schedule"].choices == ("cosine", "linear", "constant")
    assert SETTINGS["search"]["mutation_prob"].allowed == "a number ≥ 0 and ≤ 1"
    assert SETTINGS["search"]["fill"].expected == "name"


def test_keywords_come_from_the_grammar_in_its_order():
    assert KEYWORDS == ("model", "include", "space", "adapt", "exclude", "train", "budget", "bias",
                        "search", "training")
    assert _CONTINUATION == ("type", "with", "except", "including")
    assert describe_terminal("SETTINGS") == "`search` or `training`"
    assert describe_terminal("_WITH") == "`with`"
    assert keywords().statement_terminals[0] == "_MODEL"


def test_a_new_statement_keyword_needs_no_python_edit():
    grammar = grammar_path().read_text(encoding="utf-8")
    grammar = grammar.replace("          | settings_block", "          | settings_block\n          | seed_stmt")
    grammar += '\nseed_stmt: _SEED NUMBER\n_SEED: /seed(?![A-Za-z0-9_])/\n'
    found = keywords_of(Lark(grammar, parser="lalr"))
    assert found.statements == KEYWORDS + ("seed",)
    assert found.clauses == _CONTINUATION


def test_a_statement_must_start_with_a_keyword():
    grammar = grammar_path().read_text(encoding="utf-8").replace(
        "          | settings_block", "          | settings_block\n          | odd_stmt")
    with pytest.raises(RuntimeError, match="must start with a keyword, not NUMBER"):
        keywords_of(Lark(grammar + "\nodd_stmt: NUMBER NAME\n", parser="lalr"))


def test_passes_run_in_order_and_report_together():
    assert [name for name, _ in PASSES] == ["spaces", "rules", "trained", "singletons", "settings"]
    text = "space s { A: vectr }\nadapt \"x\" type Dense with s\ntrain \"a..b\"\nbias keep\nsearch { population = 5 }\n"
    _, diags = analyze_text(text)
    assert [d.line for d in diags] == [1, 2, 3, 4, 5]
