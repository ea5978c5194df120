"""Where a model's weights are: a named folder, the local hub cache, an offline pack, or the hub.

Files only, no model library imported (``zoo.models`` builds), so a listing of the zoo
can say for each model whether it would load on this machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.errors import AftzooError
from storage.settings import get_settings
from zoo import packs
from zoo.spec import ModelSpec


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


class WeightsUnavailable(AftzooError, RuntimeError):
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


def cache_repo(spec: ModelSpec) -> str | None:
    """The Hugging Face repo whose cache holds ``spec``'s weights (a pack's image model: timm's own repo)."""
    if spec.source == "pack" and spec.modality == "image" and spec.hub_id and "/" not in spec.hub_id:
        return f"timm/{spec.hub_id}"
    return spec.hub_repo


def _hf_cached(spec: ModelSpec) -> str | None:
    """A file or snapshot folder of ``spec`` in the local Hugging Face cache, or None. Never downloads."""
    repo = cache_repo(spec)
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
                # An open_clip repo with its own config loads whole from its folder ("local-dir:"),
                # so architectures open_clip does not list by name load too.
                if lib == "open_clip" and find("open_clip_config.json"):
                    return str(Path(hit).parent)
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
    ways.append(f"pre-populate the Hugging Face cache (`hf download {repo}`)" if repo
                else "pre-populate the Hugging Face cache")
    ways.append("or set AFTZOO_OFFLINE=0 to download it from the hub")
    return _one_line(f"no weights for {spec.name!r} ({spec.source} {what}) on this machine and downloads are off: "
                     + ", ".join(ways))


def resolve_weights(spec: ModelSpec, weights: str | Path | None = None) -> WeightsSource:
    """Where ``spec``'s weights will come from; only looks at files, imports no model library."""
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


def weights_status(spec: ModelSpec) -> str | None:
    """A short word for where ``spec``'s weights are here (folder, cache, pack, random), or None."""
    if spec.path:
        return "folder" if Path(spec.path).exists() else None
    if spec.random_init:
        return "random"
    if _hf_cached(spec):
        return "cache"
    if _pack_location(spec)[0]:
        return "pack"
    return None
