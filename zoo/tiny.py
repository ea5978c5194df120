"""Tiny students: runs that cost seconds on two CPU cores, so seeds and beta grids are cheap.

A transfer can only show where the student can change its own representation (an MLP on frozen
features gained nothing in issue 20's check), so every student here trains end to end:

- ``tiny-bag-text``: the mean of word embeddings over MiniLM-L6's tokenizer (an embedding bag), the
  table initialised from MiniLM's own word embeddings when its pack is installed;
- ``tiny-transformer-text``: the same embeddings projected to 128 dimensions, two transformer layers,
  mean-pooled;
- ``token_mlp`` (registered by an experiment, e.g. benchmarks/evidence/decisive.py): MiniLM's word
  embeddings kept frozen, a trainable per-token MLP (384 -> hidden, GELU), mean-pooled. The frozen
  table spares Adam 11.7M parameters a step (a run costs seconds); the MLP before pooling still lets
  the student change its own representation of each text;
- ``tiny-cnn``: four conv-BN-ReLU blocks on 32x32 images, global average pooling, 128 features.

The registry entries (source ``"tiny"``, ``hub_id`` naming the architecture) are in zoo/registry.py;
``zoo.models.load`` builds them here. The random parts draw from torch's global generator, which
``build_student`` seeds with the run's seed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from zoo import packs
from zoo.feature_models import ImageFeatureModel, ModelLoadError, TextFeatureModel
from zoo.registry import ModelSpec, WeightsSource

ARCHITECTURES = ("embedding_bag", "token_mlp", "transformer", "cnn")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def _pretrained_embeddings(pack: str | None) -> dict[str, torch.Tensor]:
    """Word (and position) embeddings of a BERT-style pack, or {} when the pack is not installed."""
    if not pack:
        return {}
    try:
        folder = packs.locate(pack)
    except packs.PackMissing:
        return {}
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {name: f.get_tensor(f"embeddings.{name}_embeddings.weight") for name in ("word", "position")
                if f"embeddings.{name}_embeddings.weight" in f.keys()}


class EmbeddingBag(nn.Module):
    def __init__(self, vocab: int, dim: int, init: dict[str, torch.Tensor]):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        if "word" in init and init["word"].shape == self.embed.weight.shape:
            self.embed.weight.data.copy_(init["word"])

    def forward(self, input_ids, attention_mask):
        return _masked_mean(self.embed(input_ids), attention_mask)


class TokenMLP(nn.Module):
    def __init__(self, vocab: int, embed_dim: int, dim: int, init: dict[str, torch.Tensor]):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        if "word" in init and init["word"].shape == self.embed.weight.shape:
            self.embed.weight.data.copy_(init["word"])
        self.embed.weight.requires_grad_(False)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, input_ids, attention_mask):
        return _masked_mean(self.mlp(self.embed(input_ids)), attention_mask)


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int, embed_dim: int, dim: int, layers: int, heads: int, max_length: int,
                 init: dict[str, torch.Tensor]):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        self.position = nn.Embedding(max_length, embed_dim)
        if "word" in init and init["word"].shape == self.embed.weight.shape:
            self.embed.weight.data.copy_(init["word"])
        if "position" in init and init["position"].shape[1] == embed_dim:
            self.position.weight.data.copy_(init["position"][:max_length])
        self.project = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.project(self.embed(input_ids) + self.position(positions))
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return _masked_mean(self.norm(x), attention_mask)


class TinyTextModel(TextFeatureModel):
    def forward_features(self, batch: dict) -> torch.Tensor:
        return self.net(batch["input_ids"], batch["attention_mask"])


def small_cnn(dim: int) -> nn.Module:
    widths = [3, dim // 4, dim // 2, dim, dim]
    blocks = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        blocks += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        if i < len(widths) - 2:
            blocks.append(nn.MaxPool2d(2))
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class TinyImageModel(ImageFeatureModel):
    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


def build(spec: ModelSpec, source: WeightsSource, tokenizer=None):
    """The tiny model ``spec`` (``hub_id`` one of ARCHITECTURES; sizes in ``config_overrides``); text models
    read ``tokenizer`` (``zoo.models.load`` passes the one ``spec.tokenizer`` names)."""
    cfg = dict(spec.config_overrides)
    if spec.hub_id not in ARCHITECTURES:
        raise ModelLoadError(f"{spec.name}: a tiny model's hub_id is one of {', '.join(ARCHITECTURES)}; "
                             f"got {spec.hub_id!r}")
    if spec.hub_id == "cnn":
        return TinyImageModel(spec, small_cnn(spec.feature_dim), source, spec.feature_dim)
    init = _pretrained_embeddings(cfg.get("init_from"))
    embed_dim = cfg.get("embed_dim", 384)
    if spec.hub_id == "embedding_bag":
        net: nn.Module = EmbeddingBag(len(tokenizer), embed_dim, init)
        dim = embed_dim
    elif spec.hub_id == "token_mlp":
        dim = spec.feature_dim
        net = TokenMLP(len(tokenizer), embed_dim, dim, init)
    else:
        dim = spec.feature_dim
        net = TinyTransformer(len(tokenizer), embed_dim, dim, cfg.get("layers", 2), cfg.get("heads", 4),
                              spec.max_length, init)
    return TinyTextModel(spec, net, source, dim, tokenizer, spec.max_length)
