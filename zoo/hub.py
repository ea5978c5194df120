"""Specs inferred from the model libraries' own configs: hub names and checkpoint folders.

The name forms a user may type anywhere a model name is taken:

* ``timm:NAME`` - any timm model, best with its pretrained tag (``timm:convnext_tiny.fb_in22k``);
* ``open_clip:ARCH/PRETRAINED`` - an open_clip architecture and tag (``open_clip:ViT-B-32/laion2b_s34b_b79k``);
* ``hf:ORG/NAME`` - a transformers model: text encoders, decoders, encoder-decoders, and
  vision models such as ``hf:facebook/dinov2-small`` (an image model, pooled features);
* ``hf-hub:ORG/NAME`` - a Hugging Face repo saved by timm (``config.json`` with an
  ``architecture``) or open_clip (``open_clip_config.json``), or any transformers repo.

A hub name becomes a spec from the configs in the local Hugging Face cache; with
``AFTZOO_OFFLINE=0`` the few small config files are downloaded first, never the weights.
Its registry name is the hub name with ``:`` and ``/`` spelled out (``hf-facebook--dinov2-small``).
"""
from __future__ import annotations

import difflib
import json
import re
import struct
from pathlib import Path
from typing import Any, Iterable

from storage.settings import get_settings
from zoo.spec import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD, ModelSpec, UnknownModel
from zoo.weights import WeightsUnavailable

PREFIXES = {"timm:": "timm-", "open_clip:": "openclip-", "hf-hub:": "hfhub-", "hf:": "hf-"}
_REPO = re.compile(r"[\w.-]+/[\w.-]+")
_INTERPOLATION = {0: "bilinear", 1: "bilinear", 2: "bilinear", 3: "bicubic"}  # PIL resample codes


def is_hub_name(name: Any) -> bool:
    return isinstance(name, str) and name.strip().startswith(tuple(PREFIXES))


def spec_name(name: str) -> str:
    """The registry name of a hub name: ``hf:facebook/dinov2-small`` -> ``hf-facebook--dinov2-small``."""
    name = name.strip()
    for prefix, short in PREFIXES.items():
        if name.startswith(prefix):
            rest = name[len(prefix):].strip().replace("/", "--")
            return (short + re.sub(r"[^A-Za-z0-9._-]", "_", rest))[:128]
    return name


