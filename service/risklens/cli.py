"""The ``risklens`` command line: serve models, explain claims over gRPC, manage models and the audit trail."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import grpc
import typer
from google.protobuf import json_format

from risklens.audit.cli import audit_app
from risklens.reports.cli import audit_run

app = typer.Typer(
    help="risklens: explanations for fraud and risk models (exact SHAP, reason codes, rationale) over gRPC.",
    no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Model directories: list what is there, register new models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
# The audit commands live with the audit package; batch audit runs with the reports package.
app.add_typer(audit_app, name="audit")
audit_app.command("run")(audit_run)


TRACEBACK_ENV = "RISKLENS_TRACEBACK"


def _setup_logging(verbose: bool) -> None:
    """risklens's own INFO lines (DEBUG with --verbose); other libraries' warnings only (interpret
    alone logs some 230 INFO lines registering one model)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("risklens").setLevel(logging.DEBUG if verbose else logging.INFO)


def _input_problem(error: BaseException) -> str | None:
    """A one-line description of an error caused by what the user passed (a file, a value), or None
    for anything else: a bug, which keeps its traceback."""
    import yaml
    from pydantic import ValidationError

    from risklens.errors import RiskLensError

    if isinstance(error, RiskLensError):
        return error.message + (f" ({error.field})" if error.field and error.field not in error.message else "")
    if isinstance(error, ValidationError):  # settings (RISKLENS_* or options) and manifests
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or error.title}: {e['msg']}" for e in error.errors())
    if isinstance(error, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({error.reason} at byte {error.start})"
    if isinstance(error, OSError):
        return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    if isinstance(error, (ValueError, yaml.YAMLError)):  # JSON, CSV, Parquet and YAML parse errors among them
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        # Less self-explanatory than the cases above: say how to see where it came from.
        return f"{type(error).__name__}: {first} (set {TRACEBACK_ENV}=1 to see where it was raised)"
    return None


def main() -> None:
    """The ``risklens`` command: bad input ends in one line on stderr and exit status 2, not a traceback."""
    try:
        app()
    except Exception as error:  # noqa: BLE001 - input problems become one line; anything else is re-raised
        problem = _input_problem(error)
        if problem is None or os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            raise
        typer.echo(f"error: {problem}", err=True)
        sys.exit(2)


ModelsOption = Annotated[Optional[Path], typer.Option(
    help="Directory holding one sub-directory per model (default RISKLENS_MODELS_DIR or ./models).")]


def settings(**options: object):  # noqa: ANN201 - risklens.settings.Settings (imported late: fast --help)
    """The settings: ``RISKLENS_*`` environment variables, overridden by the options given (not None)."""
    from risklens.settings import Settings

    return Settings(**{name: value for name, value in options.items() if value is not None})


@app.command()
def serve(
    models: ModelsOption = None,
    port: Annotated[Optional[int], typer.Option(
        help="Port to listen on, 0 picks a free one (default RISKLENS_PORT or 50051).")] = None,
    host: Annotated[Optional[str], typer.Option(
        help="Address to bind (default RISKLENS_HOST or 127.0.0.1, loopback).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Server state (audit DB); default RISKLENS_DATA_DIR or ./var.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Serve every model in the models directory over gRPC until interrupted (SIGINT/SIGTERM stop it gracefully).

    Every other setting comes from RISKLENS_* environment variables (see README.md).
    """
    from risklens.server import serve as run_server

    _setup_logging(verbose)
    run_server(settings(models_dir=models, port=port, host=host, data_dir=data_dir))


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
    seed: Annotated[Optional[int], typer.Option(min=0, max=2**64 - 1,
                                                help="Seed for randomised methods (default: from the receipt).")] = None,
    top_k: Annotated[int, typer.Option(min=0, max=20, help="Reasons to show each way (0: server default).")] = 0,
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
def models_list(models: ModelsOption = None) -> None:
    """List the models in a models directory (each is loaded and its sha256 checked)."""
    from risklens.registry import ModelRegistry

    for m in ModelRegistry.from_directory(settings(models_dir=models).models_dir).models():
        man = m.manifest
        typer.echo(f"{man.name:<20} {man.version:<10} {man.framework:<9} {m.kind:<8} "
                   f"{len(man.features):>3} features  sha256 {man.sha256[:16]}  {man.description}")



@models_app.command("add")
def models_add(
    model_file: Annotated[Path, typer.Argument(help="Trained model: XGBoost .json/.ubj, LightGBM .txt, or a "
                                               ".joblib scikit-learn estimator/Pipeline or interpret EBM "
                                               "(joblib files are unpickled: only use files you trust).")],
    data: Annotated[Path, typer.Option(help="Sample of raw claims (.csv or .parquet): background sample, "
                                            "schema, PDP grids and the EBM surrogate come from it.")],
    name: Annotated[str, typer.Option(help="Model name (also the directory name under --models).")],
    version: Annotated[str, typer.Option(help="Model version, e.g. 1.0.0.")] = "1.0.0",
    label: Annotated[Optional[str], typer.Option(help="0/1 target column in --data / --holdout (dropped from "
                                                      "the features).")] = None,
    holdout: Annotated[Optional[Path], typer.Option(help="Labelled hold-out claims the model was not trained "
                                                         "on (permutation importance, surrogate fidelity).")] = None,
    holdout_fraction: Annotated[float, typer.Option(help="Without --holdout: share of --data rows (with "
                                                         "--label) held out instead.")] = 0.25,
    schema: Annotated[Optional[Path], typer.Option(help="YAML list of feature specs; default: inferred from "
                                                        "the data (review it in manifest.yaml).")] = None,
    categorical_encoding: Annotated[str, typer.Option(help="How inferred categoricals reach non-pipeline "
                                                           "models: onehot or ordinal.")] = "onehot",
    framework: Annotated[str, typer.Option(help="How to read the model file: auto (by suffix), xgboost, lightgbm, "
                                                "sklearn or ebm.")] = "auto",
    threshold: Annotated[float, typer.Option(help="Referral threshold on the score.")] = 0.5,
    description: Annotated[str, typer.Option(help="One line shown in rationales and model lists.")] = "",
    reason_codes: Annotated[Optional[Path], typer.Option(help="Reason-code catalogue YAML; default: a stub "
                                                             "(every feature gets a generic code).")] = None,
    models: ModelsOption = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling, the surrogate and permutation importance.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model directory.")] = False,
) -> None:
    """Register a trained model: write models/NAME with manifest + sha256, schema, background sample,
    PDP grids, EBM surrogate (with its fidelity), permutation importance and a reason-code stub."""
    import yaml
    from tqdm import tqdm

    from risklens.errors import RiskLensError
    from risklens.rationale import load_catalogue
    from risklens.registry import FeatureSpec, infer_schema, load_model_dir
    from risklens.registry.registration import REGISTRATION_STEPS, read_model_file, read_table, register_model

    _setup_logging(False)
    for value, option in ((name, "--name"), (version, "--version")):
        # A plain, visible directory name: hidden ones are where models are built, and are not loaded.
        if not value or value.startswith(".") or Path(value).name != value:
            raise typer.BadParameter(f"{value!r} is not a plain name (no path, not hidden, not empty)",
                                     param_hint=option)
    if not 0.0 < holdout_fraction < 1.0:
        raise typer.BadParameter(f"must be strictly between 0 and 1, got {holdout_fraction}",
                                 param_hint="--holdout-fraction")
    if not 0.0 <= threshold <= 1.0:  # the score of a binary model is a probability
        raise typer.BadParameter(f"must be a probability between 0 and 1, got {threshold}", param_hint="--threshold")
    models_dir = settings(models_dir=models).models_dir
    directory = models_dir / name
    if directory.exists() and any(directory.iterdir()) and not force:
        typer.echo(f"{directory} already exists; pass --force to replace it", err=True)
        raise typer.Exit(2)
    # Written beside its final place and moved there whole: a failed registration leaves nothing
    # that `models list` or a server would load, and --force never mixes old and new artifacts.
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's owner-only mode would stay on the model directory
    try:
        frame = read_table(data)
        if frame.empty:
            raise typer.BadParameter(f"{data} has no rows", param_hint="--data")
        hold = None
        if label is not None:
            if label not in frame.columns:
                raise typer.BadParameter(f"--label {label!r} is not a column of {data}")
            if holdout is not None:
                hold_frame = read_table(holdout)
                if hold_frame.empty:
                    raise typer.BadParameter(f"{holdout} has no rows", param_hint="--holdout")
                hold = (hold_frame.drop(columns=[label]), hold_frame[label].astype(int))
            else:
                held = frame.sample(frac=holdout_fraction, random_state=seed)
                hold = (held.drop(columns=[label]), held[label].astype(int))
                frame = frame.drop(index=held.index)
            frame = frame.drop(columns=[label])
        if schema is not None:
            raw = yaml.safe_load(schema.read_text())
            features = [FeatureSpec.model_validate(f) for f in (raw.get("features", raw) if isinstance(raw, dict) else raw)]
        else:
            features = infer_schema(frame, categorical_encoding=categorical_encoding)
        catalogue = yaml.safe_load(reason_codes.read_text()) if reason_codes is not None else None
        estimator = read_model_file(model_file, framework)
        with tqdm(total=len(REGISTRATION_STEPS), unit="step", desc="registering", file=sys.stderr) as bar:
            started: list[str] = []

            def progress(step: str) -> None:
                if started:  # the previous step is done
                    bar.update(1)
                started.append(step)
                bar.set_description(step)

            manifest = register_model(staging, estimator, frame, name=name, version=version, holdout=hold,
                                      features=features, reason_codes=catalogue, threshold=threshold,
                                      description=description, seed=seed, progress=progress)
            bar.update(1)
        load_catalogue(load_model_dir(staging))  # it loads, catalogue included, before it is moved in place
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except RiskLensError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    typer.echo(f"registered {manifest.name} {manifest.version} ({manifest.framework}) in {directory}: "
               f"sha256 {manifest.sha256[:16]}, {len(manifest.features)} features, "
               f"artifacts {', '.join(sorted(manifest.artifacts)) or 'none'}")
    if schema is None:
        typer.echo(f"the schema was inferred from {data}: review the features in {directory / 'manifest.yaml'}")

if __name__ == "__main__":
    main()
