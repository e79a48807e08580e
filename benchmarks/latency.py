"""Latency and throughput of a molret gRPC server: closed-loop sweep, open loop, baselines.

    python benchmarks/latency.py (--server HOST:PORT | --bundle B --index I [--text-index T])
        [--concurrency 1,8,32,128] [--duration 10] [--rates 50,100,200] [--workload text,molecule]
        [--run RUN] --json OUT.json [--plot OUT.png]

* **Closed loop**: N clients (coroutines on one grpc.aio channel, one process) each send one
  query (k=10) and send the next as soon as the answer arrives. After ``--warmup`` s, every
  answer completed in the next ``--duration`` s counts: QPS, p50/p95/p99/p99.9, errors.
* **Open loop** (``--rates``): queries are *scheduled* at a fixed rate (Poisson or evenly spaced
  arrivals) whatever the server does; latency runs from the scheduled send time, so a server that
  falls behind is charged for the queueing it causes (no coordinated omission).
* **Batching off**: when the script starts the server itself (``--bundle``), it then starts the
  same server with ``--no-batching`` and repeats the closed-loop sweep; the JSON gives the QPS
  ratio on/off at each level.
* **Naive baseline** (``--run RUN``, needs torch): the run's PyTorch eager towers (text through
  the transformer, molecules through torch-geometric), batch 1, then exact NumPy search (dot
  product over every vector of the index), in this process, one query at a time.

The server is started as a subprocess (``python -m molret.cli serve`` on a free loopback port),
so the client's CPU (this process) and the server's (its /proc entry) are measured apart and
reported per level; ``client_cpu`` near 1.0 means the client may be what limits the numbers.

JSON layout::

    {"meta": {date, machine, bundle_id, index_size, text_index_size, k, duration_s, ...},
     "results": {WORKLOAD: {"batching_on":  {"concurrency": {"1": STATS, ...},
                                             "rates": {"50": STATS, ...}},
                            "batching_off": {"concurrency": {...}},
                            "qps_ratio_on_off": {"1": float, ...}}},
     "naive_baseline": {WORKLOAD: STATS},
     "targets": [{"name", "target", "measured", "met", "conditions"}]}

    STATS = {"qps", "p50_ms", "p95_ms", "p99_ms", "p999_ms", "mean_ms", "errors", "n",
             "client_cpu", "server_cpu", "server_ms": {"all": PARTS, "slowest_1pct": PARTS}}
    PARTS = {"prepare", "queue", "inference", "search", "server_total", "unaccounted",
             "outside_server"} (mean ms, from the Timings of every response)

WORKLOAD is ``text`` (text -> molecules) or ``molecule`` (molecule -> molecules). With
``--server`` the section is named after what the server reports (batching on or off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from molret.engine.proto import retrieval_pb2 as pb
from molret.engine.proto import retrieval_pb2_grpc as pb_grpc

WORKLOADS = {"text": "SearchTextToMolecules", "molecule": "SearchMoleculeToMolecules"}
TARGET_P99_MS = 15.0
TARGET_RATIO = 3.0
TARGET_RATIO_AT = 32
TARGET_INDEX_SIZE = 1_000_000
_MAX_MESSAGE = 64 * 1024 * 1024

BUILTIN_TEXTS = [
    "The molecule is a monocarboxylic acid that is acetic acid in which one methyl hydrogen is "
    "replaced by a phenyl group.",
    "The molecule is a purine alkaloid that occurs naturally in tea and coffee; a central "
    "nervous system stimulant.",
    "The molecule is a member of the class of benzoic acids that is salicylic acid in which the "
    "phenolic hydrogen is replaced by an acetyl group.",
    "The molecule is a primary alcohol that is ethane in which one hydrogen is replaced by a "
    "hydroxy group.",
    "The molecule is a long-chain fatty acid with an 18-carbon chain and one double bond.",
    "The molecule is an aldohexose used as a source of energy by living organisms.",
    "The molecule is an alpha-amino acid that is glycine in which one hydrogen is replaced by "
    "a methyl group.",
    "The molecule is a steroid hormone with a ketone at position 3 and a hydroxy group at 17.",
    "The molecule is an aromatic amine that is benzene carrying a single amino substituent.",
    "The molecule is a tertiary amine and a local anaesthetic.",
    "The molecule is a beta-lactam antibiotic with a thiazolidine ring.",
    "The molecule is a chlorinated phenol used as a disinfectant.",
]
BUILTIN_SMILES = [
    "CC(=O)OC1=CC=CC=C1C(=O)O",
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "CCO",
    "OC(=O)CC1=CC=CC=C1",
    "CC(N)C(=O)O",
    "OCC1OC(O)C(O)C(O)C1O",
    "CCCCCCCCC=CCCCCCCCC(=O)O",
    "NC1=CC=CC=C1",
    "CCN(CC)CC(=O)NC1=C(C)C=CC=C1C",
    "OC1=CC=C(Cl)C=C1",
    "C1=CC=C2C(=C1)C=CC=C2",
    "CC(C)CC1=CC=C(C=C1)C(C)C(=O)O",
]


# ---- statistics ------------------------------------------------------------------------------


def summarize(latencies_s: Sequence[float], errors: int, seconds: float) -> dict[str, Any]:
    """QPS and latency percentiles (ms) of the successful calls of one measurement window."""
    lat = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    out: dict[str, Any] = {"qps": len(lat) / seconds if seconds > 0 else 0.0, "n": int(len(lat))}
    for name, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99), ("p999_ms", 99.9)):
        out[name] = float(np.percentile(lat, q)) if len(lat) else None
    out["mean_ms"] = float(lat.mean()) if len(lat) else None
    out["max_ms"] = float(lat.max()) if len(lat) else None
    out["errors"] = int(errors)
    return out


SERVER_PARTS = ("prepare", "queue", "inference", "search", "server_total")


def server_breakdown(
    latencies_s: Sequence[float], server_us: Sequence[tuple[int, int, int, int, int]]
) -> dict[str, dict[str, float]] | None:
    """Where the time of the calls went, from the Timings each response carries (ms).

    ``all``: means over every successful call; ``slowest_1pct``: means over the calls at or
    above the client-side p99, i.e. what the tail is made of. ``outside_server`` is the client
    latency minus the server's total: gRPC transport, (de)serialisation and the client itself.
    ``unaccounted`` is the server's total minus its four parts: event-loop and thread hand-offs,
    building the response.
    """
    if not latencies_s:
        return None
    client = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    parts = np.asarray(server_us, dtype=np.float64).reshape(-1, 5) / 1000.0
    columns = dict(zip(SERVER_PARTS, parts.T, strict=True))
    columns["unaccounted"] = columns["server_total"] - parts[:, :4].sum(axis=1)
    columns["outside_server"] = client - columns["server_total"]
    tail = client >= np.percentile(client, 99)
    return {
        "all": {name: float(col.mean()) for name, col in columns.items()},
        "slowest_1pct": {name: float(col[tail].mean()) for name, col in columns.items()},
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---- the machine and the server process ------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`molret serve` in a subprocess on a free loopback port; stopped with SIGTERM."""

    def __init__(
        self,
        bundle: Path,
        index: Path,
        text_index: Path | None,
        batching: bool,
        threads: int | None,
        batch_delay_ms: float | None,
        log_dir: Path,
        start_timeout: float = 180.0,
    ) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "molret.cli", "serve", "--bundle", str(bundle)]
        command += ["--index", str(index), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--grace", "2"]
        if text_index is not None:
            command += ["--text-index", str(text_index)]
        if not batching:
            command.append("--no-batching")
        if threads:
            command += ["--threads", str(threads)]
        if batch_delay_ms is not None:
            command += ["--batch-delay-ms", str(batch_delay_ms)]
        self.log = log_dir / f"server-{'on' if batching else 'off'}-{self.port}.log"
        self._log_handle = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command, stdout=self._log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.target = f"127.0.0.1:{self.port}"
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        from molret.engine.client import RetrievalClient

        deadline = time.monotonic() + timeout
        with RetrievalClient(self.target) as client:
            while True:
                if self.process.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the server exited ({self.process.returncode}):\n{tail}")
                with contextlib.suppress(grpc.RpcError):
                    if client.health(timeout=1.0) == "SERVING":
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not SERVING after {timeout:.0f} s (see {self.log})")
                time.sleep(0.1)

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()


# ---- queries ---------------------------------------------------------------------------------


@dataclass
class Queries:
    texts: list[str]
    smiles: list[str]
    source: str
    dropped_smiles: int = 0


def load_queries(data: str | None, n: int, seed: int) -> Queries:
    """ChEBI-20 validation descriptions and SMILES (``--data`` or $MOLRET_DATA), else a
    built-in list."""
    from molret.data import DataNotFound, chebi20_split, read_pairs

    try:
        pairs = read_pairs(chebi20_split(data)["validation"])
    except (DataNotFound, FileNotFoundError, ValueError):
        return Queries(list(BUILTIN_TEXTS), list(BUILTIN_SMILES), "built-in list")
    order = np.random.default_rng(seed).permutation(len(pairs))[:n]
    chosen = [pairs[i] for i in order]
    return Queries(
        [p.description for p in chosen],
        [p.smiles for p in chosen],
        f"ChEBI-20 validation ({len(chosen)} sampled, seed {seed})",
    )


def keep_servable_smiles(queries: Queries, buckets: Sequence[str]) -> Queries:
    """Drop SMILES that the server would answer with an item error (unparsable, too large)."""
    from molret.featurize import featurize_many

    parsed = [tuple(int(v) for v in b.split("x")) for b in buckets]
    graphs, _ = featurize_many(queries.smiles, buckets=parsed or None)  # type: ignore[arg-type]
    kept = [s for s, g in zip(queries.smiles, graphs, strict=True) if g is not None]
    queries.dropped_smiles = len(queries.smiles) - len(kept)
    queries.smiles = kept
    return queries


def make_requests(workload: str, queries: Queries, k: int) -> list[Any]:
    if workload == "text":
        return [pb.SearchTextsRequest(texts=[t], k=k) for t in queries.texts]
    return [pb.SearchMoleculesRequest(smiles=[s], k=k) for s in queries.smiles]


# ---- load generators -------------------------------------------------------------------------


@dataclass
class _Window:
    """The measurement window and what happened in it."""

    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # The server's own account of each successful call (same order as latencies).
    server: list[tuple[int, int, int, int, int]] = field(default_factory=list)

    def record(self, latency_s: float, error: str | None, timings: Any) -> None:
        if error is not None:
            self.errors[error] += 1
            return
        self.latencies.append(latency_s)
        t = timings
        self.server.append((t.prepare_us, t.queue_us, t.inference_us, t.search_us, t.total_us))

    def inside(self, t: float) -> bool:
        return self.start <= t <= self.end


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ],
    )


