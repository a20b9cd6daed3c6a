"""Benchmark: rows per second of masking one table, against pg_dump + pg_restore of the same table.

Creates a scratch cluster on 127.0.0.1, fills ``public.clientes`` with
``--rows`` synthetic rows (valid cédulas, names, e-mails, mobile numbers,
balances), then measures in the same run:

1. ``pg_dump -Fc -t public.clientes | pg_restore`` into a second database
   (the cost of merely copying the table), ``--copies`` times. The median is
   the reference, because single runs on a shared machine varied by a factor
   of two;
2. masking the table in place (plan, snapshot for the proof, mask), with
   ``--workers`` processes computing the masked values;
3. the proof with the SQL runner.

Usage: ``.venv/bin/python bench/bench_masking.py --rows 1000000 --workers 2``.
It prints one JSON object with the figures and the machine description, so a
recorded figure can name its hardware.

``--transformers-only N`` skips PostgreSQL and prints the CPU time per value
of each of the five transformers over N synthetic values, in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import psycopg

from masking.engine import build_plan, mask_database
from masking.keys import MaskingKey
from masking.policy import parse_policy
from masking.proof import run_proof, take_snapshot
from resguardo.pgtools import find_program
from restore.scratch import ScratchCluster

SCHEMA = """
CREATE FUNCTION cedula_dv(nine text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT ((10 - sum(CASE WHEN p > 9 THEN p - 9 ELSE p END) % 10) % 10)::text
    FROM (SELECT substr(nine, i, 1)::int * CASE WHEN i % 2 = 1 THEN 2 ELSE 1 END AS p
          FROM generate_series(1, 9) i) s
$$;
CREATE TABLE public.clientes (
    id bigint PRIMARY KEY,
    cedula varchar(10) NOT NULL UNIQUE,
    nombres text NOT NULL,
    email text,
    celular text,
    saldo numeric(14, 2) NOT NULL
);
"""

FILL = """
INSERT INTO public.clientes
SELECT n,
       nine || cedula_dv(nine),
       (ARRAY['María', 'José', 'Ana', 'Luis', 'Carmen', 'Jorge', 'Lucía', 'Pedro'])[1 + n % 8],
       'cliente' || n || '@correo.ec',
       '09' || lpad(((n * 7919) % 100000000)::text, 8, '0'),
       ((n * 37) % 1000000) / 100.0
FROM (SELECT n, lpad((1 + n % 24)::text, 2, '0') || ((n / 24) % 6)::text || lpad(((n / 144) % 1000000)::text, 6, '0') AS nine
      FROM generate_series(0::bigint, %s - 1) n) s
"""

POLICY = {
    "database": "bench",
    "tables": {"public.clientes": {"columns": {
        "id": "keep", "cedula": "cedula", "nombres": "given_name", "email": "email", "celular": "phone",
        "saldo": {"transform": "amount", "max_ratio": 0.1},
    }}},
}


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory_gib": f"{memory:.0f}", "python": platform.python_version(),
            "postgres": subprocess.run([str(find_program("postgres")), "--version"], capture_output=True, text=True).stdout.strip()}


def synthetic_values(count: int) -> dict[str, list]:
    """Return the values FILL generates for rows 0..count-1, per masked column."""
    from decimal import Decimal

    from masking.identifiers import cedula_check_digit

    names = ["María", "José", "Ana", "Luis", "Carmen", "Jorge", "Lucía", "Pedro"]
    values: dict[str, list] = {column: [] for column in ("cedula", "nombres", "email", "celular", "saldo")}
    for n in range(count):
        nine = f"{1 + n % 24:02d}{(n // 24) % 6}{(n // 144) % 1_000_000:06d}"
        values["cedula"].append(nine + cedula_check_digit(nine))
        values["nombres"].append(names[n % 8])
        values["email"].append(f"cliente{n}@correo.ec")
        values["celular"].append(f"09{(n * 7919) % 100_000_000:08d}")
        values["saldo"].append(Decimal((n * 37) % 1_000_000) / 100)
    return values


def measure_transformers(count: int) -> dict[str, float]:
    """Return CPU microseconds per value of each benchmark column's transformer (first pass, cold cache)."""
    from masking.transformers import TransformerFactory
    from masking.policy import parse_policy

    rules = parse_policy(POLICY).tables["public.clientes"].columns
    factory = TransformerFactory(MaskingKey(b"bench-masking-key".ljust(32, b".")))
    timings = {}
    for column, values in synthetic_values(count).items():
        transformer = factory.build(rules[column])
        started = time.process_time()
        for value in values:
            transformer(value)
        timings[column] = round((time.process_time() - started) / count * 1e6, 2)
    return timings


def dump_and_restore(cluster: ScratchCluster) -> float:
    """Copy public.clientes with pg_dump | pg_restore into a fresh database; return the seconds."""
    cluster.psql("DROP DATABASE IF EXISTS copy")
    cluster.create_database("copy")
    started = time.monotonic()
    dump = subprocess.Popen([str(find_program("pg_dump")), "-Fc", "-t", "public.clientes", "-d", cluster.dsn("bench")],
                            stdout=subprocess.PIPE)
    subprocess.run([str(find_program("pg_restore")), "--no-owner", "-d", cluster.dsn("copy")], stdin=dump.stdout,
                   check=True)
    dump.wait()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the benchmark table (default 1000000)")
    parser.add_argument("--workers", type=int, default=1, help="processes that compute masked values (default 1)")
    parser.add_argument("--copies", type=int, default=3, help="pg_dump | pg_restore runs; the median counts (default 3)")
    parser.add_argument("--transformers-only", type=int, metavar="N",
                        help="only time each transformer on N values, without PostgreSQL")
    args = parser.parse_args()
    if args.transformers_only:
        print(json.dumps({"values": args.transformers_only, "cpu_microseconds_per_value":
                          measure_transformers(args.transformers_only), "machine": machine()}, indent=2, ensure_ascii=False))
        return
    results: dict[str, object] = {"rows": args.rows, "workers": args.workers, "machine": machine()}

    with ScratchCluster(name="bench-masking", settings={"shared_buffers": "512MB", "max_wal_size": "4GB"}) as cluster:
        cluster.create_database("bench")
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
            conn.execute(SCHEMA)
            started = time.monotonic()
            conn.execute(FILL.replace("%s", str(args.rows)))
            conn.execute("VACUUM ANALYZE public.clientes")
            results["fill_seconds"] = round(time.monotonic() - started, 1)

            copies = sorted(dump_and_restore(cluster) for _ in range(args.copies))
            results["dump_restore_runs"] = [round(seconds, 1) for seconds in copies]
            results["dump_restore_seconds"] = round(statistics.median(copies), 1)

            started = time.monotonic()
            plan = build_plan(conn, parse_policy(POLICY), MaskingKey(b"bench-masking-key".ljust(32, b".")))
            snapshot = take_snapshot(conn, plan)
            results["snapshot_seconds"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            report = mask_database(conn, plan, workers=args.workers)
            results["mask_seconds"] = round(time.monotonic() - started, 1)
            results["mask_compute_seconds"] = round(report["compute_seconds"], 1)
            results["mask_update_seconds"] = round(report["tables"]["public.clientes"]["seconds"], 1)
            results["rows_per_second"] = round(args.rows / results["mask_seconds"])
            results["mask_to_dump_restore_ratio"] = round(results["mask_seconds"] / results["dump_restore_seconds"], 1)
            results["columns_masked"] = len(report["tables"]["public.clientes"]["columns"])

            started = time.monotonic()
            proof = run_proof(conn, cluster.uri("bench"), plan, snapshot, runner="sql")
            results["proof_seconds"] = round(time.monotonic() - started, 1)
            results["proof_outcome"] = proof["outcome"]
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
