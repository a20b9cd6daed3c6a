"""Tests of the expectations package against a real PostgreSQL (ScratchCluster) and real GX.

One cluster serves the module. The source database ``source`` is profiled
once; each damage scenario restores nothing but copies ``source`` with
``CREATE DATABASE ... TEMPLATE`` and changes the copy, which is much faster
than pg_dump/pg_restore and gives the checks the same thing to look at.
"""

from __future__ import annotations

import doctest
import json
import shutil
from pathlib import Path

import psycopg
import pytest

import expectations
from expectations import gx_run, profile as profile_module, result as result_module, suite_files, suites
from expectations.profile import collect_profile
from expectations.suite_files import SuiteFileError, load_suite_dir, load_suite_json, save_suite_json
from expectations.suites import build_profile_suite, run_restore_checks
from resguardo.errors import VerificationError
from restore.scratch import ScratchCluster

DEMO_SUITE_DIR = Path(expectations.__file__).resolve().parent / "demo"
CLIENT_COUNT = 40
INVALID_CEDULA = "1710034066"  # valid shape, wrong check digit


def valid_cedula(number: int) -> str:
    """Return a cédula that stdnum.ec.ci accepts, built from ``number`` (province 17)."""
    body = f"17{number % 10_000_000:07d}"
    total = 0
    for position, digit in enumerate(body):
        product = int(digit) * (2 if position % 2 == 0 else 1)
        total += product - 9 if product > 9 else product
    return body + str((10 - total % 10) % 10)


SOURCE_SQL = f"""
CREATE SCHEMA banca;
CREATE TABLE banca.clientes (
    id bigint PRIMARY KEY,
    cedula text,
    nombres text,
    apellidos text,
    email text,
    telefono text,
    fecha_nacimiento date,
    creado_en timestamptz NOT NULL DEFAULT now()
);
CREATE SCHEMA "Banca";
CREATE TABLE "Banca"."Clientes Ñ" ("Id" integer PRIMARY KEY, "Código" text);
INSERT INTO "Banca"."Clientes Ñ" VALUES (1, 'A'), (2, 'B'), (3, 'C');
CREATE TABLE public.movimientos (
    cuenta integer NOT NULL,
    secuencia integer NOT NULL,
    monto numeric(14, 2),
    PRIMARY KEY (cuenta, secuencia)
) PARTITION BY RANGE (cuenta);
CREATE TABLE public.movimientos_a PARTITION OF public.movimientos FOR VALUES FROM (0) TO (50);
CREATE TABLE public.movimientos_b PARTITION OF public.movimientos FOR VALUES FROM (50) TO (100);
INSERT INTO public.movimientos SELECT g, s, g * 1.5 FROM generate_series(0, 99) g, generate_series(1, 3) s;
CREATE SCHEMA contabilidad;
CREATE TABLE contabilidad.asientos (periodo text, numero integer, detalle text, PRIMARY KEY (numero, periodo));
INSERT INTO contabilidad.asientos SELECT '2026-' || lpad((g % 12 + 1)::text, 2, '0'), g, 'x' FROM generate_series(1, 30) g;
CREATE TABLE public.bitacora (evento text, momento timestamptz DEFAULT now());
INSERT INTO public.bitacora (evento) SELECT 'e' || g FROM generate_series(1, 7) g;
SELECT lo_from_bytea(0, '\\x00ff'::bytea);
"""


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    # Assertions below match English msgids; test_report_spanish_by_default covers the catalog.
    monkeypatch.setenv("RESGUARDO_LANG", "en")


@pytest.fixture(scope="module")
def cluster():
    with ScratchCluster(name="expectations") as scratch:
        scratch.create_database("source")
        scratch.psql(SOURCE_SQL, dbname="source")
        rows = ", ".join(
            f"({index}, '{valid_cedula(index * 7919)}', 'Nombre{index}', 'Apellido{index}', "
            f"'cliente{index}@example.com', '09{index:08d}', DATE '1980-01-01' + {index})"
            for index in range(1, CLIENT_COUNT + 1)
        )
        scratch.psql(
            "INSERT INTO banca.clientes (id, cedula, nombres, apellidos, email, telefono, fecha_nacimiento) "
            f"VALUES {rows}",
            dbname="source",
        )
        yield scratch


@pytest.fixture(scope="module")
def source_profile(cluster):
    with psycopg.connect(cluster.dsn("source")) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return collect_profile(conn)