async def _call(method: Any, request: Any, timeout: float) -> tuple[str | None, Any]:
    """One RPC: (None, the server's Timings) on success, else (a short error label, None)."""
    try:
        reply = await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, None
    if any(r.HasField("error") for r in reply.results):
        return "ITEM_ERROR", None
    return None, reply.timings


async def _cpu_probe(
    window: _Window, server_cpu: Callable[[], float | None] | None
) -> dict[str, float | None]:
    """Sample this process's and the server's CPU time at the window's start and end."""
    loop_now = time.perf_counter
    await asyncio.sleep(max(0.0, window.start - loop_now()))
    c0, s0 = time.process_time(), server_cpu() if server_cpu else None
    await asyncio.sleep(max(0.0, window.end - loop_now()))
    c1, s1 = time.process_time(), server_cpu() if server_cpu else None
    seconds = window.end - window.start
    return {
        "client_cpu": (c1 - c0) / seconds,
        "server_cpu": (s1 - s0) / seconds if s0 is not None and s1 is not None else None,
    }


def _stats(window: _Window, cpu: dict[str, float | None]) -> dict[str, Any]:
    out = summarize(window.latencies, sum(window.errors.values()), window.end - window.start)
    out["error_codes"] = dict(window.errors)
    out["server_ms"] = server_breakdown(window.latencies, window.server)
    out.update(cpu)
    return out


