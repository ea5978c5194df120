"""What every loader returns: a ``FeatureModel``, preprocessing plus the feature rule of its kind.

Image models take uint8 images and give their pooled pre-logits embedding; text models take
strings, format them with the data set's prompt, and give the feature their rule names ([CLS],
last real token, the T5 decoder's token, sentence-transformers pooling); the noise model gives
fixed random features per example. ``zoo.models.load`` builds them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage.errors import AftzooError
from zoo.prompts import DEFAULT_PROMPT, fit_prompt, format_prompt
from zoo.registry import ModelSpec, WeightsSource


class ModelLoadError(AftzooError, RuntimeError):
    """Weights were found but could not be loaded into the model."""


# ---------------------------------------------------------------------------------------------
# The wrapper every loader returns
# ---------------------------------------------------------------------------------------------
class FeatureModel(nn.Module):
    """A network plus its preprocessing and feature rule.

    ``preprocess(inputs)`` turns a batch of raw inputs (uint8 images or strings) into
    tensors on the model's device; ``forward_features(batch)`` returns ``(B, D)`` features.
    Both are differentiable where the network is, so a student can be trained through
    them; ``embed`` runs both under ``torch.inference_mode`` and returns numpy.
    """

    def __init__(self, spec: ModelSpec, net: nn.Module, source: WeightsSource, dim: int):
        super().__init__()
        self.spec, self.net, self.source, self.dim = spec, net, source, int(dim)

    @property
    def device(self) -> torch.device:
        for tensor in self.net.parameters():
            return tensor.device
        return torch.device("cpu")

    @property
    def modality(self) -> str:
        return self.spec.modality

    def preprocess(self, inputs, prompt: str = DEFAULT_PROMPT):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_features(self, batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch) -> torch.Tensor:
        return self.forward_features(batch)

    def embed(self, inputs, prompt: str = DEFAULT_PROMPT) -> np.ndarray:
        with torch.inference_mode():
            return self.forward_features(self.preprocess(inputs, prompt)).float().cpu().numpy()

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, rule={self.spec.feature_rule}, dim={self.dim}, weights={self.source.kind}"


class ImageFeatureModel(FeatureModel):
    """uint8 images (N,H,W) or (N,H,W,3) -> 3 channels, resized to the model's size, normalised."""

    def __init__(self, spec: ModelSpec, net: nn.Module, source: WeightsSource, dim: int,
                 channels_last: bool = False):
        super().__init__(spec, net, source, dim)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # normalised = pixel / 255 * (1 / std) - mean / std: one fused multiply-add per pixel
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def preprocess(self, inputs, prompt: str = DEFAULT_PROMPT) -> torch.Tensor:
        """uint8 pixels (or floats in [0, 1]) -> ``(N, 3, S, S)`` float32 on the model's device.

        Grey images are resized on their one channel and broadcast to three by the
        normalisation itself, so they cost a third of an RGB image.
        """
        x = inputs if isinstance(inputs, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(inputs))
        if x.ndim == 3:                       # (N, H, W) grey
            x = x.unsqueeze(-1)
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{self.spec.name} expects images shaped (N,H,W) or (N,H,W,3); got {tuple(x.shape)}")
        if x.shape[-1] == 4:                  # RGBA: drop alpha
            x = x[..., :3]
        pixels = x.dtype == torch.uint8
        x = x.to(self.scale.device, non_blocking=True).permute(0, 3, 1, 2).float()
        size = self.spec.image_size
        if tuple(x.shape[-2:]) != (size, size):
            mode = "bicubic" if self.spec.interpolation == "bicubic" else "bilinear"
            x = F.interpolate(x.contiguous(), size=(size, size), mode=mode, align_corners=False, antialias=True)
            if mode == "bicubic":             # bicubic overshoots; PIL clips to the pixel range too
                x = x.clamp_(0.0, 255.0 if pixels else 1.0)
        scale = self.scale if pixels else self.scale * 255.0
        out = torch.empty((x.shape[0], 3, size, size), device=x.device,
                          memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return torch.addcmul(self.shift, x, scale, out=out)


class TimmFeatureModel(ImageFeatureModel):
    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(batch), pre_logits=True)


