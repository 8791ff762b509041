"""``glorac.build_supernet``: a spec plus a model becomes a :class:`Supernet`.

The supernet wraps the rewritten model. Base weights are frozen and shared with the
original model (never copied); only adapter tensors and the spec's ``train`` modules
require gradients. The structure the forward runs is set with :meth:`Supernet.activate`;
the one chosen for deployment with :meth:`Supernet.select`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

import torch
from torch import nn

from .errors import PlanError
from .history import RunHistory
from .ir import LayerChoice, Space, Spec, Structure
from .kinds import choice_param_count
from .op import GloraAdapter
from .planning import under

SpecLike = Union[Spec, str, Path]
ModelLike = Union[nn.Module, str]


def _call_wrapped(supernet: "Supernet", *args, **kwargs):
    return supernet.model(*args, **kwargs)


class _BoundForward(functools.partial):
    """``supernet.forward``: calls the wrapped model, and shows that model's signature, so
    code that inspects ``forward`` (the Hugging Face Trainer keeps only the dataset columns
    it names) sees ``input_ids, attention_mask, labels, ...`` rather than ``*args, **kwargs``."""

    @property
    def __signature__(self) -> inspect.Signature:
        model = self.args[0].model
        # A traced model runs one of two graphs (train / eval mode) of the same signature.
        return inspect.signature(getattr(model, "eval_graph", model).forward)


class _WrappedForward:
    """The ``forward`` descriptor of :class:`Supernet` (one bound forward per access)."""

    def __get__(self, obj, objtype=None):
        return _call_wrapped if obj is None else _BoundForward(_call_wrapped, obj)


class Supernet(nn.Module):
    def __init__(self, model: nn.Module, base_model: nn.Module, plan, adapters: dict[str, GloraAdapter],
                 spec: Optional[Spec] = None, model_ref=None):
        super().__init__()
        self.model = model
        self.training = model.training  # the wrapped model's mode (flag only; nothing is switched)
        # Unregistered on purpose: the base tensors already live inside `model`, and the
        # adapters are its submodules; registering them again would duplicate state.
        self.__dict__["base_model"] = base_model
        self.__dict__["_adapters"] = adapters
        self.plan = plan
        self.spec = spec
        self.model_ref = model_ref
        self.base_digest: Optional[str] = None
        # The structure chosen for deployment (by search or by hand); None while the
        # supernet is still a space of structures. Saved with checkpoints.
        self.structure: Optional[Structure] = None
        # What train/search/finetune recorded (saved with checkpoints, glorac.history).
        self.history = RunHistory()

    forward = _WrappedForward()

    #: What libraries read off a Hugging Face model to decide how to drive it (the
    #: Trainer's loss and label handling, generation): the wrapped model's answers.
    DELEGATED = frozenset({"config", "loss_type", "main_input_name", "generation_config", "accepts_loss_kwargs",
                           "name_or_path"})

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in Supernet.DELEGATED or "base_model" not in self.__dict__:
                raise
            return getattr(self.__dict__["base_model"], name)

    # ------------------------------------------------------------------ structure

    @property
    def adapters(self) -> dict[str, GloraAdapter]:
        return dict(self._adapters)

    def spaces(self) -> dict[str, Space]:
        """The space of every adapted layer, by qualified name."""
        return {name: a.space for name, a in self._adapters.items()}

    def active_structure(self) -> Structure:
        """The structure the forward runs now (:meth:`activate`)."""
        return Structure(layers={name: a.choice for name, a in self._adapters.items()})

    def check_structure(self, structure: Union[Structure, Mapping[str, LayerChoice]], *,
                        partial: bool = False) -> dict[str, LayerChoice]:
        """The structure's layer choices, validated against every layer's space (nothing is
        activated). Every adapted layer must be given unless ``partial``."""
        return self.plan.check_structure(structure, partial=partial)

    def activate(self, structure: Union[Structure, Mapping[str, LayerChoice]], *, partial: bool = False) -> None:
        """Make the forward run ``structure`` (what training does per step); not saved."""
        for name, layer_choice in self.check_structure(structure, partial=partial).items():
            self._adapters[name].set_choice(layer_choice)

    @contextlib.contextmanager
    def activated(self, structure: Structure):
        """Run ``structure`` inside the block, then restore the structure active before."""
        before = self.active_structure()
        self.activate(structure)
        try:
            yield self
        finally:
            self.activate(before)

    def select(self, structure: Structure) -> None:
        """Make ``structure`` the chosen one (kept in checkpoints, used by fold) and activate it."""
        self.activate(structure)
        self.structure = structure

    # Old names, kept for one release.
    def choices(self) -> dict[str, Space]:
        _deprecated("Supernet.choices()", "Supernet.spaces()")
        return self.spaces()

    def choice(self) -> Structure:
        _deprecated("Supernet.choice()", "Supernet.active_structure()")
        return self.active_structure()

    def set_choice(self, choice, *, partial: bool = False) -> None:
        _deprecated("Supernet.set_choice()", "Supernet.activate()")
        self.activate(choice, partial=partial)

    def largest_structure(self) -> Structure:
        """Every layer's most expressive choice (the most parameters of its space): the
        sandwich rule's upper end, and the structure to score a supernet by before a search."""
        from .kinds import max_choice

        return Structure(layers={n: max_choice(a.space, a.geom) for n, a in self._adapters.items()})

    def structure_params(self, structure: Optional[Structure] = None) -> int:
        """Adapter parameters a structure really uses (the budget's measure, head excluded)."""
        layers = (structure or self.active_structure()).layers
        return sum(choice_param_count(layers[n], a.geom) for n, a in self._adapters.items())

    # ------------------------------------------------------------------ parameters

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{p}": t.detach() for name, a in self._adapters.items()
                for p, t in a.named_parameters()}

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The `train` modules' tensors, keyed as in the base model's state dict."""
        state = self.base_model.state_dict()
        return {k: v for k, v in state.items() if under(k, self.plan.trained)}

    def trained_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the spec's `train` modules (the head)."""
        seen = set()
        for name in self.plan.trained:
            for p in self.base_model.get_submodule(name).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def compile_adapters(self, backend: Optional[str] = "inductor") -> None:
        """Run every adapter's op through ``torch.compile`` (None: eagerly again); see
        :meth:`glorac.op.GloraAdapter.compile_op` for the graphs it keeps and their bound."""
        for adapter in self._adapters.values():
            adapter.compile_op(backend)

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """Every adapter tensor (A..E storage of every adapted layer), for an optimizer.
        :meth:`trainable_parameters` adds the spec's `train` modules (the head)."""
        for adapter in self._adapters.values():
            yield from adapter.parameters()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        seen = set()
        for p in list(self.model.parameters()) + list(self.base_model.parameters()):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield p


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=3)


