"""Resolve a model reference (what a user writes after ``--model``) into an ``nn.Module``.

Three kinds of reference, told apart by their shape:

* ``hf:DIR`` or ``hf:org/name`` — a Hugging Face transformers model;
* ``package.module:function`` — a user factory returning an ``nn.Module``;
* anything else — a timm model name, optionally with a pretrained tag
  (``vit_base_patch16_224.augreg_in21k``; timm's own ``hf-hub:`` names also go to timm).

Random initialisation is seeded (``init_seed``) inside a forked RNG, so resolving the
same reference twice gives bit-identical weights without disturbing the caller's RNG:
a checkpoint stores only the reference and a digest of the base weights, and rebuilds.
On ``device="meta"`` nothing is allocated and no weights are downloaded or loaded; the
module only describes the architecture (this is how ``glorac plan`` inspects a 7B model).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from glorac.errors import CheckpointError, ModelError
from glorac.safeio import load_state_dict_file

Source = Literal["timm", "hf", "factory"]

# `package.module:function` (dotted module, one attribute); timm's own `hf-hub:` and
# `local-dir:` prefixes look similar and are excluded before this is tried.
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_TIMM_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                    "pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelRef(BaseModel):
    """Everything needed to rebuild the same base model: what a checkpoint stores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    source: Source
    # What the model is fine-tuned for; None: as saved (a classifier stays one, anything
    # else is its backbone). "causal-lm" loads a Hugging Face model with its LM head.
    task: Literal["classification", "causal-lm"] | None = None
    num_classes: int | None = None
    pretrained: bool = False
    weights: str | None = None
    init_seed: int = 0


def model_source(name: str) -> Source:
    """Which front end a reference goes to (by its shape only; nothing is imported)."""
    if name.startswith("hf:"):
        return "hf"
    if not name.startswith(_TIMM_PREFIXES) and _FACTORY_RE.match(name):
        return "factory"
    return "timm"


def resolve_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    init_seed: int = 0,
    task: str | None = None,
) -> tuple[nn.Module, ModelRef]:
    """Build the model ``name`` refers to, in eval mode, on ``device``.

    ``num_classes=None`` keeps the model's own head. ``pretrained`` uses the library's
    download; ``weights`` loads a local ``.safetensors``/``torch.save`` file on top.
    Raises :class:`ModelError` (or :class:`CheckpointError` for a bad weights file).
    """
    name = name.strip()
    if not name:
        raise ModelError("empty model reference; pass e.g. --model vit_base_patch16_224.")
    if num_classes is not None and num_classes < 1:
        raise ModelError(f"num_classes must be at least 1, got {num_classes}.")
    device = _parse_device(device)
    source = model_source(name)
    if task not in (None, "classification", "causal-lm"):
        raise ModelError(f"unknown task {task!r}; use classification or causal-lm.")
    if task == "causal-lm" and source != "hf":
        raise ModelError(f"task causal-lm needs a Hugging Face model (hf:DIR); `{name}` is a {source} model.")
    if task == "causal-lm" and num_classes is not None:
        raise ModelError("--num-classes replaces a classifier head; a causal LM keeps its LM head. Drop one of "
                         "--task causal-lm and --num-classes.")
    on_meta = device.type == "meta"
    builders = {"timm": _build_timm, "hf": _build_hf, "factory": _build_factory}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        # Build on the CPU (or meta) so the seeded init is the same whatever the device.
        with torch.device("meta" if on_meta else "cpu"):
            if source == "hf":
                model, loaded = _build_hf(name, num_classes, pretrained and not on_meta, task)
            else:
                model, loaded = builders[source](name, num_classes, pretrained and not on_meta)
        if weights is not None and not on_meta:
            load_weights(model, weights, num_classes=num_classes)
    if not on_meta:
        model = _move(model, device)
    ref = ModelRef(
        # On meta nothing is loaded; the reference still records what was asked for.
        name=name, source=source, task=task, num_classes=num_classes,
        pretrained=pretrained if on_meta else loaded,
        weights=None if weights is None else str(weights), init_seed=init_seed,
    )
    return model.eval(), ref


