"""Architecture coverage: does every model compile, adapt and fold correctly, or say why not?

A registry of SMALL models (random weights, tiny configs, one per timm family where one
builds on a CPU in well under a second, plus torchvision's ViT and Hugging Face models
from tiny configs) and :func:`check`, which runs the whole user-facing contract on one
entry with the public glorac API only and returns a :class:`Row` (a pass, or the first
failure with the numbers); it never raises for a model problem.

The contract, in the order checked (the first failing check is the row's ``stage``):

1. ``compile``: ``glorac.build_supernet(SPEC, model)`` with a spec adapting every Linear
   and Conv2d (``bias add``); the plan's front end, adapted and skipped layers are recorded.
2. ``plan accounts for every layer``: every ``nn.Linear``/``nn.Conv2d`` module (subclasses
   too) is adapted or in ``plan.skipped`` with a non-empty reason; nothing is dropped silently.
3. ``caller's model unchanged by compile``: same ``state_dict`` keys, every tensor
   ``torch.equal``, the same submodule objects under the same names, the same output.
4. ``mode``: a supernet compiled from a model in eval mode is in eval mode.
5. ``init output``: the supernet's output equals the base model's (max|Δ|/max|y| ≤ 1e-6),
   ``eval determinism``: two eval forwards are identical, and (``init output`` again) a
   random structure activated on the fresh adapters changes nothing either (≤ 1e-4: the
   same numbers by another float path).
6. ``adapted output moves``: random adapter values and a random structure
   (tests/reference.py) activated with ``supernet.activate`` move the output (rel > 1e-3)
   to finite values.
7. ``caller's model unchanged by adapted forward``: as 3, plus the caller's model still
   computes its own output.
8. ``fold``: ``glorac.fold(supernet, structure)`` holds only non-glorac modules and
   reproduces the supernet's output (rel ≤ 1e-4).
9. ``strict load``: the folded state dict loads ``strict=True`` into a fresh stock model
   (given the zero biases ``plan.added_biases(structure)`` names, as glorac's own loader
   does) whose output matches too (rel ≤ 1e-4).
10. ``train/eval mode``: in ``.train()`` the supernet's forward is random iff the base
    model's is (entries are built with dropout / drop path where the builder takes it);
    back in ``.eval()`` two forwards are identical again.

A row is ``ok`` when every check passed (layers glorac cannot adapt may be left out, as
long as the plan names them with a reason), or when an entry expected to have no
adaptable layer at all is refused at plan time with every layer's reason.

``python benchmarks/coverage.py`` runs the whole registry and writes docs/coverage.md;
tests/test_coverage.py runs it under pytest (a fast subset always, the rest ``slow``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

import glorac
from tests.reference import perturb, random_structure

SEED = 0
BATCH = 2
NUM_CLASSES = 5
TOKENS = 8  # sequence length of text inputs

SPEC_TEXT = """\
space s {
    A: lora(2) | vector | none
    B: lora(2) | vector | none
    C: lora(2) | vector | none
    D: vector | none
    E: vector | none
}
adapt "**" type Linear | Conv2d with s
bias add
"""

INIT_TOL = 1e-6  # supernet at init vs base model
# A fresh supernet under another structure: the same numbers by another float path (a
# materialised W', a bias added after the conv), so rounding as in a fold, not bit-exact.
INIT_STRUCTURE_TOL = 1e-4
FOLD_TOL = 1e-4  # folded / reloaded model vs supernet at the structure
MOVE_MIN = 1e-3  # the adapted output must move at least this much
PERTURB_SCALE = 0.05  # adapter values ~ N(0, scale²): moves outputs clearly, blows none up


@functools.lru_cache(maxsize=1)
def spec() -> glorac.Spec:
    return glorac.loads_spec(SPEC_TEXT)


# ---------------------------------------------------------------------------- entries


Example = tuple[tuple, dict]  # positional and keyword inputs of one forward


@dataclass(frozen=True)
class Entry:
    name: str
    family: str  # timm module, "torchvision", or "transformers/<model type>"
    source: str  # "timm", "torchvision", "transformers"
    make: Callable[[], nn.Module]  # unseeded; see build()
    example: Callable[[], Example]
    output: Optional[Callable[[Any], Tensor]] = None  # default: main_tensor
    dropout: bool = False  # built with dropout / drop path, so train-mode forwards are random
    fast: bool = False  # in the always-on test subset
    excluded: bool = False  # expected to have no adaptable layer (the plan must say why)
    needs: Optional[str] = None  # optional package ("transformers")
    doc: str = ""

    def build(self) -> nn.Module:
        """The model: seeded (same weights every call, caller's RNG untouched), eval mode,
        with zero-initialised gains brought to life (:func:`revive`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = self.make()
        revive(model)
        return model.eval()

    def main_output(self, out: Any) -> Tensor:
        return (self.output or main_tensor)(out)

    @property
    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


def _is_gain(leaf: str) -> bool:
    return leaf in ("weight", "gain") or leaf.startswith("gamma") or re.fullmatch(r"ls\d*", leaf) is not None


def revive(model: nn.Module) -> None:
    """Give every (near-)zero gain a trained-like value, deterministically.

    Random-init recipes zero the last norm scale of residual branches (ResNet's
    ``zero_init_last``, Swin-v2's post-norms, NF-Nets' skip gains), zero the classifier
    head (MLP-Mixer, Hiera, torchvision's ViT) or start layer scales at 1e-5. A layer
    behind such a zero does not reach the output, so adapting, folding or reloading it
    wrongly would go unseen (and a zero output is trivially deterministic in train mode).
    Trained models have no such zeros: a 2-D+ weight with max|w| < 1e-3 gets N(0, 1/fan_in),
    a 1-D gain (``weight``, ``gain``, ``gamma*``, ``ls*``) gets 1.
    """
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() <= 1 or not _is_gain(name.rsplit(".", 1)[-1]) or p.abs().max() >= 1e-3:
                continue
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.fill_(1.0)


def main_tensor(out: Any) -> Tensor:
    """timm: the tensor; Hugging Face: logits, else last_hidden_state; tuples: the first."""
    if isinstance(out, Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"no output tensor in a {type(out).__name__}")


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def _image(size: int) -> Callable[[], Example]:
    return lambda: ((torch.randn(BATCH, 3, size, size, generator=_gen()),), {})


def _image_rect(h: int, w: int) -> Callable[[], Example]:
    return lambda: ((torch.randn(BATCH, 3, h, w, generator=_gen()),), {})


def _ids(low: int = 3, high: int = 100) -> Tensor:
    return torch.randint(low, high, (BATCH, TOKENS), generator=_gen())


def _text() -> Example:
    return (_ids(),), {}


# ------------------------------------------------------------------------------ timm

_DROP = dict(drop_rate=0.1, drop_path_rate=0.1)


def _timm(name: str, family: str, timm_name: str, size: int = 32, *, drop: Optional[dict] = None,
          fast: bool = False, doc: str = "", **kwargs) -> Entry:
    """A ``timm.create_model`` entry; ``drop`` are the dropout kwargs it takes (default both)."""
    drop = _DROP if drop is None else drop

    def make() -> nn.Module:
        import timm

        return timm.create_model(timm_name, pretrained=False, num_classes=NUM_CLASSES, **kwargs, **drop)

    return Entry(name=name, family=family, source="timm", make=make, example=_image(size),
                 dropout=bool(drop), fast=fast, doc=doc or f"timm {timm_name} {kwargs or ''}".strip())


def _timm_class(name: str, family: str, factory: Callable[..., nn.Module], size: int = 32, *,
                drop: Optional[dict] = None, doc: str = "") -> Entry:
    """A timm model class built directly (its ``create_model`` function fixes the sizes)."""
    drop = _DROP if drop is None else drop
    return Entry(name=name, family=family, source="timm",
                 make=lambda: factory(num_classes=NUM_CLASSES, **drop), example=_image(size),
                 dropout=bool(drop), doc=doc)


def _timm_cls(module: str, cls: str, **kwargs) -> Callable[..., nn.Module]:
    def factory(**more) -> nn.Module:
        mod = importlib.import_module(f"timm.models.{module}")
        return getattr(mod, cls)(**kwargs, **more)

    return factory


def _mvitv2(**more) -> nn.Module:
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    return MultiScaleVit(MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=16, num_heads=1), img_size=(64, 64), **more)


def _mlp_mixer(kind: str) -> Callable[..., nn.Module]:
    def factory(**more) -> nn.Module:
        from timm.layers import GatedMlp
        from timm.models import mlp_mixer as mm

        extra = {"mixer": {}, "resmlp": dict(mlp_ratio=4, block_layer=mm.ResBlock, norm_layer=mm.Affine),
                 "gmlp": dict(mlp_ratio=6, block_layer=mm.SpatialGatingBlock, mlp_layer=GatedMlp)}[kind]
        return mm.MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=32, **extra, **more)

    return factory


