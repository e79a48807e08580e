"""The gRPC service end to end: a real server on a loopback port, the real (tiny) bundle through
ONNX Runtime, real USearch indexes; no fakes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from molret.bundle import load_bundle
from molret.engine.client import NewMolecule, RetrievalClient, RetrievalError
from molret.engine.index_build import featurize_shard
from molret.engine.index_store import IndexStore, NewRecord
from molret.engine.proto import retrieval_pb2 as pb
from molret.engine.proto import retrieval_pb2_grpc as pb_grpc
from molret.engine.runtime import BundleEmbedder
from molret.engine.server import ServerThread, start_server_thread

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PAIRS = REPO / "tests" / "data" / "tiny_pairs.tsv"
TOKEN = "test-token-0123456789"
MAX_ITEMS = 128


def read_pairs() -> list[dict[str, str]]:
    with open(PAIRS, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open until chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def in_flight(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith("molret_in_flight_requests "):
            return float(line.split()[1])
    return 0.0


def molret_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def index_template(smoke_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A molecule index and a text index of the hand-written pairs, embedded by the bundle."""
    root = tmp_path_factory.mktemp("server-indexes")
    pairs = read_pairs()
    bundle = load_bundle(smoke_bundle)
    embedder = BundleEmbedder(bundle, threads=1)
    rows = featurize_shard([p["SMILES"] for p in pairs], bundle.buckets, embedder.takes_keys)
    keep = [i for i, row in enumerate(rows) if row.graph is not None]
    with IndexStore.create(
        root / "molecules", "molecule", bundle.embedding_dim, bundle.bundle_id
    ) as store:
        records = [
            NewRecord(
                pairs[i]["CID"], pairs[i]["SMILES"], rows[i].canonical_smiles, rows[i].inchikey
            )
            for i in keep
        ]
        store.add(embedder.embed_graphs([rows[i].graph for i in keep]), records)
        store.save()
    with IndexStore.create(root / "texts", "text", bundle.embedding_dim, bundle.bundle_id) as store:
        texts = [p["description"] for p in pairs]
        records = [NewRecord(p["CID"], p["SMILES"], text=p["description"]) for p in pairs]
        store.add(embedder.embed_text_list(texts), records)
        store.save()
    return root


def copy_indexes(template: Path, target: Path) -> Path:
    shutil.copytree(template, target)
    return target


