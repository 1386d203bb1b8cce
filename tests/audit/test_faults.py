"""Store faults with real threads, processes, files and filesystems: concurrency, corruption, disk full."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from risklens.audit import AuditEntry, AuditStore, open_store
from risklens.errors import AuditStorageFull, AuditUnavailable

EntryFactory = Callable[..., list[AuditEntry]]
THREADS = 16


def _write_concurrently(stores: list[AuditStore], make_entries: EntryFactory, calls: int) -> list[str]:
    """16 threads, each making ``calls`` record() calls of 1-3 entries; returns every acknowledged id."""
    acknowledged: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    batches = [[make_entries(1 + (t + c) % 3) for c in range(calls)] for t in range(THREADS)]
    start = threading.Barrier(THREADS)

    def writer(thread: int) -> None:
        store = stores[thread % len(stores)]
        start.wait()
        for batch in batches[thread]:
            try:
                store.record(batch)
            except BaseException as error:  # collected and re-raised in the test thread
                failures.append(error)
                return
            with lock:
                acknowledged.extend(entry.receipt_id for entry in batch)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]
    return acknowledged


def _assert_single_chain(store: AuditStore, acknowledged: list[str]) -> None:
    records = list(store.records())
    ids = [r.receipt_id for r in records]
    assert len(ids) == len(set(ids)) == len(acknowledged)
    assert set(ids) == set(acknowledged)
    assert [r.sequence for r in records] == list(range(1, len(records) + 1))
    report = store.verify()
    assert report.ok and report.records_checked == len(acknowledged), report.summary()


def test_sixteen_threads_through_one_store(store: AuditStore, make_entries: EntryFactory) -> None:
    acknowledged = _write_concurrently([store], make_entries, calls=15)
    _assert_single_chain(store, acknowledged)


def test_sixteen_threads_through_four_store_objects(store_url: str, make_entries: EntryFactory) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    try:
        acknowledged = _write_concurrently(stores, make_entries, calls=10)
        _assert_single_chain(stores[0], acknowledged)
    finally:
        for store in stores:
            store.close()


WRITER_SCRIPT = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime
    from google.protobuf import json_format
    from risklens.audit import AuditEntry, new_receipt_id, open_store
    from risklens.audit._canonical import to_value_map
    from risklens.v1 import risklens_pb2

    url, source, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    receipts = [json_format.Parse(line, risklens_pb2.Receipt()) for line in open(source)]
    store = open_store(url)
    for index in range(count):
        template = receipts[index % len(receipts)]
        explanation = risklens_pb2.ExplainResponse()
        explanation.CopyFrom(template.explanation)
        explanation.receipt_id = new_receipt_id()
        claim = {name: json_format.MessageToDict(value) for name, value in template.input.items()}
        store.record([AuditEntry(explanation.receipt_id, datetime.now(UTC), explanation.model,
                                 {n: v.get("number", v.get("text", v.get("flag"))) for n, v in claim.items()},
                                 explanation)])
        print(explanation.receipt_id, flush=True)
    store.close()
""")


def test_several_processes_share_one_chain(store: AuditStore, make_entries: EntryFactory, tmp_path: Path) -> None:
    seed = make_entries(5)
    store.record(seed)
    source = tmp_path / "templates.jsonl"
    source.write_text("".join(json_format.MessageToJson(store.get(e.receipt_id), indent=None) + "\n" for e in seed))
    processes = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, store.url, str(source), "40"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    acknowledged = [e.receipt_id for e in seed]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        acknowledged += out.split()
    assert len(acknowledged) == 5 + 3 * 40
    _assert_single_chain(store, acknowledged)


# ------------------------------------------------------------------------------------ corruption


def test_garbage_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(AuditUnavailable, match="corrupted or not an audit database"):
        open_store(f"sqlite:///{path}")


