"""One vector index on disk: a USearch HNSW graph plus an SQLite table of what each key is.

Layout of an index directory::

    index.json        what the index is (kind, bundle id, dim, dtype, HNSW settings, count,
                      build state); written last on every save
    vectors.usearch   the USearch index (key = row id)
    metadata.sqlite   table ``rows`` (key, name, smiles, canonical_smiles, inchikey, text) and
                      table ``commits`` (count -> build state at that count)

Keys are row ids ``0..n-1``, assigned in the order rows are accepted. A molecule index stores
each InChIKey once: adding a molecule that is already there returns the existing key.

**Crash safety.** Two files cannot be replaced in one atomic step, so ``save()`` orders its
writes such that a reader can always tell which state is complete:

1. the new USearch index is written to a temp file in the directory and fsynced;
2. the pending metadata rows and the new build state (table ``commits``) are committed to
   SQLite in one transaction;
3. the temp file is renamed over ``vectors.usearch`` (atomic) and the directory fsynced:
   **this rename is the commit point**, the vector file's size is the committed count;
4. ``index.json`` is rewritten (temp, fsync, rename) with the new count.

``open()`` takes the committed count from ``vectors.usearch``. Metadata rows with a key at or
beyond it belong to a save that died between steps 2 and 3: they are deleted (rolled back),
together with their ``commits`` entry, so the previous state opens as it was. A stale
``index.json`` (death between steps 3 and 4) is rewritten from the committed state. Build
progress lives in SQLite next to the rows it describes, so it can never disagree with them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DTYPES",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
    "KINDS",
    "AddResult",
    "IndexStore",
    "IndexStoreError",
    "NewRecord",
    "Record",
]

log = logging.getLogger(__name__)

INDEX_FORMAT = "molret-index"
INDEX_FORMAT_VERSION = 1
INDEX_JSON = "index.json"
VECTORS_FILE = "vectors.usearch"
METADATA_FILE = "metadata.sqlite"
KINDS = ("molecule", "text")
DTYPES = ("f16", "i8", "f32")
METRIC = "cos"
_TEMP_PREFIX = ".tmp-"
_SQL_CHUNK = 500  # bound on "?" parameters per statement (SQLite's default limit is 999+)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    key INTEGER PRIMARY KEY,
    name TEXT,
    smiles TEXT,
    canonical_smiles TEXT,
    inchikey TEXT UNIQUE,
    text TEXT
);
CREATE TABLE IF NOT EXISTS commits (
    count INTEGER PRIMARY KEY,
    state TEXT,
    saved TEXT NOT NULL
);
"""
_COLUMNS = "key, name, smiles, canonical_smiles, inchikey, text"


class IndexStoreError(ValueError):
    """An index directory that cannot be used; the message names it and the problem."""


@dataclass(frozen=True)
class Record:
    """One stored row: what key ``key`` stands for."""

    key: int
    name: str
    smiles: str | None
    canonical_smiles: str | None
    inchikey: str | None
    text: str | None


@dataclass(frozen=True)
class NewRecord:
    """A row to add; its key is assigned by :meth:`IndexStore.add`."""

    name: str
    smiles: str | None = None
    canonical_smiles: str | None = None
    inchikey: str | None = None
    text: str | None = None


@dataclass
class AddResult:
    """``keys[i]`` is the key of ``records[i]`` (the existing one for a duplicate);
    ``duplicates`` lists the positions that were not added because their InChIKey was stored."""

    keys: list[int | None]
    duplicates: list[int] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a server may run as another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _new_usearch(config: Mapping[str, Any]) -> Any:
    from usearch.index import Index

    return Index(
        ndim=int(config["dim"]),
        metric=METRIC,
        dtype=str(config["dtype"]),
        connectivity=int(config["connectivity"]),
        expansion_add=int(config["expansion_add"]),
        expansion_search=int(config["expansion_search"]),
    )


