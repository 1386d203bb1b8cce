"""gRPC layer only: translate, validate, call the core (``risklens.core``)."""

from risklens.server.app import RunningServer, build_service, serve, start_server

__all__ = ["RunningServer", "build_service", "serve", "start_server"]