def hub_file(repo: str, filename: str) -> str | None:
    """``filename`` of the model repo ``repo`` from the local cache, downloaded first when downloads are on."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename)
    except Exception:  # a malformed repo id: treated as absent, the caller says what to do
        return None
    if isinstance(found, str):
        return found
    if get_settings().offline:
        return None
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(repo, filename)
    except LocalEntryNotFoundError:  # the hub did not answer (and the cache has no copy)
        raise WeightsUnavailable(f"could not reach the hub at {constants.ENDPOINT} for {repo}: check the network, or "
                                 f"fetch it on a machine with one (`hf download {repo}`) and copy the Hugging Face "
                                 "cache here") from None
    except RepositoryNotFoundError:
        raise UnknownModel(f"the hub at {constants.ENDPOINT} has no model repo {repo}: check the name (ORG/NAME), "
                           "or log in with `hf auth login` if it is private or gated") from None
    except EntryNotFoundError:
        return None


def _read_json(path: str | None) -> dict:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fetch the model again with `hf download`") from None
    return data if isinstance(data, dict) else {}


def _not_here(name: str, repo: str) -> WeightsUnavailable:
    return WeightsUnavailable(f"{name} is not in the Hugging Face cache and downloads are off (AFTZOO_OFFLINE=1): "
                              f"fetch it with `hf download {repo}`, or set AFTZOO_OFFLINE=0")


def spec_from_name(name: str, **overrides) -> ModelSpec:
    """The spec of a hub name (see the module docstring), inferred from the model's own configs."""
    name = name.strip()
    prefix = next(p for p in PREFIXES if name.startswith(p))
    ident = name[len(prefix):].strip()
    base = dict(name=spec_name(name), description=f"{name} (inferred from its config)")
    if prefix == "timm:":
        if not ident:
            raise UnknownModel("timm: needs a model name, e.g. timm:convnext_tiny.fb_in22k")
        return infer_timm({**base, "source": "timm", "hub_id": _with_tag(ident), **overrides})
    if prefix == "open_clip:":
        arch, _, tag = ident.partition("/")
        return infer_open_clip({**base, "source": "open_clip", "hub_id": arch, "pretrained_tag": tag or None,
                                 **overrides})
    if not _REPO.fullmatch(ident):
        raise UnknownModel(f"{prefix} takes a Hugging Face repo id ORG/NAME; got {ident!r}")
    if prefix == "hf-hub:":
        if oc := hub_file(ident, "open_clip_config.json"):
            return _open_clip_from_config(_read_json(oc), ident, {**base, **overrides})
    config = hub_file(ident, "config.json")
    if config is None:
        if get_settings().offline:
            raise _not_here(name, ident)
        raise UnknownModel(f"{ident} has no config.json on the Hugging Face hub; is it a model repo?")
    cfg = _read_json(config)
    params = _safetensors_params([p for p in Path(config).parent.glob("*.safetensors")])
    if "architecture" in cfg:  # saved by timm (push_to_hub / save_for_hf)
        return _timm_from_config(cfg, ident, {**base, "params": params, **overrides})
    sentence = hub_file(ident, "modules.json") is not None
    kw = {**base, "source": "sentence-transformers" if sentence else "transformers", "hub_id": ident,
          "params": params, **overrides}
    return infer_transformers(kw, cfg, _read_json(hub_file(ident, "preprocessor_config.json")))


def _with_tag(name: str) -> str:
    """A timm name with its default pretrained tag, where timm knows one (the weights' repo follows the tag)."""
    import timm

    if "." in name:
        return name
    tagged = timm.list_pretrained(f"{name}.*")
    return tagged[0] if tagged else name


def _timm_from_config(cfg: dict, repo: str, kw: dict) -> ModelSpec:
    pcfg = cfg.get("pretrained_cfg", {})
    arch = cfg["architecture"]
    base = dict(family=arch.split("_")[0], modality="image", role=guess_role(kw.get("params")), source="timm",
                hub_id=arch, hf_repo=repo, feature_dim=cfg.get("num_features"), feature_rule="pooled",
                image_size=pcfg.get("input_size", (3, 224, 224))[-1], mean=tuple(pcfg.get("mean", IMAGENET_MEAN)),
                std=tuple(pcfg.get("std", IMAGENET_STD)), interpolation=pcfg.get("interpolation", "bicubic"),
                licence=pcfg.get("license"), create_kwargs=dict(cfg.get("model_args") or {}))
    return ModelSpec(**{**base, **kw})


def _open_clip_from_config(cfg: dict, repo: str, kw: dict) -> ModelSpec:
    model_cfg, pre = cfg.get("model_cfg", {}), cfg.get("preprocess_cfg", {})
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    base = dict(family="openclip", modality="image", role="teacher", source="open_clip", hub_id=f"hf-hub:{repo}",
                hf_repo=repo, feature_dim=model_cfg.get("embed_dim"), feature_rule="pooled",
                image_size=size if isinstance(size, int) else size[0], mean=tuple(pre.get("mean", OPENAI_MEAN)),
                std=tuple(pre.get("std", OPENAI_STD)))
    return ModelSpec(**{**base, **kw})


def _is_vision(cfg: dict, preprocessor: dict) -> bool:
    # Vision transformers (DINOv2, ViT, ConvNeXt, Swin...) read pixels and have no vocabulary.
    return ("num_channels" in cfg and "vocab_size" not in cfg) or (
        "image_mean" in preprocessor and "vocab_size" not in cfg and "text_config" not in cfg)


