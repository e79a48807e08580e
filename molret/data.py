"""Readers for ChEBI-20 pairs, candidate sets and compound libraries.

Only the stdlib csv module is used (plus pyarrow, imported lazily, for parquet) because the
serving install streams libraries into an index and must not pull in pandas.

ChEBI-20 files are tab-separated with no quoting convention: descriptions contain literal
double quotes and many SMILES contain backslashes (cis/trans bonds), so they are read with
`csv.QUOTE_NONE`; any quote handling would silently corrupt those fields.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

__all__ = [
    "DATA_ENV_VAR",
    "Candidate",
    "DataNotFound",
    "LibraryRecord",
    "Pair",
    "chebi20_split",
    "iter_library",
    "read_candidates",
    "read_pairs",
    "resolve_data_dir",
]

StrPath: TypeAlias = str | os.PathLike[str]

DATA_ENV_VAR = "MOLRET_DATA"

_SMILES_COLUMNS = ("smiles", "canonical_smiles")
_NAME_COLUMNS = ("cid", "id", "name", "title")
_LIBRARY_SUFFIXES = (".smi", ".csv", ".tsv", ".parquet")
_PARQUET_BATCH_ROWS = 65_536
_HOW_TO_POINT = (
    "pass --data DIR or set MOLRET_DATA=DIR, where DIR is the ChEBI-20 folder holding "
    "train.txt and validation.txt"
)


class DataNotFound(FileNotFoundError):
    """The data folder or one of its files is missing; the message says how to fix it."""


@dataclass(frozen=True)
class Pair:
    """One text-molecule training/evaluation pair. CID stays a string: it is an id, not a number."""

    cid: str
    smiles: str
    description: str


@dataclass(frozen=True)
class Candidate:
    """One molecule of a retrieval candidate set; description is None when the file has none."""

    cid: str
    smiles: str
    description: str | None


@dataclass(frozen=True)
class LibraryRecord:
    """One compound of a library. `row` is the 0-based data row (header excluded), so a
    rejected record can be reported back in terms the library's owner can find."""

    row: int
    name: str
    smiles: str


def resolve_data_dir(path: StrPath | None = None) -> Path:
    """Pick the data folder from an explicit argument, else from $MOLRET_DATA.

    An explicit path that does not exist is an error, not a reason to fall back to the
    environment: silently evaluating on other data would be worse than failing.
    """
    if path is not None and os.fspath(path) != "":
        source = "the given path"
        folder = Path(path).expanduser()
    else:
        env_value = os.environ.get(DATA_ENV_VAR, "").strip()
        if not env_value:
            raise DataNotFound(f"no ChEBI-20 data folder given: {_HOW_TO_POINT}")
        source = f"${DATA_ENV_VAR}"
        folder = Path(env_value).expanduser()
    if not folder.is_dir():
        raise DataNotFound(
            f"ChEBI-20 data folder {folder} (from {source}) does not exist or is not a "
            f"directory: {_HOW_TO_POINT}"
        )
    return folder


def chebi20_split(data_dir: StrPath | None) -> dict[str, Path]:
    """Paths of the ChEBI-20 splits. "test" only when present: the public release has no
    test.txt with descriptions, and callers must not assume one."""
    folder = resolve_data_dir(data_dir)
    splits = {name: folder / f"{name}.txt" for name in ("train", "validation")}
    missing = [path.name for path in splits.values() if not path.is_file()]
    if missing:
        raise DataNotFound(f"{folder} has no {' or '.join(missing)}: {_HOW_TO_POINT}")
    test = folder / "test.txt"
    if test.is_file():
        splits["test"] = test
    return splits


def read_pairs(path: StrPath) -> list[Pair]:
    """Read a ChEBI-20 style TSV (header CID, SMILES, description; extra columns ignored)."""
    source = Path(path)
    with _open_text(source) as handle:
        reader = _tsv_reader(handle)
        header = _read_header(reader, source)
        cid, smiles, description = (
            _require_column(header, name, source) for name in ("CID", "SMILES", "description")
        )
        return [
            Pair(cid=fields[cid], smiles=fields[smiles], description=fields[description])
            for fields in _data_rows(reader, source, len(header))
        ]


