"""rank() on real offline models and data: the orders the paper's premise needs."""
import numpy as np
import pytest

from storage.catalog import open_catalog
from transfer.ranking import history, logme, rank

N_TEXT, N_IMAGE = 400, 300


@pytest.fixture(scope="module")
def text_ranking():
    return rank("rotten_tomatoes", ["minilm-l6", "mpnet-base"], metrics=["logme", "leep", "hscore", "probe"],
                limit=N_TEXT, progress=False)


def test_mpnet_above_minilm_above_noise(text_ranking):
    assert list(text_ranking["model"]) == ["mpnet-base", "minilm-l6"]
    minilm = text_ranking.set_index("model").loc["minilm-l6"]
    from zoo.datasets import load_dataset

    labels = load_dataset("rotten_tomatoes").split("train").labels[:N_TEXT]
    noise = np.random.default_rng(0).normal(size=(N_TEXT, int(minilm["dim"])))
    assert minilm["logme"] > logme(noise, labels)
    assert (text_ranking["probe"] > 0.6).all()


def test_sentence_encoders_skip_leep_with_a_reason(text_ranking):
    assert text_ranking["leep"].isna().all()
    assert all("no source classifier" in s for s in text_ranking["skipped"])


def test_every_score_is_in_the_catalog_and_comparable(text_ranking):
    with open_catalog() as cat:
        rows = cat.query("SELECT model, metric, score, feature_set_id FROM rankings WHERE dataset = 'rotten_tomatoes'")
    assert {(r["model"], r["metric"]) for r in rows} >= {(m, k) for m in ("minilm-l6", "mpnet-base")
                                                           for k in ("logme", "hscore", "probe")}
    assert all(r["feature_set_id"] is not None for r in rows)
    wide = history("rotten_tomatoes").set_index("model")
    assert wide.loc["mpnet-base", "logme"] == pytest.approx(text_ranking.set_index("model").loc["mpnet-base", "logme"])


def test_efficientnets_rank_above_noise_on_digits_with_leep_and_nce():
    frame = rank("digits", ["efficientnet-lite0", "efficientnet-lite2"], limit=N_IMAGE, progress=False)
    from zoo.datasets import load_dataset

    labels = load_dataset("digits").split("train").labels[:N_IMAGE]
    noise = logme(np.random.default_rng(0).normal(size=(N_IMAGE, 1280)), labels)
    assert (frame["logme"] > noise).all()
    assert (frame["leep"] < 0).all() and (frame["nce"] <= 0).all()  # log-likelihoods
    assert (frame["probe"] > 0.8).all()
    assert frame["skipped"].eq("").all()


def test_bad_metric_and_no_models():
    with pytest.raises(ValueError, match="unknown metric.*kendall.*choose from logme"):
        rank("digits", ["efficientnet-lite0"], metrics=["kendall"])
    with pytest.raises(ValueError, match="at least one model"):
        rank("digits", [])
