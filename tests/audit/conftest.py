"""Audit fixtures: real explanations from the demo models, SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from loopback import free_port

from risklens.audit import AuditEntry, AuditStore, RedactionPolicy, new_receipt_id, open_store
from risklens.v1 import risklens_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Explained:
    """One claim and the response the core returned for it (receipt id replaced per entry)."""

    claim: dict[str, Any]
    response: risklens_pb2.ExplainResponse


@pytest.fixture(scope="session")
def explained() -> list[Explained]:
    """Forty real explanations of synthetic claims by the bundled XGBoost demo model."""
    from risklens.core import ClaimInput, ExplainService
    from risklens.datasets import generate_claims
    from risklens.registry import ModelRegistry

    service = ExplainService(ModelRegistry.from_directory(REPO_ROOT / "models"))
    frame, _ = generate_claims(40, 11)
    claims = [ClaimInput(frame.iloc[i].to_dict(), f"claim-{i:03d}") for i in range(len(frame))]
    return [Explained(dict(e.claim), e.response) for e in service.explain_batch("demo-xgb", claims)]


EntryFactory = Callable[..., list[AuditEntry]]


@pytest.fixture(scope="session")
def make_entries(explained: list[Explained]) -> EntryFactory:
    """``make_entries(n, policy=..., created_at=..., model_name=...)``: entries with fresh receipt ids."""

    def make(count: int, *, policy: RedactionPolicy | None = None, created_at: datetime | None = None,
             model_name: str | None = None, step: timedelta = timedelta(0)) -> list[AuditEntry]:
        entries = []
        moment = created_at or datetime.now(UTC)
        for index in range(count):
            source = explained[index % len(explained)]
            response = risklens_pb2.ExplainResponse()
            response.CopyFrom(source.response)
            response.receipt_id = new_receipt_id()
            if model_name:
                response.model.name = model_name
            entries.append(AuditEntry(receipt_id=response.receipt_id, created_at=moment + step * index,
                                      model=response.model, input=source.claim, explanation=response,
                                      policy=policy or RedactionPolicy()))
        return entries

    return make


# ---------------------------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _install_postgres() -> str:
    """Install Debian's postgresql (CI runs as root with apt); returns a reason on failure."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "initdb is missing and apt-get cannot be used here (not root or not Debian)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            return f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}"
    return ""


def _reachable_by_others(path: Path) -> None:
    """Let other users (the postgres user) pass through every directory above ``path``."""
    for parent in path.parents:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)


@pytest.fixture
def reachable_by_others() -> Callable[[Path], None]:
    """For tests that hand PostgreSQL a directory: pytest resets its ``pytest-of-<user>`` directory
    to owner-only whenever another pytest session starts, so the session's setting may be gone."""
    return _reachable_by_others


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server on a free loopback port for the session (installed if needed)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        reason = _install_postgres()
        bin_dir = _postgres_bin()
        if bin_dir is None:
            pytest.skip(f"PostgreSQL cannot start: {reason or 'initdb not found after install'}")
    as_user: list[str] = []
    data_root = tmp_path_factory.mktemp("postgres")
    if os.geteuid() == 0:
        # postgres refuses to run as root: run it as the postgres user, in a directory it owns.
        if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            pytest.skip("PostgreSQL cannot start: running as root and there is no 'postgres' user")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(data_root, 0o777)
        _reachable_by_others(data_root)
    data_dir = data_root / "data"
    port = free_port()
    initdb = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "risklens",
                             "--auth=trust", "-E", "UTF8", "--no-sync"], capture_output=True, text=True)
    if initdb.returncode != 0:
        pytest.skip(f"PostgreSQL cannot start: initdb failed: {initdb.stderr.strip()[-500:]}")
    log_file = data_root / "postgres.log"
    start = subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file), "-w",
                            "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {data_root} -c fsync=on",
                            "start"], capture_output=True, text=True)
    if start.returncode != 0:
        log_text = log_file.read_text() if log_file.exists() else ""
        pytest.skip(f"PostgreSQL cannot start: pg_ctl failed: {start.stderr.strip()} {log_text[-500:]}")
    url = f"postgresql://risklens@127.0.0.1:{port}/postgres"
    try:
        yield url
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
                       capture_output=True)


_database_counter = iter(range(1, 10**6))


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> str:
    """A new, empty database on the session's server for one test."""
    import psycopg

    name = f"audit_{os.getpid()}_{next(_database_counter)}_{int(time.time() * 1000) % 10**6}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty audit store URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[AuditStore]:
    opened = open_store(store_url)
    yield opened
    opened.close()
