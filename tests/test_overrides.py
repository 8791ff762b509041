"""Overrides of a spec's settings (glorac.overrides): the same rules, and words, as the spec."""

from __future__ import annotations

import argparse

import pytest

from glorac import loads_spec
from glorac.dsl import analyze_text
from glorac.errors import GloraError
from glorac.ir import SearchSettings, TrainSettings
from glorac.overrides import add_setting_flags, apply_overrides, flag_of, setting_overrides


def parser_for(*models, names=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glorac")
    for model in models:
        add_setting_flags(parser, model, names)
    return parser


def override(model, argv: list[str], settings=None):
    """Parse ``argv`` as the command line and apply it to ``settings`` (default: the defaults)."""
    args = parser_for(model).parse_args(argv)
    return apply_overrides(settings or model(), setting_overrides(args, model))


BAD = [
    (TrainSettings, ["--batch-size", "0"], "--batch-size", "`batch_size` must be ≥ 1, got 0"),
    (TrainSettings, ["--lr", "-1"], "--lr", "`lr` must be > 0, got -1"),
    (TrainSettings, ["--lr", "0"], "--lr", "`lr` must be > 0, got 0"),
    (TrainSettings, ["--grad-clip", "-1"], "--grad-clip", "`grad_clip` must be > 0, got -1"),
    (TrainSettings, ["--head-lr", "0"], "--head-lr", "`head_lr` must be > 0, got 0"),
    (TrainSettings, ["--min-lr", "-0.5"], "--min-lr", "`min_lr` must be ≥ 0, got -0.5"),
    (TrainSettings, ["--warmup-epochs", "500"], "--warmup-epochs",
     "warm-up (500 epochs) must be shorter than training (500)"),
    (TrainSettings, ["--epochs", "10"], "--epochs", "warm-up (10 epochs) must be shorter than training (10)"),
    (SearchSettings, ["--mutation-prob", "2"], "--mutation-prob", "`mutation_prob` must be ≤ 1, got 2"),
    (SearchSettings, ["--population", "1"], "--population", "`population` must be ≥ 2, got 1"),
    (SearchSettings, ["--parents", "51"], "--parents", "parents (51) exceed the population (50)"),
    (SearchSettings, ["--population", "8"], "--population", "parents (10) exceed the population (8)"),
]


@pytest.mark.parametrize("model, argv, flag, message", BAD, ids=[" ".join(b[1]) for b in BAD])
def test_bad_override_is_refused_naming_the_flag(model, argv, flag, message):
    with pytest.raises(GloraError) as err:
        override(model, argv)
    text = str(err.value)
    assert text.startswith(f"{' '.join(argv)} (command line): ")
    assert message in text and flag in text
    assert "\n" not in text  # one paragraph


def test_value_messages_are_the_spec_checkers():
    """`--batch-size 0` and `training { batch_size = 0 }` are refused in the same words."""
    for key, value in (("batch_size", "0"), ("lr", "0"), ("schedule", "cosin"), ("seed", "-3")):
        _, diags = analyze_text(f"training {{ {key} = {value} }}")
        with pytest.raises(GloraError) as err:
            apply_overrides(TrainSettings(), {key: value})
        assert diags[0].message in str(err.value)
        if diags[0].hint:
            assert diags[0].hint in str(err.value)


def test_the_fix_is_part_of_the_message():
    with pytest.raises(GloraError, match=r"Pass an integer ≥ 1, or leave out --batch-size"):
        override(TrainSettings, ["--batch-size", "0"])
    with pytest.raises(GloraError, match=r"Lower --warmup-epochs or raise --epochs\.$"):
        override(TrainSettings, ["--warmup-epochs", "600"])
    with pytest.raises(GloraError, match=r"Lower --parents or raise --population\.$"):
        override(SearchSettings, ["--parents", "60"])


def test_cross_check_uses_the_settings_being_overridden():
    spec = loads_spec("training { epochs = 5 warmup_epochs = 2 }")
    with pytest.raises(GloraError, match=r"warm-up \(5 epochs\) must be shorter than training \(5\)"):
        override(TrainSettings, ["--warmup-epochs", "5"], spec.training)
    assert override(TrainSettings, ["--epochs", "3"], spec.training).epochs == 3
    both = override(TrainSettings, ["--epochs", "3", "--warmup-epochs", "0"], spec.training)
    assert (both.epochs, both.warmup_epochs) == (3, 0)


def test_valid_overrides_pass_and_keep_the_rest():
    settings = TrainSettings(lr=1e-3)
    new = override(TrainSettings, ["--batch-size", "8", "--grad-clip", "1.5", "--schedule", "linear",
                                   "--min-lr", "0", "--head-lr", "1e-2"], settings)
    assert isinstance(new, TrainSettings)
    assert (new.batch_size, new.grad_clip, new.schedule, new.min_lr, new.head_lr) == (8, 1.5, "linear", 0.0, 1e-2)
    assert new.lr == 1e-3 and new.epochs == settings.epochs
    assert type(new.grad_clip) is float and type(new.batch_size) is int


def test_nothing_given_returns_the_settings_unchanged():
    settings = SearchSettings(population=4, parents=2)
    assert apply_overrides(settings, {}) is settings
    assert apply_overrides(settings, {"seed": None, "parents": None}) is settings
    assert override(SearchSettings, [], settings) is settings


def test_unrelated_override_does_not_judge_what_the_caller_built():
    """A conflict no override takes part in is the caller's own (the spec checker's) business."""
    built = SearchSettings(population=4)  # parents 10 > 4: possible in Python, not in a spec
    assert apply_overrides(built, {"seed": 3}).seed == 3


def test_python_values_are_checked_like_spec_text():
    with pytest.raises(GloraError, match=r"`epochs` must be an integer, not `2.5`"):
        apply_overrides(TrainSettings(), {"epochs": 2.5})
    with pytest.raises(GloraError, match=r"`epochs` expects a number"):
        apply_overrides(TrainSettings(), {"epochs": True})
    with pytest.raises(GloraError, match=r"`schedule` expects a name"):
        apply_overrides(TrainSettings(), {"schedule": 3})
    with pytest.raises(GloraError, match=r"`fill` must be true or false, not `maybe`"):
        apply_overrides(SearchSettings(), {"fill": "maybe"})
    with pytest.raises(GloraError, match=r"there is no training setting `lrr` \(did you mean `lr`\?\)"):
        apply_overrides(TrainSettings(), {"lrr": 1e-3})
    assert apply_overrides(TrainSettings(), {"lr": "1e-3"}).lr == 1e-3
    assert apply_overrides(TrainSettings(), {"lr": 1}).lr == 1.0


def test_flags_exist_for_every_setting_with_limits_in_the_help():
    parser = parser_for(TrainSettings)
    helps = {a.dest: a for a in parser._actions}
    options: dict[str, list[str]] = {}
    for action in parser._actions:  # a bool setting has two flags with one dest (--x, --no-x)
        options.setdefault(action.dest, []).extend(action.option_strings)
    for name in TrainSettings.model_fields:
        assert flag_of(name) in options[name]
    assert "schedule" in helps and helps["schedule"].choices == ("cosine", "linear", "constant")
    assert "min_lr" in helps and "head_lr" in helps
    assert "(an integer ≥ 1)" in helps["batch_size"].help
    assert "override the spec's training setting" in helps["lr"].help and "> 0" in helps["lr"].help
    args = parser.parse_args([])
    assert setting_overrides(args, TrainSettings) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--schedule", "fast"])  # argparse's own refusal: exit 2 with usage


def test_bool_flags_come_in_pairs():
    parser = parser_for(SearchSettings, names=["fill", "population"])
    assert setting_overrides(parser.parse_args(["--no-fill"]), SearchSettings, ["fill"]) == {"fill": False}
    assert setting_overrides(parser.parse_args(["--fill"]), SearchSettings, ["fill"]) == {"fill": True}
    assert override(SearchSettings, ["--no-fill"]).fill is False
    assert parser.parse_args([]).fill is None


def test_names_pick_and_check_the_flags():
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, TrainSettings, ["epochs", "lr"], help_prefix="fine-tuning")
    assert {a.dest for a in parser._actions} == {"help", "epochs", "lr"}
    assert next(a for a in parser._actions if a.dest == "lr").help.startswith("fine-tuning lr")
    assert setting_overrides(parser.parse_args(["--lr", "0.5"]), TrainSettings, ["epochs", "lr"]) == {"lr": 0.5}
    with pytest.raises(ValueError, match="no setting"):
        add_setting_flags(argparse.ArgumentParser(), TrainSettings, ["lrr"])


def test_defaults_never_conflict():
    """The spec checker blames a conflict on a setting the spec sets: the defaults must agree."""
    assert SearchSettings().conflicts() == [] and TrainSettings().conflicts() == []
