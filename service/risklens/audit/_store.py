"""The durable audit store: one hash chain in SQLite (embedded) or PostgreSQL (shared by replicas).

Every ``record`` call is one transaction that reads the chain head under a write lock (SQLite
``BEGIN IMMEDIATE``; PostgreSQL ``SELECT ... FOR UPDATE`` on the head row), appends the records
and moves the head. Any number of threads, store objects or processes on one database therefore
extend a single chain, and a failed call leaves nothing behind.
"""

from __future__ import annotations

import abc
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from risklens.errors import (AuditStorageFull, AuditUnavailable, DuplicateReceipt, InvalidRequest,
                             ManifestError, ReceiptNotFound, RiskLensError)
from risklens.v1 import risklens_pb2

from ._body import model_json, write_bodies
from ._canonical import (OPEN_END, SCHEMA_VERSION, body_text, canonical_input, format_time, header_hash, sha256_hex,
                         to_value_map)
from ._policy import AuditEntry
from ._signing import SIGNING_KEY_ENV, load_signing_key, sign_checkpoint
from ._verify import ChainVerifier, VerifyReport

log = logging.getLogger(__name__)

_HEADER_COLUMNS = ("sequence, receipt_id, created_at, model_name, model_version, model_sha256, "
                   "model_framework, input_sha256, body_sha256, prev_hash, record_hash, purged")
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        sequence BIGINT NOT NULL,
        head_hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_records (
        sequence {sequence_key},
        receipt_id TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        model_framework TEXT NOT NULL,
        input_sha256 TEXT NOT NULL,
        body_sha256 TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        record_hash TEXT NOT NULL,
        purged INTEGER NOT NULL DEFAULT 0,
        retain_until TEXT,
        body {blob})""",
    """CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (created_at)""",
    """CREATE INDEX IF NOT EXISTS audit_records_retention ON audit_records (retain_until)""",
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        sequence BIGINT NOT NULL,
        head_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        signature TEXT NOT NULL,
        public_key TEXT NOT NULL)""",
]
_READ_CHUNK = 1000
_READABLE_SCHEMAS = ("risklens.audit/1",)  # older layouts this version reads, verifies and extends
# Records between background WAL checkpoints (SQLite's own default is every 1000 pages, about 250
# records at 3-4 pages each).
_WAL_CHECKPOINT_RECORDS = 250