@pytest.fixture(scope="module")
def server(
    smoke_bundle: Path, index_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    indexes = copy_indexes(index_template, tmp_path_factory.mktemp("served") / "indexes")
    running = start_server_thread(
        bundle_dir=smoke_bundle,
        index_dir=indexes / "molecules",
        text_index_dir=indexes / "texts",
        port=0,
        metrics_port=0,
        token=TOKEN,
        max_items_per_request=MAX_ITEMS,
        threads=1,
    )
    yield running
    running.stop(grace=1.0)


@pytest.fixture
def client(server: ServerThread) -> Iterator[RetrievalClient]:
    with RetrievalClient(server.target, timeout=30) as c:
        yield c


# ---- health, reflection, metrics ------------------------------------------------------------


def test_health_is_serving_and_reflection_lists_the_service(server: ServerThread) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with RetrievalClient(server.target) as c:
        assert c.health() == "SERVING"
        assert c.health("molret.v1.Retrieval") == "SERVING"
    with grpc.insecure_channel(server.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "molret.v1.Retrieval" in services
    assert "grpc.health.v1.Health" in services


def test_not_serving_until_warmed_up(smoke_bundle: Path, index_template: Path) -> None:
    """Before the warm-up finishes health says NOT_SERVING and RPCs answer UNAVAILABLE."""
    import asyncio

    from molret.engine.server import start_server

    async def scenario() -> tuple[str, grpc.StatusCode, str]:
        running = await start_server(
            smoke_bundle, index_template / "molecules", port=0, wait_ready=False, threads=1
        )
        try:
            async with grpc.aio.insecure_channel(running.target) as channel:
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                health = health_pb2_grpc.HealthStub(channel)
                early = await health.Check(health_pb2.HealthCheckRequest())
                stub = pb_grpc.RetrievalStub(channel)
                try:
                    await stub.GetIndexInfo(pb.GetIndexInfoRequest())
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                await running.wait_ready()
                late = await health.Check(health_pb2.HealthCheckRequest())
                name = health_pb2.HealthCheckResponse.ServingStatus.Name
                return name(early.status), code, name(late.status)
        finally:
            await running.stop(0)

    early, code, late = asyncio.run(scenario())
    # The warm-up of the tiny model can finish before the first check arrives; when it has
    # not, both signals must agree that the server is not ready.
    if early == "NOT_SERVING":
        assert code == grpc.StatusCode.UNAVAILABLE
    assert late == "SERVING"


def test_metrics_endpoint(server: ServerThread, client: RetrievalClient) -> None:
    client.search_molecule_to_molecules(["CCO"], k=2)
    assert server.metrics_port is not None
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'molret_requests_total{code="OK",method="SearchMoleculeToMolecules"}' in body
    for name in ("molret_stage_seconds_bucket", "molret_batch_items_bucket", "molret_queue_depth"):
        assert name in body


# ---- every RPC -------------------------------------------------------------------------------


def test_every_rpc_answers(server: ServerThread, client: RetrievalClient) -> None:
    info = client.get_index_info()
    pairs = read_pairs()
    assert info.molecule_index.kind == "molecule" and info.molecule_index.size == len(pairs)
    assert info.text_index is not None and info.text_index.size == len(pairs)
    assert info.dim > 0 and info.buckets and info.batching

    texts = client.embed_texts(["a primary alcohol", "an aromatic hydrocarbon"])
    assert [item.vector.shape for item in texts.items] == [(info.dim,)] * 2  # type: ignore[union-attr]
    assert texts.timings.inference_us > 0 and texts.timings.total_us > 0
    molecules = client.embed_molecules(["CCO", "c1ccccc1"])
    assert not molecules.errors and molecules.bundle_id == info.bundle_id

    chunks = list(client.stream_embed_molecules(["CCO", "CO", "CCC"] * 10, chunk_size=8))
    assert [len(c.items) for c in chunks] == [8, 8, 8, 6]
    assert [item.index for c in chunks for item in c.items] == list(range(30))
    text_chunks = list(client.stream_embed_texts(["an alcohol"] * 5, chunk_size=2))
    assert [len(c.items) for c in text_chunks] == [2, 2, 1]

    t2m = client.search_text_to_molecules([pairs[0]["description"]], k=5)
    hits = t2m.results[0].hits
    assert t2m.index_kind == "molecule" and len(hits) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.name and h.smiles and h.canonical_smiles for h in hits)
    assert t2m.timings.search_us > 0

    m2t = client.search_molecule_to_texts([pairs[3]["SMILES"]], k=3)
    assert m2t.index_kind == "text" and len(m2t.results[0].hits) == 3
    assert all(h.text for h in m2t.results[0].hits)

    smiles = [p["SMILES"] for p in pairs]
    m2m = client.search_molecule_to_molecules(smiles, k=1)
    # Every indexed molecule finds itself (f16 storage: cosine ~1).
    assert [r.hits[0].name for r in m2m.results] == [p["CID"] for p in pairs]
    assert all(r.hits[0].score > 0.99 for r in m2m.results)

    more_than_index = client.search_molecule_to_molecules(["CCO"], k=len(pairs) + 10)
    assert len(more_than_index.results[0].hits) == len(pairs)


def test_server_embeddings_equal_the_runtime(smoke_bundle: Path, client: RetrievalClient) -> None:
    """Batching and transport change nothing: the vectors are the embedder's own."""
    pairs = read_pairs()
    embedder = BundleEmbedder(load_bundle(smoke_bundle), threads=1)
    smiles = [p["SMILES"] for p in pairs]
    texts = [p["description"] for p in pairs]
    got, _ = client.embed_molecules(smiles).matrix()
    np.testing.assert_allclose(got, embedder.embed_smiles(smiles).vectors, atol=1e-5)
    got, _ = client.embed_texts(texts).matrix()
    np.testing.assert_allclose(got, embedder.embed_text_list(texts), atol=1e-5)


def test_one_bad_smiles_never_fails_the_batch(client: RetrievalClient) -> None:
    pairs = read_pairs()
    smiles = [pairs[i % len(pairs)]["SMILES"] for i in range(100)]
    smiles[37] = "C1CC(=O"  # unclosed ring and branch
    reply = client.embed_molecules(smiles)
    assert len(reply.items) == 100
    assert sum(item.vector is not None for item in reply.items) == 99
    (error,) = reply.errors
    assert error.index == 37 and error.input == "C1CC(=O" and error.reason
    assert "pars" in error.reason.lower() or "ring" in error.reason.lower()

    search = client.search_molecule_to_molecules(smiles, k=3)
    assert sum(len(r.hits) == 3 for r in search.results) == 99
    assert [e.index for e in search.errors] == [37]
    texts = client.search_text_to_molecules(["an alcohol", "   "], k=2)
    assert len(texts.results[0].hits) == 2 and texts.results[1].error is not None


# ---- limits and errors -----------------------------------------------------------------------


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(RetrievalError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


def test_malformed_requests_are_invalid_argument(client: RetrievalClient) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.search_molecule_to_molecules(["CCO"], k=0)) == invalid
    assert code_of(lambda: client.search_text_to_molecules(["x"], k=-3)) == invalid
    assert code_of(lambda: client.search_molecule_to_texts(["CCO"], k=10**6)) == invalid
    assert code_of(lambda: client.embed_molecules([])) == invalid
    assert code_of(lambda: client.search_text_to_molecules([], k=3)) == invalid


def test_over_limit_is_resource_exhausted(client: RetrievalClient) -> None:
    with pytest.raises(RetrievalError) as caught:
        client.embed_molecules(["CCO"] * (MAX_ITEMS + 1))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_ITEMS) in caught.value.details
    # Streams take more than a unary call.
    chunks = list(client.stream_embed_molecules(["CCO"] * (MAX_ITEMS + 1)))
    assert sum(len(c.items) for c in chunks) == MAX_ITEMS + 1