_copies = 0


def damaged_copy(cluster, sql: str | None = None) -> str:
    """Copy the source database, run ``sql`` in the copy and return its DSN."""
    global _copies
    _copies += 1
    name = f"copy{_copies}"
    cluster.psql(f"CREATE DATABASE {name} TEMPLATE source")
    if sql:
        cluster.psql(sql, dbname=name)
    return cluster.dsn(name)


def checks_of(report, check: str) -> list:
    return [item for item in report.failed if item.check == check]


# -- profile --------------------------------------------------------------------------


def test_profile_lists_user_tables(source_profile):
    assert set(source_profile["tables"]) == {
        "Banca.Clientes Ñ",
        "banca.clientes",
        "contabilidad.asientos",
        "public.bitacora",
        "public.movimientos",
    }
    assert source_profile["version"] == 1
    assert source_profile["large_objects"] == 1


def test_profile_table_entry(source_profile):
    entry = source_profile["tables"]["Banca.Clientes Ñ"]
    assert entry["schema"] == "Banca"
    assert entry["table"] == "Clientes Ñ"
    assert entry["columns"] == ["Id", "Código"]
    assert entry["primary_key"] == ["Id"]
    assert entry["row_count"] == 3
    assert entry["kind"] == "table"


def test_profile_partitioned_parent(source_profile):
    entry = source_profile["tables"]["public.movimientos"]
    assert entry["kind"] == "partitioned"
    assert entry["row_count"] == 300
    assert entry["partitions"] == ["public.movimientos_a", "public.movimientos_b"]
    assert entry["primary_key"] == ["cuenta", "secuencia"]


def test_profile_composite_key_order(source_profile):
    entry = source_profile["tables"]["contabilidad.asientos"]
    assert entry["primary_key"] == ["numero", "periodo"]
    assert entry["columns"] == ["periodo", "numero", "detalle"]


def test_profile_table_without_key(source_profile):
    entry = source_profile["tables"]["public.bitacora"]
    assert entry["primary_key"] == []
    assert entry["row_count"] == 7


def test_profile_is_json(source_profile):
    assert json.loads(json.dumps(source_profile)) == source_profile


# -- profile suite --------------------------------------------------------------------


def test_profile_suite_specs(source_profile):
    specs = build_profile_suite(source_profile)
    by_check = {}
    for spec in specs:
        meta = spec["meta"]["resguardo"]
        by_check.setdefault((meta["table"], meta["check"]), spec)

    assert by_check[("banca.clientes", "row_count")]["kwargs"] == {"value": CLIENT_COUNT}
    assert by_check[("public.movimientos", "primary_key_unique")]["meta"]["resguardo"]["columns"] == [
        "cuenta",
        "secuencia",
    ]
    assert ("public.bitacora", "primary_key_unique") not in by_check
    assert by_check[("pg_catalog.pg_largeobject_metadata", "large_objects")]["kwargs"] == {"value": 1}


def test_profile_suite_tolerance(source_profile):
    specs = build_profile_suite(source_profile, row_count_tolerance=5)
    spec = next(s for s in specs if s["meta"]["resguardo"] == {"table": "banca.clientes", "check": "row_count", "columns": []})
    assert spec["type"] == "expect_table_row_count_to_be_between"
    assert spec["kwargs"] == {"min_value": CLIENT_COUNT - 5, "max_value": CLIENT_COUNT + 5}


# -- restore checks -------------------------------------------------------------------


def test_checks_pass_on_identical_copy(cluster, source_profile):
    report = run_restore_checks(damaged_copy(cluster), source_profile, DEMO_SUITE_DIR)

    assert report.broken == []
    assert report.failed == []
    assert report.success
    assert report.tables_checked == 5
    assert report.expectations_passed == report.expectations_evaluated
    assert "demo-clientes" in report.suite_results
    assert "profile:Banca.Clientes Ñ" in report.suite_results
    assert json.loads(json.dumps(report.to_dict()))["success"] is True


def test_checks_close_their_connections(cluster, source_profile):
    run_restore_checks(cluster.dsn("source"), source_profile, DEMO_SUITE_DIR)

    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'resguardo-expectations'"
        ).fetchone()[0]
    assert left == 0


def test_checks_accept_sqlalchemy_url(cluster, source_profile):
    report = run_restore_checks(cluster.uri("source"), source_profile, None)
    assert report.success
    assert report.failed == []


