"""IndexStore on real USearch and SQLite: round trip, dedupe, padding, refusals, crash safety."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from molret.engine.index_store import (
    INDEX_JSON,
    METADATA_FILE,
    VECTORS_FILE,
    IndexStore,
    IndexStoreError,
    NewRecord,
)

DIM = 16


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def molecules(n: int, start: int = 0) -> list[NewRecord]:
    return [
        NewRecord(
            name=f"CID{i}",
            smiles=f"C{i}",
            canonical_smiles=f"C{i}",
            inchikey=f"KEY-{i:04d}",
        )
        for i in range(start, start + n)
    ]


def make_store(path: Path, n: int = 10, dtype: str = "f16") -> IndexStore:
    store = IndexStore.create(path, "molecule", DIM, "bundle-a", dtype=dtype)
    if n:
        store.add(unit_vectors(n), molecules(n))
    store.save({"rows_done": n})
    return store


def test_round_trip(tmp_path: Path) -> None:
    vectors = unit_vectors(10)
    store = make_store(tmp_path / "ix")
    store.close()
    config = json.loads((tmp_path / "ix" / INDEX_JSON).read_text())
    assert config["count"] == 10 and config["kind"] == "molecule" and config["dtype"] == "f16"
    assert config["build_state"] == {"rows_done": 10}

    store = IndexStore.open(tmp_path / "ix", expected_bundle_id="bundle-a")
    assert (store.kind, store.dim, store.bundle_id, store.size) == ("molecule", DIM, "bundle-a", 10)
    assert store.build_state == {"rows_done": 10}
    keys, scores = store.search(vectors, 3)
    assert keys.dtype == np.int64 and scores.dtype == np.float32 and keys.shape == (10, 3)
    assert keys[:, 0].tolist() == list(range(10))
    assert np.allclose(scores[:, 0], 1.0, atol=1e-3)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    record = store.records([3, -1, 99])
    assert record[0] is not None and record[0].key == 3 and record[0].name == "CID3"
    assert record[0].inchikey == "KEY-0003" and record[1] is None and record[2] is None
    assert np.allclose(store.get_vectors([0, 5]), vectors[[0, 5]], atol=2e-3)
    exact_keys, _ = store.exact_search(vectors, 1)
    assert exact_keys[:, 0].tolist() == list(range(10))
    store.close()


def test_dedupe_by_inchikey(tmp_path: Path) -> None:
    store = make_store(tmp_path / "ix", n=5)
    batch = [*molecules(1, start=2), *molecules(2, start=5), *molecules(1, start=5)]
    result = store.add(unit_vectors(4, seed=1), batch)
    assert result.keys == [2, 5, 6, 5]
    assert result.duplicates == [0, 3]
    assert store.size == 7
    store.save()
    store.close()
    reopened = IndexStore.open(tmp_path / "ix")
    assert reopened.size == 7 and reopened.build_state == {"rows_done": 5}
    reopened.close()


def test_text_index_keeps_repeats(tmp_path: Path) -> None:
    store = IndexStore.create(tmp_path / "tx", "text", DIM, "bundle-a")
    rows = [NewRecord(name="1", text="a sugar"), NewRecord(name="2", text="a sugar")]
    result = store.add(unit_vectors(2), rows)
    assert result.keys == [0, 1] and result.duplicates == []
    assert [r.text for r in store.records([0, 1]) if r] == ["a sugar", "a sugar"]
    store.close()


def test_search_pads_when_k_exceeds_size(tmp_path: Path) -> None:
    store = make_store(tmp_path / "ix", n=3)
    for queries in (unit_vectors(4, seed=3), unit_vectors(1, seed=3)):
        keys, scores = store.search(queries, 5)
        assert keys.shape == (len(queries), 5)
        assert np.all(keys[:, 3:] == -1) and np.all(np.isnan(scores[:, 3:]))
        assert np.all(keys[:, :3] >= 0) and not np.any(np.isnan(scores[:, :3]))
    store.close()
    empty = IndexStore.create(tmp_path / "empty", "molecule", DIM, "bundle-a")
    keys, scores = empty.search(unit_vectors(2), 4)
    assert np.all(keys == -1) and np.all(np.isnan(scores))
    with pytest.raises(ValueError, match="shape"):
        empty.search(np.zeros((2, DIM + 1), dtype=np.float32), 1)
    empty.close()


def test_i8_and_f32(tmp_path: Path) -> None:
    for dtype in ("i8", "f32"):
        store = make_store(tmp_path / dtype, n=8, dtype=dtype)
        store.close()
        store = IndexStore.open(tmp_path / dtype)
        keys, _ = store.search(unit_vectors(8), 1)
        assert keys[:, 0].tolist() == list(range(8)) and store.dtype == dtype
        assert np.allclose(store.get_vectors([1]), unit_vectors(8)[[1]], atol=0.02)
        store.close()


def test_create_refuses_existing_index(tmp_path: Path) -> None:
    make_store(tmp_path / "ix").close()
    with pytest.raises(IndexStoreError, match="already exists"):
        IndexStore.create(tmp_path / "ix", "molecule", DIM, "bundle-a")


def test_open_refuses_truncated_vectors(tmp_path: Path) -> None:
    make_store(tmp_path / "ix", n=50).close()
    vectors = tmp_path / "ix" / VECTORS_FILE
    data = vectors.read_bytes()
    vectors.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexStoreError, match=r"vectors\.usearch is corrupted or truncated"):
        IndexStore.open(tmp_path / "ix")


def test_open_refuses_missing_metadata(tmp_path: Path) -> None:
    make_store(tmp_path / "ix").close()
    (tmp_path / "ix" / METADATA_FILE).unlink()
    with pytest.raises(IndexStoreError, match=r"ix is missing metadata\.sqlite"):
        IndexStore.open(tmp_path / "ix")


def test_open_refuses_garbage_metadata(tmp_path: Path) -> None:
    make_store(tmp_path / "ix").close()
    (tmp_path / "ix" / METADATA_FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(IndexStoreError, match="not a readable SQLite database"):
        IndexStore.open(tmp_path / "ix")


def test_open_refuses_other_bundle(tmp_path: Path) -> None:
    make_store(tmp_path / "ix").close()
    with pytest.raises(IndexStoreError, match="built with bundle bundle-a, but bundle bundle-b"):
        IndexStore.open(tmp_path / "ix", expected_bundle_id="bundle-b")


def test_open_refuses_missing_dir_and_json(tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="does not exist"):
        IndexStore.open(tmp_path / "nowhere")
    make_store(tmp_path / "ix").close()
    (tmp_path / "ix" / INDEX_JSON).unlink()
    with pytest.raises(IndexStoreError, match="has no index.json"):
        IndexStore.open(tmp_path / "ix")


def test_open_refuses_count_mismatch(tmp_path: Path) -> None:
    make_store(tmp_path / "ix", n=6).close()
    with sqlite3.connect(tmp_path / "ix" / METADATA_FILE) as db:
        db.execute("DELETE FROM rows WHERE key = 2")
    with pytest.raises(IndexStoreError, match="count mismatch: vectors.usearch holds 6 vectors"):
        IndexStore.open(tmp_path / "ix")


def test_open_refuses_other_format_version(tmp_path: Path) -> None:
    make_store(tmp_path / "ix").close()
    path = tmp_path / "ix" / INDEX_JSON
    config = json.loads(path.read_text())
    config["format_version"] = 99
    path.write_text(json.dumps(config))
    with pytest.raises(IndexStoreError, match="format version 99"):
        IndexStore.open(tmp_path / "ix")


def test_crash_after_sqlite_commit_keeps_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Death between the SQLite commit and the vector rename: the previous state opens."""
    store = make_store(tmp_path / "ix", n=5)
    store.add(unit_vectors(4, seed=7), molecules(4, start=5))
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == VECTORS_FILE:
            raise OSError("simulated crash before the vector rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        store.save({"rows_done": 9})
    monkeypatch.setattr(os, "replace", real_replace)
    # The SQLite commit happened: 9 rows on disk, 5 committed vectors.
    with sqlite3.connect(tmp_path / "ix" / METADATA_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 9
    store._db.close()  # the process "died": nothing else of it survives

    reopened = IndexStore.open(tmp_path / "ix")
    assert reopened.size == 5 and reopened.build_state == {"rows_done": 5}
    assert [r.key for r in reopened.records(range(9)) if r] == [0, 1, 2, 3, 4]
    assert reopened.find_inchikeys(["KEY-0006"]) == {}
    # The rolled-back molecules can be added again and get the same keys.
    assert reopened.add(unit_vectors(4, seed=7), molecules(4, start=5)).keys == [5, 6, 7, 8]
    reopened.save({"rows_done": 9})
    reopened.close()
    assert IndexStore.open(tmp_path / "ix").size == 9
    assert not list((tmp_path / "ix").glob(".tmp-*"))


def test_crash_before_index_json_keeps_new_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Death after the vector rename: the new state is committed; index.json is repaired."""
    store = make_store(tmp_path / "ix", n=5)
    store.add(unit_vectors(3, seed=8), molecules(3, start=5))
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == INDEX_JSON:
            raise OSError("simulated crash before index.json")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        store.save({"rows_done": 8})
    monkeypatch.setattr(os, "replace", real_replace)
    store._db.close()
    assert json.loads((tmp_path / "ix" / INDEX_JSON).read_text())["count"] == 5

    reopened = IndexStore.open(tmp_path / "ix")
    assert reopened.size == 8 and reopened.build_state == {"rows_done": 8}
    assert json.loads((tmp_path / "ix" / INDEX_JSON).read_text())["count"] == 8
    reopened.close()


def test_unsaved_adds_are_not_durable(tmp_path: Path) -> None:
    store = make_store(tmp_path / "ix", n=4)
    store.add(unit_vectors(2, seed=9), molecules(2, start=4))
    assert store.size == 6
    store.close()
    assert IndexStore.open(tmp_path / "ix").size == 4