def read_candidates(path: StrPath) -> list[Candidate]:
    """Read a candidate-set TSV: CID and SMILES required, description optional.

    An empty description becomes None as well, so callers have one "no text" case to handle.
    """
    source = Path(path)
    with _open_text(source) as handle:
        reader = _tsv_reader(handle)
        header = _read_header(reader, source)
        cid = _require_column(header, "CID", source)
        smiles = _require_column(header, "SMILES", source)
        description = _find_column(header, "description")
        return [
            Candidate(
                cid=fields[cid],
                smiles=fields[smiles],
                description=(fields[description] or None) if description is not None else None,
            )
            for fields in _data_rows(reader, source, len(header))
        ]


def iter_library(
    path: StrPath,
    smiles_column: str | None = None,
    name_column: str | None = None,
) -> Iterator[LibraryRecord]:
    """Stream the compounds of a library file of any size, one record at a time.

    Formats by extension: .smi, .csv, .tsv (each optionally .gz) and .parquet. The format,
    the file's existence and the columns are checked before the first record is requested,
    so a bad argument fails at once rather than after an expensive setup. Records with an
    empty SMILES are still yielded: rejecting them (with a reason) is the caller's job.
    """
    source = Path(path)
    suffix = _library_suffix(source)
    if not source.is_file():
        raise FileNotFoundError(f"compound library {source} does not exist")

    if suffix == ".smi":
        if smiles_column is not None or name_column is not None:
            raise ValueError(
                f"{source}: smiles_column/name_column apply to .csv, .tsv and .parquet "
                "libraries; a .smi file has no columns (SMILES first, then the name)"
            )
        return _iter_smi(source)

    if suffix == ".parquet":
        parquet = _import_parquet()
        columns = list(parquet.read_schema(source).names)
        smiles_name, name_name = _library_columns(columns, smiles_column, name_column, source)
        return _iter_parquet(source, smiles_name, name_name)

    with _open_text(source) as handle:
        header = _read_header(_library_reader(handle, suffix), source)
    smiles_name, name_name = _library_columns(header, smiles_column, name_column, source)
    smiles_idx = header.index(smiles_name)
    name_idx = header.index(name_name) if name_name is not None else None
    return _iter_delimited(source, suffix, smiles_idx, name_idx, len(header))


# --- helpers -------------------------------------------------------------------------------