def resolve_ref(ref: ModelRef, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a stored :class:`ModelRef` describes.

    Quietly: transformers' weight-loading bar and load report (UNEXPECTED / MISSING keys)
    were shown once, when the model was chosen (``glorac compile``); every later command
    rebuilds the same base from the checkpoint and would only repeat them."""
    with quiet_transformers() if ref.source == "hf" else contextlib.nullcontext():
        model, _ = resolve_model(
            ref.name, num_classes=ref.num_classes, pretrained=ref.pretrained,
            weights=ref.weights, device=device, init_seed=ref.init_seed, task=ref.task,
        )
    return model


@contextlib.contextmanager
def quiet_transformers():
    """Inside the block, transformers shows no progress bars and logs errors only (its load
    report is a warning); its previous settings are restored afterwards, so that a program
    using glorac as a library keeps its own. A no-op without transformers."""
    try:
        from huggingface_hub import utils as hub_utils
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_bars_off = hub_utils.are_progress_bars_disabled()  # transformers switches the hub's bars with its own
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if hub_bars_off:
            hub_utils.disable_progress_bars()


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"invalid device {device!r}: {_short(exc)}; use cpu, cuda, cuda:1 or meta.") from None


def _move(model: nn.Module, device: torch.device) -> nn.Module:
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as exc:  # no such GPU, CUDA not compiled in, OOM
        raise ModelError(f"cannot move the model to {device}: {_short(exc)}.") from None


# ---------------------------------------------------------------------------- timm


@functools.lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def _build_timm(name: str, num_classes: int | None, pretrained: bool) -> tuple[nn.Module, bool]:
    import timm

    if not name.startswith(_TIMM_PREFIXES):
        _check_timm_name(name)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if pretrained:
            raise ModelError(_download_failed(name, exc, "timm")) from None
        raise ModelError(f"timm could not build `{name}`: {_short(exc)}.") from None
    return model, pretrained


def _check_timm_name(name: str) -> None:
    import timm

    arch, _, tag = name.partition(".")
    if arch not in _timm_names():
        close = difflib.get_close_matches(arch, _timm_names(), n=5, cutoff=0.4)
        hint = f" Closest timm names: {', '.join(close)}." if close else ""
        raise ModelError(
            f"unknown model `{name}`: not a timm model name, not `hf:DIR` (Hugging Face) and "
            f"not `package.module:function` (your own factory).{hint} Check the spelling "
            "(timm.list_models('PATTERN*') lists names)."
        )
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        known = ", ".join(tags[:8]) + (", ..." if len(tags) > 8 else "") if tags else "none"
        raise ModelError(
            f"unknown pretrained tag `{tag}` for timm model `{arch}` (known tags: {known}); "
            f"use one of them or the bare name `{arch}`."
        )


def _download_failed(name: str, exc: BaseException, library: str) -> str:
    return (
        f"downloading pretrained weights for `{name}` with {library} failed ({_short(exc)}). "
        "If this machine is offline or the weights are elsewhere, download them once and "
        "pass --weights FILE (a .safetensors or torch.save state dict) instead of --pretrained."
    )


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 300 else text[:300] + " …"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------- transformers


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise ModelError(
            "`hf:` models need Hugging Face transformers, which is not installed; "
            "install it with pip install 'glorac[hf]'."
        ) from None
    return transformers


def _build_hf(name: str, num_classes: int | None, pretrained: bool,
              task: str | None = None) -> tuple[nn.Module, bool]:
    """Load weights when a local directory has them (that is what the directory is for);
    a hub id needs ``pretrained`` for its weights, else only its config is fetched."""
    tf = _import_transformers()
    target = name[len("hf:"):].strip()
    local = _hf_local_dir(target)
    config = _hf_config(tf, target, local, num_classes)
    auto = _hf_auto_class(tf, config, name, num_classes, task)
    has_weights = local is not None and any((local / f).exists() for f in _HF_WEIGHT_FILES)
    if local is not None and pretrained and not has_weights:
        raise ModelError(
            f"`{name}` has a config but no weights ({', '.join(_HF_WEIGHT_FILES[::2])}); "
            "save them there with model.save_pretrained(DIR), or drop --pretrained for "
            "random initial weights."
        )
    if torch.get_default_device().type == "meta" or not (has_weights or pretrained):
        return _hf_from_config(auto, config, name), False
    try:
        model = auto.from_pretrained(
            str(local) if local else target, config=config, local_files_only=local is not None,
            # A new head of another size replaces the stored one (reported by transformers).
            ignore_mismatched_sizes=num_classes is not None,
        )
    except Exception as exc:
        if local is None:
            raise ModelError(_download_failed(name, exc, "transformers")) from None
        raise ModelError(f"transformers could not load `{name}`: {_short(exc)}.") from None
    return model, True


def _hf_auto_class(tf, config, name: str, num_classes: int | None, task: str | None):
    """The transformers Auto class the task asks for. Without a task, a saved sequence
    classifier keeps its head (AutoModel would silently drop it) and anything else is its
    backbone, said out loud when the directory holds a language model's head."""
    architectures = tuple(config.architectures or ())
    if task == "causal-lm":
        return tf.AutoModelForCausalLM
    saved_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if task == "classification" or num_classes is not None or saved_classifier:
        if task == "classification" and num_classes is None and not saved_classifier:
            raise ModelError(f"`{name}` has no classification head ({', '.join(architectures) or 'a backbone'}); "
                             "pass --num-classes N to give it one.")
        return tf.AutoModelForSequenceClassification
    lm = [a for a in architectures if a.endswith(("ForCausalLM", "LMHeadModel"))]
    if lm:
        warnings.warn(f"`{name}` holds a {lm[0]}; without --task it is loaded as its backbone (no LM head), "
                      "for a new task head. Pass --task causal-lm to fine-tune it as a language model.",
                      stacklevel=4)
    return tf.AutoModel


def _hf_local_dir(target: str) -> Path | None:
    path = Path(target).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"`hf:{target}` is not a Hugging Face model directory: {path} has no "
                "config.json. Point at the directory model.save_pretrained() wrote."
            )
        return path
    # org/name is a hub id; anything else path-like that does not exist is a typo.
    if target.startswith(("/", ".", "~")) or target.count("/") > 1 or "\\" in target or not target:
        raise ModelError(
            f"`hf:{target}`: no such directory {target}; check the path (hub ids look like "
            "org/name)."
        )
    return None


