"""Loaders and feature extraction: every family on a small random configuration, a local
checkpoint folder, the offline real models, the catalog cache, and clear failures."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from storage.catalog import open_catalog
from zoo import registry
from zoo.datasets import Dataset, Split
from zoo.feature_models import last_token_index
from zoo.models import WeightsUnavailable, build_random, load
from zoo.prompts import prompt_for

extract_module = importlib.import_module("zoo.extract")  # `zoo.extract` itself is the function
ROOT = Path(__file__).resolve().parents[1]


# A throw-away AFTZOO_HOME (offline, as every test session is) and a registry restored after each test.
pytestmark = pytest.mark.usefixtures("home", "clean_registry")


def _images(n=5, size=20, seed=0, rgb=False):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3) if rgb else (n, size, size), dtype=np.uint8)


TEXTS = ["A gripping, beautifully acted film.", "dull", "An utterly forgettable mess with nothing at all to say.",
         "Fine."]


# ------------------------------------------------------------------------------------------
# Image families on random small configurations
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, dim", [("dinov2", 48), ("vit", 48), ("mixer", 512), ("bit", 2048),
                                         ("resnet", 512), ("openclip", 512)])
def test_image_families_give_pooled_pre_logits(family, dim):
    model = build_random(family)
    images = _images()
    x = model.preprocess(images)
    assert x.shape == (5, 3, model.spec.image_size, model.spec.image_size)
    with torch.inference_mode():
        features = model.forward_features(x)
        assert features.shape == (5, dim) == (5, model.dim)
        net = model.net
        if family in ("dinov2", "vit"):      # the class token after the final norm
            expected = net.forward_features(x)[:, 0]
        elif family in ("bit", "resnet"):    # global average pool of the last feature map
            expected = net.forward_features(x).mean(dim=(2, 3))
        elif family == "mixer":              # mean over tokens
            expected = net.forward_features(x).mean(dim=1)
        else:                                # open_clip encode_image, unnormalised
            expected = net(x)
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(model.embed(images)).all()


def test_image_preprocessing_grey_resize_normalise():
    model = build_random("resnet")  # 32x32, ImageNet mean/std
    grey = _images(3, size=12)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    torch.testing.assert_close(model.preprocess(grey), model.preprocess(rgb))
    flat = np.full((1, 9, 9), 255, dtype=np.uint8)
    x = model.preprocess(flat)
    expected = (1.0 - torch.tensor(model.spec.mean)) / torch.tensor(model.spec.std)
    torch.testing.assert_close(x[0, :, 5, 5], expected)
    with pytest.raises(ValueError, match="expects images"):
        model.preprocess(np.zeros((2, 4), dtype=np.uint8))


# ------------------------------------------------------------------------------------------
# Text families on random small configurations (tokenizer: the MiniLM pack's, offline)
# ------------------------------------------------------------------------------------------
def test_last_token_index_either_padding_side():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_last_token_is_the_same_alone_and_padded_left_or_right(family):
    model = build_random(family)
    alone = np.stack([model.embed([t])[0] for t in TEXTS])
    assert alone.shape == (len(TEXTS), 32)
    for side in ("right", "left"):
        model.tokenizer.padding_side = side
        batch = model.preprocess(TEXTS)
        assert (batch["attention_mask"] == 0).any()  # the batch really is padded
        pad_column = 0 if side == "left" else -1
        assert (batch["attention_mask"][:, pad_column] == 0).any()
        np.testing.assert_allclose(model.embed(TEXTS), alone, rtol=1e-4, atol=1e-5)
    # and it is the hidden state at the last real token, not at a padding position
    model.tokenizer.padding_side = "right"
    batch = model.preprocess(TEXTS)
    with torch.inference_mode():
        hidden = model.net(input_ids=batch["input_ids"][1:2, :int(batch["attention_mask"][1].sum())]).last_hidden_state
    np.testing.assert_allclose(model.embed(TEXTS)[1], hidden[0, -1].numpy(), rtol=1e-4, atol=1e-5)


def test_t5_decoder_last_token_feature():
    model = build_random("t5")
    batch = model.preprocess(TEXTS)
    with torch.inference_mode():
        features = model.forward_features(batch)
        start = torch.full((len(TEXTS), 1), model.net.config.decoder_start_token_id)
        out = model.net(**batch, decoder_input_ids=start)
        torch.testing.assert_close(features, out.last_hidden_state[:, -1])
        # the decoder reads the encoder: different inputs, different features
        assert not torch.allclose(features[0], features[1])
    assert features.shape == (len(TEXTS), 32)
    alone = np.stack([model.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(model.embed(TEXTS), alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_encoders_give_the_cls_embedding(family):
    model = build_random(family)
    batch = model.preprocess(TEXTS)
    assert (batch["input_ids"][:, 0] == model.tokenizer.cls_token_id).all()
    with torch.inference_mode():
        features = model.forward_features(batch)
        torch.testing.assert_close(features, model.net(**batch).last_hidden_state[:, 0])
    alone = np.stack([model.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(features.numpy(), alone, rtol=1e-4, atol=1e-5)


def test_long_texts_keep_the_prompt_ending():
    model = build_random("gpt2", max_length=24)
    template = prompt_for("rotten_tomatoes")
    long_text = " ".join(["remarkably"] * 200)
    batch = model.preprocess([long_text, "short"], template)
    length = int(batch["attention_mask"][0].sum())
    assert 20 <= length <= 24  # the text is cut to fit, not the prompt
    decoded = model.tokenizer.decode(batch["input_ids"][0][:length], skip_special_tokens=True)
    assert decoded.replace(" ", "").endswith('"sentiment:')  # the MiniLM tokenizer lower-cases


# ------------------------------------------------------------------------------------------
# Local checkpoint folders
# ------------------------------------------------------------------------------------------
def test_local_transformers_folder_registered_and_extracted(tmp_path):
    source = build_random("bert")
    folder = tmp_path / "my-bert"
    source.net.save_pretrained(folder)
    source.tokenizer.save_pretrained(folder)
    spec = zoo.register("my-bert", path=folder)
    assert (spec.source, spec.family, spec.feature_rule, spec.feature_dim) == ("local", "bert", "cls", 32)
    assert spec.params == sum(p.numel() for p in source.net.parameters())
    features = zoo.extract("my-bert", "rotten_tomatoes", "train", limit=12, progress=False)
    assert features.shape == (12, 32)
    texts = zoo.load_dataset("rotten_tomatoes").split("train").inputs[:12]
    np.testing.assert_allclose(features, source.embed(texts, prompt_for("rotten_tomatoes")), rtol=1e-4, atol=1e-5)


def test_local_timm_folder_registered_and_extracted(tmp_path):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    net = timm.create_model("test_vit", pretrained=False)
    save_for_hf(net, str(tmp_path / "my-vit"), safe_serialization=True)
    spec = zoo.register("my-vit", path=tmp_path / "my-vit")
    assert (spec.modality, spec.family, spec.image_size, spec.feature_dim) == ("image", "test", 160, 64)
    features = zoo.extract("my-vit", "digits", "test", limit=6, progress=False)
    assert features.shape == (6, 64)
    model = load("my-vit")
    assert model.source.kind == "folder"
    images = zoo.load_dataset("digits").split("test").inputs[:6]
    np.testing.assert_allclose(features, model.embed(images), rtol=1e-4, atol=1e-5)


def test_weights_folder_for_a_zoo_model(tmp_path):
    """`--weights DIR` for a known architecture: a bare weights file, loaded through timm's own filter."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    (tmp_path / "w").mkdir()
    save_file(net.state_dict(), str(tmp_path / "w" / "model.safetensors"))
    spec = registry.get("resnet50").replace(name="r18-folder", hub_id="resnet18", image_size=32)
    zoo.register(spec)
    model = load("r18-folder", weights=tmp_path / "w")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model.forward_features(x), net.eval()(x))


