"""One-shot supernet training (``glorac train``), on one process or under ``torchrun``.

Each step every adapted layer runs a structure drawn by :class:`StructureSampler` from
``(seed, step)``; only adapter tensors and the spec's ``train`` modules learn. AdamW,
warm-up then cosine/linear/constant schedule, optional gradient clipping, autocast
(``precision``: bf16 on GPU by default, fp32 on CPU; bf16/fp16 anywhere on request). A
checkpoint is written atomically at every epoch end and on Ctrl-C; a resumed run ends
with the same tensors as an uninterrupted one (data order, structures and the RNG state
are all functions of the seed and the step, or saved).

BatchNorm layers of the frozen base keep their running statistics (eval mode): they are
base weights, which a checkpoint does not store and fold must not silently change.

At every epoch end a run validates on the data's val split when it has one (:class:`Validation`):
one fixed structure, scored in eval mode without gradients and with the RNG state put back,
so that validating changes no trained tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .data import TaskData, check_num_classes
from .distributed import Dist
from .history import TrainRecord
from .errors import GloraError
from .ir import Space, Structure, TrainSettings
from .kinds import storage_shapes
from .objectives import fitness, sums
from .outputs import forward_logits
from .progress import TrainProgress
from .sampling import StructureSampler
from .scoring import ShardedEvaluator, accuracy, sharded_batches


class TrainingStopped(GloraError):
    """Training stopped on a non-finite loss; the last good checkpoint is kept."""


def enable_gradient_checkpointing(supernet) -> None:
    """Turn on a Hugging Face model's own activation checkpointing in the supernet's copy of it.

    Its decoder layers recompute their activations in the backward, trading compute for
    memory. A traced (fx) model has its Python branches fixed at trace time, so there the
    switch would do nothing: refused rather than silently ignored."""
    model = supernet.model
    if not hasattr(model, "gradient_checkpointing_enable"):
        raise GloraError("gradient_checkpointing works for Hugging Face models (the module front end); this "
                         f"supernet wraps a {type(supernet.base_model).__name__} ({supernet.plan.front_end} front "
                         "end). Turn it off (gradient_checkpointing = false).")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of a ``precision`` setting on ``device`` (None: plain fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class TrainingInterrupted(GloraError):
    """Ctrl-C: the run stopped after a step, its state saved (when it has an output)."""

    exit_code = 130

    def __init__(self, output: Optional[Path], step: int, total: int):
        self.output, self.step, self.total = output, step, total
        where = f"saved to {output}" if output is not None else "kept in memory (no output was given)"
        self.message = (f"interrupted after step {step} of {total}; the run's state (adapters, optimizer, "
                        f"RNG) is {where}.")
        super().__init__(self.message)

    def with_hint(self, hint: str) -> "TrainingInterrupted":
        """The same interruption, its message followed by what to do next."""
        self.args = (f"{self.message} {hint}",)
        return self


@dataclass
class TrainState:
    step: int = 0
    epochs_done: int = 0
    history: list = field(default_factory=list)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base lr: linear warm-up, then cosine / linear decay or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


#: Batches per window that ``group_by_length`` sorts (the window keeps the order random
#: at the scale of an epoch, as in transformers' length-grouped sampler).
LENGTH_WINDOW = 50


def batch_order(n: int, batch_size: int, seed: int, epoch: int,
                lengths: Optional[list[int]] = None) -> list[torch.Tensor]:
    """The global batches of one epoch: a seeded permutation cut into batch_size chunks.

    ``lengths`` (one per example): group examples of similar length. The permutation is
    cut into windows of ``LENGTH_WINDOW`` batches, each sorted by length (longest first)
    and cut into batches, and the batches are shuffled again, except that the longest
    comes first, so that a batch too large for memory fails at step 1, not hours in."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    if lengths is None:
        return list(perm.split(batch_size))
    size = torch.as_tensor(lengths)
    batches = []
    for window in perm.split(batch_size * LENGTH_WINDOW):
        order = torch.sort(size[window], descending=True, stable=True).indices
        batches.extend(window[order].split(batch_size))
    order = torch.randperm(len(batches), generator=g).tolist()
    longest = max(range(len(batches)), key=lambda i: int(size[batches[i]].max()))
    order.remove(longest)
    return [batches[i] for i in [longest, *order]]