class OpenClipFeatureModel(ImageFeatureModel):
    """``net`` is the CLIP image tower: ``encode_image`` without the final normalisation."""

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.net(batch)
        return out[0] if isinstance(out, tuple) else out


class HFImageFeatureModel(ImageFeatureModel):
    """A transformers vision model (DINOv2, ViT, ConvNeXt...): its pooled output, else its first token."""

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.net(pixel_values=batch)
        pooled = getattr(out, "pooler_output", None)
        return (out.last_hidden_state[:, 0] if pooled is None else pooled).flatten(1)


class TextFeatureModel(FeatureModel):
    """Strings -> prompt -> tokens (the prompt's closing words are kept when a text is too long)."""

    def __init__(self, spec: ModelSpec, net: nn.Module, source: WeightsSource, dim: int, tokenizer,
                 max_length: int, lowercase: bool = False):
        super().__init__(spec, net, source, dim)
        self.tokenizer, self.max_length, self.lowercase = tokenizer, int(max_length), lowercase
        if tokenizer.pad_token is None:  # GPT-2 and LLaMA ship without one; the mask hides it anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def _ids(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special, truncation=False, verbose=False)["input_ids"]

    def _fit(self, example, prompt: str) -> list[int]:
        return fit_prompt(example, prompt, self.max_length, self._ids,
                          lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                          lambda text: self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])

    def preprocess(self, inputs: Sequence, prompt: str = DEFAULT_PROMPT) -> dict[str, torch.Tensor]:
        if isinstance(inputs, str):
            inputs = [inputs]
        if not self.spec.prompt:
            prompt = DEFAULT_PROMPT
        inputs = [x.lower() if self.lowercase and isinstance(x, str) else x for x in inputs]
        texts = [format_prompt(prompt, x) for x in inputs]
        # Nothing after the text: ordinary right truncation keeps the prompt whole.
        truncate = prompt.rstrip().endswith("}")
        batch = self.tokenizer(texts, padding=True, truncation=truncate, max_length=self.max_length if truncate
                               else None, return_tensors="pt", return_attention_mask=True, verbose=False)
        if batch["input_ids"].shape[1] > self.max_length:
            # Some text is too long for the prompt around it: cut those texts, keep the prompt's ending.
            lengths = batch["attention_mask"].sum(1).tolist()
            ids = [self._fit(x, prompt) if n > self.max_length else row[mask.bool()].tolist()
                   for x, n, row, mask in zip(inputs, lengths, batch["input_ids"], batch["attention_mask"])]
            batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_attention_mask=True,
                                       return_tensors="pt")
        device = self.device
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


