"""The offline packs load for real and give real outputs."""
import pytest
import torch

from zoo import packs


def test_every_pack_is_present_here():
    missing = [r["pack"] for r in packs.status() if not r["present"]]
    assert not missing, f"run scripts/install.sh: missing {missing}"


def test_unknown_pack_lists_the_known_ones():
    with pytest.raises(LookupError, match="known packs: minilm-l6"):
        packs.locate("nope")


@pytest.mark.parametrize("variant", [0, 2])
def test_efficientnet_lite_sees_a_cat(variant):
    """ImageNet classes 281-285 are the domestic cats; Chelsea is a tabby."""
    import timm
    from PIL import Image
    from skimage import data

    model = packs.load_efficientnet_lite(variant)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    x = transform(Image.fromarray(data.chelsea())).unsqueeze(0)
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert 281 <= top <= 285, f"top-1 ImageNet class {top} is not a cat"
    assert float(probs[281:286].sum()) > 0.5


def test_efficientnet_lite_new_head():
    model = packs.load_efficientnet_lite(0, num_classes=7)
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 7)


@pytest.mark.parametrize("pack,dim", [("minilm-l6", 384), ("mpnet-base", 768)])
def test_sentence_encoders_put_paraphrases_closer(pack, dim):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(packs.locate(pack)), device="cpu")
    a, b, c = model.encode(["A man is playing a guitar.", "Someone plays the guitar.",
                            "The stock market fell sharply today."], normalize_embeddings=True)
    assert a.shape == (dim,)
    assert float(a @ b) > float(a @ c) + 0.3