def test_deleted_row_fails_row_count(cluster, source_profile):
    dsn = damaged_copy(cluster, "DELETE FROM banca.clientes WHERE id = 5")
    report = run_restore_checks(dsn, source_profile, None)

    failures = checks_of(report, "row_count")
    assert not report.success
    assert report.broken == []
    assert len(failures) == 1
    assert failures[0].table == "banca.clientes"
    assert failures[0].expected == CLIENT_COUNT
    assert failures[0].observed == CLIENT_COUNT - 1
    assert "banca.clientes" in failures[0].message


def test_mixed_case_table_is_read_exactly(cluster, source_profile):
    # GX lowercases an unquoted schema: a wrong table would show 40 rows here.
    dsn = damaged_copy(cluster, 'DELETE FROM "Banca"."Clientes Ñ" WHERE "Id" = 1')
    report = run_restore_checks(dsn, source_profile, None)

    failures = checks_of(report, "row_count")
    assert [item.table for item in failures] == ["Banca.Clientes Ñ"]
    assert failures[0].observed == 2


def test_duplicate_key_fails_uniqueness(cluster, source_profile):
    dsn = damaged_copy(
        cluster,
        "ALTER TABLE banca.clientes DROP CONSTRAINT clientes_pkey; "
        "INSERT INTO banca.clientes (id, cedula, nombres, apellidos) SELECT id, cedula, nombres, apellidos "
        "FROM banca.clientes WHERE id = 3",
    )
    report = run_restore_checks(dsn, source_profile, None)

    failures = checks_of(report, "primary_key_unique")
    assert len(failures) == 1
    assert failures[0].table == "banca.clientes"
    assert failures[0].columns == ["id"]
    assert failures[0].observed == {"duplicated_keys": 1, "surplus_rows": 1}
    assert report.broken == []


def test_composite_duplicate_in_partitioned_table(cluster, source_profile):
    dsn = damaged_copy(
        cluster,
        "ALTER TABLE public.movimientos DROP CONSTRAINT movimientos_pkey; "
        "INSERT INTO public.movimientos VALUES (10, 1, 0), (60, 2, 0), (60, 2, 0)",
    )
    report = run_restore_checks(dsn, source_profile, None)

    failures = checks_of(report, "primary_key_unique")
    assert len(failures) == 1
    assert failures[0].table == "public.movimientos"
    assert failures[0].columns == ["cuenta", "secuencia"]
    assert failures[0].observed == {"duplicated_keys": 2, "surplus_rows": 3}


def test_null_key_fails_not_null(cluster, source_profile):
    dsn = damaged_copy(
        cluster,
        "ALTER TABLE contabilidad.asientos DROP CONSTRAINT asientos_pkey; "
        "ALTER TABLE contabilidad.asientos ALTER COLUMN periodo DROP NOT NULL; "
        "DELETE FROM contabilidad.asientos WHERE numero = 1; "
        "INSERT INTO contabilidad.asientos VALUES (NULL, 1, 'x')",
    )
    report = run_restore_checks(dsn, source_profile, None)

    failures = checks_of(report, "primary_key_not_null")
    assert len(failures) == 1
    assert failures[0].table == "contabilidad.asientos"
    assert failures[0].observed == 1
    assert checks_of(report, "row_count") == []


def test_dropped_column_fails_column_check(cluster, source_profile):
    dsn = damaged_copy(cluster, "ALTER TABLE banca.clientes DROP COLUMN telefono")
    report = run_restore_checks(dsn, source_profile, None)

    exact = checks_of(report, "column_names_exact")
    assert len(exact) == 1
    assert exact[0].table == "banca.clientes"
    assert exact[0].observed == [{"column_name": "telefono", "problem": "missing"}]


def test_renamed_column_case_fails_exact_names(cluster, source_profile):
    # GX's expect_table_columns_to_match_set ignores letter case, so only the exact check detects this.
    dsn = damaged_copy(cluster, 'ALTER TABLE "Banca"."Clientes Ñ" RENAME COLUMN "Código" TO "código"')
    report = run_restore_checks(dsn, source_profile, None)

    exact = checks_of(report, "column_names_exact")
    assert len(exact) == 1
    assert exact[0].table == "Banca.Clientes Ñ"
    assert sorted(row["column_name"] for row in exact[0].observed) == ["Código", "código"]


