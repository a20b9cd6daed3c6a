"""Apply the LOPDP suppression list to a freshly restored database.

Terms:

- *suppression list*: the data subjects whose deletion was requested (LOPDP
  Art. 15), stored as keyed HMACs of their cédulas by ``resguardo mask
  suppress add`` (see :mod:`masking.suppression`). A backup taken before a
  request still contains the subject's rows. Applying the list after the
  restore deletes them (or sets the listed columns to NULL), so the restore
  does not bring a deleted subject back.
- *masking config*: ``masking.yaml``, found through ``RESGUARDO_MASKING_CONFIG``
  or beside ``resguardo.yaml``. Its entry for the database names the policy
  (whose ``suppression.targets`` say which columns hold the cédula), the list
  file, and ``apply_suppression_on_restore``. The masking key it references
  must be readable on the restoring host, because matching recomputes the
  HMAC of every cédula in the target columns.

Restores call :func:`apply_suppression_after_restore` once ``pg_restore`` has
finished. By default the list is applied when ``apply_suppression_on_restore``
is true and skipped otherwise; ``required=True`` (``resguardo restore
--apply-suppression``) applies it regardless and fails when it cannot.
"""

from __future__ import annotations

from typing import Any

from resguardo.config import ResguardoConfig
from resguardo.errors import ConfigError
from resguardo.i18n import _
from resguardo.log import get_logger

log = get_logger("restore.suppression_hook")


def apply_suppression_after_restore(config: ResguardoConfig, database: str, dsn: str, *,
                                    required: bool = False) -> dict[str, Any] | None:
    """Apply the suppression list of ``database`` to the restored database at ``dsn``.

    Returns the counts for the evidence record: subjects listed, rows matched
    per target, rows deleted per table, the list file's SHA-256 and seconds.
    Without ``required``, returns None and changes nothing when there is no
    ``masking.yaml``, the database has no entry in it, or
    ``apply_suppression_on_restore`` is false. With ``required``, raises
    ConfigError or PolicyError when the list cannot be applied. MaskingError
    means applying it failed; the restored rows are then as they were,
    because suppression runs in one transaction.
    """
    from masking.config import load_masking_config, masking_config_path
    from masking.suppression import apply_configured_suppression

    path = masking_config_path(None, getattr(config, "base_dir", None))
    if not path.exists():
        if required:
            raise ConfigError(
                _("suppression was requested for the restore of {database}, but masking configuration {path} was not found").format(
                    database=database, path=path
                ),
                _("set RESGUARDO_MASKING_CONFIG or put masking.yaml beside resguardo.yaml, with a suppression_list for {database}").format(
                    database=database
                ),
            )
        log.info("restore.suppression.skipped", extra={"database": database, "reason": "no_masking_config"})
        return None

    masking_config = load_masking_config(path)
    if database not in masking_config.databases and not required:
        log.info("restore.suppression.skipped", extra={"database": database, "reason": "database_not_configured"})
        return None

    log.info("restore.suppression.start", extra={"database": database, "required": required})
    report = apply_configured_suppression(masking_config, database, dsn, required=required)
    if report is None:
        log.info("restore.suppression.skipped", extra={"database": database, "reason": "not_enabled_for_restores"})
        return None
    log.info("restore.suppression.stop", extra={
        "database": database, "subjects": report["subjects"], "rows_deleted": sum(report["deleted"].values()),
        "seconds": report["seconds"],
    })
    return report
