"""A BERT student's text batch run on packed tokens: no padding in its linear layers.

Length buckets (``students.Student``) already cut most padding, but each bucket's linear layers are
separate, smallish matrix products. Packed, the batch's real tokens (1,771 of 4,096 padded for 64
Rotten Tomatoes texts) go through every linear layer, LayerNorm and GELU as one sequence of
``[1, tokens, d]``, and only attention runs per group of similar lengths, padded within its group and
masked (``torch.nn.functional.scaled_dot_product_attention``). Positions restart at 0 for each text,
so every text sees what it sees alone: the features equal the padded batch's to float rounding
(dropout masks aside, drawn for other shapes).

transformers runs padding-free batches only with flash-attention on a GPU; on a CPU nothing does,
hence this file. It plugs into transformers' own attention registry under ``aftzoo_packed`` (plain
SDPA when no groups are passed) and serves models whose embeddings take position ids as given and
whose attention goes through that registry: BERT (MiniLM among them); not RoBERTa, which offsets its
positions, nor MPNet, whose attention is its own.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from zoo.feature_models import FeatureModel

IMPLEMENTATION = "aftzoo_packed"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, aftzoo_groups=None, **kwargs):
    """transformers' attention call: ``query`` etc. are ``[1, heads, tokens, head_dim]`` when packed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if aftzoo_groups is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    parts = []
    for index, real in aftzoo_groups:  # index: (rows, width) token positions; real: which of them are tokens
        q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))  # (rows, heads, width, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=real[:, None, None, :], dropout_p=dropout,
                                             scale=scaling)
        parts.append(out.transpose(1, 2)[real])  # (tokens of the group, heads, head_dim)
    return torch.cat(parts)[None], None  # the tokens were packed group after group: the same order


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def supports(backbone: FeatureModel) -> bool:
    """A BERT encoder whose features are a pooling of its token states."""
    net = getattr(backbone, "net", None)
    return (getattr(getattr(net, "config", None), "model_type", None) == "bert" and hasattr(backbone, "pool")
            and getattr(backbone.tokenizer, "padding_side", "right") == "right")


def packed_features(backbone: FeatureModel, batch: dict, rows_per_group: int) -> torch.Tensor:
    """``backbone.forward_features(batch)`` with the batch's tokens packed (see the module docstring)."""
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1)
    width = int(lengths.max())
    order = torch.argsort(lengths, stable=True)
    types = batch.get("token_type_ids")
    groups, ids, kinds, positions, flat = [], [], [], [], []
    start = 0
    for rows in order.tensor_split(-(-len(order) // rows_per_group)):
        real = mask[rows, :int(lengths[rows].max())]  # right padding: every token lies before the longest's end
        cols = torch.arange(real.shape[1], device=real.device).expand_as(real)
        index = torch.zeros_like(cols)
        index[real] = torch.arange(start, start + int(real.sum()), device=real.device)
        groups.append((index, real))
        ids.append(batch["input_ids"][rows, :real.shape[1]][real])
        kinds.append(None if types is None else types[rows, :real.shape[1]][real])
        positions.append(cols[real])
        flat.append((rows[:, None] * width + cols)[real])  # where each token sits in the padded (B, width) grid
        start += int(real.sum())
    ids, positions = torch.cat(ids)[None], torch.cat(positions)[None]
    kinds = torch.zeros_like(ids) if types is None else torch.cat(kinds)[None]
    net = backbone.net
    _register()
    previous = net.config._attn_implementation
    net.set_attn_implementation(IMPLEMENTATION)
    try:
        hidden = net(input_ids=ids, position_ids=positions, token_type_ids=kinds,
                     aftzoo_groups=groups).last_hidden_state[0]
    finally:
        net.set_attn_implementation(previous)
    grid = hidden.new_zeros(len(lengths) * width, hidden.shape[1]).index_copy(0, torch.cat(flat), hidden)
    return backbone.pool(grid.view(len(lengths), width, -1), batch["attention_mask"][:, :width])