async def closed_loop(
    target: str,
    workload: str,
    requests: Sequence[Any],
    concurrency: int,
    duration: float,
    warmup: float,
    timeout: float = 30.0,
    server_cpu: Callable[[], float | None] | None = None,
) -> dict[str, Any]:
    """``concurrency`` clients, each with one request outstanding at a time."""
    async with _channel(target) as channel:
        method = getattr(pb_grpc.RetrievalStub(channel), WORKLOADS[workload])
        await channel.channel_ready()
        begin = time.perf_counter()
        window = _Window(begin + warmup, begin + warmup + duration)

        async def client(worker: int) -> None:
            i = worker * 7919
            while True:
                sent = time.perf_counter()
                if sent >= window.end:
                    return
                error, timings = await _call(method, requests[i % len(requests)], timeout)
                done = time.perf_counter()
                i += 1
                if window.inside(done):
                    window.record(done - sent, error, timings)

        probe = asyncio.ensure_future(_cpu_probe(window, server_cpu))
        await asyncio.gather(*(client(w) for w in range(concurrency)))
        stats = _stats(window, await probe)
    stats["concurrency"] = concurrency
    return stats


async def open_loop(
    target: str,
    workload: str,
    requests: Sequence[Any],
    rate: float,
    duration: float,
    warmup: float,
    arrival: str = "poisson",
    seed: int = 0,
    timeout: float = 30.0,
    server_cpu: Callable[[], float | None] | None = None,
) -> dict[str, Any]:
    """Sends scheduled at ``rate`` per second regardless of answers; latency from the schedule."""
    total = warmup + duration
    if arrival == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, int(rate * total * 1.5) + 16)
        offsets = np.cumsum(gaps)
    else:
        offsets = np.arange(1, int(rate * total) + 2) / rate
    offsets = offsets[offsets < total]
    async with _channel(target) as channel:
        method = getattr(pb_grpc.RetrievalStub(channel), WORKLOADS[workload])
        await channel.channel_ready()
        begin = time.perf_counter()
        window = _Window(begin + warmup, begin + total)
        completed_in_window = 0
        late_sends = 0

        async def one(scheduled: float, request: Any) -> None:
            nonlocal completed_in_window
            error, timings = await _call(method, request, timeout)
            done = time.perf_counter()
            if window.inside(done):
                completed_in_window += 1
            if window.inside(scheduled):  # every request scheduled in the window counts
                window.record(done - scheduled, error, timings)

        probe = asyncio.ensure_future(_cpu_probe(window, server_cpu))
        tasks = []
        for i, offset in enumerate(offsets):
            scheduled = begin + float(offset)
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001:
                late_sends += 1
            tasks.append(asyncio.ensure_future(one(scheduled, requests[i % len(requests)])))
        await asyncio.gather(*tasks)
        cpu = await probe
    stats = _stats(window, cpu)
    # Latency percentiles cover every request scheduled in the window; QPS counts the answers
    # that arrived in it (below the offered rate when the server falls behind).
    stats["qps"] = completed_in_window / duration
    stats["offered_rate"] = rate
    stats["arrival"] = arrival
    stats["late_sends"] = late_sends  # sends the client itself issued > 1 ms late
    return stats


