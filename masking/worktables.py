"""Phase one of masking: stream each leaf's masked columns into a work table.

Terms:

- *work table*: ``_resguardo_masking.work_<leaf oid>``, an UNLOGGED table that
  holds, per row to mask, the leaf's ``ctid`` (``_tid``) and the masked value
  of every masked column. In phase two the engine copies the values into the
  leaf with one ``UPDATE ... FROM`` per leaf, inside the masking transaction.
- *job*: one leaf, or one range of its heap blocks (``ctid >= '(first,0)'
  AND ctid < '(end,0)'``, which PostgreSQL 14 and later run as a TID range
  scan). A job opens two connections of its own. The reader fetches the
  rows through a server-side cursor, the writer runs ``COPY <work table> FROM
  STDIN``, and only one batch of rows is held in memory.
- *workers*: with ``workers=1`` the jobs run one after another in the calling
  process, with the plan's transformers. With more, they run in a pool of
  spawned processes. Each worker builds the transformers again from the rules
  and the masking key, and the same key and rule give the same output in
  every process. The key reaches a worker through the pool's pipe and is
  never written to disk.

Jobs read committed data through their own connections, so they see the
leaves as the masking transaction found them. The engine holds SHARE locks on
the leaves while the jobs run, so no other session can change a row between
its read and the UPDATE. The UPDATE then checks that it changed exactly as
many rows as the jobs wrote.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from masking.catalog import WORK_SCHEMA, Column
from masking.errors import MaskingError
from masking.keys import MaskingKey
from masking.transformers import Transformer, TransformerFactory, batch_masker
from resguardo.i18n import _, current_language, set_language
from resguardo.log import get_logger

log = get_logger("masking.worktables")

# Masks a batch of one column's values; None stays None.
BatchMasker = Callable[[Sequence[Any]], list[Any]]

# Leaves smaller than this many blocks (64 MiB with the default 8 KiB block
# size) stay one job each: they mask in seconds, so splitting them would gain
# little (an estimate, not measured).
MIN_SPLIT_BLOCKS = 8_192
# Rows masked together, column by column.
BATCH_ROWS = 5_000
# Jobs per worker for a split leaf. Several per worker keep every process busy
# when the ranges hold different numbers of rows.
JOBS_PER_WORKER = 2


@dataclass(frozen=True)
class LeafJob:
    """One leaf, or one block range of it, to read, mask and write into its work table."""

    table_index: int
    leaf_oid: int
    schema: str
    name: str
    first_block: int | None = None
    end_block: int | None = None

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class ConnectionTarget:
    """Connection parameters of the database being masked, for the jobs' own connections.

    ``repr`` hides the password.
    """

    dsn: str
    password: str | None = None

    @classmethod
    def of(cls, conn: psycopg.Connection) -> "ConnectionTarget":
        # ConnectionInfo.dsn leaves the password out; it is passed apart.
        return cls(conn.info.dsn, conn.info.password or None)

    def connect(self) -> psycopg.Connection:
        if self.password:
            return psycopg.connect(self.dsn, password=self.password, autocommit=True)
        return psycopg.connect(self.dsn, autocommit=True)

    def __repr__(self) -> str:
        return f"ConnectionTarget(dsn={self.dsn!r})"


def work_table(leaf_oid: int) -> sql.Composed:
    """Return the quoted name of a leaf's work table."""
    return sql.SQL("{}.{}").format(sql.Identifier(WORK_SCHEMA), sql.Identifier(f"work_{leaf_oid}"))


def column_masker(transformer: Transformer, column: Column) -> BatchMasker:
    """Return the function that masks a batch of ``column``'s values, ready for COPY.

    COPY sends values as text and the server parses them per column type, so
    only JSON documents need a wrapper (a Python list would become an SQL array).
    """
    wrap = _as_jsonb if column.value_kind == "json" and not column.is_array else None
    return batch_masker(transformer, is_array=column.is_array, wrap=wrap)