def _hf_config(tf, target: str, local: Path | None, num_classes: int | None):
    try:
        config = tf.AutoConfig.from_pretrained(str(local) if local else target,
                                               local_files_only=local is not None)
    except Exception as exc:
        if local is None:
            raise ModelError(
                f"downloading hub model `{target}` with transformers failed ({_short(exc)}). "
                "If this machine is offline, download the model directory once elsewhere "
                "(model.save_pretrained(DIR)) and pass --model hf:DIR, or --weights FILE."
            ) from None
        raise ModelError(f"cannot read {local / 'config.json'}: {_short(exc)}.") from None
    if num_classes is not None and config.num_labels != num_classes:
        config.num_labels = num_classes  # also resets id2label/label2id to the new size
    return config


def _hf_from_config(auto, config, name: str) -> nn.Module:
    try:
        return auto.from_config(config)
    except Exception as exc:
        raise ModelError(f"transformers could not build `{name}` from its config: {_short(exc)}.") from None


# --------------------------------------------------------------------------- factory


def _build_factory(name: str, num_classes: int | None, pretrained: bool) -> tuple[nn.Module, bool]:
    fn = _import_factory(name)
    kwargs: dict = {}
    if pretrained:
        if not _accepts(fn, "pretrained"):
            raise ModelError(f"factory `{name}` takes no `pretrained` argument; load weights "
                             "inside the factory, or pass --weights FILE.")
        kwargs["pretrained"] = True
    if num_classes is not None:
        if _accepts(fn, "num_classes"):
            kwargs["num_classes"] = num_classes
        else:
            warnings.warn(f"factory `{name}` takes no num_classes argument; "
                          f"num_classes={num_classes} was not passed to it.", stacklevel=3)
    try:
        model = fn(**kwargs)
    except Exception as exc:
        raise ModelError(f"factory `{name}` raised {_short(exc)}; fix the factory.") from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"factory `{name}` returned an object of type {type(model).__name__}, not a "
            "torch.nn.Module; it must return the model itself."
        )
    return model, pretrained