class IndexStore:
    """A USearch index and its metadata, safe to share between threads (one lock)."""

    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        index: Any,
        db: sqlite3.Connection,
        build_state: dict[str, Any] | None,
    ) -> None:
        self._path = path
        self._config = config
        self._index = index
        self._db = db
        self._build_state = build_state
        self._lock = threading.RLock()
        self._in_transaction = False

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        kind: str,
        dim: int,
        bundle_id: str,
        dtype: str = "f16",
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
    ) -> IndexStore:
        """A new, empty index in ``path`` (created if needed; must not hold an index)."""
        root = Path(path)
        if kind not in KINDS:
            raise IndexStoreError(f"index {root}: kind must be one of {KINDS}, got {kind!r}")
        if dtype not in DTYPES:
            raise IndexStoreError(f"index {root}: dtype must be one of {DTYPES}, got {dtype!r}")
        if dim < 1 or connectivity < 2 or expansion_add < 1 or expansion_search < 1:
            raise IndexStoreError(
                f"index {root}: need dim >= 1, connectivity >= 2 and expansions >= 1"
            )
        root.mkdir(parents=True, exist_ok=True)
        if (root / INDEX_JSON).exists():
            raise IndexStoreError(f"index {root} already exists ({INDEX_JSON} is present)")
        # Without index.json an earlier create() died half-way: its files are not an index.
        for leftover in (VECTORS_FILE, METADATA_FILE, METADATA_FILE + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                (root / leftover).unlink()
        config: dict[str, Any] = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "kind": kind,
            "bundle_id": bundle_id,
            "dim": int(dim),
            "dtype": dtype,
            "metric": METRIC,
            "connectivity": int(connectivity),
            "expansion_add": int(expansion_add),
            "expansion_search": int(expansion_search),
            "count": 0,
            "created": _now(),
        }
        index = _new_usearch(config)
        db = sqlite3.connect(root / METADATA_FILE, isolation_level=None, check_same_thread=False)
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO commits (count, state, saved) VALUES (0, NULL, ?)", (_now(),))
        store = cls(root, config, index, db, None)
        store._write_vectors()
        store._write_index_json()
        return store

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], expected_bundle_id: str | None = None
    ) -> IndexStore:
        """Open an index for search and further adds, rolling back an interrupted save."""
        root = Path(path)
        config = cls._read_config(root)
        if expected_bundle_id is not None and config["bundle_id"] != expected_bundle_id:
            raise IndexStoreError(
                f"index {root} was built with bundle {config['bundle_id']}, but bundle "
                f"{expected_bundle_id} is loaded: its vectors are not comparable (rebuild the "
                "index with this bundle)"
            )
        for name in (VECTORS_FILE, METADATA_FILE):
            if not (root / name).is_file():
                raise IndexStoreError(f"index {root} is missing {name}")
        index = _new_usearch(config)
        try:
            index.load(str(root / VECTORS_FILE))
        except (RuntimeError, ValueError, OSError) as exc:
            raise IndexStoreError(
                f"index {root}: {VECTORS_FILE} is corrupted or truncated ({exc})"
            ) from exc
        if int(index.ndim) != config["dim"]:
            raise IndexStoreError(
                f"index {root}: {VECTORS_FILE} holds {index.ndim}-dimensional vectors but "
                f"{INDEX_JSON} says {config['dim']}"
            )
        count = len(index)
        db = cls._open_db(root)
        try:
            state = cls._recover(root, db, count, config)
        except BaseException:
            db.close()
            raise
        store = cls(root, config, index, db, state)
        if config["count"] != count:
            log.warning(
                "index %s: %s says %d items, the committed vectors %d (a save was interrupted); "
                "rewriting it",
                root,
                INDEX_JSON,
                config["count"],
                count,
            )
            config["count"] = count
            with contextlib.suppress(OSError):
                store._write_index_json()
        for stale in root.glob(_TEMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return store

    @staticmethod
    def _read_config(root: Path) -> dict[str, Any]:
        if not root.is_dir():
            raise IndexStoreError(f"index {root} does not exist or is not a directory")
        meta = root / INDEX_JSON
        if not meta.is_file():
            raise IndexStoreError(
                f"index {root} has no {INDEX_JSON} (not an index, or its creation did not finish)"
            )
        try:
            config = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexStoreError(f"index {root}: {INDEX_JSON} is not valid JSON ({exc})") from exc
        if not isinstance(config, dict) or config.get("format") != INDEX_FORMAT:
            raise IndexStoreError(f"index {root}: {INDEX_JSON} is not a molret index description")
        version = config.get("format_version")
        if version != INDEX_FORMAT_VERSION:
            raise IndexStoreError(
                f"index {root} has format version {version!r}; this molret reads version "
                f"{INDEX_FORMAT_VERSION} (rebuild the index)"
            )
        required = ("kind", "bundle_id", "dim", "dtype", "connectivity", "expansion_add")
        missing = [key for key in (*required, "expansion_search", "count") if key not in config]
        if missing:
            raise IndexStoreError(f"index {root}: {INDEX_JSON} lacks {', '.join(missing)}")
        if config["kind"] not in KINDS or config["dtype"] not in DTYPES:
            raise IndexStoreError(
                f"index {root}: unknown kind {config['kind']!r} or dtype {config['dtype']!r}"
            )
        return config

    @staticmethod
    def _open_db(root: Path) -> sqlite3.Connection:
        db = sqlite3.connect(root / METADATA_FILE, isolation_level=None, check_same_thread=False)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            db.close()
            raise IndexStoreError(
                f"index {root}: {METADATA_FILE} is not a readable SQLite database ({exc})"
            ) from exc
        if not {"rows", "commits"} <= tables:
            db.close()
            raise IndexStoreError(f"index {root}: {METADATA_FILE} lacks the rows/commits tables")
        return db

    @staticmethod
    def _recover(
        root: Path, db: sqlite3.Connection, count: int, config: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Roll back rows of a save that died before its vectors were committed; return the
        build state that belongs to the committed count."""
        (extra,) = db.execute("SELECT COUNT(*) FROM rows WHERE key >= ?", (count,)).fetchone()
        if extra:
            log.warning(
                "index %s: rolling back %d metadata rows of an interrupted save", root, extra
            )
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM rows WHERE key >= ?", (count,))
                db.execute("DELETE FROM commits WHERE count > ?", (count,))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise IndexStoreError(
                    f"index {root}: cannot roll back an interrupted save ({exc}); open it "
                    "once with write access"
                ) from exc
        (rows, lowest, highest) = db.execute(
            "SELECT COUNT(*), MIN(key), MAX(key) FROM rows"
        ).fetchone()
        if rows != count or (count and (lowest != 0 or highest != count - 1)):
            raise IndexStoreError(
                f"index {root}: count mismatch: {VECTORS_FILE} holds {count} vectors but "
                f"{METADATA_FILE} has {rows} rows (the files do not belong together)"
            )
        found = db.execute("SELECT state FROM commits WHERE count = ?", (count,)).fetchone()
        if found is None:
            raise IndexStoreError(
                f"index {root}: {METADATA_FILE} has no commit record for {count} items "
                f"({VECTORS_FILE} does not belong to it)"
            )
        if found[0] is None:
            state = config.get("build_state") if config.get("count") == count else None
            return dict(state) if isinstance(state, dict) else None
        return dict(json.loads(found[0]))

    # ---- properties --------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def kind(self) -> str:
        return str(self._config["kind"])

    @property
    def dim(self) -> int:
        return int(self._config["dim"])

    @property
    def bundle_id(self) -> str:
        return str(self._config["bundle_id"])

    @property
    def dtype(self) -> str:
        return str(self._config["dtype"])

    @property
    def connectivity(self) -> int:
        return int(self._config["connectivity"])

    @property
    def expansion_add(self) -> int:
        return int(self._config["expansion_add"])

    @property
    def expansion_search(self) -> int:
        return int(self._config["expansion_search"])

    @property
    def size(self) -> int:
        """Items searchable now, including adds not yet saved."""
        with self._lock:
            return len(self._index)

    @property
    def build_state(self) -> dict[str, Any] | None:
        """The state recorded by the last ``save(build_state=...)`` (a copy)."""
        with self._lock:
            return dict(self._build_state) if self._build_state is not None else None

    @property
    def config(self) -> dict[str, Any]:
        """The content of ``index.json`` (a copy)."""
        with self._lock:
            return dict(self._config)

    # ---- search ------------------------------------------------------------------------

    def _queries(self, vectors: np.ndarray) -> np.ndarray:
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"query vectors must have shape [n, {self.dim}], got {np.shape(vectors)}"
            )
        return np.ascontiguousarray(queries)

    def search(
        self, vectors: np.ndarray, k: int, exact: bool = False, threads: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` keys (int64) and cosine similarities (float32) for each query row, in one
        batched USearch call. Positions beyond the index size are key -1, score nan."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = self._queries(vectors)
        n = queries.shape[0]
        keys = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), np.nan, dtype=np.float32)
        with self._lock:
            if n == 0 or len(self._index) == 0:
                return keys, scores
            matches = self._index.search(queries, k, exact=exact, threads=threads)
        found = np.asarray(matches.keys).reshape(n, -1)[:, :k]
        distances = np.asarray(matches.distances, dtype=np.float32).reshape(n, -1)[:, :k]
        if hasattr(matches, "counts"):
            counts = np.asarray(matches.counts).reshape(n)
        else:  # a one-row batch comes back as Matches, which holds only the valid hits
            counts = np.full(n, found.shape[1])
        valid = np.arange(found.shape[1])[None, :] < counts[:, None]
        width = found.shape[1]
        keys[:, :width] = np.where(valid, found.astype(np.int64), -1)
        with np.errstate(invalid="ignore"):  # unused slots hold garbage distances
            scores[:, :width] = np.where(valid, 1.0 - distances, np.nan)
        return keys, scores

    def exact_search(
        self, vectors: np.ndarray, k: int, threads: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-``k`` over the stored vectors (ground truth for recall)."""
        return self.search(vectors, k, exact=True, threads=threads)

    def get_vectors(self, keys: Sequence[int]) -> np.ndarray:
        """Stored vectors as float32 [n, dim] (f16/i8 quantized as stored; i8 rescaled to
        unit length). Raises KeyError for a key that is not stored."""
        with self._lock:
            wanted = np.asarray(list(keys), dtype=np.uint64)
            out = np.zeros((len(wanted), self.dim), dtype=np.float32)
            if len(wanted) == 0:
                return out
            got = self._index.get(wanted)
        rows = got if isinstance(got, tuple) else list(got)
        for position, row in enumerate(rows):
            if row is None:
                raise KeyError(f"key {int(wanted[position])} is not in index {self._path}")
            out[position] = np.asarray(row, dtype=np.float32).reshape(-1)
        if self.dtype == "i8":
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms > 0, norms, 1.0)
        return out

    # ---- metadata ----------------------------------------------------------------------

    def records(self, keys: Sequence[int]) -> list[Record | None]:
        """The row of each key, in order; None for -1 or a key that is not stored."""
        wanted = [int(k) for k in keys]
        found: dict[int, Record] = {}
        unique = sorted({k for k in wanted if k >= 0})
        with self._lock:
            for lo in range(0, len(unique), _SQL_CHUNK):
                chunk = unique[lo : lo + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in self._db.execute(
                    f"SELECT {_COLUMNS} FROM rows WHERE key IN ({marks})", chunk
                ):
                    found[row[0]] = Record(*row)
        return [found.get(k) for k in wanted]

    def find_inchikeys(self, inchikeys: Sequence[str | None]) -> dict[str, int]:
        """Stored keys of those InChIKeys that are in the index (including unsaved adds)."""
        unique = sorted({k for k in inchikeys if k})
        found: dict[str, int] = {}
        with self._lock:
            for lo in range(0, len(unique), _SQL_CHUNK):
                chunk = unique[lo : lo + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                for inchikey, key in self._db.execute(
                    f"SELECT inchikey, key FROM rows WHERE inchikey IN ({marks})", chunk
                ):
                    found[inchikey] = int(key)
        return found

    # ---- writing -----------------------------------------------------------------------

    def add(self, vectors: np.ndarray, records: Sequence[NewRecord]) -> AddResult:
        """Add rows (kept in memory and an open SQLite transaction until :meth:`save`).

        In a molecule index a record whose InChIKey is already stored, or appears earlier in
        the same call, is not added again: its existing key is returned and its position is
        listed in ``duplicates``. Records without an InChIKey are never deduplicated.
        """
        data = np.asarray(vectors, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] != self.dim or data.shape[0] != len(records):
            raise ValueError(
                f"need vectors of shape [{len(records)}, {self.dim}] for {len(records)} "
                f"records, got {np.shape(vectors)}"
            )
        if not np.all(np.isfinite(data)):
            raise ValueError("vectors contain nan or inf")
        with self._lock:
            dedupe = self.kind == "molecule"
            known = self.find_inchikeys([r.inchikey for r in records]) if dedupe else {}
            next_key = len(self._index)
            keys: list[int | None] = []
            duplicates: list[int] = []
            new_rows: list[tuple[Any, ...]] = []
            new_positions: list[int] = []
            for position, record in enumerate(records):
                inchikey = record.inchikey if dedupe else None
                if inchikey and inchikey in known:
                    keys.append(known[inchikey])
                    duplicates.append(position)
                    continue
                key = next_key
                next_key += 1
                if inchikey:
                    known[inchikey] = key
                keys.append(key)
                new_positions.append(position)
                new_rows.append(
                    (
                        key,
                        record.name,
                        record.smiles,
                        record.canonical_smiles,
                        inchikey,
                        record.text,
                    )
                )
            if not new_rows:
                return AddResult(keys, duplicates)
            if not self._in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
                self._in_transaction = True
            self._db.execute("SAVEPOINT add_batch")
            try:
                self._db.executemany(
                    f"INSERT INTO rows ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", new_rows
                )
                self._index.add(
                    np.asarray([row[0] for row in new_rows], dtype=np.uint64),
                    np.ascontiguousarray(data[new_positions]),
                )
            except BaseException:
                self._db.execute("ROLLBACK TO add_batch")
                self._db.execute("RELEASE add_batch")
                raise
            self._db.execute("RELEASE add_batch")
            return AddResult(keys, duplicates)

    def save(self, build_state: Mapping[str, Any] | None = None) -> None:
        """Make every add durable (see the module docstring for the write order).

        ``build_state`` (JSON-serialisable) is stored with this commit; None keeps the last one.
        """
        with self._lock:
            state = dict(build_state) if build_state is not None else self._build_state
            count = len(self._index)
            state_json = json.dumps(state, sort_keys=True) if state is not None else None
            tmp = self._write_vectors_temp()
            try:
                if not self._in_transaction:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._in_transaction = True
                self._db.execute(
                    "INSERT OR REPLACE INTO commits (count, state, saved) VALUES (?, ?, ?)",
                    (count, state_json, _now()),
                )
                self._db.execute("COMMIT")
                self._in_transaction = False
                os.replace(tmp, self._path / VECTORS_FILE)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(self._path)
            self._build_state = state
            self._config["count"] = count
            self._write_index_json()

    def close(self) -> None:
        """Close the metadata database; unsaved adds are discarded."""
        with self._lock:
            if self._in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                self._in_transaction = False
            self._db.close()

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- files -------------------------------------------------------------------------

    def _write_vectors_temp(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self._path, prefix=_TEMP_PREFIX, suffix=".usearch")
        os.close(fd)
        tmp = Path(name)
        try:
            self._index.save(str(tmp))
            os.chmod(tmp, 0o644)
            _fsync_file(tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return tmp

    def _write_vectors(self) -> None:
        os.replace(self._write_vectors_temp(), self._path / VECTORS_FILE)
        _fsync_dir(self._path)

    def _write_index_json(self) -> None:
        payload = dict(self._config)
        payload["updated"] = _now()
        payload["build_state"] = self._build_state
        _write_json_atomic(self._path / INDEX_JSON, payload)

    def __repr__(self) -> str:
        return (
            f"IndexStore({str(self._path)!r}, kind={self.kind}, size={self.size}, "
            f"dim={self.dim}, dtype={self.dtype})"
        )
