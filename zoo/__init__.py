"""The zoo: teachers, students, data sets, offline packs and feature extraction."""
from zoo.datasets import Dataset, Split, list_datasets, load_dataset

__all__ = ["Dataset", "Split", "list_datasets", "load_dataset"]