def example_lengths(dataset) -> list[int]:
    """Tokens per example, for ``group_by_length``; a clear error for data without lengths."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        raise GloraError("group_by_length groups examples by their token count, and this data has none "
                         "(images, or text classification); turn it off (group_by_length = false).")
    return list(lengths)


def freeze_norm_statistics(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def fixed_spaces(supernet, structure: Structure) -> dict[str, Space]:
    """One-kind spaces that admit only ``structure`` (in the supernet's layer order)."""
    return {name: Space(**{t: (k,) for t, k in structure.layers[name].items()}) for name in supernet.adapters}


def structure_parameters(supernet, structure: Structure) -> list[nn.Parameter]:
    """The adapter tensors ``structure`` uses plus the `train` modules' parameters.

    Tensors left out are kept out of the optimiser altogether, so that neither AdamW's
    update nor its decoupled weight decay can touch them.
    """
    # What one structure reads is exactly the storage of its one-kind space (glorac.kinds).
    spaces = fixed_spaces(supernet, structure)
    used = [p for name, adapter in supernet.adapters.items()
            for pname, p in adapter.named_parameters() if pname in storage_shapes(spaces[name], adapter.geom)]
    seen = {id(p) for p in used}
    return used + [p for p in supernet.trained_parameters() if p.requires_grad and id(p) not in seen]


def adapters_at_fresh_init(supernet) -> bool:
    """True while every out-side factor and D, E are zero (nothing trained them yet)."""
    return all(not p.any() for adapter in supernet.adapters.values()
               for name, p in adapter.named_parameters() if not name.endswith("_in"))


def redraw_in_factors(supernet, seed: int) -> None:
    """Draw the in-side factors from ``seed``, in compile's order (same seed, same init)."""
    generator = torch.Generator().manual_seed(seed)
    for adapter in supernet.adapters.values():
        adapter.reset_in_factors(generator)


def adamw(groups: list[dict], **options) -> torch.optim.AdamW:
    """AdamW over ``groups``, fused where torch has the fused kernel for every tensor.

    A supernet has many small tensors (up to eight per adapted layer): the default
    optimizer runs about ten ops per tensor (CPU) or per chunk of tensors (CUDA), the fused
    one a couple in all, which matters most where a step is bound by launches (a GPU).
    The update is AdamW's either way (to float rounding)."""
    params = [p for g in groups for p in g["params"]]
    fusable = bool(params) and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) and
                                   p.device.type in ("cuda", "cpu") for p in params) and \
        len({p.device.type for p in params}) == 1
    return torch.optim.AdamW(groups, fused=fusable or None, **options)


def train_plain(model: nn.Module, data: TaskData, groups: list[tuple[list, float]], settings: TrainSettings) -> None:
    """The Trainer's protocol (batch order, warm-up + schedule, AdamW) for a model that is
    not a supernet: the baselines (head only, PEFT). ``groups``: (parameters, lr) pairs;
    every group follows the schedule with the end ratio ``min_lr / lr``."""
    opt = adamw([{"params": ps, "lr": lr, "base": lr} for ps, lr in groups if ps], weight_decay=settings.weight_decay)
    dataset = data.splits["train"]
    steps_per_epoch = math.ceil(len(dataset) / settings.batch_size)
    total, step = steps_per_epoch * settings.epochs, 0
    model.train()
    freeze_norm_statistics(model)
    for epoch in range(settings.epochs):
        lengths = example_lengths(dataset) if settings.group_by_length else None
        for indices in batch_order(len(dataset), settings.batch_size, settings.seed, epoch, lengths):
            batch = data.collate([dataset[int(i)] for i in indices])
            factor = lr_factor(step, total, settings.warmup_epochs * steps_per_epoch, settings.schedule,
                               settings.min_lr / settings.lr)
            for g in opt.param_groups:
                g["lr"] = g["base"] * factor
            F.cross_entropy(forward_logits(model, batch), batch.labels).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1