def _import_factory(name: str) -> Callable:
    module_name, _, attr = name.partition(":")
    # Console scripts do not put the working directory on sys.path; users expect
    # `mypkg.models:build` next to them to import, as it does with `python -m`.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"factory `{name}`: cannot import module `{module_name}` ({exc}). Run from the "
            "directory that contains it, or add that directory to PYTHONPATH."
        ) from None
    except Exception as exc:
        raise ModelError(f"factory `{name}`: importing `{module_name}` raised {_short(exc)}.") from None
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, public, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"factory `{name}`: module `{module_name}` has no attribute `{attr}`.{hint}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ModelError(
            f"factory `{name}`: `{attr}` is of type {type(fn).__name__}, not callable; point at a "
            "function (or class) that returns an nn.Module."
        )
    return fn


def _accepts(fn: Callable, argument: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        return False
    return any(p.name == argument or p.kind is p.VAR_KEYWORD for p in params)


# --------------------------------------------------------------------------- weights


def load_weights(model: nn.Module, path: str | os.PathLike, *, num_classes: int | None = None) -> None:
    """Load a ``--weights`` file into ``model``, strictly.

    Every key must match in name and shape. One exception: when ``num_classes`` is given
    and the file's classifier head has another size (or no head at all), the head is
    left freshly initialised and a warning says so.
    """
    state = load_state_dict_file(path)
    own = model.state_dict()
    state = _strip_prefix(state, own)
    head = _head_keys(model, num_classes)
    skipped = [k for k in head if _replaceable_head(state.get(k), own[k], num_classes)]
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and k not in skipped
             and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(_mismatch_message(path, state, own, missing, unexpected, wrong))
    if skipped:
        shapes = ", ".join(f"{k} {tuple(state[k].shape) if k in state else 'absent'}" for k in skipped)
        warnings.warn(f"{path}: classifier head not loaded ({shapes}); it is freshly initialised "
                      f"for num_classes={num_classes}.", stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)


def _replaceable_head(stored: torch.Tensor | None, own: torch.Tensor, num_classes: int | None) -> bool:
    """A head tensor is replaced only when the file has none, or one for another class count."""
    if stored is None:
        return True
    same_input = tuple(stored.shape[1:]) == tuple(own.shape[1:])
    return stored.ndim > 0 and same_input and stored.shape[0] != num_classes


def _strip_prefix(state: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """Weights saved from a DistributedDataParallel wrapper carry a ``module.`` prefix."""
    if state and not any(k in own for k in state) and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def head_module(model: nn.Module, num_classes: int | None) -> str | None:
    """The classifier head a ``num_classes`` replacement created: the last Linear (or conv)
    with that many outputs; None when there is none."""
    if num_classes is None:
        return None
    head = None
    for qualname, module in model.named_modules():
        out = getattr(module, "out_features", getattr(module, "out_channels", None))
        if isinstance(module, (nn.Linear, nn.Conv2d)) and out == num_classes:
            head = qualname
    return head


def _head_keys(model: nn.Module, num_classes: int | None) -> list[str]:
    """Parameters of the last Linear (or 1×1 conv) producing ``num_classes`` outputs."""
    head = head_module(model, num_classes)
    if head is None:
        return []
    return [f"{head}.{n}" for n, _ in model.get_submodule(head).named_parameters(recurse=False)]


def new_head_to_train(model: nn.Module, ref: ModelRef, spec) -> tuple[str, ...]:
    """The head glorac created for ``--num-classes`` when the spec's `train` rules leave it
    frozen (a new head at its random init would cap the task at chance): trained by default."""
    from .selectors import matches_any

    head = head_module(model, ref.num_classes)
    covered = [n for n, _ in model.named_modules() if n and any(matches_any(r.patterns, n) for r in spec.trained)]
    if head is None or any(head == t or head.startswith(t + ".") for t in covered):
        return ()
    return (head,)


def _mismatch_message(path, state, own, missing, unexpected, wrong) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if wrong:
        shapes = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong]
        parts.append(f"{len(wrong)} shape mismatches: {few(shapes)}")
    return (
        f"weights file {path} does not match the model: {'; '.join(parts)}. Check that the "
        "file was saved from this architecture (same name and size), and pass --num-classes "
        "if only the classifier head differs."
    )