class ClsFeatureModel(TextFeatureModel):
    def forward_features(self, batch: dict) -> torch.Tensor:
        return self.pool(self.net(**batch).last_hidden_state, batch["attention_mask"])

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The features of an encoder's token states (B, L, d) under their mask: the first token's."""
        return hidden[:, 0]


class LastTokenFeatureModel(TextFeatureModel):
    """Decoders: the final hidden state at the last non-padding position.

    Position ids count real tokens only, so a left-padded row sees the same positions as
    the same text alone (GPT-2's absolute position embeddings would otherwise shift).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import inspect

        self._positions = "position_ids" in inspect.signature(self.net.forward).parameters

    def forward_features(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        kwargs = dict(batch)
        if self._positions:
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_(min=0)
        hidden = self.net(**kwargs, use_cache=False).last_hidden_state
        index = last_token_index(mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class T5DecoderFeatureModel(TextFeatureModel):
    """Encoder reads the prompt; the decoder, given its start token, returns the embedding of that last token."""

    def forward_features(self, batch: dict) -> torch.Tensor:
        start = self.net.config.decoder_start_token_id
        start = self.net.config.pad_token_id if start is None else start
        decoder_ids = torch.full((batch["attention_mask"].shape[0], 1), int(start or 0), dtype=torch.long,
                                 device=batch["attention_mask"].device)
        out = self.net(**batch, decoder_input_ids=decoder_ids, use_cache=False)
        return out.last_hidden_state[:, -1]


class SentencePoolingFeatureModel(TextFeatureModel):
    """A sentence-transformers folder (Transformer -> Pooling -> optional Normalize) run with
    transformers directly: the same numbers as ``SentenceTransformer.encode`` without its import."""

    def __init__(self, *args, pooling: dict, normalize: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.pooling, self.normalize = pooling, normalize

    def forward_features(self, batch: dict) -> torch.Tensor:
        return self.pool(self.net(**batch).last_hidden_state, batch["attention_mask"])

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The features of an encoder's token states (B, L, d) under their mask: the folder's pooling modes."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        parts = []
        if self.pooling.get("pooling_mode_cls_token"):
            parts.append(hidden[:, 0])
        if self.pooling.get("pooling_mode_max_tokens"):
            parts.append(hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values)
        if self.pooling.get("pooling_mode_mean_tokens") or self.pooling.get("pooling_mode_mean_sqrt_len_tokens"):
            summed, counts = (hidden * mask).sum(1), mask.sum(1).clamp(min=1e-9)
            if self.pooling.get("pooling_mode_mean_tokens"):
                parts.append(summed / counts)
            if self.pooling.get("pooling_mode_mean_sqrt_len_tokens"):
                parts.append(summed / counts.sqrt())
        if self.pooling.get("pooling_mode_lasttoken"):
            index = last_token_index(attention_mask)
            parts.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), index])
        out = torch.cat(parts, dim=1)
        return F.normalize(out, p=2, dim=1) if self.normalize else out


class SentenceTransformerFeatureModel(FeatureModel):
    """Any other sentence-transformers folder, through the library itself."""

    def preprocess(self, inputs, prompt: str = DEFAULT_PROMPT) -> dict:
        if isinstance(inputs, str):
            inputs = [inputs]
        texts = [format_prompt(prompt if self.spec.prompt else DEFAULT_PROMPT, x) for x in inputs]
        features = self.net.tokenize(texts)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def forward_features(self, batch: dict) -> torch.Tensor:
        return self.net(batch)["sentence_embedding"]


class NoiseFeatureModel(FeatureModel):
    """Features that are pure Gaussian noise (``zoo.registry.noise_spec``): a fixed random function of each example.

    ``preprocess`` hashes each raw example (the text, or the image's pixels and shape) with
    the spec's seed; ``forward_features`` draws that example's row from a generator seeded by
    the hash. So an example gets the same row in any batch, order or process, and no row
    carries information about anything but the example's identity.
    """

    def __init__(self, spec: ModelSpec, source: WeightsSource):
        super().__init__(spec, nn.Identity(), source, spec.feature_dim)
        self.scale = float(spec.config_overrides.get("scale", 1.0 / np.sqrt(spec.feature_dim)))

    def _key(self, example) -> int:
        import hashlib

        h = hashlib.blake2b(digest_size=8, key=str(self.spec.seed).encode())
        if isinstance(example, str):
            h.update(b"text:" + example.encode("utf-8"))
        else:
            array = np.ascontiguousarray(example.cpu().numpy() if isinstance(example, torch.Tensor) else example)
            h.update(f"array:{array.dtype.str}:{array.shape}:".encode() + array.tobytes())
        return int.from_bytes(h.digest(), "little")

    def preprocess(self, inputs, prompt: str = DEFAULT_PROMPT) -> list[int]:
        if isinstance(inputs, str):
            inputs = [inputs]
        return [self._key(x) for x in inputs]

    def forward_features(self, batch: list[int]) -> torch.Tensor:
        rows = [np.random.default_rng([self.spec.seed, key]).standard_normal(self.dim, dtype=np.float32)
                for key in batch]
        out = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return torch.from_numpy(out * np.float32(self.scale))


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------