_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
_SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 4))
_STAGES4 = dict(depths=(1, 1, 1, 1))
_ONLY_DROP = dict(drop_rate=0.1)

_TIMM = [
    # -- vision transformers
    _timm("vit_tiny", "vision_transformer", "vit_tiny_patch16_224", fast=True, **_VIT),
    _timm("deit_tiny_distilled", "deit", "deit_tiny_distilled_patch16_224", **_VIT),
    _timm("beit", "beit", "beit_base_patch16_224", fast=True,
          doc="BEiT: qkv is a bias-free Linear called as F.linear(x, qkv.weight, cat(q_bias, 0, v_bias))",
          **_VIT),
    _timm("eva02_tiny", "eva", "eva02_tiny_patch14_224", **_VIT),
    _timm("vit_relpos_small", "vision_transformer_relpos", "vit_relpos_small_patch16_224", **_VIT),
    _timm("samvit", "vision_transformer_sam", "samvit_base_patch16",
          **_VIT, global_attn_indexes=(1,), window_size=2, neck_chans=16),
    _timm("vit_tiny_r_s16_p8", "vision_transformer_hybrid", "vit_tiny_r_s16_p8_224", 64,
          img_size=64, depth=2, embed_dim=32, num_heads=2),
    _timm("vitamin_small", "vitamin", "vitamin_small_224", 64, img_size=64, depth=2),
    _timm("naflexvit", "naflexvit", "naflexvit_base_patch16_gap", **_VIT),
    _timm("deepseek_vit", "deepseek_vit", "deepseek_vit_412m", **_VIT),
    _timm("gemma4_vit", "gemma4_vit", "gemma4_vit_167m", **_VIT),
    _timm("qwen3_vit", "qwen3_vit", "qwen3_vit_88m", **_VIT),
    _timm("cait_xxs24", "cait", "cait_xxs24_224", **_VIT, depth_token_only=1),
    _timm("convit_tiny", "convit", "convit_tiny", **_VIT, local_up_to_layer=1),
    _timm("xcit_nano", "xcit", "xcit_nano_12_p16_224", 64, img_size=64, depth=2),
    _timm("tnt_s", "tnt", "tnt_s_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64,
          inner_dim=8, num_heads_outer=2, num_heads_inner=2),
    _timm_class("crossvit", "crossvit", _timm_cls(
        "crossvit", "CrossVit", img_size=48, img_scale=(1.0, 32 / 48), patch_size=(12, 16), embed_dim=(32, 64),
        depth=((1, 1, 0),), num_heads=(2, 2), mlp_ratio=(2, 2, 1)), 48,
        doc="CrossViT, two branches (48 and 32 px), one multi-scale block"),
    _timm_class("volo", "volo", _timm_cls(
        "volo", "VOLO", layers=(1, 1, 1, 1), img_size=64, embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2),
        stem_hidden_dim=16), 64, doc="VOLO-like, one block per stage (outlook attention)"),
    _timm("pit_ti", "pit", "pit_ti_224", 64, img_size=64),
    _timm("levit_128s", "levit", "levit_128s", 64, img_size=64),
    # -- hierarchical transformers
    _timm("swin_tiny", "swin_transformer", "swin_tiny_patch4_window7_224", **_SWIN),
    _timm("swinv2_tiny", "swin_transformer_v2", "swinv2_tiny_window8_256", **_SWIN),
    _timm("swinv2_cr_tiny", "swin_transformer_v2_cr", "swinv2_cr_tiny_224",
          img_size=(32, 32), window_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 4)),
    _timm("tiny_vit_5m", "tiny_vit", "tiny_vit_5m_224", 64, depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64),
          num_heads=(1, 2, 3, 4), window_sizes=(2, 2, 2, 2)),
    _timm("twins_svt", "twins", "twins_svt_small", 64, img_size=64, depths=(1, 1, 1, 1),
          embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), wss=(2, 2, 2, 2)),
    _timm("twins_pcpvt", "twins", "twins_pcpvt_small", 64, img_size=64, depths=(1, 1, 1, 1),
          embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
    _timm("pvt_v2_b0", "pvt_v2", "pvt_v2_b0", 64, depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64),
          num_heads=(1, 2, 3, 4)),
    _timm("davit_tiny", "davit", "davit_tiny", 64, depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64),
          num_heads=(1, 2, 3, 4), window_size=2),
    _timm_class("focalnet", "focalnet", _timm_cls("focalnet", "FocalNet", depths=(1, 1, 1, 1), embed_dim=16), 64,
                doc="FocalNet, one block per stage, width 16"),
    _timm_class("mvitv2", "mvitv2", _mvitv2, 64, doc="MViTv2, one block per stage, width 16"),
    _timm_class("nest", "nest", _timm_cls(
        "nest", "Nest", img_size=32, patch_size=2, embed_dims=(16, 32, 64), num_heads=(1, 2, 4),
        depths=(1, 1, 1)), doc="NesT, three levels of one block"),
    _timm("hiera_tiny", "hiera", "hiera_tiny_224", 64, img_size=(64, 64), embed_dim=16, num_heads=1,
          stages=(1, 1, 1, 1)),
    _timm("sam2_hiera_tiny", "hieradet_sam2", "sam2_hiera_tiny", 64, embed_dim=16, stages=(1, 1, 2, 1),
          global_att_blocks=(3,)),
    _timm("gcvit_xxtiny", "gcvit", "gcvit_xxtiny", 64, img_size=64),
    _timm("coat_tiny", "coat", "coat_tiny", 64, img_size=64),
    _timm("coatnet_0_rw", "maxxvit", "coatnet_0_rw_224", 64, img_size=64),
    _timm("maxvit_tiny_tf", "maxxvit", "maxvit_tiny_tf_224", 64, img_size=64),
    _timm("botnet26t", "byoanet", "botnet26t_256", 64, img_size=64),
    _timm("visformer_tiny", "visformer", "visformer_tiny", 64, img_size=64),
    _timm("efficientformer_l1", "efficientformer", "efficientformer_l1", 224, depths=(1, 1, 1, 1)),
    _timm("efficientformerv2_s0", "efficientformer_v2", "efficientformerv2_s0", 64, img_size=64),
    _timm("swiftformer_xs", "swiftformer", "swiftformer_xs", 64),
    _timm("edgenext_xx_small", "edgenext", "edgenext_xx_small", 64),
    _timm("efficientvit_m0", "efficientvit_msra", "efficientvit_m0", 64, img_size=64, drop=_ONLY_DROP),
    _timm("efficientvit_b0", "efficientvit_mit", "efficientvit_b0", 64, drop=_ONLY_DROP),
    _timm("efficientvim_m1", "efficientvim", "efficientvim_m1", 64),
    _timm("shvit_s1", "shvit", "shvit_s1", 64, drop=_ONLY_DROP),
    _timm("fastvit_t8", "fastvit", "fastvit_t8", 64),
    _timm("mobilevit_xxs", "mobilevit", "mobilevit_xxs", 64, fast=True,
          doc="MobileViT: unfold/fold around transformer blocks, convs and Linears mixed"),
    _timm("mobilevitv2_050", "mobilevit", "mobilevitv2_050", 64),
    _timm("lowformer_b0", "lowformer", "lowformer_b0", 64),
    _timm("iformer_t", "iformer", "iformer_t", 64),
    _timm("csatv2", "csatv2", "csatv2", 64),
    # -- MLPs and metaformers
    _timm_class("mixer", "mlp_mixer", _mlp_mixer("mixer"), doc="MLP-Mixer, 2 blocks of width 32"),
    _timm_class("resmlp", "mlp_mixer", _mlp_mixer("resmlp"), doc="ResMLP, 2 blocks of width 32"),
    _timm_class("gmlp", "mlp_mixer", _mlp_mixer("gmlp"), doc="gMLP, 2 blocks of width 32"),
    _timm_class("poolformer", "metaformer", _timm_cls("metaformer", "MetaFormer", depths=(1, 1, 1, 1),
                                                      dims=(16, 32, 48, 64)),
                doc="PoolFormer (MetaFormer, pooling mixer), one block per stage"),
    _timm("sequencer2d_s", "sequencer", "sequencer2d_s", 64, layers=(1, 1, 1, 1), embed_dims=(32, 32, 32, 32),
          hidden_sizes=(8, 8, 8, 8), doc="Sequencer2D: BiLSTM token mixing (LSTMs are not Linear layers)"),
    _timm("mambaout_femto", "mambaout", "mambaout_femto", 64, depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)),
    _timm("inception_next_tiny", "inception_next", "inception_next_tiny", 64, depths=(1, 1, 1, 1),
          dims=(16, 32, 48, 64)),
    # -- convnets
    _timm("convnext_atto", "convnext", "convnext_atto", fast=True, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
          conv_mlp=False, ls_init_value=1.0),
    _timm("resnet18", "resnet", "resnet18", fast=True, zero_init_last=False),
    _timm("resnetv2_50x1_bit", "resnetv2", "resnetv2_50x1_bit", doc="BiT ResNetV2: StdConv2d (weight standardisation)"),
    _timm("nf_resnet26", "nfnet", "nf_resnet26", doc="NF-ResNet: ScaledStdConv2d everywhere"),
    _timm("regnetx_002", "regnet", "regnetx_002"),
    _timm("res2net50_14w_8s", "res2net", "res2net50_14w_8s", layers=(1, 1, 1, 1)),
    _timm("resnest14d", "resnest", "resnest14d"),
    _timm("legacy_seresnet18", "senet", "legacy_seresnet18", drop=_ONLY_DROP),
    _timm("skresnet18", "sknet", "skresnet18"),
    _timm("tresnet_m", "tresnet", "tresnet_m", layers=(1, 1, 1, 1)),
    _timm("dla34", "dla", "dla34", drop=_ONLY_DROP),
    _timm("dpn68", "dpn", "dpn68", drop=_ONLY_DROP),
    _timm("densenet", "densenet", "densenet121", block_config=(1, 1, 1, 1), growth_rate=8, drop=_ONLY_DROP),
    _timm("vgg11", "vgg", "vgg11", mlp_ratio=1 / 64, drop=_ONLY_DROP),
    _timm("mobileone_s0", "byobnet", "mobileone_s0"),
    _timm("repvgg_a0", "byobnet", "repvgg_a0"),
    _timm("hrnet_w18_small", "hrnet", "hrnet_w18_small", 64, drop=_ONLY_DROP),
    _timm("inception_v3", "inception_v3", "inception_v3", 75, drop=_ONLY_DROP),
    _timm("inception_v4", "inception_v4", "inception_v4", 75, drop=_ONLY_DROP),
    _timm("inception_resnet_v2", "inception_resnet_v2", "inception_resnet_v2", 75, drop=_ONLY_DROP),
    _timm("xception41", "xception_aligned", "xception41"),
    _timm("legacy_xception", "xception", "legacy_xception", drop=_ONLY_DROP),
    _timm("cs3darknet_s", "cspnet", "cs3darknet_s"),
    _timm("cspnext_tiny", "cspnext", "cspnext_tiny"),
    _timm("ese_vovnet19b_dw", "vovnet", "ese_vovnet19b_dw"),
    _timm("selecsls42b", "selecsls", "selecsls42b", drop=_ONLY_DROP),
    _timm("rexnet_100", "rexnet", "rexnet_100"),
    _timm("hgnet_tiny", "hgnet", "hgnet_tiny", 64),
    _timm("rdnet_tiny", "rdnet", "rdnet_tiny"),
    _timm("fasternet_t0", "fasternet", "fasternet_t0"),
    _timm("starnet_s050", "starnet", "starnet_s050"),
    _timm("cpubone_b0", "cpubone", "cpubone_b0_bfrobust"),
    _timm_class("convmixer", "convmixer", _timm_cls("convmixer", "ConvMixer", dim=32, depth=2, kernel_size=3,
                                                    patch_size=4), drop=_ONLY_DROP,
                doc="ConvMixer, 2 blocks of width 32"),
    _timm("pnasnet5large", "pnasnet", "pnasnet5large", 64, drop=_ONLY_DROP),
    _timm("nasnetalarge", "nasnet", "nasnetalarge", 64, drop=_ONLY_DROP),
    # -- mobile convnets
    _timm("efficientnet_b0", "efficientnet", "efficientnet_b0", fast=True),
    _timm("efficientnet_lite0", "efficientnet", "efficientnet_lite0"),
    _timm("tf_efficientnet_b0", "efficientnet", "tf_efficientnet_b0",
          doc="TF port: Conv2dSame (run-time same padding)"),
    _timm("mobilenetv3_small_050", "mobilenetv3", "mobilenetv3_small_050"),
    _timm("lcnet_050", "mobilenetv3", "lcnet_050"),
    _timm("lcnetv2_small", "lcnetv2", "lcnetv2_small", drop=_ONLY_DROP),
    _timm("hardcorenas_a", "hardcorenas", "hardcorenas_a"),
    _timm("ghostnet_050", "ghostnet", "ghostnet_050", drop=_ONLY_DROP),
    _timm("repghostnet_050", "repghost", "repghostnet_050", drop=_ONLY_DROP),
    _timm("repvit_m0_9", "repvit", "repvit_m0_9", 64, drop=_ONLY_DROP),
]


