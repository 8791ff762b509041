"""A glorac supernet in the Hugging Face ``Trainer``: :class:`GloraTrainer`.

    from glorac.hf_trainer import GloraTrainer
    trainer = GloraTrainer(model=supernet, args=TrainingArguments(...), train_dataset=...)
    trainer.train()

What it changes in the stock ``Trainer``, and why:

* **A structure per step.** Before each optimizer step every adapted layer switches to
  the structures :class:`~glorac.sampling.StructureSampler` draws from ``(seed, step)``
  (the spec's sampling rule: one draw, or with ``sandwich`` the largest and smallest
  too, each with its own forward and backward). A function of the step, so every rank
  of a ``torchrun`` job draws the same structure without communicating, and a resumed
  run continues the same sequence. The micro-batches of one accumulated step share it.
* **Adapters-only checkpoints.** Each ``checkpoint-N/`` (and ``save_model``) holds
  ``glorac_adapter.safetensors`` + ``glorac_adapter.json`` (:func:`glorac.checkpoint.save_adapters`),
  never the base weights; ``glorac search|fold|eval checkpoint-N`` read it as they read
  a ``.pt`` checkpoint (when the supernet was compiled from a model reference), and
  ``resume_from_checkpoint`` / ``load_best_model_at_end`` load it back.
* **Evaluation on one structure.** ``evaluate()`` scores the selected structure, or the
  largest one before a search, never the last training draw.
* DDP looks for unused parameters (a structure leaves some adapter tensors out), unless
  the arguments say otherwise.

The dataset needs no ``remove_unused_columns=False``: the supernet's ``forward`` shows
the wrapped model's signature, which is what the Trainer inspects.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional, Sequence

import torch
from transformers import Trainer
from transformers.utils.generic import can_return_loss, find_labels

from .checkpoint import ADAPTER_CONFIG, load_tensors, read_checkpoint, save_adapters
from .errors import GloraError
from .sampling import StructureSampler
from .supernet import Supernet

#: What the stock Trainer writes beside the weights (it reads it back on resume).
TRAINING_ARGS_NAME = "training_args.bin"


class GloraTrainer(Trainer):
    def __init__(self, model: Supernet, *args, sampling: Optional[str] = None, seed: Optional[int] = None,
                 class_names: Sequence[str] = (), **kwargs):
        """``sampling``: ``uniform`` or ``sandwich`` (default: the spec's); ``seed`` of the
        structure draws (default: ``args.seed``); ``class_names``: the labels' names, kept in
        the checkpoints so that a folded classifier gets ``id2label``."""
        if not isinstance(model, Supernet):
            raise GloraError(f"GloraTrainer trains a glorac Supernet (glorac.build_supernet), got "
                             f"{type(model).__name__}; use transformers.Trainer for other models.")
        super().__init__(model, *args, **kwargs)
        # The Trainer reads label names and loss behaviour off the model's class; here
        # that is the wrapped model's, not Supernet's.
        base = type(model.base_model)
        if self.args.label_names is None:
            self.label_names = find_labels(base)
        self.can_return_loss = can_return_loss(base)
        if self.args.ddp_find_unused_parameters is None:
            self.args.ddp_find_unused_parameters = True
        self.supernet = model
        rule = sampling or (model.spec.training.sampling if model.spec is not None else "uniform")
        self.sampler = StructureSampler(model.spaces(), seed=self.args.seed if seed is None else seed, rule=rule,
                                        geoms={n: a.geom for n, a in model.adapters.items()})
        # A structure that reads no adapter tensor (the sandwich's smallest, when the
        # space allows all-none) has nothing to learn from unless a `train` module does.
        self._heads_learn = any(p.requires_grad for p in model.trained_parameters())
        if class_names:
            model.history = model.history.model_copy(update={"class_names": tuple(class_names)})

    # ------------------------------------------------------------------ training

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """The step's structures one after the other, their gradients summed; the loss
        reported is the drawn structure's (the sandwich's extremes add gradient only)."""
        structures = self.sampler.step_structures(self.state.global_step)
        losses = []
        for k, structure in enumerate(structures):
            if not self.sampler.fixed or not k:
                self.supernet.activate(structure)
            if self._heads_learn or self.supernet.structure_params(structure):
                losses.append(super().training_step(model, inputs, num_items_in_batch))
            elif not k:  # the drawn structure's loss is still what the step reports
                with torch.no_grad():
                    losses.append(self.compute_loss(model, self._prepare_inputs(inputs)).detach())
        return losses[0]

    # ------------------------------------------------------------------ evaluation

    def evaluation_loop(self, *args, **kwargs):
        with self._scored_structure():
            return super().evaluation_loop(*args, **kwargs)

    @contextlib.contextmanager
    def _scored_structure(self):
        """The selected structure (after a search) or the largest, for the whole loop."""
        with self.supernet.activated(self.supernet.structure or self.supernet.largest_structure()):
            yield

    # ------------------------------------------------------------------ files

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        """Adapters only (glorac's two files), the processing class and the arguments."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_adapters(self.supernet, output_dir, force=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._load_adapters(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_adapters(self.state.best_model_checkpoint)

    def _load_adapters(self, directory: str) -> None:
        if not os.path.isfile(os.path.join(directory, ADAPTER_CONFIG)):
            raise GloraError(f"{directory} holds no {ADAPTER_CONFIG}; it was not written by GloraTrainer. "
                             "Resume from a checkpoint-N directory of a GloraTrainer run.")
        load_tensors(self.supernet, read_checkpoint(directory))