def store_location(url: str) -> str:
    """A store URL's location without credentials or options, for messages, logs and run records."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    path = "/" + parts.path.lstrip("/") if parts.scheme == "sqlite" else parts.path  # as open_store reads it
    return f"{parts.scheme}://{host}{port}{path}"


class _Prepared:
    """One record ready to append: everything but its chain position and links."""

    __slots__ = ("receipt_id", "created_at", "model", "model_json", "input_sha256", "body_sha256", "body",
                 "retain_until")

    def __init__(self, receipt_id: str, created_at: str, model: risklens_pb2.ModelRef, input_sha256: str,
                 body: bytes, retain_until: str | None) -> None:
        self.receipt_id, self.created_at, self.model = receipt_id, created_at, model
        self.model_json = model_json(model.name, model.version, model.sha256, model.framework)
        self.input_sha256, self.body, self.retain_until = input_sha256, body, retain_until
        self.body_sha256 = sha256_hex(body)


def _prepare(entries: Sequence[AuditEntry]) -> list[_Prepared]:
    """Everything about each record that does not depend on its chain position (done outside the
    lock): its header fields, its canonical body (the bytes stored and hashed), the end of its retention.

    The core hands over its plain ``Explanation``s (written by ``write_bodies``, a run of them under
    one policy at a time: a batch chunk's bodies are written column by column); an
    ``ExplainResponse`` message (tools, tests) takes the generic path through the message writers.
    """
    written: list[tuple[bytes, str]] = []
    for (policy, is_message), run in groupby(entries, key=lambda e: (e.policy, isinstance(e.explanation, Message))):
        group = list(run)
        if is_message:
            written += map(_message_body, group)
        else:
            written += [(body, policy.input_digest(source)) for body, source in
                        write_bodies([e.explanation for e in group], [e.input for e in group], policy)]
    prepared = []
    for entry, (body, input_hash) in zip(entries, written):
        retain_until = entry.policy.retain_until(entry.created_at)
        prepared.append(_Prepared(entry.receipt_id, format_time(entry.created_at), entry.model, input_hash, body,
                                  retain_until and format_time(retain_until)))
    return prepared


def _message_body(entry: AuditEntry) -> tuple[bytes, str]:
    values = to_value_map(entry.input)
    stored_input, dropped = entry.policy.redact_input(values)
    body_message = risklens_pb2.Receipt(input=stored_input, dropped_fields=dropped)
    body_message.explanation.CopyFrom(entry.policy.redact_explanation(entry.explanation))
    return body_text(body_message).encode("utf-8"), entry.policy.input_digest(canonical_input(values))


class _PendingCall:
    """One record() call waiting for its group commit.

    Its caller sleeps on its own signal until the call is finished (committed or failed) or handed
    the lead; so a commit wakes only the callers it finished and the next leader, not every caller
    queued meanwhile.
    """

    __slots__ = ("prepared", "done", "led", "sequences", "error", "_signal")

    def __init__(self, prepared: list[_Prepared]) -> None:
        self.prepared = prepared
        self.done = False
        self.led = False  # leads, or was handed the lead (set under the store's queue lock)
        self.sequences: list[int] = []
        self.error: RiskLensError | None = None
        self._signal = threading.Lock()
        self._signal.acquire()

    def wait(self) -> None:
        self._signal.acquire()

    def finish(self, *, sequences: list[int] | None = None, error: RiskLensError | None = None) -> None:
        self.sequences = sequences or []
        self.error = error
        self.done = True
        self._signal.release()

    def lead(self) -> None:
        """Wake the caller to commit the queue (its own call is in it, not yet finished)."""
        self.led = True
        self._signal.release()


def _header_from_row(row: Sequence[Any]) -> risklens_pb2.Receipt:
    receipt = risklens_pb2.Receipt()
    (receipt.sequence, receipt.receipt_id, receipt.created_at, receipt.model.name, receipt.model.version,
     receipt.model.sha256, receipt.model.framework, receipt.input_sha256, receipt.body_sha256,
     receipt.prev_hash, receipt.record_hash) = row[:11]
    receipt.purged = bool(row[11])
    return receipt


def _is_legacy_body(body: bytes) -> bool:
    """A risklens.audit/1 body: protobuf bytes (never starting with "{", field 15 is unused)."""
    return not body.startswith(b"{")


def _parse_body(body: bytes) -> risklens_pb2.Receipt:
    if _is_legacy_body(body):
        return risklens_pb2.Receipt.FromString(body)
    return json_format.Parse(body, risklens_pb2.Receipt())


def _stored_body(value: Any) -> bytes | None:
    """A row's body as bytes (SQLite gives bytes, PostgreSQL a memoryview)."""
    return None if value is None else bytes(value)


def _receipt_from_row(row: Sequence[Any], where: str) -> risklens_pb2.Receipt:
    """The whole record: the stored body parsed (canonical JSON; protobuf for /1), the header columns set."""
    receipt = risklens_pb2.Receipt()
    body = _stored_body(row[12])
    if body:
        try:
            receipt = _parse_body(body)
        except (json_format.ParseError, DecodeError, ValueError) as error:
            raise AuditUnavailable(f"audit record {row[1]} in {where} has an unreadable body: "
                                   f"{type(error).__name__}") from error
    receipt.MergeFrom(_header_from_row(row))
    return receipt


def _link_only(receipt: risklens_pb2.Receipt) -> risklens_pb2.Receipt:
    """A record outside an export's filter: header and hashes only, so the chain still links."""
    link = risklens_pb2.Receipt()
    link.CopyFrom(receipt)
    for name in ("input", "dropped_fields", "explanation"):
        link.ClearField(name)
    return link


class AuditStore(abc.ABC):
    """Backend-neutral chain logic; subclasses supply connections, locking and error mapping."""

    _placeholder = "?"
    _body_column = "body"
    # Read under the write transaction; PostgreSQL adds FOR UPDATE so appends serialize on it.
    _head_query = "SELECT sequence, head_hash FROM audit_head WHERE id = 1"

    def __init__(self, url: str, *, signing_key: Ed25519PrivateKey | None = None,
                 checkpoint_every: int = 0) -> None:
        self.url = url
        self._signing_key = signing_key
        self._checkpoint_every = checkpoint_every
        self._write_lock = threading.Lock()
        self._closed = False
        # Group commit: calls waiting for the next commit, and whether a thread is committing now.
        self._queue: list[_PendingCall] = []
        self._queue_lock = threading.Lock()
        self._committing = False  # a caller is leading: committing the queue, or about to
        self._insert_records = self._sql(f"INSERT INTO audit_records ({_HEADER_COLUMNS}, retain_until, body) "
                                         f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._update_head = self._sql("UPDATE audit_head SET sequence = ?, head_hash = ? WHERE id = 1")

    # ------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    def _connect(self) -> Any: ...

    @abc.abstractmethod
    @contextmanager
    def _write_transaction(self) -> Iterator[Any]:
        """Yield a connection inside a transaction that holds the chain's write lock."""

    @abc.abstractmethod
    @contextmanager
    def _read_transaction(self) -> Iterator[Any]:
        """Yield a connection inside a read transaction with a stable snapshot."""

    @abc.abstractmethod
    def _executemany(self, connection: Any, sql: str, rows: list[tuple[Any, ...]]) -> None: ...

    @abc.abstractmethod
    def _after_purge(self) -> None: ...

    def _appended(self, records: int) -> None:
        """Called after each committed append of ``records`` records."""

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def _fetchone(self, connection: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return connection.execute(self._sql(sql), params).fetchone()

    def _fetchall(self, connection: Any, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return connection.execute(self._sql(sql), params).fetchall()

    def _create_schema(self, connection: Any, blob_type: str, sequence_key: str = "BIGINT PRIMARY KEY") -> None:
        for statement in _SCHEMA:
            connection.execute(statement.format(blob=blob_type, sequence_key=sequence_key))
        existing = self._fetchone(connection, "SELECT value FROM audit_meta WHERE key = 'schema_version'")
        if existing is None:
            connection.execute(self._sql("INSERT INTO audit_meta (key, value) VALUES ('schema_version', ?)"),
                               (SCHEMA_VERSION,))
            connection.execute("INSERT INTO audit_head (id, sequence, head_hash) VALUES (1, 0, '')")
        elif existing[0] in _READABLE_SCHEMAS:
            # Same tables; /1 bodies are protobuf bytes, /2 bodies canonical JSON. Both stay readable
            # and verifiable, so an upgrade never strands an old trail; new records are /2.
            connection.execute(self._sql("UPDATE audit_meta SET value = ? WHERE key = 'schema_version'"),
                               (SCHEMA_VERSION,))
            log.info("audit store %s upgraded from %s to %s", self._where(), existing[0], SCHEMA_VERSION)
        elif existing[0] != SCHEMA_VERSION:
            raise AuditUnavailable(f"audit store {self._where()} has schema {existing[0]}, this risklens "
                                   f"writes {SCHEMA_VERSION}")

    def _where(self) -> str:
        return store_location(self.url)

    # ------------------------------------------------------------ writing

    def record(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Append the entries to the chain, all or none of them; durable when this returns.

        Returns their sequence numbers. Raises AuditUnavailable / AuditStorageFull (nothing
        written) or DuplicateReceipt.

        Group commit: calls that arrive while another thread's commit is in flight queue up; when
        it is done, the first of them leads: it commits the whole queue in one transaction (one
        fsync). Every caller still returns only after its own records are committed. If a shared
        transaction fails, each call in it is retried in a transaction of its own, so an error
        reaches only the call that caused it and a failed call leaves nothing behind.
        """
        if not entries:
            return []
        call = _PendingCall(_prepare(entries))
        with self._queue_lock:
            self._queue.append(call)
            call.led, self._committing = not self._committing, True
        try:
            if not call.led:
                call.wait()  # until finished by a leader's commit, or handed the lead
            if not call.done:  # leading: this call is queued, unfinished
                self._lead()
        except BaseException:  # interrupted (KeyboardInterrupt while waiting): leave nobody stranded
            self._withdraw(call)
            raise
        if call.error is not None:
            raise call.error
        return call.sequences

    def _lead(self) -> None:
        """Commit the queue (the leader's own call with it), then hand the lead to the first call
        queued meanwhile, or give it up. Whatever stops the commit, every call taken from the queue
        is finished: no caller waits for a commit that never comes."""
        group: list[_PendingCall] = []
        try:
            with self._queue_lock:
                group, self._queue = self._queue, []
            self._commit_group(group)
        except BaseException as error:
            for call in group:
                if not call.done:
                    call.finish(error=AuditUnavailable(f"audit write to {self._where()} was interrupted: "
                                                       f"{type(error).__name__}"))
            raise
        finally:
            with self._queue_lock:
                self._pass_lead()

    def _pass_lead(self) -> None:
        """Under the queue lock: wake the first queued call to lead, or mark that nobody leads."""
        if self._queue:
            self._queue[0].lead()
        else:
            self._committing = False

    def _withdraw(self, call: _PendingCall) -> None:
        """A caller interrupted before its call was committed: the call leaves the queue unrecorded
        (if a leader has taken it, it is committed or failed as usual), and a lead it was handed
        but never took passes on."""
        with self._queue_lock:
            if any(queued is call for queued in self._queue):
                self._queue = [queued for queued in self._queue if queued is not call]
                if call.led:
                    self._pass_lead()

    def _commit_group(self, group: list[_PendingCall]) -> None:
        """Commit the queued calls together; on failure, each alone (errors go to their own call)."""
        try:
            self._append([item for call in group for item in call.prepared], group)
            return
        except RiskLensError as error:
            if len(group) == 1:
                group[0].finish(error=error)
                return
        for call in group:
            try:
                self._append(call.prepared, [call])
            except RiskLensError as error:
                call.finish(error=error)

    def _append(self, prepared: list[_Prepared], calls: list[_PendingCall]) -> None:
        """One transaction: read the head under the write lock, append, move the head."""
        sequences: list[int] = []
        with self._write_transaction() as connection:
            sequence, head = self._fetchone(connection, self._head_query)
            first_sequence = sequence
            rows = []
            for record in prepared:
                sequence += 1
                prev_hash = head
                head = header_hash(receipt_id=record.receipt_id, sequence=sequence, created_at=record.created_at,
                                   model_json=record.model_json, input_sha256=record.input_sha256,
                                   prev_hash=prev_hash, body_sha256=record.body_sha256)
                sequences.append(sequence)
                model = record.model
                rows.append((sequence, record.receipt_id, record.created_at, model.name, model.version, model.sha256,
                             model.framework, record.input_sha256, record.body_sha256, prev_hash, head, 0,
                             record.retain_until, record.body))
            self._executemany(connection, self._insert_records, rows)
            connection.execute(self._update_head, (sequence, head))
            every = self._checkpoint_every
            if self._signing_key is not None and every and sequence // every > first_sequence // every:
                self._insert_checkpoint(connection, sign_checkpoint(self._signing_key, sequence, head))
        for call in calls:  # committed: their callers may return, whatever happens next
            call.finish(sequences=sequences[:len(call.prepared)])
            sequences = sequences[len(call.prepared):]
        self._appended(len(rows))

    def _insert_checkpoint(self, connection: Any, checkpoint: risklens_pb2.Checkpoint) -> None:
        connection.execute(self._sql("INSERT INTO audit_checkpoints (sequence, head_hash, created_at, signature, "
                                     "public_key) VALUES (?, ?, ?, ?, ?)"),
                           (checkpoint.sequence, checkpoint.head_hash, checkpoint.created_at,
                            checkpoint.signature, checkpoint.public_key))

    def checkpoint(self, signing_key: Ed25519PrivateKey | None = None) -> risklens_pb2.Checkpoint:
        """Sign the current chain head with Ed25519 and keep the signature in the store."""
        key = signing_key or self._signing_key
        if key is None:
            raise ManifestError(f"no audit signing key: pass one or set {SIGNING_KEY_ENV}", field=SIGNING_KEY_ENV)
        with self._write_transaction() as connection:
            sequence, head = self._fetchone(connection, self._head_query)
            if sequence == 0:
                raise InvalidRequest("the audit trail is empty: nothing to checkpoint")
            checkpoint = sign_checkpoint(key, sequence, head)
            self._insert_checkpoint(connection, checkpoint)
        return checkpoint

    def purge(self, before: datetime | None = None, *, model: str | None = None,
              now: datetime | None = None) -> int:
        """Remove record bodies (input and explanation), keeping every hash so the chain verifies.

        With ``before``: records created before it (of ``model`` only, if given). Without: records
        whose policy's retention window has passed at ``now`` (default: the current time).
        Returns how many records were purged.
        """
        if before is not None:
            where, params = "created_at < ?", [format_time(before)]
            if model:
                where, params = where + " AND model_name = ?", [*params, model]
        else:
            where, params = "retain_until IS NOT NULL AND retain_until <= ?", [format_time(now or datetime.now(UTC))]
        with self._write_transaction() as connection:
            cursor = connection.execute(
                self._sql(f"UPDATE audit_records SET body = NULL, purged = 1 WHERE purged = 0 AND {where}"),
                tuple(params))
            purged = cursor.rowcount
        if purged:
            self._after_purge()
        log.info("purged %d audit record bodies in %s", purged, self._where())
        return purged

    # ------------------------------------------------------------ reading

    def get(self, receipt_id: str) -> risklens_pb2.Receipt:
        with self._read_transaction() as connection:
            row = self._fetchone(connection, f"SELECT {_HEADER_COLUMNS}, {self._body_column} FROM audit_records "
                                             f"WHERE receipt_id = ?", (receipt_id,))
        if row is None:
            raise ReceiptNotFound(f"no audit record with receipt id {receipt_id!r}", field="receipt_id")
        return _receipt_from_row(row, self._where())

    def head(self) -> tuple[int, str]:
        """(sequence, hash) of the newest record; (0, "") for an empty chain."""
        with self._read_transaction() as connection:
            sequence, head_hash = self._fetchone(connection, "SELECT sequence, head_hash FROM audit_head WHERE id = 1")
        return int(sequence), head_hash

    def _iter_rows(self, connection: Any, first: int, last: int) -> Iterator[Sequence[Any]]:
        after = first - 1
        while after < last:
            rows = self._fetchall(connection, f"SELECT {_HEADER_COLUMNS}, {self._body_column} FROM audit_records "
                                              f"WHERE sequence > ? AND sequence <= ? ORDER BY sequence LIMIT ?",
                                  (after, last, _READ_CHUNK))
            if not rows:
                return
            yield from rows
            after = int(rows[-1][0])

    def _iter_range(self, connection: Any, first: int, last: int) -> Iterator[risklens_pb2.Receipt]:
        where = self._where()
        for row in self._iter_rows(connection, first, last):
            yield _receipt_from_row(row, where)

    def _checkpoints(self, connection: Any, first: int, last: int) -> list[risklens_pb2.Checkpoint]:
        rows = self._fetchall(connection, "SELECT sequence, head_hash, created_at, signature, public_key "
                                          "FROM audit_checkpoints WHERE sequence >= ? AND sequence <= ? "
                                          "ORDER BY sequence, created_at", (first, last))
        return [risklens_pb2.Checkpoint(sequence=int(row[0]), head_hash=row[1], created_at=row[2],
                                        signature=row[3], public_key=row[4]) for row in rows]

    def records(self) -> Iterator[risklens_pb2.Receipt]:
        """Every record in chain order (one consistent snapshot)."""
        with self._read_transaction() as connection:
            last = int(self._fetchone(connection, "SELECT sequence FROM audit_head WHERE id = 1")[0])
            yield from self._iter_range(connection, 1, last)

    def verify(self, trusted_public_key: bytes | None = None) -> VerifyReport:
        """Re-hash every record and link; check the head row and every signed checkpoint.

        The report names the first bad record (edited, deleted, reordered or inserted).
        """
        with self._read_transaction() as connection:
            sequence, head_hash = self._fetchone(connection, "SELECT sequence, head_hash FROM audit_head WHERE id = 1")
            max_sequence = int(self._fetchone(connection, "SELECT COALESCE(MAX(sequence), 0) FROM audit_records")[0])
            last = max(int(sequence), max_sequence)
            verifier = ChainVerifier(checkpoints=self._checkpoints(connection, 1, 2**62),
                                     trusted_public_key=trusted_public_key)
            for row in self._iter_rows(connection, 1, last):
                body = _stored_body(row[12])
                if not verifier.feed(*self._verifiable(row, body)):
                    break
        return verifier.finish(int(sequence), head_hash, "the store's head row")

    def _verifiable(self, row: Sequence[Any], body: bytes | None) -> tuple[risklens_pb2.Receipt, bytes | None]:
        """What the verifier checks a row by: its header and stored body bytes, which are exactly
        what was hashed; or, for a risklens.audit/1 body (protobuf), the parsed record, whose
        canonical form the verifier re-writes. A body that does not parse is checked as bytes
        (and fails: it cannot be the canonical form)."""
        if body is not None and _is_legacy_body(body):
            try:
                return _receipt_from_row(row, self._where()), None
            except AuditUnavailable:
                pass
        return _header_from_row(row), body

    def export(self, from_time: datetime | None = None, to_time: datetime | None = None,
               model: str | None = None) -> Iterator[risklens_pb2.Receipt | risklens_pb2.ExportManifest]:
        """Records created in [from_time, to_time] (of ``model``, if given), then one manifest.

        To keep the exported chain verifiable offline, records inside the span of the selection
        that do not match it come as links only (header and hashes, no input or explanation).
        """
        if from_time and to_time and to_time < from_time:
            raise InvalidRequest(f"to_time ({format_time(to_time)}) is before from_time ({format_time(from_time)})",
                                 field="to_time")
        low = format_time(from_time) if from_time else ""
        # An open end is "" in the manifest, as an open start is; the query bounds it by a year no
        # timestamp reaches (RFC 3339 text compares in time order).
        high = format_time(to_time) if to_time else OPEN_END
        where, params = "created_at >= ? AND created_at <= ?", [low, high]
        if model:
            where, params = where + " AND model_name = ?", [*params, model]
        manifest = risklens_pb2.ExportManifest(schema_version=SCHEMA_VERSION, from_time=low,
                                               to_time=format_time(to_time) if to_time else "")
        with self._read_transaction() as connection:
            first, last = self._fetchone(connection, f"SELECT MIN(sequence), MAX(sequence) FROM audit_records "
                                                     f"WHERE {where}", tuple(params))
            models: dict[tuple[str, str, str], risklens_pb2.ModelRef] = {}
            if first is not None:
                first, last = int(first), int(last)
                manifest.first_sequence, manifest.last_sequence = first, last
                for receipt in self._iter_range(connection, first, last):
                    selected = (low <= receipt.created_at <= high and (not model or receipt.model.name == model)
                                and not receipt.purged)
                    if receipt.sequence == first:
                        manifest.prev_hash = receipt.prev_hash
                    manifest.chain_head = receipt.record_hash
                    if selected:
                        manifest.count += 1
                        models.setdefault((receipt.model.name, receipt.model.version, receipt.model.sha256),
                                          receipt.model)
                        yield receipt
                    else:
                        yield receipt if receipt.purged else _link_only(receipt)
                manifest.checkpoints.extend(self._checkpoints(connection, first, last))
            manifest.models.extend(models[key] for key in sorted(models))
        yield manifest

    def close(self) -> None:
        self._closed = True


class SqliteAuditStore(AuditStore):
    """Embedded store: WAL journal, ``synchronous=FULL`` (the commit is fsynced before returning)."""

    # Bodies are written as blobs; an edit made with SQL's text functions leaves text, which the
    # driver would decode (and fail on, if it is not UTF-8): read as the bytes it is, and verified.
    _body_column = "CAST(body AS BLOB)"

    def __init__(self, url: str, path: Path, *, max_page_count: int | None = None, page_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = path
        self._max_page_count = max_page_count
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise AuditUnavailable(f"cannot create the audit directory {path.parent}: {error}") from error
        self._writer = self._connect(page_size)
        try:
            with self._write_transaction() as connection:
                # INTEGER PRIMARY KEY makes the sequence SQLite's rowid: one b-tree fewer to write per record.
                self._create_schema(connection, "BLOB", "INTEGER PRIMARY KEY")
        except BaseException:
            self._writer.close()  # a store that fails to open leaves no file handle behind
            raise
        # WAL checkpoints (copying the log into the database file, with an fsync of that file)
        # run on a background thread, not inside whichever request's commit crosses SQLite's
        # 1000-page mark: a commit stays one append and one fsync of the log.
        self._writer.execute("PRAGMA wal_autocheckpoint = 0")
        self._unchecked_records = 0
        self._checkpoint_due = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_wal, name=f"audit-wal-{path.name}",
                                              daemon=True)
        self._checkpointer.start()

    def _appended(self, records: int) -> None:
        self._unchecked_records += records
        if self._unchecked_records >= _WAL_CHECKPOINT_RECORDS:
            self._unchecked_records = 0
            self._checkpoint_due.set()

    def _checkpoint_wal(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                self._checkpoint_due.wait()
                self._checkpoint_due.clear()
                if self._closed:
                    return
                try:
                    connection = connection or self._connect()
                    # PASSIVE: copies what it can without waiting for, or blocking, writers and readers.
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    # Then the few frames appended meanwhile, with this process's writers held
                    # back (~1 ms): only a fully copied log is restarted from its start by the next
                    # commit. Under steady load the first pass alone never catches up, and the log
                    # grew by ~4 frames a record (32 MB after 4,000 records), every commit
                    # extending the file; rewriting a log in place makes the commit's fdatasync
                    # cheaper too (no file-size change to journal).
                    with self._write_lock:
                        if self._closed:
                            return
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except (sqlite3.Error, RiskLensError) as error:
                    log.warning("background WAL checkpoint of %s failed: %s", self.path, error)
        finally:
            if connection is not None:
                connection.close()

    def _connect(self, page_size: int | None = None) -> sqlite3.Connection:
        """A connection in WAL mode; ``page_size``: the page size of a database created by it (an
        existing database keeps its own)."""
        connection: sqlite3.Connection | None = None
        try:
            connection = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            if page_size:  # takes effect only before the first write (WAL mode included) of a new file
                connection.execute(f"PRAGMA page_size = {int(page_size)}")
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                connection.close()
                raise AuditUnavailable(f"audit database {self.path} cannot use WAL journaling (got {mode})")
            connection.execute("PRAGMA synchronous = FULL")
            # Purged bodies are overwritten on disk, not just unlinked from the b-tree.
            connection.execute("PRAGMA secure_delete = ON")
            if self._max_page_count:
                connection.execute(f"PRAGMA max_page_count = {int(self._max_page_count)}")
        except sqlite3.Error as error:
            if connection is not None:
                connection.close()
            raise self._map_error(error) from error
        return connection

    def _map_error(self, error: sqlite3.Error) -> RiskLensError:
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if isinstance(error, sqlite3.IntegrityError):
            return DuplicateReceipt(f"receipt id already recorded in {self.path}: {error}", field="receipt_id")
        if code == sqlite3.SQLITE_FULL:
            return AuditStorageFull(f"audit database {self.path} is full (disk or size limit); nothing was recorded")
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return AuditUnavailable(f"audit database {self.path} is corrupted or not an audit database "
                                    f"({error}); restore it from a backup or export")
        return AuditUnavailable(f"audit database {self.path} is unavailable: {error}")

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            if self._closed:
                raise AuditUnavailable(f"audit store {self.path} is closed")
            connection = self._writer
            try:
                # IMMEDIATE takes the database write lock now, so the head read below is the head
                # this transaction extends, also against other processes.
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                self._rollback(connection)
                raise self._map_error(error) from error
            except BaseException:
                self._rollback(connection)
                raise

    @staticmethod
    def _rollback(connection: sqlite3.Connection) -> None:
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("audit rollback failed")

    @contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise AuditUnavailable(f"audit store {self.path} is closed")
        connection = self._connect()
        try:
            connection.execute("BEGIN")
            yield connection
        except sqlite3.Error as error:
            raise self._map_error(error) from error
        finally:
            connection.close()

    def _executemany(self, connection: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        connection.executemany(sql, rows)

    def _after_purge(self) -> None:
        # Move the overwritten pages out of the WAL into the main file, so no copy of a purged
        # body lingers in the log.
        with self._write_lock:
            try:
                busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as error:
                raise self._map_error(error) from error
        if busy:
            log.warning("purge of %s: another connection was still reading, so the write-ahead log was not "
                        "truncated; copies of the purged bodies stay in %s-wal until a later checkpoint resets "
                        "it (run the purge again when the readers are done)", self.path, self.path.name)

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._checkpoint_due.set()
        # Joined without the write lock: a checkpoint in progress takes it to finish its pass.
        self._checkpointer.join()
        with self._write_lock:
            self._writer.close()


class PostgresAuditStore(AuditStore):
    """Shared store for several replicas; the head row is locked ``FOR UPDATE`` per append."""

    _placeholder = "%s"
    _head_query = "SELECT sequence, head_hash FROM audit_head WHERE id = 1 FOR UPDATE"

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        import psycopg  # imported here: SQLite-only deployments never load the driver

        self._psycopg = psycopg
        self._writer: Any = None
        with self._write_transaction() as connection:
            # Two replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
            connection.execute("SELECT pg_advisory_xact_lock(7245190411)")
            self._create_schema(connection, "BYTEA")

    def _connect(self, *, autocommit: bool = True) -> Any:
        try:
            connection = self._psycopg.connect(self.url, autocommit=autocommit, connect_timeout=10)
            if not autocommit:
                connection.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
            return connection
        except self._psycopg.Error as error:
            raise self._map_error(error) from error

    def _map_error(self, error: Exception) -> RiskLensError:
        errors = self._psycopg.errors
        sqlstate = getattr(error, "sqlstate", None) or ""
        if isinstance(error, errors.UniqueViolation):
            return DuplicateReceipt(f"receipt id already recorded in {self._where()}", field="receipt_id")
        if sqlstate.startswith("53") and sqlstate != "53200":  # class 53 minus out_of_memory
            return AuditStorageFull(f"audit database {self._where()} is out of space ({sqlstate}); nothing "
                                    f"was recorded")
        return AuditUnavailable(f"audit database {self._where()} is unavailable: "
                                f"{type(error).__name__}: {str(error).strip()}")

    @contextmanager
    def _write_transaction(self) -> Iterator[Any]:
        with self._write_lock:
            if self._closed:
                raise AuditUnavailable(f"audit store {self._where()} is closed")
            if self._writer is None or self._writer.closed or self._writer.broken:
                self._writer = self._connect()
            connection = self._writer
            try:
                with connection.transaction():
                    yield connection
            except self._psycopg.Error as error:
                raise self._map_error(error) from error

    @contextmanager
    def _read_transaction(self) -> Iterator[Any]:
        if self._closed:
            raise AuditUnavailable(f"audit store {self._where()} is closed")
        connection = self._connect(autocommit=False)
        try:
            yield connection
        except self._psycopg.Error as error:
            raise self._map_error(error) from error
        finally:
            connection.close()

    def _executemany(self, connection: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _after_purge(self) -> None:
        # PostgreSQL keeps dead row versions until VACUUM; documented in docs/audit.md.
        return None

    def close(self) -> None:
        with self._write_lock:
            if not self._closed:
                self._closed = True
                if self._writer is not None:
                    self._writer.close()


def open_store(url: str, *, signing_key: Ed25519PrivateKey | None = None,
               checkpoint_every: int = 0, page_size: int | None = None, create: bool = True) -> AuditStore:
    """Open (creating if needed) the audit store at ``url``.

    ``create=False`` (tools that read or maintain an existing trail): a SQLite file that does not
    exist is an error, so a mistyped path or data directory is not "verified" as an empty trail.

    ``sqlite:///abs/path/audit.db`` (optional ``?max_page_count=N`` caps the file size,
    ``?page_size=N`` sets the page size of a new file) or ``postgresql://user@host:port/db``.
    ``signing_key`` (default: the PEM file named by ``RISKLENS_AUDIT_SIGNING_KEY``, if set) signs
    ``checkpoint()`` and, with ``checkpoint_every``, an automatic checkpoint each time the chain
    crosses a multiple of that many records. ``page_size``: the SQLite page size if this call
    creates the file and the URL names none (SQLite's 4,096 bytes otherwise; see ``BATCH_PAGE_SIZE``);
    an existing file keeps its own, and PostgreSQL ignores it.
    """
    if signing_key is None and os.environ.get(SIGNING_KEY_ENV):
        signing_key = load_signing_key(os.environ[SIGNING_KEY_ENV])
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if not parts.path or parts.netloc:
            raise InvalidRequest(f"audit URL {url!r}: expected sqlite:///absolute/path/audit.db")
        query = parse_qs(parts.query)
        max_pages = int(query["max_page_count"][0]) if "max_page_count" in query else None
        if "page_size" in query:
            page_size = _page_size(query["page_size"][0], url)
        elif page_size is not None:
            page_size = _page_size(str(page_size), url)
        path = Path("/" + parts.path.lstrip("/"))  # sqlite:////abs/path (a slash too many) names the same file
        if not create and not path.is_file():
            raise AuditUnavailable(f"no audit database at {path}: check the data directory or audit URL")
        return SqliteAuditStore(url, path, max_page_count=max_pages, page_size=page_size,
                                signing_key=signing_key, checkpoint_every=checkpoint_every)
    if parts.scheme in ("postgresql", "postgres"):
        return PostgresAuditStore(url, signing_key=signing_key, checkpoint_every=checkpoint_every)
    raise InvalidRequest(f"audit URL {url!r}: scheme must be sqlite or postgresql")


# Page size for a SQLite trail created by a batch run. A record is ~5-6 KB (a fraud_oracle claim's
# body): with SQLite's default 4,096-byte pages each one spills into an overflow page, and inserting
# 2,000 records and copying them from the log into the database (the checkpoint) cost ~40 us of CPU
# a record; with 32 KB pages five fit a page and it costs ~20 us. A trail that takes one record a
# commit (the server's) keeps the default: a commit writes whole pages, and 32 KB pages made one
# 0.38 -> 0.50 ms (benchmarks/results/audit_run.md).
BATCH_PAGE_SIZE = 32_768


def _page_size(text: str, url: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 512 <= size <= 65_536 or size & (size - 1):
        raise InvalidRequest(f"audit URL {url!r}: page_size must be a power of two from 512 to 65536, got {text!r}",
                             field="page_size")
    return size
