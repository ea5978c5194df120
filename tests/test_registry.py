"""The model registry: entries, look-ups, registration of a user's own models, weight resolution."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

import zoo
from storage.settings import reset_settings
from zoo import registry
from zoo.prompts import DEFAULT_PROMPT, format_prompt, prompt_for
from zoo.registry import ModelSpec, UnknownModel, WeightsUnavailable, resolve_weights, weights_status


# A throw-away AFTZOO_HOME (offline, as every test session is) and a registry restored after each test.
pytestmark = pytest.mark.usefixtures("home", "clean_registry")


PAPER_ZOO = {
    "dinov2-vit-s14": "vit_small_patch14_dinov2.lvd142m", "dinov2-vit-b14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2-vit-l14": "vit_large_patch14_dinov2.lvd142m", "dinov2-vit-g14": "vit_giant_patch14_dinov2.lvd142m",
    "openclip-vit-b-32": "ViT-B-32", "openclip-vit-l-14": "ViT-L-14", "openclip-vit-h-14": "ViT-H-14",
    "openclip-vit-bigg-14": "ViT-bigG-14",
    "bit-r50x1": "resnetv2_50x1_bit.goog_in21k", "bit-r50x3": "resnetv2_50x3_bit.goog_in21k",
    "bit-r101x1": "resnetv2_101x1_bit.goog_in21k", "bit-r101x3": "resnetv2_101x3_bit.goog_in21k",
    "bit-r152x2": "resnetv2_152x2_bit.goog_in21k", "bit-r152x4": "resnetv2_152x4_bit.goog_in21k",
    "llama2-7b": "meta-llama/Llama-2-7b-hf", "llama2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "flan-t5-small": "google/flan-t5-small", "flan-t5-base": "google/flan-t5-base",
    "flan-t5-large": "google/flan-t5-large", "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium", "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl", "vit-s16": "vit_small_patch16_224.augreg_in21k",
    "mixer-b16": "mixer_b16_224.goog_in21k_ft_in1k", "resnet50": "resnet50.a1_in1k",
    "bert-small": "prajjwal1/bert-small", "distilbert": "distilbert-base-uncased",
}


def test_the_zoo_has_every_model_the_product_names():
    names = set(zoo.list_models())
    assert set(PAPER_ZOO) <= names
    assert {"minilm-l6", "mpnet-base", "efficientnet-lite0", "efficientnet-lite2",
            "resnet18-small", "vit-tiny-small"} <= names
    for name, hub_id in PAPER_ZOO.items():
        assert zoo.get(name).hub_id == hub_id


@pytest.mark.parametrize("name, family, rule, dim", [
    ("dinov2-vit-g14", "dinov2", "pooled", 1536), ("openclip-vit-bigg-14", "openclip", "pooled", 1280),
    ("bit-r101x3", "bit", "pooled", 6144), ("llama2-7b-chat", "llama2", "last_token", 4096),
    ("gpt2-xl", "gpt2", "last_token", 1600), ("flan-t5-large", "flan-t5", "decoder_last_token", 1024),
    ("bert-small", "bert", "cls", 512), ("distilbert", "distilbert", "cls", 768),
    ("minilm-l6", "sentence-transformer", "sentence", 384), ("efficientnet-lite2", "efficientnet-lite", "pooled", 1280),
])
def test_feature_rules_follow_the_paper(name, family, rule, dim):
    spec = zoo.get(name)
    assert (spec.family, spec.feature_rule, spec.feature_dim) == (family, rule, dim)


def test_every_entry_is_complete():
    for spec in (zoo.get(name) for name in zoo.list_models() if registry.is_builtin(name)):
        # the tiny students (zoo/tiny.py) are small on purpose: a quarter of a million parameters and up
        assert spec.params and spec.params > (1e5 if spec.family == "tiny" else 1e6), spec.name
        assert spec.feature_dim and spec.licence and spec.description, spec.name
        if spec.modality == "image":
            assert spec.image_size and len(spec.mean) == len(spec.std) == 3
        else:
            assert spec.max_length and spec.feature_rule != "pooled"
    lite2 = zoo.get("efficientnet-lite2")
    assert (lite2.source, lite2.pack, lite2.image_size, lite2.mean, lite2.std) == (
        "pack", "efficientnet-lite2", 260, (0.5,) * 3, (0.5,) * 3)
    assert zoo.get("resnet18-small").random_init and zoo.get("resnet18-small").image_size == 32
    assert zoo.get("vit-tiny-small").create_kwargs["patch_size"] == 4


def test_list_models_filters():
    assert zoo.list_models("dinov2*") == ["dinov2-vit-b14", "dinov2-vit-g14", "dinov2-vit-l14", "dinov2-vit-s14"]
    teachers = zoo.list_models(role="teacher")
    students = zoo.list_models(role="student")
    assert "dinov2-vit-g14" in teachers and "dinov2-vit-g14" not in students
    assert "minilm-l6" in teachers and "minilm-l6" in students  # role "both"
    assert "bert-small" in students and "bert-small" not in teachers
    text = zoo.list_models(modality="text")
    assert "gpt2" in text and "vit-s16" not in text
    assert zoo.list_models("gpt2*", modality="text") == ["gpt2", "gpt2-large", "gpt2-medium", "gpt2-xl"]
    with pytest.raises(ValueError, match="role must be one of"):
        zoo.list_models(role="mentor")


def test_specs_are_frozen_and_round_trip():
    spec = zoo.get("dinov2-vit-b14")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.image_size = 518
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert hash(again) == hash(spec)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownModel) as info:
        zoo.get("dinov2-vit-q14")
    message = str(info.value)
    assert "dinov2-vit-g14" in message and "aftzoo models" in message and "\n" not in message
    with pytest.raises(UnknownModel, match="did you mean gpt2"):
        zoo.get("gtp2")
    assert zoo.get("openclip-vit-g14").name == "openclip-vit-bigg-14"  # an alias
    assert zoo.get("GPT2").name == "gpt2"


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        ModelSpec(name="x", family="f", modality="image", role="teacher", source="timm", hub_id="resnet18")
    with pytest.raises(ValueError, match="role must be one of"):
        ModelSpec(name="x", family="f", modality="text", role="oracle", source="transformers", hub_id="a/b",
                  feature_rule="cls", max_length=8)
    with pytest.raises(TypeError, match="unknown field"):
        zoo.register(name="x", source="timm", hub_id="resnet18", colour="red")


def test_register_a_spec_and_refuse_silent_replacement():
    spec = zoo.get("resnet50").replace(name="my-resnet", role="teacher")
    assert zoo.register(spec) is spec
    assert zoo.get("my-resnet") is spec and "my-resnet" in zoo.list_models(role="teacher")
    with pytest.raises(ValueError, match="already registered"):
        zoo.register(spec.replace(params=1))
    zoo.register(spec.replace(params=1), overwrite=True)
    assert zoo.get("my-resnet").params == 1
    zoo.unregister("my-resnet")
    with pytest.raises(UnknownModel):
        zoo.get("my-resnet")


def test_register_a_timm_name_infers_its_settings():
    spec = zoo.register(name="my-convnext", source="timm", hub_id="convnext_atto.d2_in1k")
    assert (spec.modality, spec.feature_rule, spec.image_size, spec.family) == ("image", "pooled", 224, "convnext")
    assert spec.feature_dim == 320 and 3e6 < spec.params < 4e6
    with pytest.raises(UnknownModel, match="timm has no model"):
        zoo.register(name="bad", source="timm", hub_id="convnxt_atto")


def test_register_transformers_and_open_clip_names():
    gpt = zoo.register(name="my-qwen", source="transformers", hub_id="Qwen/Qwen2.5-0.5B")
    assert gpt.feature_rule == "last_token" and gpt.modality == "text"
    t5 = zoo.register(name="my-t5", source="transformers", hub_id="google/t5-v1_1-small")
    assert t5.feature_rule == "decoder_last_token"
    bert = zoo.register(name="my-roberta", source="transformers", hub_id="FacebookAI/roberta-base")
    assert bert.feature_rule == "cls"
    clip = zoo.register(name="my-clip", source="open_clip", hub_id="ViT-B-16", pretrained_tag="laion2b_s34b_b88k")
    assert clip.feature_dim == 512 and clip.hf_repo == "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"


def test_register_a_folder_for_a_zoo_model(tmp_path):
    folder = tmp_path / "dinov2-g"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    spec = zoo.register("dinov2-vit-g14", path=folder)  # the way the WeightsUnavailable message says
    assert spec.path == str(folder.resolve()) and spec.hub_id == PAPER_ZOO["dinov2-vit-g14"]
    assert resolve_weights("dinov2-vit-g14").kind == "folder"
    assert weights_status("dinov2-vit-g14") == "folder"
    with pytest.raises(FileNotFoundError):
        zoo.register(name="dinov2-vit-l14", path=tmp_path / "missing")


def test_persisted_registration_survives_the_session(tmp_path):
    spec = zoo.get("resnet50").replace(name="persisted-resnet")
    zoo.register(spec, persist=True)
    zoo.unregister("persisted-resnet")
    with pytest.raises(UnknownModel):
        zoo.get("persisted-resnet")  # a pure look-up: get() never opens the catalog
    assert registry.load_persisted() == ["persisted-resnet"]
    assert zoo.get("persisted-resnet") == spec  # read back from the catalog's models table


def test_weights_resolution_order_and_fast_clear_failure(monkeypatch):
    assert resolve_weights("minilm-l6").kind == "pack"
    assert resolve_weights("efficientnet-lite0").kind == "pack"
    assert resolve_weights("resnet18-small").kind == "random"
    assert weights_status("dinov2-vit-g14") is None
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        resolve_weights("dinov2-vit-g14")
    assert time.perf_counter() - started < 2
    message = str(info.value)
    assert "\n" not in message and "'dinov2-vit-g14'" in message
    for way in ("zoo.register('dinov2-vit-g14', path=DIR)", "--weights DIR", "AFTZOO_OFFLINE=0",
                "hf download timm/vit_giant_patch14_dinov2.lvd142m"):
        assert way in message
    monkeypatch.setenv("AFTZOO_OFFLINE", "0")
    reset_settings()
    assert resolve_weights("dinov2-vit-g14").kind == "hub"  # decided from files only; nothing downloaded here


def test_the_local_hugging_face_cache_is_found(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--prajjwal1--bert-small" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights_status("bert-small") is None  # a config alone is not a checkpoint
    (snapshot / "model.safetensors").write_bytes(b"")
    source = resolve_weights("bert-small")
    assert (source.kind, source.location) == ("cache", str(snapshot))


def test_prompts_follow_appendix_a2():
    assert prompt_for("sst2") == 'Review: "{sentence}"\nSentiment:'
    assert prompt_for("rotten_tomatoes") == prompt_for("sst2")
    assert prompt_for("SST-2") == prompt_for("sst2")
    assert prompt_for("my_own_csv") == DEFAULT_PROMPT == "{text}"
    assert format_prompt(prompt_for("imdb"), "Loved it {really}") == \
        "Loved it {really} Overall, the sentiment of my review is"
    boolq = format_prompt(prompt_for("boolq"), {"question": "is it?", "passage": "It is."})
    assert boolq == "Question: is it?\nReference: It is.\nAnswer:"
    assert format_prompt(prompt_for("rte"), ("A.", "B.")).startswith("Sentence 1: A.\nSentence 2: B.\n")
    with pytest.raises(ValueError, match="needs the field"):
        format_prompt(prompt_for("mnli"), {"premise": "p"})


# ---------------------------------------------------------------------------------------------
# The pure-noise teacher (the paper's section 5.2 control; benchmarks/evidence/noise.py)
# ---------------------------------------------------------------------------------------------
def test_noise_spec_is_a_valid_random_teacher_and_bad_ones_are_refused():
    spec = registry.noise_spec(768, "text")
    assert (spec.name, spec.source, spec.feature_rule, spec.feature_dim, spec.role) == (
        "noise-text-768", "noise", "noise", 768, "teacher")
    assert spec.config_overrides["scale"] == pytest.approx(768 ** -0.5) and spec.random_init
    assert registry.noise_spec(1280, "image", seed=3).name == "noise-image-1280-s3"
    assert resolve_weights(spec).kind == "random" and weights_status(spec) == "random"
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(spec, feature_rule="cls")
    with pytest.raises(ValueError, match="go together"):
        zoo.get("minilm-l6").replace(feature_rule="noise")
    with pytest.raises(ValueError, match="feature_dim and random_init"):
        dataclasses.replace(spec, random_init=False)
    for bad in (dict(dim=0, modality="text"), dict(dim=8, modality="audio"), dict(dim=8, modality="text", scale=0)):
        with pytest.raises(ValueError):
            registry.noise_spec(**bad)


def test_noise_features_are_a_fixed_random_function_of_each_example():
    from zoo.feature_models import NoiseFeatureModel
    from zoo.models import load

    spec = registry.noise_spec(64, "text")
    fm = load(spec)
    assert isinstance(fm, NoiseFeatureModel) and fm.dim == 64
    texts = ["good film", "bad film", "fine", "good film"]
    x = fm.embed(texts)
    assert x.shape == (4, 64) and x.dtype == np.float32
    assert np.array_equal(x[0], x[3]) and not np.allclose(x[0], x[1])          # per example, not per position
    assert np.array_equal(fm.embed(texts[::-1]), x[::-1])                       # any order or batch
    assert np.array_equal(load(spec).embed(["bad film"])[0], x[1])              # any process: no hidden state
    assert not np.allclose(load(registry.noise_spec(64, "text", seed=1)).embed(texts), x)   # the seed matters
    many = fm.embed([f"review {i}" for i in range(2000)])
    assert abs(many.mean()) < 0.01 and many.std() == pytest.approx(64 ** -0.5, rel=0.02)
    # the 64 dimensions are independent: their correlations are those of independent samples
    corr = np.corrcoef(many.T)[np.triu_indices(64, 1)]
    assert np.abs(corr).max() < 0.12
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    fi = load(registry.noise_spec(32, "image"))
    assert np.array_equal(fi.embed(images)[1], fi.embed(images[1:2])[0]) and fi.embed(images).shape == (3, 32)


def test_a_registered_noise_teacher_is_extracted_and_cached_like_any_model():
    spec = zoo.register(registry.noise_spec(16, "image"))
    first = zoo.extract_info(spec.name, "digits", "train", limit=40, progress=False)
    again = zoo.extract_info(spec.name, "digits", "train", limit=40, progress=False)
    longer = zoo.extract_info(spec.name, "digits", "train", limit=60, progress=False)
    assert first.shape == (40, 16) and not first.cached and again.cached
    assert np.array_equal(np.asarray(longer.features)[:40], np.asarray(first.features))  # same examples, same rows
    other = zoo.extract_info(zoo.register(registry.noise_spec(16, "image", seed=1)).name, "digits", "train",
                             limit=40, progress=False)
    assert not other.cached and not np.allclose(other.features, first.features)
