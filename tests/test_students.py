"""Students: raw features, length-bucketed text batches, the tiny students (real models, real data)."""
import numpy as np
import pytest
import torch

from transfer.training import packing
from transfer.training.students import build_student
from zoo.datasets import load_dataset
from zoo.registry import get


@pytest.fixture(scope="module")
def texts():
    split = load_dataset("rotten_tomatoes").split("train")
    return split.inputs[:40], split.labels[:40]


@pytest.fixture(scope="module")
def minilm():
    return build_student("minilm-l6", 2, seed=0).eval()


def test_a_sentence_transformer_students_phi_is_raw_not_unit_norm(minilm, texts):
    # As a student, MiniLM's phi is its mean-pooled output before the Normalize module: a head on unit vectors
    # could barely move under cross-entropy (issue 20). As a teacher its features stay normalised.
    with torch.no_grad():
        _, phi = minilm(minilm.preprocess(texts[0][:8], "{text}"))
    norms = phi.norm(dim=1)
    assert (norms > 1.5).all(), norms
    from zoo.models import load

    teacher = load("minilm-l6")
    assert np.allclose(np.linalg.norm(teacher.embed(texts[0][:4]), axis=1), 1.0, atol=1e-5)


def test_length_buckets_give_the_same_features_and_gradients(minilm, texts):
    batch = minilm.preprocess(texts[0], "{text}")
    words = minilm.backbone.net.get_input_embeddings()
    lookups = []
    hook = words.register_forward_hook(lambda *args: lookups.append(1))
    outs = {}
    for rows in (0, 8):
        minilm.bucket_rows = rows
        minilm.zero_grad()
        logits, phi = minilm(batch)
        logits.sum().backward()
        outs[rows] = (phi.detach(), minilm.head.weight.grad.clone(), words.weight.grad.clone(),
                      minilm.backbone.net.encoder.layer[0].attention.self.query.weight.grad.clone())
    hook.remove()
    minilm.bucket_rows = 8
    assert len(lookups) == 2  # one word-embedding look-up per batch, bucketed or not: not one per sub-batch
    assert packing.supports(minilm.backbone)  # MiniLM is a BERT: bucket_rows=8 ran it on packed tokens
    for a, b in zip(outs[0], outs[8]):
        assert torch.allclose(a, b, atol=2e-4, rtol=1e-4), float((a - b).abs().max())


@pytest.mark.parametrize("name", ["tiny-bag-text", "tiny-transformer-text", "tiny-cnn"])
def test_tiny_students_learn_end_to_end(name, texts):
    spec = get(name)
    student = build_student(name, 2 if spec.modality == "text" else 10, seed=0).train()
    if spec.modality == "text":
        inputs, labels = texts
    else:
        split = load_dataset("digits").split("train")
        inputs, labels = split.inputs[:64], split.labels[:64]
    batch, y = student.preprocess(inputs, "{text}"), torch.from_numpy(np.asarray(labels))
    before = [p.detach().clone() for p in student.backbone.parameters()]
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        logits, phi = student(batch)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert phi.shape == (len(y), spec.feature_dim)
    assert min(losses[-3:]) < 0.8 * losses[0]
    # The representation itself changes (unlike a head on frozen features).
    assert any(not torch.equal(a, b) for a, b in zip(before, student.backbone.parameters()))


def test_tiny_text_students_start_from_minilms_word_embeddings():
    from safetensors import safe_open

    from zoo import packs

    student = build_student("tiny-bag-text", 2, seed=0)
    with safe_open(str(packs.locate("minilm-l6") / "model.safetensors"), "pt") as f:
        words = f.get_tensor("embeddings.word_embeddings.weight")
    assert torch.equal(student.backbone.net.embed.weight.detach(), words)
    a, b = build_student("tiny-transformer-text", 2, seed=0), build_student("tiny-transformer-text", 2, seed=1)
    assert not torch.equal(a.head.weight, b.head.weight)  # seeds give different random parts
