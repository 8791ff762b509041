"""Reading numbers and setting values from spec text, with messages for each mistake.

Each reader returns ``(value, None)`` or ``(None, (message, hint))`` so that the caller
can anchor the complaint at the token it came from.

The settings tables are derived from the pydantic models in :mod:`glorac.ir` (types,
``ge``/``gt``/``le`` limits, ``Literal`` choices), so a limit is written once and the
spec checker, the command-line overrides and the IR's own validation always agree.
"""

from __future__ import annotations

import functools
import math
import re
import types
from decimal import Decimal, DecimalException
from typing import Any, Callable, Literal, NamedTuple, Optional, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ..errors import did_you_mean
from ..ir import SearchSettings, TrainSettings

Problem = Optional[tuple[str, Optional[str]]]
_NUMBER = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([A-Za-z]*)$")
UNITS = {"": 1, "K": 10**3, "k": 10**3, "M": 10**6, "G": 10**9}
MAX_INT = 2**63 - 1  # integers beyond this are typos (and do not fit the int64 they feed)
MAX_PARAMS = 10**15  # a budget beyond a quadrillion parameters is a typo


def _shown(text: str) -> str:
    """Source text for a message; quoted text is shortened by the diagnostics themselves."""
    return text if len(text) <= 40 else text[:37] + "..."


def split_number(text: str) -> tuple[str, str]:
    m = _NUMBER.match(text)
    return (m.group(1), m.group(2)) if m else (text, "")


def read_int(
    text: str, what: str, minimum: Optional[int] = 0, maximum: Optional[int] = None
) -> tuple[Optional[int], Problem]:
    digits, unit = split_number(text)
    if unit:
        return None, (f"{what} must be a plain integer, not `{text}`", None)
    if not re.fullmatch(r"[+-]?\d+", digits):
        return None, (f"{what} must be an integer, not `{text}`", None)
    if len(digits.lstrip("+-").lstrip("0")) > len(str(MAX_INT)):
        return None, (f"{what} is too large: `{text}`", f"the largest allowed value is {MAX_INT}")
    value = int(digits)
    if minimum is not None and value < minimum:
        return None, (f"{what} must be ≥ {minimum}, got {value}", None)
    if maximum is not None and value > maximum:
        return None, (f"{what} must be ≤ {maximum}, got {value}", None)
    if value > MAX_INT:
        return None, (f"{what} is too large: `{text}`", f"the largest allowed value is {MAX_INT}")
    return value, None


def read_rank(text: str) -> tuple[Optional[int], Problem]:
    value, problem = read_int(text, "a rank", minimum=1)
    if problem and value is None and text.lstrip("+-").isdigit():
        return None, (f"invalid rank {_shown(text)}", "ranks must be ≥ 1")
    return value, problem


def read_float(
    text: str,
    what: str,
    *,
    minimum: Optional[float] = 0.0,
    strict: bool = False,
    maximum: Optional[float] = None,
) -> tuple[Optional[float], Problem]:
    digits, unit = split_number(text)
    if unit:
        return None, (f"{what} must be a plain number, not `{text}`", None)
    try:
        value = float(digits)
    except ValueError:
        return None, (f"{what} must be a number, not `{text}`", None)
    if math.isnan(value):
        return None, (f"{what} must be a number, not `{text}`", "write an ordinary number such as 1e-4")
    if not math.isfinite(value):
        return None, (f"{what} is too large: `{text}`", "write an ordinary number such as 1e-4")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        rel = ">" if strict else "≥"
        return None, (f"{what} must be {rel} {minimum:g}, got {_shown(text)}", None)
    if maximum is not None and value > maximum:
        return None, (f"{what} must be ≤ {maximum:g}, got {_shown(text)}", None)
    return value, None


def read_param_count(text: str) -> tuple[Optional[int], Problem]:
    """``860K``, ``0.86M``, ``1200000`` → an integer number of parameters."""
    digits, unit = split_number(text)
    if unit not in UNITS:
        return None, (f"unknown unit `{unit}`", "use K (thousand), M (million) or G (billion)")
    try:  # exact decimal arithmetic: 0.86M is 860000, not 860000.0000000001
        value = Decimal(digits) * UNITS[unit]
    except DecimalException:
        return None, (f"`{text}` is not a parameter count", "write e.g. 860K or 0.86M")
    if not value.is_finite():  # nan, inf: Decimal reads them, comparisons would raise
        return None, (f"`{text}` is not a parameter count", "write e.g. 860K or 0.86M")
    if value < 1:
        return None, (f"budget must be at least 1 parameter, got {_shown(text)}", "write e.g. 860K or 0.86M")
    if value > MAX_PARAMS:
        return None, (f"budget {_shown(text)} is too large", "no model has 10¹⁵ parameters; check the unit")
    if value != value.to_integral_value():
        return None, (f"`{text}` is not a whole number of parameters", None)
    return int(value), None