# ---- the naive baseline ----------------------------------------------------------------------


def naive_baseline(
    run: Path,
    index: Path,
    workload: str,
    queries: Queries,
    duration: float,
    warmup: float,
    k: int,
    threads: int | None,
) -> dict[str, Any]:
    """PyTorch eager encoder (batch 1) + exact NumPy search over the index's vectors."""
    import torch

    from molret.engine.index_store import IndexStore
    from molret.featurize import featurize
    from molret.text import encode, load_tokenizer
    from molret.trainer.pyg_reference import PygMoleculeEncoder
    from molret.trainer.run_eval import load_run
    from molret.trainer.text_encoder import resolve_text_encoder

    torch.set_num_threads(threads or os.cpu_count() or 1)
    vectors = _index_vectors(IndexStore, index)
    model = load_run(run, with_text_encoder=(workload == "text"))
    if workload == "text":
        config = model.config
        tokenizer = load_tokenizer(
            resolve_text_encoder(config.text_encoder), config.text_max_length
        )

        def embed(query: str) -> np.ndarray:
            tokens = encode(tokenizer, [query])
            out = model.encode_text(
                torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask)
            )
            return out.embedding[0].numpy()

        items: list[str] = queries.texts
    else:
        encoder = PygMoleculeEncoder(model).eval()

        def embed(query: str) -> np.ndarray:
            graph = featurize(query, keys=model.config.maccs_keys)
            return encoder(PygMoleculeEncoder.batch([graph]))[0].numpy()

        items = queries.smiles

    def answer(query: str) -> np.ndarray:
        with torch.inference_mode():
            q = embed(query).astype(np.float32)
        q /= np.linalg.norm(q) or 1.0
        scores = vectors @ q
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        return top[np.argsort(-scores[top], kind="stable")]

    i = 0
    warm_until = time.perf_counter() + warmup
    while time.perf_counter() < warm_until or i == 0:
        answer(items[i % len(items)])
        i += 1
    latencies: list[float] = []
    start, cpu0 = time.perf_counter(), time.process_time()
    while (sent := time.perf_counter()) < start + duration:
        answer(items[i % len(items)])
        latencies.append(time.perf_counter() - sent)
        i += 1
    seconds = time.perf_counter() - start
    stats = summarize(latencies, 0, seconds)
    stats["client_cpu"] = (time.process_time() - cpu0) / seconds
    stats["what"] = f"PyTorch eager ({'transformer' if workload == 'text' else 'torch-geometric'})"
    stats["what"] += f", batch 1, exact NumPy search over {len(vectors)} vectors"
    stats["torch_threads"] = torch.get_num_threads()
    return stats


