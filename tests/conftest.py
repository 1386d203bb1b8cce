"""Session fixtures shared by every test folder: real gRPC servers on loopback, the demo models, data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLCONFIGDIR", str(REPO_ROOT / ".cache" / "matplotlib"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO_ROOT / ".cache" / "numba"))
# Test-only key for the HMAC redaction the demo models' audit policy asks for.
os.environ.setdefault("RISKLENS_AUDIT_HMAC_KEY", "risklens-tests-hmac-key")


@dataclass
class ServerHandle:
    """A real server on a free loopback port plus a channel and a generated client stub for it."""

    running: object  # risklens.server.RunningServer
    channel: grpc.Channel
    stub: object  # risklens_pb2_grpc.RiskLensStub
    data_dir: Path

    @property
    def target(self) -> str:
        return self.running.target

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self) -> None:
        self.channel.close()
        self.running.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def demo_models_dir() -> Path:
    return REPO_ROOT / "models"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return REPO_ROOT / "examples"


@pytest.fixture(scope="session")
def grpc_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerHandle]]:
    """``start(models_dir, **settings)`` -> ServerHandle; every server started is stopped at session end."""
    from risklens.server import start_server
    from risklens.settings import Settings
    from risklens.v1 import risklens_pb2_grpc as pb_grpc

    started: list[ServerHandle] = []

    def start(models_dir: Path, **overrides: object) -> ServerHandle:
        data_dir = overrides.pop("data_dir", None) or tmp_path_factory.mktemp("server-data")
        settings = Settings(models_dir=models_dir, data_dir=data_dir, host="127.0.0.1", port=0, **overrides)
        running = start_server(settings)
        channel = grpc.insecure_channel(running.target)
        grpc.channel_ready_future(channel).result(timeout=30)
        handle = ServerHandle(running, channel, pb_grpc.RiskLensStub(channel), Path(data_dir))
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture(scope="session")
def demo_server(grpc_server_factory: Callable[..., ServerHandle], demo_models_dir: Path) -> ServerHandle:
    return grpc_server_factory(demo_models_dir, max_batch_size=50)


@pytest.fixture(scope="session")
def demo_stub(demo_server: ServerHandle) -> object:
    return demo_server.stub
