"""The typed intermediate representation of a spec (what every later stage consumes).

All models are frozen and forbid unknown fields, so a Spec read back from JSON is
exactly the Spec that was written. Nothing here touches torch.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

TENSORS: tuple[str, ...] = ("A", "B", "C", "D", "E")
KIND_NAMES: tuple[str, ...] = ("lora", "vector", "scalar", "none")

#: Which kinds each support tensor may take (DESIGN.md §1, the authors' code).
ALLOWED_KINDS: dict[str, tuple[str, ...]] = {
    "A": ("lora", "vector", "scalar", "none"),
    "B": ("lora", "vector", "scalar", "none"),
    "C": ("lora", "vector", "none"),
    "D": ("vector", "scalar", "none"),
    "E": ("vector", "scalar", "none"),
}

#: Layer types a selector can filter on. ``Conv1x1`` is a Conv2d with a 1×1 kernel
#: and one group (a Linear over channels); ``Conv2d`` matches every Conv2d.
LAYER_TYPES: tuple[str, ...] = ("Linear", "Conv2d", "Conv1x1")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Kind(_Frozen):
    """One kind a support tensor can take: ``lora(rank)``, ``vector``, ``scalar`` or ``none``."""

    kind: Literal["lora", "vector", "scalar", "none"]
    rank: Optional[int] = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _rank_only_for_lora(self) -> "Kind":
        if (self.kind == "lora") != (self.rank is not None):
            raise ValueError("`lora` needs a rank and only `lora` has one")
        return self

    def __str__(self) -> str:
        return f"lora({self.rank})" if self.kind == "lora" else self.kind

    @classmethod
    def parse(cls, text: str) -> "Kind":
        """``"lora(8)"`` → Kind(kind="lora", rank=8); ``"vector"`` → Kind(kind="vector")."""
        text = text.strip()
        if text.startswith("lora(") and text.endswith(")"):
            return cls(kind="lora", rank=int(text[5:-1]))
        return cls(kind=text)  # type: ignore[arg-type]


NONE = Kind(kind="none")


class Space(_Frozen):
    """The allowed kinds of each support tensor of one layer. Omitted tensors are ``none``."""

    A: tuple[Kind, ...] = (NONE,)
    B: tuple[Kind, ...] = (NONE,)
    C: tuple[Kind, ...] = (NONE,)
    D: tuple[Kind, ...] = (NONE,)
    E: tuple[Kind, ...] = (NONE,)

    def tensor(self, name: str) -> tuple[Kind, ...]:
        return getattr(self, name)

    def items(self):
        return ((t, self.tensor(t)) for t in TENSORS)

    def size(self) -> int:
        """Number of distinct structures this space allows for one layer."""
        n = 1
        for _, kinds in self.items():
            n *= len(kinds)
        return n

    def max_rank(self, name: str) -> int:
        return max((k.rank or 0) for k in self.tensor(name))

    def __str__(self) -> str:
        return "  ".join(f"{t}: {' | '.join(map(str, ks))}" for t, ks in self.items())


class LayerChoice(_Frozen):
    """One structure for one layer: exactly one kind per support tensor."""

    A: Kind = NONE
    B: Kind = NONE
    C: Kind = NONE
    D: Kind = NONE
    E: Kind = NONE

    def tensor(self, name: str) -> Kind:
        return getattr(self, name)

    def items(self):
        return ((t, self.tensor(t)) for t in TENSORS)

    def __str__(self) -> str:
        return " ".join(f"{t}={k}" for t, k in self.items())


class Structure(_Frozen):
    """A whole-model structure: one :class:`LayerChoice` per adapted layer (by qualified name).

    This is what search returns, what ``glorac fold --choice`` reads (as JSON) and what
    a checkpoint stores, so the per-layer structure is never lost on save.
    """

    layers: dict[str, LayerChoice]


class Origin(_Frozen):
    """Where a construct was written: file (as given), 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class PatternInfo(_Frozen):
    """Where one pattern of a rule was written, and whether it may match nothing.

    ``optional`` is the spec's ``"..."?``: a pattern for other architectures, which the
    plan does not require to match. ``origin`` is the pattern's string (its opening quote).
    """

    origin: Optional[Origin] = None
    optional: bool = False


def _aligned(info: tuple[PatternInfo, ...], patterns: tuple[str, ...], what: str) -> None:
    if info and len(info) != len(patterns):
        raise ValueError(f"{what} has {len(info)} entries for {len(patterns)} patterns")


class Selector(_Frozen):
    """Which layers a rule applies to: dotted-name globs, a type filter and exclusions.

    ``pattern_info`` and ``exclude_info`` hold one entry per pattern of ``patterns`` and
    ``exclude`` (its position, whether it is optional). They are empty in IR written before
    they existed (and in selectors built by hand): the plan then checks the rule as a
    whole, as it did then, instead of each pattern.
    """

    patterns: tuple[str, ...]
    types: tuple[Literal["Linear", "Conv2d", "Conv1x1"], ...] = ()
    exclude: tuple[str, ...] = ()
    pattern_info: tuple[PatternInfo, ...] = ()
    exclude_info: tuple[PatternInfo, ...] = ()

    @model_validator(mode="after")
    def _info_per_pattern(self) -> "Selector":
        _aligned(self.pattern_info, self.patterns, "pattern_info")
        _aligned(self.exclude_info, self.exclude, "exclude_info")
        return self


class Rule(_Frozen):
    """``adapt`` binds a space to the selected layers; ``exclude`` leaves them untouched.

    Precedence: for each layer the *last* matching rule in source order wins (rules of an
    included file sit where its ``include`` line is).
    """

    action: Literal["adapt", "exclude"]
    selector: Selector
    space: Optional[Space] = None
    space_name: Optional[str] = None
    origin: Origin