def _bundle_source_run(bundle: Path | None) -> str | None:
    if bundle is None or not (bundle / "manifest.json").is_file():
        return None
    manifest = json.loads((bundle / "manifest.json").read_text())
    return manifest.get("source", {}).get("run_dir")


def _index_vectors(store_class: Any, index: Path) -> np.ndarray:
    store = store_class.open(index)
    try:
        size = store.size
        out = np.zeros((size, store.dim), dtype=np.float32)
        for lo in range(0, size, 65536):
            hi = min(lo + 65536, size)
            out[lo:hi] = store.get_vectors(range(lo, hi))
    finally:
        store.close()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


# ---- report ----------------------------------------------------------------------------------


def server_info(target: str) -> dict[str, Any]:
    from molret.engine.client import RetrievalClient

    with RetrievalClient(target, timeout=30) as client:
        client.wait_ready(60)
        info = client.get_index_info()
    return {
        "bundle_id": info.bundle_id,
        "model_name": info.model_name,
        "precision": info.precision,
        "dim": info.dim,
        "buckets": info.buckets,
        "index_size": info.molecule_index.size,
        "index_dtype": info.molecule_index.dtype,
        "text_index_size": info.text_index.size if info.text_index else None,
        "batching": info.batching,
    }


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether the run's conditions match it."""
    meta = report["meta"]
    cores = meta["machine"].get("usable_cpus") or meta["machine"].get("logical_cpus")
    size = meta.get("index_size") or 0
    queries = str(meta.get("queries", ""))
    conditions = (
        f"{cores} CPU cores (target: 2), index of {size:,} molecules (target: >= "
        f"{TARGET_INDEX_SIZE:,}), queries: {queries} (target: ChEBI-20 descriptions), "
        f"load average at start {meta['machine'].get('loadavg_start')}"
    )
    # The built-in queries are short, so they would flatter the text tower's latency.
    real_queries = queries.startswith("ChEBI-20")
    matches = cores == 2 and size >= TARGET_INDEX_SIZE and real_queries
    targets: list[dict[str, Any]] = []
    text = report["results"].get("text", {})
    on = text.get("batching_on", {}).get("concurrency", {}).get("1")
    targets.append(
        {
            "name": "text->molecules p99 at concurrency 1",
            "target": f"<= {TARGET_P99_MS} ms",
            "measured": on["p99_ms"] if on else None,
            "met": (on["p99_ms"] is not None and on["p99_ms"] <= TARGET_P99_MS) if on else None,
            "conditions": conditions,
            "conditions_match": matches,
        }
    )
    for workload, sections in report["results"].items():
        ratio = sections.get("qps_ratio_on_off", {}).get(str(TARGET_RATIO_AT))
        targets.append(
            {
                "name": f"{workload}: QPS batching on / off at concurrency {TARGET_RATIO_AT}",
                "target": f">= {TARGET_RATIO}x",
                "measured": ratio,
                "met": None if ratio is None else ratio >= TARGET_RATIO,
                "conditions": conditions,
                "conditions_match": matches,
            }
        )
    return targets


