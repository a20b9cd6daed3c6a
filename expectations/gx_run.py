"""Running expectation suites against one restored table with Great Expectations Core 1.x.

This is the only module that imports ``great_expectations``, and it does so
inside :class:`GxSession`, because the import takes seconds and most callers
of the package never run GX.

Terms:

- *planned suite*: a suite to run on one table: its display name, where it
  came from (the profile or a suite file) and its expectation specs
  (``{"type", "kwargs", ...}`` dictionaries).
- *outcome*: what happened to one expectation: ``passed``, ``failed`` (the
  data differs) or ``broken`` (the check could not run).

Behaviour of GX 1.24.1 that this module works around, each checked against
PostgreSQL 15 and SQLAlchemy 2.1:

- A table asset lowercases an unquoted schema name and never quotes an
  unquoted table name, so ``Banca``.``Clientes Ñ`` became
  ``banca.Clientes Ñ``, which PostgreSQL reads as table ``banca.clientes``
  with alias ``Ñ``: the wrong table, silently. Names are therefore passed as
  ``sqlalchemy.quoted_name(..., quote=True)``, which GX keeps as is.
- A query asset (``SELECT * FROM ...``) is not used because GX reads every row
  of it into memory to learn the column names.
- Column names become ``CaseInsensitiveString`` objects, and SQLAlchemy's
  per-dialect identifier cache then mixes up ``id`` and ``Id``: after a table
  with column ``Id``, a check of column ``id`` of another table queried
  ``"Id"``. Each table therefore gets its own data source (its own engine and
  dialect). Two columns of one table whose names differ only in case still
  cannot be distinguished, so hand-written column expectations on them are
  reported as broken instead of being run.
- A broken expectation does not raise: its result has ``success: false`` and
  the error under ``exception_info``. ``ExpectationSuite(expectations=...)``
  drops an invalid expectation with only a log line, so expectations are built
  one by one here and each failure is reported.
- ``unexpected_rows_query`` without ``{batch}`` prints a warning to stdout;
  stdout is captured while GX runs, so CLI output stays clean.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from expectations.result import clean_error_message, clean_expectation_result, exception_messages
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("expectations.gx_run")

APPLICATION_NAME = "resguardo-expectations"

# Result formats. The first pass only needs pass/fail. The second pass re-runs
# only the failed expectations to get observed values. Hand-written suites get
# counts but no row values (partial_unexpected_count 0). Profile suites get
# COMPLETE, because their queries return counts and column names only.
FIRST_PASS_FORMAT = {"result_format": "BOOLEAN_ONLY"}
DETAIL_FORMAT_HAND_WRITTEN = {"result_format": "SUMMARY", "partial_unexpected_count": 0}
DETAIL_FORMAT_PROFILE = {"result_format": "COMPLETE", "partial_unexpected_count": 0}

_COLUMN_KWARGS = ("column", "column_A", "column_B")


@dataclass
class PlannedSuite:
    """A suite to run on one table."""

    name: str
    source: str
    table: str
    specs: list[dict[str, Any]]
    from_profile: bool = False


@dataclass
class Outcome:
    """The verdict on one expectation, with its cleaned GX result."""

    suite: PlannedSuite
    status: str
    expectation_type: str | None
    spec: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class TableRun:
    """Every outcome of one table and the cleaned GX result of each suite, by suite name."""

    outcomes: list[Outcome] = field(default_factory=list)
    suite_results: dict[str, dict[str, Any]] = field(default_factory=dict)


def referenced_columns(kwargs: dict[str, Any]) -> list[str]:
    """Return the column names an expectation's kwargs point at.

    >>> referenced_columns({"column_A": "a", "column_B": "b"})
    ['a', 'b']
    >>> referenced_columns({"column_list": ["x", "y"], "mostly": 0.9})
    ['x', 'y']
    """
    names = [kwargs[key] for key in _COLUMN_KWARGS if isinstance(kwargs.get(key), str)]
    column_list = kwargs.get("column_list")
    if isinstance(column_list, list):
        names.extend(name for name in column_list if isinstance(name, str))
    return names


def case_ambiguous_columns(columns: list[str]) -> set[str]:
    """Return the case-folded names shared by two or more of ``columns``.

    >>> sorted(case_ambiguous_columns(["Id", "id", "nombre"]))
    ['id']
    """
    seen: dict[str, int] = {}
    for name in columns:
        seen[name.casefold()] = seen.get(name.casefold(), 0) + 1
    return {folded for folded, count in seen.items() if count > 1}


def _signature(expectation_type: str, kwargs: dict[str, Any]) -> str:
    """Return a key that identifies an expectation across the two passes."""
    relevant = {key: value for key, value in kwargs.items() if key != "batch_id"}
    return json.dumps([expectation_type, relevant], sort_keys=True, default=str)


class GxSession:
    """An ephemeral GX context bound to one restored database."""

    def __init__(self, sqlalchemy_url: str):
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self._gx = gx
        self.version = gx.__version__
        self._url = sqlalchemy_url
        self._tables_run = 0
        # In-memory stores, no data-docs site and no progress bars on stderr.
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            analytics_enabled=False,
        )
        self._context = gx.get_context(mode="ephemeral", project_config=config)

    def _build_expectations(
        self, suite: PlannedSuite, ambiguous: set[str], run: TableRun
    ) -> list[tuple[dict[str, Any], Any]]:
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        built = []
        for spec in suite.specs:
            expectation_type = spec.get("type")
            clashing = [name for name in referenced_columns(spec.get("kwargs", {})) if name.casefold() in ambiguous]
            if clashing and not suite.from_profile:
                run.outcomes.append(
                    Outcome(
                        suite, "broken", expectation_type, spec,
                        error=_("column {column} differs only in letter case from another column of the table, "
                                "and GX 1.24.1 cannot tell such columns apart; check it with an "
                                "unexpected_rows_expectation that quotes the name").format(column=clashing[0]),
                    )
                )
                continue
            try:
                expectation = ExpectationConfiguration(**spec).to_domain_obj()
            except Exception as error:  # GX raises pydantic, GX and plain Python errors for bad specs.
                run.outcomes.append(
                    Outcome(suite, "broken", expectation_type, spec, error=clean_error_message(str(error)) or type(error).__name__)
                )
                continue
            built.append((spec, expectation))
        return built

    def run_table(self, schema: str, table: str, suites: list[PlannedSuite], columns: list[str]) -> TableRun:
        """Run ``suites`` on ``schema``.``table`` and return every outcome.

        Any ``Exception`` from GX, SQLAlchemy or the driver is caught and
        becomes a broken outcome of the suites concerned.
        """
        run = TableRun()
        self._tables_run += 1
        source_name = f"resguardo-{self._tables_run}"
        key = suites[0].table if suites else f"{schema}.{table}"
        started = time.monotonic()
        captured = io.StringIO()
        data_source = None
        try:
            with contextlib.redirect_stdout(captured):
                data_source = self._context.data_sources.add_postgres(
                    name=source_name,
                    connection_string=self._url,
                    kwargs={"connect_args": {"application_name": APPLICATION_NAME}},
                )
                self._run_table(data_source, schema, table, suites, columns, run)
        except Exception as error:  # Anything GX or the driver raises makes this table's checks broken.
            message = clean_error_message(str(error)) or type(error).__name__
            log.warning(
                "expectations.table.error",
                extra={"table": key, "error_type": type(error).__name__, "error": message, "data_source": source_name},
            )
            for suite in suites:
                if suite.name not in run.suite_results:
                    run.outcomes.append(Outcome(suite, "broken", None, {}, error=message))
        finally:
            self._close(source_name, data_source)
        if captured.getvalue().strip():
            # GX prints warnings to stdout, e.g. for a query without {batch}. They
            # do not belong in a restore test's output, so they go to the debug log.
            log.debug("expectations.gx.stdout", extra={"table": key, "text": captured.getvalue().strip()[:500]})
        log.info(
            "expectations.table.done",
            extra={
                "table": key,
                "suites": len(suites),
                "passed": sum(outcome.status == "passed" for outcome in run.outcomes),
                "failed": sum(outcome.status == "failed" for outcome in run.outcomes),
                "broken": sum(outcome.status == "broken" for outcome in run.outcomes),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return run

    def _run_table(
        self, data_source: Any, schema: str, table: str, suites: list[PlannedSuite], columns: list[str], run: TableRun
    ) -> None:
        from sqlalchemy.sql.elements import quoted_name

        gx = self._gx
        context = self._context
        source_name = data_source.name
        with warnings.catch_warnings():
            # schema_name is deprecated since GX 1.14 in favour of a per-data-source
            # schema, which GX lowercases; quoted_name keeps the exact spelling.
            warnings.simplefilter("ignore", DeprecationWarning)
            asset = data_source.add_table_asset(
                name=suites[0].table if suites else table,
                table_name=quoted_name(table, True),
                schema_name=quoted_name(schema, True),
            )
        batch_definition = asset.add_batch_definition_whole_table("whole-table")
        ambiguous = case_ambiguous_columns(columns)

        validation_definitions = []
        planned_by_gx_name: dict[str, PlannedSuite] = {}
        specs_by_gx_name: dict[str, dict[str, dict[str, Any]]] = {}
        for number, suite in enumerate(suites):
            built = self._build_expectations(suite, ambiguous, run)
            if not built:
                continue
            gx_name = f"{source_name}-suite-{number}"
            gx_suite = context.suites.add_or_update(
                gx.ExpectationSuite(name=gx_name, expectations=[expectation for _spec, expectation in built])
            )
            planned_by_gx_name[gx_name] = suite
            # Keyed by GX's own serialisation, which drops kwargs left at their
            # default (exact_match=True, for one), so it matches the results.
            specs_by_gx_name[gx_name] = {
                _signature(expectation.configuration.type, expectation.configuration.kwargs): spec
                for spec, expectation in built
            }
            validation_definitions.append(
                context.validation_definitions.add_or_update(
                    gx.ValidationDefinition(name=gx_name, data=batch_definition, suite=gx_suite)
                )
            )
        if not validation_definitions:
            return

        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(name=source_name, validation_definitions=validation_definitions, result_format=FIRST_PASS_FORMAT)
        )
        checkpoint_result = checkpoint.run()

        for suite_result in checkpoint_result.run_results.values():
            gx_name = suite_result.suite_name
            suite = planned_by_gx_name[gx_name]
            self._judge_suite(gx_name, suite, suite_result, specs_by_gx_name[gx_name], batch_definition, run)

    def _judge_suite(
        self,
        gx_name: str,
        suite: PlannedSuite,
        suite_result: Any,
        specs: dict[str, dict[str, Any]],
        batch_definition: Any,
        run: TableRun,
    ) -> None:
        """Record an outcome per expectation of one suite and keep its cleaned GX result.

        An expectation with an error in ``exception_info`` is broken, whatever
        the value of ``success``. Otherwise ``success`` decides between passed and failed.
        """
        document = suite_result.to_json_dict()
        failed_configs = []
        verdicts: list[tuple[str, dict[str, Any]]] = []
        for result in document.get("results", []):
            config = result.get("expectation_config", {})
            if exception_messages(result.get("exception_info")):
                status = "broken"
            elif result.get("success"):
                status = "passed"
            else:
                status = "failed"
                failed_configs.append(config)
            verdicts.append((status, result))

        detailed: dict[str, dict[str, Any]] = {}
        if failed_configs:
            try:
                detailed = self._fetch_details(gx_name, suite, failed_configs, batch_definition)
            except Exception as error:  # The verdicts are kept without details; only observed values are lost.
                log.warning(
                    "expectations.details.error",
                    extra={"table": suite.table, "suite": suite.name, "error_type": type(error).__name__,
                           "error": clean_error_message(str(error))},
                )

        kept_results = []
        for status, result in verdicts:
            config = result.get("expectation_config", {})
            signature = _signature(config.get("type", ""), config.get("kwargs", {}))
            if status == "failed" and signature in detailed:
                result = detailed[signature]
                # The second pass could judge differently only if the data changed
                # between the passes. The restored database is idle, so the first
                # verdict is kept.
            cleaned = clean_expectation_result(result, keep_row_details=suite.from_profile)
            kept_results.append(cleaned)
            messages = exception_messages(result.get("exception_info")) if status == "broken" else []
            run.outcomes.append(
                Outcome(
                    suite,
                    status,
                    config.get("type"),
                    specs.get(signature, {"type": config.get("type"), "kwargs": config.get("kwargs", {})}),
                    result=cleaned,
                    # Each failed metric repeats the same error, so keep one copy of each.
                    error="; ".join(dict.fromkeys(clean_error_message(message) for message in messages)) or None,
                )
            )

        document["results"] = kept_results
        document["suite_name"] = suite.name
        document.setdefault("meta", {})["resguardo"] = {"table": suite.table, "source": suite.source}
        run.suite_results[suite.name] = document

    def _fetch_details(
        self, gx_name: str, suite: PlannedSuite, failed_configs: list[dict[str, Any]], batch_definition: Any
    ) -> dict[str, dict[str, Any]]:
        """Re-run only the failed expectations, with a result format that carries observed values."""
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        gx = self._gx
        expectations = []
        for config in failed_configs:
            kwargs = {key: value for key, value in config.get("kwargs", {}).items() if key != "batch_id"}
            expectations.append(
                ExpectationConfiguration(type=config["type"], kwargs=kwargs, meta=config.get("meta")).to_domain_obj()
            )
        detail_suite = self._context.suites.add_or_update(
            gx.ExpectationSuite(name=f"{gx_name}-details", expectations=expectations)
        )
        detail_format = DETAIL_FORMAT_PROFILE if suite.from_profile else DETAIL_FORMAT_HAND_WRITTEN
        detail_result = gx.ValidationDefinition(
            name=f"{gx_name}-details", data=batch_definition, suite=detail_suite
        ).run(result_format=detail_format)

        detailed = {}
        for result in detail_result.to_json_dict().get("results", []):
            config = result.get("expectation_config", {})
            detailed[_signature(config.get("type", ""), config.get("kwargs", {}))] = result
        return detailed

    def _close(self, source_name: str, data_source: Any) -> None:
        """Close the table's connections and forget its data source."""
        if data_source is None:
            return
        try:
            data_source.get_execution_engine().engine.dispose()
            data_source.get_engine().dispose()
            self._context.data_sources.delete(source_name)
        except Exception:  # Cleanup must not hide the table's results.
            log.warning("expectations.data_source.close_failed", extra={"data_source": source_name}, exc_info=True)
