"""Starting and stopping the gRPC server (`molret serve`).

``start_server`` (async) is the building block for tests and benchmarks; ``serve`` runs one
until SIGTERM / SIGINT; ``start_server_thread`` runs one on its own event loop in a background
thread, for callers that use the blocking client from the same process.

Start-up order: the bundle and the indexes are loaded and checked first (a bad path fails
before anything listens); then the server binds with grpc.health.v1 reporting NOT_SERVING and
every Retrieval RPC answering UNAVAILABLE; the towers are warmed up (one small batch through the
text tower and through every molecule bucket); then health turns SERVING. Shutdown: health
turns NOT_SERVING, new RPCs are refused, in-flight RPCs get ``grace`` seconds to finish (the
micro-batchers keep running until they have), then models and indexes are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from molret.engine.proto import retrieval_pb2, retrieval_pb2_grpc
from molret.engine.service import (
    SERVICE_NAME,
    BatchingConfig,
    RetrievalService,
    ServiceConfig,
    load_models,
    open_index,
    warm_up,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class RunningServer:
    """A started server; ``stop`` drains it."""

    server: grpc.aio.Server
    service: RetrievalService
    health: Any
    host: str
    port: int
    metrics_port: int | None = None
    ready_task: asyncio.Task[None] | None = None
    _metrics_http: Any = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def target(self) -> str:
        return f"{_host_for_address(self.host)}:{self.port}"

    async def wait_ready(self) -> None:
        if self.ready_task is not None:
            await self.ready_task

    async def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace`` s, release everything."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.ready_task is not None and not self.ready_task.done():
            self.ready_task.cancel()
            with contextlib.suppress(BaseException):
                await self.ready_task
        await self.service.close()
        if self._metrics_http is not None:
            http_server, thread = self._metrics_http
            http_server.shutdown()
            http_server.server_close()
            thread.join(timeout=5)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def _host_for_address(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def start_server(
    bundle_dir: str | Path,
    index_dir: str | Path,
    text_index_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 50051,
    metrics_port: int | None = None,
    token: str | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    max_items_per_request: int = 1024,
    max_in_flight: int = 256,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    batch_max_delay_ms: float = 0.0,
    batching: bool = True,
    threads: int | None = None,
    config: ServiceConfig | None = None,
    wait_ready: bool = True,
) -> RunningServer:
    """Load, bind and start a server (port 0 picks a free one); see the module docstring.

    ``config`` overrides the limit and batching arguments as a whole (for benchmarks that tune
    budgets); ``token``, ``threads`` and ``batching`` still apply on top of it.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate and a key")
    if config is None:
        config = ServiceConfig(
            max_items_per_request=max_items_per_request,
            max_in_flight=max_in_flight,
            batching=BatchingConfig(enabled=batching, max_delay_ms=batch_max_delay_ms),
        )
    config = replace(
        config,
        token=token or config.token,
        threads=threads if threads is not None else config.threads,
        batching=replace(config.batching, enabled=batching and config.batching.enabled),
    )
    service = RetrievalService(config)
    loop = asyncio.get_running_loop()

    def load() -> tuple[Any, Any, Any]:
        models = load_models(bundle_dir, config.threads, config.batching, service.metrics.on_batch)
        molecule_index = open_index(index_dir, "molecule", models.bundle)
        text_index = open_index(text_index_dir, "text", models.bundle) if text_index_dir else None
        return models, molecule_index, text_index

    models, molecule_index, text_index = await loop.run_in_executor(None, load)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    retrieval_pb2_grpc.add_RetrievalServicer_to_server(service, server)
    health = health_aio.HealthServicer()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{_host_for_address(host)}:{port}"
    try:
        if tls_cert is not None and tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())]
            )
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except (RuntimeError, OSError) as exc:
        bound = 0
        reason = f" ({exc})"
    else:
        reason = ""
    if not bound:
        await service.close()
        await models.close()
        molecule_index.close()
        if text_index is not None:
            text_index.close()
        raise OSError(f"cannot listen on {address}{reason}: port in use or host not local?")
    await server.start()

    running = RunningServer(server, service, health, host, bound)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        http_server, thread = start_http_server(
            metrics_port, addr=host, registry=service.metrics.registry
        )
        running._metrics_http = (http_server, thread)
        running.metrics_port = int(http_server.server_port)

    async def become_ready() -> None:
        await loop.run_in_executor(None, warm_up, models.embedder)
        service.install(models, molecule_index, text_index)
        service.ready = True
        service.metrics.ready.set(1)
        for name in ("", SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "ready: bundle %s, %d molecules%s",
            models.bundle.bundle_id,
            molecule_index.size,
            f", {text_index.size} texts" if text_index is not None else "",
        )

    running.ready_task = loop.create_task(become_ready())
    if wait_ready:
        try:
            await running.ready_task
        except BaseException:
            await running.stop(0)
            raise
    return running


def serve(
    bundle_dir: str | Path,
    index_dir: str | Path,
    text_index_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 50051,
    metrics_port: int | None = None,
    token: str | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    max_items_per_request: int = 1024,
    max_in_flight: int = 256,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    batch_max_delay_ms: float = 0.0,
    batching: bool = True,
    threads: int | None = None,
    grace: float = 30.0,
    on_listening: Callable[[RunningServer], None] | None = None,
) -> None:
    """Run a server until SIGTERM or SIGINT, then drain in-flight requests (``grace`` s)."""

    async def main() -> None:
        running = await start_server(
            bundle_dir,
            index_dir,
            text_index_dir,
            host=host,
            port=port,
            metrics_port=metrics_port,
            token=token,
            tls_cert=tls_cert,
            tls_key=tls_key,
            max_items_per_request=max_items_per_request,
            max_in_flight=max_in_flight,
            max_message_bytes=max_message_bytes,
            batch_max_delay_ms=batch_max_delay_ms,
            batching=batching,
            threads=threads,
            wait_ready=False,
        )
        if on_listening is not None:
            on_listening(running)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        waiter = loop.create_task(stop.wait())
        ready = running.ready_task
        assert ready is not None
        done, _ = await asyncio.wait({waiter, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready in done and ready.exception() is not None:
            waiter.cancel()
            await running.stop(0)
            raise ready.exception()  # type: ignore[misc]
        await waiter
        log.info("stopping: draining in-flight requests (up to %.0f s)", grace)
        await running.stop(grace)
        log.info("stopped")

    asyncio.run(main())


class ServerThread:
    """A server on its own event loop in a daemon thread (tests, benchmarks, notebooks)."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.running: RunningServer | None = None
        self._thread = threading.Thread(
            target=self._main, args=(kwargs,), name="molret-server", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def _main(self, kwargs: dict[str, Any]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.running = self._loop.run_until_complete(start_server(**kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    @property
    def port(self) -> int:
        assert self.running is not None
        return self.running.port

    @property
    def target(self) -> str:
        assert self.running is not None
        return self.running.target

    @property
    def metrics_port(self) -> int | None:
        assert self.running is not None
        return self.running.metrics_port

    @property
    def service(self) -> RetrievalService:
        assert self.running is not None
        return self.running.service

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, grace: float | None = 1.0) -> None:
        if self.running is None or not self._thread.is_alive():
            return
        self.call(self.running.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server_thread(**kwargs: Any) -> ServerThread:
    """``start_server(**kwargs)`` on a background thread; returns once it is SERVING."""
    return ServerThread(**kwargs)
