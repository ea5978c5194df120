"""The zoo: teachers, students, data sets, offline packs and feature extraction."""
from zoo.datasets import Dataset, Split, list_datasets, load_dataset

__all__ = ["Dataset", "Split", "list_datasets", "load_dataset"]

# The registry, loaders and extraction (issue 3). Loaders import torch lazily, so this stays light.
from zoo.registry import (ModelSpec, UnknownModel, get, list_models, load_persisted, register,  # noqa: E402
                          resolve, unregister)
from zoo.extract import ExtractResult, extract, extract_info, extract_splits  # noqa: E402  (zoo.extract: the function)
from zoo.download import fetch  # noqa: E402

__all__ += ["ModelSpec", "UnknownModel", "get", "list_models", "load_persisted", "register", "resolve", "unregister",
            "ExtractResult", "extract", "extract_info", "extract_splits", "fetch"]