def freeze_base(base_model: nn.Module, trained: tuple[str, ...]) -> None:
    for name, p in base_model.named_parameters():
        p.requires_grad_(under(name, trained))


def build_supernet(spec: SpecLike, model: ModelLike, *, front_end: str = "auto", seed: Optional[int] = None,
                   num_classes: Optional[int] = None, task: Optional[str] = None,
                   adapter_dtype: torch.dtype = torch.float32, extra_trained: tuple[str, ...] = ()) -> Supernet:
    """Plan and rewrite ``model`` into a GLoRA supernet that, at init, computes the base model.

    ``model`` is an ``nn.Module`` or a reference (timm name, ``hf:PATH``, ``pkg.mod:factory``);
    ``spec`` a :class:`~glorac.ir.Spec` or the path of a ``.glora`` file (for spec text,
    pass ``glorac.loads_spec(text)``; text here still works, deprecated, for one release).
    ``num_classes`` (a new head) and ``task`` (``classification`` or ``causal-lm``: which
    Hugging Face class a reference loads as) apply to a model reference, as in ``glorac compile``.
    """
    from .dsl import load_spec
    from .graph.planner import plan_with_graph
    from .graph.rewrite import rewrite

    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    model_ref = None
    if isinstance(model, str):
        from .models import resolve_model

        model, model_ref = resolve_model(model, num_classes=num_classes, task=task)
    if model_ref is not None and not extra_trained:
        from .models import new_head_to_train

        extra_trained = new_head_to_train(model, model_ref, spec)
    the_plan, gm = plan_with_graph(spec, model, front_end=front_end, extra_trained=extra_trained)
    if not the_plan.layers:
        raise PlanError("the spec adapts no layer of this model (every match was excluded or "
                        "skipped); see `glorac plan` for what matched")
    generator = torch.Generator().manual_seed(spec.training.seed if seed is None else seed)
    rewritten, adapters = rewrite(model, the_plan, gm, generator=generator, adapter_dtype=adapter_dtype,
                                  parametrization=spec.training.parametrization)
    freeze_base(model, the_plan.trained)
    return Supernet(rewritten, model, the_plan, adapters, spec=spec, model_ref=model_ref)


def compile(spec: SpecLike, model: ModelLike, **options) -> Supernet:  # noqa: A001 - the old public name
    """Deprecated name of :func:`build_supernet` (it shadowed the builtin and read as torch.compile)."""
    _deprecated("glorac.build_supernet()", "glorac.build_supernet()")
    return build_supernet(spec, model, **options)
