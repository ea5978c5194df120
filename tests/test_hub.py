"""Models by hub name (timm:, hf:, open_clip:, hf-hub:), from a Hugging Face cache the tests build.

Each family gets a tiny random model saved as its library saves it, in the hub cache's own
layout (``models--org--name/snapshots/<hash>/...`` and ``refs/main``); everything loads with
``HF_HUB_OFFLINE=1`` (the session runs with ``AFTZOO_OFFLINE=1``), nothing touches the network.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import zoo
from tests.helpers import run_cli
from tests.local_hub import save_tiny_dinov2
from zoo import hub, registry
from zoo.models import load
from zoo.registry import UnknownModel, WeightsUnavailable

ORG = "tiny-org"


def _snapshot(cache: Path, repo: str) -> Path:
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / "5f0c0de5"
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("5f0c0de5")
    return snapshot


def _dinov2(cache: Path) -> str:
    save_tiny_dinov2(_snapshot(cache, f"{ORG}/dinov2-tiny"))
    return f"hf:{ORG}/dinov2-tiny"


def _text(cache: Path, kind: str) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model

    from zoo import packs

    torch.manual_seed(0)
    snapshot = _snapshot(cache, f"{ORG}/{kind}-tiny")
    tokenizer = AutoTokenizer.from_pretrained(packs.locate("minilm-l6"))
    tokenizer.save_pretrained(snapshot)
    if kind == "bert":
        net = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64))
    else:
        net = GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    net.save_pretrained(snapshot)
    return f"hf:{ORG}/{kind}-tiny"


def _timm_repo(cache: Path) -> str:
    import timm
    from timm.models._hub import save_for_hf

    snapshot = _snapshot(cache, f"{ORG}/resnet-tiny")
    save_for_hf(timm.create_model("test_resnet", pretrained=False, num_classes=0), snapshot)
    return f"hf-hub:{ORG}/resnet-tiny"


def _timm_tagged(cache: Path) -> str:
    import timm
    from safetensors.torch import save_file

    snapshot = _snapshot(cache, "timm/test_resnet.r160_in1k")
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(snapshot / "model.safetensors"))
    return "timm:test_resnet.r160_in1k"


_CLIP_CFG = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


def _open_clip_repo(cache: Path) -> str:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    snapshot = _snapshot(cache, f"{ORG}/clip-tiny")
    model = open_clip.model.CLIP(**_CLIP_CFG)
    save_file(model.state_dict(), str(snapshot / "open_clip_model.safetensors"))
    (snapshot / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": _CLIP_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    return f"hf-hub:{ORG}/clip-tiny"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding one tiny model of each family; the hub's constant points at it."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf-hub")
    names = {"dinov2": _dinov2(cache), "bert": _text(cache, "bert"), "gpt2": _text(cache, "gpt2"),
             "timm-repo": _timm_repo(cache), "timm": _timm_tagged(cache), "clip": _open_clip_repo(cache)}
    saved = constants.HF_HUB_CACHE
    constants.HF_HUB_CACHE = str(cache)
    yield {"root": cache, "names": names}
    constants.HF_HUB_CACHE = saved


@pytest.fixture
def forget(clean_registry):
    yield


def _images(n: int, size: int = 20) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_hub_names_map_to_registry_names():
    assert hub.spec_name("hf:facebook/dinov2-small") == "hf-facebook--dinov2-small"
    assert hub.spec_name("timm:convnext_tiny.fb_in22k") == "timm-convnext_tiny.fb_in22k"
    assert hub.spec_name("open_clip:ViT-B-32/laion2b_s34b_b79k") == "openclip-ViT-B-32--laion2b_s34b_b79k"
    assert hub.spec_name("hf-hub:timm/resnet18.a1_in1k") == "hfhub-timm--resnet18.a1_in1k"
    assert not hub.is_hub_name("dinov2-vit-s14") and hub.is_hub_name("hf:a/b")


def test_a_vision_model_by_hf_name_is_an_image_model(hub_cache, forget):
    spec = registry.resolve(hub_cache["names"]["dinov2"], persist=False)
    assert (spec.modality, spec.feature_dim, spec.feature_rule, spec.source) == ("image", 32, "pooled", "transformers")
    assert spec.image_size == 28 and spec.interpolation == "bicubic" and spec.family == "dinov2"
    assert spec.params and spec.params > 10_000  # read from the safetensors header
    assert zoo.get("hf:tiny-org/dinov2-tiny") is spec  # a pure look-up once resolved
    model = load(spec)
    assert model.source.kind == "cache"
    features = model.embed(_images(3))
    assert features.shape == (3, 32) and np.isfinite(features).all()


@pytest.mark.parametrize("kind, rule", [("bert", "cls"), ("gpt2", "last_token")])
def test_text_models_by_hf_name(hub_cache, forget, kind, rule):
    spec = registry.resolve(hub_cache["names"][kind], persist=False)
    assert (spec.modality, spec.feature_dim, spec.feature_rule) == ("text", 32, rule)
    assert spec.max_length == (64 if kind == "gpt2" else 512)
    features = load(spec).embed(["a short review", "another one, longer than the first"])
    assert features.shape == (2, 32) and np.isfinite(features).all()


def test_timm_by_tagged_name_and_by_hf_hub_repo(hub_cache, forget):
    tagged = registry.resolve(hub_cache["names"]["timm"], persist=False)
    assert tagged.source == "timm" and tagged.hf_repo == "timm/test_resnet.r160_in1k"
    assert tagged.image_size == 160 and tagged.modality == "image"
    model = load(tagged)
    assert model.source.kind == "cache" and model.embed(_images(2)).shape == (2, tagged.feature_dim)
    repo = registry.resolve(hub_cache["names"]["timm-repo"], persist=False)
    assert repo.source == "timm" and repo.hub_id == "test_resnet" and repo.hf_repo == f"{ORG}/resnet-tiny"
    assert load(repo).embed(_images(2)).shape == (2, repo.feature_dim)


def test_open_clip_by_hf_hub_repo_and_by_arch_and_tag(hub_cache, forget):
    spec = registry.resolve(hub_cache["names"]["clip"], persist=False)
    assert (spec.source, spec.feature_dim, spec.image_size, spec.mean) == ("open_clip", 16, 32, (0.5, 0.5, 0.5))
    features = load(spec).embed(_images(2))
    assert features.shape == (2, 16) and np.isfinite(features).all()
    named = registry.resolve("open_clip:ViT-B-32/laion2b_s34b_b79k", persist=False)  # open_clip's own tables
    assert named.feature_dim == 512 and named.hf_repo and named.pretrained_tag == "laion2b_s34b_b79k"


def test_an_absent_hub_model_fails_in_one_line_naming_the_fetch_command(hub_cache, forget):
    with pytest.raises(WeightsUnavailable) as info:
        registry.resolve("hf:nobody-here/absent-model")
    message = str(info.value)
    assert "\n" not in message and "`hf download nobody-here/absent-model`" in message
    assert "AFTZOO_OFFLINE=0" in message
    with pytest.raises(UnknownModel):
        registry.resolve("hf:not a repo")


def test_a_resolved_hub_model_is_persisted_for_later_sessions(hub_cache, forget):
    name = hub_cache["names"]["bert"]
    spec = registry.resolve(name)  # persist=True: recorded in the catalog
    registry.unregister(spec.name)
    with pytest.raises(UnknownModel):
        zoo.get(name)
    assert spec.name in registry.load_persisted()
    assert zoo.get(name) == spec


def _cli_env(hub_cache, home) -> dict:
    return {"HF_HUB_CACHE": str(hub_cache["root"]), "AFTZOO_HOME": str(home), "HF_HUB_OFFLINE": "1",
            "AFTZOO_OFFLINE": "1"}


def test_cli_lists_and_extracts_a_cached_hub_model_offline(hub_cache, tmp_path):
    env = _cli_env(hub_cache, tmp_path / "home")
    listed = run_cli("models", "--pattern", "dinov2", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    cached = rows["hf:tiny-org/dinov2-tiny"]
    assert cached["modality"] == "image" and cached["feature_dim"] == 32 and cached["weights"] == "cache"
    assert "dinov2-vit-s14" in rows
    out = run_cli("extract", "-m", "hf:tiny-org/dinov2-tiny", "-d", "digits", "--limit", "16", "--json", env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)[0]
    assert result["shape"] == [16, 32] and result["model"] == "hf-tiny-org--dinov2-tiny"
    again = run_cli("models", "--pattern", "dinov2", "--json", env=env)  # registered and persisted now
    names = [r["name"] for r in json.loads(again.stdout)]
    assert "hf-tiny-org--dinov2-tiny" in names and "hf:tiny-org/dinov2-tiny" not in names
    absent = run_cli("extract", "-m", "hf:nobody-here/absent-model", "-d", "digits", env=env)
    assert absent.returncode != 0 and "hf download nobody-here/absent-model" in absent.stderr
    assert "Traceback" not in absent.stderr and len(absent.stderr.strip().splitlines()) == 1


def test_version_flag():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("aftzoo ")
    assert os.environ.get("AFTZOO_OFFLINE") == "1"
