"""A blocking Python client for the molret.v1.Retrieval service, returning plain dataclasses.

    with RetrievalClient("127.0.0.1:50051") as client:
        reply = client.search_text_to_molecules(["a sugar acid"], k=5)
        for hit in reply.results[0].hits:
            print(hit.score, hit.name, hit.smiles)

RPC failures raise :class:`RetrievalError` with the gRPC status code; per-item problems (an
invalid SMILES in a batch) are not exceptions but ``error`` fields on the items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from molret.engine.proto import retrieval_pb2 as pb
from molret.engine.proto import retrieval_pb2_grpc as pb_grpc

CLIENT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class RetrievalError(RuntimeError):
    """An RPC that failed as a whole; ``code`` is the grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method


@dataclass(frozen=True)
class ItemError:
    index: int
    input: str
    reason: str


@dataclass(frozen=True)
class Timings:
    prepare_us: int = 0
    queue_us: int = 0
    inference_us: int = 0
    search_us: int = 0
    total_us: int = 0


@dataclass(frozen=True)
class EmbedItem:
    index: int
    vector: np.ndarray | None
    error: ItemError | None = None


@dataclass(frozen=True)
class EmbedReply:
    items: list[EmbedItem]
    dim: int
    bundle_id: str
    timings: Timings

    @property
    def errors(self) -> list[ItemError]:
        return [item.error for item in self.items if item.error is not None]

    def matrix(self) -> tuple[np.ndarray, list[int]]:
        """The valid embeddings as float32 [n, dim] and their positions in the request."""
        ok = [item for item in self.items if item.vector is not None]
        if not ok:
            return np.zeros((0, self.dim), dtype=np.float32), []
        return np.stack([item.vector for item in ok]), [item.index for item in ok]  # type: ignore[misc]


@dataclass(frozen=True)
class Hit:
    score: float
    key: int
    name: str
    smiles: str
    canonical_smiles: str
    inchikey: str
    text: str


@dataclass(frozen=True)
class QueryResult:
    index: int
    hits: list[Hit]
    error: ItemError | None = None


@dataclass(frozen=True)
class SearchReply:
    results: list[QueryResult]
    index_kind: str
    index_size: int
    timings: Timings

    @property
    def errors(self) -> list[ItemError]:
        return [r.error for r in self.results if r.error is not None]


@dataclass(frozen=True)
class IndexInfo:
    kind: str
    size: int
    dim: int
    dtype: str
    bundle_id: str
    path: str


@dataclass(frozen=True)
class ServerInfo:
    bundle_id: str
    dim: int
    precision: str
    model_name: str
    buckets: list[str]
    text_max_length: int
    molecule_index: IndexInfo
    text_index: IndexInfo | None
    batching: bool
    max_items_per_request: int
    max_k: int


@dataclass(frozen=True)
class AddedMolecule:
    index: int
    key: int
    duplicate: bool
    error: ItemError | None = None


@dataclass(frozen=True)
class AddReply:
    molecules: list[AddedMolecule]
    index_size: int
    persisted: bool
    timings: Timings

    @property
    def errors(self) -> list[ItemError]:
        return [m.error for m in self.molecules if m.error is not None]


@dataclass(frozen=True)
class ReloadReply:
    bundle_id: str
    molecule_index_size: int
    text_index_size: int
    reload_ms: int


@dataclass(frozen=True)
class NewMolecule:
    smiles: str
    name: str = ""
    text: str = ""


