import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from storage.catalog import Catalog
from storage.features import DamagedFeatureFile, FeatureKey, FeatureStore, FeatureStoreError


@pytest.fixture
def store(tmp_path):
    cat = Catalog(tmp_path / "catalog.duckdb")
    yield FeatureStore(tmp_path / "features", cat)
    cat.close()


def key(split="train", fingerprint="a" * 64, **settings) -> FeatureKey:
    return FeatureKey("m/odel", "data", split, fingerprint, settings or {"rule": "pooled"})


def test_put_get_roundtrip_is_memory_mapped(store):
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    row = store.put(key(), x)
    assert (row.num_examples, row.dim, row.dtype) == (50, 8, "float32")
    got = store.get(key())
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, x)
    assert store.get(key(split="test")) is None
    assert store.get(key(rule="other")) is None  # other extraction settings: another entry


def test_out_of_order_batches_and_missing_rows(store):
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    order = np.array([3, 7, 1, 0, 9, 2, 8, 5, 6, 4])
    with store.writer(key(), 10, 2) as w:
        w.write(order[:5], x[order[:5]])
        w.write(order[5:], x[order[5:]])
        w.commit()
    np.testing.assert_array_equal(store.get(key()), x)

    with pytest.raises(FeatureStoreError, match="3 of 10 feature rows were never written"):
        with store.writer(key(split="test"), 10, 2) as w:
            w.write(slice(0, 7), x[:7])
            w.commit()
    assert store.lookup(key(split="test")) is None
    assert not list(store.root.rglob("*.tmp"))


def test_nan_features_are_refused(store):
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(FeatureStoreError, match="NaN or infinite"):
        store.put(key(), x)
    assert store.lookup(key()) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_file_is_reported_not_read(store, damage):
    x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    row = store.put(key(), x)
    path = store.root / row.path
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(row.size_bytes // 2)
    else:
        path.unlink()
    with pytest.raises(DamagedFeatureFile, match="extract them again"):
        store.get(key())
    # A fresh put replaces the stale row.
    store.put(key(), x)
    np.testing.assert_array_equal(store.get(key()), x)


def test_write_killed_midway_leaves_no_row_and_no_readable_file(tmp_path):
    """SIGKILL a writer halfway: no catalog row, no final file; the next store sweeps the temp file."""
    code = textwrap.dedent(f"""
        import os, sys, numpy as np
        from storage.catalog import Catalog
        from storage.features import FeatureKey, FeatureStore
        cat = Catalog({str(tmp_path / "catalog.duckdb")!r})
        store = FeatureStore({str(tmp_path / "features")!r}, cat)
        w = store.writer(FeatureKey("m", "d", "train", "f" * 64, {{}}), 1000, 64)
        w.write(slice(0, 500), np.ones((500, 64), dtype=np.float32))
        print("HALF", flush=True)
        sys.stdin.read()  # wait to be killed
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HALF"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    leftovers = list((tmp_path / "features").rglob("*.tmp"))
    assert leftovers, "the killed writer should have left its temporary file"
    assert not list((tmp_path / "features").rglob("*.npy"))
    with Catalog(tmp_path / "catalog.duckdb") as cat:
        assert cat.query("SELECT count(*) AS n FROM feature_sets")[0]["n"] == 0
        store = FeatureStore(tmp_path / "features", cat)
        assert store.get(FeatureKey("m", "d", "train", "f" * 64, {})) is None
        assert not list((tmp_path / "features").rglob("*.tmp"))


def test_failed_write_leaves_catalog_as_it_was(store, monkeypatch):
    """An OS error at the rename (as a full disk gives) is a clear error, and no row appears."""
    x = np.ones((8, 4), dtype=np.float32)
    store.put(key(split="kept"), x)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(FeatureStoreError, match="No space left on device"):
        store.put(key(), x)
    monkeypatch.undo()
    assert store.lookup(key()) is None
    np.testing.assert_array_equal(store.get(key(split="kept")), x)
    assert not list(store.root.rglob("*.tmp"))
