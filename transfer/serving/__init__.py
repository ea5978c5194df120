"""Torch-free inference over exports (numpy, tokenizers, onnxruntime): nothing here may import torch."""
