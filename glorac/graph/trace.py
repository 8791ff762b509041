"""Graph front end: torch.fx tracing that honours timm's leaf/no-trace registries.

When tracing fails (data-dependent control flow, Hugging Face models, ...), the caller
falls back to the module front end; :class:`TraceFailure` says which module broke and
why, so a user can fix it or ignore it.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Optional

import torch.fx as fx
from torch import nn


@dataclass(frozen=True)
class TraceFailure:
    module: str  # qualified name of the innermost module being traced ("" = the root)
    reason: str

    def __str__(self) -> str:
        where = f"in module `{self.module}`" if self.module else "in the model's own forward"
        return f"{where}: {self.reason}"


def _timm_registries() -> tuple[tuple[type, ...], tuple]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is a dependency, but tracing a user model must not need it
        return (), ()
    modules = tuple(timm_fx.get_notrace_modules())
    functions = tuple(timm_fx.get_notrace_functions())
    return modules, functions


class SiteTracer(fx.Tracer):
    """Keeps Linear/Conv2d (and timm's no-trace modules) as leaves; remembers where it is."""

    def __init__(self) -> None:
        leaf_types, autowrap = _timm_registries()
        super().__init__(autowrap_functions=autowrap)
        self.leaf_types = leaf_types
        self.glorac_scope: list[str] = []
        self._param_names: dict[int, str] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Linear, nn.Conv2d)) or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)

    def trace(self, root, concrete_args=None):
        # fx finds a parameter's name by scanning every parameter of the model on each
        # attribute access (quadratic in depth); one id → name table makes it linear.
        if isinstance(root, nn.Module):
            self._param_names: dict[int, str] = {}
            for name, p in root.named_parameters():
                self._param_names.setdefault(id(p), name)
        return super().trace(root, concrete_args)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        name = self._param_names.get(id(attr_val)) if isinstance(attr_val, nn.Parameter) else None
        if name is None or self.param_shapes_constant:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def call_module(self, m, forward, args, kwargs):
        self.glorac_scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.glorac_scope.pop()


def trace(model: nn.Module) -> tuple[Optional["ModeGraphs"], Optional[TraceFailure]]:
    """Symbolically trace ``model`` in eval and in train mode; never raises for an
    untraceable model.

    Training-dependent code (drop-path, ``dropout_p=... if self.training``) is baked into
    a trace, so each mode gets its own graph (one, when both trace to the same code).
    Optional forward arguments are traced at their defaults (``concrete_args``): a mask
    argument must not be traced as if it were passed.
    """
    graphs = {}
    with preserved(model):
        for training in (False, True):
            model.train(training)
            graphs[training], failure = _trace_once(model)
            if failure is not None:
                return None, failure
    same = graphs[True].code == graphs[False].code
    result = ModeGraphs(graphs[False], None if same else graphs[True])
    owned = {id(m) for m in model.modules()}
    for module in result.modules():  # fx's own containers start in the model's mode
        if id(module) not in owned:
            module.training = model.training
    return result, None


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Restore every module's own state after the block: its mode flag and its plain
    attributes, dicts and lists among them one level deep.

    Tracing and probing run the caller's model, and some models cache in their modules
    (LeViT-style attention-bias caches filled in eval mode, call counters): those runs
    must leave nothing behind, least of all a FakeTensor or an fx Proxy in a cache.
    Parameters, buffers and submodules are not plain attributes and are not touched.
    """
    saved = [(m, {k: (type(v)(v) if type(v) in (dict, list) else v) for k, v in vars(m).items()
                  if k not in ("_parameters", "_buffers", "_modules")}) for m in model.modules()]
    try:
        yield
    finally:
        for m, attrs in saved:
            for k in [k for k in vars(m) if k not in attrs and k not in ("_parameters", "_buffers", "_modules")]:
                delattr(m, k)
            for k, v in attrs.items():
                current = m.__dict__.get(k)
                if type(v) in (dict, list) and type(current) is type(v):
                    current.clear()  # the same object: aliases of it see the restored content
                    current.extend(v) if isinstance(v, list) else current.update(v)
                else:
                    m.__dict__[k] = v


def _trace_once(model: nn.Module) -> tuple[Optional[fx.GraphModule], Optional[TraceFailure]]:
    tracer = SiteTracer()
    try:
        graph = tracer.trace(model, concrete_args=_default_args(model))
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        module = tracer.glorac_scope[-1] if tracer.glorac_scope else ""
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return None, TraceFailure(module, reason[:300])
    return fx.GraphModule(tracer.root, graph, type(model).__name__), None


def _default_args(model: nn.Module) -> Optional[dict]:
    """Forward parameters after the first with a plain default (None, a bool, a number, a
    string): traced at that default, as a call that leaves them out runs."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    plain = {p.name: p.default for p in params[1:] if p.kind in kinds
             and (p.default is None or isinstance(p.default, (bool, int, float, str)))}
    return plain or None


class ModeGraphs(nn.Module):
    """A traced model: the eval-mode graph, and the train-mode one where it differs.

    The forward runs the graph of the current mode, so ``.train()``/``.eval()`` after
    compile behave as on the original model whichever mode it was traced in.
    """

    def __init__(self, eval_graph: fx.GraphModule, train_graph: Optional[fx.GraphModule] = None):
        super().__init__()
        self.eval_graph = eval_graph
        self.train_graph = train_graph

    @property
    def graphs(self) -> list[fx.GraphModule]:
        return [self.eval_graph] + ([self.train_graph] if self.train_graph is not None else [])

    def recompile(self) -> None:
        for gm in self.graphs:
            gm.recompile()

    def forward(self, *args, **kwargs):
        graph = self.train_graph if self.training and self.train_graph is not None else self.eval_graph
        return graph(*args, **kwargs)
