"""What a model is: the frozen ``ModelSpec``, with everything needed to build it and extract its features.

No weights and no model library here; ``zoo.registry`` holds the specs by name, ``zoo.hub``
infers them from the model libraries' own configs, ``zoo.weights`` finds their files.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from storage.errors import AftzooError

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


class UnknownModel(AftzooError, LookupError):
    """A model name the registry does not know."""


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
