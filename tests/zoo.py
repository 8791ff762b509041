"""A registry of SMALL models for the whole test suite (random weights, tiny configs).

Every entry builds in well under a second on a CPU, deterministically (seeded, eval
mode), and comes with a deterministic batch-2 example input, the dotted-name globs of
the layers GLoRA should adapt (``*`` = one name segment, ``**`` = any number of them),
and the modules trained fully (the head). ``traceable`` says whether plain
``torch.fx.symbolic_trace`` succeeds; tests/test_models.py checks every flag.

Hugging Face entries import transformers lazily; ``available(entry)`` is False (and
tests should skip) where it is not installed. Parametrise tests with::

    @pytest.mark.parametrize("name", ZOO)
    def test_x(name):
        entry = ZOO[name]
        if not available(entry): pytest.skip("transformers not installed")
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0
BATCH = 2
NUM_CLASSES = 5  # image entries; bert/llama use HF_LABELS
HF_LABELS = 3
IMG = 32


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    example_input: Callable[[], tuple]
    output: Callable[[Any], torch.Tensor]
    adapt: tuple[str, ...]
    head: tuple[str, ...]
    traceable: bool  # plain torch.fx.symbolic_trace succeeds
    has_bias_free_layers: bool  # some layer matched by `adapt` has no bias
    timm_name: str | None = None
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)
    hf_config: Callable[[], Any] | None = None
    needs: str | None = None  # an optional package the entry needs ("transformers")
    doc: str = ""


def available(entry: ZooEntry) -> bool:
    """Whether the optional package the entry needs is installed."""
    return entry.needs is None or importlib.util.find_spec(entry.needs) is not None


def zoo_entry(name: str) -> ZooEntry:
    """The entry, or a pytest skip when its optional package is missing."""
    import pytest

    entry = ZOO[name]
    if not available(entry):
        pytest.skip(f"{entry.needs} not installed")
    return entry


def seeded(make: Callable[[], nn.Module], seed: int = SEED) -> nn.Module:
    """Build under a fixed seed without touching the caller's RNG; eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().eval()


def _generator(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image() -> tuple:
    return (torch.randn(BATCH, 3, IMG, IMG, generator=_generator()),)


def _tokens() -> tuple:
    # Token 0 is the pad id of the llama config; keep it out of the input.
    return (torch.randint(1, 100, (BATCH, 8), generator=_generator()),)


def _identity(out: Any) -> torch.Tensor:
    return out


def _logits(out: Any) -> torch.Tensor:
    return out.logits


def _timm_entry(name: str, timm_name: str, create_kwargs: dict, **rest) -> ZooEntry:
    def build() -> nn.Module:
        import timm

        return seeded(lambda: timm.create_model(timm_name, **create_kwargs))

    return ZooEntry(
        name=name, build=build, example_input=_image, output=_identity, traceable=True,
        timm_name=timm_name, create_kwargs=dict(create_kwargs), **rest,
    )


# ------------------------------------------------------------------ Hugging Face


def _bert_config():
    from transformers import BertConfig

    # initializer_range 0.2 (not 0.02): at width 32 the default leaves attention uniform,
    # so changing query/key would not move the output and adapter tests would be blind.
    return BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=64, num_labels=HF_LABELS, initializer_range=0.2,
    )


def _llama_config():
    from transformers import LlamaConfig

    # One key/value head (grouped-query attention) makes k_proj/v_proj non-square;
    # initializer_range 0.2 for the same reason as in _bert_config.
    return LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=100, max_position_embeddings=64,
        num_labels=HF_LABELS, pad_token_id=0, initializer_range=0.2,
    )


def _build_bert() -> nn.Module:
    from transformers import BertForSequenceClassification

    return seeded(lambda: BertForSequenceClassification(_bert_config()))


def _build_llama() -> nn.Module:
    from transformers import LlamaForSequenceClassification

    return seeded(lambda: LlamaForSequenceClassification(_llama_config()))


# ------------------------------------------------------------------ hand-written