def _as_jsonb(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        result = function(value)
        return result if result is None or isinstance(result, str) else Jsonb(result)

    return apply


def create_work_tables(conn: psycopg.Connection, leaves: Sequence[tuple[int, str, str, list[str]]]) -> None:
    """Create an empty work table per leaf (committed, so every job's writer can see it).

    ``leaves`` contains ``(leaf oid, schema, name, masked column names)`` tuples.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(WORK_SCHEMA)))
        for leaf_oid, schema, name, columns in leaves:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(work_table(leaf_oid)))
            cur.execute(
                sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT ctid AS _tid, {} FROM ONLY {}.{} WITH NO DATA").format(
                    work_table(leaf_oid),
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                    sql.Identifier(schema),
                    sql.Identifier(name),
                )
            )


def drop_work_tables(conn: psycopg.Connection, leaf_oids: Sequence[int]) -> None:
    """Drop the work tables; they hold masked values only, but must not outlive the run."""
    with conn.transaction(), conn.cursor() as cur:
        for leaf_oid in leaf_oids:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(work_table(leaf_oid)))


def split_jobs(conn: psycopg.Connection, table_index: int, leaves: Sequence[tuple[int, str, str]],
               workers: int) -> list[LeafJob]:
    """Return the jobs of one policy table: a job per leaf, or block ranges of large leaves.

    The last range of a leaf is open-ended, so rows in blocks added after the
    size was read are still masked.
    """
    jobs = []
    for leaf_oid, schema, name in leaves:
        blocks = 0
        if workers > 1:
            blocks = conn.execute(
                "SELECT pg_relation_size(%s) / current_setting('block_size')::int", (leaf_oid,)
            ).fetchone()[0]
        if blocks < MIN_SPLIT_BLOCKS:
            jobs.append(LeafJob(table_index, leaf_oid, schema, name))
            continue
        count = min(workers * JOBS_PER_WORKER, math.ceil(blocks / (MIN_SPLIT_BLOCKS / JOBS_PER_WORKER)))
        step = math.ceil(blocks / count)
        for first in range(0, blocks, step):
            end = first + step if first + step < blocks else None
            jobs.append(LeafJob(table_index, leaf_oid, schema, name, first, end))
    return jobs


def mask_job(target: ConnectionTarget, job: LeafJob, columns: Sequence[str], maskers: Sequence[BatchMasker]) -> int:
    """Read the job's rows, mask them and write them into the leaf's work table; return the row count.

    Rows whose masked columns are all NULL are skipped: there is nothing to mask.
    """
    leaf = sql.SQL("{}.{}").format(sql.Identifier(job.schema), sql.Identifier(job.name))
    column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    conditions = [sql.SQL("({})").format(
        sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in columns)
    )]
    if job.first_block is not None:
        conditions.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({job.first_block},0)")))
    if job.end_block is not None:
        conditions.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({job.end_block},0)")))
    select = sql.SQL("SELECT ctid, {} FROM ONLY {} WHERE {}").format(
        column_list, leaf, sql.SQL(" AND ").join(conditions)
    )
    write = sql.SQL("COPY {} (_tid, {}) FROM STDIN").format(work_table(job.leaf_oid), column_list)

    rows = 0
    with target.connect() as reader, target.connect() as writer:
        # A server-side cursor fetches a whole batch per round trip; COPY TO
        # would cost one wait per row in psycopg. It needs a transaction.
        reader.autocommit = False
        with (
            reader.cursor(name=f"masking_job_{job.leaf_oid}") as source,
            writer.cursor() as write_cursor,
            write_cursor.copy(write) as sink,
        ):
            source.itersize = BATCH_ROWS
            source.execute(select)
            try:
                while batch := source.fetchmany(BATCH_ROWS):
                    # Column by column, so one transformer's memo tables stay
                    # in the CPU cache for a whole batch.
                    values = list(zip(*batch))
                    masked = [values[0]]
                    for masker, column_values in zip(maskers, values[1:]):
                        masked.append(masker(column_values))
                    for row in zip(*masked):
                        sink.write_row(row)
                    rows += len(batch)
            except (ValueError, TypeError) as error:
                log.error("masking.job.failed", extra={"table": job.label, "error_type": type(error).__name__})
                raise MaskingError(
                    _("masking table {table} failed: a value could not be transformed ({error})").format(
                        table=job.label, error=type(error).__name__
                    ),
                    _("check that each column's rule fits its content (e.g. date on text columns needs ISO dates)"),
                ) from None
        reader.rollback()
    return rows


# -- worker processes -------------------------------------------------------------

_worker_maskers: dict[int, list[BatchMasker]] = {}


def _init_worker(key: MaskingKey, tables: dict[int, list[tuple[Column, Any]]], language: str) -> None:
    """Build every table's column maskers once per worker process."""
    set_language(language)
    factory = TransformerFactory(key)
    for index, columns in tables.items():
        _worker_maskers[index] = [column_masker(factory.build(rule), column) for column, rule in columns]


def _run_in_worker(target: ConnectionTarget, job: LeafJob, columns: list[str]) -> int | tuple[str, str | None]:
    # A pickled ResguardoError loses its hint, so the message and hint travel as a tuple.
    try:
        return mask_job(target, job, columns, _worker_maskers[job.table_index])
    except MaskingError as error:
        return (error.message, error.hint)


def run_jobs(target: ConnectionTarget, jobs: Sequence[LeafJob], *, columns: dict[int, list[str]],
             maskers: dict[int, list[BatchMasker]], key: MaskingKey,
             rules: dict[int, list[tuple[Column, Any]]], workers: int) -> dict[int, int]:
    """Run every job and return the rows written per leaf oid.

    ``columns``, ``maskers`` and ``rules`` are keyed by table index. With
    ``workers=1`` the jobs run here with ``maskers``; otherwise a pool of
    ``workers`` spawned processes builds its own from ``rules`` and ``key``.
    """
    written: dict[int, int] = {job.leaf_oid: 0 for job in jobs}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            written[job.leaf_oid] += _timed(job, lambda: mask_job(target, job, columns[job.table_index],
                                                                  maskers[job.table_index]))
        return written

    # spawn, not fork: a forked child would inherit the caller's open
    # connections, and closing them there would end the caller's sessions.
    context = multiprocessing.get_context("spawn")
    log.info("masking.workers.start", extra={"workers": workers, "jobs": len(jobs)})
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                                 initializer=_init_worker, initargs=(key, rules, current_language())) as pool:
            started = {pool.submit(_run_in_worker, target, job, columns[job.table_index]): job for job in jobs}
            try:
                for future, job in started.items():
                    rows = future.result()
                    if isinstance(rows, tuple):
                        raise MaskingError(*rows)
                    written[job.leaf_oid] += rows
                    log.info("masking.job.stop", extra={"table": job.label, "first_block": job.first_block,
                                                        "rows": rows})
            except BaseException:
                # Jobs not yet started would otherwise still run before the pool closes.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    except BrokenProcessPool as error:
        log.error("masking.workers.failed", extra={"error": str(error)})
        raise MaskingError(
            _("a masking worker process ended unexpectedly: {error}").format(error=error),
            _("check the host's memory and the system log, or run with workers: 1"),
        ) from None
    return written


def _timed(job: LeafJob, run: Callable[[], int]) -> int:
    started = time.monotonic()
    log.info("masking.job.start", extra={"table": job.label, "first_block": job.first_block})
    rows = run()
    log.info("masking.job.stop", extra={"table": job.label, "first_block": job.first_block, "rows": rows,
                                        "seconds": round(time.monotonic() - started, 3)})
    return rows
