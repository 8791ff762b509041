"""``glorac.compile``: a spec plus a model becomes a :class:`Supernet`.

The supernet wraps the rewritten model. Base weights are frozen and shared with the
original model (never copied); only adapter tensors and the spec's ``train`` modules
require gradients. The active structure is set from outside with :meth:`Supernet.set_choice`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

import torch
from torch import nn

from .errors import PlanError
from .ir import LayerChoice, Space, Spec, Structure
from .kinds import choice_param_count
from .op import GloraAdapter

SpecLike = Union[Spec, str, Path]
ModelLike = Union[nn.Module, str]


class Supernet(nn.Module):
    def __init__(self, model: nn.Module, base_model: nn.Module, plan, adapters: dict[str, GloraAdapter],
                 spec: Optional[Spec] = None, model_ref=None):
        super().__init__()
        self.model = model
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

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # ------------------------------------------------------------------ structure

    @property
    def adapters(self) -> dict[str, GloraAdapter]:
        return dict(self._adapters)

    def choices(self) -> dict[str, Space]:
        """The space of every adapted layer, by qualified name."""
        return {name: a.space for name, a in self._adapters.items()}

    def choice(self) -> Structure:
        """The structure currently active."""
        return Structure(layers={name: a.choice for name, a in self._adapters.items()})

    def set_choice(self, choice: Union[Structure, Mapping[str, LayerChoice]], *, partial: bool = False) -> None:
        """Activate one structure. Every adapted layer must be given unless ``partial``."""
        layers = choice.layers if isinstance(choice, Structure) else dict(choice)
        unknown = sorted(set(layers) - set(self._adapters))
        if unknown:
            raise PlanError(f"structure names layers this supernet does not adapt: {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''}; it adapts e.g. "
                            f"{', '.join(list(self._adapters)[:3])}")
        missing = [n for n in self._adapters if n not in layers]
        if missing and not partial:
            raise PlanError(f"structure lacks {len(missing)} adapted layer(s), e.g. {missing[0]}; "
                            "give a choice for every layer (or partial=True)")
        for name, layer_choice in layers.items():
            self._adapters[name].set_choice(layer_choice)

    def select(self, structure: Structure) -> None:
        """Make ``structure`` the chosen one (kept in checkpoints, used by fold) and activate it."""
        self.set_choice(structure)
        self.structure = structure

    def structure_params(self, structure: Optional[Structure] = None) -> int:
        """Adapter parameters a structure really uses (the budget's measure, head excluded)."""
        layers = (structure or self.choice()).layers
        return sum(choice_param_count(layers[n], a.geom) for n, a in self._adapters.items())

    # ------------------------------------------------------------------ parameters

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{p}": t.detach() for name, a in self._adapters.items()
                for p, t in a.named_parameters()}

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The `train` modules' tensors, keyed as in the base model's state dict."""
        state = self.base_model.state_dict()
        return {k: v for k, v in state.items() if _under(k, self.plan.trained)}

    def trained_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the spec's `train` modules (the head)."""
        seen = set()
        for name in self.plan.trained:
            for p in self.base_model.get_submodule(name).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        seen = set()
        for p in list(self.model.parameters()) + list(self.base_model.parameters()):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield p


def _under(key: str, modules) -> bool:
    return any(key.startswith(m + ".") for m in modules)


def freeze_base(base_model: nn.Module, trained: tuple[str, ...]) -> None:
    for name, p in base_model.named_parameters():
        p.requires_grad_(_under(name, trained))


def compile(spec: SpecLike, model: ModelLike, *, front_end: str = "auto", seed: Optional[int] = None,
            num_classes: Optional[int] = None, adapter_dtype: torch.dtype = torch.float32) -> Supernet:
    """Plan and rewrite ``model`` into a GLoRA supernet that, at init, computes the base model.

    ``model`` is an ``nn.Module`` or a reference (timm name, ``hf:PATH``, ``pkg.mod:factory``).
    """
    from .dsl import load_spec
    from .graph.plan import plan_with_graph
    from .graph.rewrite import rewrite

    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    model_ref = None
    if isinstance(model, str):
        from .models import resolve_model

        model, model_ref = resolve_model(model, num_classes=num_classes)
    the_plan, gm = plan_with_graph(spec, model, front_end=front_end)
    if not the_plan.layers:
        raise PlanError("the spec adapts no layer of this model (every match was excluded or "
                        "skipped); see `glorac plan` for what matched")
    generator = torch.Generator().manual_seed(spec.training.seed if seed is None else seed)
    rewritten, adapters = rewrite(model, the_plan, gm, generator=generator, adapter_dtype=adapter_dtype,
                                  parametrization=spec.training.parametrization)
    freeze_base(model, the_plan.trained)
    return Supernet(rewritten, model, the_plan, adapters, spec=spec, model_ref=model_ref)
