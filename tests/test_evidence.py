"""Tests of the evidence package against a real filesystem region.

Tampering is simulated the way an attacker with write access to the bucket
but without the signing key would do it: by editing, deleting, copying or
replacing stored objects directly through the region.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from encryption.signing import public_key_id
from evidence import layout
from evidence import verify as checks
from evidence.record import (
    GENESIS_HASH,
    EvidenceError,
    build_record,
    parse_record,
    record_hash,
    serialise,
    sign_record,
)
from evidence.render import render_markdown, render_text
from evidence.store import EvidenceStore
from resguardo.errors import IntegrityError, KeyError_, NotFoundError, StorageError
from storage.filesystem import FilesystemDriver

PREFIX = "evidence"
BACKUP_ID = "20261204T201500Z-3f9a"
DUMP_SHA256 = "9f2c4b1e" * 8


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def region_root(tmp_path: Path) -> Path:
    root = tmp_path / "evidence-region"
    root.mkdir()
    return root


@pytest.fixture
def region(region_root: Path) -> FilesystemDriver:
    return FilesystemDriver("evidence-local", region_root, location="uio-dc1")


@pytest.fixture
def store(region: FilesystemDriver, signing_key: Ed25519PrivateKey) -> EvidenceStore:
    return EvidenceStore(region, PREFIX, signing_key, signing_key.public_key())


def restore_test_body(run: int = 0) -> dict:
    """A body shaped like the one a restore test writes."""
    return {
        "triggered_by": f"airflow:restore_test_core/scheduled__2026-12-04T0{run}:00:00",
        "regions": [
            {"region": "aws-gye", "location": "sa-east-1", "action": "read",
             "key": f"core/logical/{BACKUP_ID}/dump.enc", "size": 73400320, "sha256": DUMP_SHA256, "ok": True},
            {"region": "gcs-us", "location": "us-east1", "action": "checked",
             "key": f"core/logical/{BACKUP_ID}/dump.enc", "size": 73400320, "sha256": DUMP_SHA256, "ok": True},
        ],
        "steps": [
            {"name": "fetch_and_decrypt", "seconds": 41.5, "ok": True},
            {"name": "pg_restore", "seconds": 312.25, "ok": True},
            {"name": "great_expectations", "seconds": 27.0, "ok": False},
        ],
        "rto_seconds": 380.75 + run,
        "rto_target_seconds": 3600,
        "expectations": {
            "suite": "core.profile",
            "success": False,
            "evaluated": 48,
            "failed": [{
                "expectation": "expect_table_row_count_to_equal",
                "table": "public.cuentas",
                "column": None,
                "detail": "expected 120000, found 119998",
            }],
        },
        "host": {"hostname": "resguardo-runner-01", "os": "Debian GNU/Linux 12"},
        "tools": {"pg_restore": "pg_restore (PostgreSQL) 15.18", "resguardo": "0.1.0"},
    }


def append_runs(store: EvidenceStore, count: int) -> list[dict]:
    return [
        store.append("restore_test", "core", {"backup_id": BACKUP_ID, "backup_kind": "logical"},
                     "failed", restore_test_body(run))
        for run in range(count)
    ]


def record_key_of(record: dict) -> str:
    return layout.record_key(PREFIX, record["sequence"], record["record_id"])


def problems_at(report: checks.ChainReport, sequence: int) -> set[str]:
    return {problem.kind for problem in report.problems if problem.sequence == sequence}


# -- appending and reading ------------------------------------------------------------


def test_append_builds_linked_chain(store: EvidenceStore, signing_key: Ed25519PrivateKey):
    records = append_runs(store, 4)

    assert [record["sequence"] for record in records] == [0, 1, 2, 3]
    assert records[0]["previous_hash"] == GENESIS_HASH
    for previous, record in zip(records, records[1:]):
        assert record["previous_hash"] == record_hash(previous)
    assert all(record["format"] == "resguardo-evidence" for record in records)
    assert all(record["version"] == 1 for record in records)
    assert all(record["created_at"].endswith("Z") for record in records)
    assert records[0]["signature"]["kid"] == public_key_id(signing_key.public_key())

    report = store.verify_chain()
    assert report.ok, report.summary()
    assert report.warnings == []
    assert report.records == 4
    assert report.last_sequence == 3
    assert report.checkpoint_sequence == 3
    assert report.head_hash == record_hash(records[3])


def test_append_writes_documented_layout(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 2)

    keys = {info.key for info in region.list("evidence/")}
    assert keys == {
        record_key_of(records[0]),
        record_key_of(records[1]),
        "evidence/seq/000000000000",
        "evidence/seq/000000000001",
        "evidence/head.json",
    }
    # The marker contains the record's exact bytes, so an interrupted append can be completed.
    assert region.get_bytes("evidence/seq/000000000001") == region.get_bytes(record_key_of(records[1]))
    assert parse_record(region.get_bytes(record_key_of(records[1]))) == records[1]
    checkpoint = json.loads(region.get_bytes("evidence/head.json"))
    assert checkpoint["sequence"] == 1
    assert checkpoint["record_hash"] == record_hash(records[1])


def test_read_methods_return_stored_records(store: EvidenceStore):
    records = append_runs(store, 3)

    assert store.head() == records[2]
    assert store.list() == records
    assert store.get(1) == records[1]
    assert store.get("1") == records[1]
    assert store.get(records[2]["record_id"]) == records[2]
    assert store.get(records[2]["record_id"].upper()) == records[2]
    assert store.list(database="other") == []
    assert store.list(kind="restore_test") == records


def test_empty_chain_is_intact(store: EvidenceStore):
    report = store.verify_chain()

    assert report.ok
    assert report.records == 0
    assert report.last_sequence is None
    assert store.head() is None
    assert store.list() == []


def test_get_unknown_record_raises(store: EvidenceStore):
    append_runs(store, 1)

    with pytest.raises(NotFoundError):
        store.get(5)
    with pytest.raises(NotFoundError):
        store.get("3c8e3c3e-0000-4000-8000-000000000000")
    with pytest.raises(NotFoundError):
        store.get("not-an-id")


def test_append_rejects_invalid_values(store: EvidenceStore, region: FilesystemDriver):
    cases = [
        ("restore test", "core", {}, "passed", {}),
        ("restore_test", "", {}, "passed", {}),
        ("restore_test", "core", {}, "ok", {}),
        ("restore_test", "core", [], "passed", {}),
        ("restore_test", "core", {}, "passed", {"rto_seconds": float("nan")}),
        ("restore_test", "core", {}, "passed", {"started": object()}),
    ]
    for kind, database, subject, outcome, body in cases:
        with pytest.raises(EvidenceError):
            store.append(kind, database, subject, outcome, body)
    assert list(region.list("")) == []


def test_append_requires_matching_signing_key(region: FilesystemDriver, signing_key: Ed25519PrivateKey):
    other_key = Ed25519PrivateKey.generate()

    with pytest.raises(KeyError_):
        EvidenceStore(region, PREFIX, other_key, signing_key.public_key())
    read_only = EvidenceStore(region, PREFIX, None, signing_key.public_key())
    with pytest.raises(KeyError_):
        read_only.append("restore_test", "core", {}, "passed", {})


def test_concurrent_appends_produce_clean_chain(region_root: Path, signing_key: Ed25519PrivateKey):
    threads_count, appends_each = 4, 5
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def writer(number: int) -> None:
        # A driver and a store per thread, as separate processes would have.
        driver = FilesystemDriver("evidence-local", region_root)
        store = EvidenceStore(driver, PREFIX, signing_key, signing_key.public_key())
        start.wait()
        try:
            for run in range(appends_each):
                store.append("restore_test", f"db{number}", {"run": run}, "passed", {"writer": number})
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    store = EvidenceStore(FilesystemDriver("evidence-local", region_root), PREFIX, None, signing_key.public_key())
    records = store.list()
    assert [record["sequence"] for record in records] == list(range(threads_count * appends_each))
    for number in range(threads_count):
        assert sum(record["body"]["writer"] == number for record in records) == appends_each
    report = store.verify_chain()
    assert report.ok, report.summary()
    assert report.warnings == []
    assert report.checkpoint_sequence == threads_count * appends_each - 1


# -- tampering ------------------------------------------------------------------------


def test_edited_body_reported_at_its_sequence(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 4)
    key = record_key_of(records[1])
    edited = json.loads(region.get_bytes(key))
    edited["body"]["rto_seconds"] = 60.0
    region.put_bytes(key, serialise(edited))

    report = store.verify_chain()

    assert not report.ok
    assert checks.BAD_SIGNATURE in problems_at(report, 1)
    assert checks.MARKER_MISMATCH in problems_at(report, 1)
    assert checks.BROKEN_LINK in problems_at(report, 2)
    assert problems_at(report, 0) == set()
    assert problems_at(report, 3) == set()
    with pytest.raises(IntegrityError):
        store.get(1)
    assert store.get(1, verify=False)["body"]["rto_seconds"] == 60.0


def test_deleted_middle_record_reports_gap_and_link(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 5)
    region.delete(record_key_of(records[2]))
    region.delete(layout.marker_key(PREFIX, 2))

    report = store.verify_chain()

    assert not report.ok
    assert problems_at(report, 2) == {checks.GAP}
    assert problems_at(report, 3) == {checks.BROKEN_LINK}
    assert report.kinds() == {checks.GAP, checks.BROKEN_LINK}


def test_deleted_record_object_with_marker_left(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 4)
    region.delete(record_key_of(records[1]))

    report = store.verify_chain()

    assert problems_at(report, 1) == {checks.GAP}
    assert "seq/000000000001" in report.problems_of(checks.GAP)[0].message
    assert problems_at(report, 2) == {checks.BROKEN_LINK}


def test_deleted_newest_record_detected_by_checkpoint(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 4)
    region.delete(record_key_of(records[3]))
    region.delete(layout.marker_key(PREFIX, 3))

    report = store.verify_chain()

    assert not report.ok
    assert report.kinds() == {checks.TRUNCATED}
    assert report.problems_of(checks.TRUNCATED)[0].sequence == 3
    assert report.last_sequence == 2
    # Appending onto the shortened chain would hide the deletion, so it is refused.
    with pytest.raises(IntegrityError):
        store.append("restore_test", "core", {}, "passed", {})


def test_deleted_newest_and_checkpoint_detected(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 3)
    region.delete(record_key_of(records[2]))
    region.delete(layout.marker_key(PREFIX, 2))
    region.delete(layout.checkpoint_key(PREFIX))

    report = store.verify_chain()

    assert report.kinds() == {checks.CHECKPOINT_MISSING}
    with pytest.raises(IntegrityError):
        store.append("restore_test", "core", {}, "passed", {})


def test_record_signed_by_other_key_reported(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 4)
    forger = Ed25519PrivateKey.generate()
    original = records[2]
    forged = sign_record(
        build_record(
            sequence=2, previous_hash=original["previous_hash"], kind="restore_test", database="core",
            subject=original["subject"], outcome="passed", body=original["body"],
            record_id=original["record_id"], created_at=original["created_at"],
        ),
        forger,
    )
    region.put_bytes(record_key_of(original), serialise(forged))

    report = store.verify_chain()

    assert checks.OTHER_KEY in problems_at(report, 2)
    assert public_key_id(forger.public_key()) in report.problems_of(checks.OTHER_KEY)[0].message
    assert checks.BROKEN_LINK in problems_at(report, 3)


def test_forged_far_sequence_reported_as_one_gap(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 2)
    forger = Ed25519PrivateKey.generate()
    far = 10**12 - 1
    forged = sign_record(
        build_record(sequence=far, previous_hash=record_hash(records[1]), kind="restore_test",
                     database="core", subject={}, outcome="passed", body={}),
        forger,
    )
    region.put_bytes(record_key_of(forged), serialise(forged))

    report = store.verify_chain()

    assert problems_at(report, far) >= {checks.OTHER_KEY, checks.MARKER_MISSING, checks.BROKEN_LINK}
    gaps = report.problems_of(checks.GAP)
    assert len(gaps) == 1
    assert gaps[0].sequence == 2


def test_unparseable_record_reported(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 3)
    region.put_bytes(record_key_of(records[1]), b'{"format": "resguardo-evidence", "truncated')

    report = store.verify_chain()

    assert checks.UNPARSEABLE in problems_at(report, 1)
    assert checks.GAP not in report.kinds()
    assert checks.BROKEN_LINK in problems_at(report, 2)


def test_duplicate_sequence_reported(store: EvidenceStore, region: FilesystemDriver,
                                     signing_key: Ed25519PrivateKey):
    records = append_runs(store, 3)
    # A second record for sequence 1, as a faulty writer holding the key could produce.
    duplicate = sign_record(
        build_record(sequence=1, previous_hash=records[1]["previous_hash"], kind="masking",
                     database="core", subject={}, outcome="passed", body={}),
        signing_key,
    )
    region.put_bytes(record_key_of(duplicate), serialise(duplicate))

    report = store.verify_chain()

    assert checks.DUPLICATE_SEQUENCE in problems_at(report, 1)
    assert checks.MARKER_MISMATCH not in report.kinds()
    with pytest.raises(IntegrityError):
        store.get(1)


def test_renamed_record_reported(store: EvidenceStore, region: FilesystemDriver):
    records = append_runs(store, 2)
    copy_key = layout.record_key(PREFIX, 2, "5d0b3f0e-9a41-4c36-8d36-1c0f7c1b2a10")
    region.put_bytes(copy_key, region.get_bytes(record_key_of(records[1])))

    report = store.verify_chain()

    assert checks.NAME_MISMATCH in report.kinds()
    assert checks.DUPLICATE_SEQUENCE in problems_at(report, 1)


def test_foreign_object_and_deleted_marker_reported(store: EvidenceStore, region: FilesystemDriver):
    append_runs(store, 2)
    region.put_bytes("evidence/notes.txt", b"left here by hand")
    region.delete(layout.marker_key(PREFIX, 0))

    report = store.verify_chain()

    assert report.kinds() == {checks.UNEXPECTED_OBJECT, checks.MARKER_MISSING}
    assert problems_at(report, 0) == {checks.MARKER_MISSING}


def test_edited_checkpoint_reported(store: EvidenceStore, region: FilesystemDriver):
    append_runs(store, 2)
    key = layout.checkpoint_key(PREFIX)
    checkpoint = json.loads(region.get_bytes(key))
    checkpoint["sequence"] = 0
    region.put_bytes(key, serialise(checkpoint))

    report = store.verify_chain()

    assert report.kinds() == {checks.CHECKPOINT_INVALID}
    with pytest.raises(IntegrityError):
        store.append("restore_test", "core", {}, "passed", {})


# -- attachments --------------------------------------------------------------------------


def test_attachment_before_first_record(store: EvidenceStore, region: FilesystemDriver):
    # A restore test stores its full results before it appends the record.
    reference = store.put_attachment("gx/20261204T201500Z-3f9a.json", b'{"success": false}')
    legacy_key = "evidence/gx-results/20261204T201500Z-3f9a-20261204T203000Z.json"
    region.put_bytes(legacy_key, b"{}", if_absent=True)
    legacy_reference = {"region": region.name, "key": legacy_key,
                        "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}

    record = store.append("restore_test", "core", {"backup_id": BACKUP_ID}, "failed",
                          {"attachment": reference, "expectations": {"results_object": legacy_reference}})

    assert record["sequence"] == 0
    assert reference["key"] == "evidence/attachments/gx/20261204T201500Z-3f9a.json"
    assert reference["size"] == 18
    report = store.verify_chain()
    assert report.ok, report.summary()
    assert report.warnings == []


def test_changed_attachment_reported(store: EvidenceStore, region: FilesystemDriver):
    first = store.put_attachment("first.json", b"[1, 2, 3]")
    second = store.put_attachment("second.json", b"[4, 5, 6]")
    store.append("restore_test", "core", {}, "passed", {"results": first})
    store.append("restore_test", "core", {}, "passed", {"results": [second]})
    region.put_bytes(first["key"], b"[1, 2, 4]")
    region.delete(second["key"])

    report = store.verify_chain()

    assert problems_at(report, 0) == {checks.ATTACHMENT_MISMATCH}
    assert problems_at(report, 1) == {checks.ATTACHMENT_MISSING}


def test_unreferenced_attachment_is_warning(store: EvidenceStore):
    append_runs(store, 1)
    store.put_attachment("orphan.json", b"{}")

    report = store.verify_chain()

    assert report.ok, report.summary()
    assert [warning.kind for warning in report.warnings] == [checks.UNREFERENCED_ATTACHMENT]


def test_attachment_names_validated(store: EvidenceStore):
    for name in ("", "../escape.json", "a/../b.json", ".hidden", "a//b.json", "a/.b.json", "x" * 201):
        with pytest.raises(EvidenceError):
            store.put_attachment(name, b"{}")
    store.put_attachment("once.json", b"{}")
    with pytest.raises(StorageError):
        store.put_attachment("once.json", b"{}")


# -- interrupted appends ----------------------------------------------------------------


def test_interrupted_append_completed_by_next(store: EvidenceStore, region: FilesystemDriver,
                                              signing_key: Ed25519PrivateKey):
    records = append_runs(store, 2)
    # An append that stopped after reserving sequence 2: only the marker exists.
    stopped = sign_record(
        build_record(sequence=2, previous_hash=record_hash(records[1]), kind="restore_test",
                     database="core", subject={}, outcome="passed", body={}),
        signing_key,
    )
    region.put_bytes(layout.marker_key(PREFIX, 2), serialise(stopped), if_absent=True)

    report = store.verify_chain()
    assert report.ok, report.summary()
    assert [warning.kind for warning in report.warnings] == [checks.INCOMPLETE_APPEND]
    assert store.head() == stopped

    following = store.append("restore_test", "core", {}, "passed", {})

    assert following["sequence"] == 3
    assert following["previous_hash"] == record_hash(stopped)
    assert parse_record(region.get_bytes(record_key_of(stopped))) == stopped
    report = store.verify_chain()
    assert report.ok, report.summary()
    assert report.warnings == []
    assert report.checkpoint_sequence == 3


# -- rendering ----------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["es", "en"])
@pytest.mark.parametrize("render", [render_text, render_markdown])
def test_rendering_shows_key_facts(store: EvidenceStore, monkeypatch, language, render):
    monkeypatch.setenv("RESGUARDO_LANG", language)
    record = append_runs(store, 1)[0]

    text = render(record, public_key=store.public_key)

    facts = [
        BACKUP_ID, "aws-gye", "gcs-us", "sa-east-1", DUMP_SHA256, "pg_restore", "core.profile",
        "expect_table_row_count_to_equal", "public.cuentas", "expected 120000, found 119998",
        "resguardo-runner-01", "pg_restore (PostgreSQL) 15.18", record["record_id"], record_hash(record),
        public_key_id(store.public_key), "America/Guayaquil",
    ]
    for fact in facts:
        assert fact.replace("_", "\\_") in text or fact in text, fact
    assert "airflow:restore" in text

    expected_words = {
        "es": ["Prueba de restauración", "FALLIDA", "fallido", "RTO medido", "6 min 21 s (380,8 s)", "VÁLIDA",
               "Regiones leídas y verificadas", "Iniciado por"],
        "en": ["Restore test", "FAILED", "failed", "Measured RTO", "6 min 21 s (380.8 s)", "VALID",
               "Regions read and checked", "Triggered by"],
    }[language]
    for word in expected_words:
        assert word in text, word


@pytest.mark.parametrize("language, expected", [("es", "NO VÁLIDA"), ("en", "NOT VALID")])
def test_rendering_flags_tampered_record(store: EvidenceStore, monkeypatch, language, expected):
    monkeypatch.setenv("RESGUARDO_LANG", language)
    record = append_runs(store, 1)[0]
    record["outcome"] = "passed"

    assert expected in render_text(record, public_key=store.public_key)
    assert expected in render_markdown(record, public_key=store.public_key)


def test_rendering_restore_test_body_shape(monkeypatch):
    monkeypatch.setenv("RESGUARDO_LANG", "es")
    body = restore_test_body()
    body["host"] = "resguardo-runner-02"
    body["regions"][0]["seconds"] = 12.5
    body["timings_seconds"] = {"download": 12.5}
    record = build_record(sequence=0, previous_hash=GENESIS_HASH, kind="restore_test", database="core",
                          subject={"backup_id": BACKUP_ID}, outcome="passed", body=body)

    text = render_text(record)

    assert "Equipo:" in text
    assert "resguardo-runner-02" in text
    assert "12,5 s" in text
    assert "timings_seconds" in text
    assert "APROBADA" in text


def test_rendering_keeps_unknown_body_members(monkeypatch):
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    record = build_record(sequence=0, previous_hash=GENESIS_HASH, kind="custom_drill", database="core",
                          subject={"scenario": "uio-down"}, outcome="passed",
                          body={"regions": "not a list", "operator_note": "ok | done"})

    text = render_text(record)
    markdown = render_markdown(record)

    assert "custom_drill" in text
    assert "not a list" in text
    assert "operator_note" in text
    assert "the record has no signature" in text
    assert "ok \\| done" in markdown


def test_rendering_without_key_not_checked(store: EvidenceStore, monkeypatch):
    monkeypatch.setenv("RESGUARDO_LANG", "en")
    record = append_runs(store, 1)[0]

    text = render_text(record)

    assert f"not checked (signed by key {public_key_id(store.public_key)})" in text


def test_facts_name_host_and_tools():
    from evidence.facts import host_facts, tool_versions

    host = host_facts()
    tools = tool_versions()

    assert set(host) == {"hostname", "os", "python"}
    assert "PostgreSQL" in tools["pg_restore"]
    assert tools["resguardo"] == "0.1.0"
    assert "not-a-program" not in tool_versions(programs=("not-a-program",), packages=())


# -- documentation ----------------------------------------------------------------------------


def checker_script(document: str) -> str:
    """Return the first Python code block of a page under docs/."""
    text = (Path(__file__).resolve().parent.parent / "docs" / document).read_text(encoding="utf-8")
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_docs_checker_script_detects_tampering(store: EvidenceStore, region: FilesystemDriver,
                                               region_root: Path, tmp_path: Path):
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    script = tmp_path / "check_chain.py"
    script.write_text(checker_script("evidence.md"), encoding="utf-8")
    public_pem = tmp_path / "signing.pub"
    public_pem.write_bytes(store.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))
    records = append_runs(store, 3)

    def run_checker() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(region_root / PREFIX), str(public_pem)],
                              capture_output=True, text=True, timeout=60)

    intact = run_checker()
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"intact: 3 records, last record hash {record_hash(records[2])}" in intact.stdout

    region.delete(record_key_of(records[2]))
    truncated = run_checker()
    assert truncated.returncode == 1
    assert "head.json names record 2, but the last record is 1" in truncated.stdout

    key = record_key_of(records[0])
    edited = json.loads(region.get_bytes(key))
    edited["body"]["rto_seconds"] = 1.0
    region.put_bytes(key, serialise(edited))
    edited_result = run_checker()
    assert edited_result.returncode == 1
    assert f"{Path(key).name}: the signature does not verify" in edited_result.stdout
    assert "previous_hash does not match" in edited_result.stdout


def test_docs_share_one_checker_script():
    assert checker_script("evidence.es.md") == checker_script("evidence.md")


# -- message catalog ------------------------------------------------------------------------


def test_catalog_translates_every_message():
    from babel.messages.extract import extract_from_file
    from babel.messages.pofile import read_po

    package = Path(__file__).resolve().parent.parent / "evidence"
    catalog_path = package.parent / "resguardo" / "locale" / "es" / "LC_MESSAGES" / "evidence.po"
    with catalog_path.open("rb") as handle:
        catalog = read_po(handle)
    translated = {message.id for message in catalog if message.id and message.string and not message.fuzzy}

    missing = []
    for source in sorted(package.glob("*.py")):
        for _line, msgid, _comments, _context in extract_from_file("python", source, keywords={"_": None}):
            if msgid not in translated:
                missing.append(f"{source.name}: {msgid}")
    assert missing == []


# -- command line -----------------------------------------------------------------------------


@pytest.fixture
def evidence_config(tmp_path: Path, keys_dir: Path):
    """A config whose evidence region is a filesystem directory; returns (path, config)."""
    from conftest import write_config
    from resguardo.config import load_config

    path = write_config(tmp_path, keys_dir, regions={}, databases={})
    return path, load_config(path)


def run_cli(config_path: Path, *arguments: str) -> int:
    from resguardo.cli import main

    return main(["--config", str(config_path), "evidence", *arguments])


def test_cli_verify_list_show(evidence_config, capsys, monkeypatch):
    from evidence.store import open_store

    monkeypatch.delenv("RESGUARDO_LANG", raising=False)
    path, config = evidence_config
    store = open_store(config, writable=True)
    records = append_runs(store, 3)
    capsys.readouterr()

    assert run_cli(path, "verify") == 0
    output = capsys.readouterr().out
    assert "ÍNTEGRA" in output
    assert record_hash(records[2]) in output

    assert run_cli(path, "list", "--last", "2") == 0
    output = capsys.readouterr().out
    assert records[1]["record_id"] in output
    assert records[2]["record_id"] in output
    assert records[0]["record_id"] not in output

    assert run_cli(path, "show", "1") == 0
    output = capsys.readouterr().out
    assert "Registro de evidencia 1: Prueba de restauración" in output
    assert BACKUP_ID in output

    assert run_cli(path, "show", records[2]["record_id"], "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == records[2]


def test_cli_reports_tampering(evidence_config, capsys, monkeypatch):
    from evidence.store import open_store

    monkeypatch.delenv("RESGUARDO_LANG", raising=False)
    path, config = evidence_config
    store = open_store(config, writable=True)
    records = append_runs(store, 3)
    key = record_key_of(records[1])
    edited = json.loads(store.region.get_bytes(key))
    edited["outcome"] = "passed"
    store.region.put_bytes(key, serialise(edited))
    capsys.readouterr()

    assert run_cli(path, "verify") == IntegrityError.exit_status
    output = capsys.readouterr().out
    assert "DAÑADA" in output
    assert "[registro 1]" in output
    assert "[registro 2]" in output

    assert run_cli(path, "show", "1") == IntegrityError.exit_status
    assert "NO VÁLIDA" in capsys.readouterr().out

    assert run_cli(path, "verify", "--json") == IntegrityError.exit_status
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {problem["kind"] for problem in report["problems"]} == {
        checks.BAD_SIGNATURE, checks.MARKER_MISMATCH, checks.BROKEN_LINK,
    }
