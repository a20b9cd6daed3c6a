"""Signed, hash-chained evidence of restore tests, masking runs and DR drills.

Terms:

- *evidence record*: a signed JSON document stating what was tested, on which
  backup, with what outcome and measurements (see :mod:`evidence.record`).
- *chain*: the records under the configured evidence prefix. Each record
  carries the SHA-256 of its predecessor (``previous_hash``), so editing,
  deleting or reordering a record breaks the chain where it happened.
- *head checkpoint*: a signed object naming the newest record, which reveals
  the deletion of records at the end of the chain.

``docs/evidence.md`` describes the format and how to verify a chain, for
compliance officers. Entry points: :class:`EvidenceStore` (append,
put_attachment, list, get, head, verify_chain), :func:`open_store` (from the
configuration), :func:`render_text` and :func:`render_markdown`, and
:mod:`evidence.facts` for the host and tool versions a body records.
"""

from evidence.record import GENESIS_HASH, RECORD_FORMAT, RECORD_VERSION, EvidenceError, record_hash
from evidence.render import render_markdown, render_text
from evidence.store import EvidenceStore, open_store
from evidence.verify import ChainProblem, ChainReport

__all__ = [
    "GENESIS_HASH",
    "RECORD_FORMAT",
    "RECORD_VERSION",
    "ChainProblem",
    "ChainReport",
    "EvidenceError",
    "EvidenceStore",
    "open_store",
    "record_hash",
    "render_markdown",
    "render_text",
]