def print_table(report: dict[str, Any]) -> None:
    header = (
        f"{'workload':9} {'server':12} {'load':>8} {'QPS':>8} {'p50':>7} {'p95':>7} "
        f"{'p99':>7} {'p99.9':>7} {'err':>4} {'cli cpu':>7} {'srv cpu':>7}"
    )
    print(header)
    print("-" * len(header))
    for workload, sections in report["results"].items():
        for name, section in sections.items():
            if not name.startswith("batching"):
                continue
            for kind, label in (("concurrency", "c="), ("rates", "r=")):
                for level, s in section.get(kind, {}).items():
                    print(
                        f"{workload:9} {name:12} {label + level:>8} {s['qps']:8.1f} "
                        f"{_fmt(s['p50_ms']):>7} {_fmt(s['p95_ms']):>7} {_fmt(s['p99_ms']):>7} "
                        f"{_fmt(s['p999_ms']):>7} {s['errors']:4d} "
                        f"{_fmt(s.get('client_cpu'), 2):>7} {_fmt(s.get('server_cpu'), 2):>7}"
                    )
        for level, ratio in sections.get("qps_ratio_on_off", {}).items():
            print(f"{workload:9} QPS ratio batching on/off at c={level}: {ratio:.2f}x")
    for workload, s in report.get("naive_baseline", {}).items():
        print(
            f"{workload:9} {'naive':12} {'c=1':>8} {s['qps']:8.1f} {_fmt(s['p50_ms']):>7} "
            f"{_fmt(s['p95_ms']):>7} {_fmt(s['p99_ms']):>7} {_fmt(s['p999_ms']):>7} "
            f"{s['errors']:4d}   ({s['what']})"
        )
    print("(latencies in ms; cpu = cores busy, client = this process, server = its process)")
    print_breakdown(report)
    busy = [
        (w, n, lvl, s["client_cpu"])
        for w, sections in report["results"].items()
        for n, section in sections.items()
        if n.startswith("batching")
        for lvl, s in section.get("concurrency", {}).items()
        if s.get("client_cpu") is not None and s["client_cpu"] > 0.8
    ]
    for w, n, lvl, cpu in busy:
        print(f"note: client used {cpu:.2f} cores at {w}/{n}/c={lvl}: it may limit that level")
    for t in report["targets"]:
        status = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[t["met"]]
        measured = "-" if t["measured"] is None else f"{t['measured']:.2f}"
        match = "" if t["conditions_match"] else " (conditions differ from the target's)"
        print(f"target {t['name']} {t['target']}: measured {measured} -> {status}{match}")
    print(f"conditions: {report['targets'][0]['conditions']}")


def print_breakdown(report: dict[str, Any]) -> None:
    """Mean ms per part of a call at concurrency 1: all calls, then the slowest 1%."""
    names = (*SERVER_PARTS, "unaccounted", "outside_server")
    header = f"{'c=1 breakdown (ms)':34} " + " ".join(f"{n:>9.9}" for n in names)
    lines = []
    for workload, sections in report["results"].items():
        for name, section in sections.items():
            stats = section.get("concurrency", {}).get("1") if name.startswith("batching") else None
            parts = stats.get("server_ms") if stats else None
            for which in ("all", "slowest_1pct") if parts else ():
                values = " ".join(f"{parts[which][n]:9.2f}" for n in names)
                lines.append(f"{workload + ' ' + name + ' ' + which:34} {values}")
    if lines:
        print(header)
        print("\n".join(lines))