def test_unreflectable_types_checked(cluster):
    # SQLAlchemy knows no point/inet/range types; GX's own column-set check broke on them.
    cluster.psql("CREATE DATABASE geo")
    cluster.psql("CREATE TABLE sitio (id int PRIMARY KEY, g point, red inet, vigencia int4range);"
                 "INSERT INTO sitio VALUES (1, point(1, 2), '10.0.0.1', '[1,3)')", "geo")
    with psycopg.connect(cluster.dsn("geo")) as conn:
        profile = collect_profile(conn)
    report = run_restore_checks(cluster.dsn("geo"), profile, None)
    assert report.broken == []
    assert report.success


def test_missing_table_is_failed_check(cluster, source_profile):
    dsn = damaged_copy(cluster, "DROP TABLE public.bitacora")
    report = run_restore_checks(dsn, source_profile, None)

    missing = checks_of(report, "table_exists")
    assert [item.table for item in missing] == ["public.bitacora"]
    assert report.broken == []
    assert report.tables_checked == 4
    assert not report.success


def test_extra_table_is_warning(cluster, source_profile):
    dsn = damaged_copy(cluster, "CREATE TABLE public.sobrante (x int)")
    report = run_restore_checks(dsn, source_profile, None)

    extra = checks_of(report, "table_unexpected")
    assert [item.table for item in extra] == ["public.sobrante"]
    assert extra[0].severity == "warning"
    assert report.success


def test_missing_large_object_fails(cluster, source_profile):
    dsn = damaged_copy(cluster, "SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
    report = run_restore_checks(dsn, source_profile, None)

    failures = checks_of(report, "large_objects")
    assert len(failures) == 1
    assert failures[0].observed == 0
    assert failures[0].expected == 1


def write_suite(directory: Path, file_name: str, table: str, expectations_list: list[dict], name: str | None = None):
    save_suite_json(directory / file_name, name=name or file_name.removesuffix(".json"), table=table,
                    expectations=expectations_list)


def test_broken_expectation_is_not_data_failure(cluster, source_profile, tmp_path):
    write_suite(tmp_path, "rota.json", "banca.clientes", [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "no_existe"}},
        {"type": "unexpected_rows_expectation", "kwargs": {"unexpected_rows_query": "SELECT no_existe FROM {batch}"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "nombres"}},
    ])
    report = run_restore_checks(damaged_copy(cluster), source_profile, tmp_path)

    assert report.failed == []
    assert report.data_ok
    assert not report.checks_ok
    assert not report.success
    assert len(report.broken) == 2
    assert {item.expectation_type for item in report.broken} == {
        "expect_column_values_to_not_be_null",
        "unexpected_rows_expectation",
    }
    assert all("no_existe" in item.error for item in report.broken)
    assert all(item.table == "banca.clientes" for item in report.broken)
    with pytest.raises(VerificationError, match="could not run"):
        report.raise_for_failure()


def test_broken_suite_files_reported(cluster, source_profile, tmp_path):
    (tmp_path / "mal.json").write_text("{ no es json", encoding="utf-8")
    write_suite(tmp_path, "tipo.json", "banca.clientes", [{"type": "expect_nothing_at_all", "kwargs": {}}])
    write_suite(tmp_path, "tabla.json", "banca.Clientes", [{"type": "expect_table_row_count_to_equal", "kwargs": {"value": 1}}])
    report = run_restore_checks(damaged_copy(cluster), source_profile, tmp_path)

    messages = " | ".join(item.message for item in report.broken)
    assert len(report.broken) == 3
    assert "mal.json" in messages
    assert "expect_nothing_at_all" in messages
    assert "banca.Clientes" in messages
    assert "Did you mean banca.clientes?" in messages
    assert report.failed == []


def test_case_ambiguous_column_is_broken(cluster, tmp_path):
    dsn = damaged_copy(cluster, 'CREATE TABLE public.caso ("Id" int, id int); INSERT INTO public.caso VALUES (1, NULL)')
    write_suite(tmp_path, "caso.json", "public.caso", [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "Id"}},
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 1}},
    ])
    report = run_restore_checks(dsn, None, tmp_path)

    assert len(report.broken) == 1
    assert report.broken[0].expectation_type == "expect_column_values_to_not_be_null"
    assert "letter case" in report.broken[0].error
    assert report.expectations_passed == 1