class _Conversions:
    """Protobuf -> dataclass conversions (kept apart from the RPC plumbing)."""

    @staticmethod
    def error(message: Any, has: bool) -> ItemError | None:
        if not has:
            return None
        return ItemError(int(message.index), str(message.input), str(message.reason))

    @staticmethod
    def timings(message: pb.Timings) -> Timings:
        return Timings(
            int(message.prepare_us),
            int(message.queue_us),
            int(message.inference_us),
            int(message.search_us),
            int(message.total_us),
        )

    @classmethod
    def embed(cls, message: pb.EmbedResponse) -> EmbedReply:
        items = []
        for entry in message.embeddings:
            has_error = entry.HasField("error")
            vector = None if has_error else np.asarray(entry.values, dtype=np.float32)
            items.append(EmbedItem(int(entry.index), vector, cls.error(entry.error, has_error)))
        return EmbedReply(items, int(message.dim), message.bundle_id, cls.timings(message.timings))

    @classmethod
    def search(cls, message: pb.SearchResponse) -> SearchReply:
        results = [
            QueryResult(
                int(result.index),
                [
                    Hit(
                        float(h.score),
                        int(h.key),
                        h.name,
                        h.smiles,
                        h.canonical_smiles,
                        h.inchikey,
                        h.text,
                    )
                    for h in result.hits
                ],
                cls.error(result.error, result.HasField("error")),
            )
            for result in message.results
        ]
        return SearchReply(
            results, message.index_kind, int(message.index_size), cls.timings(message.timings)
        )

    @staticmethod
    def index(message: pb.IndexInfo) -> IndexInfo:
        return IndexInfo(
            message.kind,
            int(message.size),
            int(message.dim),
            message.dtype,
            message.bundle_id,
            message.path,
        )