class BiasFreeMLP(nn.Module):
    """Bias-free hidden Linear layers (as in LLaMA) and an ordinary biased head."""

    def __init__(self, d_in: int = 16, hidden: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class FunctionalLinear(nn.Module):
    """Owns its Parameters and calls ``F.linear``: not an nn.Linear, so not adaptable."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class FunctionalMLP(nn.Module):
    def __init__(self, d_in: int = 16, hidden: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.mix = FunctionalLinear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.mix(x)) + x
        return self.head(F.relu(self.fc2(x)))


class UntraceableMLP(nn.Module):
    """Data-dependent Python control flow: fx cannot branch on a Proxy's value."""

    def __init__(self, d_in: int = 16, hidden: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if h.sum() > 0:
            h = h + torch.relu(self.fc2(h))
        return self.head(h)


def _vector() -> tuple:
    return (torch.randn(BATCH, 16, generator=_generator()),)


def _custom(name: str, cls: type, traceable: bool, bias_free: bool, doc: str) -> ZooEntry:
    return ZooEntry(
        name=name, build=lambda: seeded(cls), example_input=_vector, output=_identity,
        adapt=("fc1", "fc2"), head=("head",), traceable=traceable,
        has_bias_free_layers=bias_free, doc=doc,
    )


# ---------------------------------------------------------------------- registry

_VIT_KW = dict(img_size=IMG, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=NUM_CLASSES)
_VIT_ADAPT = ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2")

_ENTRIES = [
    _timm_entry(
        "vit", "vit_tiny_patch16_224", _VIT_KW, adapt=_VIT_ADAPT, head=("head",),
        has_bias_free_layers=False, doc="timm ViT, 2 blocks of width 32 on 32×32 images.",
    ),
    _timm_entry(
        "deit", "deit_tiny_patch16_224", _VIT_KW, adapt=_VIT_ADAPT, head=("head",),
        has_bias_free_layers=False, doc="timm DeiT (same VisionTransformer class), shrunk like vit.",
    ),
    _timm_entry(
        "swin", "swin_tiny_patch4_window7_224",
        dict(img_size=IMG, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1),
             num_heads=(2, 4), num_classes=NUM_CLASSES),
        adapt=("layers.*.blocks.*.attn.qkv", "layers.*.blocks.*.attn.proj",
               "layers.*.blocks.*.mlp.fc1", "layers.*.blocks.*.mlp.fc2"),
        head=("head.fc",), has_bias_free_layers=False,  # only the unadapted patch merging is
        doc="timm Swin, 2 stages of 1 block, 4×4 windows.",
    ),
    _timm_entry(
        "convnext", "convnext_atto",
        # Layer scale at timm's 1e-6 would hide every change to an adapted MLP (random
        # weights); 1.0 makes blocks matter, as learned scales do in pretrained models.
        dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=False, ls_init_value=1.0,
             num_classes=NUM_CLASSES),
        adapt=("stages.*.blocks.*.mlp.fc1", "stages.*.blocks.*.mlp.fc2"),
        head=("head.fc",), has_bias_free_layers=False,
        doc="timm ConvNeXt-atto, 1 block/stage, 8–32 channels, Linear MLPs, layer scale 1.",
    ),
    _timm_entry(
        # zero_init_last would zero each block's last BN scale, hiding its convs entirely.
        "resnet", "resnet10t",
        dict(channels=(8, 16, 24, 32), stem_width=8, zero_init_last=False, num_classes=NUM_CLASSES),
        adapt=("*.*.conv1", "*.*.conv2"), head=("fc",), has_bias_free_layers=True,
        doc="timm ResNet-10-T with 8–32 channels; adapt the 3×3 convs of every BasicBlock.",
    ),
    _timm_entry(
        "efficientnet", "efficientnet_lite0", dict(num_classes=NUM_CLASSES),
        adapt=("blocks.*.*.conv_pw", "blocks.*.*.conv_pwl", "conv_head"),
        head=("classifier",), has_bias_free_layers=True,
        doc="stock timm EfficientNet-Lite0 (its shape matches the offline ImageNet .pth; "
            "timm cannot shrink it by kwargs); adapt its bias-free 1×1 convs.",
    ),
    ZooEntry(
        name="bert", build=_build_bert, example_input=_tokens, output=_logits,
        adapt=("bert.encoder.layer.*.attention.self.query", "bert.encoder.layer.*.attention.self.key",
               "bert.encoder.layer.*.attention.self.value", "bert.encoder.layer.*.attention.output.dense",
               "bert.encoder.layer.*.intermediate.dense", "bert.encoder.layer.*.output.dense"),
        head=("classifier",), traceable=False, has_bias_free_layers=False,
        hf_config=_bert_config, needs="transformers",
        doc="transformers BertForSequenceClassification: hidden 32, 2 layers, 3 labels.",
    ),
    ZooEntry(
        name="llama", build=_build_llama, example_input=_tokens, output=_logits,
        adapt=tuple(f"model.layers.*.self_attn.{p}_proj" for p in "qkvo")
        + tuple(f"model.layers.*.mlp.{p}_proj" for p in ("gate", "up", "down")),
        head=("score",), traceable=False, has_bias_free_layers=True,
        hf_config=_llama_config, needs="transformers",
        doc="transformers LlamaForSequenceClassification: hidden 32, 2 layers, GQA, bias-free.",
    ),
    _custom("custom_biasfree", BiasFreeMLP, traceable=True, bias_free=True,
            doc="hand-written MLP whose hidden Linears have no bias; biased head."),
    _custom("functional", FunctionalMLP, traceable=True, bias_free=False,
            doc="MLP with a module calling F.linear on its own Parameters (`mix`), not adapted."),
    _custom("untraceable", UntraceableMLP, traceable=False, bias_free=False,
            doc="MLP with `if h.sum() > 0:` in forward, so fx tracing fails."),
]

ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}


def __getattr__(name: str) -> Callable[[], nn.Module]:
    """Every entry is also a factory reference: ``--model tests.zoo:vit``."""
    if name in ZOO:
        return ZOO[name].build
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