def test_short_deadline_is_deadline_exceeded(client: RetrievalClient) -> None:
    with pytest.raises(RetrievalError) as caught:
        client.embed_molecules(["CC(=O)OC1=CC=CC=C1C(=O)O"] * MAX_ITEMS, timeout=0.001)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server is fine afterwards.
    assert not client.embed_molecules(["CCO"]).errors


def test_in_flight_limit(smoke_bundle: Path, index_template: Path, tmp_path: Path) -> None:
    indexes = copy_indexes(index_template, tmp_path / "indexes")
    running = start_server_thread(
        bundle_dir=smoke_bundle,
        index_dir=indexes / "molecules",
        port=0,
        max_in_flight=1,
        batch_max_delay_ms=600,  # keeps the first request queued while the second arrives
        threads=1,
    )
    with running, grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.RetrievalStub(channel)
        first = stub.EmbedMolecules.future(pb.EmbedMoleculesRequest(smiles=["CCO"]))
        wait_until(lambda: running.service.in_flight == 1)
        with pytest.raises(grpc.RpcError) as caught:
            stub.EmbedMolecules(pb.EmbedMoleculesRequest(smiles=["CO"]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert len(first.result(timeout=10).embeddings) == 1


# ---- mutations -------------------------------------------------------------------------------


def test_mutations_need_the_token(server: ServerThread) -> None:
    with RetrievalClient(server.target, timeout=30) as anonymous:
        assert (
            code_of(lambda: anonymous.add_molecules(["CCCCO"])) == grpc.StatusCode.UNAUTHENTICATED
        )
        assert code_of(lambda: anonymous.reload(index_dir="/nowhere")) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    with RetrievalClient(server.target, token="wrong", timeout=30) as wrong:
        assert code_of(lambda: wrong.add_molecules(["CCCCO"])) == grpc.StatusCode.UNAUTHENTICATED
    with RetrievalClient(server.target, token=TOKEN, timeout=30) as admin:
        assert code_of(lambda: admin.reload(index_dir="/nowhere")) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )


def test_persisted_additions_survive_a_restart(
    smoke_bundle: Path, index_template: Path, tmp_path: Path
) -> None:
    indexes = copy_indexes(index_template, tmp_path / "indexes")
    size = len(read_pairs())
    new = [
        NewMolecule("CCCCCCCCCCO", "decanol", "a fatty alcohol"),
        NewMolecule("OCC", "ethanol-again"),  # ethanol is indexed already
        NewMolecule("C1CC(", "broken"),
    ]
    kwargs = {"bundle_dir": smoke_bundle, "index_dir": indexes / "molecules", "port": 0}
    running = start_server_thread(**kwargs, token=TOKEN, threads=1)
    with running, RetrievalClient(running.target, token=TOKEN, timeout=30) as admin:
        added = admin.add_molecules(new, persist=True)
    assert added.persisted and added.index_size == size + 1
    decanol, duplicate, broken = added.molecules
    assert decanol.key == size and not decanol.duplicate and decanol.error is None
    assert duplicate.duplicate and duplicate.key == 0  # CCO is the first pair
    assert broken.key == -1 and broken.error is not None and broken.error.index == 2

    restarted = start_server_thread(**kwargs, threads=1)
    with restarted, RetrievalClient(restarted.target, timeout=30) as c:
        assert c.get_index_info().molecule_index.size == size + 1
        (hit,) = c.search_molecule_to_molecules(["OCCCCCCCCCC"], k=1).results[0].hits
    assert (hit.key, hit.name, hit.canonical_smiles) == (size, "decanol", "CCCCCCCCCCO")
    assert hit.score > 0.99


def test_reload_swaps_without_dropping_requests(
    smoke_bundle: Path, index_template: Path, tmp_path: Path
) -> None:
    first = copy_indexes(index_template, tmp_path / "first")
    second = copy_indexes(index_template, tmp_path / "second")
    with IndexStore.open(second / "molecules") as store:  # the second index has one more row
        bundle = load_bundle(smoke_bundle)
        rows = featurize_shard(["CCCCCCN"], bundle.buckets, bundle.takes_molecule_keys)
        vectors = BundleEmbedder(bundle, threads=1).embed_graphs([rows[0].graph])
        store.add(vectors, [NewRecord("hexylamine", "CCCCCCN", rows[0].canonical_smiles)])
        store.save()
    with start_server_thread(
        bundle_dir=smoke_bundle, index_dir=first / "molecules", port=0, token=TOKEN, threads=1
    ) as running:
        failures: list[BaseException] = []
        stop = threading.Event()

        def hammer() -> None:
            with RetrievalClient(running.target, timeout=30) as c:
                while not stop.is_set():
                    try:
                        c.search_text_to_molecules(["an amine"], k=3)
                    except BaseException as exc:  # noqa: BLE001 - collected for the assert
                        failures.append(exc)

        workers = [threading.Thread(target=hammer) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.2)
            with RetrievalClient(running.target, token=TOKEN, timeout=60) as admin:
                reply = admin.reload(bundle_dir=smoke_bundle, index_dir=second / "molecules")
                time.sleep(0.2)
                info = admin.get_index_info()
        finally:
            stop.set()
            for w in workers:
                w.join()
    assert not failures, failures[:3]
    assert reply.molecule_index_size == len(read_pairs()) + 1
    assert info.molecule_index.path == str(second / "molecules")


# ---- TLS ------------------------------------------------------------------------------------


def test_tls(smoke_bundle: Path, index_template: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    indexes = copy_indexes(index_template, tmp_path / "indexes")
    with start_server_thread(
        bundle_dir=smoke_bundle,
        index_dir=indexes / "molecules",
        port=0,
        tls_cert=cert,
        tls_key=key,
        threads=1,
    ) as running:
        with RetrievalClient(f"localhost:{running.port}", tls_ca=cert, timeout=30) as c:
            assert c.search_molecule_to_molecules(["CCO"], k=1).results[0].hits[0].score > 0.99
        with RetrievalClient(f"localhost:{running.port}", timeout=5) as plain:
            assert code_of(lambda: plain.get_index_info()) == grpc.StatusCode.UNAVAILABLE


# ---- the command line ------------------------------------------------------------------------


def test_cli_search_json(server: ServerThread) -> None:
    pairs = read_pairs()
    out = subprocess.run(
        [sys.executable, "-m", "molret.cli", "search", "--server", server.target,
         "--text", pairs[1]["description"], "-k", "3", "--json"],
        capture_output=True, text=True, env=molret_env(), timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["mode"] == "text_to_molecules" and payload["index_kind"] == "molecule"
    assert [h["rank"] for h in payload["hits"]] == [1, 2, 3]
    assert {"score", "name", "smiles", "canonical_smiles"} <= set(payload["hits"][0])

    texts = subprocess.run(
        [sys.executable, "-m", "molret.cli", "search", "--server", server.target,
         "--smiles", "C1CC(", "--mode", "texts", "--json"],
        capture_output=True, text=True, env=molret_env(), timeout=60,
    )  # fmt: skip
    assert texts.returncode == 1 and "error" in json.loads(texts.stdout)


def test_sigterm_drains_in_flight_requests(
    smoke_bundle: Path, index_template: Path, tmp_path: Path
) -> None:
    indexes = copy_indexes(index_template, tmp_path / "indexes")
    port, metrics_port = free_ports(2)
    # A 1.5 s batch delay keeps a lone request in the queue long enough to be "in flight".
    proc = subprocess.Popen(
        [sys.executable, "-m", "molret.cli", "serve", "--bundle", str(smoke_bundle),
         "--index", str(indexes / "molecules"), "--port", str(port), "--threads", "1",
         "--metrics-port", str(metrics_port), "--batch-delay-ms", "1500", "--grace", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=molret_env(),
    )  # fmt: skip
    try:
        target = f"127.0.0.1:{port}"
        with RetrievalClient(target) as c:
            c.wait_ready(timeout=60)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RetrievalStub(channel)
            call = stub.SearchMoleculeToMolecules.future(
                pb.SearchMoleculesRequest(smiles=["CCO"], k=2), timeout=30
            )
            wait_until(lambda: in_flight(metrics_port) == 1)
            assert not call.done()
            proc.send_signal(signal.SIGTERM)
            reply = call.result(timeout=30)
        assert len(reply.results[0].hits) == 2
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, stderr = proc.communicate()
    assert "draining" in stderr