def _beside(output: Path, suffix: str) -> Path:
    """A file kept beside a training run's checkpoint: OUTPUT without its extension, + ``suffix``."""
    return output.with_name(output.name.rsplit(".", 1)[0] + suffix)


def metrics_path(output: Path) -> Path:
    """The per-step log written beside a training run's checkpoint."""
    return _beside(output, ".metrics.jsonl")


def best_path(output: Path) -> Path:
    """The checkpoint of the run's best val metric so far (``--keep-best``), beside its own."""
    return _beside(output, ".best.pt")


@dataclasses.dataclass(frozen=True)
class Validation:
    """Per-epoch validation of a training run, on the data's val split (none without one).

    ``max_batches``: score only the first N val batches (of the training batch size), which
    bounds the cost on a large val set; None scores the whole split every epoch (its
    batches are built and held on the device while it is scored). ``keep_best``: also
    write :func:`best_path` whenever the val metric improves (accuracy up; causal LM: token
    loss down), the same checkpoint as the epoch's."""

    enabled: bool = True
    max_batches: Optional[int] = None
    keep_best: bool = False

    def __post_init__(self):
        # Checked here, when the command line is read, not after the model is built.
        if self.keep_best and not self.enabled:
            raise GloraError("--keep-best keeps the checkpoint of the best val metric, and --no-validate turns "
                             "validation off; drop one of them.")
        if self.max_batches is not None and self.max_batches < 1:
            raise GloraError(f"val_batches {self.max_batches}: validate on at least 1 batch, or turn "
                             "validation off (--no-validate).")


def validation_structure(supernet, structure: Optional[Structure]) -> Structure:
    """The one structure a run is validated on: the structure being fine-tuned; for supernet
    training the largest of the space (every layer's richest kinds, glorac.kinds.max_choice).

    A fixed structure keeps the metric comparable from epoch to epoch (each step's sampled
    one would not be); the largest uses the most adapter values, so it reflects what the
    shared tensors learnt rather than one corner of the space (the search's pick is not
    known yet), and it is the structure the sandwich rule trains at every step."""
    return structure if structure is not None else supernet.largest_structure()


def val_fields(task: str, score: dict) -> dict:
    """What an epoch's record logs of a val score."""
    if task == "causal-lm":
        return {"val_loss": score["loss"], "val_perplexity": score["perplexity"]}
    return {"val_accuracy": score["accuracy"], "val_loss": score["loss"]}


def val_fitness(task: str, record: dict) -> float:
    """An epoch record's val metric as the search ranks it (higher is better)."""
    return fitness(task, {"accuracy": record.get("val_accuracy"), "loss": record["val_loss"]})


def validation_shares(data: TaskData, batch_size: int, max_batches: Optional[int], dist: Dist):
    """This rank's share of the first ``max_batches`` global val batches (all when None),
    as many on every rank (glorac.scoring.sharded_batches)."""
    if max_batches is not None:
        val = data.splits["val"]
        first = torch.utils.data.Subset(val, range(min(len(val), max_batches * batch_size)))
        data = dataclasses.replace(data, splits={"val": first})  # only those examples are collated
    return sharded_batches(data, "val", batch_size, dist.device, rank=dist.rank, world=dist.world)


