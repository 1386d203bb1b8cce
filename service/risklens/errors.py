"""Typed domain errors. Core code raises these; the gRPC layer maps ``code`` to a status in one place."""

from __future__ import annotations


# Messages and field names often quote what a caller sent (a feature or model name): clipped, a
# 20,000-character name cannot push a status past gRPC's 16 KiB metadata limit (the client would
# see RESOURCE_EXHAUSTED instead of the error) or flood a log line.
MAX_MESSAGE_CHARS = 2000
MAX_FIELD_CHARS = 200


def _clipped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


class RiskLensError(Exception):
    """Base class. ``code`` is a gRPC status code name; ``field`` names the offending input, if any."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        message = _clipped(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.field = None if field is None else _clipped(field, MAX_FIELD_CHARS)


class ModelNotFound(RiskLensError):
    code = "NOT_FOUND"


class SchemaError(RiskLensError):
    """A claim does not match the model's feature schema (missing, mistyped, out of range, ...)."""

    code = "INVALID_ARGUMENT"


class InvalidRequest(RiskLensError):
    """A request option is invalid (unknown method, bad device, ...)."""

    code = "INVALID_ARGUMENT"


class BatchTooLarge(RiskLensError):
    code = "RESOURCE_EXHAUSTED"


class ArtifactIntegrityError(RiskLensError):
    """A model artifact is missing, unreadable, or its sha256 differs from its manifest."""

    code = "FAILED_PRECONDITION"


class ManifestError(RiskLensError):
    code = "FAILED_PRECONDITION"


class UnsupportedModel(RiskLensError):
    """No adapter can handle this model object / framework."""

    code = "FAILED_PRECONDITION"


class DeviceUnavailable(RiskLensError):
    """``device="gpu"`` was asked for but no usable CUDA device / CuPy is present."""

    code = "FAILED_PRECONDITION"


class AuditUnavailable(RiskLensError):
    """The audit record could not be made durable; no explanation is returned without one."""

    code = "UNAVAILABLE"


class AuditStorageFull(RiskLensError):
    code = "RESOURCE_EXHAUSTED"


class ReceiptNotFound(RiskLensError):
    code = "NOT_FOUND"


class DuplicateReceipt(RiskLensError):
    """A receipt id is already in the audit trail (ids are never reused)."""

    code = "ALREADY_EXISTS"
