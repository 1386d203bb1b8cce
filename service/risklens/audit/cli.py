"""``risklens audit ...``: verify, show, replay, export, purge and checkpoint the audit trail."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from google.protobuf import json_format

from risklens.errors import InvalidRequest, RiskLensError

audit_app = typer.Typer(help="The audit trail: verify it, show and replay receipts, export, purge, checkpoint.",
                        no_args_is_help=True)

UrlOption = Annotated[Optional[str], typer.Option(
    "--url", help="Audit store URL (default RISKLENS_AUDIT_URL, else sqlite under the data directory).")]
ReceiptIdArgument = Annotated[str, typer.Argument(help="The receipt id an Explain call returned (a UUIDv7).")]
DataDirOption = Annotated[Optional[Path], typer.Option(help="Server data directory (default RISKLENS_DATA_DIR or ./var).")]


def _settings(data_dir: Path | None, url: str | None):  # noqa: ANN202 - risklens.settings.Settings
    from risklens.settings import Settings

    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if url:
        overrides["audit_url"] = url
    return Settings(**overrides)


def _open(data_dir: Path | None, url: str | None):  # noqa: ANN202 - risklens.audit.AuditStore
    """The existing trail (these commands never create one: a mistyped location is an error)."""
    from risklens.audit import open_store

    return open_store(_settings(data_dir, url).resolved_audit_url(), create=False)


def _fail(error: RiskLensError) -> None:
    typer.echo(f"error ({error.code}): {error.message}", err=True)
    raise typer.Exit(2)


def _time(text: str | None, option: str) -> datetime | None:
    from risklens.audit import parse_time

    return parse_time(text, option) if text else None


def _public_key(value: str | None) -> bytes | None:
    """A raw Ed25519 public key as hex, or a file holding that hex."""
    if not value:
        return None
    text = Path(value).read_text().strip() if os.path.isfile(value) else value.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise InvalidRequest("--public-key must be a raw Ed25519 public key: 64 hex digits (or a file holding them)",
                             field="--public-key")
    return key


@audit_app.command()
def verify(
    export_dir: Annotated[Optional[Path], typer.Argument(help="An export directory to verify offline; omit to "
                                                              "verify the store.")] = None,
    public_key: Annotated[Optional[str], typer.Option(help="Trusted checkpoint public key (hex or file).")] = None,
    url: UrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Re-hash every record and link, check the head and signed checkpoints; name the first bad record."""
    from risklens.audit import verify_export

    try:
        if export_dir is not None:
            report = verify_export(export_dir, _public_key(public_key))
        else:
            store = _open(data_dir, url)
            try:
                report = store.verify(_public_key(public_key))
            finally:
                store.close()
    except RiskLensError as error:
        _fail(error)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command()
def show(receipt_id: ReceiptIdArgument, url: UrlOption = None, data_dir: DataDirOption = None) -> None:
    """Print the stored record behind a receipt id as JSON."""
    try:
        store = _open(data_dir, url)
        try:
            receipt = store.get(receipt_id)
        finally:
            store.close()
    except RiskLensError as error:
        _fail(error)
    typer.echo(json_format.MessageToJson(receipt, preserving_proto_field_name=True, indent=2))


@audit_app.command()
def replay(
    receipt_id: ReceiptIdArgument,
    models: Annotated[Optional[Path], typer.Option(help="Models directory (default RISKLENS_MODELS_DIR).")] = None,
    input_file: Annotated[Optional[Path], typer.Option(
        "--input", help="The original claim as JSON, needed when fields were hashed or dropped.")] = None,
    url: UrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Recompute the explanation with the recorded model (by sha256) and settings; report any difference."""
    from risklens.audit._replay import replay as replay_receipt
    from risklens.registry import ModelRegistry

    settings = _settings(data_dir, url)
    try:
        store = _open(data_dir, url)
        try:
            receipt = store.get(receipt_id)
        finally:
            store.close()
        raw_input = json.loads(input_file.read_text()) if input_file else None
        registry = ModelRegistry.from_directory(models or settings.models_dir)
        result = replay_receipt(receipt, registry, raw_input)
    except RiskLensError as error:
        _fail(error)
    typer.echo(result.summary())
    if not result.identical:
        raise typer.Exit(1)


@audit_app.command()
def export(
    out: Annotated[Path, typer.Option(help="Directory to write the export into.")],
    from_time: Annotated[Optional[str], typer.Option("--from", help="RFC 3339 start (inclusive); omit for no lower bound.")] = None,
    to_time: Annotated[Optional[str], typer.Option("--to", help="RFC 3339 end (inclusive; a date alone is its 00:00 UTC); omit for no upper bound.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Only this model's records.")] = None,
    export_format: Annotated[str, typer.Option("--format", help="jsonl, csv or parquet.")] = "jsonl",
    url: UrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write records + manifest.json + adverse_action_notices.csv; `risklens audit verify OUT` checks it offline."""
    from risklens.audit import write_export

    try:
        low, high = _time(from_time, "--from"), _time(to_time, "--to")
        if low and high and high < low:
            raise InvalidRequest(f"--to ({to_time}) is before --from ({from_time})", field="--to")
        store = _open(data_dir, url)
        try:
            manifest = write_export(store.export(low, high, model), out, export_format)
        finally:
            store.close()
    except RiskLensError as error:
        _fail(error)
    typer.echo(f"exported {manifest.count} records (sequence {manifest.first_sequence}..{manifest.last_sequence}, "
               f"{len(manifest.checkpoints)} checkpoints) to {out}")


@audit_app.command()
def purge(
    before: Annotated[Optional[str], typer.Option(help="Purge records created before this RFC 3339 time; "
                                                       "default: those past their model's retention.")] = None,
    model: Annotated[Optional[str], typer.Option(help="With --before: only this model's records.")] = None,
    url: UrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove record bodies (input, explanation) but keep their hashes: the chain still verifies."""
    if model and not before:
        _fail(InvalidRequest("--model needs --before: retention purges apply each model's own window to every "
                             "model", field="--model"))
    try:
        store = _open(data_dir, url)
        try:
            count = store.purge(_time(before, "--before"), model=model)
        finally:
            store.close()
    except RiskLensError as error:
        _fail(error)
    typer.echo(f"purged {count} record bodies")


@audit_app.command()
def checkpoint(
    key: Annotated[Optional[Path], typer.Option(help="Ed25519 PEM key (default RISKLENS_AUDIT_SIGNING_KEY, else a "
                                                     "development key in the data directory).")] = None,
    url: UrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Sign the current chain head with Ed25519 and store the checkpoint."""
    from risklens.audit import configured_signing_key, load_signing_key

    settings = _settings(data_dir, url)
    try:
        store = _open(data_dir, url)  # first: no development key is made beside a trail that is not there
        try:
            signing_key = (load_signing_key(key) if key is not None else
                           configured_signing_key(settings.audit_signing_key, settings.resolved_signing_key_path()))
            signed = store.checkpoint(signing_key)
        finally:
            store.close()
    except RiskLensError as error:
        _fail(error)
    typer.echo(f"checkpoint at sequence {signed.sequence}: head {signed.head_hash}\n"
               f"public key {signed.public_key}\nsignature {signed.signature}")