def test_a_store_that_fails_to_open_leaves_no_file_open(tmp_path: Path) -> None:
    import sqlite3

    garbage, foreign = tmp_path / "garbage.db", tmp_path / "foreign.db"
    garbage.write_bytes(os.urandom(64 * 1024))
    with sqlite3.connect(foreign) as connection:  # a trail of a schema this version does not know
        connection.execute("CREATE TABLE audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("INSERT INTO audit_meta VALUES ('schema_version', 'risklens.audit/99')")
    before = len(os.listdir("/proc/self/fd"))
    errors = []  # kept referenced: their tracebacks must not be what holds the connections
    for path in (garbage, foreign) * 3:
        with pytest.raises(AuditUnavailable) as info:
            open_store(f"sqlite:///{path}")
        errors.append(info.value)
    assert len(os.listdir("/proc/self/fd")) == before


def test_corrupted_pages_give_a_clear_error_or_a_failed_verify(tmp_path: Path, make_entries: EntryFactory) -> None:
    path = tmp_path / "audit.db"
    store = open_store(f"sqlite:///{path}")
    for _ in range(20):
        store.record(make_entries(10))
    store.close()
    size = path.stat().st_size
    assert size > 64 * 1024
    with open(path, "r+b") as handle:  # smash pages in the middle of the file, keep the header intact
        handle.seek(size // 2)
        handle.write(os.urandom(16 * 1024))
    outcome: str
    try:
        reopened = open_store(f"sqlite:///{path}")
        report = reopened.verify()
        outcome = "verify failed" if not report.ok else "verify ok"
        reopened.close()
    except AuditUnavailable as error:
        outcome = "unavailable"
        assert str(path) in str(error)
    assert outcome in ("unavailable", "verify failed")


def test_truncated_file_gives_a_clear_error(tmp_path: Path, make_entries: EntryFactory) -> None:
    path = tmp_path / "audit.db"
    store = open_store(f"sqlite:///{path}")
    store.record(make_entries(30))
    store.close()
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 3)
    with pytest.raises(AuditUnavailable, match="audit.db"):
        reopened = open_store(f"sqlite:///{path}")
        reopened.verify()


# ------------------------------------------------------------------------------------- disk full


def _fill_until_full(store: AuditStore, make_entries: EntryFactory) -> tuple[int, BaseException]:
    """Record batches until the store refuses; returns how many calls succeeded and the error."""
    for calls in range(10_000):
        try:
            store.record(make_entries(5))
        except (AuditStorageFull, AuditUnavailable) as error:
            return calls, error
    raise AssertionError("the store never filled up")


def test_size_limited_database_refuses_cleanly(tmp_path: Path, make_entries: EntryFactory) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}?max_page_count=64"
    store = open_store(url)
    calls, error = _fill_until_full(store, make_entries)
    assert isinstance(error, AuditStorageFull) and calls > 0
    head = store.head()
    assert head[0] == calls * 5  # the refused call left nothing behind
    with pytest.raises(AuditStorageFull):
        store.record(make_entries(5))
    assert store.head() == head and store.verify().ok
    store.close()
    bigger = open_store(f"sqlite:///{tmp_path / 'audit.db'}?max_page_count=100000")
    bigger.record(make_entries(5))  # room again: the chain continues where it stopped
    report = bigger.verify()
    assert report.ok and report.records_checked == head[0] + 5
    bigger.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); the max_page_count test covers "
                    f"disk full")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_filesystem_refuses_cleanly(small_tmpfs: Path, make_entries: EntryFactory) -> None:
    store = open_store(f"sqlite:///{small_tmpfs / 'audit.db'}")
    calls, error = _fill_until_full(store, make_entries)
    assert calls > 0
    assert isinstance(error, AuditStorageFull), error
    head = store.head()
    assert head[0] == calls * 5
    report = store.verify()
    assert report.ok and report.records_checked == head[0], report.summary()
    store.close()


def test_postgres_unreachable_is_unavailable(make_entries: EntryFactory) -> None:
    with pytest.raises(AuditUnavailable, match="unavailable"):
        open_store(f"postgresql://nobody@127.0.0.1:1/{uuid.uuid4().hex}")


def test_group_commit_gives_each_call_its_own_outcome(store: AuditStore, make_entries: EntryFactory) -> None:
    """Concurrent calls share commits; a call with a duplicate receipt fails alone, the others land."""
    from risklens.errors import DuplicateReceipt

    recorded = make_entries(1)
    store.record(recorded)
    calls = 6
    # Every third call of every thread repeats the recorded receipt id, so most shared groups hold one.
    batches = [[make_entries(2) + (recorded if c % 3 == 2 else []) for c in range(calls)] for _ in range(THREADS)]
    outcomes: dict[tuple[int, int], list[int] | BaseException] = {}
    start = threading.Barrier(THREADS)

    def writer(thread: int) -> None:
        start.wait()
        for call, batch in enumerate(batches[thread]):
            try:
                outcomes[thread, call] = store.record(batch)
            except BaseException as error:  # checked below, in the test thread
                outcomes[thread, call] = error

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    acknowledged = [recorded[0].receipt_id]
    for (thread, call), outcome in outcomes.items():
        batch = batches[thread][call]
        if call % 3 == 2:
            assert isinstance(outcome, DuplicateReceipt), outcome
            continue
        assert isinstance(outcome, list), outcome
        # The sequences returned are the ones this call's own records got.
        assert outcome == [store.get(entry.receipt_id).sequence for entry in batch]
        acknowledged += [entry.receipt_id for entry in batch]
    assert len(outcomes) == THREADS * calls
    _assert_single_chain(store, acknowledged)