class TrainRule(_Frozen):
    """Modules whose own parameters train fully (typically the new classifier head).

    ``pattern_info``: one entry per pattern, as in :class:`Selector` (empty in older IR).
    """

    patterns: tuple[str, ...]
    origin: Origin
    pattern_info: tuple[PatternInfo, ...] = ()

    @model_validator(mode="after")
    def _info_per_pattern(self) -> "TrainRule":
        _aligned(self.pattern_info, self.patterns, "pattern_info")
        return self


class Budget(_Frozen):
    """A cap on the adapter parameters of a searched structure."""

    params: int = Field(ge=1)
    include_trained: bool = False
    origin: Optional[Origin] = None


class SettingConflict(NamedTuple):
    """Settings that are each valid but not together.

    Defined here, once, so that the spec checker and the command-line overrides
    (glorac.overrides) refuse the same combinations. ``fields`` lists the settings
    involved, the one most to blame first. ``fix`` names them as ``{field}``
    placeholders so that each front end can say them its own way (``warmup_epochs``
    in a spec, ``--warmup-epochs`` on the command line).
    """

    fields: tuple[str, ...]
    message: str
    fix: str
    why: Optional[str] = None

    def fix_naming(self, name: Callable[[str], str]) -> str:
        return self.fix.format_map({f: name(f) for f in self.fields})

    @property
    def hint(self) -> str:
        """The spec checker's hint: why the constraint exists, else how to fix it."""
        return self.why or self.fix_naming(str)


#: Upper limits that only catch typos: a search of more structures per generation than
#: this would not finish, and an AdamW learning rate above this diverges at once (and
#: 1e300 overflows float32 on the first step).
MAX_STRUCTURES = 1_000_000
MAX_LR = 10.0


class SearchSettings(_Frozen):
    """Evolutionary search (paper defaults, DESIGN.md §2)."""

    population: int = Field(default=50, ge=2, le=MAX_STRUCTURES)
    generations: int = Field(default=20, ge=1, le=MAX_STRUCTURES)
    parents: int = Field(default=10, ge=1, le=MAX_STRUCTURES)
    mutations: int = Field(default=25, ge=0, le=MAX_STRUCTURES)
    crossovers: int = Field(default=25, ge=0, le=MAX_STRUCTURES)
    mutation_prob: float = Field(default=0.2, ge=0.0, le=1.0)
    seed: int = Field(default=0, ge=0)
    # Grow every new structure until no upgrade fits the budget (glorac.evolution):
    # repaired random draws use about half of a tight budget. False: the paper's procedure.
    fill: bool = True

    def conflicts(self) -> list[SettingConflict]:
        """The constraints between fields that these settings break (none when valid)."""
        if self.parents > self.population:
            return [SettingConflict(
                ("parents", "population"),
                f"parents ({self.parents}) exceed the population ({self.population})",
                "lower {parents} or raise {population}",
                why="parents are the best structures kept from the population")]
        return []


class TrainSettings(_Frozen):
    """Supernet training (paper's ViT-B/16 VTAB-1k recipe, DESIGN.md §2)."""

    epochs: int = Field(default=500, ge=1)
    lr: float = Field(default=1e-4, gt=0.0, le=MAX_LR)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    batch_size: int = Field(default=64, ge=1)
    warmup_epochs: int = Field(default=10, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr: float = Field(default=1e-8, ge=0.0, le=MAX_LR)
    grad_clip: Optional[float] = Field(default=None, gt=0.0)
    head_lr: Optional[float] = Field(default=None, gt=0.0, le=MAX_LR)  # lr of the `train` modules (default: lr)
    seed: int = Field(default=0, ge=0)
    # How stored adapter values map to A..E (glorac.kinds.kind_scale): fixed at compile
    # time, stored with the spec, folded exactly. `paper` is the authors' code.
    parametrization: Literal["balanced", "paper"] = "balanced"
    # Structures trained per step (glorac.sampling): `uniform` is the paper's one draw;
    # `sandwich` (the default, chosen by benchmarks/accuracy.py) adds the largest and smallest.
    sampling: Literal["uniform", "sandwich"] = "sandwich"
    # Autocast precision of the forward (the adapters and optimizer state stay float32):
    # `auto` is bf16 on a GPU and fp32 on a CPU; fp16 adds loss scaling.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Recompute activations in the backward instead of keeping them (Hugging Face models).
    gradient_checkpointing: bool = False
    # Batches of examples of similar length (less padding; language models): a seeded
    # shuffle as always, then lengths sorted within windows of 50 batches.
    group_by_length: bool = False
    # torch.compile the adapter op (glorac.op.GloraAdapter.compile_op): one graph per
    # structure and layer shape, at most 8; for fixed structures (finetune) on a GPU.
    compile_adapters: bool = False

    def conflicts(self) -> list[SettingConflict]:
        """The constraints between fields that these settings break (none when valid)."""
        if self.warmup_epochs >= self.epochs:
            return [SettingConflict(
                ("warmup_epochs", "epochs"),
                f"warm-up ({self.warmup_epochs} epochs) must be shorter than training ({self.epochs})",
                "lower {warmup_epochs} or raise {epochs}")]
        return []


class Spec(_Frozen):
    """A validated spec: what to adapt, how, under which budget and settings."""

    format_version: Literal[1] = 1
    model: Optional[str] = None
    rules: tuple[Rule, ...] = ()
    trained: tuple[TrainRule, ...] = ()
    budget: Optional[Budget] = None
    bias: Literal["preserve", "add"] = "preserve"
    search: SearchSettings = SearchSettings()
    training: TrainSettings = TrainSettings()
    files: tuple[str, ...] = ()
