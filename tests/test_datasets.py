import subprocess
import sys

import numpy as np
import pytest

from zoo import packs
from zoo.datasets import DATASETS, Split, UnknownDataset, load_dataset

EXPECTED = {  # name: (modality, classes, train, test)
    "digits": ("image", 10, 1437, 360),
    "mnist5k": ("image", 10, 4000, 1000),
    "fashion_mnist": ("image", 10, 60000, 10000),
    "rotten_tomatoes": ("text", 2, 10201, 2551),
}


def _load(name):
    try:
        return load_dataset(name)
    except packs.PackMissing as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sizes_labels_and_types(name):
    modality, classes, n_train, n_test = EXPECTED[name]
    ds = _load(name)
    assert ds.modality == modality and ds.num_classes == classes == len(ds.class_names)
    assert (len(ds.split("train")), len(ds.split("test"))) == (n_train, n_test)
    for split in ds.splits.values():
        assert split.labels.dtype == np.int64
        assert set(np.unique(split.labels)) == set(range(classes))
        if modality == "image":
            assert split.inputs.dtype == np.uint8 and split.inputs.ndim in (3, 4) and split.inputs.max() > 100
        else:
            assert all(isinstance(t, str) and t for t in split.inputs[:100])
    assert ds.split("train").fingerprint != ds.split("test").fingerprint


def test_train_and_test_do_not_overlap():
    ds = _load("rotten_tomatoes")
    assert not set(ds.split("train").inputs) & set(ds.split("test").inputs)


def test_fingerprint_is_stable_across_processes_and_sensitive_to_content():
    ds = _load("digits")
    here = ds.split("train").fingerprint
    there = subprocess.run([sys.executable, "-c", "from zoo.datasets import load_dataset; "
                            "print(load_dataset('digits').split('train').fingerprint)"],
                           capture_output=True, text=True, timeout=120).stdout.strip()
    assert here == there
    images = ds.split("train").inputs.copy()
    images[0, 0, 0] ^= 1
    assert Split(images, ds.split("train").labels).fingerprint != here
    labels = ds.split("train").labels.copy()
    labels[[0, 1]] = labels[[1, 0]]
    if labels[0] != labels[1]:
        assert Split(ds.split("train").inputs, labels).fingerprint != here
    assert ds.split("train").head(100).fingerprint != here
    texts = Split(["ab", "c"], [0, 1]).fingerprint
    assert texts != Split(["a", "bc"], [0, 1]).fingerprint  # boundaries count, not just the characters


def test_unknown_name_and_bad_split():
    with pytest.raises(UnknownDataset, match="choose one of: " + ", ".join(sorted(DATASETS))):
        load_dataset("cifar11")
    with pytest.raises(ValueError, match="has splits train, test"):
        _load("digits").split("validation")
    with pytest.raises(ValueError, match="positive number"):
        _load("digits").split("train").head(0)
