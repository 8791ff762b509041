"""What the run-time stages record about a supernet, saved with it in every checkpoint.

Each stage writes its own record into :attr:`glorac.supernet.Supernet.history`:
training (progress and the settings it ran with, so ``--resume`` continues the same
run), search (what was found, under which budget), fine-tuning (where it started).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from .ir import SearchSettings, TrainSettings


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class TrainRecord(_Record):
    """Where a training run stands: enough to resume it bit-exactly (with the saved tensors)."""

    step: int
    epochs_done: int
    # Logged metrics, one dict per log line. (Version-2 checkpoints called it `history`.)
    log: list[dict[str, Any]] = Field(default_factory=list, validation_alias=AliasChoices("log", "history"))
    settings: TrainSettings
    world: int = 1
    sharding: Optional[Literal["ddp", "fsdp"]] = None  # how a multi-process run held the model
    param_groups: list[dict[str, Any]] = Field(default_factory=list)  # the optimizer's, without params


class SearchRecord(_Record):
    budget: Optional[int]
    best_accuracy: float  # the best fitness: val accuracy, or minus the val token loss (causal LM)
    task: str = "classification"  # what the fitness measured (glorac.objectives)
    best_params: int
    evaluated: int
    settings: SearchSettings
    data: str


class FinetuneRecord(_Record):
    source: str = Field(validation_alias=AliasChoices("source", "from"))  # the checkpoint fine-tuned
    structure: str  # the structure file, or "selected in the checkpoint"
    data: str
    supernet_train: Optional[TrainRecord] = None  # the supernet run's record, kept


class RunHistory(_Record):
    # The class names of the data the head was trained on (fold writes them as the Hugging
    # Face config's id2label); empty when unknown or not a classifier.
    class_names: tuple[str, ...] = ()
    train: Optional[TrainRecord] = None
    search: Optional[SearchRecord] = None
    finetune: Optional[FinetuneRecord] = None
