"""The ``risklens`` command line: serve models, explain claims over gRPC, manage models and the audit trail."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import grpc
import typer
from google.protobuf import json_format

app = typer.Typer(
    help="risklens: explanations for fraud and risk models (exact SHAP, reason codes, rationale) over gRPC.",
    no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Model directories: list what is there, register new models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

from risklens.audit.cli import audit_app  # noqa: E402 - the audit commands live with the audit package

app.add_typer(audit_app, name="audit")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@app.command()
def serve(
    models: Annotated[Path, typer.Option(help="Directory holding one sub-directory per model.")] = Path("models"),
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 50051,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    data_dir: Annotated[Optional[Path], typer.Option(help="Server state (audit DB); default RISKLENS_DATA_DIR or ./var.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Serve every model under MODELS over gRPC until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    from risklens.server import serve as run_server
    from risklens.settings import Settings

    _setup_logging(verbose)
    overrides = {"models_dir": models, "port": port, "host": host}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    run_server(Settings(**overrides))


def format_explanation(response) -> str:  # noqa: ANN001 - a risklens.v1.ExplainResponse
    """A reviewer-readable rendering of an ExplainResponse: score, decision, top reasons, rationale."""
    from risklens.wire import value_from_proto

    lines = [
        f"model     {response.model.name} v{response.model.version} (sha256 {response.model.sha256[:12]})",
        f"claim     {response.claim_id or '-'}   receipt {response.receipt_id}",
        f"score     {response.score:.3f}  (threshold {response.threshold:.2f})  decision: {response.decision.upper()}",
        "reasons:",
    ]
    for code in response.reason_codes:
        sign = "+" if code.direction == "raises" else "-"
        lines.append(f"  {sign} [{code.code}] {code.text}  ({code.weight:+.3f})")
    lines.append("top contributions (log-odds):" if response.output_space == 1 else "top contributions:")
    for c in response.contributions[:5]:
        lines.append(f"  {c.feature:<24} = {value_from_proto(c.value)!s:<14} {c.shap:+.4f}")
    lines.append(f"rationale: {response.rationale}")
    return "\n".join(lines)


@app.command()
def explain(
    model: Annotated[str, typer.Option(help="Model name as served.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="JSON file: one claim object (feature -> value).")],
    target: Annotated[str, typer.Option(help="Server address HOST:PORT.")] = "127.0.0.1:50051",
    methods: Annotated[str, typer.Option(help="Comma-separated: shap,lime,ice,ebm,permutation,agreement or all.")] = "shap",
    claim_id: Annotated[str, typer.Option(help="Your identifier for the claim (stored in the audit trail).")] = "",
    seed: Annotated[Optional[int], typer.Option(help="Seed for randomised methods (default: from the receipt).")] = None,
    top_k: Annotated[int, typer.Option(help="Reasons to show each way (0: server default).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the response as JSON with the proto field names.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server.")] = 30.0,
) -> None:
    """Explain one claim through a running server. On an error, prints the gRPC status and exits 1."""
    from risklens.v1 import risklens_pb2 as pb
    from risklens.v1 import risklens_pb2_grpc as pb_grpc
    from risklens.wire import value_to_proto

    claim = json.loads(input.read_text())
    if not isinstance(claim, dict):
        typer.echo(f"{input} must hold one JSON object (feature -> value)", err=True)
        raise typer.Exit(2)
    options = pb.ExplainOptions(top_k=top_k, **({"seed": seed} if seed is not None else {}))
    request = pb.ExplainRequest(model=model, claim_id=claim_id, options=options,
                                methods=[m.strip() for m in methods.split(",") if m.strip()],
                                features={k: value_to_proto(v) for k, v in claim.items()})
    with grpc.insecure_channel(target) as channel:
        try:
            response = pb_grpc.RiskLensStub(channel).Explain(request, timeout=timeout)
        except grpc.RpcError as err:
            typer.echo(f"{err.code().name}: {err.details()}", err=True)
            raise typer.Exit(1) from None
    if as_json:
        typer.echo(json_format.MessageToJson(response, preserving_proto_field_name=True))
    else:
        typer.echo(format_explanation(response))


@models_app.command("list")
def models_list(
    models: Annotated[Path, typer.Option(help="Directory holding one sub-directory per model.")] = Path("models"),
) -> None:
    """List the models in a models directory (each is loaded and its sha256 checked)."""
    from risklens.registry import ModelRegistry

    for m in ModelRegistry.from_directory(models).models():
        man = m.manifest
        typer.echo(f"{man.name:<20} {man.version:<10} {man.framework:<9} {m.kind:<8} "
                   f"{len(man.features):>3} features  sha256 {man.sha256[:16]}  {man.description}")


if __name__ == "__main__":
    app()