@pytest.mark.parametrize("interrupted", ["while waiting", "when handed the lead"])
def test_an_interrupted_caller_leaves_the_group_commit_working(store: AuditStore, make_entries: EntryFactory,
                                                               monkeypatch: pytest.MonkeyPatch, interrupted: str) -> None:
    """KeyboardInterrupt in a caller queued behind another thread's commit: its call leaves the queue
    unrecorded (a lead it was handed passes on), the leader's records land, later calls still commit."""
    from risklens.audit import _store

    first, queued, later = make_entries(1), make_entries(1), make_entries(1)
    in_commit, release = threading.Event(), threading.Event()
    append = type(store)._append

    def held_append(self: AuditStore, prepared: list, calls: list) -> None:
        if prepared[0].receipt_id == first[0].receipt_id:
            in_commit.set()
            assert release.wait(30)
        append(self, prepared, calls)

    monkeypatch.setattr(type(store), "_append", held_append)
    leader_outcome: list[object] = []
    leader = threading.Thread(target=lambda: leader_outcome.append(store.record(first)))
    leader.start()
    assert in_commit.wait(30)
    wait = _store._PendingCall.wait

    def interrupted_wait(call: _store._PendingCall) -> None:
        if interrupted == "when handed the lead":
            release.set()  # the leader commits, then hands this call the lead and wakes it
            wait(call)
            assert call.led and not call.done
        raise KeyboardInterrupt

    monkeypatch.setattr(_store._PendingCall, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        store.record(queued)
    monkeypatch.setattr(_store._PendingCall, "wait", wait)
    release.set()
    leader.join(30)
    assert leader_outcome == [[1]]
    outcome: list[object] = []
    caller = threading.Thread(target=lambda: outcome.append(store.record(later)), daemon=True)
    caller.start()
    caller.join(30)
    assert outcome == [[2]], "a later record() never committed: the lead was stranded"
    assert [r.receipt_id for r in store.records()] == [first[0].receipt_id, later[0].receipt_id]
    assert store.verify().ok


def test_postgres_out_of_disk_refuses_cleanly(postgres_url: str, tmp_path: Path, make_entries: EntryFactory,
                                             reachable_by_others: Callable[[Path], None]) -> None:
    """PostgreSQL with the audit tables on a full filesystem: RESOURCE_EXHAUSTED, nothing half-written."""
    import psycopg

    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs tablespace needs root")
    owner = subprocess.run(["id", "-u", "postgres"], capture_output=True, text=True).stdout.strip()
    mount_point = tmp_path / "tablespace"
    mount_point.mkdir()
    reachable_by_others(mount_point)  # the postgres user must reach the mount point
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,uid={owner},mode=0700", "tmpfs",
                             str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    name = f"audit_full_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(postgres_url, autocommit=True)
    try:
        admin.execute(f"CREATE TABLESPACE {name} LOCATION '{mount_point}'")
        admin.execute(f'CREATE DATABASE "{name}"')
        admin.execute(f'ALTER DATABASE "{name}" SET default_tablespace = {name}')  # tables and indexes there
        store = open_store(postgres_url.rsplit("/", 1)[0] + f"/{name}")
        try:
            calls, error = _fill_until_full(store, make_entries)
            assert calls > 0
            assert isinstance(error, AuditStorageFull), error
            assert "out of space (53100)" in error.message
            head = store.head()
            assert head[0] == calls * 5  # the refused call left nothing behind
            report = store.verify()
            assert report.ok and report.records_checked == head[0], report.summary()
        finally:
            store.close()
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.execute(f"DROP TABLESPACE {name}")
    finally:
        admin.close()
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
