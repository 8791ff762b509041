"""Property tests of the spec language (hypothesis).

(a) No input makes the front end fail other than with SpecError: arbitrary text, arbitrary
    bytes, and valid specs with random damage.
(b) Valid specs generated from the grammar, with comments and arbitrary whitespace and
    newlines between tokens, survive `fmt`: same IR (source positions aside),
    idempotent, every comment kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from glorac import SpecError, loads_spec
from glorac.dsl import format_source
from glorac.dsl.parser import KEYWORDS
from glorac.ir import ALLOWED_KINDS, LAYER_TYPES, TENSORS, Spec

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_TEXTS = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "specs").glob("*.glora"))]
# GLORAC_PROPS_SCALE=20 runs twenty times the examples (a longer hunt, not for CI).
SCALE = max(1, int(os.environ.get("GLORAC_PROPS_SCALE", "1")))


def examples(n: int) -> settings:
    return settings(
        deadline=None, max_examples=n * SCALE, suppress_health_check=[HealthCheck.too_slow]
    )


FAST = examples(100)
SLOWER = examples(60)


def load_or_error(source):
    """Load; SpecError is the only acceptable failure. Returns the Spec or None."""
    try:
        spec = loads_spec(source)
    except SpecError as exc:
        assert exc.diagnostics, "a SpecError must say what is wrong"
        for d in exc.diagnostics:
            d.render()  # rendering a diagnostic never fails either
        exc.render()
        return None
    assert isinstance(spec, Spec)
    return spec


def strip_origins(data):
    if isinstance(data, dict):
        return {k: strip_origins(v) for k, v in data.items() if k != "origin"}
    if isinstance(data, (list, tuple)):
        return [strip_origins(v) for v in data]
    return data


def ir_of(spec: Spec):
    return strip_origins(spec.model_dump(mode="json"))


def check_fmt_properties(text: str, spec: Spec) -> None:
    """For text that checks: fmt keeps the IR, is idempotent and keeps every comment."""
    out = format_source(text)
    again = loads_spec(out)
    assert ir_of(again) == ir_of(spec), out
    assert format_source(out) == out
    assert Spec.model_validate_json(spec.model_dump_json()) == spec
    for comment in _comment_texts(text):
        assert comment in out, (comment, out)
    assert len(_comment_texts(out)) == len(_comment_texts(text)), out


def _comment_texts(text: str) -> list[str]:
    from glorac.dsl.parser import _comments

    return [c.text.rstrip() for c in _comments(text.split("\n"))]


# ---------------------------------------------------------------- (a) nothing but SpecError


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text(text):
    spec = load_or_error(text)
    if spec is not None:
        check_fmt_properties(text, spec)


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    load_or_error(data)


_ALPHABET = st.sampled_from(
    list('{}()|,=:"\'#.*?[]-_ \t\n\r') + ["\x00", "é", "\u2028", "0", "8", "M", "A", "a", "lora"]
    + list(KEYWORDS)
    + ["type", "with", "except", "including", "none", "vector", "scalar", "r", "paper"]
)


@st.composite
def damaged(draw, base: st.SearchStrategy[str]):
    text = draw(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "swap-lines", "swap-words"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(_ALPHABET) + text[i:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "swap-lines":
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
        else:
            words = re.split(r"(\s+)", text)
            a, b = draw(st.integers(0, len(words) - 1)), draw(st.integers(0, len(words) - 1))
            words[a], words[b] = words[b], words[a]
            text = "".join(words)
    return text


@SLOWER
@given(damaged(st.sampled_from(REFERENCE_TEXTS)))
def test_damaged_reference_specs(text):
    spec = load_or_error(text)
    if spec is not None and "include" not in text:
        check_fmt_properties(text, spec)


# ---------------------------------------------------------------- (b) generated valid specs

_NOT_NAMES = set(KEYWORDS) | {"type", "with", "except", "including"}
# Fixed pools draw much faster than regex strategies and still cover the lexical cases:
# underscores, digits, names that start like keywords (`model_x`, `withs`, `types`).
names = st.sampled_from(
    ["r", "q", "a", "rank", "_x", "r2", "paper", "lora_bias", "model_x", "withs", "types", "A"]
)
segment_words = st.sampled_from(
    ["blocks", "attn", "qkv", "proj", "mlp", "fc1", "0", "11", "head", "layer_3", "x-y", "a:b"]
)


@st.composite
def glob_segment(draw):
    choice = draw(st.integers(0, 7))
    if choice == 0:
        return "*"
    if choice == 1:
        return "**"
    if choice == 2:
        return draw(segment_words) + "?"
    if choice == 3:
        lo = draw(st.integers(0, 12))
        return f"[{lo}-{lo + draw(st.integers(0, 5))}]"
    if choice == 4:
        parts = draw(st.lists(st.integers(0, 20), min_size=1, max_size=3, unique=True))
        return draw(st.sampled_from(["", "layer"])) + "[" + ",".join(map(str, parts)) + "]"
    if choice == 5:
        alts = draw(st.lists(segment_words, min_size=1, max_size=3, unique=True))
        return "{" + ",".join(alts) + "}"
    return draw(segment_words)


# A pattern, sometimes optional (`"..."?`).
globs = st.tuples(
    st.lists(glob_segment(), min_size=1, max_size=4).map(".".join), st.sampled_from(["", "", "", "?"])
).map(lambda g: f'"{g[0]}"' + g[1])


def comma_list(items: list[str]) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(items):
        out += ([","] if i else []) + [item]
    return out


def bar_list(items: list[list[str]]) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(items):
        out += (["|"] if i else []) + item
    return out


@st.composite
def tensor_decls(draw, params: list[str]):
    """Tokens of a space body: a random subset of tensors in random order, never all-none."""
    tensors = draw(st.lists(st.sampled_from(TENSORS), unique=True, max_size=5))
    tokens: list[str] = []
    useful = False
    for t in tensors:
        kinds = draw(st.lists(st.sampled_from(ALLOWED_KINDS[t]), unique=True, min_size=1))
        written = []
        for k in kinds:
            if k == "lora":
                ranks = draw(
                    st.lists(
                        st.one_of(st.integers(1, 64).map(str), st.sampled_from(params))
                        if params
                        else st.integers(1, 64).map(str),
                        unique=True,
                        min_size=1,
                        max_size=3,
                    )
                )
                written.append(["lora", "("] + bar_list([[r] for r in ranks]) + [")"])
            else:
                written.append([k])
            useful |= k != "none"
        tokens += [t, ":"] + bar_list(written)
    if not useful:  # an all-none space cannot be used by `adapt`: add a real kind
        missing = [t for t in TENSORS if t not in tensors]
        assume(missing)
        tokens += [draw(st.sampled_from(missing)), ":", "vector"]
    return tokens


@st.composite
def space_defs(draw, name: str):
    params = draw(st.lists(names, unique=True, max_size=3))
    defaults = {p: draw(st.one_of(st.none(), st.integers(1, 32))) for p in params}
    tokens = ["space", name]
    if params or draw(st.booleans()):
        args = [[p] + ([] if defaults[p] is None else ["=", str(defaults[p])]) for p in params]
        tokens += ["("] + comma_list_tokens(args) + [")"]
    tokens += ["{"] + draw(tensor_decls(params)) + ["}"]
    return tokens, params, defaults


def comma_list_tokens(items: list[list[str]]) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(items):
        out += ([","] if i else []) + item
    return out


@st.composite
def space_use(draw, spaces):
    if not spaces or draw(st.integers(0, 4)) == 0:
        return ["{"] + draw(tensor_decls([])) + ["}"]
    name, params, defaults = draw(st.sampled_from(spaces))
    needed = [p for p in params if defaults[p] is None]
    given_ = [p for p in params if p in needed or draw(st.booleans())]
    n_positional = draw(st.integers(0, len(params)))
    args: list[list[str]] = []
    for i, p in enumerate(params):
        if i < n_positional:
            args.append([str(draw(st.integers(1, 32)))])
        elif p in given_:
            args.append([p, "=", str(draw(st.integers(1, 32)))])
    positional = args[:n_positional]
    named = args[n_positional:]
    named = draw(st.permutations(named)) if named else named
    if not args and not needed and draw(st.booleans()):
        return [name]
    return [name, "("] + comma_list_tokens(positional + list(named)) + [")"]


@st.composite
def selector(draw):
    tokens = comma_list(draw(st.lists(globs, min_size=1, max_size=3)))
    if draw(st.booleans()):
        types = draw(st.lists(st.sampled_from(LAYER_TYPES), unique=True, min_size=1))
        tokens += ["type"] + bar_list([[t] for t in types])
    if draw(st.booleans()):
        tokens += ["except"] + comma_list(draw(st.lists(globs, min_size=1, max_size=2)))
    return tokens


def _float_text(draw, lo: float, hi: float) -> str:
    value = draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))
    return draw(st.sampled_from([repr(value), f"{value:g}", f"{value:.3e}"]))


@st.composite
def settings_blocks(draw):
    blocks = []
    if draw(st.booleans()):
        population = draw(st.integers(2, 100))
        values = {
            "population": str(population),
            "parents": str(draw(st.integers(1, population))),
            "generations": str(draw(st.integers(1, 50))),
            "mutations": str(draw(st.integers(0, 50))),
            "crossovers": str(draw(st.integers(0, 50))),
            "mutation_prob": _float_text(draw, 0.0, 1.0),
            "seed": str(draw(st.integers(0, 2**31))),
        }
        keys = draw(st.lists(st.sampled_from(sorted(values)), unique=True))
        if "parents" in keys and "population" not in keys:
            keys.append("population")
        if "population" in keys and "parents" not in keys:
            keys.append("parents")  # the default (10) may exceed a small population
        blocks.append(["search", "{"] + [t for k in keys for t in (k, "=", values[k])] + ["}"])
    if draw(st.booleans()):
        epochs = draw(st.integers(1, 1000))
        values = {
            "epochs": str(epochs),
            "warmup_epochs": str(draw(st.integers(0, epochs - 1))),
            "lr": _float_text(draw, 1e-7, 1.0).replace("0.000e+00", "1e-3"),
            "weight_decay": _float_text(draw, 0.0, 1.0),
            "batch_size": str(draw(st.integers(1, 512))),
            "schedule": draw(st.sampled_from(["cosine", "linear", "constant"])),
            "min_lr": _float_text(draw, 0.0, 1e-3),
            "grad_clip": _float_text(draw, 0.01, 10.0),
            "seed": str(draw(st.integers(0, 2**31))),
        }
        keys = draw(st.lists(st.sampled_from(sorted(values)), unique=True))
        if "warmup_epochs" in keys and "epochs" not in keys:
            keys.append("epochs")
        if "epochs" in keys and "warmup_epochs" not in keys:
            keys.append("warmup_epochs")  # the default (10) may exceed few epochs
        blocks.append(["training", "{"] + [t for k in keys for t in (k, "=", values[k])] + ["}"])
    return blocks


@st.composite
def budget_amount(draw):
    unit = draw(st.sampled_from(["", "K", "k", "M", "G"]))
    decimals = {"": 0, "K": 3, "k": 3, "M": 6, "G": 9}[unit]
    whole = draw(st.integers(0, 5000))
    places = draw(st.integers(0, min(decimals, 3)))
    frac = draw(st.integers(0, 10**places - 1)) if places else 0
    assume(whole or frac)
    text = str(whole) + (f".{frac:0{places}d}" if places else "")
    return text + unit


# Whitespace and comments are drawn from one seeded Random per spec: hundreds of
# separate hypothesis draws per spec would make each example ten times slower.
_COMMENT_CHARS = 'abc XYZ09#"{}()|,=:*.\'\t\\é€\u2028\x0b\x1f😀'
_SEPARATORS = [" ", "  ", "\t", "\n", "\n    ", "\n\n\n", " \n ", "\r\n", "\n\f "]


def separator(rnd, between_statements: bool = False) -> str:
    sep = rnd.choice(_SEPARATORS)
    if rnd.random() < 0.15:
        comment = "#" + "".join(rnd.choice(_COMMENT_CHARS) for _ in range(rnd.randint(0, 10)))
        sep = rnd.choice([" ", "\t", ""]) + comment + "\n" + sep.lstrip(" \t")
    if between_statements and "\n" not in sep and rnd.random() < 0.5:
        sep = "\n"
    return sep


@st.composite
def valid_specs(draw):
    space_names = draw(st.lists(names, unique=True, max_size=3))
    spaces, statements = [], []
    for name in space_names:
        tokens, params, defaults = draw(space_defs(name))
        spaces.append((name, params, defaults))
        statements.append(tokens)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["adapt", "adapt", "exclude", "train"]))
        if kind == "adapt":
            statements.append(["adapt"] + draw(selector()) + ["with"] + draw(space_use(spaces)))
        elif kind == "exclude":
            statements.append(["exclude"] + draw(selector()))
        else:
            statements.append(["train"] + comma_list(draw(st.lists(globs, min_size=1, max_size=2))))
    if draw(st.booleans()):
        statements.append(
            ["budget", draw(budget_amount())] + (["including", "head"] if draw(st.booleans()) else [])
        )
    if draw(st.booleans()):
        statements.append(["bias", draw(st.sampled_from(["preserve", "add"]))])
    if draw(st.booleans()):
        model = draw(
            st.sampled_from(
                [
                    "vit_base_patch16_224",
                    "hf:./minilm",
                    "org/model@v1.0",
                    "a-b",
                    "modelx",
                    '"hf:./minilm"',
                    '"two words"',
                    '"9lives"',
                    '"vit"',
                ]
            )
        )
        statements.append(["model", model])
    statements += draw(settings_blocks())
    statements = draw(st.permutations(statements))
    rnd = draw(st.randoms(use_true_random=False))
    text = draw(st.sampled_from(["", "\n", "# header\n", "\n\n# header\n\n"]))
    for i, tokens in enumerate(statements):
        if i:
            text += separator(rnd, between_statements=True)
        for j, tok in enumerate(tokens):
            text += (separator(rnd) if j else "") + tok
    text += draw(st.sampled_from(["", "\n", "  # trailing\n", "\n\n"]))
    return text


@SLOWER
@given(valid_specs())
def test_generated_specs_round_trip_through_fmt(text):
    try:
        spec = loads_spec(text)
    except SpecError as exc:  # the generator only writes valid specs
        raise AssertionError(exc.render() + "\n----\n" + text) from None
    check_fmt_properties(text, spec)


@examples(50)
@given(damaged(valid_specs()))
def test_damaged_generated_specs(text):
    spec = load_or_error(text)
    if spec is not None:
        check_fmt_properties(text, spec)
