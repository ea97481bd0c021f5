"""Server wiring: grpc.aio server, interceptors, TLS, health, reflection, metrics port, signals.

Shutdown (SIGTERM or SIGINT): health goes NOT_SERVING, the server stops
accepting calls and lets running ones finish within the grace period, then the
device loop finishes its queue and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server
from tandem.v1 import tandem_pb2, tandem_pb2_grpc

from service.auth import BearerTokenInterceptor
from service.config import Role, ServerConfig, TlsConfig
from service.interceptors import CallGate, ErrorsAndMetricsInterceptor
from service.metrics import Metrics
from service.reflection import add_reflection
from service.runtime.adapter_publishing import AdapterFollower, AdapterPublisher
from service.runtime.adapter_store import AdapterStore
from service.runtime.controller import Controller
from service.runtime.specs import LoadSpec, ModelDescription, RoleDescription
from service.servicer import TandemServicer

log = logging.getLogger(__name__)
SERVICE_NAME = tandem_pb2.DESCRIPTOR.services_by_name["TandemService"].full_name


@dataclass
class RunningServer:
    """A started server and what it is bound to."""

    server: grpc.aio.Server
    controller: Controller
    health: health.aio.HealthServicer
    port: int
    metrics_port: int
    metrics_http: object
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    publisher: AdapterPublisher | None = None
    follower: AdapterFollower | None = None

    async def set_ready(self) -> None:
        """Readiness follows whether a model is loaded (sampler role: and serves the newest published adapter)."""
        ready = self.controller.loaded and (self.follower is None or self.follower.caught_up)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def model_changed(self) -> None:
        """After a load or unload: a sampler catches up with the store first, then readiness follows."""
        if self.follower is not None:
            await self.follower.model_changed()
        await self.set_ready()

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop serving, drain within the grace period, release the model."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.follower is not None:
            await self.follower.stop()
        if self.publisher is not None:
            await self.publisher.stop()  # before the controller: the last publish snapshots through it
        await self.controller.stop()
        self.metrics_http.shutdown()


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with a client CA, clients must present a certificate it signed."""
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def _start_health_server(config: ServerConfig, health_servicer: health.aio.HealthServicer) -> tuple[grpc.aio.Server, int]:
    """Health alone on its own plaintext port, for probes that can do neither TLS nor tokens."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{config.host}:{config.health_port}")
    await server.start()
    return server, port


async def start_server(config: ServerConfig) -> RunningServer:
    """Build and start everything; returns once the ports are bound (the start-up model loads in the background)."""
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    metrics = Metrics(CollectorRegistry())
    controller = Controller(config, metrics)
    controller.start()
    limits = config.limits
    interceptors: list[grpc.aio.ServerInterceptor] = [] if config.auth_token is None else [BearerTokenInterceptor(config.auth_token)]
    interceptors.append(ErrorsAndMetricsInterceptor(metrics, CallGate(limits.max_concurrent_rpcs)))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
        ],
    )
    publisher, follower = _adapter_publishing(config, controller, metrics)

    def describe_role() -> RoleDescription:
        published = publisher or follower
        trainer_address = (config.trainer_address or "") if config.role is Role.SAMPLER else ""
        return RoleDescription(config.role, trainer_address, 0 if published is None else published.published_version)

    tandem_pb2_grpc.add_TandemServiceServicer_to_server(TandemServicer(controller, describe_role), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        add_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
    address = f"{config.host}:{config.port}"
    port = server.add_insecure_port(address) if config.tls is None else server.add_secure_port(address, server_credentials(config.tls))
    metrics_http, _ = start_http_server(config.metrics_port, addr=config.host, registry=metrics.registry)
    await server.start()
    running = RunningServer(server, controller, health_servicer, port, metrics_http.server_port, metrics_http, publisher=publisher, follower=follower)
    if config.health_port is not None:
        running.health_server, running.health_port = await _start_health_server(config, health_servicer)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await running.set_ready()
    controller.on_model_change(running.model_changed)
    if publisher is not None:
        await publisher.start()
    if follower is not None:
        follower.start(on_caught_up=running.set_ready)
    return running


def _adapter_publishing(config: ServerConfig, controller: Controller, metrics: Metrics) -> tuple[AdapterPublisher | None, AdapterFollower | None]:
    """A trainer publishes to the adapter store, a sampler follows it; a server of both roles has no store."""
    if config.adapter_store is None or config.role is Role.BOTH:
        return None, None
    store = AdapterStore(config.adapter_store)
    if config.role is Role.TRAINER:
        return AdapterPublisher(controller, store, metrics), None
    return None, AdapterFollower(controller, store, metrics)


async def load_startup_model(running: RunningServer, model_name: str) -> None:
    """Load the configured model at start-up, logging progress; a failure leaves the server up and not ready."""
    try:
        async for event in running.controller.load_model(LoadSpec(model_name=model_name)):
            if isinstance(event, ModelDescription):
                log.info("model %s ready (%s engine, %.1f s)", event.model_name, event.engine.value, event.load_seconds)
            else:
                log.info("loading: %s: %s", event.phase.value, event.message)
    except Exception:
        log.exception("start-up model %r failed to load; the server stays up and not ready", model_name)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(config)
    transport = "plaintext" if config.tls is None else "mutual TLS" if config.tls.client_ca_file else "TLS"
    auth = "bearer token required" if config.auth_token else "no authentication"
    print(f"tandem: gRPC on {config.host}:{running.port}, metrics on http://{config.host}:{running.metrics_port}/metrics", flush=True)
    print(f"tandem: {transport}, {auth}, reflection {'on' if config.reflection else 'off'}", flush=True)
    if running.health_port is not None:
        print(f"tandem: health alone on {config.host}:{running.health_port} (plaintext)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    startup = None
    if config.startup_model is not None:
        startup = asyncio.create_task(load_startup_model(running, config.startup_model))
    await stop.wait()
    log.info("shutting down: draining for up to %.0f s", config.grace_seconds)
    if startup is not None:
        startup.cancel()
    await running.shutdown(config.grace_seconds)
    log.info("stopped")
