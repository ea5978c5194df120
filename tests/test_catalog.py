import subprocess
import sys
import textwrap
import threading

import duckdb
import pytest

from storage.catalog import Catalog, CatalogBusyError, CatalogError, migrate
from storage.migrations import SCHEMA_VERSION

TABLES = {"schema_version", "models", "datasets", "feature_sets", "rankings", "runs", "run_metrics", "exports"}


def tables(cat: Catalog) -> set[str]:
    return {r["table_name"] for r in cat.query("SELECT table_name FROM information_schema.tables")}


def test_create_and_reopen(tmp_path):
    path = tmp_path / "c.duckdb"
    with Catalog(path) as cat:
        assert cat.schema_version == SCHEMA_VERSION
        assert tables(cat) == TABLES
        cat.upsert_dataset("d", "train", fingerprint="f" * 64, modality="text", num_examples=3,
                           class_names=["a", "b"], source="test")
    with Catalog(path) as cat:
        assert cat.schema_version == SCHEMA_VERSION
        rows = cat.query("SELECT name, num_classes FROM datasets")
        assert rows == [{"name": "d", "num_classes": 2}]
        # Opening again applies nothing twice.
        assert cat.query("SELECT count(*) AS n FROM schema_version")[0]["n"] == SCHEMA_VERSION


def test_migrates_an_older_schema_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    assert migrate(con, target=1) == 1
    con.execute("INSERT INTO feature_sets (model, dataset, split, fingerprint, settings_key, num_examples, dim, dtype, "
                "path, size_bytes, checksum) VALUES ('m', 'd', 'train', 'fp', 'sk', 10, 4, 'float32', 'p.npy', 1, 'x')")
    con.close()
    with Catalog(path) as cat:
        assert cat.schema_version == SCHEMA_VERSION
        assert TABLES <= tables(cat)
        row = cat.find_feature_set("m", "fp", "train", "sk")
        assert row is not None and row.num_examples == 10 and row.dim == 4


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.duckdb"
    with Catalog(path) as cat:
        cat.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    with pytest.raises(CatalogError, match="newer than this aftzoo"):
        Catalog(path)


def test_a_second_process_gets_a_clear_busy_error(tmp_path):
    path = tmp_path / "busy.duckdb"
    with Catalog(path):
        code = textwrap.dedent(f"""
            from storage.catalog import Catalog, CatalogBusyError
            try:
                Catalog({str(path)!r})
            except CatalogBusyError as e:
                print("BUSY", e)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("BUSY") and "AFTZOO_HOME" in out


def test_threads_share_one_catalog(tmp_path):
    """Eight threads write and read at once through one Catalog: nothing is lost, nothing raises."""
    errors: list[BaseException] = []
    with Catalog(tmp_path / "threads.duckdb") as cat:
        def work(t: int) -> None:
            try:
                for step in range(40):
                    cat.execute("INSERT INTO run_metrics (run_id, step, name, value) VALUES (?, ?, 'loss', ?)",
                                [f"run{t}", step, float(step)])
                    # Upserts of one shared row are the case optimistic concurrency would abort.
                    cat.execute("INSERT OR REPLACE INTO runs (id, dataset, student, method, status, step) "
                                "VALUES ('shared', 'd', 's', 'aft', 'running', ?)", [step])
                    assert cat.query("SELECT count(*) AS n FROM run_metrics WHERE run_id = ?", [f"run{t}"])[0]["n"] == step + 1
            except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        assert cat.query("SELECT count(*) AS n FROM run_metrics")[0]["n"] == 8 * 40
        assert cat.query("SELECT count(*) AS n FROM runs")[0]["n"] == 1


def test_transaction_rolls_back_on_error(tmp_path):
    with Catalog(tmp_path / "tx.duckdb") as cat:
        with pytest.raises(RuntimeError):
            with cat.transaction() as cur:
                cur.execute("INSERT INTO runs (id, dataset, student, method, status) VALUES ('r', 'd', 's', 'aft', 'x')")
                raise RuntimeError("boom")
        assert cat.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0


def test_open_catalog_waits_for_a_short_holder(home):
    """A process that holds the catalog for a moment delays, not fails, another's open."""
    from storage.catalog import open_catalog
    from storage.settings import get_settings

    path = get_settings().catalog_path
    Catalog(path).close()
    code = textwrap.dedent(f"""
        import time
        from storage.catalog import Catalog
        c = Catalog({str(path)!r})
        print("HELD", flush=True)
        time.sleep(1.5)
        c.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HELD"
    with pytest.raises(CatalogBusyError):
        open_catalog(wait=0.2)
    with open_catalog(wait=20) as cat:
        assert cat.schema_version == SCHEMA_VERSION
    proc.wait(timeout=30)