# ----------------------------------------------------------------------- torchvision


def _torchvision_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=NUM_CLASSES, dropout=0.1)


_TORCHVISION = [
    Entry(name="torchvision_vit", family="torchvision", source="torchvision", make=_torchvision_vit,
          example=_image(32), dropout=True,
          doc="torchvision VisionTransformer: nn.MultiheadAttention reads out_proj.weight directly"),
]


# ---------------------------------------------------------------------- transformers

_HF_INIT = dict(initializer_range=0.2)  # at width 32 the default 0.02 leaves attention uniform


def _hf(name: str, family: str, make: Callable[[], nn.Module], example: Callable[[], Example] = _text, *,
        output: Optional[Callable[[Any], Tensor]] = None, fast: bool = False, doc: str = "",
        excluded: bool = False) -> Entry:
    return Entry(name=name, family=f"transformers/{family}", source="transformers", make=make, example=example,
                 output=output, dropout=True, fast=fast, needs="transformers", doc=doc, excluded=excluded)


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
        max_position_embeddings=64, num_labels=3, **_HF_INIT))


def _roberta() -> nn.Module:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    return RobertaForSequenceClassification(RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
        max_position_embeddings=64, num_labels=3, pad_token_id=1, **_HF_INIT))


def _distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    return DistilBertForSequenceClassification(DistilBertConfig(
        dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=100, max_position_embeddings=64, num_labels=3,
        **_HF_INIT))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64,
                                      bos_token_id=1, eos_token_id=2, **_HF_INIT))