def test_hand_written_failure_hides_values(cluster, source_profile, tmp_path):
    dsn = damaged_copy(cluster, f"UPDATE banca.clientes SET cedula = '{INVALID_CEDULA}' WHERE id = 4")
    report = run_restore_checks(dsn, source_profile, DEMO_SUITE_DIR)

    failures = [item for item in report.failed if item.suite == "demo-clientes"]
    assert len(failures) == 1
    assert failures[0].expectation_type == "unexpected_rows_expectation"
    assert failures[0].observed == 1
    assert failures[0].expected == 0
    assert "dígito verificador" in failures[0].message
    assert failures[0].severity == "critical"
    assert report.broken == []
    assert INVALID_CEDULA not in json.dumps(report.to_dict())
    with pytest.raises(VerificationError, match="differs from the source"):
        report.raise_for_failure()


def test_warning_failure_keeps_success(cluster, source_profile):
    dsn = damaged_copy(cluster, "UPDATE banca.clientes SET telefono = '12' WHERE id <= 10")
    report = run_restore_checks(dsn, source_profile, DEMO_SUITE_DIR)

    assert [item.severity for item in report.failed] == ["warning"]
    assert report.failed[0].columns == ["telefono"]
    assert report.failed[0].observed["unexpected_count"] == 10
    assert report.success


def test_unreachable_database_is_broken(source_profile):
    report = run_restore_checks("host=127.0.0.1 port=1 user=postgres dbname=nada connect_timeout=3", source_profile, None)

    assert not report.success
    assert len(report.broken) == 1
    assert report.failed == []


def test_result_is_json_serialisable(cluster, source_profile, tmp_path):
    write_suite(tmp_path, "rota.json", "banca.clientes", [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "no_existe"}},
    ])
    shutil.copy(DEMO_SUITE_DIR / "clientes.json", tmp_path / "clientes.json")
    dsn = damaged_copy(cluster, "DELETE FROM banca.clientes WHERE id = 1; DROP TABLE public.bitacora")
    report = run_restore_checks(dsn, source_profile, tmp_path)

    document = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert document["success"] is False
    assert document["failed"] and document["broken"]
    assert set(document["suite_results"]) >= {"demo-clientes", "rota", "profile:banca.clientes"}
    assert "Traceback" not in json.dumps(document)


def test_report_spanish_by_default(cluster, source_profile, monkeypatch):
    monkeypatch.delenv("RESGUARDO_LANG")
    dsn = damaged_copy(cluster, "DELETE FROM banca.clientes WHERE id = 7")
    report = run_restore_checks(dsn, source_profile, None)

    assert report.summary().startswith("Validaciones de la restauración")
    assert checks_of(report, "row_count")[0].message == (
        f"tabla banca.clientes: {CLIENT_COUNT - 1} filas restauradas, se esperaban {CLIENT_COUNT}"
    )


# -- suite files ----------------------------------------------------------------------


def test_suite_file_round_trip(tmp_path):
    specs = [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}, "severity": "warning"}]
    path = save_suite_json(tmp_path / "a.json", name="a", table="banca.clientes", expectations=specs, notes="n")
    loaded = load_suite_json(path)

    assert loaded.name == "a"
    assert loaded.table == "banca.clientes"
    assert loaded.expectations == specs
    assert loaded.notes == "n"


def test_suite_file_without_table(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"name": "x", "expectations": [{"type": "t"}]}), encoding="utf-8")
    with pytest.raises(SuiteFileError, match="meta.resguardo.table"):
        load_suite_json(tmp_path / "x.json")


def test_suite_dir_duplicate_names(tmp_path):
    spec = [{"type": "expect_table_row_count_to_equal", "kwargs": {"value": 1}}]
    save_suite_json(tmp_path / "a.json", name="misma", table="s.t", expectations=spec)
    save_suite_json(tmp_path / "b.json", name="misma", table="s.u", expectations=spec)
    loaded, errors = load_suite_dir(tmp_path)

    assert [suite.name for suite in loaded] == ["misma"]
    assert len(errors) == 1
    assert "b.json" in errors[0].message


def test_demo_suite_loads():
    suite = load_suite_json(DEMO_SUITE_DIR / "clientes.json")
    assert suite.table == "banca.clientes"
    assert len(suite.expectations) == 10


def test_module_doctests():
    for module in (profile_module, result_module, suite_files, gx_run, suites):
        outcome = doctest.testmod(module)
        assert outcome.failed == 0, module.__name__
