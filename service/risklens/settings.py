"""One settings object for the server, the CLI and batch jobs (environment variables ``RISKLENS_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_TOP_K = 20  # reasons per claim: a request's top_k is held to the same bound as the setting


class Settings(BaseSettings):
    """Service configuration. Every field can be set as ``RISKLENS_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RISKLENS_", extra="ignore")

    models_dir: Path = Field(Path("models"), description="Directory of model directories to load.")
    data_dir: Path = Field(Path("var"), description="Where the server keeps its state (audit DB, keys).")
    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    workers: int = Field(8, ge=1, description="gRPC worker threads.")
    max_batch_size: int = Field(1000, ge=1, description="Largest ExplainBatch accepted (RESOURCE_EXHAUSTED above).")
    max_message_bytes: int = Field(16 * 1024 * 1024, description="gRPC send/receive message size limit.")
    top_k: int = Field(3, ge=1, le=MAX_TOP_K, description="Reasons that raise risk shown in reason codes and rationale.")
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="TreeSHAP engine device.")
    shutdown_grace_seconds: float = Field(5.0, ge=0, description="Time in-flight calls get to finish on stop.")
    audit_url: str | None = Field(
        None, description="Audit store URL: sqlite:///path or postgresql://...; default sqlite under data_dir.")
    audit_enabled: bool = Field(True, description="Record every explanation in the audit trail.")
    audit_signing_key: Path | None = Field(
        None, description="Ed25519 PEM key that signs chain checkpoints; default: a development key "
                          "generated under data_dir on first use.")
    audit_checkpoint_every: int = Field(
        1000, ge=0, description="Sign a checkpoint of the chain head every N records (0: only on demand).")
    agreement_threshold: float = Field(
        0.5, ge=0, le=1, description="Cross-method rank agreement below which a claim is flagged.")

    def resolved_audit_url(self) -> str:
        if self.audit_url:
            return self.audit_url
        return f"sqlite://{(self.data_dir / 'audit.db').resolve()}"  # an absolute path: sqlite:///abs/path

    def resolved_signing_key_path(self) -> Path:
        return self.audit_signing_key or self.data_dir / "audit-signing-key.pem"