def plot(report: dict[str, Any], path: Path) -> None:
    """p99 (solid) and p50 (dashed) latency against throughput, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    workloads = list(report["results"])
    fig, axes = plt.subplots(
        1, max(1, len(workloads)), figsize=(6.5 * max(1, len(workloads)), 4.8), squeeze=False
    )
    colors = {"batching_on": "tab:blue", "batching_off": "tab:orange", "open": "tab:green"}
    for ax, workload in zip(axes[0], workloads, strict=False):
        sections = report["results"][workload]
        series = []
        for name in ("batching_on", "batching_off"):
            if name in sections:
                series.append((f"closed loop, {name.replace('_', ' ')}", name, "concurrency", "c"))
                if sections[name].get("rates"):
                    series.append((f"open loop, {name.replace('_', ' ')}", name, "rates", "r"))
        for label, name, kind, tag in series:
            points = sorted(sections[name][kind].items(), key=lambda kv: float(kv[0]))
            points = [(lvl, s) for lvl, s in points if s["p99_ms"] is not None]
            if not points:
                continue
            color = colors["open"] if kind == "rates" else colors[name]
            qps = [s["qps"] for _, s in points]
            ax.plot(qps, [s["p99_ms"] for _, s in points], "o-", color=color, label=f"{label} p99")
            ax.plot(qps, [s["p50_ms"] for _, s in points], "s--", color=color, alpha=0.6,
                    label=f"{label} p50")  # fmt: skip
            for (lvl, s), x in zip(points, qps, strict=True):
                ax.annotate(f"{tag}={lvl}", (x, s["p99_ms"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=color)  # fmt: skip
        naive = report.get("naive_baseline", {}).get(workload)
        if naive and naive["p99_ms"] is not None:
            ax.plot([naive["qps"]], [naive["p99_ms"]], "X", color="tab:red", ms=9,
                    label="naive PyTorch + NumPy p99")  # fmt: skip
            ax.plot([naive["qps"]], [naive["p50_ms"]], "x", color="tab:red", ms=7,
                    label="naive PyTorch + NumPy p50")  # fmt: skip
        if workload == "text":
            ax.axhline(TARGET_P99_MS, color="grey", lw=0.8, ls=":", label="p99 target (c=1)")
        title = "text -> molecules" if workload == "text" else "molecule -> molecules"
        ax.set_title(
            f"{title} (index {report['meta'].get('index_size', 0):,}, k={report['meta']['k']})"
        )
        ax.set_xlabel("throughput (queries/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    machine = report["meta"]["machine"]
    fig.suptitle(
        f"molret latency, {machine.get('usable_cpus', machine.get('logical_cpus'))} CPUs "
        f"({machine.get('cpu', '')}), {report['meta']['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="HOST:PORT of a running server (measured as it is)")
    where.add_argument("--bundle", type=Path, help="start servers on this bundle (with --index)")
    parser.add_argument("--index", type=Path, help="molecule index (needed with --bundle)")
    parser.add_argument("--text-index", type=Path, help="text index for the started server")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 32, 128])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per level")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds per level before measuring (default min(2, duration))")  # fmt: skip
    parser.add_argument("--rates", type=_float_list, default=[],
                        help="open-loop arrival rates per second, e.g. 50,100,200")  # fmt: skip
    parser.add_argument("--arrival", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--workload", default="text,molecule", help="text and/or molecule")
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--data", help="ChEBI-20 folder for the queries (default $MOLRET_DATA)")
    parser.add_argument("--queries", type=int, default=1000, help="queries sampled per workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-batching-compare", action="store_true",
                        help="skip the batching-off server (only with --bundle)")  # fmt: skip
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads of a started server")
    parser.add_argument("--batch-delay-ms", type=float, help="--batch-delay-ms of the server")
    parser.add_argument("--run", type=Path, help="training run: adds the naive PyTorch baseline")
    parser.add_argument("--baseline-duration", type=float, help="seconds (default --duration)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per RPC, s")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    args = parser.parse_args(argv)
    if args.bundle is not None and args.index is None:
        parser.error("--bundle needs --index")
    args.workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown or not args.workloads:
        parser.error(f"--workload takes {', '.join(WORKLOADS)} (got {args.workload!r})")
    if args.warmup is None:
        args.warmup = min(2.0, args.duration)
    if args.duration <= 0 or not args.concurrency or min(args.concurrency) < 1:
        parser.error("need --duration > 0 and concurrency levels >= 1")
    return args


def _measure_server(
    args: argparse.Namespace,
    target: str,
    requests: dict[str, list[Any]],
    server_cpu: Callable[[], float | None] | None,
    rates: Sequence[float],
    label: str,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for workload, reqs in requests.items():
        section: dict[str, Any] = {"concurrency": {}}
        for c in args.concurrency:
            stats = asyncio.run(
                closed_loop(target, workload, reqs, c, args.duration, args.warmup,
                            args.timeout, server_cpu)
            )  # fmt: skip
            section["concurrency"][str(c)] = stats
            print(
                f"  {workload} {label} c={c}: {stats['qps']:.1f} QPS, p50 "
                f"{_fmt(stats['p50_ms'])} p99 {_fmt(stats['p99_ms'])} ms, {stats['errors']} errors",
                flush=True,
            )
        if rates:
            section["rates"] = {}
            for rate in rates:
                stats = asyncio.run(
                    open_loop(target, workload, reqs, rate, args.duration, args.warmup,
                              args.arrival, args.seed, args.timeout, server_cpu)
                )  # fmt: skip
                section["rates"][f"{rate:g}"] = stats
                print(
                    f"  {workload} {label} rate={rate:g}/s: {stats['qps']:.1f} QPS, p50 "
                    f"{_fmt(stats['p50_ms'])} p99 {_fmt(stats['p99_ms'])} ms, "
                    f"{stats['errors']} errors",
                    flush=True,
                )
        out[workload] = section
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    queries = load_queries(args.data, args.queries, args.seed)
    print(f"queries: {queries.source}", flush=True)
    if not queries.source.startswith("ChEBI-20"):
        print("warning: no ChEBI-20 data (--data or MOLRET_DATA): the built-in queries are short "
              "and do not stand for real descriptions", flush=True)  # fmt: skip
    meta: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "k": args.k,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workloads": args.workloads,
        "concurrency_levels": args.concurrency,
        "rates": args.rates,
        "arrival": args.arrival,
        "queries": queries.source,
        "client": "grpc.aio, one channel per level, one process (this one)",
    }
    results: dict[str, dict[str, Any]] = {w: {} for w in args.workloads}
    log_dir = Path(tempfile.mkdtemp(prefix="molret-latency-"))

    def requests_for(info: dict[str, Any]) -> dict[str, list[Any]]:
        if "molecule" in args.workloads:
            keep_servable_smiles(queries, info["buckets"])
            meta["dropped_query_smiles"] = queries.dropped_smiles
        return {w: make_requests(w, queries, args.k) for w in args.workloads}

    if args.server:
        info = server_info(args.server)
        meta.update(info, server={"target": args.server, "started_here": False})
        label = "batching_on" if info["batching"] else "batching_off"
        print(f"measuring {args.server} ({label.replace('_', ' ')}, {info['index_size']:,} "
              f"molecules, bundle {info['bundle_id']})", flush=True)  # fmt: skip
        measured = _measure_server(args, args.server, requests_for(info), None, args.rates, label)
        for workload, section in measured.items():
            results[workload][label] = section
    else:
        modes = [True] if args.no_batching_compare else [True, False]
        requests: dict[str, list[Any]] | None = None
        for batching in modes:
            label = "batching_on" if batching else "batching_off"
            print(f"starting a server ({label.replace('_', ' ')}) ...", flush=True)
            server = ServerProcess(
                args.bundle, args.index, args.text_index, batching, args.threads,
                args.batch_delay_ms, log_dir,
            )  # fmt: skip
            try:
                info = server_info(server.target)
                if requests is None:
                    requests = requests_for(info)
                    meta.update(info)
                    meta["server"] = {
                        "started_here": True,
                        "bundle": str(args.bundle),
                        "index": str(args.index),
                        "threads": args.threads or "all cores",
                        "batch_delay_ms": args.batch_delay_ms,
                        "command": "python -m molret.cli serve (subprocess)",
                    }
                rates = args.rates if batching else []
                measured = _measure_server(
                    args, server.target, requests, server.cpu_seconds, rates, label
                )
            finally:
                server.stop()
            for workload, section in measured.items():
                results[workload][label] = section
        for sections in results.values():
            on = sections.get("batching_on", {}).get("concurrency", {})
            off = sections.get("batching_off", {}).get("concurrency", {})
            sections["qps_ratio_on_off"] = {
                level: on[level]["qps"] / off[level]["qps"]
                for level in on
                if level in off and off[level]["qps"] > 0
            }
    report: dict[str, Any] = {"meta": meta, "results": results}

    if args.run is not None:
        if args.index is None:
            print("naive baseline skipped: it needs --index (the vectors to search)")
        else:
            report["naive_baseline"] = {}
            meta["naive_run"] = str(args.run)
            exported_from = _bundle_source_run(args.bundle)
            if exported_from and Path(exported_from) != args.run.resolve():
                print(f"warning: the bundle was exported from {exported_from}, not {args.run}")
            for workload in args.workloads:
                print(f"naive baseline ({workload}) ...", flush=True)
                report["naive_baseline"][workload] = naive_baseline(
                    args.run, args.index, workload, queries,
                    args.baseline_duration or args.duration, args.warmup, args.k, args.threads,
                )  # fmt: skip
    with contextlib.suppress(OSError):
        meta["machine"]["loadavg_end"] = list(os.getloadavg())
    meta["wall_seconds"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
    report["targets"] = check_targets(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"results: {args.json}")
    if args.plot is not None:
        plot(report, args.plot)
        print(f"plot: {args.plot}")
    for stale in log_dir.glob("*.log"):
        stale.unlink()
    with contextlib.suppress(OSError):
        log_dir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
