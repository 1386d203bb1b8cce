"""The one place domain errors become gRPC statuses (with a BadRequest field violation when a field is known).

Servicer methods are wrapped by ``grpc_errors``; they never call ``context.abort`` themselves. Anything that
is not a RiskLensError is a bug: it is logged with its traceback and returned as INTERNAL with a generic
message (no claim values leak into statuses or logs).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from risklens.errors import RiskLensError

log = logging.getLogger(__name__)


def status_code(error: RiskLensError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)


def rich_status(error: RiskLensError) -> grpc.Status:
    code = status_code(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    if error.field:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)]))
        status.details.append(detail)
    return rpc_status.to_status(status)


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, RiskLensError):
        # %r: a field is often a name the caller chose; quoted, a newline in it cannot forge a log line.
        log.info("%s -> %s (field %r)", method, exc.code, exc.field or "-")
        context.abort_with_status(rich_status(exc))
    log.exception("%s failed unexpectedly", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see server log")


def item_error(exc: Exception, method: str, index: int) -> RiskLensError:
    """The per-item error for one item of a stream: a RiskLensError as it is; anything else (a bug)
    logged with its traceback and reported as INTERNAL for that item alone, so the stream goes on."""
    if isinstance(exc, RiskLensError):
        return exc
    log.exception("%s item %d failed unexpectedly", method, index)
    return RiskLensError(f"internal error in {method} item {index}; see server log")


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Map RiskLensError (and unexpected failures) to statuses for unary and server-streaming handlers."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
                _abort(context, exc, method.__name__)
        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
            _abort(context, exc, method.__name__)
    return unary_wrapper


def error_detail(error: RiskLensError) -> Any:
    """A per-item error for batch and stream results (the same code names as statuses)."""
    from risklens.v1 import risklens_pb2 as pb

    return pb.ErrorDetail(code=status_code(error).name, message=error.message, field=error.field or "")
