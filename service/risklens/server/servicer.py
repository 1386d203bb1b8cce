"""The gRPC servicer: translate messages, call the core, translate back. No logic of its own."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from risklens.core import ClaimInput, ExplainService
from risklens.errors import AuditUnavailable, RiskLensError
from risklens.server.errors import error_detail, grpc_errors, item_error
from risklens.v1 import risklens_pb2 as pb
from risklens.v1 import risklens_pb2_grpc as pb_grpc
from risklens.wire import features_from_proto, model_info, options_from_proto


class RiskLensServicer(pb_grpc.RiskLensServicer):
    def __init__(self, service: ExplainService) -> None:
        self.service = service

    @grpc_errors
    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        explanation = self.service.explain(
            request.model, features_from_proto(request.features), claim_id=request.claim_id,
            version=request.version, options=options_from_proto(list(request.methods), request.options))
        return explanation.response

    @grpc_errors
    def ExplainBatch(self, request: pb.ExplainBatchRequest, context: grpc.ServicerContext) -> pb.ExplainBatchResponse:
        claims = [ClaimInput(features_from_proto(c.features), c.claim_id) for c in request.claims]
        outcomes = self.service.explain_batch(
            request.model, claims, version=request.version,
            options=options_from_proto(list(request.methods), request.options))
        return pb.ExplainBatchResponse(items=[
            _batch_item(i, claim.claim_id, outcome) for i, (claim, outcome) in enumerate(zip(claims, outcomes))])

    @grpc_errors
    def ExplainStream(self, request_iterator: Iterator[pb.ExplainRequest],
                      context: grpc.ServicerContext) -> Iterator[pb.BatchItem]:
        # Errors are per item: a bad claim (or unknown model, or a failure of ours) never ends the stream.
        for index, request in enumerate(request_iterator):
            try:
                outcome = self.service.explain(
                    request.model, features_from_proto(request.features), claim_id=request.claim_id,
                    version=request.version, options=options_from_proto(list(request.methods), request.options))
            except Exception as exc:  # noqa: BLE001 - reported for this item, never swallowed
                outcome = item_error(exc, "ExplainStream", index)
            yield _batch_item(index, request.claim_id, outcome)

    @grpc_errors
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[
            model_info(m, self.service.supported_methods(m)) for m in self.service.registry.models()])

    @grpc_errors
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        model = self.service.registry.get(request.name, request.version)
        return model_info(model, self.service.supported_methods(model))

    @grpc_errors
    def GetReceipt(self, request: pb.GetReceiptRequest, context: grpc.ServicerContext) -> pb.Receipt:
        return self._audit_store().get(request.receipt_id)

    @grpc_errors
    def ExportAudit(self, request: pb.ExportAuditRequest, context: grpc.ServicerContext) -> Iterator[pb.ExportItem]:
        from risklens.audit import export_items

        yield from export_items(self._audit_store(), request.from_time, request.to_time, request.model)

    def _audit_store(self):  # noqa: ANN202 - a risklens.audit.AuditStore
        if self.service.audit is None:
            raise AuditUnavailable("this server runs with the audit trail disabled (RISKLENS_AUDIT_ENABLED=false)")
        return self.service.audit


def _batch_item(index: int, claim_id: str, outcome: object) -> pb.BatchItem:
    if isinstance(outcome, RiskLensError):
        return pb.BatchItem(index=index, claim_id=claim_id, error=error_detail(outcome))
    return pb.BatchItem(index=index, claim_id=claim_id, result=outcome.response)  # type: ignore[attr-defined]
