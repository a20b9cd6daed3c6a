"""Signed evidence records of DR runs (kinds ``dr_rehearsal``, ``failover``, ``failback``).

Every run appends one record to the configured evidence chain whatever its
outcome: a refused failover and a missed RTO are evidence too. The record's
``subject`` names what ran (run id, scenario, nodes). Its ``body`` contains
the timeline, measured RTO and RPO with their method, targets and findings. Only
ids, positions, times and counts go into a record, never row contents.
"""

from __future__ import annotations

from typing import Any

from resguardo.config import ResguardoConfig
from resguardo.log import get_logger

log = get_logger("drills.records")

KIND_REHEARSAL = "dr_rehearsal"
KIND_FAILOVER = "failover"
KIND_FAILBACK = "failback"


def append_record(config: ResguardoConfig, kind: str, database: str, subject: dict[str, Any], passed: bool,
                  body: dict[str, Any]) -> dict[str, Any]:
    """Append a signed record to the evidence chain; return ``{"sequence", "record_id"}``."""
    from evidence import open_store

    store = open_store(config, writable=True)
    record = store.append(kind, database, subject, "passed" if passed else "failed", body)
    log.info("drills.evidence.appended",
             extra={"kind": kind, "database": database, "sequence": record["sequence"],
                    "record_id": record["record_id"]})
    return {"sequence": record["sequence"], "record_id": record["record_id"], "chain": store.where}
