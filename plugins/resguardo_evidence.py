"""Evidence viewer inside the Airflow UI: list, show and verify signed evidence records.

An Airflow plugin that mounts a FastAPI app on the API server under
:data:`URL_PREFIX` and adds it to the UI menu (an *external view*, shown in
an iframe at ``/plugin/resguardo-evidence``). Reading and verifying are done
by the ``evidence`` package; this file only turns its results into pages.

Terms:

- *evidence record*, *chain*: see :mod:`evidence` (signed, hash-chained
  records of restore tests, masking runs and DR drills).
- *custom view permission*: ``can_read`` on the resource
  :data:`EVIDENCE_RESOURCE`. Every route requires an authenticated Airflow
  user (session cookie or ``Authorization: Bearer`` token; otherwise 401)
  whose role has that permission (otherwise 403). ``deploy/airflow/roles.py``
  grants it to the DBA, compliance and DR coordinator roles.

Routes, relative to :data:`URL_PREFIX`:

- ``/``: HTML list of records, newest first (``database``, ``kind``, ``limit``).
- ``/records/{reference}``: one record as HTML; a sequence number or record id.
- ``/verify``: HTML result of verifying the whole chain.
- ``/api/records``, ``/api/records/{reference}``, ``/api/verify``: the same as JSON.

Pages are in the configured language (Spanish by default, English with
``RESGUARDO_LANG=en``). The configuration comes from ``RESGUARDO_CONFIG`` and
is read at the first request, not at import.
"""

from __future__ import annotations

import functools
import html
import os
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse

from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.plugins_manager import AirflowPlugin

from resguardo.errors import ConfigError, NotFoundError, ResguardoError, StorageError
from resguardo.i18n import _, current_language
from resguardo.log import get_logger

log = get_logger("plugins.resguardo_evidence")

URL_PREFIX = "/resguardo-evidence"
# Must equal EVIDENCE_RESOURCE in deploy/airflow/roles.py, which grants it.
EVIDENCE_RESOURCE = "Resguardo Evidence"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

ConfigLoader = Callable[[], Any]


@functools.lru_cache(maxsize=1)
def _load_configured() -> Any:
    from resguardo.config import load_config

    return load_config(os.environ.get("RESGUARDO_CONFIG"))


def require_evidence_reader(user: GetUserDep) -> Any:
    """Return the user when the auth manager grants ``can_read`` on the evidence resource; else raise 403."""
    from airflow.api_fastapi.app import get_auth_manager

    if not get_auth_manager().is_authorized_custom_view(method="GET", resource_name=EVIDENCE_RESOURCE, user=user):
        log.warning("evidence.viewer.denied", extra={"user_id": user.get_id()})
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=_("your Airflow role may not read evidence records; ask for the compliance, DBA or DR coordinator role"),
        )
    return user


