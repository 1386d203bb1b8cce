"""Building, starting and gracefully stopping the gRPC server (health and reflection included)."""

from __future__ import annotations

import errno
import gc
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from risklens.core import ExplainService
from risklens.registry import ModelRegistry
from risklens.server.servicer import RiskLensServicer
from risklens.settings import Settings
from risklens.v1 import risklens_pb2 as pb
from risklens.v1 import risklens_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RiskLens"].full_name


def build_service(settings: Settings) -> ExplainService:
    """The core service for the settings: every model under ``models_dir``, plus the audit store."""
    registry = ModelRegistry.from_directory(settings.models_dir)
    audit = None
    if settings.audit_enabled:
        from risklens.audit import configured_signing_key, open_store

        ExplainService.check_audit_policies(registry)  # before the store and key files are made
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        signing_key = configured_signing_key(settings.audit_signing_key, settings.resolved_signing_key_path())
        audit = open_store(settings.resolved_audit_url(), signing_key=signing_key,
                           checkpoint_every=settings.audit_checkpoint_every)
    try:
        return ExplainService(registry, settings, audit)
    except BaseException:
        if audit is not None:
            audit.close()
        raise


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service: ExplainService
    grace_seconds: float

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Report NOT_SERVING, stop taking calls, let in-flight calls finish within the grace period."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace_seconds).wait()
        if self.service.audit is not None:
            self.service.audit.close()
        log.info("server on port %d stopped", self.port)


def start_server(settings: Settings, service: ExplainService | None = None) -> RunningServer:
    options = [("grpc.max_send_message_length", settings.max_message_bytes),
               ("grpc.max_receive_message_length", settings.max_message_bytes),
               # gRPC sets SO_REUSEPORT by default: a second server on a port already served would
               # bind too and share its calls (with another audit trail), silently.
               ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.workers), options=options)
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
        port = 0
    if port == 0:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {settings.host}:{settings.port} (the port is taken, "
                                        f"or the address is not one of this machine's)")
    # The port first: a server that cannot listen leaves no audit store or key behind.
    service = service or build_service(settings)
    pb_grpc.add_RiskLensServicer_to_server(RiskLensServicer(service), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %d model(s) on %s:%d", len(service.registry.models()), settings.host, port)
    return RunningServer(server, port, health_servicer, service, settings.shutdown_grace_seconds)


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    running = start_server(settings)
    # What is alive now (the imported stack, every model) lives as long as the server. Frozen out
    # of the collector's generations, it is no longer walked by each full collection: those took
    # 107-125 ms, about once per 900 Explain calls of the demo model, and 14-17 ms frozen (measured).
    gc.collect()
    gc.freeze()
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    running.stop()