def _open_text(path: Path) -> IO[str]:
    """Open plain or gzip text; utf-8-sig drops a BOM that would otherwise rename column 1."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _tsv_reader(handle: IO[str]) -> Any:
    return csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)


def _library_reader(handle: IO[str], suffix: str) -> Any:
    """CSV follows RFC 4180 quoting (names may contain commas); TSV has no quoting at all."""
    if suffix == ".csv":
        return csv.reader(handle)
    return _tsv_reader(handle)


def _read_header(reader: Any, path: Path) -> list[str]:
    try:
        for fields in reader:
            if fields:
                return [field.strip() for field in fields]
    except csv.Error as exc:
        raise ValueError(f"{path}, line {reader.line_num}: {exc}") from exc
    raise ValueError(f"{path} is empty: expected a header line")


def _data_rows(reader: Any, path: Path, width: int) -> Iterator[list[str]]:
    """Rows after the header, with the field count checked so a stray tab or a truncated line
    is reported where it is instead of shifting a description into the SMILES column."""
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(f"{path}, line {reader.line_num}: {exc}") from exc
        if not fields:
            continue  # blank line, typically at the end of the file
        if len(fields) != width:
            raise ValueError(
                f"{path}, line {reader.line_num}: expected {width} fields (as in the header), "
                f"found {len(fields)}"
            )
        yield fields


def _find_column(header: Sequence[str], wanted: str) -> int | None:
    """Exact match first, then case-insensitive: files disagree on "cid" vs "CID"."""
    if wanted in header:
        return list(header).index(wanted)
    lowered = [name.lower() for name in header]
    return lowered.index(wanted.lower()) if wanted.lower() in lowered else None


def _require_column(header: Sequence[str], wanted: str, path: Path) -> int:
    index = _find_column(header, wanted)
    if index is None:
        raise ValueError(
            f"{path}, line 1: no {wanted!r} column in the header (found {list(header)})"
        )
    return index


def _library_suffix(path: Path) -> str:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
        allowed: tuple[str, ...] = (".smi", ".csv", ".tsv")
    else:
        allowed = _LIBRARY_SUFFIXES
    if not suffixes or suffixes[-1] not in allowed:
        raise ValueError(
            f"{path}: unknown library format; expected one of .smi, .csv, .tsv (optionally "
            ".gz) or .parquet"
        )
    return suffixes[-1]


def _library_columns(
    columns: Sequence[str],
    smiles_column: str | None,
    name_column: str | None,
    path: Path,
) -> tuple[str, str | None]:
    """Resolve the SMILES and name columns; no name column means "use the row number"."""
    if smiles_column is not None:
        smiles_idx = _find_column(columns, smiles_column)
        if smiles_idx is None:
            raise ValueError(f"{path}: no column {smiles_column!r} (found {list(columns)})")
    else:
        smiles_idx = _first_present(columns, _SMILES_COLUMNS)
        if smiles_idx is None:
            raise ValueError(
                f"{path}: no SMILES column among {list(columns)}; expected one of "
                f"{', '.join(_SMILES_COLUMNS)} (any case) or pass the column name explicitly"
            )
    if name_column is not None:
        name_idx = _find_column(columns, name_column)
        if name_idx is None:
            raise ValueError(f"{path}: no column {name_column!r} (found {list(columns)})")
    else:
        name_idx = _first_present(columns, _NAME_COLUMNS)
    return columns[smiles_idx], (columns[name_idx] if name_idx is not None else None)


def _first_present(columns: Sequence[str], preferred: Sequence[str]) -> int | None:
    for wanted in preferred:
        index = _find_column(columns, wanted)
        if index is not None:
            return index
    return None


def _iter_smi(path: Path) -> Iterator[LibraryRecord]:
    row = 0
    first_data_line = True
    with _open_text(path) as handle:
        for line in handle:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            # SMILES never contain whitespace, so the first token is the SMILES whether the
            # file uses spaces or tabs, and everything after it (spaces included) is the name.
            parts = text.split(None, 1)
            smiles = parts[0]
            if first_data_line:
                first_data_line = False
                if smiles.lower() == "smiles":
                    continue
            name = parts[1].strip() if len(parts) > 1 else ""
            yield LibraryRecord(row=row, name=name or str(row), smiles=smiles)
            row += 1


def _iter_delimited(
    path: Path,
    suffix: str,
    smiles_idx: int,
    name_idx: int | None,
    width: int,
) -> Iterator[LibraryRecord]:
    with _open_text(path) as handle:
        reader = _library_reader(handle, suffix)
        _read_header(reader, path)
        for row, fields in enumerate(_data_rows(reader, path, width)):
            name = fields[name_idx].strip() if name_idx is not None else ""
            yield LibraryRecord(row=row, name=name or str(row), smiles=fields[smiles_idx].strip())


def _import_parquet() -> Any:
    """Import pyarrow only when a parquet file is read: it is an optional, heavy dependency."""
    try:
        import pyarrow.parquet as parquet
    except ImportError as exc:
        raise ImportError("reading .parquet libraries needs pyarrow: pip install pyarrow") from exc
    return parquet


def _iter_parquet(path: Path, smiles_name: str, name_name: str | None) -> Iterator[LibraryRecord]:
    parquet = _import_parquet()
    wanted = list(dict.fromkeys([smiles_name] + ([name_name] if name_name is not None else [])))
    row = 0
    with parquet.ParquetFile(path) as table:
        for batch in table.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=wanted):
            smiles_values = batch.column(smiles_name).to_pylist()
            names = (
                batch.column(name_name).to_pylist()
                if name_name is not None
                else [None] * len(smiles_values)
            )
            for smiles, name in zip(smiles_values, names, strict=True):
                name_text = _cell_text(name)
                yield LibraryRecord(row=row, name=name_text or str(row), smiles=_cell_text(smiles))
                row += 1


def _cell_text(value: object) -> str:
    """Parquet cells may be null, bytes or numbers (integer CIDs); records hold plain text."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8").strip()
    return str(value).strip()
