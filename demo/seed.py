"""A small but realistic core-banking database for the demo and the tests.

Schema ``banca``: ``clientes`` (customers with valid cédulas), ``cuentas``
(accounts), ``movimientos`` (transactions, partitioned by month). Cédulas
are generated in SQL with a valid province code and check digit, so the
masking and validation code sees realistic identifiers. Names are drawn from
short lists; every row is synthetic.
"""

from __future__ import annotations

SCHEMA_SQL = r"""
CREATE SCHEMA banca;

-- Check digit of an Ecuadorian cédula: weights 2,1,2,1,... over nine digits,
-- products above 9 lose 9, check = (10 - sum mod 10) mod 10.
CREATE FUNCTION banca.cedula_valida(base text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT base || ((10 - (sum(CASE WHEN p > 9 THEN p - 9 ELSE p END) % 10)) % 10)::text
  FROM (SELECT substr(base, i, 1)::int * CASE WHEN i % 2 = 1 THEN 2 ELSE 1 END AS p
        FROM generate_series(1, 9) AS i) AS d
$$;

CREATE TYPE banca.tipo_cuenta AS ENUM ('ahorros', 'corriente', 'plazo_fijo');

CREATE TABLE banca.clientes (
    id bigint PRIMARY KEY,
    cedula text NOT NULL UNIQUE,
    nombres text NOT NULL,
    apellidos text NOT NULL,
    email text,
    telefono text,
    fecha_nacimiento date,
    direccion text,
    creado_en timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE banca.cuentas (
    id bigint PRIMARY KEY,
    cliente_id bigint NOT NULL REFERENCES banca.clientes(id),
    numero text NOT NULL UNIQUE,
    tipo banca.tipo_cuenta NOT NULL,
    saldo numeric(14,2) NOT NULL,
    abierta_en date NOT NULL
);

CREATE TABLE banca.movimientos (
    id bigint NOT NULL,
    cuenta_id bigint NOT NULL REFERENCES banca.cuentas(id),
    fecha timestamptz NOT NULL,
    monto numeric(14,2) NOT NULL,
    concepto text NOT NULL,
    PRIMARY KEY (id, fecha)
) PARTITION BY RANGE (fecha);
"""

DATA_SQL = r"""
DO $$
DECLARE m date;
BEGIN
  FOR m IN SELECT generate_series(date '2026-01-01', date '2026-12-01', interval '1 month')::date LOOP
    EXECUTE format('CREATE TABLE banca.movimientos_%s PARTITION OF banca.movimientos
                    FOR VALUES FROM (%L) TO (%L)', to_char(m, 'YYYYMM'), m, (m + interval '1 month')::date);
  END LOOP;
END $$;

INSERT INTO banca.clientes (id, cedula, nombres, apellidos, email, telefono, fecha_nacimiento, direccion, creado_en)
SELECT g,
       banca.cedula_valida(lpad((1 + g % 24)::text, 2, '0') || (g % 6)::text || lpad(g::text, 6, '0')),
       (ARRAY['María','José','Luis','Ana','Carlos','Lucía','Jorge','Gabriela','Andrés','Paola','Diego','Sofía'])[1 + g % 12]
         || ' ' || (ARRAY['Fernanda','Alberto','Isabel','Javier','Elena','Mateo'])[1 + g % 6],
       (ARRAY['Pérez','Guamán','Zambrano','Andrade','Vera','Quishpe','Mendoza','Cevallos','Núñez','Chávez'])[1 + g % 10]
         || ' ' || (ARRAY['Toapanta','Ortiz','Villacís','Espinoza','Mora','Intriago','Salazar'])[1 + g % 7],
       'cliente' || g || '@correo.ec',
       '09' || lpad((g * 7919 % 100000000)::text, 8, '0'),
       date '1950-01-01' + (g * 37 % 20000),
       'Av. 9 de Octubre ' || (g % 900 + 1) || ' y Boyacá, Guayaquil',
       timestamptz '2020-01-01 00:00:00-05' + (g || ' minutes')::interval
FROM generate_series(1, @CLIENTS@) AS g;

INSERT INTO banca.cuentas (id, cliente_id, numero, tipo, saldo, abierta_en)
SELECT g, 1 + (g - 1) % @CLIENTS@, lpad((2200000000 + g)::text, 10, '0'),
       (ARRAY['ahorros','corriente','plazo_fijo']::banca.tipo_cuenta[])[1 + g % 3],
       round((g * 7.31 % 50000)::numeric, 2), date '2015-01-01' + (g % 4000)
FROM generate_series(1, @ACCOUNTS@) AS g;

INSERT INTO banca.movimientos (id, cuenta_id, fecha, monto, concepto)
SELECT g, 1 + g % @ACCOUNTS@,
       timestamptz '2026-01-01 00:00:00-05' + ((g * 97) % (330 * 86400) || ' seconds')::interval,
       round(((g % 2000) - 1000)::numeric * 1.37, 2),
       (ARRAY['Depósito','Retiro cajero','Transferencia','Pago servicios básicos','Nómina','Compra tarjeta'])[1 + g % 6]
FROM generate_series(1, @MOVEMENTS@) AS g;

ANALYZE;
"""


def seed_sql(clients: int = 20_000, accounts: int = 30_000, movements: int = 250_000) -> str:
    """Return the SQL that creates and fills the demo schema."""
    data = (DATA_SQL.replace("@CLIENTS@", str(int(clients)))
            .replace("@ACCOUNTS@", str(int(accounts)))
            .replace("@MOVEMENTS@", str(int(movements))))
    return SCHEMA_SQL + data