class RetrievalClient:
    """Blocking client; ``timeout`` (seconds) is the default deadline of every call."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        timeout: float | None = None,
        tls_ca: str | Path | None = None,
        tls: bool = False,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE_BYTES),
        ]
        if tls or tls_ca is not None:
            root = Path(tls_ca).read_bytes() if tls_ca is not None else None
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=root), options=options
            )
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.RetrievalStub(self._channel)
        self.target = target
        self.token = token
        self.timeout = timeout

    # ---- plumbing ----------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kwargs(self, timeout: float | None, auth: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": timeout if timeout is not None else self.timeout}
        if auth and self.token:
            kwargs["metadata"] = (("authorization", f"Bearer {self.token}"),)
        return kwargs

    def _call(self, name: str, request: Any, timeout: float | None, auth: bool = False) -> Any:
        try:
            return getattr(self._stub, name)(request, **self._kwargs(timeout, auth))
        except grpc.RpcError as exc:
            raise RetrievalError(exc.code(), exc.details() or "", name) from exc  # type: ignore[attr-defined]

    def _stream(self, name: str, request: Any, timeout: float | None) -> Iterator[Any]:
        try:
            yield from getattr(self._stub, name)(request, **self._kwargs(timeout))
        except grpc.RpcError as exc:
            raise RetrievalError(exc.code(), exc.details() or "", name) from exc  # type: ignore[attr-defined]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server's health check says SERVING."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health(timeout=2.0) == "SERVING":
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server {self.target} not SERVING after {timeout:.0f} s")
            time.sleep(0.1)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The grpc.health.v1 status name (SERVING, NOT_SERVING, ...); raises grpc.RpcError."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), **self._kwargs(timeout))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ---- RPCs --------------------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str], timeout: float | None = None) -> EmbedReply:
        reply = self._call("EmbedTexts", pb.EmbedTextsRequest(texts=list(texts)), timeout)
        return _Conversions.embed(reply)

    def embed_molecules(self, smiles: Sequence[str], timeout: float | None = None) -> EmbedReply:
        reply = self._call("EmbedMolecules", pb.EmbedMoleculesRequest(smiles=list(smiles)), timeout)
        return _Conversions.embed(reply)

    def stream_embed_texts(
        self, texts: Sequence[str], chunk_size: int = 0, timeout: float | None = None
    ) -> Iterator[EmbedReply]:
        request = pb.EmbedTextsRequest(texts=list(texts), chunk_size=chunk_size)
        for reply in self._stream("StreamEmbedTexts", request, timeout):
            yield _Conversions.embed(reply)

    def stream_embed_molecules(
        self, smiles: Sequence[str], chunk_size: int = 0, timeout: float | None = None
    ) -> Iterator[EmbedReply]:
        request = pb.EmbedMoleculesRequest(smiles=list(smiles), chunk_size=chunk_size)
        for reply in self._stream("StreamEmbedMolecules", request, timeout):
            yield _Conversions.embed(reply)

    def search_text_to_molecules(
        self, texts: Sequence[str], k: int = 10, timeout: float | None = None
    ) -> SearchReply:
        request = pb.SearchTextsRequest(texts=list(texts), k=k)
        return _Conversions.search(self._call("SearchTextToMolecules", request, timeout))

    def search_molecule_to_texts(
        self, smiles: Sequence[str], k: int = 10, timeout: float | None = None
    ) -> SearchReply:
        request = pb.SearchMoleculesRequest(smiles=list(smiles), k=k)
        return _Conversions.search(self._call("SearchMoleculeToTexts", request, timeout))

    def search_molecule_to_molecules(
        self, smiles: Sequence[str], k: int = 10, timeout: float | None = None
    ) -> SearchReply:
        request = pb.SearchMoleculesRequest(smiles=list(smiles), k=k)
        return _Conversions.search(self._call("SearchMoleculeToMolecules", request, timeout))

    def get_index_info(self, timeout: float | None = None) -> ServerInfo:
        reply = self._call("GetIndexInfo", pb.GetIndexInfoRequest(), timeout)
        return ServerInfo(
            bundle_id=reply.bundle_id,
            dim=int(reply.dim),
            precision=reply.precision,
            model_name=reply.model_name,
            buckets=list(reply.buckets),
            text_max_length=int(reply.text_max_length),
            molecule_index=_Conversions.index(reply.molecule_index),
            text_index=(
                _Conversions.index(reply.text_index) if reply.HasField("text_index") else None
            ),
            batching=bool(reply.batching),
            max_items_per_request=int(reply.max_items_per_request),
            max_k=int(reply.max_k),
        )

    def add_molecules(
        self,
        molecules: Sequence[NewMolecule | str],
        persist: bool = False,
        timeout: float | None = None,
    ) -> AddReply:
        items = [NewMolecule(m) if isinstance(m, str) else m for m in molecules]
        request = pb.AddMoleculesRequest(
            molecules=[pb.NewMolecule(smiles=m.smiles, name=m.name, text=m.text) for m in items],
            persist=persist,
        )
        reply = self._call("AddMolecules", request, timeout, auth=True)
        return AddReply(
            molecules=[
                AddedMolecule(
                    int(m.index),
                    int(m.key),
                    bool(m.duplicate),
                    _Conversions.error(m.error, m.HasField("error")),
                )
                for m in reply.molecules
            ],
            index_size=int(reply.index_size),
            persisted=bool(reply.persisted),
            timings=_Conversions.timings(reply.timings),
        )

    def reload(
        self,
        bundle_dir: str | Path | None = None,
        index_dir: str | Path | None = None,
        text_index_dir: str | Path | None = None,
        timeout: float | None = None,
    ) -> ReloadReply:
        request = pb.ReloadRequest(
            bundle_dir=str(bundle_dir or ""),
            index_dir=str(index_dir or ""),
            text_index_dir=str(text_index_dir or ""),
        )
        reply = self._call("Reload", request, timeout, auth=True)
        return ReloadReply(
            reply.bundle_id,
            int(reply.molecule_index_size),
            int(reply.text_index_size),
            int(reply.reload_ms),
        )


def to_jsonable(value: Any) -> Any:
    """A reply dataclass as JSON-ready dicts (vectors become lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_jsonable(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


__all__ = [
    "AddReply",
    "AddedMolecule",
    "EmbedItem",
    "EmbedReply",
    "Hit",
    "IndexInfo",
    "ItemError",
    "NewMolecule",
    "QueryResult",
    "ReloadReply",
    "RetrievalClient",
    "RetrievalError",
    "SearchReply",
    "ServerInfo",
    "Timings",
    "to_jsonable",
]