@contextlib.contextmanager
def modes_kept(module: nn.Module):
    """Put every submodule's train/eval flag back after the block: evaluation's
    ``model.train()`` afterwards would also undo :func:`freeze_norm_statistics`."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class Trainer:
    def __init__(self, supernet, data: TaskData, settings: TrainSettings, dist: Dist = Dist(),
                 output: Optional[Path] = None, *, amp: Optional[bool] = None, log_every: int = 10,
                 progress: bool = True, structure: Optional[Structure] = None,
                 validation: Optional[Validation] = None):
        """``structure`` given: fine-tune that one structure (selected, so checkpoints keep it)
        instead of training the supernet; only the tensors it uses and the head learn.
        ``output``: the checkpoint written at every epoch end (and its ``.metrics.jsonl``
        log beside it); None keeps everything in memory. ``validation``: see
        :class:`Validation` (default: every epoch, on the whole val split)."""
        self.supernet, self.data, self.settings, self.dist = supernet, data, settings, dist
        self.output = None if output is None else Path(output)
        self.metrics_path = None if output is None else metrics_path(self.output)
        self.autocast = autocast_dtype(settings.precision, dist.device) if amp is None else \
            (torch.bfloat16 if amp else None)
        # fp16's narrow range needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(dist.device.type) if self.autocast is torch.float16 else None
        self.log_every, self.progress = log_every, progress
        self.dataset = data.splits["train"]
        self.task = data.task
        self.lengths = example_lengths(self.dataset) if settings.group_by_length else None
        self.structure = structure
        self.validation = validation or Validation()
        self.validates = self.validation.enabled and "val" in data.splits
        self._check_keep_best()
        self.val_structure = validation_structure(supernet, structure)
        self._val_shares: Optional[list] = None  # this rank's val batches, made at the first validation
        if structure is None:
            self.sampler = StructureSampler(supernet.spaces(), seed=settings.seed, rule=settings.sampling,
                                            geoms={n: a.geom for n, a in supernet.adapters.items()})
            self.params = list(supernet.trainable_parameters())
        else:
            supernet.select(structure)  # validates it against every layer's space
            # One-kind spaces make the sampler `fixed` and the uniform rule gives one
            # structure per step: the spec's sampling rule is for supernets, not for this.
            self.sampler = StructureSampler(fixed_spaces(supernet, structure), seed=settings.seed)
            self.params = structure_parameters(supernet, structure)
        head = {id(p) for p in supernet.trained_parameters()}
        groups = [{"params": [p for p in self.params if id(p) not in head], "lr_scale": 1.0},
                  {"params": [p for p in self.params if id(p) in head],
                   "lr_scale": (settings.head_lr or settings.lr) / settings.lr}]
        self.optimizer = adamw([g for g in groups if g["params"]], lr=settings.lr, weight_decay=settings.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.dataset) / settings.batch_size)
        self.total_steps = self.steps_per_epoch * settings.epochs
        self.state = TrainState()
        self.model = supernet.model
        if settings.gradient_checkpointing:
            enable_gradient_checkpointing(supernet)

        if dist.sharded:
            from .sharding import shard_supernet

            self.model = shard_supernet(supernet, dist)
        elif dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Every rank samples the same structure, but the adapters a structure does not
            # use get no gradient: DDP must look for unused parameters.
            self.model = DDP(supernet.model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                             find_unused_parameters=True)
        self._stop_requested = False

    def _check_keep_best(self) -> None:
        if not self.validation.keep_best:
            return
        if self.output is None:
            raise GloraError("keep_best writes OUTPUT.best.pt beside the run's checkpoint, and this run has no "
                             "output; give it one, or drop keep_best.")
        if not self.validates:
            raise GloraError(f"--keep-best keeps the checkpoint of the best val metric, and {self.data.source} "
                             "has no val split; drop --keep-best, or add a val split to the data.")

    # ------------------------------------------------------------------ state

    def _lr(self, step: int) -> float:
        s = self.settings
        factor = lr_factor(step, self.total_steps, s.warmup_epochs * self.steps_per_epoch, s.schedule,
                           s.min_lr / s.lr)
        return s.lr * factor

    def state_for_checkpoint(self) -> tuple[TrainRecord, dict]:
        opt = self.optimizer.state_dict()
        tensors = {"rng.torch": torch.get_rng_state()}
        for idx, st in opt["state"].items():
            for key, value in st.items():
                tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        record = TrainRecord(step=self.state.step, epochs_done=self.state.epochs_done, log=self.state.history,
                             settings=self.settings, world=self.dist.world,
                             sharding=self.dist.sharding if self.dist.active else None,
                             param_groups=[{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]])
        return record, tensors

    def restore(self, record: TrainRecord, tensors: dict) -> None:
        """Continue the run ``record`` describes (with the resume tensors saved beside it)."""
        self.state = TrainState(step=record.step, epochs_done=record.epochs_done, history=list(record.log))
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = value
        groups, start = [], 0
        for saved, own in zip(record.param_groups, self.optimizer.param_groups):
            n = len(own["params"])
            groups.append(dict(saved, params=list(range(start, start + n))))
            start += n
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])

    def save(self, *, best: bool = False) -> None:
        """Record progress in the supernet's history and, with an output, write the checkpoint;
        ``best``: write the same checkpoint to :func:`best_path` too."""
        record, tensors = self.state_for_checkpoint()
        self.supernet.history = self.supernet.history.model_copy(
            update={"train": record, "class_names": tuple(self.data.class_names)})
        if self.dist.main and self.output is not None:
            from .checkpoint import save

            for path in (self.output, best_path(self.output))[:2 if best else 1]:
                save(self.supernet, path, force=True, extra_tensors=tensors)
        from .distributed import barrier

        barrier(self.dist)

    # ------------------------------------------------------------------ loop

    def fit(self) -> TrainState:
        previous = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        if self.settings.compile_adapters:
            self.supernet.compile_adapters()
        try:
            self._fit()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self.settings.compile_adapters:  # the supernet leaves training as it came
                self.supernet.compile_adapters(None)
        return self.state

    def _on_sigint(self, signum, frame):
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True

    def _fit(self) -> None:
        s = self.settings
        self.start_step = self.state.step
        if self.state.step == 0:
            if self.dist.main and self.metrics_path is not None and self.metrics_path.exists():
                self.metrics_path.write_text("")  # a fresh run (--force) starts a fresh log
            if self.dist.main and self.output is not None:
                best_path(self.output).unlink(missing_ok=True)  # nor does it keep an old run's best
            # Dropout and other random layers draw from the global RNG: seed it so a run is
            # reproducible (a resumed run restores the saved state instead).
            torch.manual_seed(s.seed)
            if self.structure is None and adapters_at_fresh_init(self.supernet):
                # Compile drew the in-side factors from the spec's seed; re-drawing them from
                # the run's makes --seed vary the init too (the model is still the base one).
                redraw_in_factors(self.supernet, s.seed)
        self.supernet.train()
        freeze_norm_statistics(self.supernet.model)
        if self.sampler.fixed:
            self.supernet.activate(self.sampler(0))
        with TrainProgress(self.dist.main and self.progress, self.total_steps, self.state.step) as bar:
            while self.state.step < self.total_steps:
                epoch, offset = divmod(self.state.step, self.steps_per_epoch)
                batches = batch_order(len(self.dataset), s.batch_size, s.seed, epoch, self.lengths)
                for indices in batches[offset:]:
                    self._step(indices, bar)
                    if self._should_stop():
                        self.save()
                        raise TrainingInterrupted(self.output, self.state.step, self.total_steps)
                self.state.epochs_done = epoch + 1
                record = {"epoch": epoch + 1, "step": self.state.step, **self._validate(epoch + 1, bar)}
                self._log(record)
                self.save(best=self._improved(record))
        self.supernet.eval()

    def _validate(self, epoch: int, bar) -> dict:
        """The val fields of an epoch's record ({} when the run does not validate)."""
        if not self.validates:
            return {}
        score = self._val_score()
        if bar is not None:
            bar.validated(epoch, self.task, score)
        return val_fields(self.task, score)

    def _val_score(self) -> dict:
        """The validation structure's score on (the first batches of) the val split.

        Eval mode and no gradients; the RNG state (which dropout draws from during
        training) and every module's mode are put back, so the run goes on exactly as
        without validation. Under torchrun every rank scores its share and the sums are
        added (ShardedEvaluator), with as many forwards on every rank, as FSDP needs."""
        model = self.supernet.model  # not the DDP wrapper: there is nothing to synchronise
        cuda = [self.dist.device] if self.dist.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), modes_kept(self.supernet), \
                self.supernet.activated(self.val_structure), self._autocast():
            if self._val_shares is None:  # collated once (on the CPU: the device is for training)
                on_cpu = dataclasses.replace(self.dist, device=torch.device("cpu"))
                self._val_shares = validation_shares(self.data, self.settings.batch_size,
                                                     self.validation.max_batches, on_cpu)
            shares = [(batch.to(self.dist.device), counted) for batch, counted in self._val_shares]
            if self.dist.active:
                return ShardedEvaluator(self.supernet, model, shares, task=self.task)(self.val_structure)
            return accuracy(model, [batch for batch, _ in shares], task=self.task)

    def _improved(self, record: dict) -> bool:
        """Whether the epoch ``record`` (just logged) has the run's best val metric so far, for
        ``keep_best``; earlier epochs of a resumed run count (their records are restored)."""
        if not (self.validation.keep_best and "val_loss" in record):
            return False
        earlier = [val_fitness(self.task, r) for r in self.state.history[:-1] if "val_loss" in r]
        return not earlier or not best_path(self.output).exists() or val_fitness(self.task, record) > max(earlier)

    def _autocast(self):
        """The forward's autocast context (the precision setting; off for fp32)."""
        return torch.autocast(self.dist.device.type, dtype=self.autocast or torch.bfloat16,
                              enabled=self.autocast is not None)

    def _should_stop(self) -> bool:
        flag = torch.tensor(float(self._stop_requested))
        if self.dist.active:
            torch.distributed.all_reduce(flag)
        return bool(flag.item())

    def _step(self, indices: torch.Tensor, bar) -> None:
        start = time.perf_counter()
        step = self.state.step
        mine = indices[self.dist.rank::self.dist.world]
        batch = self.data.collate([self.dataset[int(i)] for i in mine]).to(self.dist.device)
        lr = self._lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        structures = self.sampler.step_structures(step)
        objectives = []
        for structure in structures:
            if not self.sampler.fixed:
                self.supernet.activate(structure)
            with self._autocast():
                logits = forward_logits(self.model, batch)
            if step == self.start_step and self.task == "classification":
                check_num_classes(self.data, logits.shape[-1])
            batch_sums = sums(self.task, logits, batch.labels)
            # Scaled so that the average of the ranks' gradients is that of the global batch
            # mean: over examples, or for a language model over all ranks' label tokens.
            if self.task == "classification":
                count = torch.tensor(float(len(indices)))
            else:
                count = batch_sums.count.detach().float()
                if self.dist.active:
                    torch.distributed.all_reduce(count)
            objective = batch_sums.loss * self.dist.world / count.clamp_min(1)
            if objective.requires_grad:  # the smallest structure may use no trainable tensor at all
                (objective if self.scaler is None else self.scaler.scale(objective)).backward()
            objectives.append(objective.detach())
        # The logged loss is the drawn structure's (the first); the sandwich's extremes
        # add gradient, not a different objective to report.
        total = objectives[0].clone()
        if self.dist.active:
            torch.distributed.all_reduce(total)
        mean_loss = (total / self.dist.world).item()
        extremes_finite = len(objectives) == 1 or bool(torch.isfinite(torch.stack(objectives[1:])).all())
        if self.dist.sharded:
            from .sharding import average_gradients

            average_gradients(self.params, self.dist)  # DDP does this in the backward
        if not (math.isfinite(mean_loss) and extremes_finite):
            raise TrainingStopped(
                f"the loss became {mean_loss} at step {step} (epoch {step // self.steps_per_epoch + 1}); "
                f"training stopped and {self.output or 'the supernet'} keeps the last good "
                f"{'epoch' if self.output else 'step'}. Lower the learning rate "
                f"(now {self.settings.lr:g}) or set grad_clip in the spec's training block.")
        if self.settings.grad_clip:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        rate = len(indices) / max(time.perf_counter() - start, 1e-9)
        if bar is not None:
            bar.update(loss=mean_loss, lr=lr, rate=rate)
        if self.state.step % self.log_every == 0 or self.state.step == self.total_steps:
            self._log({"step": self.state.step, "loss": mean_loss, "lr": lr, "examples_per_s": rate})

    def _log(self, record: dict) -> None:
        self.state.history.append(record)
        if self.dist.main and self.metrics_path is not None:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
