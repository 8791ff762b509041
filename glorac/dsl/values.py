"""Reading numbers and setting values from spec text, with messages for each mistake.

Each reader returns ``(value, None)`` or ``(None, (message, hint))`` so that the caller
can anchor the complaint at the token it came from.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, DecimalException
from typing import Any, Callable, Optional

from ..errors import did_you_mean

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


def read_int(text: str, what: str, minimum: int = 0) -> tuple[Optional[int], Problem]:
    digits, unit = split_number(text)
    if unit:
        return None, (f"{what} must be a plain integer, not `{text}`", None)
    if not re.fullmatch(r"[+-]?\d+", digits):
        return None, (f"{what} must be an integer, not `{text}`", None)
    if len(digits.lstrip("+-").lstrip("0")) > len(str(MAX_INT)):
        return None, (f"{what} is too large: `{text}`", f"the largest allowed value is {MAX_INT}")
    value = int(digits)
    if value < minimum:
        return None, (f"{what} must be ≥ {minimum}, got {value}", None)
    if value > MAX_INT:
        return None, (f"{what} is too large: `{text}`", f"the largest allowed value is {MAX_INT}")
    return value, None


def read_rank(text: str) -> tuple[Optional[int], Problem]:
    value, problem = read_int(text, "a rank", minimum=1)
    if problem and value is None and text.lstrip("+-").isdigit():
        return None, (f"invalid rank {_shown(text)}", "ranks must be ≥ 1")
    return value, problem


def read_float(
    text: str, what: str, *, minimum: float = 0.0, strict: bool = False, maximum: float | None = None
) -> tuple[Optional[float], Problem]:
    digits, unit = split_number(text)
    if unit:
        return None, (f"{what} must be a plain number, not `{text}`", None)
    try:
        value = float(digits)
    except ValueError:
        return None, (f"{what} must be a number, not `{text}`", None)
    if not math.isfinite(value):
        return None, (f"{what} is too large: `{text}`", "write an ordinary number such as 1e-4")
    low_bad = value <= minimum if strict else value < minimum
    if low_bad:
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
    if value < 1:
        return None, (f"budget must be at least 1 parameter, got {_shown(text)}", None)
    if value > MAX_PARAMS:
        return None, (f"budget {_shown(text)} is too large", "no model has 10¹⁵ parameters; check the unit")
    if value != value.to_integral_value():
        return None, (f"`{text}` is not a whole number of parameters", None)
    return int(value), None


# One reader per setting: (kind of token expected, reader(text, setting name)).
Reader = Callable[[str, str], tuple[Any, Problem]]


def _int(minimum: int) -> Reader:
    return lambda text, what: read_int(text, what, minimum)


def _float(minimum: float = 0.0, strict: bool = False, maximum: float | None = None) -> Reader:
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


SEARCH_SETTINGS: dict[str, tuple[str, Reader]] = {
    "population": ("number", _int(2)),
    "generations": ("number", _int(1)),
    "parents": ("number", _int(1)),
    "mutations": ("number", _int(0)),
    "crossovers": ("number", _int(0)),
    "mutation_prob": ("number", _float(0.0, maximum=1.0)),
    "seed": ("number", _int(0)),
    "fill": ("name", _flag()),
}

TRAINING_SETTINGS: dict[str, tuple[str, Reader]] = {
    "epochs": ("number", _int(1)),
    "lr": ("number", _float(0.0, strict=True)),
    "weight_decay": ("number", _float(0.0)),
    "batch_size": ("number", _int(1)),
    "warmup_epochs": ("number", _int(0)),
    "schedule": ("name", _choice("cosine", "linear", "constant")),
    "min_lr": ("number", _float(0.0)),
    "grad_clip": ("number", _float(0.0, strict=True)),
    "head_lr": ("number", _float(0.0, strict=True)),
    "seed": ("number", _int(0)),
    "parametrization": ("name", _choice("balanced", "paper")),
    "sampling": ("name", _choice("uniform", "sandwich")),
}

SETTINGS = {"search": SEARCH_SETTINGS, "training": TRAINING_SETTINGS}
