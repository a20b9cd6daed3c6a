"""Masking engine, proof, discovery and suppression against a real PostgreSQL (ScratchCluster).

Each test gets a fresh copy of the demo database (masking/demo.py), cloned
from a template so the data is generated once per module.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import psycopg
import pytest
import yaml
from stdnum.ec import ci as stdnum_ci
from stdnum.ec import ruc as stdnum_ruc

from masking.catalog import WORK_SCHEMA
from masking.demo import create_demo_schema, fill_demo_data
from masking.discovery import check_gate, discover, propose_policy
from masking.engine import build_plan, mask_database
from masking.errors import MaskingError, PolicyError
from masking.identifiers import is_luhn_valid
from masking.keys import MaskingKey
from masking.policy import load_policy, parse_policy
from masking.proof import drop_work_schema, run_proof, take_snapshot
from masking.suppression import SuppressionList, apply_suppression
from restore.scratch import ScratchCluster

POLICY_PATH = Path(__file__).resolve().parent.parent / "masking" / "examples" / "demo-policy.yaml"
KEY = MaskingKey(b"test-masking-key-".ljust(32, b"."))
CUSTOMERS = 200
_names = itertools.count()


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    """Assert on the English msgids; the Spanish catalog is checked by tests/test_i18n.py."""
    monkeypatch.setenv("RESGUARDO_LANG", "en")


@pytest.fixture(scope="module")
def cluster():
    with ScratchCluster(name="masking-test") as scratch:
        scratch.create_database("demo_template")
        with psycopg.connect(scratch.dsn("demo_template"), autocommit=True) as conn:
            create_demo_schema(conn)
            fill_demo_data(conn, CUSTOMERS)
        yield scratch


@pytest.fixture
def database(cluster):
    name = f"demo_{next(_names)}"
    cluster.psql(f"CREATE DATABASE {name} TEMPLATE demo_template")
    return name


@pytest.fixture
def conn(cluster, database):
    with psycopg.connect(cluster.dsn(database), autocommit=True) as connection:
        yield connection


def demo_policy_data() -> dict:
    return yaml.safe_load(POLICY_PATH.read_text(encoding="utf-8"))


def mask(conn, policy=None, key=KEY):
    plan = build_plan(conn, policy or load_policy(POLICY_PATH), key)
    snapshot = take_snapshot(conn, plan)
    report = mask_database(conn, plan)
    return plan, snapshot, report


def test_demo_masks_and_proof_passes_sql(cluster, database, conn):
    before = conn.execute("SELECT cedula, email, celular, notas FROM public.clientes ORDER BY id").fetchall()
    plan, snapshot, report = mask(conn)
    after = conn.execute("SELECT cedula, email, celular, notas FROM public.clientes ORDER BY id").fetchall()

    assert len(after) == len(before) == CUSTOMERS
    assert all(a[0] != b[0] for a, b in zip(after, before))
    assert all(stdnum_ci.is_valid(a[0]) for a in after)
    assert not {b[1] for b in before} & {a[1] for a in after}
    assert report["tables"]["public.clientes"]["rows_updated"] == CUSTOMERS
    assert "clientes_cedula_key" in report["constraints_recreated"]

    proof = run_proof(conn, cluster.uri(database), plan, snapshot, runner="sql")
    assert proof["outcome"] == "passed", proof["failed"] + proof["broken"]
    assert proof["row_counts"]["public.clientes"] == CUSTOMERS


def test_joins_intact_across_tables(conn):
    original = conn.execute(
        "SELECT count(*) FROM public.clientes c JOIN public.cuentas k ON k.cliente_cedula = c.cedula"
    ).fetchone()[0]
    mask(conn)
    joined = conn.execute(
        "SELECT count(*) FROM public.clientes c JOIN public.cuentas k ON k.cliente_cedula = c.cedula"
    ).fetchone()[0]
    vip = conn.execute(
        'SELECT count(*) FROM "Banca"."Clientes VIP" v JOIN public.clientes c ON c.cedula = v."Cédula" '
        'WHERE v."RUC" = c.cedula || \'001\''
    ).fetchone()[0]
    cards = conn.execute(
        "SELECT count(*) FROM public.tarjetas t JOIN public.cuentas k ON (k.numero, k.cliente_cedula) = (t.cuenta, t.titular_cedula)"
    ).fetchone()[0]
    total_cards = conn.execute("SELECT count(*) FROM public.tarjetas").fetchone()[0]
    assert joined == original
    assert vip == CUSTOMERS // 10
    assert cards == total_cards


def test_masking_is_deterministic_across_runs(cluster, conn):
    mask(conn)
    other = f"demo_{next(_names)}"
    cluster.psql(f"CREATE DATABASE {other} TEMPLATE demo_template")
    with psycopg.connect(cluster.dsn(other), autocommit=True) as second:
        mask(second)
        query = "SELECT id, cedula, nombres, email, telefonos::text, perfil::text, direccion FROM public.clientes ORDER BY id"
        assert conn.execute(query).fetchall() == second.execute(query).fetchall()


def test_special_columns_after_masking(conn):
    mask(conn)
    row = conn.execute(
        "SELECT nombres, apellidos, nombre_completo, perfil, telefonos, extract(day FROM fecha_nacimiento) "
        "FROM public.clientes ORDER BY id LIMIT 1"
    ).fetchone()
    names, surnames, full_name, profile, phones, day = row
    assert full_name == f"{names} {surnames}"
    assert profile["contacto"]["email"].endswith("@ejemplo.invalid")
    assert profile["contacto"]["celular"] == phones[0]
    assert profile["preferencias"]["idioma"] == "es"
    assert day == 1
    pans = [r[0] for r in conn.execute("SELECT pan FROM public.tarjetas").fetchall()]
    assert all(is_luhn_valid(p) and p.startswith("454545") for p in pans)
    rucs = [r[0] for r in conn.execute('SELECT "RUC" FROM "Banca"."Clientes VIP"').fetchall()]
    assert all(stdnum_ruc.is_valid(r) for r in rucs)
    # The materialized view was refreshed from masked data.
    stale = conn.execute(
        "SELECT count(*) FROM public.resumen_clientes r LEFT JOIN public.clientes c ON c.cedula = r.cedula WHERE c.id IS NULL"
    ).fetchone()[0]
    assert stale == 0


def test_triggers_do_not_fire_and_are_restored(conn):
    mask(conn)
    assert conn.execute("SELECT count(*) FROM public.auditoria").fetchone()[0] == 0
    enabled = conn.execute(
        "SELECT tgname, tgenabled FROM pg_trigger WHERE tgname IN ('clientes_auditoria', 'cuentas_auditoria') ORDER BY 1"
    ).fetchall()
    assert enabled == [("clientes_auditoria", "O"), ("cuentas_auditoria", "A")]


def test_deny_by_default_on_unlisted_column(conn):
    conn.execute("ALTER TABLE public.clientes ADD COLUMN pasaporte text")
    conn.execute('CREATE TABLE "Banca"."Nueva" ("Dato" text)')
    with pytest.raises(PolicyError) as caught:
        build_plan(conn, load_policy(POLICY_PATH), KEY)
    message = caught.value.message
    assert "public.clientes.pasaporte: no rule" in message
    assert "Banca.Nueva.Dato" in message


def test_policy_rejects_bad_fits(conn):
    data = demo_policy_data()
    columns = data["tables"]["public.clientes"]["columns"]
    columns["cedula"] = "surname"
    columns["nombre_completo"] = "full_name"
    columns["fecha_nacimiento"] = "phone"
    data["tables"]["public.cuentas"]["columns"]["cliente_cedula"] = {"transform": "cedula", "preserve_province": True}
    data["tables"]["public.ghost"] = {"columns": {"x": "keep"}}
    with pytest.raises(PolicyError) as caught:
        build_plan(conn, parse_policy(data), KEY)
    message = caught.value.message
    assert "public.clientes.cedula: under unique constraint clientes_cedula_key" in message
    assert "public.clientes.nombre_completo: generated column" in message
    assert "public.clientes.fecha_nacimiento: transformer phone does not accept type date" in message
    assert "foreign key cuentas_cliente_cedula_fkey" in message
    assert "tables.public.ghost" in message


def test_uniqueness_kept_under_small_domain(conn):
    conn.execute("CREATE TABLE public.codigos (codigo varchar(3) PRIMARY KEY, otro varchar(3) UNIQUE)")
    conn.execute("INSERT INTO public.codigos SELECT lpad(n::text, 3, '0'), lpad(((n * 7) % 1000)::text, 3, '0') "
                 "FROM generate_series(0, 999) n")
    data = demo_policy_data()
    data["tables"]["public.codigos"] = {"columns": {"codigo": "account", "otro": "account"}}
    plan, snapshot, report = mask(conn, parse_policy(data))
    codes = [r[0] for r in conn.execute("SELECT codigo FROM public.codigos").fetchall()]
    others = [r[0] for r in conn.execute("SELECT otro FROM public.codigos").fetchall()]
    assert sorted(codes) == [f"{n:03d}" for n in range(1000)]
    assert sorted(others) == [f"{n:03d}" for n in range(1000)]
    assert "codigos_pkey" in report["constraints_recreated"]
    assert "codigos_otro_key" in report["constraints_recreated"]


def test_non_injective_collision_fails_loudly(conn):
    conn.execute("CREATE TABLE public.unicos (valor text)")
    conn.execute("CREATE UNIQUE INDEX unicos_valor ON public.unicos (lower(valor))")
    conn.execute("INSERT INTO public.unicos VALUES ('a@x.ec'), ('b@x.ec')")
    data = demo_policy_data()
    data["tables"]["public.unicos"] = {"columns": {"valor": {"transform": "constant", "value": "fijo"}}}
    with pytest.raises(PolicyError) as caught:
        build_plan(conn, parse_policy(data), KEY)
    assert "unicos_valor" in caught.value.message


def test_recreated_constraint_failure_names_it(conn):
    # An expression index is not visible to the injectivity check per column,
    # so the recreated index is what catches the collision.
    conn.execute("CREATE TABLE public.correos (correo text)")
    conn.execute("CREATE UNIQUE INDEX correos_dominio ON public.correos ((split_part(correo, '@', 2)))")
    conn.execute("INSERT INTO public.correos VALUES ('a@uno.ec'), ('b@dos.ec')")
    data = demo_policy_data()
    data["tables"]["public.correos"] = {"columns": {"correo": "email"}}
    plan = build_plan(conn, parse_policy(data), KEY)
    with pytest.raises(MaskingError) as caught:
        mask_database(conn, plan)
    assert "correos_dominio" in caught.value.message
    # The transaction rolled back: nothing was masked.
    assert conn.execute("SELECT count(*) FROM public.correos WHERE correo LIKE '%@uno.ec'").fetchone()[0] == 1


def test_proof_catches_unmasked_column_with_gx(cluster, database, conn):
    policy = load_policy(POLICY_PATH)
    plan = build_plan(conn, policy, KEY)
    # The engine is handed a policy that skips clientes.email; the proof still expects it masked.
    data = demo_policy_data()
    data["tables"]["public.clientes"]["columns"]["email"] = {"keep": True, "reviewed": True, "reason": "test"}
    skipping_plan = build_plan(conn, parse_policy(data), KEY)
    snapshot = take_snapshot(conn, plan)
    mask_database(conn, skipping_plan)
    proof = run_proof(conn, cluster.uri(database), plan, snapshot, runner="gx")
    assert proof["outcome"] == "data_failed"
    assert "unchanged:public.clientes.email" in proof["failed"]
    assert "original_value_present:public.clientes.email" in proof["failed"]
    checks = {c["name"]: c for c in proof["checks"]}
    assert checks["unchanged:public.clientes.email"]["unexpected_count"] == CUSTOMERS
    assert checks["unchanged:public.clientes.cedula"]["status"] == "passed"
    assert checks["unchanged:public.clientes.fecha_nacimiento"]["required"] is False
    assert not proof["broken"]


def test_proof_fails_when_rows_rewritten_after_masking(cluster, database, conn):
    plan = build_plan(conn, load_policy(POLICY_PATH), KEY)
    conn.execute("CREATE TABLE public.copia_email AS SELECT id, email FROM public.clientes")
    snapshot = take_snapshot(conn, plan)
    mask_database(conn, plan)
    conn.execute("UPDATE public.clientes c SET email = k.email FROM public.copia_email k WHERE k.id = c.id AND c.id % 2 = 0")
    proof = run_proof(conn, cluster.uri(database), plan, snapshot, runner="sql")
    assert proof["outcome"] == "data_failed"
    assert "row_identity_lost:public.clientes" in proof["failed"]
    assert "original_value_present:public.clientes.email" in proof["failed"]


def test_proof_reports_broken_check_apart_from_data(cluster, database, conn):
    plan, snapshot, _report = mask(conn)
    leaf_oid = next(oid for oid, name in snapshot.leaves.items() if name == "public.cuentas")
    conn.execute(f"DROP TABLE {WORK_SCHEMA}.moved_{leaf_oid}")
    proof = run_proof(conn, cluster.uri(database), plan, snapshot, runner="sql")
    assert proof["outcome"] == "check_broken"
    assert "unchanged:public.cuentas.numero" in proof["broken"]
    assert not proof["failed"]


def test_proof_catches_unredacted_text(cluster, database, conn):
    plan, snapshot, _report = mask(conn)
    conn.execute("UPDATE public.clientes SET notas = 'llamar al 0991234567' WHERE id = 1")
    proof = run_proof(conn, cluster.uri(database), plan, snapshot, runner="sql")
    assert "free_text:public.clientes.notas" in proof["failed"]


def test_work_schema_dropped(conn):
    mask(conn)
    drop_work_schema(conn)
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (WORK_SCHEMA,)).fetchone()[0] == 0


def test_discovery_flags_personal_columns(conn):
    conn.execute("ALTER TABLE public.productos ADD COLUMN referencia text")
    conn.execute("UPDATE public.productos SET referencia = '1714307103'")
    findings = {(f.table, f.column): f for f in discover(conn, sample_rows=100)}
    assert findings[("clientes", "cedula")].value_suggestion == "cedula"
    assert findings[("clientes", "email")].value_suggestion == "email"
    assert findings[("clientes", "celular")].value_suggestion == "phone"
    assert findings[("clientes", "notas")].value_suggestion == "redact"
    assert set(findings[("clientes", "perfil")].json_paths) >= {"$.contacto.email", "$.contacto.celular", "$.telefonos[*]"}
    assert findings[("clientes", "telefonos")].value_suggestion == "phone"
    assert findings[("Clientes VIP", "RUC")].value_suggestion == "ruc"
    assert findings[("productos", "referencia")].value_suggestion == "cedula"
    assert findings[("productos", "codigo")].flagged is False
    assert findings[("tarjetas", "pan")].suggested_rule() == {"transform": "card", "bin_mode": "keep"}

    proposal = yaml.safe_load(propose_policy(list(findings.values()), "demo"))
    assert proposal["tables"]["Banca.Clientes VIP"]["columns"]["Cédula"] == "cedula"
    assert "1714307103" not in propose_policy(list(findings.values()), "demo")


def test_gate_rejects_kept_personal_columns(conn):
    conn.execute("ALTER TABLE public.productos ADD COLUMN referencia text")
    conn.execute("UPDATE public.productos SET referencia = '1714307103'")
    data = demo_policy_data()
    data["tables"]["public.productos"]["columns"]["referencia"] = "keep"
    data["tables"]["public.productos"]["columns"]["nombre"] = "keep"
    policy = parse_policy(data)
    plan = build_plan(conn, policy, KEY)
    findings = discover(conn, sample_rows=100, catalog=plan.catalog)
    with pytest.raises(PolicyError) as caught:
        check_gate(policy, findings, plan.catalog)
    message = caught.value.message
    assert "public.productos.referencia" in message
    assert "public.productos.nombre" in message
    assert "nombre_completo" not in message
    assert "1714307103" not in message

    data["tables"]["public.productos"]["columns"]["referencia"] = {"keep": True, "reviewed": True, "reason": "test value"}
    data["tables"]["public.productos"]["columns"]["nombre"] = {"keep": True, "reviewed": True, "reason": "product names"}
    check_gate(parse_policy(data), findings, plan.catalog)


def test_suppression_removes_subjects_and_dependents(conn):
    cedulas = [r[0] for r in conn.execute(
        'SELECT c.cedula FROM public.clientes c JOIN "Banca"."Clientes VIP" v ON v."Cédula" = c.cedula ORDER BY c.id LIMIT 2'
    ).fetchall()]
    listing = SuppressionList(KEY)
    for cedula in cedulas:
        listing.add(cedula, reference="solicitud de prueba")
    counts_before = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                     for t in ("public.clientes", "public.cuentas", "public.tarjetas", "public.movimientos")}
    report = apply_suppression(conn, load_policy(POLICY_PATH), listing)

    remaining = conn.execute("SELECT count(*) FROM public.clientes WHERE cedula = ANY(%s)", (cedulas,)).fetchone()[0]
    assert remaining == 0
    assert conn.execute("SELECT count(*) FROM public.cuentas WHERE cliente_cedula = ANY(%s)", (cedulas,)).fetchone()[0] == 0
    assert conn.execute('SELECT count(*) FROM "Banca"."Clientes VIP" WHERE "Cédula" = ANY(%s)', (cedulas,)).fetchone()[0] == 0
    assert report["deleted"]["public.clientes"] == 2
    assert report["deleted"]["public.cuentas"] >= 2
    assert sum(v for k, v in report["deleted"].items() if k.startswith("public.movimientos_")) > 0
    assert conn.execute("SELECT count(*) FROM public.clientes").fetchone()[0] == counts_before["public.clientes"] - 2
    assert conn.execute("SELECT count(*) FROM public.auditoria").fetchone()[0] == 0
    orphans = conn.execute(
        "SELECT count(*) FROM public.movimientos m LEFT JOIN public.cuentas k ON k.numero = m.cuenta WHERE k.numero IS NULL"
    ).fetchone()[0]
    assert orphans == 0
    assert all(c not in str(report) for c in cedulas)


def test_workers_and_block_ranges_give_same_result(cluster, database, conn, monkeypatch):
    from masking import worktables

    query = ("SELECT id, cedula, nombres, email, celular, telefonos::text, perfil::text, notas FROM public.clientes "
             "ORDER BY id")
    mask(conn)
    expected = conn.execute(query).fetchall()
    movements = conn.execute("SELECT id, cuenta, monto, descripcion FROM public.movimientos ORDER BY id").fetchall()

    # Every leaf of one block or more is split into ranges, the last one open-ended.
    monkeypatch.setattr(worktables, "MIN_SPLIT_BLOCKS", 1)
    other = f"demo_{next(_names)}"
    cluster.psql(f"CREATE DATABASE {other} TEMPLATE demo_template")
    with psycopg.connect(cluster.dsn(other), autocommit=True) as second:
        plan = build_plan(second, load_policy(POLICY_PATH), KEY)
        jobs = worktables.split_jobs(second, 0, [leaf for t in plan.tables for leaf in t.leaves], 2)
        assert any(job.first_block is not None and job.end_block is None for job in jobs)
        snapshot = take_snapshot(second, plan)
        report = mask_database(second, plan, workers=2)
        assert report["workers"] == 2
        assert second.execute(query).fetchall() == expected
        assert second.execute("SELECT id, cuenta, monto, descripcion FROM public.movimientos ORDER BY id").fetchall() == movements
        proof = run_proof(second, cluster.uri(other), plan, snapshot, runner="sql")
        assert proof["outcome"] == "passed", proof["failed"] + proof["broken"]


def test_work_tables_dropped_after_masking(conn):
    mask(conn)
    work = conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'work\\_%%'", (WORK_SCHEMA,)
    ).fetchone()[0]
    assert work == 0


def test_row_count_mismatch_fails_and_rolls_back(conn, monkeypatch):
    from masking import engine

    real_run_jobs = engine.run_jobs

    def run_jobs_reporting_one_more(*args, **kwargs):
        written = real_run_jobs(*args, **kwargs)
        return {oid: count + 1 for oid, count in written.items()}

    monkeypatch.setattr(engine, "run_jobs", run_jobs_reporting_one_more)
    before = conn.execute("SELECT cedula FROM public.clientes ORDER BY id").fetchall()
    plan = build_plan(conn, load_policy(POLICY_PATH), KEY)
    with pytest.raises(MaskingError) as caught:
        mask_database(conn, plan)
    assert "the table changed during masking" in caught.value.message
    assert conn.execute("SELECT cedula FROM public.clientes ORDER BY id").fetchall() == before
    work = conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'work\\_%%'", (WORK_SCHEMA,)
    ).fetchone()[0]
    assert work == 0


def test_worker_error_keeps_message_and_hint(conn):
    conn.execute("CREATE TABLE public.fechas (texto text)")
    conn.execute("INSERT INTO public.fechas VALUES ('2024-01-31'), ('no es fecha')")
    data = demo_policy_data()
    data["tables"]["public.fechas"] = {"columns": {"texto": {"transform": "date", "mode": "month"}}}
    plan = build_plan(conn, parse_policy(data), KEY)
    with pytest.raises(MaskingError) as caught:
        mask_database(conn, plan, workers=2)
    assert "masking table public.fechas failed: a value could not be transformed (ValueError)" in caught.value.message
    assert "ISO dates" in caught.value.hint
    assert conn.execute("SELECT count(*) FROM public.fechas WHERE texto = 'no es fecha'").fetchone()[0] == 1


REFERRAL_SQL = (
    "UPDATE public.clientes SET perfil = perfil || jsonb_build_object('referido', "
    "jsonb_build_object('correo', 'referido' || id || '@correo.ec', 'ci', '1714307103')) WHERE id <= 3"
)


def test_proof_catches_personal_json_path_outside_policy(cluster, database, conn):
    conn.execute(REFERRAL_SQL)
    plan, snapshot, _report = mask(conn)
    proof = run_proof(conn, cluster.uri(database), plan, snapshot, runner="sql")

    assert proof["outcome"] == "data_failed"
    assert proof["failed"] == ["json_original_leaf:public.clientes.perfil"]
    checks = {c["name"]: c for c in proof["checks"]}
    assert checks["json_original_leaf:public.clientes.perfil"]["unexpected_count"] == 3
    assert "1714307103" not in str(proof)


def test_proof_passes_when_json_path_masked(cluster, database, conn):
    conn.execute(REFERRAL_SQL)
    data = demo_policy_data()
    paths = data["tables"]["public.clientes"]["columns"]["perfil"]["paths"]
    paths["$.referido.correo"] = "email"
    paths["$.referido.ci"] = "cedula"
    plan, snapshot, _report = mask(conn, parse_policy(data))
    proof = run_proof(conn, cluster.uri(database), plan, snapshot, runner="gx")

    assert proof["outcome"] == "passed", proof["failed"] + proof["broken"]
    assert "json_original_leaf:public.clientes.perfil" in {c["name"] for c in proof["checks"]}


def test_gate_rejects_uncovered_json_path(conn):
    conn.execute(REFERRAL_SQL)
    policy = load_policy(POLICY_PATH)
    plan = build_plan(conn, policy, KEY)
    findings = discover(conn, sample_rows=200, catalog=plan.catalog)

    with pytest.raises(PolicyError) as caught:
        check_gate(policy, findings, plan.catalog)
    message = caught.value.message
    assert "public.clientes.perfil: JSON path $.referido.correo" in message
    assert "public.clientes.perfil: JSON path $.referido.ci" in message
    assert "$.contacto.email" not in message
    assert "1714307103" not in message

    proposal = yaml.safe_load(propose_policy(findings, "demo"))
    proposed_paths = proposal["tables"]["public.clientes"]["columns"]["perfil"]["paths"]
    assert proposed_paths["$.referido.correo"] == "email"
    assert proposed_paths["$.referido.ci"] == "cedula"

    data = demo_policy_data()
    paths = data["tables"]["public.clientes"]["columns"]["perfil"]["paths"]
    paths["$.referido.correo"] = "email"
    paths["$.referido.ci"] = "cedula"
    check_gate(parse_policy(data), findings, plan.catalog)