def _image_settings(cfg: dict, pre: dict) -> dict:
    size = pre.get("crop_size") or pre.get("size") or cfg.get("image_size") or 224
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or 224
    elif isinstance(size, (list, tuple)):
        size = size[0]
    return dict(image_size=int(size), mean=tuple(pre.get("image_mean") or IMAGENET_MEAN),
                std=tuple(pre.get("image_std") or IMAGENET_STD),
                interpolation=_INTERPOLATION.get(pre.get("resample"), "bicubic"))


def guess_role(params: int | None) -> str:
    return "teacher" if params is None or params > 80_000_000 else "both"


def infer_timm(kw: dict) -> ModelSpec:
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
    base = dict(family=arch.split("_")[0], modality="image", role=guess_role(params), params=params,
                feature_dim=model.num_features, feature_rule="pooled", image_size=size,
                mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                interpolation=cfg.get("interpolation", "bicubic"), licence=cfg.get("license"),
                hf_repo=cfg.get("hf_hub_id") or None)
    return ModelSpec(**{**base, **kw})


def infer_open_clip(kw: dict) -> ModelSpec:
    import open_clip

    arch = kw.get("hub_id")
    if not arch or arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch or "", open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModel(f"open_clip has no model {arch!r}{hint}")
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


def infer_transformers(kw: dict, cfg: dict | None = None, preprocessor: dict | None = None) -> ModelSpec:
    hub_id = kw.get("hub_id")
    if not hub_id:
        raise ValueError(f"a {kw.get('source')} model needs hub_id, e.g. 'FacebookAI/roberta-base'")
    if cfg is None:  # a config already in the local Hugging Face cache tells the architecture; no download
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(hub_id, "config.json")
            cfg = json.loads(Path(found).read_text()) if isinstance(found, str) else {}
        except Exception:
            cfg = {}
    preprocessor = preprocessor or {}
    family = cfg.get("model_type") or hub_id.split("/")[-1].split("-")[0].lower()
    if _is_vision(cfg, preprocessor):
        base = dict(family=family, modality="image", role=guess_role(kw.get("params")),
                    feature_dim=_hidden_size(cfg) or _last(cfg.get("hidden_sizes")), feature_rule="pooled",
                    **_image_settings(cfg, preprocessor))
        return ModelSpec(**{**base, **kw})
    sentence = kw.get("source") == "sentence-transformers"
    limit = cfg.get("max_position_embeddings") or cfg.get("n_positions") or 512
    base = dict(family=family, modality="text", role="teacher" if kw.get("params") is None else
                guess_role(kw.get("params")), feature_dim=_hidden_size(cfg),
                max_length=min(512, limit) if isinstance(limit, int) else 512,
                feature_rule="sentence" if sentence else _rule_for(cfg.get("model_type"),
                                                                   cfg.get("architectures") or (), hub_id))
    return ModelSpec(**{**base, **kw})


def _last(values) -> int | None:
    return values[-1] if isinstance(values, list) and values and isinstance(values[-1], int) else None


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
    base["role"] = guess_role(base.get("params"))
    return ModelSpec(**{**base, **overrides})




def cached_hub_names() -> list[str]:
    """The hub names of the model repos in the local Hugging Face cache (``hf-hub:`` for timm and
    open_clip repos, ``hf:`` for transformers ones); reads two small files per repo, never the weights."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE)
    names = []
    for repo_dir in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        repo = repo_dir.name[len("models--"):].replace("--", "/", 1)
        try:
            snapshot = repo_dir / "snapshots" / (repo_dir / "refs" / "main").read_text().strip()
        except OSError:
            continue
        if (snapshot / "open_clip_config.json").is_file():
            names.append(f"hf-hub:{repo}")
        elif (snapshot / "config.json").is_file():
            try:
                timm_saved = "architecture" in json.loads((snapshot / "config.json").read_text())
            except (OSError, ValueError):
                continue
            names.append(f"hf-hub:{repo}" if timm_saved else f"hf:{repo}")
    return names