# ------------------------------------------------------------------------------------------
# The offline real models carry information
# ------------------------------------------------------------------------------------------
def _probe_accuracy(model, dataset, n_train, n_test):
    from sklearn.linear_model import LogisticRegression

    data = zoo.load_dataset(dataset)
    train = zoo.extract(model, dataset, "train", limit=n_train, progress=False)
    test = zoo.extract(model, dataset, "test", limit=n_test, progress=False)
    probe = LogisticRegression(max_iter=3000).fit(train, data.split("train").labels[:n_train])
    return probe.score(test, data.split("test").labels[:n_test])


def test_minilm_features_separate_rotten_from_fresh():
    accuracy = _probe_accuracy("minilm-l6", "rotten_tomatoes", 600, 200)
    assert accuracy > 0.65, accuracy  # chance is 0.5; 0.725 when written


def test_minilm_pooling_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from zoo import packs

    ours = load("minilm-l6").embed(TEXTS)
    theirs = SentenceTransformer(str(packs.locate("minilm-l6")), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_efficientnet_lite0_features_classify_digits():
    accuracy = _probe_accuracy("efficientnet-lite0", "digits", 400, 200)
    assert accuracy > 0.8, accuracy  # chance is 0.1; 0.935 when written (0.89 with 300 training images)


# ------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------
def test_second_extract_reads_the_cache_and_builds_nothing(monkeypatch):
    first = zoo.extract_info("resnet18-small", "digits", "train", limit=40, progress=False)
    assert not first.cached and first.shape == (40, 512)

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not build the model")

    monkeypatch.setattr("zoo.models.load", refuse)
    again = zoo.extract_info("resnet18-small", "digits", "train", limit=40, progress=False)
    assert again.cached
    np.testing.assert_array_equal(again.features, first.features)

    with open_catalog() as catalog:
        models = catalog.query("SELECT name, family, params, feature_dim, spec FROM models")
        datasets = catalog.query("SELECT name, split, num_examples, fingerprint FROM datasets")
        sets = catalog.query("SELECT model, dataset, split, num_examples, dim, fingerprint FROM feature_sets")
    assert [(m["name"], m["feature_dim"]) for m in models] == [("resnet18-small", 512)]
    assert json.loads(models[0]["spec"])["random_init"] is True
    full = zoo.load_dataset("digits").split("train")
    assert datasets == [{"name": "digits", "split": "train", "num_examples": len(full), "fingerprint": full.fingerprint}]
    assert sets == [{"model": "resnet18-small", "dataset": "digits", "split": "train", "num_examples": 40,
                     "dim": 512, "fingerprint": first.fingerprint}]


def test_changed_data_or_settings_recompute(monkeypatch):
    calls = []
    real_load = sys.modules["zoo.models"].load

    def counting(*args, **kwargs):
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr("zoo.models.load", counting)
    a = zoo.extract_info("resnet18-small", "digits", "test", limit=20, progress=False)
    b = zoo.extract_info("resnet18-small", "digits", "test", limit=25, progress=False)  # other data
    assert not a.cached and not b.cached and a.fingerprint != b.fingerprint and len(calls) == 2
    np.testing.assert_allclose(b.features[:20], a.features, rtol=1e-5, atol=1e-6)
    c = zoo.extract_info("resnet18-small", "digits", "test", limit=20, progress=False)
    assert c.cached and len(calls) == 2
    # same data in a differently named data set object with other content -> other fingerprint
    data = zoo.load_dataset("digits")
    flipped = Dataset("digits", "image", data.class_names,
                      {"test": Split(data.split("test").inputs[:20][:, ::-1].copy(), data.split("test").labels[:20])},
                      source="test")
    d = zoo.extract_info("resnet18-small", flipped, "test", progress=False)
    assert not d.cached and len(calls) == 3
    # another setting (the prompt) is another key for text
    e1 = zoo.extract_info("minilm-l6", "rotten_tomatoes", "test", limit=8, progress=False)
    e2 = zoo.extract_info("minilm-l6", "rotten_tomatoes", "test", limit=8, progress=False, prompt="{text}")
    assert not e1.cached and not e2.cached and e1.settings["prompt"] != e2.settings["prompt"]
    assert not np.allclose(e1.features, e2.features)


def test_both_splits_build_the_model_once(monkeypatch):
    calls = []
    real_load = sys.modules["zoo.models"].load
    monkeypatch.setattr("zoo.models.load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    first = zoo.extract_splits("resnet18-small", "digits", limit=10, progress=False)
    assert [(r.split, r.shape, r.cached) for r in first] == [("train", (10, 512), False), ("test", (10, 512), False)]
    assert len(calls) == 1
    again = zoo.extract_splits("resnet18-small", "digits", limit=10, progress=False)
    assert [r.cached for r in again] == [True, True] and len(calls) == 1
    with pytest.raises(ValueError, match="batch size"):
        zoo.extract("resnet18-small", "digits", limit=10, batch_size=0, progress=False)


def test_a_damaged_cache_file_is_recomputed_with_a_warning():
    first = zoo.extract_info("vit-tiny-small", "digits", "test", limit=10, progress=False)
    expected = np.array(first.features)  # a copy: the returned array maps the file about to be damaged
    path = Path(first.path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="checksum"):
        again = zoo.extract_info("vit-tiny-small", "digits", "test", limit=10, progress=False)
    assert not again.cached
    np.testing.assert_array_equal(again.features, expected)
    assert zoo.extract_info("vit-tiny-small", "digits", "test", limit=10, progress=False).cached


def test_text_rows_return_in_their_original_order():
    data = zoo.load_dataset("rotten_tomatoes")
    features = zoo.extract("minilm-l6", data, "test", limit=40, batch_size=7, progress=False)
    texts = data.split("test").inputs[:40]
    model = load("minilm-l6")
    np.testing.assert_allclose(features, model.embed(texts, prompt_for("rotten_tomatoes")), atol=1e-5)


def test_bad_requests_fail_clearly():
    with pytest.raises(ValueError, match="is a text model and digits is an image data set"):
        zoo.extract("minilm-l6", "digits", progress=False)
    with pytest.raises(ValueError, match="split must be one of"):
        zoo.extract("resnet18-small", "digits", "validation", progress=False)
    with pytest.raises(zoo.UnknownModel, match="did you mean"):
        zoo.extract("resnet18-smal", "digits", progress=False)


# ------------------------------------------------------------------------------------------
# No weights: a clear line, fast
# ------------------------------------------------------------------------------------------
def test_hub_only_model_fails_fast_with_one_line():
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        zoo.extract("dinov2-vit-g14", "digits", "test", limit=5, progress=False)
    assert time.perf_counter() - started < 5
    assert "\n" not in str(info.value) and "dinov2-vit-g14" in str(info.value)
    with open_catalog() as catalog:  # nothing half-written
        assert catalog.query("SELECT count(*) AS n FROM feature_sets")[0]["n"] == 0


def _cli(*args, home):
    env = {**os.environ, "AFTZOO_HOME": str(home), "AFTZOO_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_reports_missing_weights_in_one_line(home):
    started = time.perf_counter()
    result = _cli("extract", "--model", "dinov2-vit-g14", "--dataset", "digits", home=home)
    assert time.perf_counter() - started < 30  # interpreter start and imports included
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "dinov2-vit-g14" in lines[0] and "AFTZOO_OFFLINE=0" in lines[0]
    bad = _cli("extract", "--model", "nope", "--dataset", "digits", home=home)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "unknown model" in bad.stderr


def test_cli_extract_and_models(home):
    result = _cli("extract", "--model", "resnet18-small", "--dataset", "digits", "--split", "all", "--limit", "30",
                  "--json", home=home)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["split"], r["shape"], r["cached"]) for r in rows] == [("train", [30, 512], False),
                                                                     ("test", [30, 512], False)]
    again = json.loads(_cli("extract", "-m", "resnet18-small", "-d", "digits", "--limit", "30", "--json",
                            home=home).stdout)
    assert again[0]["cached"] is True
    listing = _cli("models", "--role", "student", "--modality", "image", "--json", home=home)
    assert listing.returncode == 0, listing.stderr
    names = {r["name"]: r for r in json.loads(listing.stdout)}
    assert "vit-s16" in names and "dinov2-vit-g14" not in names
    assert names["efficientnet-lite0"]["weights"] == "pack" and names["vit-s16"]["weights"] is None
    table = _cli("models", home=home)
    assert table.returncode == 0 and "dinov2-vit-g14" in table.stdout and "weights here" in table.stdout


# ------------------------------------------------------------------------------------------
# The local Hugging Face cache (as timm and transformers leave it after a download)
# ------------------------------------------------------------------------------------------
def _fake_hf_cache(root: Path, repo: str, monkeypatch) -> Path:
    from huggingface_hub import constants

    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return snapshot


def test_dinov2_entry_loads_from_the_hub_cache_at_224(tmp_path, monkeypatch):
    """The real dinov2-vit-s14 entry: a 518-pixel checkpoint in the cache, position embeddings resampled to 224."""
    import timm
    from safetensors.torch import save_file

    snapshot = _fake_hf_cache(tmp_path / "hub", "timm/vit_small_patch14_dinov2.lvd142m", monkeypatch)
    torch.manual_seed(0)
    full = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)  # img_size 518
    save_file(full.state_dict(), str(snapshot / "model.safetensors"))
    assert registry.weights_status("dinov2-vit-s14") == "cache"
    model = load("dinov2-vit-s14")
    assert model.source.kind == "cache" and model.dim == 384
    assert model.net.pos_embed.shape[1] == (224 // 14) ** 2 + 1  # resampled from 37x37 patches
    torch.testing.assert_close(model.net.cls_token, full.cls_token)
    features = model.embed(_images(2, size=28))
    assert features.shape == (2, 384) and np.isfinite(features).all()


def test_bert_small_entry_loads_from_the_hub_cache(tmp_path, monkeypatch):
    snapshot = _fake_hf_cache(tmp_path / "hub", "prajjwal1/bert-small", monkeypatch)
    tiny = build_random("bert")
    tiny.net.save_pretrained(snapshot)
    tiny.tokenizer.save_pretrained(snapshot)
    model = load("bert-small")
    assert model.source.kind == "cache" and model.spec.feature_rule == "cls"
    np.testing.assert_allclose(model.embed(TEXTS), tiny.embed(TEXTS), rtol=1e-5, atol=1e-6)