# -- rendering --------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2733; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #c9d1da; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
.ok { color: #136f2f; font-weight: 600; }
.bad { color: #a4161a; font-weight: 600; }
pre { background: #f5f7f9; padding: 0.75rem; white-space: pre-wrap; }
nav a { margin-right: 1rem; }
"""


def _page(title: str, body: str) -> HTMLResponse:
    language = html.escape(current_language())
    records_label = html.escape(_("Evidence records"))
    verify_label = html.escape(_("Verify the chain"))
    navigation = (
        f'<nav><a href="{URL_PREFIX}/">{records_label}</a>'
        f'<a href="{URL_PREFIX}/verify">{verify_label}</a></nav>'
    )
    document = (
        f'<!doctype html><html lang="{language}"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{navigation}<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document)


def markdown_to_html(text: str) -> str:
    """Convert the Markdown of :func:`evidence.render_markdown` to HTML; raw HTML in it is escaped.

    >>> markdown_to_html("| a |\\n|---|\\n| <b> |")
    '<table>\\n<thead>\\n<tr>\\n<th>a</th>\\n</tr>\\n</thead>\\n<tbody>\\n<tr>\\n<td>&lt;b&gt;</td>\\n</tr>\\n</tbody>\\n</table>\\n'
    """
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _record_row(record: dict[str, Any], valid: bool) -> str:
    from evidence.render import outcome_label

    reference = html.escape(str(record["sequence"]))
    if valid:
        signature = '<span class="ok">' + html.escape(_("valid")) + "</span>"
    else:
        signature = '<span class="bad">' + html.escape(_("NOT VALID")) + "</span>"
    cells = [
        f'<a href="{URL_PREFIX}/records/{reference}">{reference}</a>',
        html.escape(str(record.get("created_at", ""))[:19].replace("T", " ")),
        html.escape(str(record.get("kind", ""))),
        html.escape(str(record.get("database", ""))),
        html.escape(outcome_label(str(record.get("outcome", "")))),
        signature,
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _error_response(error: ResguardoError, as_json: bool) -> HTMLResponse | JSONResponse:
    if isinstance(error, NotFoundError):
        code = status.HTTP_404_NOT_FOUND
    elif isinstance(error, StorageError):
        code = status.HTTP_503_SERVICE_UNAVAILABLE
    else:
        code = status.HTTP_500_INTERNAL_SERVER_ERROR
    if as_json:
        return JSONResponse({"error": error.message, "hint": error.hint}, status_code=code)
    body = f"<p class=\"bad\">{html.escape(error.message)}</p>"
    if error.hint:
        body += f"<p>{html.escape(error.hint)}</p>"
    response = _page(_("Evidence viewer error"), body)
    response.status_code = code
    return response


# -- the app ------------------------------------------------------------------------------


def create_app(load_config: ConfigLoader | None = None) -> FastAPI:
    """Build the evidence viewer; ``load_config`` returns the ResguardoConfig (default: ``RESGUARDO_CONFIG``)."""
    config_loader = load_config or _load_configured
    app = FastAPI(title="Resguardo evidence", docs_url=None, redoc_url=None, openapi_url=None)

    def open_chain():
        from evidence import open_store

        config = config_loader()
        return config, open_store(config)

    @app.exception_handler(ResguardoError)
    async def _resguardo_error(request: Request, error: ResguardoError):
        log.warning("evidence.viewer.error",
                    extra={"path": request.url.path, "error_type": type(error).__name__, "error": error.message})
        return _error_response(error, as_json=request.url.path.startswith(f"{URL_PREFIX}/api/")
                               or request.url.path.startswith("/api/"))

    def list_records(database: str | None, kind: str | None, limit: int) -> tuple[Any, list[tuple[dict, bool]]]:
        from evidence.record import SIGNATURE_VALID, signature_status

        _config, store = open_chain()
        records = store.list(database=database, kind=kind)
        newest = list(reversed(records))[:limit]
        return store, [(record, signature_status(record, store.public_key) == SIGNATURE_VALID) for record in newest]

    @app.get("/", response_class=HTMLResponse)
    def index(user: Any = Depends(require_evidence_reader),
              database: str | None = None, kind: str | None = None,
              limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)):
        log.info("evidence.viewer.list", extra={"user_id": user.get_id(), "database": database, "kind": kind})
        store, rows = list_records(database, kind, limit)
        if not rows:
            empty = _("No evidence records in {chain}.").format(chain=store.where)
            return _page(_("Evidence records"), "<p>" + html.escape(empty) + "</p>")
        headers = [_("SEQ"), _("CREATED (UTC)"), _("KIND"), _("DATABASE"), _("OUTCOME"), _("SIGNATURE")]
        table = (
            "<table><thead><tr>" + "".join(f"<th>{html.escape(header)}</th>" for header in headers) + "</tr></thead><tbody>"
            + "".join(_record_row(record, valid) for record, valid in rows)
            + "</tbody></table>"
        )
        intro = _("Chain {chain}: newest {count} records. A signature is checked per record; "
                  "'Verify the chain' also checks links, sequence and head checkpoint.").format(
            chain=store.where, count=len(rows))
        return _page(_("Evidence records"), f"<p>{html.escape(intro)}</p>{table}")

    @app.get("/records/{reference}", response_class=HTMLResponse)
    def show(reference: str, user: Any = Depends(require_evidence_reader)):
        from evidence.render import render_markdown

        log.info("evidence.viewer.show", extra={"user_id": user.get_id(), "reference": reference})
        config, store = open_chain()
        # verify=False: a record whose signature fails is still shown, with
        # its signature status, as `resguardo evidence show` does.
        record = store.get(reference, verify=False)
        markdown = render_markdown(record, public_key=store.public_key, timezone=config.timezone)
        title = _("Evidence record {sequence}").format(sequence=record.get("sequence", "-"))
        return _page(title, markdown_to_html(markdown))

    @app.get("/verify", response_class=HTMLResponse)
    def verify(user: Any = Depends(require_evidence_reader)):
        log.info("evidence.viewer.verify", extra={"user_id": user.get_id()})
        _config, store = open_chain()
        report = store.verify_chain()
        log.info("evidence.viewer.verified", extra={"chain": store.where, "ok": report.ok,
                                                    "records": report.records, "problems": len(report.problems)})
        if report.ok:
            verdict = '<p class="ok">' + html.escape(_("The chain is intact.")) + "</p>"
        else:
            damaged = _("The chain is damaged: {count} problems.").format(count=len(report.problems))
            verdict = '<p class="bad">' + html.escape(damaged) + "</p>"
        return _page(_("Chain verification"), verdict + f"<pre>{html.escape(report.summary())}</pre>")

    @app.get("/api/records")
    def api_records(user: Any = Depends(require_evidence_reader),
                    database: str | None = None, kind: str | None = None,
                    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)):
        log.info("evidence.viewer.list", extra={"user_id": user.get_id(), "database": database, "kind": kind})
        store, rows = list_records(database, kind, limit)
        return {"chain": store.where,
                "records": [{**record, "signature_valid": valid} for record, valid in rows]}

    @app.get("/api/records/{reference}")
    def api_record(reference: str, user: Any = Depends(require_evidence_reader)):
        from evidence.record import SIGNATURE_VALID, signature_status
        from evidence.render import render_markdown

        log.info("evidence.viewer.show", extra={"user_id": user.get_id(), "reference": reference})
        config, store = open_chain()
        record = store.get(reference, verify=False)
        return {
            "record": record,
            "signature_valid": signature_status(record, store.public_key) == SIGNATURE_VALID,
            "markdown": render_markdown(record, public_key=store.public_key, timezone=config.timezone),
        }

    @app.get("/api/verify")
    def api_verify(user: Any = Depends(require_evidence_reader)):
        log.info("evidence.viewer.verify", extra={"user_id": user.get_id()})
        _config, store = open_chain()
        report = store.verify_chain()
        log.info("evidence.viewer.verified", extra={"chain": store.where, "ok": report.ok,
                                                    "records": report.records, "problems": len(report.problems)})
        return report.to_dict()

    return app


class ResguardoEvidencePlugin(AirflowPlugin):
    """Registers the evidence viewer app and its menu entry."""

    name = "resguardo_evidence"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Resguardo evidence"}]
    external_views = [
        {
            "name": _("Resguardo evidence"),
            "href": f"{URL_PREFIX}/",
            "url_route": "resguardo-evidence",
            "destination": "nav",
            "category": "browse",
        }
    ]
