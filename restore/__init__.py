"""Restores: scratch clusters, logical restores and their verification.

Terms:

- *scratch cluster*: a throwaway PostgreSQL instance that Resguardo creates
  with ``initdb`` in a temporary directory, listening only on 127.0.0.1 on a
  free port, and deletes afterwards. Restore tests and masking runs use one so
  nothing touches a production server.
- *target*: where a restore writes: a DSN the DBA names, or a scratch cluster.
- *RTO of a restore test*: wall time from the start of the download to a
  database that accepts connections with the data validated.
"""
