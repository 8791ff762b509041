"""Overriding a spec's settings (``--batch-size 32``), checked exactly like the spec.

The flags and their checks both come from the settings models in :mod:`glorac.ir`
through the rules the spec checker reads settings with (:mod:`glorac.dsl.values`), so
``--batch-size 0`` is refused in the same words as ``training { batch_size = 0 }``, and
a combination the spec would refuse (``--warmup-epochs`` not below the epochs) is
refused too. Overridden settings are validated, never patched in with
``model_copy(update=...)``, which skips validation. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Mapping, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from .dsl.values import SettingRule, block_of, settings_table
from .errors import GloraError, did_you_mean
from .ir import SettingConflict

Settings = TypeVar("Settings", bound=BaseModel)


def flag_of(name: str) -> str:
    """``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------- applying overrides


def apply_overrides(settings: Settings, overrides: Mapping[str, Any], *, source: str = "command line") -> Settings:
    """``settings`` with ``overrides`` applied (None values are ignored).

    Raises :class:`GloraError` naming the flag, the problem and the fix when a value
    breaks the setting's limits or, with the settings it joins, a constraint between
    settings. ``source`` says where the overrides came from, for the message.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return settings
    model = type(settings)
    values = {key: _read(model, key, value, source) for key, value in given.items()}
    try:
        updated = model.model_validate({**settings.model_dump(), **values})
    except ValidationError as exc:  # a limit the spec rules do not know: still refused
        raise GloraError(f"invalid {source} settings: {exc}") from None
    for conflict in updated.conflicts():
        # Only the constraints an override takes part in: the rest were the caller's to check.
        if any(name in values for name in conflict.fields):
            raise GloraError(_conflict_message(conflict, values, source))
    return updated


def _read(model: type[BaseModel], key: str, value: Any, source: str) -> Any:
    """One override read by the spec's own rule for that setting (its value as spec text)."""
    table = settings_table(model)
    if key not in table:
        block = block_of(model)
        hint = did_you_mean(key, table, "settings")
        what = f"{block} setting" if block else "setting"
        raise GloraError(f"{flag_of(key)} ({source}): there is no {what} `{key}`"
                         + (f" ({hint})" if hint else "") + "; leave it out or pass one that exists.")
    rule = table[key]
    text = _as_text(value, rule.expected)
    if text is None:
        raise GloraError(_value_message(key, repr(value), (f"`{key}` expects a {rule.expected}", None), rule, source))
    read, problem = rule.read(text, f"`{key}`")
    if problem:
        raise GloraError(_value_message(key, text, problem, rule, source))
    return read


def _as_text(value: Any, expected: str) -> Optional[str]:
    """The spec text of a Python value, or None when it is not that kind of token.

    Floats are written exactly (repr) but without a trailing ``.0``, so that ``--lr -1``
    is reported as ``got -1``, as the spec checker would say it.
    """
    if isinstance(value, str):
        return value
    if expected == "name":
        return ("true" if value else "false") if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _value_message(key: str, shown: str, problem, rule: SettingRule, source: str) -> str:
    message, hint = problem
    flag = flag_of(key)
    why = f" ({hint})" if hint else ""
    return (f"{flag} {shown} ({source}): {message}{why}. Pass {rule.allowed}, "
            f"or leave out {flag} to keep the spec's value.")


def _conflict_message(conflict: SettingConflict, values: Mapping[str, Any], source: str) -> str:
    flags = " ".join(f"{flag_of(name)} {values[name]}" for name in conflict.fields if name in values)
    why = f"; {conflict.why}" if conflict.why else ""
    fix = conflict.fix_naming(flag_of)
    return f"{flags} ({source}): {conflict.message}{why}. {fix[0].upper()}{fix[1:]}."


# ---------------------------------------------------------------- command-line flags


def add_setting_flags(parser: argparse.ArgumentParser, model_cls: type[BaseModel],
                      names: Optional[Iterable[str]] = None, help_prefix: Optional[str] = None) -> None:
    """One flag per setting (``--batch-size``; ``--fill`` / ``--no-fill`` for true/false).

    Every flag defaults to None, meaning "keep the spec's value"; read them back with
    :func:`setting_overrides`. ``names`` picks and orders the settings (default: all).
    """
    block = block_of(model_cls)
    prefix = help_prefix or (f"override the spec's {block} setting" if block else "override the setting")
    table = settings_table(model_cls)
    for name in _names(model_cls, names):
        rule = table[name]
        if rule.type is bool:
            parser.add_argument(flag_of(name), dest=name, action="store_const", const=True, default=None,
                                help=f"{prefix}: {name} = true")
            parser.add_argument(f"--no-{flag_of(name)[2:]}", dest=name, action="store_const", const=False,
                                default=None, help=f"{prefix}: {name} = false")
        elif rule.choices:
            parser.add_argument(flag_of(name), dest=name, choices=rule.choices, default=None,
                                help=f"{prefix} {name} ({rule.allowed})")
        else:
            parser.add_argument(flag_of(name), dest=name, type=rule.type, default=None,
                                metavar="N" if rule.type is int else "X", help=f"{prefix} {name} ({rule.allowed})")


def setting_overrides(args: argparse.Namespace, model_cls: type[BaseModel],
                      names: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """The settings given on the command line (flags left out are not in the dict)."""
    return {name: getattr(args, name) for name in _names(model_cls, names) if getattr(args, name, None) is not None}


def _names(model_cls: type[BaseModel], names: Optional[Iterable[str]]) -> list[str]:
    fields = list(model_cls.model_fields)
    chosen = fields if names is None else list(names)
    unknown = [n for n in chosen if n not in fields]
    if unknown:  # a mistake in the calling code, not the user's
        raise ValueError(f"{model_cls.__name__} has no setting(s) {', '.join(unknown)}")
    return chosen
