"""Daily check of the whole evidence chain: signatures, links, sequence and head checkpoint."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from _common import DEFAULT_ARGS, doc, load_config, timetable, use_airflow_credentials

EVIDENCE_VERIFY_DOC = """\
### Evidence chain check

Every day, verifies the signed evidence chain that restore tests, masking runs
and DR drills append to: each record's Ed25519 signature, the hash link to the
previous record, gap-free sequence numbers and the signed head checkpoint. A
deleted, edited or re-ordered record fails the run, and the alert
`ResguardoEvidenceChainInvalid` fires.

Without Airflow: `resguardo evidence verify`.
"""


def _evidence_dag() -> DAG:
    config = load_config()
    with DAG(
        dag_id="resguardo_evidence_verify",
        schedule=timetable("30 6 * * *", config.timezone),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "retries": 2},
        doc_md=doc(EVIDENCE_VERIFY_DOC),
        tags=["resguardo", "evidence"],
    ) as dag:

        @task(doc_md=doc("Verifies every record of the evidence chain and fails on any problem."))
        def verify_evidence_chain() -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from evidence import open_store

            use_airflow_credentials()
            report = open_store(load_config()).verify_chain()
            print(report.summary())
            if not report.ok:
                raise AirflowFailException(doc("The evidence chain has {count} problems; see the report above.",
                                               count=str(len(report.problems))))
            return {"ok": report.ok, "records": report.records, "problems": len(report.problems),
                    "head_hash": report.head_hash}

        verify_evidence_chain()
    return dag


resguardo_evidence_verify = _evidence_dag()