# ---------------------------------------------------------------- settings


Reader = Callable[[str, str], tuple[Any, Problem]]  # reader(text, "`name`")


class SettingRule(NamedTuple):
    """How one setting is written: the token it takes, its reader, its limits in words."""

    expected: str  # "number" or "name": the kind of token a value must be
    read: Reader
    allowed: str  # "an integer ≥ 1", "cosine, linear or constant" (help texts, fixes)
    type: type  # int, float, bool or str: what the value is once read
    choices: tuple[str, ...] = ()  # the names a `Literal` setting allows


def _int(minimum: Optional[int], maximum: Optional[int]) -> Reader:
    return lambda text, what: read_int(text, what, minimum, maximum)


def _float(minimum: Optional[float], strict: bool, maximum: Optional[float]) -> Reader:
    return lambda text, what: read_float(text, what, minimum=minimum, strict=strict, maximum=maximum)


def _choice(*options: str) -> Reader:
    def read(text: str, what: str):
        if text in options:
            return text, None
        return None, (f"`{text}` is not a valid {what}", did_you_mean(text, options, "allowed"))

    return read


def _flag() -> Reader:
    def read(text: str, what: str):
        if text in ("true", "false"):
            return text == "true", None
        return None, (f"{what} must be true or false, not `{text}`", did_you_mean(text, ("true", "false"), "allowed"))

    return read


def _without_none(annotation: Any) -> Any:
    """``Optional[float]`` → ``float``: a spec cannot write None, only leave a setting out."""
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return annotation


def _limits(field: FieldInfo) -> tuple[Any, bool, Any]:
    """(lower bound, whether it is strict, upper bound) from ``Field(ge=, gt=, le=)``."""
    low, strict, high = None, False, None
    for limit in field.metadata:
        if isinstance(limit, Ge):
            low, strict = limit.ge, False
        elif isinstance(limit, Gt):
            low, strict = limit.gt, True
        elif isinstance(limit, Le):
            high = limit.le
        else:  # refuse loudly rather than let a spec through that the IR then rejects
            raise TypeError(f"the spec language cannot check the limit {limit!r}; teach glorac.dsl.values")
    return low, strict, high


def _or_list(words: tuple[str, ...]) -> str:
    return " or ".join(filter(None, [", ".join(words[:-1]), words[-1]]))


def _number(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _in_words(noun: str, low: Any, strict: bool, high: Any) -> str:
    """``an integer ≥ 1``, ``a number > 0``, ``a number ≥ 0 and ≤ 1``."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if strict else '≥'} {_number(low)}")
    if high is not None:
        bounds.append(f"≤ {_number(high)}")
    return f"{noun} {' and '.join(bounds)}".rstrip()


def setting_rule(field: FieldInfo) -> SettingRule:
    """The spec reader of one settings field, from its type and limits."""
    kind = _without_none(field.annotation)
    if kind is bool:
        return SettingRule("name", _flag(), "true or false", bool)
    if get_origin(kind) is Literal:
        options = tuple(get_args(kind))
        return SettingRule("name", _choice(*options), _or_list(options), str, options)
    low, strict, high = _limits(field)
    if kind is int:
        if strict:  # an integer > n is an integer ≥ n + 1, which is how read_int words it
            low, strict = low + 1, False
        return SettingRule("number", _int(low, high), _in_words("an integer", low, strict, high), int)
    if kind is float:
        return SettingRule("number", _float(low, strict, high), _in_words("a number", low, strict, high), float)
    raise TypeError(f"the spec language has no reader for settings of type {kind!r}")


@functools.lru_cache(maxsize=None)
def settings_table(model: type[BaseModel]) -> dict[str, SettingRule]:
    """Every field of a settings model → its rule, in the model's field order."""
    return {name: setting_rule(field) for name, field in model.model_fields.items()}


#: Settings blocks of the language: the block keyword is also the Spec field it fills.
BLOCKS: dict[str, type[BaseModel]] = {"search": SearchSettings, "training": TrainSettings}

SEARCH_SETTINGS = settings_table(SearchSettings)
TRAINING_SETTINGS = settings_table(TrainSettings)
SETTINGS = {block: settings_table(model) for block, model in BLOCKS.items()}


def block_of(model: type[BaseModel]) -> Optional[str]:
    """``search`` for SearchSettings, ``training`` for TrainSettings (None for other models)."""
    return next((block for block, m in BLOCKS.items() if m is model), None)
