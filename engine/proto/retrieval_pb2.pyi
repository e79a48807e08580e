from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class ItemError(_message.Message):
    __slots__ = ("index", "input", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    input: str
    reason: str
    def __init__(
        self, index: int | None = ..., input: str | None = ..., reason: str | None = ...
    ) -> None: ...

class Timings(_message.Message):
    __slots__ = ("prepare_us", "queue_us", "inference_us", "search_us", "total_us")
    PREPARE_US_FIELD_NUMBER: _ClassVar[int]
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    SEARCH_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    prepare_us: int
    queue_us: int
    inference_us: int
    search_us: int
    total_us: int
    def __init__(
        self,
        prepare_us: int | None = ...,
        queue_us: int | None = ...,
        inference_us: int | None = ...,
        search_us: int | None = ...,
        total_us: int | None = ...,
    ) -> None: ...

class EmbedTextsRequest(_message.Message):
    __slots__ = ("texts", "chunk_size")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    chunk_size: int
    def __init__(
        self, texts: _Iterable[str] | None = ..., chunk_size: int | None = ...
    ) -> None: ...

class EmbedMoleculesRequest(_message.Message):
    __slots__ = ("smiles", "chunk_size")
    SMILES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    smiles: _containers.RepeatedScalarFieldContainer[str]
    chunk_size: int
    def __init__(
        self, smiles: _Iterable[str] | None = ..., chunk_size: int | None = ...
    ) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("index", "values", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    values: _containers.RepeatedScalarFieldContainer[float]
    error: ItemError
    def __init__(
        self,
        index: int | None = ...,
        values: _Iterable[float] | None = ...,
        error: ItemError | _Mapping | None = ...,
    ) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dim", "bundle_id", "timings")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dim: int
    bundle_id: str
    timings: Timings
    def __init__(
        self,
        embeddings: _Iterable[Embedding | _Mapping] | None = ...,
        dim: int | None = ...,
        bundle_id: str | None = ...,
        timings: Timings | _Mapping | None = ...,
    ) -> None: ...

class SearchTextsRequest(_message.Message):
    __slots__ = ("texts", "k")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    k: int
    def __init__(self, texts: _Iterable[str] | None = ..., k: int | None = ...) -> None: ...

class SearchMoleculesRequest(_message.Message):
    __slots__ = ("smiles", "k")
    SMILES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    smiles: _containers.RepeatedScalarFieldContainer[str]
    k: int
    def __init__(self, smiles: _Iterable[str] | None = ..., k: int | None = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("score", "key", "name", "smiles", "canonical_smiles", "inchikey", "text")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SMILES_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_SMILES_FIELD_NUMBER: _ClassVar[int]
    INCHIKEY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    score: float
    key: int
    name: str
    smiles: str
    canonical_smiles: str
    inchikey: str
    text: str
    def __init__(
        self,
        score: float | None = ...,
        key: int | None = ...,
        name: str | None = ...,
        smiles: str | None = ...,
        canonical_smiles: str | None = ...,
        inchikey: str | None = ...,
        text: str | None = ...,
    ) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("index", "hits", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    error: ItemError
    def __init__(
        self,
        index: int | None = ...,
        hits: _Iterable[Hit | _Mapping] | None = ...,
        error: ItemError | _Mapping | None = ...,
    ) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "index_kind", "index_size", "timings")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    index_kind: str
    index_size: int
    timings: Timings
    def __init__(
        self,
        results: _Iterable[QueryResult | _Mapping] | None = ...,
        index_kind: str | None = ...,
        index_size: int | None = ...,
        timings: Timings | _Mapping | None = ...,
    ) -> None: ...

class GetIndexInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("kind", "size", "dim", "dtype", "bundle_id", "path")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    kind: str
    size: int
    dim: int
    dtype: str
    bundle_id: str
    path: str
    def __init__(
        self,
        kind: str | None = ...,
        size: int | None = ...,
        dim: int | None = ...,
        dtype: str | None = ...,
        bundle_id: str | None = ...,
        path: str | None = ...,
    ) -> None: ...

class GetIndexInfoResponse(_message.Message):
    __slots__ = (
        "bundle_id",
        "dim",
        "precision",
        "model_name",
        "buckets",
        "text_max_length",
        "molecule_index",
        "text_index",
        "batching",
        "max_items_per_request",
        "max_k",
    )
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MOLECULE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    dim: int
    precision: str
    model_name: str
    buckets: _containers.RepeatedScalarFieldContainer[str]
    text_max_length: int
    molecule_index: IndexInfo
    text_index: IndexInfo
    batching: bool
    max_items_per_request: int
    max_k: int
    def __init__(
        self,
        bundle_id: str | None = ...,
        dim: int | None = ...,
        precision: str | None = ...,
        model_name: str | None = ...,
        buckets: _Iterable[str] | None = ...,
        text_max_length: int | None = ...,
        molecule_index: IndexInfo | _Mapping | None = ...,
        text_index: IndexInfo | _Mapping | None = ...,
        batching: bool | None = ...,
        max_items_per_request: int | None = ...,
        max_k: int | None = ...,
    ) -> None: ...

class NewMolecule(_message.Message):
    __slots__ = ("smiles", "name", "text")
    SMILES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    smiles: str
    name: str
    text: str
    def __init__(
        self, smiles: str | None = ..., name: str | None = ..., text: str | None = ...
    ) -> None: ...

class AddMoleculesRequest(_message.Message):
    __slots__ = ("molecules", "persist")
    MOLECULES_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    molecules: _containers.RepeatedCompositeFieldContainer[NewMolecule]
    persist: bool
    def __init__(
        self, molecules: _Iterable[NewMolecule | _Mapping] | None = ..., persist: bool | None = ...
    ) -> None: ...

class AddedMolecule(_message.Message):
    __slots__ = ("index", "key", "duplicate", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    key: int
    duplicate: bool
    error: ItemError
    def __init__(
        self,
        index: int | None = ...,
        key: int | None = ...,
        duplicate: bool | None = ...,
        error: ItemError | _Mapping | None = ...,
    ) -> None: ...

class AddMoleculesResponse(_message.Message):
    __slots__ = ("molecules", "index_size", "persisted", "timings")
    MOLECULES_FIELD_NUMBER: _ClassVar[int]
    INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    molecules: _containers.RepeatedCompositeFieldContainer[AddedMolecule]
    index_size: int
    persisted: bool
    timings: Timings
    def __init__(
        self,
        molecules: _Iterable[AddedMolecule | _Mapping] | None = ...,
        index_size: int | None = ...,
        persisted: bool | None = ...,
        timings: Timings | _Mapping | None = ...,
    ) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("bundle_dir", "index_dir", "text_index_dir")
    BUNDLE_DIR_FIELD_NUMBER: _ClassVar[int]
    INDEX_DIR_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_DIR_FIELD_NUMBER: _ClassVar[int]
    bundle_dir: str
    index_dir: str
    text_index_dir: str
    def __init__(
        self,
        bundle_dir: str | None = ...,
        index_dir: str | None = ...,
        text_index_dir: str | None = ...,
    ) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("bundle_id", "molecule_index_size", "text_index_size", "reload_ms")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    MOLECULE_INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    RELOAD_MS_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    molecule_index_size: int
    text_index_size: int
    reload_ms: int
    def __init__(
        self,
        bundle_id: str | None = ...,
        molecule_index_size: int | None = ...,
        text_index_size: int | None = ...,
        reload_ms: int | None = ...,
    ) -> None: ...