def _decoder(kind: str, tied: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        config_cls = getattr(transformers, f"{kind}Config")
        model_cls = getattr(transformers, f"{kind}ForCausalLM")
        # One key/value head: grouped-query attention, non-square k/v projections.
        return model_cls(config_cls(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            vocab_size=100, max_position_embeddings=64, pad_token_id=0, attention_dropout=0.1,
            tie_word_embeddings=tied, **_HF_INIT))

    return make


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(
        d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, vocab_size=100,
        decoder_start_token_id=0, pad_token_id=0, dropout_rate=0.1))


def _t5_example() -> Example:
    ids = _ids()
    return (), {"input_ids": ids, "decoder_input_ids": ids[:, :5]}


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=NUM_CLASSES, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        **_HF_INIT))


def _clip_text() -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=100,
        max_position_embeddings=16, attention_dropout=0.1, initializer_factor=10.0, bos_token_id=1, eos_token_id=2))


def _clip_vision() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, attention_dropout=0.1, initializer_factor=10.0))


_MEL, _FRAMES = 16, 16


def _whisper_encoder() -> nn.Module:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder(WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=_MEL,
        max_source_positions=_FRAMES // 2, dropout=0.1, attention_dropout=0.1, init_std=0.2))


def _audio() -> Example:
    return (torch.randn(BATCH, _MEL, _FRAMES, generator=_gen()),), {}


_HF = [
    _hf("hf_bert", "bert", _bert, fast=True, doc="BertForSequenceClassification, hidden 32, 2 layers"),
    _hf("hf_roberta", "roberta", _roberta),
    _hf("hf_distilbert", "distilbert", _distilbert),
    _hf("hf_gpt2", "gpt2", _gpt2, doc="GPT2LMHeadModel: Conv1D blocks (adapted as Linear), lm_head tied to wte"),
    _hf("hf_llama_untied", "llama", _decoder("Llama", tied=False), fast=True,
        doc="LlamaForCausalLM, GQA, bias-free, separate lm_head"),
    _hf("hf_llama_tied", "llama", _decoder("Llama", tied=True), doc="LlamaForCausalLM, lm_head tied to embed_tokens"),
    _hf("hf_mistral", "mistral", _decoder("Mistral", tied=False)),
    _hf("hf_qwen2", "qwen2", _decoder("Qwen2", tied=False), doc="Qwen2ForCausalLM (biased q/k/v)"),
    _hf("hf_t5", "t5", _t5, _t5_example, doc="T5ForConditionalGeneration, given decoder_input_ids"),
    _hf("hf_vit", "vit", _hf_vit, _image(32)),
    _hf("hf_clip_text", "clip", _clip_text),
    _hf("hf_clip_vision", "clip", _clip_vision, _image(32)),
    _hf("hf_whisper_encoder", "whisper", _whisper_encoder, _audio, doc="WhisperEncoder (Conv1d stem)"),
]

REGISTRY: dict[str, Entry] = {e.name: e for e in _TIMM + _TORCHVISION + _HF}
FAST = [name for name, e in REGISTRY.items() if e.fast]

#: timm families with no entry, and why (every other family of timm 1.0 has one).
NOT_REGISTERED: dict[str, str] = {
    "nextvit": "nextvit_small builds only at its stock depths (any smaller `depths` raises IndexError in "
               "NextViT.__init__); stock it is 31M parameters and ~2.7 s per forward on 2 CPU cores",
    "mobilenetv5": "mobilenetv5_300m is 294M parameters (5 s to build); even mobilenetv5_base at "
                   "channel_multiplier=0.125 takes 0.6-3.6 s per 64 px forward on 2 CPU cores",
}


# ------------------------------------------------------------------------------ rows


@dataclass
class Row:
    name: str
    family: str
    source: str
    status: str = "pass"  # pass | fail | excluded | build error
    stage: Optional[str] = None  # the check that failed
    message: str = ""
    front_end: Optional[str] = None
    trace_failure: Optional[str] = None
    adapted: Optional[int] = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    other_weights: dict[str, int] = field(default_factory=dict)  # non-Linear/Conv2d weight modules, left alone
    base_random_in_train: Optional[bool] = None
    metrics: dict[str, float] = field(default_factory=dict)  # measured errors, for the margins
    expected_excluded: bool = False
    seconds: float = 0.0
    current: str = field(default="build", repr=False, compare=False)  # the check running now

    @property
    def ok(self) -> bool:
        """Passed, or (expected to be) excluded entirely at plan time with every reason."""
        return self.status == "pass" or (self.status == "excluded" and self.expected_excluded)

    @property
    def result(self) -> str:
        """One line: pass, or the stage and message of the first failure."""
        if self.status == "pass":
            return "pass"
        if self.status == "excluded":
            return f"excluded at plan time: {self.message}"
        return f"{self.status} [{self.stage}]: {self.message}"

    def skipped_summary(self, limit: int = 3, collapse: bool = True) -> str:
        """The skipped layers grouped by reason: ``reason (N: a, b, ...)``; with ``collapse``,
        dotted names inside a reason (what a weight is tied to) read ``…`` so alike reasons group."""
        groups: dict[str, list[str]] = {}
        for name, why in self.skipped:
            key = re.sub(r"\b\w+(?:\.\w+)+(?:, \w+(?:\.\w+)+)*", "…", str(why)) if collapse else str(why)
            groups.setdefault(key, []).append(name)
        parts = []
        for why, names in groups.items():
            shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
            parts.append(f"{why} ({len(names)}: {shown})")
        return "; ".join(parts)


class CheckFailed(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(f"[{stage}] {message}")
        self.stage, self.message = stage, message


def _one_line(exc: BaseException, limit: int = 240) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_path(path: str) -> str:
    path = path.replace("\\", "/")
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    for marker in ("/glorac/", "/tests/"):
        if marker in path:
            return marker.strip("/") + "/" + path.rsplit(marker, 1)[1]
    return path


def _where(exc: BaseException) -> str:
    """Where an unexpected exception came from: the innermost frame, and the innermost
    glorac frame on the way when that is elsewhere."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb or tb[-1].filename == __file__:
        return ""  # none, or raised here on purpose: the message says it all
    where = f"{_short_path(tb[-1].filename)}:{tb[-1].lineno}"
    ours = [f for f in tb if "/glorac/" in f.filename.replace("\\", "/")]
    if ours and ours[-1] is not tb[-1]:
        where += f", via {_short_path(ours[-1].filename)}:{ours[-1].lineno}"
    return f" (at {where})"


class _Stage:
    """``with _Stage("name"):`` turns any exception inside into CheckFailed("name", ...)."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, CheckFailed) or not isinstance(exc, Exception):
            return False
        raise CheckFailed(self.name, _one_line(exc) + _where(exc)) from exc


def rel_err(got: Tensor, want: Tensor) -> float:
    """max |got − want| / max |want|, in float64 (inf on a shape mismatch)."""
    if got.shape != want.shape:
        return math.inf
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def _forward(entry: Entry, model: nn.Module, example: Example) -> Tensor:
    args, kwargs = example
    with torch.no_grad():
        out = entry.main_output(model(*args, **kwargs))
    if type(out) is not Tensor:  # e.g. a FakeTensor left behind in a module's cache
        raise TypeError(f"the forward returned a {type(out).__name__}, not a plain torch.Tensor")
    return out.detach().clone()


def _compare(stage: str, what: str, got: Tensor, want: Tensor, tol: float) -> float:
    if got.shape != want.shape:
        raise CheckFailed(stage, f"{what}: output shape {tuple(got.shape)} != {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise CheckFailed(stage, f"{what}: output has non-finite values")
    err = rel_err(got, want)
    if not err <= tol:
        raise CheckFailed(stage, f"{what}: max|Δ|/max|y| = {err:.2e} > {tol:.0e}")
    return err


# ------------------------------------------------------------------- model snapshots


@dataclass
class _Snapshot:
    state: dict[str, Tensor]
    modules: list[tuple[str, int, str]]  # (name, id, class name)


def _snapshot(model: nn.Module) -> _Snapshot:
    return _Snapshot(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        modules=[(n, id(m), type(m).__name__) for n, m in model.named_modules()],
    )


def _unchanged(stage: str, model: nn.Module, before: _Snapshot) -> None:
    now = model.state_dict()
    added, removed = sorted(set(now) - set(before.state)), sorted(set(before.state) - set(now))
    if added or removed:
        raise CheckFailed(stage, "state_dict keys changed: "
                          + ", ".join([f"+{k}" for k in added[:3]] + [f"-{k}" for k in removed[:3]])
                          + (" ..." if len(added) + len(removed) > 6 else ""))
    for key, old in before.state.items():
        new = now[key]
        if new.shape != old.shape or new.dtype != old.dtype or not torch.equal(new.detach(), old):
            delta = ((new.detach().double() - old.double()).abs().max().item()
                     if new.shape == old.shape else float("nan"))
            raise CheckFailed(stage, f"tensor `{key}` changed (max|Δ| = {delta:.3g})")
    modules = [(n, id(m), type(m).__name__) for n, m in model.named_modules()]
    if modules != before.modules:
        old = {n: (i, c) for n, i, c in before.modules}
        new_names = [n for n, _, _ in modules if n not in old]
        if new_names:
            raise CheckFailed(stage, f"new submodules in the caller's model: {', '.join(new_names[:3])}"
                              f"{' ...' if len(new_names) > 3 else ''}")
        for n, i, c in modules:
            if n in old and old[n][0] != i:
                raise CheckFailed(stage, f"submodule `{n or '<root>'}` replaced ({old[n][1]} → {c})")
        gone = [n for n in old if n not in {m for m, _, _ in modules}]
        raise CheckFailed(stage, f"submodules removed from the caller's model: {', '.join(gone[:3])}")


def _other_weight_modules(model: nn.Module, planned: set[str]) -> dict[str, int]:
    """Modules with a ≥2-D weight that are not Linear/Conv2d/Embedding and not planned sites
    (Conv1d, GPT-2's Conv1D, LSTM, ...): left alone by a `type Linear | Conv2d` spec."""
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding, nn.EmbeddingBag)) or name in planned:
            continue
        if any(p.dim() >= 2 and "weight" in n for n, p in module.named_parameters(recurse=False)):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def _nontrivial_structure(supernet) -> glorac.Structure:
    """A random structure (tests/reference.py) in which some layer uses some tensor."""
    for seed in range(20):
        structure = random_structure(supernet, seed)
        if any(k.kind != "none" for choice in structure.layers.values() for _, k in choice.items()):
            return structure
    return structure


# ---------------------------------------------------------------------------- check


def check(entry: Entry) -> Row:
    """Run the whole contract on ``entry``; never raises (KeyboardInterrupt aside)."""
    row = Row(name=entry.name, family=entry.family, source=entry.source, expected_excluded=entry.excluded)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            _run(entry, row)
    except CheckFailed as failure:
        row.status = "build error" if failure.stage == "build" else "fail"
        row.stage, row.message = failure.stage, failure.message
    except Exception as exc:  # raised outside an expected spot: charged to the check running
        row.status = "build error" if row.current == "build" else "fail"
        row.stage, row.message = row.current, _one_line(exc) + _where(exc)
    row.seconds = time.perf_counter() - start
    return row


def _record_plan(row: Row, plan) -> None:
    row.front_end = plan.front_end
    row.trace_failure = plan.trace_failure
    row.adapted = len(plan.layers)
    row.skipped = [(name, why) for name, why in plan.skipped]


def _run(entry: Entry, row: Row) -> None:
    with _Stage(row.current):
        if not entry.available:
            raise CheckFailed("build", f"{entry.needs} is not installed")
        model = entry.build()
        example = entry.example()
        y0 = _forward(entry, model, example)
        if not torch.isfinite(y0).all():
            raise CheckFailed("build", "the base model's output has non-finite values")
        before = _snapshot(model)

    # 1. compile
    stage = row.current = "compile"
    try:
        supernet = glorac.build_supernet(spec(), model)
    except Exception as exc:
        plan = None
        try:
            plan = glorac.plan(spec(), model)
            _record_plan(row, plan)
        except Exception:
            pass
        if isinstance(exc, glorac.PlanError) and (plan is None or not plan.layers):
            # Nothing adaptable: an answer (not a failure) when the plan says why.
            row.status = "excluded"
            row.message = row.skipped_summary() if plan is not None and plan.skipped else _one_line(exc)
            if plan is not None:
                row.other_weights = _other_weight_modules(model, {n for n, _ in plan.skipped})
            return
        raise CheckFailed(stage, _one_line(exc) + _where(exc)) from exc
    plan = supernet.plan
    _record_plan(row, plan)
    planned = {lp.qualname for lp in plan.layers} | {name for name, _ in plan.skipped}
    row.other_weights = _other_weight_modules(model, planned)

    # 2. every Linear / Conv2d is adapted or skipped with a reason
    stage = row.current = "plan accounts for every layer"
    silent = [(n, type(m).__name__) for n, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in planned]
    if silent:
        shown = ", ".join(f"{n} ({c})" for n, c in silent[:3])
        raise CheckFailed(stage, f"{len(silent)} Linear/Conv2d layer(s) neither adapted nor skipped with a "
                          f"reason: {shown}{' ...' if len(silent) > 3 else ''}")
    blank = [n for n, why in plan.skipped if not str(why).strip()]
    if blank:
        raise CheckFailed(stage, f"{len(blank)} skipped layer(s) without a reason, e.g. {blank[0]}")

    # 3. the caller's model is untouched
    stage = row.current = "caller's model unchanged by compile"
    _unchanged(stage, model, before)
    y_base = _forward(entry, model, example)
    _compare(stage, "caller's model after compile vs before", y_base, y0, INIT_TOL)

    # 4. the supernet of an eval model is in eval mode (what .train()/.eval() toggle)
    stage = row.current = "mode"
    if supernet.training != model.training:
        raise CheckFailed(stage, f"supernet.training is {supernet.training} after compiling a model "
                          f"with training={model.training}")

    # 5. at init the supernet is the base model, deterministically in eval mode
    stage = row.current = "init output"
    with _Stage(stage):
        y_init = _forward(entry, supernet, example)
    row.metrics["init"] = _compare(stage, "supernet at init vs base model", y_init, y0, INIT_TOL)
    stage = row.current = "eval determinism"
    with _Stage(stage):
        y_again = _forward(entry, supernet, example)
    if not torch.equal(y_again, y_init):
        raise CheckFailed(stage, f"two eval-mode forwards differ (max|Δ| = {(y_again - y_init).abs().max():.3g})")

    # ... whatever structure is active: fresh adapters change nothing
    stage = row.current = "init output"
    with _Stage(stage):
        structure = _nontrivial_structure(supernet)
        supernet.activate(structure)
        y_struct = _forward(entry, supernet, example)
    row.metrics["init_structure"] = _compare(
        stage, "supernet at init, random structure active, vs base model", y_struct, y0, INIT_STRUCTURE_TOL)

    # 6. random adapters and a random structure move the output
    stage = row.current = "adapted output moves"
    with _Stage(stage):
        perturb(supernet, seed=SEED, scale=PERTURB_SCALE)
        y1 = _forward(entry, supernet, example)
    if y1.shape != y0.shape or not torch.isfinite(y1).all():
        raise CheckFailed(stage, f"adapted output {'has non-finite values' if y1.shape == y0.shape else 'shape'}"
                          f"{'' if y1.shape == y0.shape else f' {tuple(y1.shape)} != {tuple(y0.shape)}'}")
    moved = row.metrics["moved"] = rel_err(y1, y0)
    if not moved > MOVE_MIN:
        raise CheckFailed(stage, f"random adapters moved the output by only {moved:.2e} (≤ {MOVE_MIN:.0e})")

    # 7. ... without touching the caller's model
    stage = row.current = "caller's model unchanged by adapted forward"
    _unchanged(stage, model, before)
    with _Stage(stage):
        y_base = _forward(entry, model, example)
    _compare(stage, "caller's model after adapting the supernet vs before", y_base, y0, INIT_TOL)

    # 8. fold
    stage = row.current = "fold"
    with _Stage(stage):
        folded = glorac.fold(supernet, structure)
        folded.eval()
        foreign = sorted({type(m).__name__ for m in folded.modules() if type(m).__module__.startswith("glorac")})
        if foreign:
            raise CheckFailed(stage, f"folded model holds glorac modules: {', '.join(foreign)}")
        y_fold = _forward(entry, folded, example)
    row.metrics["fold"] = _compare(stage, "folded model vs supernet", y_fold, y1, FOLD_TOL)

    # 9. the folded state dict is a stock model's
    stage = row.current = "strict load"
    with _Stage(stage):
        fresh = entry.build()
        for key in plan.added_biases(structure):
            layer = fresh.get_submodule(key.rsplit(".", 1)[0])
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        fresh.load_state_dict(folded.state_dict(), strict=True)
        y_load = _forward(entry, fresh, example)
    row.metrics["load"] = _compare(stage, "stock model with the folded state dict vs supernet", y_load, y1,
                                   FOLD_TOL)

    # 10. train mode is random iff the base model's is; eval mode deterministic again
    stage = row.current = "train/eval mode"
    with _Stage(stage):
        # The supernet alone first: its own .train() must reach whatever drops.
        supernet.train()
        s1, s2 = _forward(entry, supernet, example), _forward(entry, supernet, example)
        supernet.eval()
        model.train()
        b1, b2 = _forward(entry, model, example), _forward(entry, model, example)
        model.eval()
        base_random, super_random = not torch.equal(b1, b2), not torch.equal(s1, s2)
        row.base_random_in_train = base_random
        supernet.eval()
        e1, e2 = _forward(entry, supernet, example), _forward(entry, supernet, example)
    if base_random != super_random:
        raise CheckFailed(stage, "in train mode the base model's forward is "
                          f"{'random' if base_random else 'deterministic'} but the supernet's is "
                          f"{'random' if super_random else 'deterministic'}")
    if not torch.equal(e1, e2):
        raise CheckFailed(stage, "after .train() then .eval(), two eval forwards differ")
